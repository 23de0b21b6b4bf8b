// Downloading the exported model directory, keeping it in Cache Storage, and checking every file
// against the manifest's sha256 (docs/artifact.md) before anything uses it.
//
//   manifest.json        always asked from the server first (a re-export changes it); the cached
//                        copy is used when the server cannot be reached (offline)
//   every other file     Cache Storage under "<url>?sha256=<hash>": a new export never collides
//                        with an old cached file; entries the manifest no longer names are pruned
//
// A cached file that no longer matches its hash is dropped and downloaded again. A downloaded
// file of the wrong size or hash is an error the page shows with a re-download offer. When the
// storage quota is exceeded the files stay in memory for this session, with a notice.

export const CACHE_NAME = 'ruvdllm-models-v1';
// Requests carrying this header are the model store's own: the service worker leaves them alone
// (Cache Storage here is the only copy we want of a 100 MB model).
export const STORE_HEADER = 'X-Ruvdllm-Store';
const SKIPPED = [/\.hnsw$/]; // hnswlib's index cache: CPython only

export class ModelError extends Error {
  // code: 'unreachable' | 'not-a-model' | 'truncated' | 'corrupt' | 'http'
  constructor(code, message, file = null) {
    super(message);
    this.code = code;
    this.file = file;
  }
}

export async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

async function openCache() {
  try {
    return await caches.open(CACHE_NAME);
  } catch {
    return null; // Cache Storage unavailable (e.g. an opaque origin): memory only
  }
}

export class ModelStore {
  // base: absolute URL of the model directory, ending in "/"
  constructor(base, { onProgress = () => {}, onNotice = () => {} } = {}) {
    this.base = base;
    this.onProgress = onProgress;
    this.onNotice = onNotice;
    this.stats = { downloadedBytes: 0, cachedBytes: 0, memoryOnly: false, offline: false };
  }

  key(name, sha) {
    return `${this.base}${name}?sha256=${sha}`;
  }

  async fetch(name, init = {}) {
    const headers = { [STORE_HEADER]: 'model' };
    return fetch(this.base + name, { cache: 'no-store', ...init, headers });
  }

  async manifest(cache) {
    const manifestKey = `${this.base}manifest.json`;
    let response = null;
    try {
      response = await this.fetch('manifest.json');
    } catch {
      response = null; // server unreachable: fall back to the cached manifest below
    }
    if (response && response.ok) {
      const text = await response.text();
      const manifest = this.parseManifest(text);
      if (cache) await this.tryPut(cache, manifestKey, new TextEncoder().encode(text));
      return manifest;
    }
    const cached = cache && (await cache.match(manifestKey));
    if (cached) {
      this.stats.offline = true;
      return this.parseManifest(await cached.text());
    }
    if (response) throw new ModelError('not-a-model', `${this.base}manifest.json: HTTP ${response.status} (is this an exported model directory?)`);
    throw new ModelError('unreachable', `${this.base}: the server cannot be reached and no copy of this model is cached`);
  }

  parseManifest(text) {
    try {
      const manifest = JSON.parse(text);
      if (!manifest.files || typeof manifest.files !== 'object') throw new Error('no "files"');
      return manifest;
    } catch (e) {
      throw new ModelError('not-a-model', `manifest.json: unreadable (${e.message})`, 'manifest.json');
    }
  }

  // Every file of the model as {name: Uint8Array}, verified.
  async load() {
    const cache = await openCache();
    if (!cache) this.memoryOnly('Cache Storage is not available here');
    const manifest = await this.manifest(cache);
    const entries = Object.entries(manifest.files).filter(([name]) => !SKIPPED.some((re) => re.test(name)));
    const total = entries.reduce((sum, [, e]) => sum + e.bytes, 0);
    let done = 0;
    // source: 'network' while bytes arrive, 'cache' for a file read from Cache Storage
    const report = (name, source, extra = 0) => this.onProgress({ file: name, loaded: done + extra, total, source });
    const files = {};
    for (const [name, entry] of entries) {
      const downloaded = this.stats.downloadedBytes;
      files[name] = await this.loadFile(cache, name, entry, (n) => report(name, 'network', n));
      done += entry.bytes;
      report(name, this.stats.downloadedBytes > downloaded ? 'network' : 'cache');
    }
    if (cache) await this.prune(cache, entries);
    return { manifest, files };
  }

  async loadFile(cache, name, entry, progress) {
    const key = this.key(name, entry.sha256);
    if (cache) {
      const hit = await cache.match(key);
      if (hit) {
        const bytes = new Uint8Array(await hit.arrayBuffer());
        if (bytes.length === entry.bytes && (await sha256Hex(bytes)) === entry.sha256) {
          this.stats.cachedBytes += bytes.length;
          return bytes;
        }
        await cache.delete(key);
        this.onNotice({ level: 'warning', text: `The cached copy of ${name} was damaged; downloading it again.` });
      }
    }
    const bytes = await this.download(name, entry, progress);
    if (cache && !this.stats.memoryOnly) await this.tryPut(cache, key, bytes);
    return bytes;
  }

  async download(name, entry, progress) {
    let response;
    try {
      response = await this.fetch(name);
    } catch (e) {
      throw new ModelError('unreachable', `${name}: download failed (${e.message})`, name);
    }
    if (!response.ok) throw new ModelError('http', `${name}: HTTP ${response.status} from the server`, name);
    const bytes = new Uint8Array(entry.bytes);
    let received = 0;
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (received + value.length > entry.bytes) {
        await reader.cancel();
        throw new ModelError('corrupt', `${name}: larger than the ${entry.bytes} bytes the manifest says (replaced or corrupt)`, name);
      }
      bytes.set(value, received);
      received += value.length;
      this.stats.downloadedBytes += value.length;
      progress(received);
    }
    if (received !== entry.bytes) {
      throw new ModelError('truncated', `${name}: ${received} of ${entry.bytes} bytes (truncated download or file)`, name);
    }
    if ((await sha256Hex(bytes)) !== entry.sha256) {
      throw new ModelError('corrupt', `${name}: sha256 does not match the manifest (corrupt or modified file)`, name);
    }
    return bytes;
  }

  async tryPut(cache, key, bytes) {
    try {
      await cache.put(key, new Response(bytes, { headers: { 'Content-Type': 'application/octet-stream' } }));
    } catch (e) {
      if (e && (e.name === 'QuotaExceededError' || /quota/i.test(String(e.message)))) {
        this.memoryOnly('the browser\u2019s storage quota is exceeded');
      } else {
        throw e;
      }
    }
  }

  memoryOnly(reason) {
    if (this.stats.memoryOnly) return;
    this.stats.memoryOnly = true;
    this.onNotice({ level: 'warning', text: `The model is kept in memory only (${reason}): it will be downloaded again next time.` });
  }

  // Drop cached files of this model directory that the current manifest no longer names.
  async prune(cache, entries) {
    const wanted = new Set(entries.map(([name, e]) => this.key(name, e.sha256)));
    for (const request of await cache.keys()) {
      if (request.url.startsWith(this.base) && request.url.includes('?sha256=') && !wanted.has(request.url)) await cache.delete(request);
    }
  }

  // Forget this model directory (the page's "download again").
  async forget() {
    const cache = await openCache();
    if (!cache) return;
    for (const request of await cache.keys()) if (request.url.startsWith(this.base)) await cache.delete(request);
  }
}
