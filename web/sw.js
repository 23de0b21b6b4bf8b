// Service worker: keeps the client's own files (page, scripts, Pyodide, onnxruntime-web, the
// runtime wheel) so that the page opens and runs with no server after the first visit.
// Network first — a running `ruvdllm web` always serves the current files — with the cached copy
// when the network fails. The model files are not handled here: the model store keeps them in
// Cache Storage itself, verified against the manifest (js/model_store.js), and marks its requests.

const SHELL_CACHE = 'ruvdllm-shell-v1';
const STORE_HEADER = 'X-Ruvdllm-Store'; // js/model_store.js

// Fetched by the first visit before this worker controls the page, so kept at install; everything
// the engine fetches afterwards (the page waits for control before starting it) is kept as it goes.
const ENTRY_FILES = ['./', 'css/app.css', 'favicon.svg', 'js/app.js', 'js/protocol.js', 'js/phases.js', 'js/render.js', 'js/ort_engine.js', 'js/gpu_cache.js', 'app-config.json'];

self.addEventListener('install', (event) => {
  event.waitUntil(
    caches
      .open(SHELL_CACHE)
      .then((cache) => cache.addAll(ENTRY_FILES))
      .catch(() => {}) // offline use is a bonus: never block installation on it
      .then(() => self.skipWaiting()),
  );
});
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

async function networkFirst(request) {
  const cache = await caches.open(SHELL_CACHE);
  try {
    const response = await fetch(request);
    if (response.ok && response.type === 'basic') {
      try {
        await cache.put(request, response.clone());
      } catch {
        // over quota: the page still works online; offline use needs the space
      }
    }
    return response;
  } catch (error) {
    const cached = await cache.match(request, { ignoreSearch: request.mode === 'navigate' });
    if (cached) return cached;
    throw error;
  }
}

self.addEventListener('fetch', (event) => {
  const { request } = event;
  if (request.method !== 'GET' || new URL(request.url).origin !== self.location.origin) return;
  if (request.headers.has(STORE_HEADER)) return;
  event.respondWith(networkFirst(request));
});
