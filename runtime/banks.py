"""Adapter banks on disk: the TALoRA group adapters, the DGR adapters and the DGR patterns
(docs/sampling.md §7-8). Standard library only, so Pyodide reads the same directory.

Format (a directory, `format` 1):

    bank.json
        {"format": 1, "layers": L, "hidden_size": H, "rank": r, "slots": K,
         "targets": {"q_proj": [in, out], ...},
         "timestep_groups": [0.0, 0.333.., 0.666.., 1.0], "group_names": ["fine", "domain", "coarse"],
         "talora": {"interpolation": "linear", "width": 0.1, "temperature": 0.05},
         "router": null | {"weights": [[w_t, w_sin, w_cos], ...G], "bias": [...G]},
         "adapters": [{"name": "fine", "slot": 0}, ...],
         "patterns": {"count": N, "slots": [slot per pattern]}}
    adapters/<name>/<target>.a.f32   a factor [L, in, r]    raw float32, little-endian, C order
    adapters/<name>/<target>.b.f32   b factor [L, r, out]   LoRA scale folded in
    patterns.f32                     DGR pattern keys [N, H] (L2-normalised hidden states); keys past N
                                     are an unfinished update's and are ignored
    patterns.hnsw                    hnswlib's saved index over patterns.f32 (a cache: rebuilt if absent)

Factors are in the bank layout of runtime/artifact.py (a = Aᵀ, b = s·Bᵀ of a PEFT LoRA, stacked
over layers); `targets` gives each linear's (in_features, out_features).

Slots [0, G) are the TALoRA groups, [G, K) the DGR adapters; a slot without an adapter is zero.
The graph takes all slots at once: adapter.{target}.a = [L, in, K·r] with slot k in columns
k·r .. (k+1)·r − 1, and adapter.{target}.b = [L, K·r, out] likewise in rows (`assemble`).

A bank inside a model directory (its banks/) is covered by the model's manifest: edit a copy and
pass that with `--bank`, or re-run write_manifest after changing it.

Writers of one bank (loop B, loop C, a federation merge) exclude each other with an exclusive lock
on `<bank>.lock` beside the directory (`bank_lock`) and read the bank again once they hold it; `save`
takes no lock of its own (an exporter writing a model's banks/ leaves no lock file in the model), so
a writer that may meet another holds the lock around it. Readers take no lock: every writer switches from one whole bank to the next atomically.
`save` replaces the whole directory (`<bank>.new` written and fsynced, the old one renamed aside to
`<bank>.old`, the new one renamed in, the old one deleted); a crash between the two renames leaves no
`<bank>` but both halves, and `recover` (called by `load` and `save`) finishes the switch.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import threading
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from runtime.artifact import ArtifactConfig, Features, bank_factor_shapes, linear_features
from runtime.talora import Router, TaloraConfig, group_names
from ruvdllm.errors import RuvdllmError

BANK_FORMAT = 1
BANKS_DIR = "banks"  # a model directory's own bank, loaded by default
BANK_JSON = "bank.json"
TRAINING_JSON = "training.json"  # beside bank.json: how the bank was trained (`ruvdllm train-banks`)
PATTERNS_F32 = "patterns.f32"
PATTERNS_HNSW = "patterns.hnsw"
RETIRED = -1  # the slot of a DGR key whose adapter loop C folded into its group: retrieval skips it
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def sibling(directory: Path, suffix: str) -> Path:
    """`<bank><suffix>` beside the bank directory (its lock, its halves during `save`)."""
    directory = Path(directory)
    return directory.with_name(directory.name + suffix)


_held: dict[str, list] = {}  # lock path -> [RLock, depth, open file]: re-entrant in a process
_held_guard = threading.Lock()


@contextmanager
def bank_lock(directory: Path) -> Iterator[None]:
    """Hold the bank's writer lock (blocking): a POSIX advisory lock on `<bank>.lock` beside it,
    re-entrant within a thread (a writer that holds it may load, and so recover, the bank), and
    exclusive between threads and processes. Where fcntl is missing (Windows, Pyodide) only the
    threads of this process are excluded."""
    path = os.path.abspath(sibling(directory, ".lock"))
    with _held_guard:
        entry = _held.setdefault(path, [threading.RLock(), 0, None])
    with entry[0]:
        if entry[1] == 0:
            entry[2] = _lock_file(Path(path))
        entry[1] += 1
        try:
            yield
        finally:
            entry[1] -= 1
            if entry[1] == 0 and entry[2] is not None:
                import fcntl

                fcntl.flock(entry[2], fcntl.LOCK_UN)
                entry[2].close()
                entry[2] = None


def _lock_file(path: Path):
    """The lock file, opened and flocked; None where fcntl is missing."""
    try:
        import fcntl
    except ImportError:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+b")  # noqa: SIM115 - held open until the outermost release
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def fsync_path(path: Path) -> None:
    """Flush a file, or make renames inside a directory durable (no-op where a directory cannot be
    opened, as on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def recover(directory: Path) -> None:
    """Finish or undo a `save` a crash interrupted (module docstring). Takes the writer lock only
    when there is something to do, so that it never races a save in progress."""
    directory = Path(directory)
    new, old = sibling(directory, ".new"), sibling(directory, ".old")
    if not (new.exists() or old.exists()):
        return
    with bank_lock(directory):
        if (directory / BANK_JSON).is_file():  # the switch happened: what is left is garbage
            shutil.rmtree(new, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
            return
        # No bank: the crash came between "old aside" and "new in". The new half is whole (its
        # bank.json is written last and fsynced before either rename); else put the old one back.
        half = new if (new / BANK_JSON).is_file() else old
        if half.exists():
            if directory.exists():
                shutil.rmtree(directory)  # an empty or partial directory in the way
            os.replace(half, directory)
            fsync_path(directory.parent)
        shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def read_f32(path: Path, count: int, prefix: bool = False) -> array:
    """`count` little-endian float32 values from a raw file, checked for size; `prefix`: the
    first `count` of a file that may hold more."""
    data = array("f")
    raw = path.read_bytes()
    if prefix and len(raw) > 4 * count:
        raw = raw[: 4 * count]
    if len(raw) != 4 * count:
        raise RuvdllmError(f"{path}: {len(raw)} bytes, expected {4 * count} ({count} float32)")
    data.frombytes(raw)
    if sys.byteorder == "big":
        data.byteswap()
    return data


def write_f32(path: Path, values: array) -> None:
    if sys.byteorder == "big":
        values = array("f", values)
        values.byteswap()
    path.write_bytes(values.tobytes())


def as_f32(values) -> array:
    """A flat float32 array from a list, an array or anything with .tobytes() of float32."""
    if isinstance(values, array) and values.typecode == "f":
        return values
    if hasattr(values, "dtype") and hasattr(values, "tobytes"):  # numpy, without importing it
        out = array("f")
        out.frombytes(values.astype("<f4").tobytes())
        return out
    return array("f", values)


@dataclass
class Adapter:
    name: str
    slot: int
    factors: dict[str, tuple[array, array]]  # target -> (a [L·in·r], b [L·r·out]) flat float32


@dataclass
class Bank:
    layers: int
    hidden_size: int
    rank: int
    slots: int
    targets: dict[str, Features]  # target linear -> (in_features, out_features)
    timestep_groups: tuple[float, ...] = (0.0, 1 / 3, 2 / 3, 1.0)
    talora: dict = field(
        default_factory=lambda: {"interpolation": "linear", "width": 0.1, "temperature": 0.05}
    )
    router: Router | None = None
    adapters: dict[str, Adapter] = field(default_factory=dict)
    pattern_vectors: array = field(default_factory=lambda: array("f"))  # [N·H]
    pattern_slots: list[int] = field(default_factory=list)

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def for_model(cls, config: ArtifactConfig, shapes: dict[str, Features] | None = None) -> Bank:
        """An empty bank shaped for the model (every slot zero). `shapes` gives (in, out) per
        target when known from the graph; otherwise they follow from the architecture."""
        in_out = shapes or _target_shapes(config)
        missing = [t for t in config.adapter_targets if t not in in_out]
        if missing:
            raise RuvdllmError(f"adapter targets {missing}: their shapes are unknown for this model")
        return cls(
            layers=config.num_layers,
            hidden_size=config.hidden_size,
            rank=config.adapter_rank,
            slots=config.adapter_slots,
            targets={t: in_out[t] for t in config.adapter_targets},
            timestep_groups=tuple(config.timestep_groups),
        )

    @property
    def groups(self) -> int:
        return len(self.timestep_groups) - 1

    def add_adapter(self, name: str, slot: int, factors: dict[str, tuple]) -> Adapter:
        """Put an adapter into `slot` (replacing the one there); factors per target as flat or
        nested float32 data of a [L, in, r] and b [L, r, out]."""
        if not _NAME.match(name):
            raise RuvdllmError(f"adapter name {name!r}: use letters, digits, '_', '.', '-'")
        if not 0 <= slot < self.slots:
            raise RuvdllmError(f"adapter {name}: slot {slot} outside 0..{self.slots - 1}")
        if set(factors) != set(self.targets):
            raise RuvdllmError(
                f"adapter {name}: targets {sorted(factors)}, the bank has {sorted(self.targets)}"
            )
        flat = {}
        for target, (a, b) in factors.items():
            a, b = as_f32(_flatten(a)), as_f32(_flatten(b))
            a_shape, b_shape = bank_factor_shapes(self.targets[target], self.layers, self.rank)
            if len(a) != math.prod(a_shape) or len(b) != math.prod(b_shape):
                raise RuvdllmError(
                    f"adapter {name}: {target} factors of {len(a)}/{len(b)} values, expected "
                    f"A {list(a_shape)} and B {list(b_shape)}"
                )
            flat[target] = (a, b)
        for other in [n for n, a in self.adapters.items() if a.slot == slot]:
            del self.adapters[other]
        adapter = Adapter(name, slot, flat)
        self.adapters[name] = adapter
        return adapter

    def remove_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise RuvdllmError(f"adapter {name!r}: not in the bank")
        del self.adapters[name]

    def add_patterns(self, vectors: Sequence[Sequence[float]], slots: Sequence[int]) -> None:
        """Add DGR pattern keys ([N][H]) pointing at DGR slots [G, K)."""
        for vector, slot in zip(vectors, slots, strict=True):
            if len(vector) != self.hidden_size:
                raise RuvdllmError(
                    f"pattern of size {len(vector)}: the bank's hidden size is {self.hidden_size}"
                )
            if not self.groups <= slot < self.slots:
                raise RuvdllmError(f"pattern slot {slot}: DGR slots are {self.groups}..{self.slots - 1}")
            self.pattern_vectors.extend(as_f32(vector))
            self.pattern_slots.append(int(slot))

    def pattern(self, i: int) -> array:
        return self.pattern_vectors[i * self.hidden_size : (i + 1) * self.hidden_size]

    # --- what the runtime uses ----------------------------------------------------------------

    def talora_config(self, **overrides) -> TaloraConfig:
        settings = {**self.talora, **overrides}
        return TaloraConfig(boundaries=self.timestep_groups, router=self.router, **settings)

    def check_model(self, config: ArtifactConfig, where: str = "bank", shapes: dict | None = None) -> None:
        """Raise unless the bank's shapes are the model's."""
        expected = Bank.for_model(config, shapes)
        for name in ("layers", "hidden_size", "rank", "slots", "targets"):
            mine, theirs = getattr(self, name), getattr(expected, name)
            if mine != theirs:
                raise RuvdllmError(f"{where}: {name} {mine} does not match the model's {theirs}")
        if self.groups > self.slots:
            raise RuvdllmError(f"{where}: {self.groups} timestep groups but only {self.slots} adapter slots")

    def assemble(self, target: str) -> tuple[array, array]:
        """The graph's adapter.{target}.a [L, in, K·r] and .b [L, K·r, out], flat (pure Python;
        the CPython backend does the same with numpy)."""
        fan_in, fan_out = self.targets[target]
        r, k_r = self.rank, self.slots * self.rank
        a = array("f", bytes(4 * self.layers * fan_in * k_r))
        b = array("f", bytes(4 * self.layers * k_r * fan_out))
        for adapter in self.adapters.values():
            fa, fb = adapter.factors[target]
            col = adapter.slot * r
            for row in range(self.layers * fan_in):  # A: each (layer, in) row gets r columns
                a[row * k_r + col : row * k_r + col + r] = fa[row * r : (row + 1) * r]
            for layer in range(self.layers):  # B: r consecutive rows of `out` per layer
                dst = (layer * k_r + col) * fan_out
                src = layer * r * fan_out
                b[dst : dst + r * fan_out] = fb[src : src + r * fan_out]
        return a, b

    # --- persistence --------------------------------------------------------------------------

    def save(self, directory: Path, index=None) -> None:
        """Write the bank, replacing the directory and everything in it, atomically (module
        docstring); `index` (an HnswIndex over the patterns) is saved beside it when given."""
        directory = Path(directory)
        recover(directory)
        staging, aside = sibling(directory, ".new"), sibling(directory, ".old")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        written = []
        for adapter in self.adapters.values():
            folder = staging / "adapters" / adapter.name
            folder.mkdir(parents=True)
            for target, (a, b) in adapter.factors.items():
                write_f32(folder / f"{target}.a.f32", a)
                write_f32(folder / f"{target}.b.f32", b)
                written += [folder / f"{target}.a.f32", folder / f"{target}.b.f32"]
        write_f32(staging / PATTERNS_F32, self.pattern_vectors)
        if index is not None and hasattr(index, "save"):
            index.save(staging / PATTERNS_HNSW)
        (staging / BANK_JSON).write_text(json.dumps(self._meta(), indent=2))  # last: "whole"
        for path in [*written, staging / PATTERNS_F32, staging / BANK_JSON]:
            fsync_path(path)
        for folder in [*{p.parent for p in written}, staging / "adapters", staging]:
            fsync_path(folder)
        if directory.exists():
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(directory, aside)
            fsync_path(directory.parent)
        os.replace(staging, directory)  # from here on the new bank
        fsync_path(directory.parent)
        shutil.rmtree(aside, ignore_errors=True)

    def _meta(self) -> dict:
        return {
            "format": BANK_FORMAT,
            "layers": self.layers,
            "hidden_size": self.hidden_size,
            "rank": self.rank,
            "slots": self.slots,
            "targets": {t: list(shape) for t, shape in self.targets.items()},
            "timestep_groups": list(self.timestep_groups),
            "group_names": list(group_names(self.groups)),
            "talora": self.talora,
            "router": None
            if self.router is None
            else {"weights": [list(w) for w in self.router.weights], "bias": list(self.router.bias)},
            "adapters": [
                {"name": a.name, "slot": a.slot} for a in sorted(self.adapters.values(), key=lambda a: a.slot)
            ],
            "patterns": {"count": len(self.pattern_slots), "slots": self.pattern_slots},
        }

    @classmethod
    def load(cls, directory: Path) -> Bank:
        directory = Path(directory)
        recover(directory)
        meta_path = directory / BANK_JSON
        if not meta_path.is_file():
            raise RuvdllmError(f"{directory}: not an adapter bank (no {BANK_JSON})")
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != BANK_FORMAT:
                raise RuvdllmError(f"{meta_path}: bank format {meta.get('format')!r} is not {BANK_FORMAT}")
            router = meta.get("router")
            bank = cls(
                layers=int(meta["layers"]),
                hidden_size=int(meta["hidden_size"]),
                rank=int(meta["rank"]),
                slots=int(meta["slots"]),
                targets={t: Features(int(s[0]), int(s[1])) for t, s in meta["targets"].items()},
                timestep_groups=tuple(float(x) for x in meta["timestep_groups"]),
                talora=dict(meta.get("talora", {})),
                router=None
                if router is None
                else Router(tuple(tuple(w) for w in router["weights"]), tuple(router["bias"])),
            )
            entries = meta["adapters"]
            pattern_slots = [int(s) for s in meta["patterns"]["slots"]]
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise RuvdllmError(
                f"{meta_path}: malformed bank description ({type(exc).__name__}: {exc})"
            ) from None
        for entry in entries:
            factors = {}
            for target, (fan_in, fan_out) in bank.targets.items():
                folder = directory / "adapters" / entry["name"]
                a = _read_factor(folder / f"{target}.a.f32", bank.layers * fan_in * bank.rank)
                b = _read_factor(folder / f"{target}.b.f32", bank.layers * bank.rank * fan_out)
                factors[target] = (a, b)
            bank.add_adapter(entry["name"], int(entry["slot"]), factors)
        # Keys are only ever appended, and bank.json is written last (runtime/learning/bank_update.py):
        # keys past its count are an update that did not finish, and the bank is the one before it.
        vectors = read_f32(directory / PATTERNS_F32, len(pattern_slots) * bank.hidden_size, prefix=True)
        bank.pattern_vectors = vectors
        bank.pattern_slots = pattern_slots
        return bank

    def build_index(self, directory: Path | None = None, exact: bool = False):
        """The pattern index: hnswlib (loaded from patterns.hnsw when saved, else built) or the
        exact standard-library search."""
        from runtime.index import HnswIndex, make_index

        index = make_index(self.hidden_size, exact=exact)
        saved = None if directory is None else Path(directory) / PATTERNS_HNSW
        if isinstance(index, HnswIndex) and saved is not None and saved.is_file():
            try:
                return HnswIndex.load(saved, self.hidden_size, self.pattern_slots)
            except (RuntimeError, ValueError):
                pass  # stale or foreign cache: rebuild below
        vectors = [self.pattern(i) for i in range(len(self.pattern_slots))]
        index.add(vectors, self.pattern_slots)
        return index


def _read_factor(path: Path, count: int) -> array:
    if not path.is_file():
        raise RuvdllmError(f"{path}: adapter factor listed in bank.json is missing")
    return read_f32(path, count)


def _flatten(values):
    if isinstance(values, array) or hasattr(values, "dtype"):
        return values
    out = []
    stack = [values]
    while stack:  # depth-first, preserving C order
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def _target_shapes(config: ArtifactConfig) -> dict[str, Features]:
    """(in, out) features of each linear the adapters may target, from the architecture."""
    intermediate = config.source.get("intermediate_size") if isinstance(config.source, dict) else None
    return linear_features(
        config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim, intermediate
    )
