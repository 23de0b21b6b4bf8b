// Test-side worker: exercises web/js/ modules on request (see probe.html).
import { loadOrt, createSession, probeWebGPU, bundleFor } from '/js/ort_engine.js';
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
