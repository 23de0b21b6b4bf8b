"""JSON bodies as the hub accepts them: RFC 8259 JSON, nothing Python's `json` adds.

Python's parser takes `NaN`, `Infinity` and `-Infinity`, turns `1e400` into `inf`, and keeps a
lone surrogate (`"\\ud800"`) as a string that no UTF-8 encoder, database driver or JSON renderer
will take back. Any of them passing a request model reaches storage or a reply and ends as a 500
(found by an outside probe against every router). Here they are parse errors, answered 422 like
any other malformed body, and every router parses its bodies this way (`routers.StrictJsonRoute`);
so do the hub's binary formats (the safetensors header, `safetensors_io.py`). The update route,
which parses with pydantic for speed, refuses duplicate keys with `duplicate_key`. Standard
library only.
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
    except json.JSONDecodeError as exc:  # the position into the message: callers show only that
        raise json.JSONDecodeError(f"{exc.msg} at line {exc.lineno} column {exc.colno}", "", 0) from None
    except UnicodeEncodeError:
        raise json.JSONDecodeError("a string holds a lone surrogate (not UTF-8)", "", 0) from None
    except UnicodeDecodeError:
        raise json.JSONDecodeError("not UTF-8", "", 0) from None
    except (ValueError, RecursionError) as exc:
        raise json.JSONDecodeError(str(exc) or type(exc).__name__, "", 0) from None
    return value


_STRUCTURE = re.compile(rb'["{}\[\]]')  # what nests, and where a string starts
_SPACE = b" \t\r\n"


def duplicate_key(body: bytes) -> str | None:
    """The first key that one object of `body` holds twice, or None. `body` must be JSON that a
    parser has already accepted: this only follows its nesting, strings and keys.

    For the update route, whose body pydantic parses straight from the bytes (routers/updates.py)
    and keeps the last copy of a duplicated key. A scan costs far less than a second parse: it
    steps from one string or bracket to the next (bytes.find skips a base64 string's megabytes at
    memchr speed), so its work grows with the keys, not the bytes — 2 ms for a 2.8 MiB update of
    60 linears, against 5 ms for json.loads."""
    keys: list[set[bytes] | None] = []  # per open object its keys; None for an array
    at = 0
    while match := _STRUCTURE.search(body, at):
        start = match.start()
        char = body[start]
        if char == 0x22:  # '"'
            end = _string_end(body, start)
            at = end + 1
            while at < len(body) and body[at] in _SPACE:
                at += 1
            if at < len(body) and body[at] == 0x3A:  # ':' after a string: an object's key
                key = body[start + 1 : end]
                if b"\\" in key:  # "a" and "\u0061" are one key
                    key = json.loads(body[start : end + 1]).encode("utf-8", "surrogatepass")
                held = keys[-1]
                if key in held:
                    return key.decode("utf-8", "replace")
                held.add(key)
        elif char == 0x7B:  # '{'
            keys.append(set())
            at = start + 1
        elif char == 0x5B:  # '['
            keys.append(None)
            at = start + 1
        else:  # '}' or ']'
            keys.pop()
            at = start + 1
    return None


def _string_end(body: bytes, start: int) -> int:
    """Where the string opened at `start` closes: the next quote not escaped by an odd run of
    backslashes."""
    end = body.find(b'"', start + 1)
    while True:
        slashes = end
        while body[slashes - 1] == 0x5C:  # '\\'
            slashes -= 1
        if (end - slashes) % 2 == 0:
            return end
        end = body.find(b'"', end + 1)
