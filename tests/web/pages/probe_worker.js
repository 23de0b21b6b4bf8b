// Test-side worker: exercises web/js/ modules on request (see probe.html).
import { loadOrt, createSession, probeWebGPU, bundleFor, slicePositions } from '/js/ort_engine.js';
import { slicePositionsOnGpu } from '/js/gpu_cache.js';
import { ModelTokenizer } from '/js/tokenizer.js';
import { bootPython } from '/js/python.js';
import { renderChat } from '/js/chat.js';

let pyodide = null;

async function bytesOf(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}
const typed = { float32: Float32Array, int32: Int32Array, uint8: Uint8Array };

const ops = {
  async env() {
    return {
      crossOriginIsolated: self.crossOriginIsolated,
      hardwareConcurrency: navigator.hardwareConcurrency,
      webgpu: await probeWebGPU(),
      jspi: typeof WebAssembly.Suspending === 'function',
    };
  },

  // Run a graph once: feeds {name: {type, dims, data}} -> outputs {name: {dims, data}}.
  async ort({ ep, modelUrl, feeds, numThreads }) {
    const ort = await loadOrt(ep, { numThreads });
    const session = await createSession(ort, await bytesOf(modelUrl), { ep });
    const inputs = {};
    for (const [name, { type, dims, data }] of Object.entries(feeds)) {
      inputs[name] = type === 'int64'
        ? new ort.Tensor('int64', BigInt64Array.from(data, BigInt), dims)
        : new ort.Tensor(type, typed[type].from(data), dims);
    }
    const out = await session.run(inputs);
    const outputs = {};
    for (const [name, t] of Object.entries(out)) outputs[name] = { dims: t.dims, data: Array.from(t.data, Number) };
    await session.release();
    return { outputs, numThreads: ort.env.wasm.numThreads, bundle: bundleFor(ep) };
  },

  // Slice [1, heads, positions, headDim] caches on the GPU (one command buffer for all cases, as a
  // commit does) and in JavaScript memory: both results per case, read back.
  async sliceCache({ cases }) {
    const ort = await loadOrt('webgpu');
    const device = await (await navigator.gpu.requestAdapter()).requestDevice();
    const encoder = device.createCommandEncoder();
    const sliced = cases.map(({ dims, data, keep }) => {
      const values = Float32Array.from(data);
      const buffer = device.createBuffer({ size: Math.ceil(values.byteLength / 16) * 16, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
      device.queue.writeBuffer(buffer, 0, values);
      const onGpu = ort.Tensor.fromGpuBuffer(buffer, { dataType: 'float32', dims });
      return { gpu: slicePositionsOnGpu(ort, device, encoder, onGpu, keep), cpu: slicePositions(ort, new ort.Tensor('float32', values, dims), keep), buffer };
    });
    device.queue.submit([encoder.finish()]);
    const results = [];
    for (const { gpu, cpu, buffer } of sliced) {
      const location = gpu.location; // getData() below moves it to 'cpu'
      const data = location === 'gpu-buffer' ? await gpu.getData() : gpu.data;
      results.push({ location, dims: gpu.dims, gpu: Array.from(data), cpu: Array.from(cpu.data) });
      gpu.dispose();
      buffer.destroy();
    }
    return results;
  },

  async tokenize({ tokenizerUrl, texts, addSpecialTokens }) {
    const tok = new ModelTokenizer(await (await fetch(tokenizerUrl)).json());
    return texts.map((t) => {
      const ids = tok.encode(t, { addSpecialTokens });
      return { ids, decoded: tok.decode(ids, { skipSpecialTokens: false }) };
    });
  },

  chat({ template, conversations, specials }) {
    return conversations.map(({ messages, addGenerationPrompt }) => renderChat(template, messages, { addGenerationPrompt, ...specials }));
  },

  // Boot Pyodide with the runtime wheel and evaluate Python source; the value of the last
  // expression comes back converted to JavaScript.
  async python({ wheelUrl, code }) {
    if (!pyodide) pyodide = await bootPython({ wheelUrl });
    const value = await pyodide.runPythonAsync(code);
    return value?.toJs ? value.toJs({ dict_converter: Object.fromEntries }) : value;
  },
};

self.onmessage = async ({ data: { id, op, args } }) => {
  try {
    self.postMessage({ id, ok: true, value: await ops[op](args) });
  } catch (e) {
    self.postMessage({ id, ok: false, error: String(e?.stack || e) });
  }
};
