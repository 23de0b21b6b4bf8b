"""Self-distillation data: the AR model's own answers to a prompt set, generated causally with
the reference model (block_ids = arange: the AR model exactly as it was trained, on the same
4-bit base the adapter trains over). Training on them teaches the diffusion model the AR model's
distribution, with no text from outside (Fast-dLLM v2 and DiffuLLaMA do the same with
instruction data; here the AR model writes it).

Prompts: a JSONL of {"prompt": ...} (or a text file, one prompt per line). Answers are appended
one JSON line at a time, so an interrupted run keeps what it has and resumes after it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from runtime.chat_template import render_chat, special_tokens
from ruvdllm.errors import RuvdllmError
from ruvdllm_export.reference.model import DiffusionLM


def read_prompts(path: Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise RuvdllmError(f"{path}: no such prompt file")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise RuvdllmError(f"{path}: the prompt file is empty")
    if path.suffix != ".jsonl":
        return lines
    prompts = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RuvdllmError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise RuvdllmError(f"{path}:{number}: needs a string 'prompt'")
        prompts.append(record["prompt"])
    return prompts


def prompt_text(
    prompt: str, chat_template: str | None, bos_token: str | None = None, eos_token: str | None = None
) -> str:
    """The prompt as the AR model expects it: its chat template (the runtime's renderer and its
    fallback when None) with the assistant turn opened."""
    messages = [{"role": "user", "content": prompt}]
    return render_chat(
        chat_template, messages, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token
    )


def _choose(logits: torch.Tensor, temperature: float, top_p: float, rng: random.Random) -> int:
    """Greedy at temperature 0; otherwise nucleus sampling with one draw from `rng`."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    sorted_probs, ids = probs.sort(descending=True)
    cumulative = sorted_probs.cumsum(0)
    keep = int((cumulative < top_p).sum()) + 1
    kept = sorted_probs[:keep] / sorted_probs[:keep].sum()
    u, total = rng.random(), 0.0
    for j in range(keep):
        total += float(kept[j])
        if u < total:
            return int(ids[j])
    return int(ids[keep - 1])


@torch.no_grad()
def generate_ar(
    model: DiffusionLM,
    prompt_ids: list[int],
    max_new: int,
    eos: tuple[int, ...],
    rng: random.Random,
    temperature: float = 0.7,
    top_p: float = 0.9,
) -> list[int]:
    """Causal decoding with a KV cache: prefill the prompt, then one token per forward."""
    ids = torch.tensor([prompt_ids])
    out = model(
        ids,
        torch.arange(len(prompt_ids))[None],
        torch.arange(len(prompt_ids))[None],
        output_offset=len(prompt_ids) - 1,
    )
    past = [(out[f"present_key.{i}"], out[f"present_value.{i}"]) for i in range(model.spec.num_layers)]
    generated: list[int] = []
    token = _choose(out["logits"][0, -1], temperature, top_p, rng)
    while True:
        generated.append(token)
        if token in eos or len(generated) >= max_new:
            return generated
        position = len(prompt_ids) + len(generated) - 1
        out = model(
            torch.tensor([[token]]),
            torch.tensor([[position]]),
            torch.zeros(1, 1, dtype=torch.long),
            past=past,
        )
        past = [(out[f"present_key.{i}"], out[f"present_value.{i}"]) for i in range(model.spec.num_layers)]
        token = _choose(out["logits"][0, -1], temperature, top_p, rng)


def distill(
    model: DiffusionLM,
    tokenizer,
    chat_template: str | None,
    prompts: list[str],
    output: Path,
    max_new: int,
    seed: int,
    temperature: float = 0.7,
    top_p: float = 0.9,
    on_answer=None,
) -> Path:
    """Answer every prompt not yet in `output` (JSONL of {"prompt", "response"}), appending as it
    goes. Prompt i is sampled with random.Random(seed + i): the same answers on every rerun."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if output.is_file():
        done = {json.loads(line)["prompt"] for line in output.read_text().splitlines() if line.strip()}
    eos = tuple(model.spec.eos_token_ids)
    specials = special_tokens(tokenizer.id_to_token, model.spec.bos_token_id, eos)
    with open(output, "a", encoding="utf-8") as handle:
        for i, prompt in enumerate(prompts):
            if prompt in done:
                continue
            text = prompt_text(prompt, chat_template, **specials)
            ids = tokenizer.encode(text, add_special_tokens=False).ids
            answer = generate_ar(model, ids, max_new, eos, random.Random(seed + i), temperature, top_p)
            text = tokenizer.decode([t for t in answer if t not in eos])
            handle.write(json.dumps({"prompt": prompt, "response": text.strip()}) + "\n")
            handle.flush()
            if on_answer is not None:
                on_answer(i, prompt, text)
    return output
