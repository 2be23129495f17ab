"""JSON listings read record by record, from pieces of text.

Why: Slurm's node and job listings are tens of MB of JSON at 10,000 nodes (``squeue --json``
of 24.11: about 6 KB per job). ``json.loads`` would hold the whole text and every record's
dicts at once; :func:`read_listing` reads the text from its pieces (a file, read a MB at a
time) with the standard library's decoder, one value at a time, and hands each record of the
one big list to a converter as soon as it is read, so only a piece of text and one record are
in hand besides what the converter keeps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
CHUNK_CHARS = 1 << 20
"""How much of a listing is read at a time (a file or a text)."""


def text_chunks(text: str) -> Iterator[str]:
    for at in range(0, len(text), CHUNK_CHARS):
        yield text[at:at + CHUNK_CHARS]


class _Cursor:
    """A JSON text read from its pieces, with only a piece and one value in hand."""

    def __init__(self, pieces: Iterable[str]) -> None:
        self._pieces = iter(pieces)
        self.buf = ""
        self.at = 0

    def _more(self) -> bool:
        for piece in self._pieces:
            if piece:
                self.buf = self.buf[self.at:] + piece
                self.at = 0
                return True
        return False

    def peek(self) -> str:
        """The next character that is not white space ("" at the end)."""
        while True:
            self.at = _WHITESPACE.match(self.buf, self.at).end()  # type: ignore[union-attr]
            if self.at < len(self.buf) or not self._more():
                return self.buf[self.at:self.at + 1]

    def expect(self, char: str, what: str) -> None:
        if self.peek() != char:
            raise json.JSONDecodeError(f"Expecting {what}", self.buf, self.at)
        self.at += 1

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.at)
            except json.JSONDecodeError:
                if self._more():  # cut at the end of the piece: read on
                    continue
                raise
            if end == len(self.buf) and self._more():
                continue  # a number or literal may go on in the next piece
            self.at = end
            return value


class NotAnObject(ValueError):
    """The text is JSON, but not an object."""


def read_listing(pieces: Iterable[str], key: str, convert: Callable[[Mapping[str, Any]], T]
                 ) -> tuple[dict[str, Any], list[T]]:
    """The top-level object of the JSON text made of ``pieces``, without its ``key`` list,
    and that list's object items, each passed through ``convert`` as it is read.
    ``data[key]`` is True when the list was read, absent (or the text's ``null``) when there
    was none. Raises json.JSONDecodeError, or NotAnObject."""
    data: dict[str, Any] = {}
    items: list[T] = []
    cursor = _Cursor(pieces)
    if cursor.peek() != "{":
        cursor.value()  # not an object: a JSON error, or JSON that is not an object
        if cursor.peek():
            raise json.JSONDecodeError("Extra data", cursor.buf, cursor.at)
        raise NotAnObject("JSON that is not an object")
    cursor.at += 1
    while cursor.peek() != "}":
        name = cursor.value()
        if not isinstance(name, str):
            raise json.JSONDecodeError("Expecting property name", cursor.buf, cursor.at)
        cursor.expect(":", "':' delimiter")
        if name == key and cursor.peek() == "[":
            data[name] = True
            cursor.at += 1
            while cursor.peek() != "]":
                item = cursor.value()
                if isinstance(item, Mapping):
                    items.append(convert(item))
                if cursor.peek() != "]":
                    cursor.expect(",", "',' delimiter")
            cursor.at += 1
        else:
            data[name] = cursor.value()
        if cursor.peek() != "}":
            cursor.expect(",", "',' delimiter")
    cursor.at += 1
    if cursor.peek():
        raise json.JSONDecodeError("Extra data", cursor.buf, cursor.at)
    return data, items


