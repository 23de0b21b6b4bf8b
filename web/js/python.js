// Pyodide, served from our own origin (npm package `pyodide`, never a CDN), with the project's
// `runtime` package installed from the pure-Python wheel that `ruvdllm web` builds.

import { loadPyodide } from '../vendor/pyodide/pyodide.mjs';

const PYODIDE_DIR = new URL('../vendor/pyodide/', import.meta.url).href;

export async function bootPython({ wheelUrl, onStatus = () => {} }) {
  onStatus('starting Python (Pyodide)');
  const pyodide = await loadPyodide({ indexURL: PYODIDE_DIR, stdout: (s) => console.log(s), stderr: (s) => console.warn(s) });
  onStatus('installing the runtime wheel');
  // loadPackage accepts a wheel URL; micropip is not in the npm package (and offline, unfetchable).
  await pyodide.loadPackage(new URL(wheelUrl, self.location.href).href, { messageCallback: () => {}, errorCallback: (m) => console.warn(m) });
  pyodide.runPython('import runtime');
  return pyodide;
}

// Synchronous Python (the sampler) waits on onnxruntime-web's promises with pyodide.ffi.run_sync,
// which needs JavaScript Promise Integration (Chromium 137+, Firefox behind a flag).
export function canBlockOnPromises() {
  return typeof WebAssembly.Suspending === 'function';
}
