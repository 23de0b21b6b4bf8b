"""MatMulNBits accuracy level 0 (float activations) vs 4 (int8 activations, ~2x faster), judged
against llama.cpp's own numerics on the same GGUF, not against perfection.

    python benchmarks/accuracy_bench.py [--gguf FILE] [--tokens 2048] [--num-prompts 16 --length 32]
                                        [--variants "level 0" "level 4" "level 4, 4-bit head"]

Everything runs the base model (no conversion adapter, causal), the model llama.cpp runs:

  teacher-forced top-1   real text in chunks of <= 256 tokens; at every position the argmax of
                         the float reference (the GGUF's blocks dequantized, float32, transformers)
                         against llama.cpp (the GGUF itself, Q8_1 activations in its dot products),
                         onnxruntime-genai's own graph of the GGUF (benchmarks/baselines.py; the
                         one runtime_bench races; `--no-genai` skips it) and our graph at accuracy
                         level 0 and 4 (`--variants`: also with a 4-bit head)
  greedy generation      chat prompts (data/quality_prompts.jsonl), `length` tokens greedy by each
                         of them (ours: BD3LM block 1 through the graph, i.e. AR decoding); tokens
                         equal to the float reference's own greedy text before the first difference,
                         and the generative perplexity of each under the float model

If level 4 is no further from the float reference than llama.cpp is, it is as good as the engine
users already accept for this model (docs/artifact.md "Accuracy level").
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime import artifact  # noqa: E402
from runtime.settings import GenerationSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 256


def text_chunks(tokenizer, max_tokens: int) -> list[list[int]]:
    """The validation paragraph (human-written) and the AR model's own answers (distillation data),
    tokenized, in chunks of <= CHUNK tokens, up to `max_tokens` in all."""
    from ruvdllm_export.validate import PARAGRAPH

    texts = [PARAGRAPH]
    with open(ROOT / "data" / "distill_smollm2.jsonl") as handle:
        texts += [json.loads(line)["response"] for line in handle if line.strip()]
    chunks, total = [], 0
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        for start in range(0, len(ids), CHUNK):
            piece = ids[start : start + CHUNK]
            if len(piece) >= 16 and total < max_tokens:
                chunks.append(piece[: max_tokens - total])
                total += len(chunks[-1])
    return chunks


def float_argmax(model, chunk: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([chunk])).logits[0].argmax(-1).numpy()


def llama_argmax(llm, chunk: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(chunk)
    return np.asarray(llm.scores[: len(chunk)]).argmax(-1)


def graph_argmax(session, spec, chunk: list[int]) -> np.ndarray:
    from ruvdllm_export.onnx_graph import GraphOptions
    from ruvdllm_export.validate import graph_feeds

    options = GraphOptions(adapter_slots=0)
    feeds = graph_feeds(spec, options, np.asarray(chunk), np.arange(len(chunk)))
    wanted = {i.name for i in session.get_inputs()}
    (ids,) = session.run([artifact.TOPK_IDS], {k: v for k, v in feeds.items() if k in wanted})
    return ids[0, :, 0]


# Our graph's variants: the export options each is built with (the base model, no adapter slots).
VARIANTS = {
    "level 0": {"accuracy_level": 0},
    "level 4": {"accuracy_level": 4},
    "level 4, 4-bit head": {"accuracy_level": 4, "table_bits": 4},
}


def export(gguf: Path, out: Path, options: dict) -> Path:
    from ruvdllm_export.export import export_model

    return export_model(gguf, out, "cpu", adapter_slots=0, validate=False, force=True, log=None, **options)


def greedy_float(model, prompt: list[int], length: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=length,
            min_new_tokens=length,
            do_sample=False,
        )
    return out[0, len(prompt) :].tolist()


def greedy_llama(llm, prompt: list[int], length: int) -> list[int]:
    llm.reset()
    tokens = []
    for token in llm.generate(prompt, temp=0.0, reset=True):
        tokens.append(token)
        if len(tokens) == length:
            break
    return tokens


def judge_nll(model, prompt: list[int], tokens: list[int]) -> float:
    """Mean NLL of `tokens` after `prompt` under the float model."""
    import torch

    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    picked = logp[torch.arange(len(targets)), targets][len(prompt) - 1 :]
    return float(-picked.mean())


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gguf", type=Path, help="default: the default model's GGUF")
    parser.add_argument("--tokens", type=int, default=2048, help="teacher-forced tokens in all")
    parser.add_argument("--prompts", type=Path, default=ROOT / "data" / "quality_prompts.jsonl")
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--length", type=int, default=32, help="greedy tokens per prompt (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-genai", action="store_true", help="skip onnxruntime-genai's graph")
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=["level 0", "level 4"], help="our graphs"
    )
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from runtime.chat_template import render_chat, special_tokens
    from runtime.cpython_model import open_model
    from ruvdllm_export.checkpoints import load_checkpoint
    from ruvdllm_export.convert.ar_answers import causal_lm
    from ruvdllm_export.default_model import default_gguf_path

    torch.set_num_threads(args.threads)
    gguf = args.gguf or default_gguf_path()
    checkpoint = load_checkpoint(gguf)
    spec, tokenizer = checkpoint.spec, checkpoint.tokenizer
    reference = causal_lm(checkpoint, torch.float32)
    from baselines import llama_cpp_crash

    llm = None
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        print(f"llama.cpp skipped: {exc}")
    else:
        crashed = llama_cpp_crash(gguf, args.threads)  # a build for another CPU dies in-process
        if crashed:
            print(f"llama.cpp skipped: {crashed}")
        else:
            llm = Llama(
                model_path=str(gguf),
                n_ctx=max(CHUNK, 512) + 64,
                n_batch=512,
                n_threads=args.threads,
                logits_all=True,
                verbose=False,
            )
    genai = None
    if not args.no_genai:
        from baselines import GenaiGraph

        try:
            genai = GenaiGraph.open(gguf, args.threads)
        except (RuntimeError, OSError, ImportError) as exc:
            print(f"onnxruntime-genai's graph skipped: {exc}")

    with tempfile.TemporaryDirectory() as scratch:
        dirs = {
            name: export(gguf, Path(scratch) / f"variant{i}", VARIANTS[name])
            for i, name in enumerate(args.variants)
        }
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        sessions = {
            name: ort.InferenceSession(str(d / artifact.GRAPH_NAME), so, providers=["CPUExecutionProvider"])
            for name, d in dirs.items()
        }

        chunks = text_chunks(tokenizer, args.tokens)
        agree: dict[str, list[bool]] = {"llama.cpp": []}
        for chunk in chunks:
            ref = float_argmax(reference, chunk)
            theirs = llama_argmax(llm, chunk) if llm is not None else None
            if theirs is not None:
                agree["llama.cpp"] += (theirs == ref).tolist()
            if genai is not None:
                agree.setdefault("onnxruntime-genai's graph", []).extend(
                    (genai.argmax(chunk) == ref).tolist()
                )
            for name, session in sessions.items():
                ours = graph_argmax(session, spec, chunk)
                agree.setdefault(name, []).extend((ours == ref).tolist())
                if theirs is not None and name != "level 0":
                    agree.setdefault(f"{name} vs llama.cpp", []).extend((ours == theirs).tolist())
        n = sum(len(c) for c in chunks)
        print(
            f"\n== teacher-forced top-1 agreement with the float reference ({n} tokens, {len(chunks)} chunks) =="
        )
        for name, hits in agree.items():
            if hits:
                print(f"{name:34s} {np.mean(hits) * 100:6.2f}%")

        if args.length <= 0:
            return 0
        prompts = [
            json.loads(line)["prompt"] for line in args.prompts.read_text().splitlines() if line.strip()
        ]
        prompts = prompts[: args.num_prompts]
        specials = special_tokens(tokenizer.id_to_token, spec.bos_token_id, spec.eos_token_ids)
        encoded = [
            tokenizer.encode(
                render_chat(spec.chat_template, [{"role": "user", "content": p}], True, **specials),
                add_special_tokens=False,
            ).ids
            for p in prompts
        ]
        models = {name: open_model(d) for name, d in dirs.items()}
        settings = GenerationSettings(
            sampler="bd3lm", block_size=1, length=args.length, stop_at_eos=False, talora=False, dgr=False
        )
        rows: dict[str, list[tuple[int, float]]] = {}
        for prompt in encoded:
            float_tokens = greedy_float(reference, prompt, args.length)
            outputs = {"float reference": float_tokens}
            if llm is not None:
                outputs["llama.cpp"] = greedy_llama(llm, prompt, args.length)
            if genai is not None:
                outputs["onnxruntime-genai's graph"] = genai.greedy(prompt, args.length)
            for name, model in models.items():
                outputs[name] = model.generate(prompt, settings, seed=0).tokens
            for name, tokens in outputs.items():
                rows.setdefault(name, []).append(
                    (common_prefix(tokens, float_tokens), judge_nll(reference, prompt, tokens))
                )
        print(
            f"\n== greedy generation, {len(encoded)} prompts x {args.length} tokens "
            "(same tokens as the float reference before the first difference; generative perplexity) =="
        )
        for name, values in rows.items():
            prefix = np.mean([v[0] for v in values])
            identical = np.mean([v[0] == args.length for v in values])
            ppl = math.exp(np.mean([v[1] for v in values]))
            print(
                f"{name:34s} prefix {prefix:5.1f} / {args.length}   identical {identical * 100:5.1f}%   gen. ppl {ppl:6.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
