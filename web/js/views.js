// What the page shows of each denoising step, computed in the worker from the step event (Python)
// and the last forward's outputs (still in the runner): no extra Pyodide crossing.

const LN = Math.log;

// The answer a step shows: the committed tokens before the first still-masked position (-1) or
// end-of-sequence token. Text is a prefix: a token committed beyond a masked gap is not part of it
// yet (the cells show it in place).
export function answerPrefix(tokens, eos) {
  const end = tokens.findIndex((t) => t < 0 || eos.has(t));
  return end < 0 ? tokens.slice() : tokens.slice(0, end);
}

function rowOf(data, r, k) {
  return data.subarray ? data.subarray(r * k, (r + 1) * k) : data.slice(r * k, (r + 1) * k);
}

// event: runtime.pyodide_backend.step_event; state: per-generation memory of uncertainties.
export function stepView(event, runner, tokenizer, config, bank, state, elapsedMs) {
  const out = runner.last;
  const [, rows, k] = out.topk_ids.dims;
  // Row r predicted position offset + r: the span's rows (the last one predicts the position after
  // it), or the ar / verified samplers' AR rows from the position the event names (first_row).
  const spanLength = rows - 1;
  const offset = event.first_row ?? event.tokens.length - spanLength;
  const maxEntropy = LN(config.vocab_size);
  const mask = config.mask_token_id;
  const newly = new Map(event.committed);
  const ids = out.topk_ids.data;
  const logits = out.topk_logits.data;
  const cells = event.tokens.map((token, position) => {
    const r = position - offset;
    if (r < 0) {
      return { id: token, text: tokenizer.tokenText(token), state: 'committed', uncertainty: state.uncertainty.get(position) ?? 0 };
    }
    const rowIds = rowOf(ids, r, k);
    if (token >= 0) {
      if (newly.has(position)) {
        // 1 - the probability the token was committed with (temperature 1, whole vocabulary)
        const j = Array.prototype.findIndex.call(rowIds, (id) => Number(id) === token);
        const p = j >= 0 ? Math.exp(logits[r * k + j] - out.logsumexp.data[r]) : 0;
        state.uncertainty.set(position, 1 - p);
      }
      return { id: token, text: tokenizer.tokenText(token), state: newly.has(position) ? 'new' : 'committed', uncertainty: state.uncertainty.get(position) ?? 0 };
    }
    const guess = Number(Array.prototype.find.call(rowIds, (id) => Number(id) !== mask) ?? mask);
    return { id: -1, text: '', guess: tokenizer.tokenText(guess), state: 'masked', uncertainty: Math.min(out.entropy.data[r] / maxEntropy, 1) };
  });
  const groups = bank?.groups?.length ?? 0;
  const names = bank?.adapters ?? [];
  const retrieved = event.retrieved.map(([position, weights]) => ({
    position,
    adapters: weights.map((w, j) => ({ name: names[groups + j] || `slot ${groups + j}`, weight: w })).filter((a) => a.weight > 0),
  }));
  // The answer ends before the first end-of-sequence token: dim it and what follows.
  const eos = new Set(config.eos_token_ids || []);
  const end = event.tokens.findIndex((t) => eos.has(t));
  if (end >= 0) cells.forEach((cell, position) => { if (position >= end && cell.state !== 'masked') cell.state = 'eos'; });
  // Tokens of the answer so far: committed, before the end of sequence (what the final count is,
  // unless the generation runs past it).
  const answer = end >= 0 && state.stopAtEos !== false ? event.tokens.slice(0, end) : event.tokens;
  const committedTokens = answer.filter((t) => t >= 0).length;
  const text = tokenizer.decode(answerPrefix(event.tokens, eos));
  return {
    span: event.span,
    step: event.step,
    t: event.t,
    offset,
    cells,
    text,
    retrieved,
    talora: event.talora.map((w, g) => ({ name: bank?.groups?.[g] || `group ${g}`, weight: w })),
    forwardMs: event.forward_ms,
    elapsedMs,
    committedTokens,
    tokensPerSecond: committedTokens / Math.max(elapsedMs / 1000, 1e-3),
  };
}
