"""One oned call made right: retried while the error is temporary, every failure translated.

Why it exists: the plumbing under :class:`vcluster.one.OneClient` (its session, its pyone
server, :meth:`OneCaller._call` and the translation of every failure into a
:class:`~vcluster.errors.OneError` that says what to do) is the same for every call; kept
here, apart from the calls vcluster makes (:mod:`vcluster.one`) and from what reaches under
pyone (:mod:`vcluster.one_transport`). Its log is ``vcluster.one``'s, the client's.

Calls that create something (``allocate``, ``instantiate``) and actions are not retried
after a failure that may have reached oned (a read timeout): a second VM could be born.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import xml.parsers.expat
import xmlrpc.client
from collections.abc import Callable
from typing import Any

import pyone
import requests

from vcluster.config import OpenNebulaSettings, read_one_auth
from vcluster.errors import (
    OneAuthError,
    OneAuthorizationError,
    OneBadRequest,
    OneError,
    OneInternalError,
    OneNotFound,
    OneUnavailable,
)
from vcluster.one_transport import (
    _PERMANENT_INTERNAL,
    AUTHENTICATION,
    AUTHORIZATION,
    INTERNAL,
    LOCKED,
    NO_EXISTS,
    REPLICATION,
    _BadAnswer,
    _CallFailed,
    _closed_without_answer,
    _connection_cause,
    _FaultSeen,
    _one_line,
    _OneServer,
    _TimeoutTransport,
)
from vcluster.one_vm import PoolReader

logger = logging.getLogger("vcluster.one")  # the client's log: one name for every oned call


class OneCaller:
    """The plumbing of :class:`vcluster.one.OneClient`: a session, a server, ``_call``.

    ``session`` is ``user:password``; by default it is read, on first use, from the
    ``ONE_AUTH`` file ``settings.auth_file``. Not thread-safe: one client per thread.
    """

    def __init__(self, settings: OpenNebulaSettings, *, session: str | None = None,
                 on_call: Callable[[str, float, bool], None] | None = None) -> None:
        self.settings = settings
        self.on_call = on_call
        """Told of every call attempt: (method, seconds, failed); the controller's metrics."""
        self.url = settings.xmlrpc
        self._session = session
        self._session_from_file = session is None
        self._server: _OneServer | None = None

    # --- plumbing -----------------------------------------------------------------------

    @property
    def user(self) -> str:
        return self._session_string().split(":", 1)[0]

    def _session_string(self) -> str:
        if self._session is None:
            self._session = read_one_auth(self.settings.auth_file)
        return self._session

    def _credentials_source(self) -> str:
        if self._session_from_file:
            return f"in {os.path.expanduser(self.settings.auth_file)}"
        return "given to vcluster"

    def _proxy(self) -> _OneServer:
        if self._server is None:
            transport = _TimeoutTransport(self.settings.timeout_s,
                                          https=self.url.startswith("https"))
            self._server = _OneServer(self.url, self._session_string(), transport)
        return self._server

    def _call(self, method: str, *params: Any, doing: str, subject: str, hint: str,
              idempotent: bool = True, raw: bool = False,
              stream: Callable[[], PoolReader] | None = None) -> Any:
        """Call ``one.<method>``; retry temporary errors, translate every failure.

        ``doing`` ("read VM 4") and ``subject`` ("VM 4") word the messages; ``hint`` says
        what to do when oned refuses. Not ``idempotent``: a retry after a failure that may
        have reached oned could act twice (two VMs), so such failures are not retried.
        ``raw``: the answer's value as oned sent it (an XML text), not parsed by pyone.
        ``stream``: makes a fresh reader for each attempt; the answer's value is fed to it
        as it arrives (never held whole) and the call returns what its ``close()`` returns.
        """
        delays = self.settings.retry_delays_s
        attempts = 1 + len(delays)
        dropped_retried = False
        attempt = 0
        while attempt < attempts:
            attempt += 1
            started = time.monotonic()
            try:
                if stream is not None:
                    proxy, reader = self._proxy(), stream()
                    proxy.transport.sink = reader.feed
                    try:
                        answer = proxy._do_request("one." + method, proxy._cast_parms(params))
                    finally:
                        proxy.transport.sink = None
                    if isinstance(answer[1], str) and answer[1]:
                        reader.feed(answer[1])  # a layout that was not streamed: read whole
                    result = reader.close()
                elif raw:
                    proxy = self._proxy()
                    result = proxy._do_request("one." + method, proxy._cast_parms(params))[1]
                else:
                    fn = functools.reduce(getattr, method.split("."), self._proxy())
                    result = fn(*params)
            except Exception as exc:  # translated below; unknown ones are re-raised
                error, may_have_acted = self._translate(exc, method, doing, subject, hint)
                if error is None:
                    raise
                elapsed = time.monotonic() - started
                if self.on_call is not None:
                    self.on_call(method, elapsed, True)
                if idempotent and not dropped_retried and _closed_without_answer(exc):
                    # As HTTP clients do for a dropped connection: once, at once, and only
                    # for a call that cannot act twice. Not counted as one of the attempts.
                    dropped_retried = True
                    attempt -= 1
                    logger.warning("one.%s: OpenNebula at %s closed the connection without "
                                   "answering after %.3f s; trying once more at once", method,
                                   self.url, elapsed)
                    continue
                retry = (error.temporary and attempt < attempts
                         and (idempotent or not may_have_acted))
                if retry:
                    what_next = f"retrying in {delays[attempt - 1]:g} s"
                elif not error.temporary:
                    what_next = "not retrying: permanent error"
                elif attempt < attempts:
                    what_next = "not retrying: the call may have taken effect"
                else:
                    what_next = "giving up"
                logger.warning("one.%s attempt %d/%d failed after %.3f s: %s; %s",
                               method, attempt, attempts, elapsed, error, what_next)
                if not retry:
                    raise error from exc
                time.sleep(delays[attempt - 1])
                continue
            elapsed = time.monotonic() - started
            logger.debug("one.%s attempt %d/%d ok in %.3f s", method, attempt, attempts,
                         elapsed)
            if self.on_call is not None:
                self.on_call(method, elapsed, False)
            return result
        raise AssertionError("unreachable")

    def _translate(self, exc: Exception, method: str, doing: str, subject: str,
                   hint: str) -> tuple[OneError | None, bool]:
        """(vcluster error, whether the call may have reached oned) for ``exc``."""
        url, timeout_s = self.url, self.settings.timeout_s
        unreachable = "check ONE_XMLRPC and that oned is running"
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return OneUnavailable(f"cannot reach OpenNebula at {url} (no connection within "
                                  f"{timeout_s:g} s); {unreachable}"), False
        if isinstance(exc, requests.exceptions.Timeout):
            return OneUnavailable(
                f"OpenNebula at {url} did not answer one.{method} within {timeout_s:g} s; "
                "check that oned is running and not overloaded, or raise opennebula.timeout_s"
            ), True
        if isinstance(exc, requests.exceptions.ConnectionError):
            cause = _connection_cause(exc)
            never_sent = cause.startswith(("connection refused", "host name", "TLS"))
            return (OneUnavailable(f"cannot reach OpenNebula at {url} ({cause}); {unreachable}"),
                    not never_sent)
        if isinstance(exc, requests.exceptions.RequestException):
            return OneUnavailable(f"cannot reach OpenNebula at {url} "
                                  f"({_one_line(str(exc))[:200]}); {unreachable}"), True
        if isinstance(exc, xmlrpc.client.ProtocolError):
            status = f"HTTP {exc.errcode} {exc.errmsg}".strip()
            if exc.errcode >= 500 or exc.errcode == 429:
                return OneUnavailable(f"OpenNebula at {url} answered {status}; check that oned "
                                      "and any proxy in front of it are running"), True
            return OneBadRequest(f"OpenNebula at {url} answered {status}, so it is not oned's "
                                 "XML-RPC endpoint; check ONE_XMLRPC (usually "
                                 "http://HOST:2633/RPC2)", code=exc.errcode), False
        if isinstance(exc, _FaultSeen):
            f = exc.fault
            return OneBadRequest(
                f"OpenNebula refused one.{method} with XML-RPC fault {f.faultCode}: "
                f"{_one_line(f.faultString)}; check that ONE_XMLRPC points at oned 6 or 7",
                code=f.faultCode,
            ), False
        if isinstance(exc, xml.parsers.expat.ExpatError | xmlrpc.client.ResponseError):
            return OneBadRequest(f"OpenNebula at {url} answered one.{method} with something "
                                 f"that is not XML-RPC ({_one_line(str(exc))[:100]}); "
                                 "check ONE_XMLRPC"), False
        if isinstance(exc, _BadAnswer):
            return OneBadRequest(f"OpenNebula at {url} answered one.{method} with {exc}, which "
                                 "is not how oned answers; check ONE_XMLRPC"), False
        if isinstance(exc, _CallFailed):
            return self._translate_failure(exc, doing, subject, hint), False
        if isinstance(exc, pyone.OneException):
            return OneBadRequest(f"OpenNebula could not {doing}: {_one_line(str(exc))}; "
                                 f"{hint}"), False
        if type(exc).__module__.startswith("lxml"):
            return OneBadRequest(f"cannot read OpenNebula's answer to one.{method} "
                                 f"({_one_line(str(exc))[:100]}); check ONE_XMLRPC"), False
        return None, True

    def _translate_failure(self, exc: _CallFailed, doing: str, subject: str,
                           hint: str) -> OneError:
        full, code = _one_line(exc.message), exc.code
        msg = full[:-1] if full.endswith(".") else full  # it is followed by "; what to do"
        if code == AUTHENTICATION:
            return OneAuthError(
                f"OpenNebula rejected the credentials {self._credentials_source()} "
                f"(user {self.user!r}); check the ONE_AUTH file", code=code)
        if code == AUTHORIZATION:
            return OneAuthorizationError(
                f"OpenNebula user {self.user!r} may not {doing}: {msg}; ask an OpenNebula "
                "admin for the permission or use another account", code=code)
        if code == NO_EXISTS:
            return OneNotFound(f"OpenNebula has no {subject} ({full}); check the id", code=code)
        if code == INTERNAL and not any(p in msg for p in _PERMANENT_INTERNAL):
            return OneInternalError(f"OpenNebula failed to {doing}: {msg}; it may be "
                                    "temporary, see oned.log if it persists", code=code)
        if code == LOCKED:
            return OneInternalError(f"OpenNebula could not {doing}: {msg}; {subject} is "
                                    "locked: wait, or unlock it if the lock is stale", code=code)
        if code == REPLICATION:
            return OneInternalError(f"OpenNebula could not {doing}: {msg}; the OpenNebula "
                                    "HA leader may be changing, retry later", code=code)
        return OneBadRequest(f"OpenNebula refused to {doing}: {msg}; {hint}", code=code)
