"""The value readers shared by vcluster's readers of Slurm's JSON (22.05 to 24.11 and later).

Why it exists: a number, a string, a time, an exit code or a state list is written one way by
22.05 and another by 23.02+ (see :mod:`vcluster.slurm_parse`); these helpers read either, so
the job and node readers (:mod:`vcluster.slurm_jobs`, :mod:`vcluster.slurm_nodes`) do not
have to. They also load a whole listing (:func:`_load_json_list`) and word its errors.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from vcluster.errors import SlurmParseError
from vcluster.json_stream import NotAnObject, read_listing, text_chunks
from vcluster.slurm_fast import asdict, read_fields

T = TypeVar("T")

# Slurm's NO_VAL / NO_VAL64 / INFINITE sentinels as they appear in JSON numbers.
_SENTINELS = frozenset({0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFE, 0xFFFFFFFFFFFFFFFF})


# --- JSON helpers -----------------------------------------------------------------------------


def _load_json_list(text: str | bytes | memoryview | Iterable[str], command: str, key: str,
                    convert: Callable[[Mapping[str, Any]], T]) -> tuple[dict[str, Any], list[T]]:
    """The ``key`` list's records converted, and the other top-level fields (``data[key]``
    True when the list was read), with one-line errors naming the command; the text given whole
    (str, or UTF-8 bytes as a command's mapped output: :mod:`vcluster.slurm_fast` reads only
    the fields the converters read, each record made a dict as it is converted) or in
    pieces (:func:`vcluster.json_stream.read_listing`). A text the fast reader refuses (not
    JSON, not the expected shape) is read again the standard way, which keeps what is
    readable and words the error."""
    if isinstance(text, str | bytes | memoryview):
        fast = read_fields(text, key)
        if fast is not None:
            data, records = fast
            return data, [convert(asdict(record)) for record in records]
        if not isinstance(text, str):
            text = bytes(text).decode("utf-8", errors="replace")
    try:
        return read_listing(text_chunks(text) if isinstance(text, str) else text, key, convert)
    except NotAnObject:
        raise SlurmParseError(f"`{command}` printed JSON that is not an object") from None
    except json.JSONDecodeError as exc:
        raise SlurmParseError(
            f"`{command}` printed something that is not JSON ({exc.msg} at line {exc.lineno}); "
            "is this Slurm 22.05 or newer?"
        ) from exc


def _number(value: Any) -> int | None:
    """An integer field: plain number, ``{"set":..,"number":..}`` (23.x), or None if unset."""
    if type(value) is int:
        return None if value in _SENTINELS else value
    if type(value) is dict or isinstance(value, Mapping):
        if value.get("infinite") or not value.get("set", True):
            return None
        value = value.get("number")
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return None if number in _SENTINELS else number


def _int(value: Any, default: int = 0) -> int:
    number = _number(value)
    return default if number is None else number


def _str(value: Any) -> str:
    if type(value) is str:
        return value
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _time(value: Any) -> float | None:
    number = _number(value)
    return float(number) if number else None


def _exit_status(value: Any) -> int | None:
    """Decode Slurm's exit code: a raw wait status (22.05) or ``{"return_code":..}`` (23.x)."""
    if isinstance(value, Mapping):
        signal = _number(value.get("signal", {}).get("id")) if isinstance(
            value.get("signal"), Mapping) else None
        if signal:
            return 128 + signal
        return _number(value.get("return_code"))
    status = _number(value)
    if status is None:
        return None
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _state_words(value: Any) -> list[str]:
    if type(value) is str and value.isalpha():  # one word (22.05's "idle")
        return [value.upper()]
    if value is None:  # 23.02+'s nodes have no state_flags
        return []
    if isinstance(value, list):
        words = [str(v) for v in value]
    else:
        words = re.split(r"[+,\s]+", _str(value))
    return [w.strip().upper() for w in words if w.strip()]


def _errors(data: Mapping[str, Any]) -> str:
    """The ``errors`` of a JSON reply, one line (22.05: ``error``; 23.02+: ``description``)."""
    texts = []
    for item in data.get("errors") or []:
        if isinstance(item, Mapping):
            texts.append(_str(item.get("description") or item.get("error") or dict(item)))
        else:
            texts.append(_str(item))
    return "; ".join(texts) or "none"
