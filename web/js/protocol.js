// The messages between the page (app.js) and the engine worker (worker.js), web-llm style.
//
// Page -> worker
//   {type: 'load', modelUrl, wheelUrl, ep: 'auto'|'webgpu'|'wasm', numThreads?, interruptBuffer?,
//    forget?, memoryMB?, pieceRows?}   forget: drop the cached model files first (the page's
//    "download again"); memoryMB, pieceRows: override the device's limits (ort_engine.js deviceLimits)
//   {type: 'generate', id, prompt, chat, seed, settings}
//       settings: GenerationSettings fields (runtime/settings.py INPUTS): sampler, acceptance,
//       length, block_size, steps, schedule, decoding, threshold, entropy_bound, order,
//       temperature, top_k, top_p, talora, dgr, dgr_strategy
//   {type: 'interrupt'}      also signalled through interruptBuffer (a SharedArrayBuffer, written
//                            by the page) which the worker reads before every forward: a message
//                            waits for the worker's event loop, the shared flag does not
//   {type: 'forget'}         drop the cached model files
//
// Worker -> page
//   {type: 'progress', phase, progress, text, loaded?, total?}
//        phase, in order: 'download' | 'cache' (the model's files, from the network or Cache
//        Storage) -> 'runtime' (Python) -> 'session' -> 'warmup'; progress in [0, 1] within the phase
//   {type: 'notice', level: 'info'|'warning', text}
//   {type: 'ready', info: ReadyInfo}
//   {type: 'prefill', id, done, total, at}   a long prompt read in pieces: rows done of the first chunk
//   {type: 'step', id, step: StepView}
//   {type: 'complete', id, text, tokens, promptIds, stats, interrupted, trajectory}
//        stats: {..., sampler: the one that ran (the form's "auto" resolved for the model),
//                acceptance: the verified sampler's check that ran ('exact', 'lenient'; else null), ...}
//        trajectory: the answer's record for learning (trajectory_store.js), null when stopped
//   {type: 'error', id?, code, message, recover?: 'redownload' | null}
//
// ReadyInfo: {ep, adapter, numThreads, crossOriginIsolated, model: {name, architecture, layers,
//   hidden, vocab, maxPosition, blockSize, bytes, targets, chat, samplers: [trained for; empty:
//   unknown], baseModel: the verified and AR samplers can run}, cache: {downloadedBytes,
//   cachedBytes, memoryOnly, offline}, loadMs, bank: {adapters: [name|null per slot], patterns,
//   groups: [names], present}, limits: {budget, largest_tensor,
//   piece_rows}}
//
// StepView: {span, step, t, offset, text (the answer's settled prefix), cells: [{id, text,
//   state: 'committed'|'new'|'masked'|'eos',
//   uncertainty, guess}], retrieved: [{position, adapters: [{name, weight}]}], talora: [weights],
//   forwardMs, elapsedMs, tokensPerSecond, committedTokens, at (performance.timeOrigin + now())}

export const IN = Object.freeze({ LOAD: 'load', GENERATE: 'generate', INTERRUPT: 'interrupt', FORGET: 'forget' });
export const OUT = Object.freeze({
  PROGRESS: 'progress',
  NOTICE: 'notice',
  READY: 'ready',
  PREFILL: 'prefill',
  STEP: 'step',
  COMPLETE: 'complete',
  ERROR: 'error',
});

// Error codes the page knows how to explain.
export const RECOVERABLE_BY_REDOWNLOAD = new Set(['truncated', 'corrupt', 'model-invalid']);
