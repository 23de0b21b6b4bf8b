"""The learning loops end to end (issue 12, docs/learning.md "The demonstration"): a simulated
user works in one text domain and the held-out masked NLL of every domain is printed before and
after; then simulated devices, one domain each, federate through a real hub process.

    python benchmarks/learning.py --tiny                     # the suite's tiny random model (fast)
    python benchmarks/learning.py --default                  # SmolLM2-135M converted (exported once)
    python benchmarks/learning.py --model DIR [--bank DIR]   # an exported model directory
    ... --corpus DIR       one sub-directory per domain (default: the package-text corpus, docs +
                           licences, collected into the cache by ruvdllm_export.convert.corpus)
    ... --domain licences  the simulated user's domain;  --no-federate: part (a) only

(a) One device. The user sends `--prompts` requests: the start of a passage of a training document
of the domain (continuation, no chat template), answered by the real runtime (BD3LM, TALoRA, DGR)
while loop A records the trajectory. The stated feedback rule: a thumbs up when the answer shares
at least half of its tokens with the passage's true continuation (unigram F1 >= 0.5), otherwise a
correction whose text is that true continuation — training text only, never a held-out document.
Loop B then runs once as `ruvdllm serve`'s background service does (loop_b_service.for_model: the
learnt bank copied from the model's, loop A's store read on its writer thread), then loop C's
consolidation as the same thread runs it (loop C: the MicroLoRAs folded into their TALoRA group
adapters under EWC++, `--ewc-lambda`; `--no-consolidate` stops after loop B; `--no-fisher` skips
the Fisher loop C measures for its next run, which this one-shot run never has). With loop C on,
loop B's bank is scored too: one run gives loop B alone and loops B + C.

Held-out NLL: per domain, passages of documents the split (ruvdllm_export.convert.data, the same
hash rule and fraction as `ruvdllm train-banks`) holds out, one noisy BD3LM block each at t drawn
in (0, 1), the same masks before and after. Adapter rows as the runtime builds them: TALoRA at t,
plus on the block rows the DGR weights the passage's own prompt key would retrieve (its query
vector from one forward, runtime/control.py; runtime/dgr.py's vote over the bank's index) — as if
DGR retrieved at every masked position, an upper bound on both the gain and the harm. Goals
(issue 12): the user's domain >= 5% lower, every other domain <= 1% higher.

(b) Several devices, `--devices` domains (default: all), each with its own bank directory and
store, learn as in (a) on their own domain; each takes its update to a hub started here (`ruvdllm
hub`, loopback, tenant tier: the TALoRA group adapters, docs/learning.md "Federation"), the rounds
close, and each merges the release. Printed: every device's held-out NLL on every domain at the
start, after its own learning and after the merge.

Absolute times on a shared machine are noisy; the figures here are NLLs, which are not.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.banks import Bank  # noqa: E402
from runtime.bd3lm import bd3lm_chunk  # noqa: E402
from runtime.cpython_model import open_model  # noqa: E402
from runtime.dgr import DgrConfig, vote  # noqa: E402
from runtime.learning.config import FOLD_INTO, TRAINERS, LoopAConfig, LoopBConfig, LoopCConfig  # noqa: E402
from runtime.learning.loop_a import LoopA  # noqa: E402
from runtime.learning.loop_b_service import for_model, install_bank  # noqa: E402
from runtime.learning.loop_c_service import consolidate_now  # noqa: E402
from runtime.learning.masked_nll import NoisyBlock, block_nll, noisy_block  # noqa: E402
from runtime.learning.trajectory import make_feedback  # noqa: E402
from runtime.settings import GenerationSettings  # noqa: E402
from runtime.talora import group_names, talora_weights  # noqa: E402

GOAL_DOMAIN = 0.05  # the user's domain: at least 5% lower held-out NLL
GOAL_ELSEWHERE = 0.01  # other domains: at most 1% higher
LIKED_F1 = 0.5  # the simulated user's thumbs-up rule


# --- the domains: training and held-out passages --------------------------------------------------


@dataclass(frozen=True)
class Passage:
    prompt: tuple[int, ...]
    continuation: tuple[int, ...]


def default_corpus() -> Path:
    """The package-text corpus (docs + licences) in the cache, collected once."""
    from ruvdllm_export.convert.corpus import build
    from ruvdllm_export.convert.data import HELD_OUT
    from ruvdllm_export.default_model import cache_root

    corpus = cache_root() / "corpus"
    if not (corpus / "manifest.jsonl").is_file():
        print(f"collecting the package-text corpus into {corpus} ...", flush=True)
        build(corpus, 8.0, HELD_OUT, 0)
    return corpus


def corpus_domains(corpus: Path | None, domain: str) -> list[Path]:
    """The corpus's domain directories (default: the package-text corpus); the user's `domain`
    must be one of them."""
    corpus = corpus or default_corpus()
    paths = sorted(p for p in corpus.iterdir() if p.is_dir())
    if domain not in [p.name for p in paths]:
        raise SystemExit(f"--domain {domain}: not among the corpus's domains {[p.name for p in paths]}")
    return paths


def domain_split(path: Path) -> tuple[list[str], list[str]]:
    """(training texts, held-out texts) of one domain, split as `ruvdllm train-banks` splits it."""
    from ruvdllm_export.convert.data import HELD_OUT, read_documents, split_documents

    train, held = split_documents(read_documents([path]), HELD_OUT, 0)
    return [d.text for d in train], [d.text for d in held]


def passages(model, texts: list[str], count: int, prompt_len: int, answer_len: int, rng) -> list[Passage]:
    """`count` passages (prompt, true continuation): at most two random windows per text, texts
    taken in random order until there are twice `count` windows (a long licence must not supply
    them all, and the corpus need not be tokenized whole); texts too short for one are skipped."""
    windows, width = [], prompt_len + answer_len
    for i in rng.permutation(len(texts)):
        ids = model.encode(texts[i])
        starts = range(0, len(ids) - width + 1, width)
        for s in rng.permutation(len(starts))[:2]:
            windows.append(ids[starts[s] : starts[s] + width])
        if len(windows) >= 2 * count:
            break
    if not windows:
        raise SystemExit(f"no text holds a passage of {width} tokens")
    picks = rng.choice(len(windows), size=min(count, len(windows)), replace=False)
    return [Passage(tuple(windows[i][:prompt_len]), tuple(windows[i][prompt_len:])) for i in sorted(picks)]


def unigram_f1(answer, reference) -> float:
    common = sum((Counter(answer) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(answer), common / len(reference)
    return 2 * precision * recall / (precision + recall)


# --- (a) the user and the loops --------------------------------------------------------------------


def simulate_user(model, loop_a: LoopA, work: list[Passage], length: int) -> dict:
    """Every passage's prompt through the real runtime, recorded by loop A, then feedback by the
    module's rule; returns what the user did."""
    settings = GenerationSettings(length=length, stop_at_eos=False)
    liked = corrected = 0
    for passage in work:
        control = model.control(settings)
        done = model.generate(list(passage.prompt), settings, control=control)
        completion = loop_a.record_completion(model, list(passage.prompt), settings, done, control)
        if unigram_f1(done.tokens, passage.continuation) >= LIKED_F1:
            loop_a.feedback(make_feedback(completion, up=True))
            liked += 1
        else:
            loop_a.feedback(make_feedback(completion, correction=model.decode(list(passage.continuation))))
            corrected += 1
    return {"requests": len(work), "liked": liked, "corrected": corrected}


def no_rows(after: int, threshold: float, limit: int) -> list:
    """A store reader that finds nothing (loop C then measures no Fisher)."""
    return []


def consolidate_learnt(
    model, bank_dir: Path, session, read_good, config: LoopBConfig, loop_c: LoopCConfig, fisher: bool = True
) -> list[str]:
    """Loop C once on the device's learnt bank, as serve's background thread runs it after loop B
    (runtime/learning/loop_c_service.py): loop B's MicroLoRAs folded into their group adapters under
    EWC++, the Fisher measured on the same good answers loop B trained on; the model samples with the
    consolidated bank from here on. Its report, one line per group.

    `fisher` False: no Fisher measured after the merge. A first consolidation has no Fisher yet (λ
    weighs nothing: the plain SVD merge), and the one it measures afterwards serves only the next
    consolidation, which a one-shot demonstration never runs; on the default model it costs 2
    forwards per component (480 a group) per block, hours on a loaded CPU."""
    if not fisher:
        read_good = no_rows  # no examples: consolidate() keeps the carried Fisher of every group
    install = functools.partial(install_bank, model)
    report = consolidate_now(loop_c, config, bank_dir, model, session, read_good, on_bank=install)
    return [line if line.startswith("loop C") else f"loop C: {line}" for line in report.lines]


def learn(
    model,
    root: Path,
    work: list[Passage],
    config: LoopBConfig,
    loop_c: LoopCConfig | None,
    length: int,
    fisher: bool = True,
    trainer=None,
) -> dict:
    """Loops A, B and C (when `loop_c`) on one device whose data lives in `root`; the model samples
    with the learnt bank (root/bank) from here on. `trainer`: loop B's MicroLoRA trainer (None:
    SPSA)."""
    loop_a = LoopA(LoopAConfig(store=str(root / "trajectories.db")))
    try:

        def read_good(after: int, threshold: float, limit: int) -> list:
            return loop_a.recorder.call(lambda store: store.good_feedback(after, threshold, limit))

        loop_b = for_model(
            model, replace(config, bank=str(root / "bank")), read_good, trainer_for=lambda *_: trainer
        )
        loop_a.attach(model)
        user = simulate_user(model, loop_a, work, length)
        started = time.perf_counter()
        report = loop_b.run_once()
        seconds = time.perf_counter() - started
        consolidated = ["loop C: off (--no-consolidate)"]
        if loop_c is not None:
            # loop B's bank as it stood, so one run scores loop B alone and loops B + C
            shutil.copytree(root / "bank", root / "after-b", dirs_exist_ok=True)
            consolidated = consolidate_learnt(
                model, root / "bank", loop_b.session, read_good, config, loop_c, fisher
            )
    finally:
        loop_a.close()
    trained = [
        {k: v for k, v in asdict(t).items() if k in ("name", "group", "examples", "steps", "kept", "trainer")}
        | {"nll_before": round(t.nll_before, 4), "nll_after": round(t.nll_after, 4)}
        | {"train_loss": [round(t.loss_first, 4), round(t.loss_last, 4)], "seconds": round(t.seconds, 1)}
        | {"notes": t.notes}
        for t in report.trained
    ]
    return {
        "user": user,
        "loop_b": {
            "read": report.read,
            "clusters": report.clusters,
            "trained": trained,
            "skipped": report.skipped,
            "seconds": round(seconds, 1),
        },
        "loop_c": consolidated,
        "session": loop_b.session,
    }


# --- held-out NLL with the adapters the runtime would apply ------------------------------------------


@dataclass
class Probe:
    """A held-out passage as scored: its noisy block (fixed masks) and its prompt key."""

    block: NoisyBlock
    key: np.ndarray | None


def probes(model, held: list[Passage], seed: int) -> list[Probe]:
    rng = np.random.default_rng(seed)
    block = model.config.block_size
    out = []
    for passage in held:
        noisy = noisy_block(passage.prompt, passage.continuation, block, (0.0, 1.0), rng)
        out.append(Probe(noisy, None))
    return out


def prompt_key(model, block: NoisyBlock) -> np.ndarray | None:
    """The DGR query vector of the block's first position after its context: one forward of the
    real runtime with the query recorded (runtime/control.py), what retrieval would search with."""
    settings = GenerationSettings(length=model.config.block_size, steps=1, stop_at_eos=False, dgr=False)
    control = model.control(settings)
    control.record_query = True
    model.generate(list(block.context), settings, control=control)
    return None if control.embedding is None else np.asarray(control.embedding, np.float64)


# The system with one component taken out (the issue's "full system against each component
# removed"): the same bank, probes and masks, scored with
REMOVED = {
    "dgr": "no DGR retrieval (the DGR slots' weights zero)",
    "talora": "no timestep routing (every group adapter at 1/G at every t: a static mix of them)",
    "adapters": "no bank at all (the converted model alone)",
}


def held_out_nll(session, model, bank: Bank, scored: list[Probe], removed: str | None = None) -> float:
    """Mean NLL per masked token over the probes, with `bank`'s TALoRA at t and DGR's vote for each
    probe's key over `bank`'s index on the block rows; `removed`: one of REMOVED taken out."""
    session.set_bank(bank)
    index = bank.build_index() if bank.pattern_slots and removed not in ("dgr", "adapters") else None
    talora = bank.talora_config()
    dgr = DgrConfig()
    total = count = 0.0
    for probe in scored:
        if index is not None and probe.key is None:
            probe.key = prompt_key(model, probe.block)
        retrieved = [0.0] * (bank.slots - bank.groups)
        if index is not None and probe.key is not None:
            found = index.search(list(probe.key), dgr.neighbours)
            retrieved = vote(found, dgr, bank.groups, bank.slots)

        def at(t: float) -> list[float]:
            if removed == "adapters":
                return [0.0] * bank.groups
            if removed == "talora":
                return [1.0 / bank.groups] * bank.groups
            return talora_weights(t, talora)[: bank.groups]

        clean = at(0.0) + [0.0] * (bank.slots - bank.groups)
        noisy = at(probe.block.t) + retrieved
        rows = [clean] * len(probe.block.context) + [noisy] * len(probe.block.block)
        chunk = bd3lm_chunk(probe.block.context, 0, probe.block.block, model.config.mask_token_id, rows)
        nll, n = block_nll(session.forward(chunk), probe.block)
        total, count = total + nll, count + n
    return total / max(count, 1)


def score_all(
    session, model, bank_dir: Path, held: dict[str, list[Probe]], removed: str | None = None
) -> dict[str, float]:
    bank = Bank.load(bank_dir)
    return {name: held_out_nll(session, model, bank, scored, removed) for name, scored in held.items()}


def component_lines(
    session, model, root: Path, held: dict[str, list[Probe]], domain: str, scored: dict[str, dict]
) -> tuple[dict, list[str]]:
    """The learnt banks (after loop B, and after B + C when loop C ran) with each component of
    REMOVED taken out, and the start bank (no learning): held-out NLL per domain, and the change
    of the user's domain against the full system. `scored`: the full system's scores already
    taken, by bank directory name ("start", "after-b", "bank"), not scored again."""
    figures: dict = {}
    lines = ["held-out masked NLL per domain, the full system and each component removed:"]
    banks = [("after B", "after-b"), ("after B + C", "bank")]
    if not (root / "after-b").is_dir():
        banks = [("after B", "bank")]
    for label, name in banks:
        bank_dir = root / name
        full = scored[name]
        figures[label] = {"full": full}
        lines.append(f"  {label}: full system  " + "  ".join(f"{d} {v:.4f}" for d, v in full.items()))
        for removed, what in REMOVED.items():
            scores = score_all(session, model, bank_dir, held, removed)
            figures[label][removed] = scores
            lines.append(
                f"  {label}: {what}  "
                + "  ".join(f"{d} {v:.4f}" for d, v in scores.items())
                + f"  ({domain} {change(full[domain], scores[domain]):+.2%} against the full system)"
            )
    start = scored["start"]
    figures["no learning"] = start
    lines.append("  no learning (the start bank): " + "  ".join(f"{d} {v:.4f}" for d, v in start.items()))
    return figures, lines


def change(before: float, after: float) -> float:
    return (after - before) / before


def goal_lines(domain: str, before: dict, after: dict) -> list[str]:
    lines, met = [], True
    for name in before:
        c = change(before[name], after[name])
        if name == domain:
            ok = -c >= GOAL_DOMAIN
            goal = f"goal <= -{GOAL_DOMAIN:.0%}"
        else:
            ok = c <= GOAL_ELSEWHERE
            goal = f"goal <= +{GOAL_ELSEWHERE:.0%}"
        met &= ok
        lines.append(
            f"  {name:<10} {before[name]:.4f} -> {after[name]:.4f}  {c:+.2%}  ({goal}: {'met' if ok else 'NOT met'})"
        )
    lines.append(f"  all goals: {'met' if met else 'NOT met'}")
    return lines


# --- the starting bank -------------------------------------------------------------------------------


def starting_bank(model, bank_arg: Path | None, seed: int) -> Bank:
    """The bank every device starts from: `--bank`, else the model's own, else (a model without
    banks, like the tiny one) small random TALoRA group adapters as a stand-in for `ruvdllm
    train-banks`, so that federation has group adapters to carry. DGR adapters and keys are left
    out: loop B fills the DGR slots."""
    source = Bank.load(bank_arg) if bank_arg else model.bank
    bank = Bank.for_model(model.config, getattr(model.backend, "adapter_shapes", None))
    if source is not None:
        bank = replace(bank, talora=dict(source.talora), timestep_groups=source.timestep_groups)
        for name, adapter in source.adapters.items():
            if adapter.slot < source.groups:
                bank.add_adapter(name, adapter.slot, adapter.factors)
        return bank
    rng = np.random.default_rng(seed)
    for slot, name in enumerate(group_names(bank.groups)):
        factors = {}
        for target, (fan_in, fan_out) in bank.targets.items():
            a = rng.standard_normal((bank.layers, fan_in, bank.rank)) / math.sqrt(fan_in)
            b = rng.standard_normal((bank.layers, bank.rank, fan_out)) * 0.01
            factors[target] = (a.astype(np.float32), b.astype(np.float32))
        bank.add_adapter(name, slot, factors)
    return bank


# --- (b) devices through a hub ----------------------------------------------------------------------


def federate(devices: dict[str, Path], bank: Bank, scratch: Path) -> list[str]:
    """Each device's group adapters up to a real hub process (tenant tier), the rounds closed, each
    device merges the release; returns the devices' step reports."""
    from federation_hub.client import shapes_spec
    from runtime.learning.federation_config import FederationConfig
    from ruvdllm.federate.sync import federate_once
    from tests.federation_hub.hubs import HubProcess

    hub = HubProcess(scratch / "hub").start()
    lines = []
    try:
        admin = hub.admin()
        admin.create_tenant("demo")
        shapes = shapes_spec(bank.layers, {t: tuple(f) for t, f in bank.targets.items()}, bank.rank)
        rounds = [
            admin.open_round(tier="tenant", tenant="demo", timestep_group=name, shapes=shapes)
            for slot, name in enumerate(group_names(bank.groups))
            if any(a.slot == slot for a in bank.adapters.values())
        ]
        configs = {}
        for name, root in devices.items():
            token = admin.create_token("demo", name, [])["token"]
            (root / "token").write_text(token)
            configs[name] = FederationConfig(
                enabled=True,
                hub=hub.url,
                token_file=str(root / "token"),
                bank=str(root / "bank"),
                consent_tenant=True,
                pull=False,
            )
            report = federate_once(configs[name], root)
            lines += [f"{name}: {line}" for line in report.lines]
        for round_ in rounds:
            closed = admin.close_round(round_["id"])
            outcome = closed.get("outcome") or closed.get("status")
            lines.append(
                f"hub: round {round_['id']} ({round_['timestep_group']}) closed: {outcome}, release {closed.get('release_id')}"
            )
        for name, root in devices.items():
            report = federate_once(replace(configs[name], pull=True), root)
            lines += [f"{name}: {line}" for line in report.lines]
    finally:
        hub.stop()
    return lines


@dataclass
class Demo:
    """What both parts share: the model, the bank devices start from, the data, loop B's knobs."""

    directory: Path
    start: Bank
    work: dict[str, list[Passage]]  # per domain: the user's requests (training text)
    held: dict[str, list[Probe]]  # per domain: the held-out probes
    config: LoopBConfig
    loop_c: LoopCConfig | None  # None: --no-consolidate
    answer_tokens: int
    scratch: Path
    fisher: bool = True  # loop C measures its Fisher after the merge (--no-fisher: it does not)
    trainer: object = None  # loop B's MicroLoRA trainer (ruvdllm.loop_b_trainer); None: SPSA

    def device(self, name: str):
        """A device's data directory with the starting bank, and the model opened on it."""
        root = self.scratch / name
        (root / "start").mkdir(parents=True, exist_ok=True)
        self.start.save(root / "start")
        return root, open_model(self.directory, bank=root / "start", verify="sizes")


def one_user(demo: Demo, domain: str) -> dict:
    """(a): loops A, B (C) for one user in `domain`; every domain's held-out NLL before/after."""
    root, model = demo.device("user")
    learnt = learn(
        model,
        root,
        demo.work[domain],
        demo.config,
        demo.loop_c,
        demo.answer_tokens,
        demo.fisher,
        demo.trainer,
    )
    session = learnt.pop("session")
    before = score_all(session, model, root / "start", demo.held)
    after = score_all(session, model, root / "bank", demo.held)
    print(f"\n(a) one user in '{domain}': {learnt['user']}")
    print(f"loop B: {json.dumps(learnt['loop_b'])}")
    for line in learnt["loop_c"]:
        print(line)
    figures = {**learnt, "before": before, "after": after}
    if (root / "after-b").is_dir():  # loop C ran: loop B's own effect too, from the same run
        figures["after_b"] = score_all(session, model, root / "after-b", demo.held)
        print("held-out masked NLL per domain, start -> after loops A/B (before loop C):")
        for line in goal_lines(domain, before, figures["after_b"]):
            print(line)
    print("held-out masked NLL per domain, start -> after loops A/B/C:")
    for line in goal_lines(domain, before, after):
        print(line)
    scored = {"start": before, "bank": after} | (
        {"after-b": figures["after_b"]} if "after_b" in figures else {}
    )
    figures["components"], lines = component_lines(session, model, root, demo.held, domain, scored)
    for line in lines:
        print(line)
    return figures


def devices_through_a_hub(demo: Demo, domains: list[str]) -> dict:
    """(b): one device per domain learns, all federate through a hub process; every device's
    held-out NLL on every domain at the start, after its own learning, after the merge."""
    roots, scores = {}, {}
    for name in domains:
        root, model = demo.device(f"device-{name}")
        report = learn(
            model,
            root,
            demo.work[name],
            demo.config,
            demo.loop_c,
            demo.answer_tokens,
            demo.fisher,
            demo.trainer,
        )
        session = report.pop("session")
        trained = report["loop_b"]["trained"]
        kept = sum(t["kept"] for t in trained)
        print(f"\n(b) device '{name}': {report['user']}; loop B kept {kept} of {len(trained)} MicroLoRAs")
        for line in report["loop_c"]:
            print(f"  {line}")
        scores[name] = {
            "start": score_all(session, model, root / "start", demo.held),
            "learnt": score_all(session, model, root / "bank", demo.held),
        }
        roots[name] = root
    print("\nfederation through a hub process (tenant tier):")
    lines = federate(roots, demo.start, demo.scratch)
    for line in lines:
        print(f"  {line}")
    print("\nheld-out masked NLL, device x domain: start -> own learning -> after federation")
    for name, root in roots.items():
        scores[name]["federated"] = score_all(session, model, root / "bank", demo.held)
        for domain in demo.held:
            s, mine, f = (scores[name][k][domain] for k in ("start", "learnt", "federated"))
            mark = "own" if domain == name else "other"
            print(
                f"  {name:<10} on {domain:<10} ({mark:<5}) {s:.4f} -> {mine:.4f} -> {f:.4f}  "
                f"({change(s, f):+.2%} in all, the merge {change(mine, f):+.2%})"
            )
    return {"lines": lines, "scores": scores}


# --- the command -------------------------------------------------------------------------------------


def open_the_model(args, scratch: Path):
    if args.tiny:
        from tests.runtime.tiny_artifact import make_tiny_artifact

        directory = make_tiny_artifact(scratch / "model")
    elif args.default:
        from ruvdllm.default_artifact import default_model_dir

        directory = default_model_dir("cpu")
    else:
        directory = args.model
    return Path(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--tiny", action="store_true", help="the suite's tiny random model (built here)")
    which.add_argument("--default", action="store_true", help="the default model (exported once)")
    which.add_argument("--model", type=Path, help="an exported model directory")
    parser.add_argument("--bank", type=Path, help="the bank devices start from (default: the model's)")
    parser.add_argument("--corpus", type=Path, help="one sub-directory of text files per domain")
    parser.add_argument("--domain", default="licences", help="the simulated user's domain")
    parser.add_argument("--prompts", type=int, default=24, help="the user's requests (default 24)")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="tokens of a passage's prompt")
    parser.add_argument("--answer-tokens", type=int, default=32, help="tokens answered / corrected")
    parser.add_argument("--held-out", type=int, default=24, help="held-out passages per domain")
    parser.add_argument(
        "--trainer",
        choices=TRAINERS,
        default=LoopBConfig.trainer,
        help="loop B's trainer: auto = Adam through torch where torch and the model's reference load, else SPSA",
    )
    parser.add_argument("--steps", type=int, default=LoopBConfig.steps, help="loop B's SPSA steps")
    parser.add_argument("--lr", type=float, default=LoopBConfig.lr, help="loop B's SPSA step length")
    parser.add_argument(
        "--adam-steps", type=int, default=LoopBConfig.adam_steps, help="loop B's Adam steps, at most"
    )
    parser.add_argument(
        "--adam-epochs",
        type=float,
        default=LoopBConfig.adam_epochs,
        help="passes over the training blocks (the Adam steps, up to --adam-steps)",
    )
    parser.add_argument(
        "--adam-eval-every",
        type=int,
        default=LoopBConfig.adam_eval_every,
        help="Adam's early stopping: steps between evaluations on the held-back examples",
    )
    parser.add_argument(
        "--adam-patience",
        type=int,
        default=LoopBConfig.adam_patience,
        help="Adam's early stopping: evaluations without a new best before it stops",
    )
    parser.add_argument(
        "--no-train-prompts",
        action="store_true",
        help="loop B trains on the answers only, not on the prompts too (loop_b.train_prompts)",
    )
    parser.add_argument(
        "--adam-lr", type=float, default=LoopBConfig.adam_lr, help="loop B's Adam learning rate"
    )
    parser.add_argument(
        "--threads", type=int, default=LoopBConfig.threads, help="torch threads of the Adam trainer"
    )
    parser.add_argument("--epsilon", type=float, default=LoopBConfig.epsilon, help="loop B's perturbation")
    parser.add_argument("--rank", type=int, default=LoopBConfig.rank, help="MicroLoRA rank (1 or 2)")
    parser.add_argument("--layers", type=int, default=LoopBConfig.layers, help="last layers trained (0: all)")
    parser.add_argument("--batch", type=int, default=LoopBConfig.batch, help="noisy blocks per SPSA step")
    parser.add_argument(
        "--clusters", type=int, default=LoopBConfig.clusters, help="topics per timestep group"
    )
    parser.add_argument(
        "--ewc-lambda", type=float, default=LoopCConfig.ewc_lambda, help="loop C's EWC strength"
    )
    parser.add_argument("--no-consolidate", action="store_true", help="stop after loop B (no loop C)")
    parser.add_argument(
        "--no-fisher",
        action="store_true",
        help="loop C skips the Fisher it measures after merging (used only by a next consolidation)",
    )
    parser.add_argument("--devices", nargs="*", help="part (b)'s domains, one device each (default: all)")
    parser.add_argument("--no-federate", action="store_true", help="part (a) only")
    parser.add_argument(
        "--fold-into",
        choices=FOLD_INTO,
        default=LoopCConfig.fold_into,
        help="loop C: the group adapters a MicroLoRA goes into (every, or its own group's)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--scratch", type=Path, help="where devices keep their data (default: a temp dir)")
    args = parser.parse_args(argv)

    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="ruvdllm-learning-"))
    scratch.mkdir(parents=True, exist_ok=True)
    directory = open_the_model(args, scratch)
    domain_paths = corpus_domains(args.corpus, args.domain)
    names = [p.name for p in domain_paths]
    config = LoopBConfig(
        steps=args.steps,
        lr=args.lr,
        epsilon=args.epsilon,
        rank=args.rank,
        layers=args.layers,
        batch=args.batch,
        clusters=args.clusters,
        seed=args.seed,
        duty=1.0,  # a demonstration: train flat out (serve's default leaves generation half the CPU)
        min_cluster=2,
        trainer=args.trainer,
        adam_steps=args.adam_steps,
        adam_epochs=args.adam_epochs,
        adam_eval_every=args.adam_eval_every,
        adam_patience=args.adam_patience,
        adam_lr=args.adam_lr,
        train_prompts=not args.no_train_prompts,
        threads=args.threads,
    )
    from ruvdllm.loop_b_trainer import trainer_for

    trainer = trainer_for(directory, config, say=print)

    model = open_model(directory, verify="sizes")
    start = starting_bank(model, args.bank, args.seed)
    rng = np.random.default_rng(args.seed)
    split = {name: domain_split(path) for name, path in zip(names, domain_paths, strict=True)}
    plen, alen = args.prompt_tokens, args.answer_tokens
    work = {name: passages(model, tr, args.prompts, plen, alen, rng) for name, (tr, _) in split.items()}
    held = {
        name: probes(model, passages(model, ho, args.held_out, plen, alen, rng), args.seed + 1)
        for name, (_, ho) in split.items()
    }
    print(
        f"model {directory.name}; domains {names} ({', '.join(f'{n}: {len(split[n][0])} train / {len(split[n][1])} held-out texts' for n in names)}); "
        f"{args.prompts} requests of {plen} + {alen} tokens; {args.held_out} held-out passages per domain"
    )
    steps = (
        f"Adam {config.adam_epochs:g} epochs (at most {config.adam_steps} steps), lr {config.adam_lr:g}, "
        f"early stopping every {config.adam_eval_every} steps (patience {config.adam_patience})"
        if trainer is not None
        else f"SPSA steps {config.steps}, lr {config.lr}, epsilon {config.epsilon}"
    )
    print(
        f"loop B: {steps}, rank {config.rank}, layers {config.layers or 'all'}, batch {config.batch}, "
        f"clusters {config.clusters}, prompts {'trained too' if config.train_prompts else 'not trained'}"
    )
    figures: dict = {
        "model": directory.name,
        "domains": names,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    loop_c = (
        None
        if args.no_consolidate
        else LoopCConfig(enabled=True, ewc_lambda=args.ewc_lambda, seed=args.seed, fold_into=args.fold_into)
    )
    demo = Demo(directory, start, work, held, config, loop_c, alen, scratch, not args.no_fisher, trainer)
    figures["single"] = one_user(demo, args.domain)
    if not args.no_federate:
        figures["federation"] = devices_through_a_hub(demo, args.devices or names)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
