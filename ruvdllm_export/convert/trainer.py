"""The conversion training loop: gradient accumulation, a progress bar with loss and tokens/s,
checkpoints every few minutes (atomic, resumable), held-out evaluation and the best adapter kept,
deterministic under a seed — the same seed gives the same adapter, interrupted or not — and
data-parallel under `torchrun` (one process per GPU, gradients averaged).

Determinism: micro-batch m (counted over all ranks) reads rows m·B .. m·B+B-1 of a per-epoch
permutation seeded by (seed, epoch) and draws its masks from a generator seeded by (seed, m), so
a resumed run repeats exactly the batches and masks an uninterrupted one would have seen.

Run directory:
    checkpoint.pt        LoRA, optimizer, scheduler, step, tokens seen, history (torch.save)
    adapter.safetensors  the latest adapter (adapter_file.py)
    best.safetensors     the adapter with the lowest held-out masked-token NLL so far
    log.jsonl            one line per logged step / evaluation (the training curve); a resumed
                         run first cuts it back to the checkpoint, so no step appears twice

Warm start (`warm_start`): a new run may begin from an adapter file's factors (the committed
adapter, say) with a fresh optimizer; the tokens that adapter had seen carry into the new run's
adapter files, so the curve continues where the adapter's own left off.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from ruvdllm.errors import RuvdllmError
from ruvdllm_export.convert.adapter_file import check_warm_start, read_adapter, write_adapter
from ruvdllm_export.convert.allocator import use_lean_allocator
from ruvdllm_export.convert.annealing import anneal_progress
from ruvdllm_export.convert.curve import LOG
from ruvdllm_export.convert.evaluation import certainty_metrics, evaluate  # evaluate: also the benchmarks'
from ruvdllm_export.convert.memory import DEFAULT_BUDGET_GB, MemoryEstimate, estimate_memory
from ruvdllm_export.convert.objectives import (
    LossResult,
    ObjectiveConfig,
    check_certainty_weight,
    check_teacher_weight,
    diffusion_loss,
)
from ruvdllm_export.reference import (
    LoraConfig,
    load_lora_state_dict,
    lora_parameters,
    lora_state_dict,
    widened_lora_state,
)
from ruvdllm_export.reference.model import DiffusionLM

CHECKPOINT = "checkpoint.pt"
ADAPTER = "adapter.safetensors"
BEST = "best.safetensors"
PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: not one of {PRECISIONS}")


@dataclass(frozen=True)
class TrainConfig:
    """The conversion training loop's knobs: `ruvdllm convert`'s flags take their defaults from
    here, and a run saved before a field existed resumes with its default (so a changed default
    changes such runs too)."""

    seq_len: int = 128  # CPU default; 512-2048 on a GPU
    batch_size: int = 1  # rows per micro-batch per process: fits any CPU; raise it on a GPU
    grad_accum: int = 8  # micro-batches per optimizer step: 8 x 128 tokens per step on one CPU
    lr: float = 3e-4  # LoRA on a frozen base tolerates larger steps than full fine-tuning
    weight_decay: float = 0.0  # LoRA factors are small already; decay only slows a short run
    warmup_steps: int = 10  # a few steps of warm-up keep Adam's first updates from overshooting
    max_steps: int = 1000  # ~1M tokens at 8 x 128 per step; the shipped run's NLL flattened after ~0.5M
    anneal_steps: int = 50  # DiffuLLaMA-style causal -> diffusion attention annealing, in steps
    eval_every: int = 25  # steps between held-out evaluations: often enough to keep the best adapter
    eval_rows: int = 8  # held-out rows per evaluation (fixed masks): a steady number for a few forwards
    checkpoint_minutes: float = 3.0  # at most this much work is lost to a crash
    checkpoint_steps: int = 0  # also every N steps (0 = time only); tests use steps
    seed: int = 0  # data order, masks, annealing, LoRA init
    gradient_checkpointing: bool = False  # recompute layers in backward: ~1/layers the memory, ~+30% time
    memory_gb: float = DEFAULT_BUDGET_GB  # refuse a micro-batch whose estimate exceeds this (CPU)
    lean_memory: bool = False  # the lean allocator even when the run fits without it (allocator.py)
    log_every: int = 1  # steps between log lines: every step, the log is the training curve
    precision: str = "fp32"  # the exact 4-bit base; "bf16" caches it in bfloat16 (~4x on CPU, within 2^-9)
    teacher_weight: float = 0.0  # AR soft targets' share of the loss (objectives.py); 0: labels only
    certainty_weight: float = 0.0  # dParallel's entropy on correct targets; 0 until it measures better
    max_minutes: float = 0.0  # stop (evaluate, save) after this long in one process; 0: no limit

    def __post_init__(self) -> None:
        if self.seq_len < 2 or min(self.batch_size, self.grad_accum, self.max_steps) < 1:
            raise ValueError("seq_len must be >= 2 and batch_size, grad_accum, max_steps >= 1")
        if self.max_minutes < 0:
            raise ValueError(f"max_minutes {self.max_minutes}: must be >= 0")
        check_precision(self.precision)
        check_teacher_weight(self.teacher_weight)
        check_certainty_weight(self.certainty_weight)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    tokens: int = 0  # training tokens consumed (rows x seq_len, over all ranks)
    best_nll: float = math.inf
    history: list[dict] = field(default_factory=list)
    warm_start: dict | None = None  # the adapter file this run started from: name, sha256, tokens


def precision_autocast(precision: str, device_type: str = "cpu"):
    """bfloat16 autocast for precision "bf16" (the base's weights cached in bfloat16 to match),
    a no-op context for "fp32"."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


def distributed() -> tuple[int, int]:
    """(rank, world size): torchrun sets WORLD_SIZE/RANK; a plain run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank() if world > 1 else 0), world


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def memory_estimate(
    spec, config: TrainConfig, objective: ObjectiveConfig, lora: LoraConfig
) -> MemoryEstimate:
    """The run's memory estimate (convert/memory.py) from the spec alone: known before any weight
    is read, so a run that cannot fit is refused before a long load."""
    copies = (
        1 + (2 if objective.complementary else 1)
        if objective.objective == "bd3lm"
        else (2 if objective.complementary else 1)
    )
    positions = copies * config.seq_len if objective.objective == "bd3lm" else config.seq_len
    batch = config.batch_size if objective.objective == "bd3lm" else config.batch_size * copies
    return estimate_memory(
        spec,
        batch=batch,
        positions=positions,
        targets=config.seq_len * 2,
        checkpointing=config.gradient_checkpointing,
        rank=lora.rank,
        lora_targets=tuple(lora.targets),
        precision=config.precision,
        certainty=config.certainty_weight > 0,
    )


def memory_plan(estimate: MemoryEstimate, config: TrainConfig, device: torch.device) -> bool:
    """Whether the run needs the lean allocator (convert/allocator.py) to fit its budget —
    --memory-gb on CPU, the device's memory on CUDA — or was asked for it (--lean-memory); a run
    that does not fit even so is refused in one line."""
    if device.type == "cuda":
        budget = torch.cuda.get_device_properties(device).total_memory
        where = f"{torch.cuda.get_device_name(device)}"
        if estimate.total > budget:  # device memory: torch's caching allocator, not malloc
            raise _refusal(estimate, config, estimate.total, budget, where)
        return config.lean_memory
    budget, where = int(config.memory_gb * 2**30), f"--memory-gb {config.memory_gb:g}"
    if estimate.total <= budget:
        return config.lean_memory
    if estimate.lean_total <= budget:
        return True
    raise _refusal(estimate, config, estimate.lean_total, budget, where)


def _refusal(
    estimate: MemoryEstimate, config: TrainConfig, need: int, budget: int, where: str
) -> RuvdllmError:
    hint = "lower --batch-size and raise --grad-accum"
    if not config.gradient_checkpointing:
        hint += ", or add --gradient-checkpointing"
    return RuvdllmError(
        f"batch {config.batch_size} x {config.seq_len} tokens: needs about {need / 2**30:.1f} GB "
        f"({estimate.describe()}), more than {budget / 2**30:.1f} GB ({where}); {hint}"
    )


def apply_memory_plan(estimate: MemoryEstimate, config: TrainConfig, device: torch.device) -> str | None:
    """memory_plan, acted on: the lean allocator turned on when needed; returns a line saying so
    (None when the default allocator fits)."""
    if not memory_plan(estimate, config, device):
        return None
    if not use_lean_allocator():
        return "memory: --lean-memory needs glibc's malloc (Linux); running with the default allocator"
    gb = 2**30
    return (
        f"memory: lean allocator (freed tensors unmapped at once: bound {estimate.lean_total / gb:.2f} GB "
        f"instead of {estimate.total / gb:.2f}; steps up to ~20% slower)"
    )


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's row permutation, built once per epoch (per micro-batch it cost more than a GPU step)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def _rows(data: torch.Tensor, micro: int, batch: int, seed: int) -> torch.Tensor:
    n = data.shape[0]
    picks = []
    for flat in range(micro * batch, micro * batch + batch):
        epoch, index = divmod(flat, n)
        picks.append(int(_epoch_order(n, seed, epoch)[index]))
    return data[picks]


def _generator(seed: int, micro: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 7_919 + micro) % 2**63)


class Trainer:
    """Trains the LoRA already attached to `model` (reference.apply_lora) on `train` rows."""

    def __init__(
        self,
        model: DiffusionLM,
        lora: LoraConfig,
        objective: ObjectiveConfig,
        config: TrainConfig,
        train: torch.Tensor,
        held_out: torch.Tensor | None,
        run_dir: Path,
        base: dict,
        progress: bool = True,
    ):
        self.model, self.lora, self.objective, self.config = model, lora, objective, config
        self.train, self.held_out = train, held_out
        self.run_dir, self.base, self.progress = Path(run_dir), base, progress
        self.rank, self.world = distributed()
        self.device = pick_device()
        model.to(self.device)
        model.gradient_checkpointing = config.gradient_checkpointing
        if config.precision == "bf16":
            # LoRA factors, gradients and Adam stay float32; only the frozen base and the
            # activations run in bfloat16.
            model.cache_dequantized(True, torch.bfloat16)
        apply_memory_plan(memory_estimate(model.spec, config, objective, lora), config, self.device)
        self.params = lora_parameters(model)
        if not self.params:
            raise RuvdllmError("the model has no LoRA attached: nothing to train")
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.state = TrainState()

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up, then cosine decay to a tenth at max_steps."""
        c = self.config
        if step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        span = max(1, c.max_steps - c.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - c.warmup_steps) / span)))

    # --- checkpoints ---------------------------------------------------------------------

    def _identity(self) -> dict:
        c = self.config
        return {
            "base": self.base,
            "lora": self.lora.to_dict(),
            "objective": asdict(self.objective),
            "data": {
                "seq_len": c.seq_len,
                "batch_size": c.batch_size,
                "grad_accum": c.grad_accum,
                "seed": c.seed,
                "world": self.world,
                "rows": int(self.train.shape[0]),
            },
        }

    def save(self) -> None:
        if self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "identity": self._identity(),
            "config": self.config.to_dict(),
            "lora_state": lora_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": asdict(self.state),
        }
        staging = self.run_dir / f".{CHECKPOINT}.partial"
        torch.save(payload, staging)
        staging.replace(self.run_dir / CHECKPOINT)
        self._write_adapter(self.run_dir / ADAPTER)

    def _write_adapter(self, path: Path, metrics: dict | None = None) -> None:
        factors = {k: v.float().cpu().numpy() for k, v in lora_state_dict(self.model).items()}
        warm = self.state.warm_start
        training = {
            **asdict(self.objective),
            "mask_token_id": self.model.mask_token_id,
            "steps": self.state.step,
            # every token the factors have learnt from, a warm start's included
            "tokens": self.state.tokens + (warm["tokens"] if warm else 0),
            "run_tokens": self.state.tokens,
            "seq_len": self.config.seq_len,
            "teacher_weight": self.config.teacher_weight,
            "certainty_weight": self.config.certainty_weight,
            **({"warm_start": warm} if warm else {}),
            **(metrics or {}),
        }
        write_adapter(path, factors, self.lora.to_dict(), training, self.base)

    def warm_start(self, path: Path) -> None:
        """Start a new run from an adapter file's factors (a fresh optimizer and schedule): the
        file must be for this base and these targets, at this run's rank or lower (widened: the
        same update, with room to learn more)."""
        if self.state.step:
            raise RuvdllmError(
                f"{path}: a warm start begins a new run; this one is at step {self.state.step}"
            )
        adapter = read_adapter(path)
        check_warm_start(path, adapter, self.lora.to_dict(), self.base)
        factors = {k: torch.from_numpy(v) for k, v in adapter.factors.items()}
        rescale = adapter.scaling / (self.lora.alpha / self.lora.rank)  # 1 at equal rank and alpha
        load_lora_state_dict(self.model, widened_lora_state(factors, lora_state_dict(self.model), rescale))
        rank = int(adapter.lora["rank"])
        self.state.warm_start = {
            "file": Path(path).name,
            "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            "tokens": int(adapter.training.get("tokens", 0)),
            **({"rank": rank} if rank != self.lora.rank else {}),
        }

    def resume(self) -> None:
        """Continue from run_dir's checkpoint; a checkpoint of another model, adapter shape,
        objective or data layout is refused (its optimizer state would be meaningless)."""
        path = self.run_dir / CHECKPOINT
        if not path.is_file():
            raise RuvdllmError(f"{path}: no checkpoint to resume from")
        try:
            payload = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as exc:  # torch.load raises many types for a truncated or foreign file
            raise RuvdllmError(f"{path}: cannot read the checkpoint ({exc})") from None
        saved, ours = dict(payload["identity"]), self._identity()
        # Fields added to ObjectiveConfig since the checkpoint was written take their defaults.
        saved["objective"] = {**asdict(ObjectiveConfig()), **saved.get("objective", {})}
        for key in ours:
            if saved.get(key) != ours[key]:
                raise RuvdllmError(
                    f"{path}: was trained with a different {key} ({saved.get(key)} vs {ours[key]}); "
                    "use a new --run-dir"
                )
        load_lora_state_dict(self.model, payload["lora_state"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.state = TrainState(**payload["state"])
        self._rewrite_log()

    def _rewrite_log(self) -> None:
        """Cut the log back to the checkpoint's history: a run stopped between checkpoints logged
        steps that the resumed run repeats, and the curve must hold each step once."""
        if self.rank != 0:
            return
        staging = self.run_dir / f".{LOG}.partial"
        staging.write_text("".join(json.dumps(record) + "\n" for record in self.state.history))
        staging.replace(self.run_dir / LOG)

    def _log(self, record: dict) -> None:
        self.state.history.append(record)
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / LOG, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    # --- the loop ------------------------------------------------------------------------

    def evaluate(self) -> dict | None:
        if self.held_out is None:
            return None
        self.model.eval()
        with precision_autocast(self.config.precision, self.device.type):
            metrics = evaluate(
                self.model, self.held_out.to(self.device), self.objective, self.config.eval_rows
            )
        self._log({"step": self.state.step, "tokens": self.state.tokens, "eval": metrics})
        if metrics["masked_nll"] < self.state.best_nll and self.rank == 0:
            self.state.best_nll = metrics["masked_nll"]
            self._write_adapter(self.run_dir / BEST, {"heldout_masked_nll": metrics["masked_nll"]})
        return metrics

    def step(self) -> dict:
        """One optimizer step: grad_accum micro-batches per process, gradients averaged."""
        c = self.config
        self.model.train()
        progress = anneal_progress(self.state.step, c.anneal_steps)
        results: list[LossResult] = []
        for a in range(c.grad_accum):
            micro = (self.state.step * c.grad_accum + a) * self.world + self.rank
            batch = _rows(self.train, micro, c.batch_size, c.seed).to(self.device)
            with precision_autocast(c.precision, self.device.type):
                result = diffusion_loss(
                    self.model,
                    batch,
                    self.objective,
                    _generator(c.seed, micro),
                    progress,
                    teacher_weight=c.teacher_weight,
                    certainty_weight=c.certainty_weight,
                )
            (result.loss / c.grad_accum).backward()
            result.loss = result.loss.detach()
            results.append(result)
        if self.world > 1:
            # DDP's hooks fire on forward(); the objective calls model.backbone, so the (small)
            # LoRA gradients are averaged by hand instead.
            for p in self.params:
                dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens += c.grad_accum * c.batch_size * c.seq_len * self.world
        count = sum(r.count for r in results)
        metrics = certainty_metrics(results)
        return {
            "loss": sum(float(r.loss) for r in results) / c.grad_accum,
            "masked_nll": sum(r.nll for r in results) / max(count, 1),
            "certainty": sum(r.certainty for r in results) / c.grad_accum,
            "accuracy": metrics["accuracy"],
            "correct_entropy": metrics["correct_entropy"],
            "anneal": progress,
        }

    def _out_of_time(self, started: float) -> bool:
        """max_minutes passed, as rank 0 sees it (every rank must stop at the same step, or the
        others would wait for its gradients forever)."""
        if not self.config.max_minutes:
            return False
        late = torch.tensor(float((time.monotonic() - started) / 60 >= self.config.max_minutes))
        if self.world > 1:
            late = late.to(self.device)
            dist.broadcast(late, src=0)
        return bool(late)

    def fit(self, on_step: Callable[[int], None] | None = None) -> TrainState:
        """Train to max_steps, or until max_minutes have passed. Ctrl-C or SIGTERM saves a checkpoint
        before leaving; a harder stop loses at most one checkpoint interval. `on_step(step)` runs
        after every optimizer step."""
        from tqdm import tqdm

        c = self.config
        bar = tqdm(
            total=c.max_steps,
            initial=self.state.step,
            disable=not self.progress or self.rank != 0,
            unit="step",
            dynamic_ncols=True,
        )
        if self.state.step == 0 and not self.state.history:
            self.evaluate()  # the unconverted model: the baseline every later evaluation is read against
        last_save, started, start_tokens = time.monotonic(), time.monotonic(), self.state.tokens
        with terminate_as_interrupt():
            try:
                while self.state.step < c.max_steps:
                    metrics = self.step()
                    rate = (self.state.tokens - start_tokens) / max(time.monotonic() - started, 1e-9)
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{metrics['loss']:.3f}", nll=f"{metrics['masked_nll']:.3f}", tok_s=f"{rate:.0f}"
                    )
                    if self.state.step % c.log_every == 0:
                        self._log(
                            {
                                "step": self.state.step,
                                "tokens": self.state.tokens,
                                "time": time.time(),
                                "tokens_per_s": rate,
                                **metrics,
                            }
                        )
                    if c.eval_every and self.state.step % c.eval_every == 0:
                        self.evaluate()
                    due = (time.monotonic() - last_save) / 60 >= c.checkpoint_minutes
                    if due or (c.checkpoint_steps and self.state.step % c.checkpoint_steps == 0):
                        self.save()
                        last_save = time.monotonic()
                    if on_step is not None:
                        on_step(self.state.step)
                    if self._out_of_time(started):
                        break
            except KeyboardInterrupt:
                self.save()
                bar.close()
                raise
        bar.close()
        last_eval = next((r["step"] for r in reversed(self.state.history) if "eval" in r), None)
        if self.held_out is not None and last_eval != self.state.step:  # once per step, resumed or not
            self.evaluate()
        self.save()
        return self.state


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while training, so `kill` (and a scheduler's stop) saves a
    checkpoint as Ctrl-C does: a job started in the background by a non-interactive shell ignores
    SIGINT, and SIGTERM would otherwise end it without a save. Only the main thread can set a
    handler; elsewhere (a test's thread, a notebook's worker) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
