"""The ablations the design's seeds plan: TALoRA, DGR and DAF each against its baseline, on
held-out rows no training saw, with the seeds' predictions beside what was measured.

    python benchmarks/ablations.py                        # the default model (SmolLM2-135M, converted)
    python benchmarks/ablations.py --tiny                 # the suite's tiny model: mechanics, seconds
    python benchmarks/ablations.py --only talora dgr --steps 40 --json ablations.json
    python benchmarks/ablations.py --only dgr --bank ruvdllm_export/adapters/smollm2-135m-talora

    talora      `ruvdllm train-banks --compare` itself: the banks, a static LoRA of the same
                parameter count and no adapter, per domain (--groups adds 1, 2, 4, 6 ... banks at
                the same parameter count, trained by the same train_banks)
    dgr         over those banks: retrieval off, from the prompt only, uncertainty-guided (the
                runtime's rule), and the own domain's adapter always on (benchmarks/ablation_dgr.py);
                --bank DIR: over an existing TALoRA bank instead, without training one
    federation  DAF, FedAvg and FedProx with the hub's strategy code on non-IID devices
                (benchmarks/ablation_federation.py)

Every NLL is masked-token NLL on each domain's held-out split (train-banks' split: same seed,
same fraction), with evaluate()'s fixed masks. Perplexity changes are exp(mean NLL difference) - 1.
The default model's domains are those the shipped banks were trained on (docs/conversion.md).
CPU numbers take minutes per hundred steps; --steps and friends trade accuracy for time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ablation_dgr  # noqa: E402
import ablation_federation  # noqa: E402

from ruvdllm.errors import RuvdllmError  # noqa: E402

ABLATIONS = ("talora", "dgr", "federation")
# The seeds' predictions (issue "Goals"): (what is compared, low, high, unit); "met" = at least the
# smaller predicted gain.
PREDICTIONS = {
    "talora": ("TALoRA banks vs static LoRA, perplexity", -12.0, -8.0),
    "dgr": ("DGR on vs off, perplexity", -8.0, -5.0),
    "federation": ("DAF vs FedAvg, federation benefit (relative)", 15.0, 20.0),
}
TINY = {"steps": 4, "domain_steps": 2, "client_steps": 2, "clients": 4, "eval_rows": 2, "seq_len": 32}
DEFAULT = {"steps": 40, "domain_steps": 20, "client_steps": 10, "clients": 8, "eval_rows": 8, "seq_len": 128}


def default_domains() -> list[Path]:
    """The shipped banks' domains: the corpus's docs and licences, and the distilled answers."""
    from ruvdllm_export.default_model import cache_root

    root = Path(__file__).resolve().parents[1]
    paths = [
        cache_root() / "corpus" / "docs",
        cache_root() / "corpus" / "licences",
        root / "data" / "distill_smollm2.jsonl",
    ]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise RuvdllmError(
            f"ablations: {', '.join(missing)} missing; give --data DOMAIN ... (python -m ruvdllm_export.convert.corpus <cache>/corpus collects the corpus)"
        )
    return paths


def tiny_workspace(root: Path) -> tuple[Path, Path, list[Path]]:
    """The suite's tiny GGUF, a random conversion adapter over it, and three small text domains."""
    from ruvdllm_export.checkpoints import load_checkpoint
    from tests.fixtures.tiny_models import make_gguf_checkpoint, write_conversion_adapter

    gguf = root / "tiny.gguf"
    make_gguf_checkpoint(gguf, "llama", "Q4_1", tied=True, seed=1)
    adapter = write_conversion_adapter(root / "conversion.safetensors", load_checkpoint(gguf))
    sentences = {
        "licences": "Permission is hereby granted, free of charge, to any person obtaining a copy. ",
        "manuals": "Run the command with the option to print the version and exit. ",
        "recipes": "Whisk the eggs with sugar, then fold in the flour and bake until golden. ",
    }
    domains = []
    for name, sentence in sentences.items():
        folder = root / name
        folder.mkdir()
        for i in range(24):
            (folder / f"{i}.txt").write_text((sentence + f"Note {i}. ") * 5)
        domains.append(folder)
    return gguf, adapter, domains


def run_talora(args, model_flags: list[str], bank_dir: Path) -> dict:
    """`ruvdllm train-banks --compare` as a user runs it; its training.json holds the table."""
    from ruvdllm.cli import main
    from ruvdllm_export.banks_command import TRAINING_JSON

    flags = ["--steps", args.steps, "--batch-size", args.batch_size, "--seq-len", args.seq_len]
    flags += ["--eval-rows", args.eval_rows, "--precision", args.precision, "--seed", args.seed]
    command = ["train-banks", *model_flags, "--data", *map(str, args.data), "--output", str(bank_dir)]
    command += ["--compare", "--quiet", *map(str, flags)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if main(command) != 0:
        raise RuvdllmError("ablations: train-banks failed")
    report = json.loads((bank_dir / TRAINING_JSON).read_text())
    nll = report["heldout_masked_nll"]
    return {
        "nll": {"none": nll["converted"], "banks": nll["banks"], "static": nll["static"]},
        "seconds": report["seconds"],
    }


def run_groups(model, train, held, objective, config, args) -> dict:
    """Banks of G groups x rank (G0·r0 / G) for each G of --groups: equal parameter count."""
    from runtime.talora import TaloraConfig
    from ruvdllm_export.convert.evaluation import evaluate
    from ruvdllm_export.convert.talora_training import train_banks

    total = config.groups * config.rank
    out = {}
    for groups in args.groups:
        if total % groups:
            raise RuvdllmError(f"ablations: {groups} groups do not divide {total} (banks x rank) evenly")
        rank = total // groups
        shaped = dataclasses.replace(
            config,
            rank=rank,
            alpha=config.alpha / config.rank * rank,
            talora=TaloraConfig(boundaries=tuple(i / groups for i in range(groups)) + (1.0,)),
            curriculum=(0.6 / groups,) * groups if groups > 1 else (),
        )
        banks, _ = train_banks(model, train, objective, shaped)
        with _inference(args):
            out[groups] = {
                d: evaluate(model, rows, _plain(objective), args.eval_rows, banks.bank(), banks.slot_weights)[
                    "masked_nll"
                ]
                for d, rows in held.items()
            }
    return out


def _plain(objective):
    from ruvdllm_export.convert.objectives import ObjectiveConfig

    return ObjectiveConfig(objective.objective, objective.block_size, complementary=False)


def _inference(args):
    import contextlib

    import torch

    from ruvdllm_export.convert.trainer import precision_autocast

    stack = contextlib.ExitStack()
    stack.enter_context(torch.no_grad())
    stack.enter_context(precision_autocast(args.precision))
    return stack


def run_dgr(model, checkpoint, train, held, objective, config, bank_dir: Path, args) -> dict:
    from runtime.banks import Bank
    from runtime.dgr import DgrConfig
    from ruvdllm_export.reference.control import Adapters

    bank = Bank.load(bank_dir)  # the TALoRA banks train-banks wrote, as the runtime loads them
    plain = _plain(objective)
    domain_config = dataclasses.replace(config, steps=args.domain_steps)
    trained = ablation_dgr.domain_adapters(model, train, objective, domain_config)
    talora_only = Adapters.from_bank(bank)
    with _inference(args):
        keys = {
            d: ablation_dgr.domain_keys(model, rows[: ablation_dgr.KEYS_PER_DOMAIN], plain, talora_only)
            for d, rows in train.items()
        }
    slots = ablation_dgr.build_dgr_bank(bank, trained, keys)
    dgr = DgrConfig()
    adapters = Adapters.from_bank(bank, dgr)
    with _inference(args):
        return {
            d: ablation_dgr.score_modes(model, rows, plain, args.eval_rows, adapters, dgr, slots[d])
            for d, rows in held.items()
        }


def measure(args) -> dict:
    import torch

    from ruvdllm_export.banks_command import _converted_model, base_checkpoint, load_domains
    from ruvdllm_export.convert.data import HELD_OUT
    from ruvdllm_export.convert.objectives import ObjectiveConfig
    from ruvdllm_export.convert.talora_training import BankTrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model_flags = []
        if args.tiny:
            gguf, adapter, args.data = tiny_workspace(scratch)
            args.model, args.adapter = gguf, adapter
        args.data = args.data or default_domains()
        if args.model:
            model_flags += ["--model", str(args.model)]
        if args.adapter:
            model_flags += ["--adapter", str(args.adapter)]
        bank_dir = args.bank or scratch / "banks"
        started = time.monotonic()
        if "talora" in args.only or ("dgr" in args.only and not args.bank):  # DGR retrieves over these
            results["talora"] = run_talora(args, model_flags, scratch / "banks")
        loaded = SimpleNamespace(
            model=args.model, adapter=args.adapter, no_adapter=False, quiet=True, precision=args.precision
        )
        checkpoint, model, _ = _converted_model(loaded, base_checkpoint(loaded))
        train_rows, held = load_domains(args.data, checkpoint, args.seq_len, HELD_OUT, args.seed)
        train = {name: rows for name, rows in zip(held, train_rows, strict=True)}
        objective = ObjectiveConfig("bd3lm", args.block_size, complementary=True)
        config = BankTrainConfig(
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, precision=args.precision
        )
        if args.groups:
            results["groups"] = run_groups(model, torch.cat(train_rows), held, objective, config, args)
        if "dgr" in args.only:
            results["dgr"] = run_dgr(model, checkpoint, train, held, objective, config, bank_dir, args)
        if "federation" in args.only:
            devices = ablation_federation.make_devices(train, args.clients)
            client_config = dataclasses.replace(config, steps=args.client_steps)
            results["federation"] = ablation_federation.federate(
                model, devices, held, objective, client_config, args.eval_rows, args.rounds
            )
        results["seconds"] = time.monotonic() - started
    results["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results["summary"] = summarise(results)
    return results


def _ppl_change(a: dict, b: dict) -> float:
    """% perplexity change of a against b: exp(mean over domains of NLL_a - NLL_b) - 1."""
    import math

    diff = sum(a[d] - b[d] for d in b) / len(b)
    return 100 * (math.exp(diff) - 1)


def summarise(results: dict) -> list[dict]:
    rows = []

    def row(name, measured, extra=""):
        what, low, high = PREDICTIONS[name]
        met = measured <= high if low < 0 else measured >= low
        rows.append(
            {
                "ablation": name,
                "what": what,
                "measured": measured,
                "predicted": [low, high],
                "met": met,
                "note": extra,
            }
        )

    if "talora" in results:
        nll = results["talora"]["nll"]
        row(
            "talora",
            _ppl_change(nll["banks"], nll["static"]),
            f"banks vs none {_ppl_change(nll['banks'], nll['none']):+.1f}%",
        )
    if "dgr" in results:
        by = {m: {d: v[m]["masked_nll"] for d, v in results["dgr"].items()} for m in ablation_dgr.MODES}
        row(
            "dgr",
            _ppl_change(by["dgr"], by["off"]),
            f"prompt-only {_ppl_change(by['prompt'], by['off']):+.1f}%, oracle {_ppl_change(by['oracle'], by['off']):+.1f}%",
        )
    if "federation" in results:
        fed = results["federation"]
        avg, daf = fed["fedavg"]["benefit"], fed["daf"]["benefit"]
        relative = 100 * (daf - avg) / abs(avg) if avg else float("nan")
        row(
            "federation",
            relative,
            f"benefit: DAF {100 * daf:+.2f}%, FedAvg {100 * avg:+.2f}%, FedProx {100 * fed['fedprox']['benefit']:+.2f}%",
        )
    return rows


def print_tables(results: dict) -> None:
    if "talora" in results:
        nll = results["talora"]["nll"]
        print("\n## TALoRA banks vs static LoRA (same parameter count) vs no adapter — held-out masked NLL")
        print("| domain | no adapter | static LoRA | TALoRA banks | banks vs static |\n|---|---|---|---|---|")
        for d in nll["none"]:
            print(
                f"| {d} | {nll['none'][d]:.3f} | {nll['static'][d]:.3f} | {nll['banks'][d]:.3f} | {100 * (nll['banks'][d] / nll['static'][d] - 1):+.2f}% |"
            )
    if "groups" in results:
        print("\n## TALoRA groups at equal parameter count — held-out masked NLL")
        domains = list(next(iter(results["groups"].values())))
        print("| groups | " + " | ".join(domains) + " |")
        print("|---" * (len(domains) + 1) + "|")
        for g, nll in results["groups"].items():
            print(f"| {g} | " + " | ".join(f"{nll[d]:.3f}" for d in domains) + " |")
    if "dgr" in results:
        print("\n## DGR over the TALoRA banks — held-out masked NLL (share of noisy rows given DGR weights)")
        print("| domain | " + " | ".join(ablation_dgr.MODES) + " |")
        print("|---" * (len(ablation_dgr.MODES) + 1) + "|")
        for d, modes in results["dgr"].items():
            cells = [
                f"{modes[m]['masked_nll']:.3f} ({100 * modes[m]['retrieved']:.0f}%)"
                for m in ablation_dgr.MODES
            ]
            print(f"| {d} | " + " | ".join(cells) + " |")
    if "federation" in results:
        fed = results["federation"]
        print("\n## Federation: mean held-out masked NLL over all domains, per device")
        names = list(fed["local"])
        print("| device (domain) | local only | " + " | ".join(ablation_federation.STRATEGIES) + " |")
        print("|---" * (len(ablation_federation.STRATEGIES) + 2) + "|")
        for n in names:
            local = fed["local"][n]
            cells = [
                sum(fed[s]["devices"][n].values()) / len(local["nll"]) for s in ablation_federation.STRATEGIES
            ]
            print(
                f"| {n} ({local['domain']}) | {sum(local['nll'].values()) / len(local['nll']):.3f} | "
                + " | ".join(f"{c:.3f}" for c in cells)
                + " |"
            )
        for s in ablation_federation.STRATEGIES:
            withheld = [w for r in fed[s]["rounds"] for w in r["withheld"].items()]
            print(
                f"{s}: benefit {100 * fed[s]['benefit']:+.2f}%"
                + (f"; withheld {withheld}" if withheld else "")
            )
    print("\n## Seeds' predictions against the measurements")
    print("| ablation | measured | predicted | met | also |\n|---|---|---|---|---|")
    for r in results["summary"]:
        low, high = r["predicted"]
        print(
            f"| {r['what']} | {r['measured']:+.1f}% | {low:+.0f} to {high:+.0f}% | {'yes' if r['met'] else 'no'} | {r['note']} |"
        )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tiny", action="store_true", help="the suite's tiny model and made-up domains (mechanics only)"
    )
    parser.add_argument(
        "--only", nargs="+", choices=ABLATIONS, default=list(ABLATIONS), help="which ablations"
    )
    parser.add_argument("--model", type=Path, help="HF directory or GGUF (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--adapter", type=Path, help="conversion adapter (default: the shipped one)")
    parser.add_argument(
        "--data", type=Path, nargs="+", help="one path per domain (default: the shipped banks' three)"
    )
    parser.add_argument("--steps", type=int, help="TALoRA and static LoRA steps")
    parser.add_argument("--domain-steps", type=int, help="steps per DGR domain adapter")
    parser.add_argument("--clients", type=int, help="simulated devices (domains round robin)")
    parser.add_argument("--client-steps", type=int, help="local steps per device per round")
    parser.add_argument("--rounds", type=int, default=1, help="federation rounds")
    parser.add_argument("--eval-rows", type=int, help="held-out rows scored per domain")
    parser.add_argument("--seq-len", type=int, help="tokens per row")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="default: bf16 (fp32 with --tiny)")
    parser.add_argument(
        "--groups", type=int, nargs="+", help="also TALoRA with these group counts, same parameters"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument(
        "--bank",
        type=Path,
        help="DGR over this TALoRA bank (e.g. the shipped one) instead of the one --only talora trains",
    )
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    if args.bank and "talora" in args.only:
        parser.error(
            "--bank replaces the banks the talora ablation trains: use it with --only dgr / federation"
        )
    for key, value in (TINY if args.tiny else DEFAULT).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.precision = args.precision or ("fp32" if args.tiny else "bf16")
    if args.tiny and args.lr == 1e-3:
        args.lr = 1e-2  # a few steps on a tiny model: a visible change
    if min(args.steps, args.domain_steps, args.clients, args.client_steps, args.rounds, args.eval_rows) < 1:
        parser.error("steps, domain/client steps, clients, rounds and eval rows must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        results = measure(args)
    except RuvdllmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_tables(results)
    print(f"\n{results['seconds']:.0f} s on this machine (shared CPU: times are rough)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
