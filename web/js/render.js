// Drawing what the engine reports: notices, the load's progress, the denoising cells, TALoRA and
// DGR, the stats. No decisions here: app.js decides, this draws.

const $ = (id) => document.getElementById(id);

export const formatBytes = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : n >= 1e3 ? `${(n / 1e3).toFixed(0)} kB` : `${n} B`);

// The load's phases in the order they happen, each with its share of the one progress bar: the
// bar only moves forward, whatever order the worker's reports arrive in.
const LOAD_PHASES = {
  download: { label: 'downloading', from: 0, to: 0.8 },
  cache: { label: 'reading the cache', from: 0, to: 0.8 },
  runtime: { label: 'Python runtime', from: 0.8, to: 0.88 },
  session: { label: 'preparing the engine', from: 0.88, to: 0.94 },
  warmup: { label: 'warming up', from: 0.94, to: 1 },
};

export class LoadProgress {
  constructor(log) {
    this.log = log; // every report as shown: [{phase, text, bar}] (tests read it)
    this.bar = 0;
  }

  start(text) {
    this.bar = 0;
    this.show({ phase: null, label: 'starting', text, bar: 0 });
  }

  finish(text) {
    this.bar = 1;
    this.show({ phase: 'ready', label: 'ready', text, bar: 1 });
  }

  report({ phase, progress, text, loaded, total }) {
    const stage = LOAD_PHASES[phase] || { label: phase, from: this.bar, to: this.bar };
    const within = Math.max(0, Math.min(1, progress || 0));
    this.bar = Math.max(this.bar, stage.from + (stage.to - stage.from) * within);
    const bytes = phase === 'download' && total ? `${formatBytes(loaded)} / ${formatBytes(total)}` : '';
    this.show({ phase, label: stage.label, text, bar: this.bar, bytes });
  }

  show({ phase, label, text, bar, bytes = '' }) {
    $('loader').hidden = false;
    $('load-phase').textContent = label;
    const pct = Math.round(100 * bar);
    $('load-bar').style.width = `${pct}%`;
    $('load-progress').setAttribute('aria-valuenow', String(pct));
    $('load-text').textContent = text;
    $('load-bytes').textContent = bytes;
    this.log.push({ phase, text, bar: pct });
  }
}

export function addNotice(text, level = 'info') {
  const el = document.createElement('div');
  el.className = `notice ${level}`;
  el.setAttribute('role', level === 'warning' ? 'alert' : 'status');
  el.innerHTML = `<span>${level === 'warning' ? '⚠' : 'ℹ'}</span><span class="notice-text"></span><button type="button" aria-label="dismiss">×</button>`;
  el.querySelector('.notice-text').textContent = text;
  el.querySelector('button').onclick = () => el.remove();
  $('notices').append(el);
}

export function renderChips(info) {
  const ep = info.ep === 'webgpu' ? `WebGPU · ${info.adapter}` : `WebAssembly · ${info.numThreads} thread${info.numThreads === 1 ? '' : 's'}`;
  $('chip-ep').textContent = ep;
  $('chip-ep').className = `chip ${info.ep === 'webgpu' ? 'on' : ''}`;
  $('chip-ep').dataset.ep = info.ep;
  $('chip-model').textContent = `${info.model.name} · ${formatBytes(info.model.bytes)}`;
  const cache = info.cache;
  $('chip-cache').textContent = cache.memoryOnly
    ? 'in memory only'
    : cache.downloadedBytes
      ? `downloaded ${formatBytes(cache.downloadedBytes)}`
      : cache.offline ? 'offline · cached' : 'from cache';
  $('chip-cache').className = `chip ${cache.memoryOnly ? 'warn' : 'on'}`;
  $('stat-ep').textContent = info.ep === 'webgpu' ? 'WebGPU' : `wasm ×${info.numThreads}`;
}

export function renderCells(step) {
  const frag = document.createDocumentFragment();
  const retrieved = new Set(step.retrieved.map((r) => r.position));
  step.cells.forEach((cell, position) => {
    const el = document.createElement('span');
    el.className = `cell ${cell.state}${retrieved.has(position) ? ' retrieved' : ''}`;
    el.style.setProperty('--u', cell.uncertainty.toFixed(3));
    el.textContent = cell.state === 'masked' ? cell.guess.trim() || '·' : cell.text.replace(/\n/g, '⏎');
    el.title = `#${position} · ${cell.state} · uncertainty ${(cell.uncertainty * 100).toFixed(0)}%`;
    frag.append(el);
  });
  $('cells').replaceChildren(frag);
}

export function renderTalora(bank, weights, t) {
  if (bank && !bank.present) {
    const note = Object.assign(document.createElement('p'), { className: 'empty-note', textContent: 'No adapter bank in this model: the base model runs unchanged.' });
    $('talora-bars').replaceChildren(note);
    $('t-value').textContent = `t = ${t.toFixed(2)}`;
    return;
  }
  const names = bank?.groups || [];
  const rows = (weights.length ? weights : names.map((name) => ({ name, weight: 0 }))).map(({ name, weight }) => {
    const row = document.createElement('div');
    row.className = 'bar-row';
    row.innerHTML = `<span></span><div class="track"><div class="fill"></div></div><span class="num"></span>`;
    row.children[0].textContent = name;
    row.querySelector('.fill').style.width = `${(100 * weight).toFixed(0)}%`;
    row.querySelector('.num').textContent = weight.toFixed(2);
    return row;
  });
  $('talora-bars').replaceChildren(...rows);
  $('t-value').textContent = `t = ${t.toFixed(2)}`;
}

export function renderRetrievals(bank, retrieved) {
  const none = !bank?.present ? 'No adapter bank in this model.' : bank.patterns ? 'none: the model is confident enough' : 'no patterns in this bank';
  const items = retrieved.length
    ? retrieved.map(({ position, adapters }) => {
        const li = document.createElement('li');
        const names = adapters.map((a) => `${a.name} ${a.weight.toFixed(2)}`).join(', ') || 'no match';
        li.innerHTML = `#${position} → <code></code>`;
        li.querySelector('code').textContent = names;
        return li;
      })
    : [Object.assign(document.createElement('li'), { className: 'muted', textContent: none })];
  $('retrievals').replaceChildren(...items);
}

export function renderStats({ tokensPerSecond, steps, forwardMs, bridgeMs, sampler, acceptance }) {
  $('stat-tps').textContent = tokensPerSecond.toFixed(1);
  // the verified sampler's lenient check is said, as `ruvdllm generate` names it: "verified (lenient)"
  const rule = acceptance && acceptance !== 'exact' ? ` (${acceptance})` : '';
  if (sampler !== undefined) $('stat-sampler').textContent = sampler ? `${sampler}${rule}` : '—';
  $('stat-steps').textContent = String(steps);
  $('stat-forward').textContent = `${forwardMs.toFixed(0)} ms`;
  if (bridgeMs !== undefined) $('stat-bridge').textContent = bridgeMs == null ? '—' : `${bridgeMs.toFixed(1)} ms`;
}
