"""Command-line flags whose defaults are written once: in a config dataclass, beside their reason.

A `Flag` names a field (`seq_len` -> `--seq-len`, type from the default) and says what it is;
its default comes from the dataclass (or, for a knob no dataclass holds, from the command).

    TRAINING = (Flag("seq_len", "tokens per training row", TrainConfig), ...)
    add_flags(parser.add_argument_group("training"), TRAINING)       # --seq-len  (default: 128)
    resolve(args, TRAINING, PRESETS[args.preset])                     # given > preset > default

A flag parses to None unless it is given, so a command can tell "given now" from "not given"
and fill the rest from a named preset or a resumed run's saved arguments before the default.
A `Range` checks a numeric flag as argparse parses it (`Flag("lr", ..., TrainConfig, POSITIVE)`):
a rank of 0 or a NaN learning rate is refused in the first second, naming the flag, not met as
a traceback after minutes of loading.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

_UNSET = object()


@dataclass(frozen=True)
class Range:
    """Where a numeric flag's value may lie; NaN and infinity are never in range."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself refused (a learning rate: > 0, not >= 0)
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts) or "a finite number"

    def parser(self, kind: type) -> Callable[[str], Any]:
        """An argparse `type`: the text as `kind`, refused (with the range) when out of it."""

        def parse(text: str) -> Any:
            try:
                value = kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{text!r} is not {'an integer' if kind is int else 'a number'}"
                ) from None
            if not self.contains(value):
                raise argparse.ArgumentTypeError(f"{text} is out of range: must be {self.describe()}")
            return value

        parse.__name__ = kind.__name__  # argparse names the type in its own messages
        return parse


AT_LEAST_1 = Range(1)  # counts of steps, rows, ranks
NON_NEGATIVE = Range(0)  # 0 = off / no limit
POSITIVE = Range(0, low_open=True)  # learning rates, scales, budgets
FRACTION = Range(0, 1)
HELD_OUT_FRACTION = Range(0, 1, high_open=True)  # holding out everything leaves nothing to train
ANY_NUMBER = Range()  # finite: a seed


@dataclass(frozen=True)
class Flag:
    name: str  # the dataclass field and the args attribute; the flag is --name-with-dashes
    help: str
    config: type | None = None  # the dataclass whose field default this flag's default is
    default: Any = _UNSET  # the command's own default, for a knob no dataclass holds
    encode: Callable[[Any], Any] | None = None  # the default as the flag writes it (a tuple as "a,b")
    range: Range | None = None  # where a numeric value may lie, checked as it is parsed
    options: Mapping[str, Any] = field(default_factory=dict)  # more argparse keywords (choices, nargs)

    @property
    def value(self) -> Any:
        """The default, as the flag's parsed value would be."""
        if self.config is None:
            if self.default is _UNSET:
                raise ValueError(f"flag {self.name}: give a config dataclass or a default")
            return self.default
        value = field_default(self.config, self.name)
        return self.encode(value) if self.encode else value


def field_default(config: type, name: str) -> Any:
    for f in fields(config):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
            raise ValueError(f"{config.__name__}.{name} has no default")
    raise ValueError(f"{config.__name__} has no field {name!r}")


def add_flags(group, flags: Iterable[Flag]) -> None:
    """One argparse option per flag, parsing to None unless given; its help shows the default."""
    for flag in flags:
        default = flag.value
        options = dict(flag.options)
        if isinstance(default, bool):
            if default:
                raise ValueError(f"flag {flag.name}: a True default needs a --no-... flag of its own")
            options.setdefault("action", "store_true")
        elif isinstance(default, (tuple, list)):
            options.setdefault("nargs", "*")
            options.setdefault("type", _parser(flag, type(default[0]) if default else str))
        elif default is not None:
            options.setdefault("type", _parser(flag, type(default)))
        shown = " ".join(map(str, default)) if isinstance(default, (tuple, list)) else default
        text = flag.help if isinstance(default, bool) else f"{flag.help} (default: {shown})"
        group.add_argument(
            "--" + flag.name.replace("_", "-"),
            dest=flag.name,
            default=None,
            help=text.replace("%", "%%"),  # argparse formats help with %
            **options,
        )


def _parser(flag: Flag, kind: type) -> Callable[[str], Any]:
    if flag.range is not None:
        return flag.range.parser(kind)
    if kind in (int, float):  # a numeric flag with no range says so: every one is checked
        raise ValueError(f"flag {flag.name}: a numeric flag needs a range")
    return kind


def resolve(args: argparse.Namespace, flags: Iterable[Flag], *sources: Mapping[str, Any]) -> None:
    """Fill every flag not given (None or absent) from the first source that has it, else its
    default. Sources come in order of precedence, e.g. a preset."""
    for flag in flags:
        if getattr(args, flag.name, None) is None:
            value = next((source[flag.name] for source in sources if flag.name in source), _UNSET)
            setattr(args, flag.name, flag.value if value is _UNSET else value)


def from_args(config: type, args: argparse.Namespace) -> Any:
    """`config` built from the args attributes named like its fields (the rest: its defaults)."""
    return config(**{f.name: getattr(args, f.name) for f in fields(config) if hasattr(args, f.name)})
