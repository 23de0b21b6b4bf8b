// The page: settings, prompt, the live denoising view. All model work happens in the engine worker
// (worker.js); this file only sends protocol messages and draws what comes back.

import { IN, OUT } from './protocol.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// Observable state: the page's own record of what happened (tests read it too).
const state = (window.ruvdllm = {
  ready: false,
  info: null,
  running: false,
  steps: 0,
  lastStep: null,
  trace: [], // per step: {span, step, t, committed, retrieved positions}
  complete: null,
  error: null,
  notices: [],
});

let worker = null;
let interruptBuffer = null;
let nextId = 1;
let loadMessage = null;

// --- offline: the service worker keeps the client's files ----------------------------------

async function installServiceWorker() {
  if (!('serviceWorker' in navigator) || params.has('no-sw')) return;
  try {
    await navigator.serviceWorker.register('sw.js');
    if (navigator.serviceWorker.controller) return;
    // First visit: wait (briefly) until the service worker controls the page, so that the files the
    // engine fetches next are kept for offline use.
    await Promise.race([
      new Promise((resolve) => navigator.serviceWorker.addEventListener('controllerchange', resolve, { once: true })),
      new Promise((resolve) => setTimeout(resolve, 3000)),
    ]);
  } catch (e) {
    addNotice(`Offline use is unavailable (${e.message}).`, 'warning');
  }
}

// --- rendering -------------------------------------------------------------------------------

const formatBytes = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : n >= 1e3 ? `${(n / 1e3).toFixed(0)} kB` : `${n} B`);
const PHASES = { runtime: 'Python runtime', download: 'downloading', session: 'preparing the engine', warmup: 'warming up' };

function addNotice(text, level = 'info') {
  state.notices.push({ text, level });
  const el = document.createElement('div');
  el.className = `notice ${level}`;
  el.setAttribute('role', level === 'warning' ? 'alert' : 'status');
  el.innerHTML = `<span>${level === 'warning' ? '⚠' : 'ℹ'}</span><span class="notice-text"></span><button type="button" aria-label="dismiss">×</button>`;
  el.querySelector('.notice-text').textContent = text;
  el.querySelector('button').onclick = () => el.remove();
  $('notices').append(el);
}

function showProgress({ phase, progress, text, loaded, total }) {
  $('loader').hidden = false;
  $('load-phase').textContent = PHASES[phase] || phase;
  const pct = Math.round(100 * Math.max(0, Math.min(1, progress)));
  $('load-bar').style.width = `${phase === 'download' ? pct : phase === 'runtime' ? 5 : 100}%`;
  $('load-progress').setAttribute('aria-valuenow', String(pct));
  $('load-text').textContent = text;
  $('load-bytes').textContent = total ? `${formatBytes(loaded)} / ${formatBytes(total)}` : '';
}

function showReady(info) {
  Object.assign(state, { ready: true, info, error: null });
  $('loader').hidden = true;
  $('error').hidden = true;
  $('app').setAttribute('aria-busy', 'false');
  $('generate').disabled = false;
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
  if (!$('block_size').value) $('block_size').placeholder = `model: ${info.model.blockSize}`;
  renderTalora([], 1);
}

function showError({ code, message, recover, during }) {
  state.error = { code, message, recover, during };
  $('error').hidden = false;
  $('error-title').textContent = during === 'load' ? 'The model could not be loaded' : 'Generation failed';
  $('error-text').textContent = message;
  $('redownload').hidden = recover !== 'redownload';
  if (during === 'load') $('loader').hidden = true;
  setRunning(false);
}

function renderCells(step) {
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

function renderTalora(weights, t) {
  if (state.info && !state.info.bank.present) {
    const note = Object.assign(document.createElement('p'), { className: 'empty-note', textContent: 'No adapter bank in this model: the base model runs unchanged.' });
    $('talora-bars').replaceChildren(note);
    $('t-value').textContent = `t = ${t.toFixed(2)}`;
    return;
  }
  const names = state.info?.bank?.groups || [];
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

function renderRetrievals(retrieved) {
  const items = retrieved.length
    ? retrieved.map(({ position, adapters }) => {
        const li = document.createElement('li');
        const names = adapters.map((a) => `${a.name} ${a.weight.toFixed(2)}`).join(', ') || 'no match';
        li.innerHTML = `#${position} → <code></code>`;
        li.querySelector('code').textContent = names;
        return li;
      })
    : [Object.assign(document.createElement('li'), { className: 'muted', textContent: !state.info?.bank?.present ? 'No adapter bank in this model.' : state.info.bank.patterns ? 'none: the model is confident enough' : 'no patterns in this bank' })];
  $('retrievals').replaceChildren(...items);
}

function showStep(step) {
  state.steps += 1;
  state.lastStep = step;
  state.trace.push({ span: step.span, step: step.step, t: step.t, committed: step.committedTokens, retrieved: step.retrieved.map((r) => r.position), at: step.at });
  renderCells(step);
  renderTalora(step.talora, step.t);
  renderRetrievals(step.retrieved);
  state.retrievals = (step.step === 0 && step.span === 0 ? 0 : state.retrievals || 0) + step.retrieved.length;
  $('dgr-total').textContent = `this step · ${state.retrievals} in this answer`;
  $('step-label').textContent = `block ${step.span} · step ${step.step} · t = ${step.t.toFixed(2)}`;
  $('stat-tps').textContent = step.tokensPerSecond.toFixed(1);
  $('stat-steps').textContent = String(state.steps);
  $('stat-forward').textContent = `${step.forwardMs.toFixed(0)} ms`;
  $('output').textContent = step.text;
  $('output').classList.add('streaming');
}

function showComplete(message) {
  // Steps that finished after Stop was pressed (the one in flight, at most, if interrupts work).
  if (state.interruptAt != null) message.stepsAfterInterrupt = state.trace.filter((s) => s.at > state.interruptAt).length;
  state.complete = message;
  const { text, stats, interrupted } = message;
  $('output').textContent = text + (interrupted ? ' …' : '');
  $('output').classList.remove('streaming');
  $('stat-tps').textContent = stats.tokensPerSecond.toFixed(1);
  $('stat-steps').textContent = String(stats.steps);
  $('stat-forward').textContent = `${stats.forwardMs.toFixed(0)} ms`;
  $('stat-bridge').textContent = stats.bridgeMs == null ? '—' : `${stats.bridgeMs.toFixed(1)} ms`;
  $('step-label').textContent = interrupted ? 'stopped' : `done · ${stats.generatedTokens} tokens · ${stats.finishReason}`;
  setRunning(false);
}

function setRunning(running) {
  state.running = running;
  $('generate').disabled = running || !state.ready;
  $('stop').disabled = !running;
  $('settings').querySelectorAll('input, select').forEach((el) => { if (el.id !== 'ep') el.disabled = running; });
}

// --- settings -> GenerationSettings ------------------------------------------------------------

function readSettings() {
  const num = (id) => ($(id).value === '' ? null : Number($(id).value));
  return {
    sampler: $('sampler').value,
    length: num('length'),
    block_size: num('block_size'),
    steps: num('steps'),
    decoding: $('decoding').value,
    threshold: num('threshold'),
    entropy_bound: num('entropy_bound'),
    order: $('order').value,
    temperature: num('temperature'),
    top_p: num('top_p'),
    talora: $('talora').checked,
    dgr: $('dgr').checked,
  };
}

// --- worker ----------------------------------------------------------------------------------

function onMessage({ data }) {
  switch (data.type) {
    case OUT.PROGRESS: return showProgress(data);
    case OUT.NOTICE: return addNotice(data.text, data.level);
    case OUT.READY: return showReady(data.info);
    case OUT.STEP: return showStep(data.step);
    case OUT.COMPLETE: return showComplete(data);
    case OUT.ERROR: return showError(data);
  }
}

function startWorker() {
  worker?.terminate();
  worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  worker.onmessage = onMessage;
  worker.onerror = (e) => showError({ code: 'internal', message: `the engine stopped: ${e.message || 'script error'}`, during: 'load' });
}

function load(ep, { forget = false } = {}) {
  Object.assign(state, { ready: false, error: null });
  $('app').setAttribute('aria-busy', 'true');
  $('generate').disabled = true;
  $('chip-ep').textContent = 'starting…';
  showProgress({ phase: 'runtime', progress: 0, text: 'starting the engine' });
  startWorker();
  worker.postMessage({ ...loadMessage, ep, forget, type: IN.LOAD });
}

// Start a generation; resolves with the complete message (or rejects with the error).
function start(prompt, settings, { chat = true, seed = 0 } = {}) {
  if (!state.ready || state.running) return Promise.reject(new Error(state.running ? 'a generation is running' : 'not ready'));
  Object.assign(state, { steps: 0, complete: null, lastStep: null, error: null, trace: [], interruptAt: null });
  $('error').hidden = true;
  $('output').textContent = '';
  setRunning(true);
  worker.postMessage({ type: IN.GENERATE, id: nextId++, prompt, chat, seed, settings });
  return new Promise((resolve, reject) => {
    const check = setInterval(() => {
      if (state.complete) resolve(state.complete);
      else if (state.error) reject(new Error(state.error.message));
      else return;
      clearInterval(check);
    }, 20);
  });
}

// Scripts (benchmarks, embedding pages) drive the same path as the form, with any
// GenerationSettings field (e.g. stop_at_eos), through window.ruvdllm.run(prompt, settings, options).
state.run = start;

async function main() {
  await installServiceWorker();
  const config = await (await fetch('app-config.json')).json();
  const modelUrl = params.get('model') || config.model;
  if (!modelUrl) {
    showError({ code: 'no-model', message: 'No model is being served: start the client with `ruvdllm web MODEL_DIR`.', during: 'load' });
    return;
  }
  if (self.crossOriginIsolated) {
    interruptBuffer = new SharedArrayBuffer(4);
  } else {
    addNotice('This page is not cross-origin isolated (COOP/COEP headers missing): WebAssembly runs on one thread.', 'warning');
  }
  const ep = params.get('ep') || 'auto';
  $('ep').value = ep;
  // Absolute URLs: the worker resolves relative ones against its own script's location.
  const absolute = (url) => new URL(url, location.href).href;
  loadMessage = { modelUrl: absolute(modelUrl), wheelUrl: absolute(config.wheel), numThreads: Number(params.get('threads')) || undefined, interruptBuffer };
  load(ep);

  $('prompt-form').addEventListener('submit', (e) => {
    e.preventDefault();
    start($('prompt').value, readSettings(), { chat: $('chat').checked, seed: Number($('seed').value) || 0 });
  });
  $('prompt').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) $('prompt-form').requestSubmit();
  });
  $('stop').addEventListener('click', () => {
    state.interruptAt = performance.timeOrigin + performance.now(); // comparable across threads
    if (interruptBuffer) Atomics.store(new Int32Array(interruptBuffer), 0, 1); // seen by the worker at once
    worker.postMessage({ type: IN.INTERRUPT });
  });
  $('threshold').addEventListener('input', () => { $('threshold-value').textContent = Number($('threshold').value).toFixed(2); });
  $('ep').addEventListener('change', () => load($('ep').value));
  $('reload').addEventListener('click', () => location.reload());
  $('redownload').addEventListener('click', () => {
    $('error').hidden = true;
    load($('ep').value, { forget: true });
  });
}

main().catch((e) => showError({ code: 'internal', message: String(e.message || e), during: 'load' }));
