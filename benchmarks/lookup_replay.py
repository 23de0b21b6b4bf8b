"""Prompt lookup alone, replayed on the AR model's own answers: how often the copied drafts
(runtime/lookup.py) would be right, and what they would commit per forward with no other drafter
— a forward-free way to choose the n-gram range and the draft count before the verified sampler
runs them (benchmarks/quality.py, benchmarks/verified_bench.py).

    python benchmarks/lookup_replay.py [--model DIR] [--prompts 64] [--length 64] [--answers FILE]
    python benchmarks/lookup_replay.py --answers FILE --answer-store STORE --floors 0 0.2 0.35 0.5

The answers are the `ar` sampler's greedy tokens on the first held-out prompts of
data/distill_prompts_wordnet.jsonl (chat template, stop at EOS); `--answers FILE` keeps them (read
when the file exists, else written). Each forward of the replay checks lookup(prompt + answer so
far) against the answer, commits the agreeing prefix and the AR token, as the verified sampler
does at temperature 0. Per setting: tokens per forward, the forwards with a match, the copied
drafts kept / checked, and verifier rows per forward (1 + the drafts checked). With
`--answer-store`, the verified sampler's default rule (lookup from bigrams to trigrams, 4 drafts)
with the store's chained drafts where lookup finds nothing (runtime/answer_store.py), per floor.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.answer_store import AnswerStore  # noqa: E402
from runtime.drafting import Drafting  # noqa: E402
from runtime.lookup import lookup  # noqa: E402

PROMPTS = Path(__file__).resolve().parents[1] / "data" / "distill_prompts_wordnet.jsonl"
SPLIT = "held-out"


def ar_answers(model_dir: Path | None, count: int, length: int, threads: int) -> list[dict]:
    from runtime.chat_template import chat_prompt
    from runtime.cpython_model import open_model
    from runtime.ort_backend import OrtOptions
    from runtime.settings import GenerationSettings

    if model_dir is None:
        from ruvdllm.default_artifact import default_model_dir

        model_dir = default_model_dir("cpu")
    model = open_model(model_dir, options=OrtOptions(device="cpu", intra_op_threads=threads))
    records = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]
    texts = [r["prompt"] for r in records if r.get("split", SPLIT) == SPLIT][:count]
    answers = []
    for text in texts:
        ids = model.encode(chat_prompt(model, [{"role": "user", "content": text}]))
        done = model.generate(ids, GenerationSettings(sampler="ar", length=length))
        answers.append({"prompt": ids, "answer": done.tokens})
    return answers


def replay(
    answers: list[dict],
    longest: int,
    shortest: int,
    drafts: int,
    store: AnswerStore | None = None,
    floor: float = 0.0,
) -> dict:
    forwards = matched = checked = kept = tokens = 0
    for record in answers:
        prompt, answer = record["prompt"], record["answer"]
        done = 0
        while done < len(answer):
            room = len(answer) - done - 1  # the AR token always comes on top
            text = prompt + answer[:done]
            copied = lookup(text, longest, shortest, min(drafts, room)) if room else []
            if room and not copied and store is not None:
                copied = store.draft(text, min(drafts, room), floor)
            agree = 0
            while agree < len(copied) and copied[agree] == answer[done + agree]:
                agree += 1
            forwards, matched = forwards + 1, matched + bool(copied)
            checked, kept = checked + len(copied), kept + agree
            done += agree + 1
        tokens += len(answer)
    return {"forwards": forwards, "matched": matched, "checked": checked, "kept": kept, "tokens": tokens}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory (default: the default model)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--answers", type=Path, help="the AR answers as JSON: read if present, else written")
    parser.add_argument("--longest", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--shortest", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--drafts", type=int, nargs="+", default=[1, 2, 4, 7])
    parser.add_argument("--answer-store", type=Path, help="an answer store: replay it behind lookup")
    parser.add_argument("--floors", type=float, nargs="+", default=[0.0, 0.2, 0.35, 0.5])
    args = parser.parse_args()
    if args.answers and args.answers.exists():
        answers = json.loads(args.answers.read_text())
    else:
        answers = ar_answers(args.model, args.prompts, args.length, args.threads)
        if args.answers:
            args.answers.write_text(json.dumps(answers))
    total = sum(len(r["answer"]) for r in answers)
    print(f"\n{len(answers)} AR answers, {total} tokens\n")
    if args.answer_store:
        return replay_store(answers, AnswerStore.read(args.answer_store), args.floors)
    print(
        "| longest | shortest | drafts | tokens/forward | forwards with a match | kept / checked | rows/forward |"
    )
    print("|---|---|---|---|---|---|---|")
    for longest, shortest, drafts in itertools.product(args.longest, args.shortest, args.drafts):
        if shortest > longest:
            continue
        r = replay(answers, longest, shortest, drafts)
        print(
            f"| {longest} | {shortest} | {drafts} | {r['tokens'] / r['forwards']:.3f} | "
            f"{r['matched'] / r['forwards']:.0%} | {r['kept']}/{r['checked']} "
            f"({r['kept'] / max(r['checked'], 1):.0%}) | {(r['forwards'] + r['checked']) / r['forwards']:.2f} |"
        )
    return 0


def replay_store(answers: list[dict], store: AnswerStore, floors: list[float]) -> int:
    rule = Drafting()
    print(f"answer store: {store.entries} n-grams of {store.meta.get('answers', '?')} answers\n")
    print("| floor | tokens/forward | kept / checked | checked/forward |")
    print("|---|---|---|---|")
    plain = replay(answers, rule.lookup_longest, rule.lookup_shortest, rule.lookup_drafts)
    rows = [("(lookup alone)", plain)] + [
        (
            f"{floor:g}",
            replay(answers, rule.lookup_longest, rule.lookup_shortest, rule.lookup_drafts, store, floor),
        )
        for floor in floors
    ]
    for name, r in rows:
        print(
            f"| {name} | {r['tokens'] / r['forwards']:.3f} | {r['kept']}/{r['checked']} | "
            f"{r['checked'] / r['forwards']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
