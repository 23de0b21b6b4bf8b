// The engine worker: hosts Pyodide (the runtime's sampler, TALoRA and DGR — the same Python code
// as on CPython), onnxruntime-web (the forward passes) and the tokenizer. The page talks to it only
// through the messages of protocol.js.

import { IN, OUT, RECOVERABLE_BY_REDOWNLOAD } from './protocol.js';
import { bootPython, canBlockOnPromises } from './python.js';
import { ModelError, ModelStore } from './model_store.js';
import { ModelRunner, cacheOutputNames, createSession, deviceLimits, loadOrt, probeWebGPU } from './ort_engine.js';
import { meterDevice, uploadToGpu } from './gpu_cache.js';
import { INDEX_SUFFIX as WIDENED_INDEX, widenAll } from './widen.js';
import { ModelTokenizer } from './tokenizer.js';
import { PatternIndex } from './pattern_index.js';
import { answerPrefix, stepView } from './views.js';
import { formatPrompt } from './chat.js';
import { newCompletionId, stepSummary, trajectoryRecord } from './trajectory_store.js';

const post = (message) => self.postMessage(message);
const progress = (phase, value, text, extra = {}) => post({ type: OUT.PROGRESS, phase, progress: value, text, ...extra });
const notice = (text, level = 'info') => post({ type: OUT.NOTICE, level, text });

let python = null; // Promise<pyodide>, started once
let engine = null; // the loaded model: {pyodide, session, runner, tokenizer, config, info}
// Stop requests: a flag in a SharedArrayBuffer the page writes (seen at once, even while this
// worker's event loop is busy: with one wasm thread session.run resolves without yielding to it),
// and the 'interrupt' message where there is no SharedArrayBuffer.
const interrupt = { view: null, requested: false };
const INTERRUPTED = 'ruvdllm:interrupted';
const stopRequested = () => interrupt.requested || (interrupt.view !== null && Atomics.load(interrupt.view, 0) !== 0);
let lastLoad = null;

const decoder = new TextDecoder();
const textOf = (bytes) => decoder.decode(bytes);

// The informative line of an error: a Python traceback ends with it, a JavaScript error starts with it.
function lastLine(error) {
  const lines = String(error?.message || error).trim().split('\n').map((l) => l.trim()).filter(Boolean);
  return (lines[0] === 'Traceback (most recent call last):' ? lines[lines.length - 1] : lines[0]) || 'unknown error';
}

function userMessage(error) {
  // A Python RuvdllmError arrives as a PythonError whose last line is "...RuvdllmError: <message>".
  const text = String(error?.message || error);
  const match = text.match(/RuvdllmError: (.*)\s*$/);
  if (match) return { code: 'settings', message: match[1].trim() };
  // The engine's allocation failed (e.g. "failed to call OrtRun(). ERROR_CODE: 6, ERROR_MESSAGE:
  // std::bad_alloc"): the estimate that should have refused the run first was too optimistic.
  if (/bad_alloc|out of memory|Out of memory|Array buffer allocation failed/.test(text)) {
    return { code: 'memory', message: 'this device ran out of memory during the forward: shorten the prompt or the length (or use BD3LM)' };
  }
  return { code: error?.code || 'internal', message: text.trim().split('\n').slice(-1)[0] };
}

// Python boots while the model downloads; its status is shown once the files are in, so that the
// load's phases (and the page's bar) only move forward.
const pythonStatus = { text: 'starting Python', shown: false };

async function startPython(wheelUrl) {
  python ??= bootPython({
    wheelUrl,
    onStatus: (text) => {
      pythonStatus.text = text;
      if (pythonStatus.shown) progress('runtime', 0, text);
    },
  });
  return python;
}

function writeFiles(pyodide, root, files) {
  for (const [name, bytes] of Object.entries(files)) {
    const path = `${root}/${name}`;
    pyodide.FS.mkdirTree(path.slice(0, path.lastIndexOf('/')));
    pyodide.FS.writeFile(path, bytes);
  }
}

// Zero-filled inputs for adapter banks the artifact does not carry (shapes from the graph; the
// symbolic slot axis, bank_width, is `width`).
function zeroInputs(ort, session, present, width) {
  const zeros = {};
  for (const meta of session.inputMetadata) {
    if (!meta.name.startsWith('adapter.') || present[meta.name]) continue;
    const dims = meta.shape.map((d) => (typeof d === 'number' ? d : width));
    zeros[meta.name] = new ort.Tensor('float32', new Float32Array(dims.reduce((a, b) => a * b, 1)), dims);
  }
  return zeros;
}

// What the page calls the model: the checkpoint's file or directory name, else the architecture.
function modelName(config) {
  const path = config.source?.path;
  return path ? String(path).split(/[\\/]/).filter(Boolean).pop().replace(/\.gguf$/i, '') : config.architecture;
}

// One macrotask turn (a MessageChannel round trip: no timer clamping).
function yieldToEventLoop() {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => resolve();
    channel.port2.postMessage(null);
  });
}

// The execution provider before the model is read (which graph to download depends on it: a model
// may come with a variant built for the wasm target, whose widened float32 linears are many times
// faster there than the WebGPU graph's MatMulNBits; docs/web.md "Model loading").
async function chooseEp(requested) {
  if (requested === 'wasm') return 'wasm';
  const gpu = await probeWebGPU();
  if (!gpu.ok) {
    notice(`WebGPU is unavailable (${gpu.reason}): running on WebAssembly (CPU) instead.`, 'warning');
    return 'wasm';
  }
  if (gpu.software && requested !== 'webgpu') {
    // 'auto' only: asking for WebGPU by name still gets it (to test a page on a software adapter)
    notice(`The WebGPU adapter is a software one (${gpu.adapter}): running on WebAssembly, which is faster on the CPU.`, 'info');
    return 'wasm';
  }
  return 'webgpu';
}

// The graph must have been built for the browser EP it runs on (config.json `targets`, written by
// the exporter): the wasm target's graph was never validated on WebGPU, and a cpu or cuda graph was
// never validated in the browser. Asked for by name, a mismatch is a one-line error naming the
// target; under 'auto' a graph without the webgpu target runs on WebAssembly.
function checkTarget(chosen, requested, config) {
  const targets = config.targets || [];
  const built = `model.onnx: built for target ${targets.join('/') || 'unknown'}`;
  if (chosen === 'webgpu' && !targets.includes('webgpu')) {
    if (requested === 'webgpu') throw new ModelError('wrong-target', `${built}, not webgpu: export it with --target webgpu (or open the page with ?ep=wasm)`, 'model.onnx');
    notice(`This model was not exported for WebGPU (its config lists ${targets.join('/') || 'no'} target): running on WebAssembly.`, 'warning');
    return 'wasm';
  }
  if (chosen === 'wasm' && !targets.some((t) => t === 'wasm' || t === 'webgpu')) {
    throw new ModelError('wrong-target', `${built}, not the browser: export it with --target wasm (or webgpu)`, 'model.onnx');
  }
  return chosen;
}

// A graph whose ops need a newer onnxruntime than this page's fails here in one line naming its
// target, not deep inside session creation (config.requires_onnxruntime, written by the exporter).
function checkOrtVersion(config, have) {
  const needed = config.requires_onnxruntime;
  if (!needed || !have) return;
  const parts = (v) => String(v).split('.').map((p) => parseInt(p, 10) || 0);
  const [a, b] = [parts(have), parts(needed)];
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if ((a[i] || 0) !== (b[i] || 0)) {
      if ((a[i] || 0) > (b[i] || 0)) return;
      const targets = (config.targets || []).join('/');
      throw new ModelError('model-invalid', `model.onnx: built for target ${targets} (${config.attention} attention), which needs onnxruntime >= ${needed}; this page has onnxruntime-web ${have}: export the model with --target webgpu`, 'model.onnx');
    }
  }
}

async function makeRunner(config, files, ep, numThreads, bankInputs) {
  const graphName = 'model.onnx';
  if (!files[graphName]) throw new ModelError('not-a-model', `${graphName}: not in the model directory`, graphName);
  const externalData = Object.entries(files)
    .filter(([name]) => name.endsWith('.data'))
    .map(([path, data]) => ({ path, data }));
  const widened = widenedIndex(files, graphName);
  if (widened) {
    // The wasm target: its MatMul weights, widened from the shipped blocks (js/widen.js). This
    // worker does it, so the page stays responsive; a turn of the event loop per tensor lets a
    // message in.
    externalData.push(
      await widenAll(widened, files[widened.blocks], async (done, total) => {
        progress('session', (0.5 * done) / total, `widening the weights to float32: ${done} / ${total}`);
        await yieldToEventLoop();
      }),
    );
  }
  const ort = await loadOrt(ep, { numThreads });
  checkOrtVersion(config, ort.env.versions?.web || ort.env.versions?.common);
  // On WebGPU the key/value cache stays in GPU buffers between forwards (js/gpu_cache.js).
  const gpuOutputs = ep === 'webgpu' ? cacheOutputNames(config) : [];
  const session = await createSession(ort, files[graphName], { ep, externalData, gpuOutputs });
  const device = ep === 'webgpu' ? await ort.env.webgpu.device : null; // onnxruntime-web's own
  if (device) meterDevice(device);
  const banks = {};
  for (const [name, data] of Object.entries(bankInputs)) {
    const meta = session.inputMetadata.find((m) => m.name === name);
    if (!meta) continue;
    // The slot axis is symbolic (bank_width: slots·rank when a bank is bound, 0 without): its size
    // is what the data holds beyond the fixed dimensions.
    const fixed = meta.shape.reduce((a, d) => (typeof d === 'number' ? a * d : a), 1);
    const dims = meta.shape.map((d) => (typeof d === 'number' ? d : data.length / fixed));
    banks[name] = new ort.Tensor('float32', data, dims);
  }
  // Without a bank the slot axis is bound empty (the bank branches read nothing) on wasm; WebGPU
  // keeps full-width zeros until empty tensors are proven on its kernels.
  const width = ep === 'webgpu' ? config.adapter_slots * config.adapter_rank : 0;
  Object.assign(banks, zeroInputs(ort, session, banks, width));
  // The banks are the same every forward: on WebGPU they go to the device once, not at every run.
  if (device) for (const [name, tensor] of Object.entries(banks)) banks[name] = uploadToGpu(ort, device, tensor);
  return new ModelRunner(ort, session, config, banks, ep, {
    device,
    // Checked before every forward: the step in flight finishes, the next one does not start.
    beforeRun: async () => {
      if (!interrupt.view) await yieldToEventLoop(); // let an 'interrupt' message in
      if (stopRequested()) throw new Error(INTERRUPTED);
    },
  });
}

// The wasm target's widened-weights index (js/widen.js), or null for a graph without one.
function widenedIndex(files, graphName) {
  const bytes = files[graphName + WIDENED_INDEX];
  if (!bytes) return null;
  const index = JSON.parse(textOf(bytes));
  if (!files[index.blocks]) throw new ModelError('not-a-model', `${index.blocks}: not in the model directory`, index.blocks);
  return index;
}

// Flat float32 bank tensors from Python (runtime.banks.Bank.assemble), copied out of wasm memory.
function bankInputsFrom(pySession) {
  const out = {};
  const tensors = pySession.bank_tensors();
  for (const name of tensors.keys()) {
    const array = tensors.get(name);
    const view = array.getBuffer('f32');
    out[name] = view.data.slice();
    view.release();
    array.destroy();
  }
  tensors.destroy();
  return out;
}

async function load({ modelUrl, wasmModelUrl = null, wheelUrl, ep = 'auto', numThreads, interruptBuffer, forget = false, memoryMB = null, pieceRows = null }) {
  const started = performance.now();
  lastLoad = { modelUrl, wasmModelUrl, wheelUrl, ep, numThreads, interruptBuffer };
  if (!canBlockOnPromises()) {
    throw new ModelError('unsupported', 'This browser lacks JavaScript Promise Integration (WebAssembly.Suspending), which the Python sampler needs to await onnxruntime-web: use Chromium 137 or newer.');
  }
  if (interruptBuffer) interrupt.view = new Int32Array(interruptBuffer);
  // A Stop pressed before this load (under an earlier engine) must not stop its warm-up.
  interrupt.requested = false;
  if (interrupt.view) Atomics.store(interrupt.view, 0, 0);
  if (engine) {
    await engine.runner.release();
    engine = null;
  }
  const pythonReady = startPython(wheelUrl);
  let chosen = await chooseEp(ep);
  // On WebAssembly the model's wasm-target variant, where the server offers one.
  const url = chosen === 'wasm' && wasmModelUrl ? wasmModelUrl : modelUrl;
  const base = new URL(url, self.location.href).href;
  lastLoad.loadedUrl = base;
  const store = new ModelStore(base, {
    onProgress: ({ file, loaded, total, source }) =>
      source === 'cache'
        ? progress('cache', total ? loaded / total : 1, `reading the cached model: ${file}`)
        : progress('download', total ? loaded / total : 1, `downloading the model: ${file}`, { loaded, total }),
    onNotice: ({ level, text }) => notice(text, level),
  });
  if (forget) await store.forget(); // the page's "download again"
  const { manifest, files } = await store.load();
  const config = JSON.parse(textOf(files['config.json']));
  chosen = checkTarget(chosen, ep, config);
  const tokenizer = new ModelTokenizer(JSON.parse(textOf(files['tokenizer.json'])));

  pythonStatus.shown = true;
  progress('runtime', 0, pythonStatus.text);
  const pyodide = await pythonReady;
  const root = '/model';
  pyodide.FS.mkdirTree(root);
  // Python reads the config, the adapter bank and the answer store from its own file system; the graph stays here.
  const forPython = (n) => n === 'config.json' || n === 'answers.ngrams' || n.startsWith('banks/');
  writeFiles(pyodide, root, Object.fromEntries(Object.entries(files).filter(([n]) => forPython(n))));
  const { WebSession } = pyodide.pyimport('runtime.pyodide_backend');
  const session = WebSession(root, tokenizer, new PatternIndex(config.hidden_size));
  const bankInputs = bankInputsFrom(session);

  const modelBytes = Object.values(manifest.files).reduce((s, e) => s + e.bytes, 0);
  // What the weights take in onnxruntime-web's heap: the wasm target's blocks become float32 there.
  const widened = widenedIndex(files, 'model.onnx');
  const heapBytes = widened ? modelBytes - widened.blocks_bytes + widened.floats_bytes : modelBytes;
  let runner = null;
  let gpu = null;
  let limits = null;
  const start = async () => {
    progress('session', 0, `creating the ${chosen === 'webgpu' ? 'WebGPU' : 'WebAssembly'} session`);
    runner = await makeRunner(config, files, chosen, numThreads, bankInputs);
    progress('warmup', 0, 'warming up');
    gpu = chosen === 'webgpu' ? await probeWebGPU() : null;
    const wanted = deviceLimits(chosen, { modelBytes: heapBytes, gpu, memoryMB, pieceRows });
    limits = session.attach(runner, pyodide.toPy(definedOnly(wanted))).toJs({ dict_converter: Object.fromEntries });
    await session.warm_up.callPromising();
  };
  try {
    await start();
  } catch (e) {
    console.error(e);
    if (chosen !== 'webgpu') throw new ModelError('model-invalid', `model.onnx: onnxruntime-web cannot run it (${lastLine(e)})`, 'model.onnx');
    notice(`WebGPU could not run this model (${lastLine(e)}): running on WebAssembly instead.`, 'warning');
    if (runner) await runner.release();
    chosen = 'wasm';
    await start();
  }
  const info = {
    ep: chosen,
    adapter: gpu?.adapter || null,
    numThreads: chosen === 'wasm' ? runner.ort.env.wasm.numThreads : null,
    crossOriginIsolated: self.crossOriginIsolated,
    model: {
      name: modelName(config),
      architecture: config.architecture,
      layers: config.num_layers,
      hidden: config.hidden_size,
      vocab: config.vocab_size,
      maxPosition: config.max_position,
      blockSize: config.block_size,
      targets: config.targets,
      bytes: modelBytes,
      chat: Boolean(config.chat_template),
      samplers: config.samplers || [],
      // the verified and AR samplers need rows that compute the base model (runtime/settings.py)
      baseModel: Boolean(config.adapter_gate) || !config.source?.static_adapter,
    },
    limits,
    bank: session.bank_info().toJs({ dict_converter: Object.fromEntries }),
    cache: { ...store.stats },
    loadMs: performance.now() - started,
  };
  engine = { session, runner, tokenizer, config, info, running: false };
  post({ type: OUT.READY, info });
}

// Counters now minus counters then, key by key (what one run added).
const since = (now, then) => Object.fromEntries(Object.entries(now).map(([k, v]) => [k, v - then[k]]));

// Settings left empty on the page are absent (null would reach Python as JsNull, not None).
const definedOnly = (object) => Object.fromEntries(Object.entries(object).filter(([, v]) => v !== null && v !== undefined && !Number.isNaN(v)));

async function generate({ id, prompt, chat = true, seed = 0, settings = {} }) {
  if (!engine) throw new ModelError('not-loaded', 'no model is loaded yet');
  if (engine.running) throw new ModelError('busy', 'a generation is already running');
  // Checked here, on the user's text: a chat template would wrap an empty prompt in markup.
  if (!String(prompt).trim()) throw new ModelError('settings', 'prompt: empty (give some text)');
  const { session, runner, tokenizer, config } = engine;
  const text = formatPrompt(prompt, config, tokenizer, chat);
  engine.running = true;
  interrupt.requested = false;
  if (interrupt.view) Atomics.store(interrupt.view, 0, 0);
  const started = performance.now();
  const runStart = { ms: runner.timings.runMs, runs: runner.timings.runs, jsMs: runner.timings.jsMs };
  const movedBefore = { ...runner.transfers };
  const meter = runner.device?.meter;
  const meteredBefore = meter ? { ...meter } : null;
  const state = { uncertainty: new Map(), tokens: [], steps: 0, viewMs: 0, stopAtEos: settings.stop_at_eos !== false };
  // stamped here, as steps are, so that the page orders pieces and steps by when they happened, not
  // by when their messages arrived
  runner.onPrefill = (done, total) => post({ type: OUT.PREFILL, id, done, total, at: performance.timeOrigin + performance.now() });
  const trajectorySteps = []; // the trajectory record's steps (learning loop A)
  const onStep = (event) => {
    const viewStarted = performance.now();
    trajectorySteps.push(stepSummary(event, settings.talora !== false && engine.info.bank.present));
    state.tokens = event.tokens;
    state.steps += 1;
    const view = stepView(event, runner, tokenizer, config, engine.info.bank, state, viewStarted - started);
    view.at = performance.timeOrigin + performance.now(); // absolute: comparable with the page's clock
    post({ type: OUT.STEP, id, step: view });
    state.viewMs += performance.now() - viewStarted;
    if (stopRequested()) throw new Error(INTERRUPTED);
  };
  let summary = null;
  let interrupted = false;
  try {
    summary = await session.generate_js.callPromising(text, definedOnly(settings), seed, onStep);
  } catch (e) {
    if (!String(e.message || e).includes(INTERRUPTED)) throw e;
    interrupted = true;
  } finally {
    engine.running = false;
    runner.onPrefill = null;
  }
  // Stopped: the answer's unbroken prefix, as the live view shows it (the cells keep the rest).
  const tokens = interrupted ? answerPrefix(state.tokens, new Set(config.eos_token_ids || [])) : summary.tokens;
  const wallMs = performance.now() - started;
  const runs = runner.timings.runs - runStart.runs;
  const runMs = runner.timings.runMs - runStart.ms;
  const stats = {
    promptTokens: summary?.prompt_tokens ?? null,
    generatedTokens: tokens.length,
    steps: summary?.steps ?? state.steps,
    sampler: summary?.sampler ?? null, // the one that ran: the form's "auto" resolved for the model
    acceptance: summary?.acceptance ?? null, // the verified sampler's check that ran
    wallMs,
    tokensPerSecond: tokens.length / (wallMs / 1000),
    forwardMs: runMs / Math.max(runs, 1), // onnxruntime-web session.run per step
    // Python-side forward minus session.run: the Pyodide <-> JavaScript crossing per step
    bridgeMs: summary ? Math.max(summary.bridge_forward_ms - runMs, 0) / Math.max(summary.forwards, 1) : null,
    // of which building the feeds and reading the outputs on this side
    feedsMs: (runner.timings.jsMs - runStart.jsMs - runMs) / Math.max(runs, 1),
    viewMs: state.viewMs / Math.max(state.steps, 1), // the live view's work per step (this worker)
    // the rest of a step: the sampler, TALoRA and DGR in Python (Pyodide)
    pythonMs: summary ? Math.max(summary.wall_ms - summary.bridge_forward_ms, 0) / Math.max(summary.steps, 1) - state.viewMs / Math.max(state.steps, 1) : null,
    finishReason: interrupted ? 'interrupted' : summary.finish_reason,
    ep: runner.ep,
    // bytes this run's forwards moved in and out of the execution provider, the cache's apart
    transfers: since(runner.transfers, movedBefore),
    gpuTensors: runner.gpu.snapshot(), // held after the run: the banks, the cache, the last presents
    // on WebGPU, what the device itself read back and was written, onnxruntime's own moves included
    gpuTraffic: meter ? since(meter, meteredBefore) : null,
  };
  // What the page keeps for learning: answers the user got in full (a stopped one was abandoned,
  // as the server does not record a completion its client dropped).
  const trajectory = interrupted
    ? null
    : trajectoryRecord({
        id: newCompletionId(),
        model: engine.info.model.name,
        // the bank the pattern ids refer to, by its address (the CPython store keeps its directory)
        bank: engine.info.bank.present ? new URL('banks/', lastLoad.loadedUrl).href : null,
        prompt: text,
        promptTokens: summary.prompt_ids,
        settings: { ...definedOnly(settings), sampler: summary.sampler, seed, chat },
        steps: trajectorySteps,
        answer: summary.text,
        answerTokens: tokens,
        finishReason: summary.finish_reason,
        wallMs,
      });
  post({
    type: OUT.COMPLETE,
    id,
    text: interrupted ? tokenizer.decode(tokens) : summary.text,
    tokens,
    promptIds: summary?.prompt_ids ?? null,
    stats,
    interrupted,
    trajectory,
  });
}

async function forget() {
  if (lastLoad?.loadedUrl) await new ModelStore(lastLoad.loadedUrl).forget();
}

self.onmessage = async ({ data }) => {
  try {
    if (data.type === IN.LOAD) await load(data);
    else if (data.type === IN.GENERATE) await generate(data);
    else if (data.type === IN.INTERRUPT) interrupt.requested = true;
    else if (data.type === IN.FORGET) await forget();
    else throw new Error(`unknown message type ${data.type}`);
  } catch (error) {
    const { code, message } = error instanceof ModelError ? error : userMessage(error);
    if (!(error instanceof ModelError) && code === 'internal') console.error(error);
    post({
      type: OUT.ERROR,
      id: data.id ?? null,
      during: data.type,
      code,
      message,
      file: error.file || null,
      recover: RECOVERABLE_BY_REDOWNLOAD.has(code) ? 'redownload' : null,
    });
  }
};
