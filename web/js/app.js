// The page: settings, prompt, the live denoising view. All model work happens in the engine worker
// (worker.js); this file sends protocol messages, keeps the page's state (phases.js) and draws what
// comes back (render.js).

import { IN, OUT } from './protocol.js';
import { defaultThreads } from './ort_engine.js';
import { BASE_MODEL_SAMPLERS, PHASE, WHY, capabilitiesOf, controlsFor, samplerAllowed } from './phases.js';
import { LoadProgress, addNotice, renderCells, renderChips, renderRetrievals, renderStats, renderTalora } from './render.js';
import { TrajectoryStore } from './trajectory_store.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// Observable state: the page's own record of what happened (tests read it too).
const state = (window.ruvdllm = {
  phase: PHASE.LOADING,
  ready: false,
  info: null,
  running: false,
  steps: 0,
  lastStep: null,
  trace: [], // per step: {span, step, t, committed, retrieved positions}
  prefill: [], // a long prompt read in pieces: {done, total, at}
  complete: null,
  error: null,
  notices: [],
  progress: [], // every load report as the page showed it: {phase, text, bar (percent)}
  phases: [], // every phase entered, with the controls enabled in it: {phase, enabled: [ids]}
  answerId: null, // the completion id of the answer shown, once kept in the store: feedback goes to it
  feedback: [], // the feedback given on that answer, as stored
  learned: null, // {trajectories, feedback} kept in this browser (the store's counts)
});

let worker = null;
let interruptBuffer = null;
let nextId = 1;
let loadMessage = null;
let caps = capabilitiesOf(null);
let store = null; // Promise<TrajectoryStore | null>: null where IndexedDB is unavailable
const loadProgress = new LoadProgress(state.progress);

function notify(text, level = 'info') {
  state.notices.push({ text, level });
  addNotice(text, level);
}

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
    notify(`Offline use is unavailable (${e.message}).`, 'warning');
  }
}

// --- the page's state ------------------------------------------------------------------------

const CONTROL_IDS = ['generate', 'stop', 'ep', 'reload', 'redownload', 'sampler', 'acceptance', 'length', 'block_size', 'steps', 'decoding', 'order', 'threshold', 'entropy_bound', 'temperature', 'top_p', 'seed', 'talora', 'dgr', 'chat', 'thumb_up', 'thumb_down', 'correction', 'save_correction'];
const REASONS = {
  talora: () => WHY.talora,
  dgr: () => (state.info?.bank?.present ? WHY.dgrPatterns : WHY.dgrBank),
  chat: () => WHY.chat,
  threshold: () => (diffusionSampler() ? WHY.threshold : WHY.diffusionOnly),
  entropy_bound: () => (diffusionSampler() ? WHY.entropyBound : WHY.diffusionOnly),
  steps: () => WHY.diffusionOnly,
  decoding: () => WHY.diffusionOnly,
  order: () => WHY.diffusionOnly,
  block_size: () => WHY.blockSize,
  acceptance: () => WHY.acceptance,
  top_p: () => WHY.temperature0,
  seed: () => WHY.temperature0,
};

function diffusionSampler() {
  return !['verified', 'ar'].includes($('sampler').value);
}

function formValues() {
  return { prompt: $('prompt').value, sampler: $('sampler').value, decoding: $('decoding').value, temperature: $('temperature').value, answer: state.answerId, correction: $('correction').value };
}

// Enable exactly the controls that can act now; a disabled setting says why when the phase allows it.
function applyControls() {
  const enabled = controlsFor(state.phase, formValues(), caps, { redownload: state.error?.recover === 'redownload' });
  for (const id of CONTROL_IDS) {
    const el = $(id);
    el.disabled = !enabled[id];
    const reason = state.phase === PHASE.READY && !enabled[id] ? REASONS[id]?.() : null;
    const label = el.closest('label');
    if (label) label.title = reason || '';
    label?.classList.toggle('unavailable', Boolean(reason));
  }
  $('redownload').hidden = !enabled.redownload;
  $('reload').hidden = !enabled.reload; // a generation's error leaves the model loaded: nothing to reload
  return enabled;
}

function setPhase(phase) {
  state.phase = phase;
  state.ready = phase !== PHASE.LOADING && phase !== PHASE.ERROR;
  state.running = phase === PHASE.GENERATING || phase === PHASE.STOPPING;
  document.body.dataset.phase = phase;
  $('app').setAttribute('aria-busy', String(phase === PHASE.LOADING));
  const enabled = applyControls();
  state.phases.push({ phase, enabled: CONTROL_IDS.filter((id) => enabled[id]) });
}

// The model decides what the settings can do: untrained samplers greyed out, TALoRA, DGR and the
// chat template off where the model has nothing for them.
function applyModel(info) {
  caps = capabilitiesOf(info);
  for (const option of $('sampler').options) {
    const base = BASE_MODEL_SAMPLERS.includes(option.value);
    option.disabled = !samplerAllowed(caps, option.value);
    option.textContent = option.dataset.label + (option.disabled ? (base ? ' (no adapter switch)' : ' (not trained for)') : '');
    option.title = option.disabled ? (base ? WHY.baseModel : WHY.sampler(caps.samplers)) : '';
  }
  // the default (verified) on a model without the switch: the first sampler it can run
  if ($('sampler').selectedOptions[0]?.disabled) $('sampler').value = [...$('sampler').options].find((o) => !o.disabled).value;
  for (const id of ['talora', 'dgr', 'chat']) if (!caps[id]) $(id).checked = false;
  if (!$('block_size').value) $('block_size').placeholder = `model: ${info.model.blockSize}`;
}

// --- what the worker reports -------------------------------------------------------------------

function showReady(info) {
  Object.assign(state, { info, error: null });
  loadProgress.finish('ready');
  $('loader').hidden = true;
  $('error').hidden = true;
  renderChips(info);
  applyModel(info);
  renderTalora(info.bank, [], 1);
  if (!state.lastStep) $('step-label').textContent = 'waiting for a prompt';
  setPhase(PHASE.READY);
}

function showError({ code, message, recover, during }) {
  state.error = { code, message, recover, during };
  $('error').hidden = false;
  $('error-title').textContent = during === 'load' ? 'The model could not be loaded' : 'Generation failed';
  $('error-text').textContent = message;
  if (during === 'load') {
    $('loader').hidden = true;
    setPhase(PHASE.ERROR);
  } else {
    $('step-label').textContent = 'failed';
    setPhase(PHASE.READY); // the model is still loaded: a corrected request can run
  }
}

function showPrefill({ done, total, at }) {
  state.prefill.push({ done, total, at });
  if (state.phase === PHASE.GENERATING) $('step-label').textContent = `reading the prompt · ${done.toLocaleString()} / ${total.toLocaleString()} tokens`;
}

function showStep(step) {
  state.steps += 1;
  state.lastStep = step;
  state.trace.push({ span: step.span, step: step.step, t: step.t, committed: step.committedTokens, retrieved: step.retrieved.map((r) => r.position), at: step.at });
  renderCells(step);
  renderTalora(state.info.bank, step.talora, step.t);
  renderRetrievals(state.info.bank, step.retrieved);
  state.retrievals = (step.step === 0 && step.span === 0 ? 0 : state.retrievals || 0) + step.retrieved.length;
  $('dgr-total').textContent = `this step · ${state.retrievals} in this answer`;
  if (state.phase === PHASE.GENERATING) $('step-label').textContent = `block ${step.span} · step ${step.step} · t = ${step.t.toFixed(2)}`;
  renderStats({ tokensPerSecond: step.tokensPerSecond, steps: state.steps, forwardMs: step.forwardMs });
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
  renderStats(stats);
  $('step-label').textContent = interrupted ? 'stopped' : `done · ${stats.generatedTokens} tokens · ${stats.finishReason}`;
  setPhase(PHASE.READY);
  if (message.trajectory) keepTrajectory(message.trajectory);
}

// --- learning: the answer's trajectory and the user's feedback, kept in IndexedDB ---------------

function openStore() {
  store = TrajectoryStore.open().catch((e) => {
    notify(`Answers and feedback cannot be kept in this browser (${e?.message || e}): feedback is off.`, 'warning');
    return null;
  });
  store.then(countLearned);
}

async function countLearned(kept) {
  if (kept) state.learned = await kept.count();
}

function showFeedback() {
  const last = state.feedback.filter((f) => f.kind === 'up' || f.kind === 'down').pop();
  $('thumb_up').setAttribute('aria-pressed', String(last?.kind === 'up'));
  $('thumb_down').setAttribute('aria-pressed', String(last?.kind === 'down'));
  const corrected = state.feedback.some((f) => f.kind === 'correction');
  const said = [last && (last.kind === 'up' ? 'good' : 'bad'), corrected && 'corrected'].filter(Boolean).join(', ');
  $('feedback-status').textContent = said ? `Kept on this device: ${said}.` : '';
}

// After the answer is on screen: the store's write is not on the generation's path.
async function keepTrajectory(trajectory) {
  const kept = await store;
  if (!kept) return;
  try {
    await kept.addTrajectory(trajectory);
  } catch (e) {
    notify(`This answer could not be kept for learning (${e?.message || e}).`, 'warning');
    return;
  }
  if (state.complete?.trajectory?.id !== trajectory.id || state.phase !== PHASE.READY) return; // a newer run
  Object.assign(state, { answerId: trajectory.id, feedback: [] });
  showFeedback();
  applyControls();
  countLearned(kept);
}

async function giveFeedback(kind, correction = null) {
  const id = state.answerId;
  if (!controlsFor(state.phase, formValues(), caps)[kind === 'correction' ? 'save_correction' : `thumb_${kind}`]) return;
  try {
    const record = await (await store).addFeedback({ completion_id: id, kind, correction });
    if (state.answerId !== id) return;
    state.feedback.push(record);
    if (kind === 'correction') $('correction').value = '';
  } catch (e) {
    notify(`The feedback could not be kept (${e?.message || e}).`, 'warning');
    return;
  }
  showFeedback();
  applyControls();
  countLearned(await store);
}

// --- settings -> GenerationSettings ------------------------------------------------------------

function readSettings() {
  const num = (id) => ($(id).value === '' ? null : Number($(id).value));
  const enabled = controlsFor(PHASE.READY, formValues(), caps);
  const when = (id, value) => (enabled[id] ? value : null); // what does nothing is not sent
  return {
    sampler: $('sampler').value,
    acceptance: when('acceptance', $('acceptance').value),
    length: num('length'),
    block_size: when('block_size', num('block_size')),
    steps: when('steps', num('steps')),
    decoding: when('decoding', $('decoding').value),
    threshold: when('threshold', num('threshold')),
    entropy_bound: when('entropy_bound', num('entropy_bound')),
    order: when('order', $('order').value),
    temperature: num('temperature'),
    top_p: when('top_p', num('top_p')),
    talora: $('talora').checked,
    dgr: $('dgr').checked,
  };
}

// --- worker ----------------------------------------------------------------------------------

function onMessage({ data }) {
  switch (data.type) {
    case OUT.PROGRESS: return loadProgress.report(data);
    case OUT.NOTICE: return notify(data.text, data.level);
    case OUT.READY: return showReady(data.info);
    case OUT.PREFILL: return showPrefill(data);
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

// (Re)start the engine: any generation dies with the old worker, so the page starts over clean.
function load(ep, { forget = false } = {}) {
  Object.assign(state, { info: null, error: null });
  caps = capabilitiesOf(null);
  $('error').hidden = true;
  $('chip-ep').textContent = 'starting…';
  $('step-label').textContent = 'waiting for the model';
  setPhase(PHASE.LOADING);
  loadProgress.start('starting the engine');
  startWorker();
  worker.postMessage({ ...loadMessage, ep, forget, type: IN.LOAD });
}

// Start a generation; resolves with the complete message (or rejects with the error).
function start(prompt, settings, { chat = true, seed = 0 } = {}) {
  if (state.phase !== PHASE.READY) return Promise.reject(new Error(`cannot generate while ${state.phase}`));
  if (!String(prompt).trim()) return Promise.reject(new Error('prompt: empty (give some text)'));
  Object.assign(state, { steps: 0, complete: null, lastStep: null, error: null, trace: [], prefill: [], interruptAt: null, answerId: null, feedback: [] });
  showFeedback();
  $('error').hidden = true;
  $('output').textContent = '';
  $('step-label').textContent = 'reading the prompt';
  setPhase(PHASE.GENERATING);
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

function stop() {
  if (state.phase !== PHASE.GENERATING) return;
  state.interruptAt = performance.timeOrigin + performance.now(); // comparable across threads
  if (interruptBuffer) Atomics.store(new Int32Array(interruptBuffer), 0, 1); // seen by the worker at once
  worker.postMessage({ type: IN.INTERRUPT });
  $('step-label').textContent = 'stopping…';
  setPhase(PHASE.STOPPING);
}

// Scripts (benchmarks, embedding pages) drive the same path as the form, with any
// GenerationSettings field (e.g. stop_at_eos), through window.ruvdllm.run(prompt, settings, options).
state.run = start;
// The page's trajectory store (null where IndexedDB is unavailable), for scripts and tests.
state.trajectories = () => store;

function submit() {
  if (!controlsFor(state.phase, formValues(), caps).generate) return; // Ctrl+Enter obeys the button
  start($('prompt').value, readSettings(), { chat: $('chat').checked, seed: Number($('seed').value) || 0 }).catch(() => {});
}

async function main() {
  for (const option of $('sampler').options) option.dataset.label = option.textContent;
  setPhase(PHASE.LOADING);
  $('prompt-form').addEventListener('submit', (e) => {
    e.preventDefault();
    submit();
  });
  $('prompt').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      submit();
    }
  });
  $('prompt').addEventListener('input', applyControls);
  $('settings').addEventListener('input', applyControls);
  $('settings').addEventListener('change', applyControls);
  $('stop').addEventListener('click', stop);
  $('thumb_up').addEventListener('click', () => giveFeedback('up'));
  $('thumb_down').addEventListener('click', () => giveFeedback('down'));
  $('save_correction').addEventListener('click', () => giveFeedback('correction', $('correction').value));
  $('correction').addEventListener('input', applyControls);
  openStore();
  $('skip').addEventListener('click', (e) => {
    e.preventDefault(); // focus, without a #fragment in the address
    $('prompt').focus();
  });
  $('threshold').addEventListener('input', () => { $('threshold-value').textContent = Number($('threshold').value).toFixed(2); });
  $('ep').addEventListener('change', () => load($('ep').value));
  $('reload').addEventListener('click', () => location.reload());
  $('redownload').addEventListener('click', () => load($('ep').value, { forget: true }));
  if (/Mac|iPhone|iPad/.test(navigator.platform)) $('submit-keys').textContent = '⌘+Enter';

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
    notify('This page is not cross-origin isolated (COOP/COEP headers missing): WebAssembly runs on one thread.', 'warning');
  }
  const ep = params.get('ep') || 'auto';
  $('ep').value = ep;
  // Absolute URLs: the worker resolves relative ones against its own script's location.
  const absolute = (url) => new URL(url, location.href).href;
  // The wasm-target variant of the served model (app-config.json `wasmModel`), or `?wasm-model=`;
  // a model named by `?model=` has none unless given too.
  const wasmModelUrl = params.get('wasm-model') || (params.get('model') ? null : config.wasmModel);
  loadMessage = {
    modelUrl: absolute(modelUrl),
    wasmModelUrl: wasmModelUrl ? absolute(wasmModelUrl) : null,
    wheelUrl: absolute(config.wheel),
    numThreads: Number(params.get('threads')) || defaultThreads(), // the page's view of the cores
    interruptBuffer,
    memoryMB: Number(params.get('memory')) || null,
    pieceRows: Number(params.get('prefill')) || null,
  };
  load(ep);
}

main().catch((e) => showError({ code: 'internal', message: String(e.message || e), during: 'load' }));
