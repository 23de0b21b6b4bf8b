"""The AR model's own answers to many prompts, generated in batches: the corpus for sequence-level
distillation (docs/conversion.md).

The model is the checkpoint's own weights (4-bit blocks dequantized, so exactly the numbers the
diffusion model is converted from) inside transformers' LlamaForCausalLM / Qwen2ForCausalLM /
Qwen3ForCausalLM: its `generate` batches, caches keys and values, and samples with temperature and
top-p as the quality benchmark does. In bfloat16 on a CPU with AVX512-BF16 / AMX a batch of 32-64
rows costs little more than one row (the forward is compute-bound per row only at large batch); on
a GPU (`device`) batches of several hundred rows cost about what one does. The sampling draws come
from a generator on the model's device, so a GPU's answers differ from a CPU's for the same seed
(each is reproducible on its own kind of device).

Output: JSONL, one record per prompt, {"prompt", "response", "source", "split", "tokens",
"finish"} ("stop": the model ended its answer; "length": cut at --max-new). Written one batch at a
time and flushed, so an interrupted run keeps every finished batch; a rerun answers only the prompts
not yet in the file (a torn last line from a crash is dropped first).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ruvdllm.errors import RuvdllmError
from ruvdllm_export.quant.q4 import Q4Tensor, dequantize_q4
from ruvdllm_export.rope_scaling import rope_frequencies

# ModelSpec.architecture -> (transformers config class, causal-LM class)
HF_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
}


def resolve_device(name: str) -> torch.device:
    """A torch device by name ("cpu", "cuda", "cuda:1"); one that is not here is a one-line error."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise RuvdllmError(f"device {name!r}: not a torch device (cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuvdllmError(f"device {name!r}: this torch sees no CUDA GPU")
    return device


def hf_rope_parameters(spec) -> dict:
    """transformers' rope_parameters for the spec's scaling. llama.cpp's precomputed factors
    (freq_factors) have no transformers type: plain RoPE here, the buffers set by `causal_lm`."""
    params = {"rope_type": "default", "rope_theta": spec.rope_theta}
    scaling = spec.rope_scaling
    if scaling is None or scaling.kind == "freq_factors":
        return params
    fields = scaling.to_dict()
    original = fields.pop("original_max_position", None)
    if scaling.kind in ("yarn", "llama3", "longrope"):
        fields["original_max_position_embeddings"] = original
    return {**params, **{k: v for k, v in fields.items() if k != "kind"}, "rope_type": scaling.kind}


def causal_lm(checkpoint, dtype: torch.dtype = torch.bfloat16, device: str = "cpu"):
    """transformers' causal LM over the checkpoint's weights (4-bit blocks dequantized), on `device`."""
    import transformers

    spec = checkpoint.spec
    if spec.architecture not in HF_CLASSES:
        raise RuvdllmError(f"AR answers: no transformers class for architecture {spec.architecture!r}")
    config_name, model_name = HF_CLASSES[spec.architecture]
    config = getattr(transformers, config_name)(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        rms_norm_eps=spec.rms_norm_eps,
        rope_parameters=hf_rope_parameters(spec),
        max_position_embeddings=spec.max_position,
        tie_word_embeddings=spec.tie_word_embeddings,
        attention_bias=spec.attention_bias,
        bos_token_id=spec.bos_token_id,
        eos_token_id=list(spec.eos_token_ids),
        pad_token_id=spec.pad_token_id if spec.pad_token_id is not None else spec.eos_token_ids[0],
    )
    model = getattr(transformers, model_name)(config)
    state = {
        name: torch.from_numpy(
            np.ascontiguousarray(dequantize_q4(w) if isinstance(w, Q4Tensor) else w)
        ).float()
        for name, w in checkpoint.weights.items()
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    if spec.rope_scaling is not None and spec.rope_scaling.kind == "freq_factors":
        inv_freq, _ = rope_frequencies(spec.head_dim, spec.rope_theta, spec.rope_scaling, spec.max_position)
        rotary = model.model.rotary_emb
        rotary.inv_freq.copy_(torch.from_numpy(inv_freq))
        rotary.original_inv_freq.copy_(torch.from_numpy(inv_freq))
    missing = [m for m in missing if not (m == "lm_head.weight" and spec.tie_word_embeddings)]
    if missing or unexpected:
        raise RuvdllmError(
            f"AR answers: weights do not fit {model_name} (missing {missing}, unexpected {unexpected})"
        )
    return model.to(device=resolve_device(device), dtype=dtype).eval()


def read_done(output: Path) -> set[str]:
    """Prompts already answered in `output`; a torn last line (a crash mid-write) is cut off."""
    if not output.is_file():
        return set()
    done, good_bytes = set(), 0
    with open(output, "rb") as handle:
        for raw in handle:
            try:
                done.add(json.loads(raw)["prompt"])
            except (ValueError, KeyError):
                if raw.endswith(b"\n"):
                    raise RuvdllmError(f"{output}: line {len(done) + 1} is not an answer record") from None
                break  # the torn tail
            good_bytes += len(raw)
    if good_bytes < output.stat().st_size:
        with open(output, "r+b") as handle:
            handle.truncate(good_bytes)
    return done


def batch_seed(seed: int, prompts: list[str]) -> int:
    """One seed per batch from its prompts: a fresh run draws the same answers."""
    digest = hashlib.sha256("\n".join(prompts).encode("utf-8")).digest()
    return (seed * 1_000_003 + int.from_bytes(digest[:6], "big")) % 2**63


CANDIDATES = 256  # tokens sorted per row; at temperature 0.7 the 0.9 nucleus nearly always fits


def sample_nucleus(scores: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator):
    """One token per row from softmax(scores / temperature) truncated to its top-p nucleus (the
    smallest set of most likely tokens whose mass reaches top_p), as transformers' TopPLogitsWarper
    and the quality benchmark sample. Exact: only the CANDIDATES most likely tokens are sorted, and
    a row whose nucleus is wider falls back to sorting its whole vocabulary."""
    probs = torch.softmax(scores.float() / temperature, dim=-1)  # [B, V]
    top, ids = probs.topk(min(CANDIDATES, probs.shape[-1]), dim=-1)  # [B, C], descending
    wide = top.sum(-1) < top_p
    if bool(wide.any()):
        top_w, ids_w = probs[wide].sort(dim=-1, descending=True)
        picks = _nucleus_pick(top_w, ids_w, top_p, generator)
    chosen = _nucleus_pick(top, ids, top_p, generator)
    if bool(wide.any()):
        chosen[wide] = picks
    return chosen


def _nucleus_pick(top: torch.Tensor, ids: torch.Tensor, top_p: float, generator: torch.Generator):
    keep = (top.cumsum(-1) - top < top_p).to(top.dtype)  # the token that crosses top_p is kept
    pick = torch.multinomial(top * keep, 1, generator=generator)  # renormalised by multinomial
    return ids.gather(-1, pick).squeeze(-1)


class _SampleInto:
    """A logits processor that samples the nucleus itself and leaves only the chosen token finite,
    so that transformers' greedy step takes it: generate keeps its batching, caches and stopping,
    and the sampling costs a top-k instead of a full sort of the vocabulary per row."""

    def __init__(self, temperature: float, top_p: float, generator: torch.Generator):
        self.temperature, self.top_p, self.generator = temperature, top_p, generator

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        chosen = sample_nucleus(scores, self.temperature, self.top_p, self.generator)
        out = torch.full_like(scores, -float("inf"))
        out.scatter_(-1, chosen[:, None], 0.0)
        return out


@torch.no_grad()
def answer_batch(model, rows, max_new: int, temperature: float, top_p: float, pad: int, eos, generator):
    """Sampled continuations of `rows` (left-padded into one batch): (tokens, finish) per row.
    Temperature 0 is greedy."""
    from transformers import LogitsProcessorList

    width = max(len(r) for r in rows)
    device = model.device
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    processors = LogitsProcessorList([_SampleInto(temperature, top_p, generator)] if temperature > 0 else [])
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new,
        do_sample=False,
        logits_processor=processors,
        pad_token_id=pad,
        eos_token_id=list(eos),
        cache_implementation="static",  # preallocated keys/values: no growing copies per step
    )
    answers = []
    for row in out[:, width:].tolist():
        end = next((i for i, t in enumerate(row) if t in eos), None)
        answers.append((row[:end], "stop") if end is not None else (row, "length"))
    return answers


def answer_prompts(
    model,
    tokenizer,
    render: Callable[[str], str],
    records: list[dict],
    output: Path,
    eos: tuple[int, ...],
    pad: int,
    batch_size: int = 32,
    max_new: int = 256,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int = 0,
    progress: bool = True,
    max_minutes: float = 0.0,
) -> dict:
    """Answer every record's prompt not yet in `output`, appending one batch at a time. Batches are
    formed from prompts of similar length (less padding). With `max_minutes` > 0 no batch starts
    after that long (a rerun answers the rest). Returns counts and tokens/s."""
    from tqdm import tqdm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(output)
    todo = [r for r in records if r["prompt"] not in done]
    encoded = [(tokenizer.encode(render(r["prompt"]), add_special_tokens=False).ids, r) for r in todo]
    encoded.sort(key=lambda pair: len(pair[0]))
    batches = [encoded[i : i + batch_size] for i in range(0, len(encoded), batch_size)]
    started, tokens, answered = time.monotonic(), 0, 0
    bar = tqdm(total=len(todo), unit="answer", disable=not progress, desc="AR answers")
    with open(output, "a", encoding="utf-8") as handle:
        for batch in batches:
            if max_minutes and (time.monotonic() - started) / 60 >= max_minutes:
                break
            generator = torch.Generator(model.device)
            generator.manual_seed(batch_seed(seed, [r["prompt"] for _, r in batch]))
            rows = [ids for ids, _ in batch]
            answers = answer_batch(model, rows, max_new, temperature, top_p, pad, eos, generator)
            lines = []
            for (_, record), (answer, finish) in zip(batch, answers, strict=True):
                text = tokenizer.decode(answer, skip_special_tokens=True).strip()
                lines.append(
                    json.dumps({**record, "response": text, "tokens": len(answer), "finish": finish})
                )
                tokens += len(answer)
            handle.write("\n".join(lines) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(batch))
            answered += len(batch)
            bar.set_postfix(tokens_per_s=f"{tokens / max(time.monotonic() - started, 1e-9):.0f}")
    bar.close()
    seconds = time.monotonic() - started
    return {
        "answered": answered,
        "left": len(todo) - answered,
        "skipped": len(done),
        "tokens": tokens,
        "tokens_per_s": tokens / max(seconds, 1e-9),
    }
