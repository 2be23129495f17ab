"""oned's XML-RPC as pyone speaks it, made fit for vcluster's client (:mod:`vcluster.one`).

Why it exists: the pieces that reach under pyone (a transport with a timeout, a server that
keeps oned's error codes whole, faults carried past pyone) and the words for a failed
connection are the part of the client that depends on pyone's internals; kept here, apart
from the retrying and the translation of errors (:mod:`vcluster.one_call`) and from the calls
themselves (:mod:`vcluster.one`).

How pyone is used, precisely (pyone 6.10.5):

* ``pyone.OneServer(timeout=...)`` would call ``socket.setdefaulttimeout`` and change every
  socket of the process, and its transport posts with no timeout at all. So the server is
  built with ``timeout=None`` and its transport (``ServerProxy``'s private
  ``_ServerProxy__transport``, the one pyone itself sets) is replaced by
  :class:`_TimeoutTransport`, which posts with ``requests`` and
  ``timeout=settings.timeout_s`` (bounding the connect and each wait for data). One
  connection per call, as pyone does: a kept-alive connection that the server closed would
  fail a non-idempotent call for nothing.
* ``_do_request`` (pyone's hook between the XML-RPC call and its answer parsing) is
  overridden to raise :class:`_CallFailed` with oned's full error code: pyone folds
  ALLOCATE, LOCKED and REPLICATION into a bare ``OneException``.
* XML-RPC faults are caught in the transport, before pyone flattens them into a string.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import xmlrpc.client
from collections.abc import Callable, Iterator
from typing import Any

import pyone
import requests

from vcluster.one_stream import AnswerStream

# oned's error codes (include/RequestManager.h)
AUTHENTICATION = 0x100
AUTHORIZATION = 0x200
NO_EXISTS = 0x400
ACTION = 0x800
XML_RPC_API = 0x1000
INTERNAL = 0x2000
ALLOCATE = 0x4000
LOCKED = 0x8000
REPLICATION = 0x10000

# INTERNAL errors that are really a refused request: retrying cannot help.
_PERMANENT_INTERNAL = ("Parse error", "syntax error", "attribute must be", "already taken")


class _CallFailed(Exception):
    """oned answered ``[False, message, code, ...]``."""

    def __init__(self, method: str, message: str, code: int) -> None:
        super().__init__(message)
        self.method, self.message, self.code = method, message, code


class _BadAnswer(Exception):
    """The answer is XML-RPC but not oned's ``[ok, value, code, ...]`` array."""


class _FaultSeen(Exception):
    """An XML-RPC fault, carried past pyone (which would flatten it into a string)."""

    def __init__(self, fault: xmlrpc.client.Fault) -> None:
        super().__init__(fault.faultString)
        self.fault = fault


_STREAM_CHUNK = 1 << 16


class _TimeoutTransport(pyone.RequestsTransport):
    """pyone's requests transport, with a timeout and HTTP errors that keep their reason."""

    def __init__(self, timeout_s: float, https: bool, https_verify: bool = True) -> None:
        super().__init__()
        self.timeout_s = timeout_s
        self.set_https(https)
        self.set_https_verify(https_verify)

    def getparser(self) -> tuple[Any, Any]:
        """xmlrpc's parser, told to hand over character data in large pieces: a VM pool is
        one escaped XML string, and unbuffered expat calls back for every newline and
        entity in it (3 million calls for 4,000 VMs: most of the cost of a pool listing)."""
        parser, unmarshaller = super().getparser()
        expat_parser = getattr(parser, "_parser", None)
        if expat_parser is not None:
            expat_parser.buffer_size = 1 << 20
            expat_parser.buffer_text = True
        return parser, unmarshaller

    sink: Callable[[str], None] | None = None
    """Set for one call: a successful answer's string value goes there as it arrives
    (:mod:`vcluster.one_stream`) and the call returns ``[True, "", code]``."""

    def request(self, host: str, handler: str, request_body: bytes,
                verbose: bool = False) -> Any:
        url = self._build_url(host, handler)
        headers = {"User-Agent": "vcluster (pyone)", "Content-Type": "text/xml",
                   "Accept": "*/*"}
        sink = self.sink
        resp = requests.post(url, data=request_body, headers=headers,
                             verify=self.https_verify, timeout=self.timeout_s,
                             stream=sink is not None)
        try:
            if resp.status_code != 200:
                raise xmlrpc.client.ProtocolError(url, resp.status_code, resp.reason or "",
                                                  dict(resp.headers))
            if sink is not None:
                return AnswerStream(sink, self._parse_body).read(
                    resp.iter_content(_STREAM_CHUNK))
            return self.parse_response(resp)
        except xmlrpc.client.Fault as fault:
            raise _FaultSeen(fault) from fault
        finally:
            resp.close()

    def _parse_body(self, body: bytes) -> Any:
        parser, unmarshaller = self.getparser()
        parser.feed(body)
        parser.close()
        return unmarshaller.close()


class _OneServer(pyone.OneServer):
    """pyone's server with our transport and oned's error codes kept whole."""

    def __init__(self, uri: str, session: str, transport: _TimeoutTransport) -> None:
        super().__init__(uri, session, timeout=None)  # None: no socket.setdefaulttimeout
        if not hasattr(self, "_ServerProxy__transport"):
            raise RuntimeError("pyone's OneServer changed: cannot set a per-call timeout")
        self._ServerProxy__transport = transport
        self.transport = transport

    def _do_request(self, method: str, params: Any) -> Any:
        raw = super()._do_request(method, params)
        if not isinstance(raw, list | tuple) or len(raw) < 2 or not isinstance(raw[0], bool):
            raise _BadAnswer(_one_line(str(raw))[:100])
        if not raw[0]:
            code = raw[2] if len(raw) > 2 and isinstance(raw[2], int) else -1
            raise _CallFailed(method, str(raw[1]), code)
        if len(raw) < 3:  # pyone reads element [2] even on success
            return [raw[0], raw[1], 0]
        return raw


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it was raised from or wraps (requests wraps urllib3's,
    which wraps http.client's in its args), each once."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        nxt = [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
        stack.extend(x for x in nxt if isinstance(x, BaseException))


def _closed_without_answer(exc: BaseException) -> bool:
    """The server accepted the connection and closed it without a status line (a busy
    server or a proxy shedding a connection): the call was not answered, and one that cannot
    act twice may be sent again at once."""
    return any(isinstance(e, http.client.RemoteDisconnected) for e in _exception_chain(exc))


def _connection_cause(exc: BaseException) -> str:
    """Why a connection failed, in a few words, from the innermost socket error."""
    found: BaseException | None = None
    for e in _exception_chain(exc):
        if isinstance(e, OSError) and (e.errno is not None or isinstance(e, ssl.SSLError)):
            found = e
    if isinstance(found, ConnectionRefusedError):
        return "connection refused"
    if isinstance(found, socket.gaierror):
        return f"host name not resolved: {found.strerror}"
    if isinstance(found, ssl.SSLError):
        return f"TLS error: {_one_line(found.reason or str(found))}"
    if isinstance(found, ConnectionResetError):
        return "connection reset"
    if isinstance(found, OSError) and found.strerror:
        return found.strerror[0].lower() + found.strerror[1:]
    return _one_line(str(exc))[:200]
