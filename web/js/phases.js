// The page's states and what each control can do in them. A control is enabled only where pressing
// it acts; everything the page enables or disables goes through `controlsFor`.
//
//   loading ──ready──► ready ──Generate──► generating ──Stop──► stopping
//      │                 ▲                     │                   │
//      │                 └───── complete / a generation's error ───┘
//      └──a load error──► error
//   loading, ready, error ──execution provider changed / Download again──► loading
//
// The prompt stays editable throughout (typing acts on nothing until Generate).
// Feedback (thumbs, a corrected answer) acts on the last answer the page kept (`form.answer`, its
// completion id): only while ready, since a new generation replaces the answer on screen.

export const PHASE = Object.freeze({
  LOADING: 'loading', // the engine starts, the model downloads, the session warms up
  READY: 'ready', // a model is loaded and nothing runs
  GENERATING: 'generating', // a generation runs (the prompt's pieces, then the denoising steps)
  STOPPING: 'stopping', // Stop was pressed: the step in flight finishes
  ERROR: 'error', // the model could not be loaded: only reloading acts
});

// What the model makes meaningful, from ReadyInfo (protocol.js).
export function capabilitiesOf(info) {
  const bank = info?.bank || {};
  return {
    samplers: info?.model?.samplers?.length ? info.model.samplers : null, // null: unknown, all
    baseModel: info?.model?.baseModel !== false, // rows that compute the AR model: verified and AR run
    talora: Boolean(bank.present),
    dgr: Boolean(bank.present && bank.patterns),
    chat: Boolean(info?.model?.chat),
  };
}

// Why each setting can be off although the page is ready (its title while disabled).
export const WHY = {
  talora: 'This model has no adapter bank: there are no timestep adapters to choose.',
  dgrBank: 'This model has no adapter bank: there is nothing to retrieve.',
  dgrPatterns: 'This bank has no retrieval patterns: DGR would never retrieve.',
  chat: 'This model has no chat template.',
  threshold: 'Used by confidence-threshold decoding only.',
  entropyBound: 'Used by entropy-bounded decoding only.',
  blockSize: 'Used by BD3LM and the verified sampler only: MDLM denoises the whole length as one span, AR writes one token at a time.',
  acceptance: 'Used by the verified sampler only (Auto runs it where the model has the per-row switch).',
  diffusionOnly: 'The verified and AR samplers write what the AR model would: they take no steps, decoding or order.',
  temperature0: 'Used only when the temperature is above 0 (greedy decoding takes the best token).',
  sampler: (trained) => `This model was converted for ${trained.join(', ')} only: other samplers denoise it poorly.`,
  baseModel: "This model's conversion adapter has no per-row switch (exported with --no-adapter-switch): the verified and AR samplers need it.",
};

// {id: enabled} for every control of the page, in `phase`, given the form's values (`form`:
// {prompt, sampler, decoding, temperature, answer, correction}), the model's capabilities and whether the last load
// failed in a way a new download can mend.
export function controlsFor(phase, form, caps, { redownload = false } = {}) {
  const ready = phase === PHASE.READY;
  const sampling = ready && Number(form.temperature) > 0;
  // the others take no steps; auto denoises when given a step count, a decoding rule or an order
  const diffusion = ready && form.sampler !== 'verified' && form.sampler !== 'ar';
  return {
    generate: ready && form.prompt.trim() !== '',
    stop: phase === PHASE.GENERATING,
    // switching reloads the engine: not while a generation holds it
    ep: phase === PHASE.LOADING || phase === PHASE.READY || phase === PHASE.ERROR,
    reload: phase === PHASE.ERROR,
    redownload: phase === PHASE.ERROR && redownload,
    // settings are read when Generate is pressed; a run keeps the ones it started with
    sampler: ready,
    length: ready,
    block_size: ready && ['auto', 'bd3lm', 'verified'].includes(form.sampler),
    // the verified sampler's check of drafts (runtime/drafting.py): auto may run it where the model can
    acceptance: ready && ['auto', 'verified'].includes(form.sampler) && caps.baseModel !== false,
    steps: diffusion,
    decoding: diffusion,
    order: diffusion,
    threshold: diffusion && form.decoding === 'threshold',
    entropy_bound: diffusion && form.decoding === 'entropy-bounded',
    temperature: ready,
    top_p: sampling,
    seed: sampling,
    talora: ready && caps.talora,
    dgr: ready && caps.dgr,
    chat: ready && caps.chat,
    // feedback on the answer shown, once it is kept (trajectory_store.js)
    thumb_up: ready && Boolean(form.answer),
    thumb_down: ready && Boolean(form.answer),
    correction: ready && Boolean(form.answer),
    save_correction: ready && Boolean(form.answer) && String(form.correction || '').trim() !== '',
  };
}

// The samplers whose output is the base AR model's (runtime.artifact.BASE_MODEL_SAMPLERS): they run
// on any model with the adapter's per-row switch, whatever it was converted for.
export const BASE_MODEL_SAMPLERS = ['verified', 'ar'];

export function samplerAllowed(caps, sampler) {
  if (sampler === 'auto') return true; // resolved per model (runtime.settings.sampler_for)
  if (BASE_MODEL_SAMPLERS.includes(sampler)) return caps.baseModel !== false;
  return !caps.samplers || caps.samplers.includes(sampler);
}
