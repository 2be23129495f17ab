"""An XML-RPC answer read as it arrives, its big string value handed on in pieces.

Why: ``one.vmpool.infoextended`` answers ``[True, "<VM_POOL>...</VM_POOL>", 0]``, the pool
as one escaped string (about 5 KB per VM). Read the usual way, the process holds the HTTP
body, then the unescaped string, then the parsed pool, all at once: tens of MB at 4,000 VMs,
the controller's peak RSS. :class:`AnswerStream` runs expat over the body's chunks as they
come off the socket and hands the characters of a successful answer's value to a ``sink``
(:class:`vcluster.one_vm.PoolReader`), so no copy of the whole pool is ever held.

Only the success shape is streamed: ``methodResponse/params/param/value/array/data`` whose
first value is ``<boolean>1</boolean>`` and whose second is a ``<string>``. Anything else (a
fault, ``[False, message, code, ...]``, a value of another type, a text that is not
XML-RPC) is small or wrong, so its body is kept whole and handed to ``fallback`` (xmlrpc's
own parser, as for every other call): faults and oned's error arrays reach the caller
exactly as they do without streaming.
"""

from __future__ import annotations

import xml.parsers.expat
from collections.abc import Callable, Iterable
from typing import Any

_DATA_PATH = ("methodResponse", "params", "param", "value", "array", "data")
_DEPTH = len(_DATA_PATH)


class AnswerStream:
    """One XML-RPC answer, fed chunk by chunk (see the module doc)."""

    def __init__(self, sink: Callable[[str], None],
                 fallback: Callable[[bytes], Any]) -> None:
        self.sink = sink
        self.fallback = fallback
        self._stack: list[str] = []
        self._index = -1  # which value of the data array we are in
        self._held: list[bytes] | None = []  # the body so far, until streaming is decided
        self._streaming = False
        self._ok: bool | None = None
        self._text: list[str] = []
        self._code = 0
        self._seen_string = False
        parser = xml.parsers.expat.ParserCreate()
        parser.buffer_text = True
        parser.buffer_size = 1 << 16
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._chars
        self._parser = parser

    # --- expat's callbacks ---------------------------------------------------------------

    def _in_value(self, index: int, extra: int) -> bool:
        """True when the open elements are data/value[index] plus ``extra`` more."""
        return (self._index == index and len(self._stack) == _DEPTH + 1 + extra
                and tuple(self._stack[:_DEPTH]) == _DATA_PATH)

    def _start(self, name: str, _attrs: Any) -> None:
        self._stack.append(name)
        if name == "value" and len(self._stack) == _DEPTH + 1 \
                and tuple(self._stack[:_DEPTH]) == _DATA_PATH:
            self._index += 1
            self._text = []
        elif self._held is not None and self._ok and self._in_value(1, 1):
            if name == "string":
                self._streaming, self._held = True, None  # from here on, nothing is kept
                self._seen_string = True

    def _end(self, name: str) -> None:
        if self._in_value(0, 1) and name == "boolean":
            self._ok = "".join(self._text).strip() == "1"
        elif self._in_value(1, 1) and name == "string":
            self._streaming = False
        elif self._in_value(2, 1) and name in ("i4", "int"):
            try:
                self._code = int("".join(self._text).strip())
            except ValueError:
                self._code = 0
        self._stack.pop()

    def _chars(self, data: str) -> None:
        if self._streaming:
            self.sink(data)
        elif self._index in (0, 2) and len(self._stack) == _DEPTH + 2:
            self._text.append(data)

    # --- feeding -------------------------------------------------------------------------

    def read(self, chunks: Iterable[bytes]) -> Any:
        """The answer: ``[True, "", code]`` when the value went to the sink, else what
        ``fallback`` makes of the whole body (which may raise, as xmlrpc does on a fault)."""
        for chunk in chunks:
            if self._held is not None:
                self._held.append(chunk)
                if self._ok is False or (self._index >= 1 and not self._seen_string
                                         and not self._in_value(1, 0)):
                    continue  # not the success shape: keep the body for the fallback
            try:
                self._parser.Parse(chunk, False)
            except xml.parsers.expat.ExpatError:
                if self._held is None:
                    raise
                self._ok = False  # the fallback parser says what is wrong
        if self._held is not None:
            return self.fallback(b"".join(self._held))
        self._parser.Parse(b"", True)
        return [True, "", self._code]
