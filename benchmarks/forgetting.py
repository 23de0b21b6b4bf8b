"""Does loop C's EWC++ keep what a device learnt first? Learn domain 1, consolidate, learn domain 2,
consolidate, and compare the held-out masked NLL of domain 1 with EWC (λ > 0) against the plain
merge (λ = 0).

    python benchmarks/forgetting.py                       # the tiny test model (built here)
    python benchmarks/forgetting.py --lambdas 0 10 100 1000 --steps 1000

The scenario (loops B and C as they run on a device, on the same bank):

    1  liked answers about domain 1 go into a trajectory store; loop B trains a MicroLoRA on them
       (a DGR slot); loop C folds it into the group adapter (its first Fisher: nothing to protect yet,
       so every λ gives the same bank here)
    2  the same for domain 2: one MicroLoRA trained once, then consolidated at each λ from copies of
       the same bank, so the only difference between the rows is the merge

Held-out sentences of each domain (never trained on), 20 noisy blocks each at t in the answers'
timestep group, scored with the group adapters as generation weighs them (TALoRA, no DGR: the
MicroLoRAs are gone after consolidation). Each λ > 0 is also run with a uniform Fisher (every
component the mean importance: plain L2 toward the old adapter), which says whether the measured
Fisher's distribution, not just its strength, is what protects domain 1. The numbers are deterministic for a seed; the tiny model is
a random 2-layer network, so the effects are small — read the differences, not the levels.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import runtime.learning.loop_b as loop_b_module  # noqa: E402
from runtime import artifact  # noqa: E402
from runtime.banks import Bank  # noqa: E402
from runtime.cpython_model import open_model  # noqa: E402
from runtime.learning.config import FOLD_INTO, TRAINERS, LoopBConfig, LoopCConfig  # noqa: E402
from runtime.learning.consolidate import consolidate, good_examples  # noqa: E402
from runtime.learning.fisher import FisherState  # noqa: E402
from runtime.learning.logits_session import LogitsSession  # noqa: E402
from runtime.learning.loop_b import LoopB  # noqa: E402
from runtime.learning.masked_nll import masked_nll, noisy_block  # noqa: E402
from runtime.learning.sqlite_store import SqliteStore  # noqa: E402
from runtime.learning.trajectory import Trajectory, make_feedback  # noqa: E402

DOMAINS = {
    "licence": {
        "prompt": "Tell me about the licence:",
        "train": [
            "the licence grants permission to copy and modify the software",
            "the licence permits anyone to copy, modify and share the software",
            "permission is granted to copy and modify the software under the licence",
            "you may copy and modify the software as the licence permits",
            "the software licence allows copying and modification",
            "anyone may copy the software and modify it under this licence",
        ],
        "held_out": [
            "the licence lets you copy and modify the software freely",
            "permission to modify and copy the software comes from the licence",
        ],
    },
    "cooking": {
        "prompt": "How do I cook this?",
        "train": [
            "boil the pasta in salted water for ten minutes",
            "fry the onions in butter until they are golden",
            "bake the bread in a hot oven for forty minutes",
            "stir the sauce slowly and add salt to taste",
            "roast the potatoes with oil, salt and rosemary",
            "simmer the soup gently and season it with pepper",
        ],
        "held_out": [
            "boil the potatoes in salted water until soft",
            "fry the garlic in oil and stir in the sauce",
        ],
    },
}
GROUP_T = (1 / 3, 2 / 3)  # the domain group: where the answers' steps were most uncertain


def trajectory(model, tag: str, i: int, prompt: str, text: str, key: np.ndarray, rng) -> Trajectory:
    embedding = key + 0.1 * rng.standard_normal(key.size)
    return Trajectory(
        id=f"cmpl-{tag}-{i}",
        created=0.0,
        model="tiny",
        bank=None,
        prompt=prompt,
        prompt_tokens=model.encode(prompt),
        embedding=list(embedding / np.linalg.norm(embedding)),
        settings={},
        steps=[{"t": t, "entropy": 3.0 if t == 0.5 else 1.0} for t in (0.9, 0.5, 0.1)],
        patterns=[],
        answer=text,
        answer_tokens=model.encode(" " + text),
        finish_reason="stop",
        timings={},
    )


def like(store: SqliteStore, model, domain: str, rng) -> None:
    spec = DOMAINS[domain]
    key = rng.standard_normal(model.config.hidden_size)
    for i, text in enumerate(spec["train"]):
        store.add_trajectory(trajectory(model, domain, i, spec["prompt"], text, key, rng))
        store.add_feedback(make_feedback(f"cmpl-{domain}-{i}", up=True))


def held_out_nll(session, model, bank: Bank, domain: str, part: str = "held_out") -> float:
    """Mean masked NLL of a domain's held-out sentences (or, with part="train", of the ones
    learnt), 20 noisy blocks each under fixed masks."""
    session.set_bank(bank)
    rng = np.random.default_rng(123)
    spec = DOMAINS[domain]
    prompt = model.encode(spec["prompt"])
    blocks = [
        noisy_block(prompt, model.encode(" " + text), model.config.block_size, GROUP_T, rng)
        for text in spec[part]
        for _ in range(20)
    ]
    return masked_nll(
        session.forward,
        blocks,
        model.config.mask_token_id,
        bank.slots,
        bank.groups,
        bank.talora_config(),
        None,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory (default: the tiny test model)")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 1000.0, 3000.0, 10000.0, 1e6])
    parser.add_argument("--steps", type=int, default=1000, help="loop B's SPSA steps per MicroLoRA")
    parser.add_argument("--lr", type=float, default=5.0, help="loop B's SPSA step length")
    parser.add_argument(
        "--trainer",
        choices=TRAINERS,
        default=LoopBConfig.trainer,
        help="loop B's trainer: auto = Adam through torch where the model's reference loads, else SPSA",
    )
    parser.add_argument(
        "--fold-into",
        choices=FOLD_INTO,
        default=LoopCConfig.fold_into,
        help="loop C: the group adapters a MicroLoRA goes into (every, or its own group's)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if args.model is None:
            from tests.runtime.tiny_artifact import make_tiny_artifact

            directory = make_tiny_artifact(scratch / "model")
        else:
            directory = args.model
        model = open_model(directory, verify="sizes")
        config = model.config
        session = LogitsSession(directory / artifact.GRAPH_NAME, config)
        loop_b_config = LoopBConfig(
            steps=args.steps, lr=args.lr, epsilon=0.05, batch=4, seed=args.seed, trainer=args.trainer
        )
        from ruvdllm.loop_b_trainer import trainer_for

        trainer = trainer_for(directory, loop_b_config, say=print)
        # Six answers per domain would keep one out of training for loop B's keep-or-drop check, and
        # the tiny random model learns nothing that carries to one unseen sentence, so every
        # MicroLoRA would be dropped: the check runs on all six under other masks here (as the
        # suite's loop B tests do). This benchmark measures forgetting, not generalisation.
        loop_b_module.VALIDATION_MIN = 1000
        store = SqliteStore(scratch / "trajectories.db")
        rng = np.random.default_rng(args.seed)
        bank_dir = scratch / "bank"
        LoopB.prepare_bank(bank_dir, Bank.for_model(config))
        loop_b = LoopB(
            loop_b_config, bank_dir, config, model.encode, store.good_feedback, session, trainer=trainer
        )
        loop_c = LoopCConfig(seed=args.seed, fold_into=args.fold_into)

        def learn(domain: str) -> None:
            like(store, model, domain, rng)
            started = time.perf_counter()
            report = loop_b.run_once()
            kept = [t for t in report.trained if t.kept]
            print(
                f"loop B on {domain}: {len(report.trained)} MicroLoRA(s) trained, {len(kept)} kept "
                f"({time.perf_counter() - started:.0f}s)"
            )
            for t in report.trained:  # the keep-or-drop check, so that a run that learnt nothing says so
                print(f"  {t.name} ({t.trainer}): check NLL {t.nll_before:.4f} -> {t.nll_after:.4f}")
            if not kept:
                raise SystemExit(f"loop B kept no MicroLoRA for {domain}: nothing to measure forgetting of")

        def fold(directory: Path, lam: float, uniform: bool = False):
            bank = Bank.load(directory)
            if uniform:  # the same total importance spread evenly: L2 toward the old adapter
                state = FisherState.load(directory)
                for group in state.groups.values():
                    mean = float(np.mean([f.mean() for f in group.fisher.values()]))
                    group.fisher = {t: np.full_like(f, mean) for t, f in group.fisher.items()}
                state.save(directory)
            examples = good_examples(store.good_feedback, model.encode, bank, 0.5, 256)
            return consolidate(
                directory,
                replace(loop_c, ewc_lambda=lam),
                session,
                config.mask_token_id,
                config.block_size,
                examples,
            )

        def scores(bank: Bank) -> dict[str, float]:
            return {
                f"{d} {part}": held_out_nll(session, model, bank, d, part)
                for d in DOMAINS
                for part in ("held_out", "train")
            }

        start = scores(Bank.load(bank_dir))
        learn("licence")
        report = fold(bank_dir, 0.0)  # the first fold: no Fisher yet, the same for every λ
        print("loop C:", "; ".join(report.lines))
        after_1 = scores(Bank.load(bank_dir))
        learn("cooking")
        rows = []
        for lam in args.lambdas:
            for uniform in (False, True) if lam > 0 else (False,):
                copy = scratch / f"bank-{lam:g}-{uniform}"
                shutil.copytree(bank_dir, copy)
                fold(copy, lam, uniform)
                rows.append((f"{lam:g}" + (" uniform" if uniform else ""), scores(Bank.load(copy))))
        store.close()

    columns = [f"{d} {part}" for d in DOMAINS for part in ("held_out", "train")]
    print()
    print("masked NLL (nats per masked token; lower is better): held_out = sentences never trained on,")
    print("train = the liked answers loops B and C learnt from")
    print(f"{'':34} " + " ".join(f"{c.replace('held_out', 'held-out'):>16}" for c in columns))

    def line(label: str, r: dict) -> None:
        print(f"{label:34} " + " ".join(f"{r[c]:16.4f}" for c in columns))

    line("before any learning", start)
    line("after licence (consolidated)", after_1)
    for lam, r in rows:
        line(f"after cooking, λ = {lam}" + (" (plain)" if lam == "0" else ""), r)
    plain = next((r for lam, r in rows if lam == "0"), None)
    print()
    print("forgetting = licence NLL after cooking − after licence; learning = cooking NLL change")
    for lam, r in rows:
        parts = []
        for part in ("held_out", "train"):
            lic, cook = f"licence {part}", f"cooking {part}"
            versus = "" if plain is None else f" (vs plain {r[lic] - plain[lic]:+.4f})"
            parts.append(
                f"{part.replace('_', '-')}: forgetting {r[lic] - after_1[lic]:+.4f}{versus}, "
                f"learning {r[cook] - after_1[cook]:+.4f}"
            )
        print(f"λ = {lam:<14} " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
