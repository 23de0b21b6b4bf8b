// onnxruntime-web: choosing the execution provider, creating the session, and the per-step
// runner that the Python backend (runtime/pyodide_backend.py) drives.
//
// The runner keeps everything of size O(d) on this side of the Pyodide <-> JavaScript boundary:
// the key/value cache (present_* of the last forward, sliced on commit), the adapter banks
// (bound once) and the DGR query rows (fetched one row at a time, only for positions that
// retrieve). Per step only the chunk's ids and adapter weights come in (O(S·slots)) and the
// top-k candidates, logsumexp and entropy go out (O(S'·top_k)). On WebGPU the cache does not even
// come to JavaScript: it stays in GPU buffers between forwards (js/gpu_cache.js).

import { GpuTensors, slicePositionsOnGpu, tensorBytes } from './gpu_cache.js';

const ORT_DIR = new URL('../vendor/ort/', import.meta.url).href;

// Which onnxruntime-web build serves each EP. The plain wasm build is the smallest and fastest on
// CPU; WebGPU needs a build that can await the GPU from inside wasm: the JSPI one where the
// browser has JavaScript Promise Integration (smaller, faster), the asyncify one otherwise.
export function bundleFor(ep) {
  if (ep === 'wasm') return 'ort.wasm.min.mjs';
  if (ep === 'webgpu') return typeof WebAssembly.Suspending === 'function' ? 'ort.jspi.min.mjs' : 'ort.webgpu.min.mjs';
  throw new Error(`unknown execution provider ${ep}`);
}

export async function probeWebGPU() {
  if (!('gpu' in navigator) || !navigator.gpu) return { ok: false, reason: 'this browser does not expose WebGPU' };
  let adapter = null;
  try {
    adapter = await navigator.gpu.requestAdapter();
  } catch (e) {
    return { ok: false, reason: `WebGPU adapter request failed (${e.message})` };
  }
  if (!adapter) return { ok: false, reason: 'no WebGPU adapter is available' };
  const info = adapter.info || {};
  const name = [info.vendor, info.architecture, info.description].filter(Boolean).join(' ') || 'unknown adapter';
  // onnxruntime-web asks the device for the adapter's own buffer limits
  const largestTensor = Math.min(adapter.limits.maxStorageBufferBindingSize, adapter.limits.maxBufferSize);
  return { ok: true, adapter: name, largestTensor, software: isSoftwareAdapter(info) };
}

// A CPU rasteriser behind the WebGPU API (Chromium's SwiftShader on a machine without a GPU, Mesa's
// llvmpipe, or whatever the browser flags as its fallback adapter): it runs the model on the CPU
// some hundred times slower than onnxruntime-web's WebAssembly kernels do.
export function isSoftwareAdapter(info) {
  if (info.isFallbackAdapter) return true;
  const text = [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' ').toLowerCase();
  return /swiftshader|llvmpipe|lavapipe|softpipe|software|microsoft basic render/.test(text);
}

const GiB = 2 ** 30;
// onnxruntime-web's WebAssembly memory is 32-bit: 4 GiB at most, the weights included.
const WASM_MEMORY = 4 * GiB;

// What one forward may use (runtime/memory_plan.py DeviceLimits): on WebAssembly what the 4 GiB heap
// leaves beside the weights (held twice while the session is created); and at most half the
// device's memory (navigator.deviceMemory: GiB, rounded, 8 at most in Chromium; unknown: 8).
// memoryMB and pieceRows: the page's `?memory=` and `?prefill=`, for small devices and tests.
export function deviceLimits(ep, { modelBytes, gpu = null, memoryMB = null, pieceRows = null }) {
  const device = ((navigator.deviceMemory || 8) * GiB) / 2;
  let budget = ep === 'wasm' ? Math.min(WASM_MEMORY - 2 * modelBytes, device) : device;
  if (memoryMB) budget = memoryMB * 1e6;
  return {
    budget: Math.floor(budget),
    largest_tensor: ep === 'webgpu' && gpu?.largestTensor ? gpu.largestTensor : null,
    piece_rows: pieceRows || null,
  };
}

// WebAssembly threads by default: every logical core, at most 4. onnxruntime-web's own default is
// half of them, which on a 2-core device is one thread. Measured on a 2-core VM (docs/web.md,
// "Threads"): two threads spend ~1.4x the CPU of one per forward, so on an idle device they are
// ~1.3x faster; on a machine whose cores are busy with other work one thread is faster
// (?threads=1). A page waiting for its answer usually has the device to itself.
export function defaultThreads() {
  return Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1));
}

// Load (once per EP) the ort module for `ep`, configured for `numThreads` wasm threads.
const modules = new Map();
export async function loadOrt(ep, { numThreads } = {}) {
  if (!modules.has(ep)) {
    const ort = await import(ORT_DIR + bundleFor(ep));
    ort.env.wasm.wasmPaths = ORT_DIR;
    // Without cross-origin isolation there is no SharedArrayBuffer: onnxruntime-web would drop
    // to one thread on its own; asking for one avoids its warning.
    ort.env.wasm.numThreads = self.crossOriginIsolated ? numThreads || defaultThreads() : 1;
    ort.env.logLevel = 'error';
    modules.set(ep, ort);
  }
  return modules.get(ep);
}

// Create an InferenceSession for the model bytes (+ external data files) on exactly `ep`.
// gpuOutputs: output names the WebGPU session leaves in GPU buffers instead of reading them back.
export async function createSession(ort, modelBytes, { ep, externalData = [], gpuOutputs = [] }) {
  const options = {
    executionProviders: [ep],
    graphOptimizationLevel: 'all',
    logSeverityLevel: 3, // errors only: node-placement warnings are expected (shape ops stay on CPU)
    externalData: externalData.map(({ path, data }) => ({ path, data })),
  };
  if (gpuOutputs.length) options.preferredOutputLocation = Object.fromEntries(gpuOutputs.map((n) => [n, 'gpu-buffer']));
  return ort.InferenceSession.create(modelBytes, options);
}

const int64 = (values) => BigInt64Array.from(values, (v) => BigInt(v));

// The graph's names (runtime/artifact.py): the contract between the exporter and every runtime.
const names = {
  pastKey: (l) => `past_key.${l}`,
  pastValue: (l) => `past_value.${l}`,
  presentKey: (l) => `present_key.${l}`,
  presentValue: (l) => `present_value.${l}`,
};

// The outputs a WebGPU session keeps on the GPU: the key/value cache, which only ever goes back in.
export function cacheOutputNames(config) {
  return Array.from({ length: config.num_layers }, (_, l) => [names.presentKey(l), names.presentValue(l)]).flat();
}
const isCache = (name) => name.startsWith('past_') || name.startsWith('present_');

// Keep the first `keep` positions of a [1, heads, P, headDim] float32 tensor.
export function slicePositions(ort, tensor, keep) {
  const [one, heads, positions, headDim] = tensor.dims;
  if (keep > positions) throw new Error(`cannot keep ${keep} of ${positions} cached positions`);
  const out = new Float32Array(one * heads * keep * headDim);
  const src = tensor.data;
  for (let h = 0; h < heads; h++) {
    out.set(src.subarray(h * positions * headDim, (h * positions + keep) * headDim), h * keep * headDim);
  }
  return new ort.Tensor('float32', out, [one, heads, keep, headDim]);
}

export class ModelRunner {
  // config: the artifact's config.json; banks: {inputName: ort.Tensor} for every adapter.* input;
  // beforeRun: awaited before each forward (may throw to stop a generation); device: the WebGPU
  // device of a session whose present_* stay on the GPU (createSession gpuOutputs), else null.
  constructor(ort, session, config, banks, ep, { beforeRun = async () => {}, device = null } = {}) {
    this.beforeRun = beforeRun;
    this.onPrefill = null; // (rows done, rows in all) while a long prompt is read in pieces
    this.ort = ort;
    this.session = session;
    this.config = config;
    this.banks = banks;
    this.ep = ep;
    this.device = device;
    this.timings = { runs: 0, runMs: 0, jsMs: 0 }; // session.run alone, and all of forward() on this side
    // Bytes the forwards moved between JavaScript and the execution provider's memory, the
    // key/value cache's share apart: what `?ep=webgpu` keeps on the GPU shows here as 0.
    this.transfers = { forwards: 0, inBytes: 0, kvInBytes: 0, outBytes: 0, kvOutBytes: 0 };
    this.gpu = new GpuTensors();
    Object.values(banks).forEach((t) => this.gpu.hold(t)); // on WebGPU, uploaded once (worker.js)
    this.past = [];
    this.last = null;
    this.reset();
  }

  reset() {
    const { num_layers: layers, num_kv_heads: kv, head_dim: hd } = this.config;
    const empty = () => new this.ort.Tensor('float32', new Float32Array(0), [1, kv, 0, hd]);
    this.dropPast();
    this.dropLast();
    this.past = Array.from({ length: layers }, () => ({ key: empty(), value: empty() }));
  }

  dropPast() {
    this.past.forEach((p) => {
      this.gpu.release(p.key);
      this.gpu.release(p.value);
    });
  }

  dropLast() {
    if (this.last) Object.values(this.last).forEach((t) => this.gpu.release(t));
    this.last = null;
  }

  // Count what crosses: inputs fed from JavaScript memory, outputs read back into it.
  count(feeds, out) {
    const t = this.transfers;
    t.forwards += 1;
    for (const [name, tensor] of Object.entries(feeds)) {
      if (tensor.location !== 'cpu') continue;
      t.inBytes += tensorBytes(tensor);
      if (isCache(name)) t.kvInBytes += tensorBytes(tensor);
    }
    for (const [name, tensor] of Object.entries(out)) {
      if (tensor.location !== 'cpu') continue;
      t.outBytes += tensorBytes(tensor);
      if (isCache(name)) t.kvOutBytes += tensorBytes(tensor);
    }
  }

  cached() {
    return this.past.length ? this.past[0].key.dims[2] : 0;
  }

  // One forward. ids/positions/blocks: numbers [S]; weights: numbers [S * slots] (row-major);
  // gate: numbers [S] (1 = conversion adapter on, 0 = the base AR model) or null (on everywhere),
  // fed only to a graph with the adapter switch (config.adapter_gate).
  async forward(inputIds, positionIds, blockIds, outputOffset, adapterWeights, adapterGate = null) {
    const entered = performance.now();
    const { ort, config } = this;
    const S = inputIds.length;
    const slots = config.adapter_slots;
    const feeds = {
      input_ids: new ort.Tensor('int64', int64(inputIds), [1, S]),
      position_ids: new ort.Tensor('int64', int64(positionIds), [1, S]),
      block_ids: new ort.Tensor('int64', int64(blockIds), [1, S]),
      output_offset: new ort.Tensor('int64', int64([outputOffset]), [1]),
      adapter_weights: new ort.Tensor('float32', Float32Array.from(adapterWeights), [1, S, slots]),
      ...this.banks,
    };
    if (config.adapter_gate) {
      const gate = adapterGate ? Float32Array.from(adapterGate) : new Float32Array(S).fill(1);
      feeds.adapter_gate = new ort.Tensor('float32', gate, [1, S]);
    }
    this.past.forEach((p, l) => {
      feeds[names.pastKey(l)] = p.key;
      feeds[names.pastValue(l)] = p.value;
    });
    await this.beforeRun();
    const started = performance.now();
    const out = await this.session.run(feeds);
    this.timings.runMs += performance.now() - started;
    this.timings.runs += 1;
    this.count(feeds, out);
    // The previous forward's outputs are done with (the cache was sliced out of them on commit).
    this.dropLast();
    Object.values(out).forEach((t) => this.gpu.hold(t));
    this.last = out;
    const [, rows, topK] = out.topk_ids.dims;
    const result = {
      rows,
      topK,
      // vocabulary ids fit in int32: a smaller, BigInt-free array for the crossing
      topkIds: Int32Array.from(out.topk_ids.data, Number),
      topkLogits: out.topk_logits.data,
      logsumexp: out.logsumexp.data,
      entropy: out.entropy.data,
    };
    this.timings.jsMs += performance.now() - entered;
    return result;
  }

  // The DGR query of one output row of the last forward: hidden floats.
  query(row) {
    const q = this.last.query;
    const hidden = q.dims[2];
    return q.data.slice(row * hidden, (row + 1) * hidden);
  }

  // The cache becomes the last forward's present keys/values, first `keep` positions: sliced in
  // JavaScript memory, or on the device when the session left them in GPU buffers.
  commit(keep) {
    if (!this.last) throw new Error('commit before any forward');
    const onGpu = this.last[names.presentKey(0)].location === 'gpu-buffer';
    const encoder = onGpu ? this.device.createCommandEncoder() : null;
    const slice = (tensor) =>
      onGpu ? this.gpu.hold(slicePositionsOnGpu(this.ort, this.device, encoder, tensor, keep)) : slicePositions(this.ort, tensor, keep);
    const past = this.past.map((_, l) => ({
      key: slice(this.last[names.presentKey(l)]),
      value: slice(this.last[names.presentValue(l)]),
    }));
    if (encoder) this.device.queue.submit([encoder.finish()]);
    this.dropPast();
    this.past = past;
  }

  // Called by Python (runtime/pyodide_backend.py) after each piece of a long prompt.
  prefilled(done, total) {
    this.onPrefill?.(done, total);
  }

  async release() {
    this.dropPast();
    this.dropLast();
    Object.values(this.banks).forEach((t) => this.gpu.release(t));
    this.past = [];
    await this.session.release();
  }
}
