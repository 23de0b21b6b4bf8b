"""JSON bodies as the hub accepts them: RFC 8259 JSON, nothing Python's `json` adds.

Python's parser takes `NaN`, `Infinity` and `-Infinity`, turns `1e400` into `inf`, and keeps a
lone surrogate (`"\\ud800"`) as a string that no UTF-8 encoder, database driver or JSON renderer
will take back. Any of them passing a request model reaches storage or a reply and ends as a 500
(found by an outside probe against every router). Here they are parse errors, answered 422 like
any other malformed body, and every router parses its bodies this way (`routers.StrictJsonRoute`);
so do the hub's binary formats (the safetensors header, `safetensors_io.py`). Standard library only.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def _check_strings(value: Any) -> None:
    """Every string (keys included) must be encodable as UTF-8: no lone surrogates."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                item.encode("utf-8")  # UnicodeEncodeError on a lone surrogate
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _unique(pairs: list[tuple[str, Any]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {duplicate[:64]!r}")
    return result


_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # an escape that may decode to a lone surrogate


def loads(body: bytes | str) -> Any:
    """json.loads that refuses NaN, ±Infinity, numbers beyond float range, lone surrogates, text
    that is not UTF-8 and duplicate keys (which one would count?). Raises json.JSONDecodeError
    (what FastAPI answers with 422) for each."""
    try:
        if isinstance(body, str):
            body.encode("utf-8")  # a surrogate in the text itself
            text = body
        else:
            text = bytes(body).decode("utf-8")  # strict: encoded surrogates are not UTF-8 either
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite, object_pairs_hook=_unique)
        if _ESCAPED_SURROGATE.search(text):  # only then can a string hold one: walk them
            _check_strings(value)
    except json.JSONDecodeError:
        raise
    except UnicodeEncodeError:
        raise json.JSONDecodeError("a string holds a lone surrogate (not UTF-8)", "", 0) from None
    except UnicodeDecodeError:
        raise json.JSONDecodeError("not UTF-8", "", 0) from None
    except (ValueError, RecursionError) as exc:
        raise json.JSONDecodeError(str(exc) or type(exc).__name__, "", 0) from None
    return value
