"""OpenNebula, behind a small client that speaks only vcluster's own errors.

Everything vcluster asks of oned goes through :class:`OneClient`: pyone does the XML-RPC
and parses the answers, and this module turns every failure into a
:class:`~vcluster.errors.OneError` whose message says what happened and what to do:
pyone's exceptions, and the ones pyone lets through unwrapped (``requests``' connection
errors and timeouts, ``xmlrpc.client.ProtocolError`` for a wrong URL, XML-RPC faults).
Temporary errors (unreachable, timed out, oned internal errors) are retried after each
delay of ``settings.retry_delays_s``; permanent ones are raised at once. Every failed
attempt is logged with its number.

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

Calls that create something (``allocate``, ``instantiate``) and actions are not retried
after a failure that may have reached oned (a read timeout): a second VM could be born.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import ssl
import time
import xml.parsers.expat
import xmlrpc.client
from collections.abc import Callable, Mapping
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
from vcluster.one_site import (
    HostCapacity,
    VNetInfo,
    host_capacities_from_binding,
    host_states_from_binding,
    template_nics,
    vnet_from_binding,
)
from vcluster.one_stream import AnswerStream
from vcluster.one_vm import (
    VM,
    LcmState,
    PoolReader,
    VmState,
    state_name,
    vm_from_binding,
)
from vcluster.vmtemplate import render_template

__all__ = ["VM", "LcmState", "OneClient", "VmState", "state_name"]

logger = logging.getLogger(__name__)

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


def _connection_cause(exc: BaseException) -> str:
    """Why a connection failed, in a few words, from the innermost socket error."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    found: BaseException | None = None
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and (e.errno is not None or isinstance(e, ssl.SSLError)):
            found = e
        nxt = [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
        stack.extend(x for x in nxt if isinstance(x, BaseException))
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


class OneClient:
    """A small client for the oned calls vcluster needs.

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
        for attempt in range(1, attempts + 1):
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

    # --- the calls vcluster makes ------------------------------------------------------------

    def version(self) -> str:
        """oned's version, e.g. ``7.4.0``."""
        return str(self._call("system.version", doing="read its version",
                              subject="version", hint="check ONE_XMLRPC"))

    def template_id(self, name_or_id: str) -> int:
        """The id of the VM template called ``name_or_id`` (or that number itself)."""
        text = str(name_or_id).strip()
        if text.isdigit():
            return int(text)
        pool = self._call("templatepool.info", -2, -1, -1, doing="list VM templates",
                          subject="VM template pool", hint="check the user's permissions")
        ids = sorted(int(t.ID) for t in (pool.VMTEMPLATE or []) if t.NAME == text)
        if not ids:
            raise OneNotFound(f"OpenNebula has no VM template named {text!r} that user "
                              f"{self.user!r} can use; create it or fix node_class.template")
        if len(ids) > 1:
            raise OneBadRequest(f"OpenNebula has several VM templates named {text!r} (ids "
                                f"{', '.join(map(str, ids))}); put the id in node_class.template")
        return ids[0]

    def instantiate(self, template_id: int, name: str, extra_template: str, *,
                    hold: bool = False) -> int:
        """Boot a VM called ``name`` from template ``template_id``; return its id."""
        return int(self._call(
            "template.instantiate", int(template_id), name, bool(hold), extra_template, False,
            doing=f"instantiate VM template {template_id} as {name!r}",
            subject=f"VM template {template_id}",
            hint="check the template and the node class settings", idempotent=False))

    def allocate(self, template_text: str, *, hold: bool = False) -> int:
        """Create a VM from a whole template text; return its id."""
        return int(self._call("vm.allocate", template_text, bool(hold),
                              doing="allocate a VM", subject="VM",
                              hint="check the VM template text", idempotent=False))

    def vm(self, vm_id: int) -> VM:
        """One VM, with its USER_TEMPLATE and CONTEXT."""
        body = self._call("vm.info", int(vm_id), False, doing=f"read VM {vm_id}",
                          subject=f"VM {vm_id}", hint="check the VM id")
        return vm_from_binding(body)

    def vms(self, *, cluster: str | None = None) -> list[VM]:
        """Every VM not DONE the user can see, newest first; only ``cluster``'s if given."""
        try:  # streamed: the pool is read as it arrives, never held whole
            return list(self._call("vmpool.infoextended", -2, -1, -1, -1, doing="list VMs",
                                   subject="VM pool", hint="check the user's permissions",
                                   stream=lambda: PoolReader(cluster)))
        except ValueError as exc:
            raise OneBadRequest(f"OpenNebula at {self.url} answered one.vmpool.infoextended "
                                f"with a VM pool vcluster cannot read: {exc}") from exc

    def vm_range(self, first_id: int, last_id: int) -> list[VM]:
        """Every VM not DONE the user can see with an id from ``first_id`` to ``last_id``
        (oned's pool range, inclusive): one call for the VMs a pass just allocated, where
        reading each alone cost a round trip per VM."""
        try:
            return list(self._call("vmpool.infoextended", -2, int(first_id), int(last_id), -1,
                                   doing=f"list VMs {first_id} to {last_id}",
                                   subject="VM pool", hint="check the user's permissions",
                                   stream=lambda: PoolReader(None)))
        except ValueError as exc:
            raise OneBadRequest(f"OpenNebula at {self.url} answered one.vmpool.infoextended "
                                f"with a VM pool vcluster cannot read: {exc}") from exc

    def host_states(self) -> dict[str, str]:
        """{host name: state name} of every host the user can see (none without the right
        to list hosts: oned answers an empty pool)."""
        pool = self._call("hostpool.info", doing="list hosts", subject="host pool",
                          hint="check the user's permissions")
        return host_states_from_binding(pool)

    def host_capacities(self) -> list[HostCapacity]:
        """Every host's capacity and usage (none without the right to list hosts)."""
        pool = self._call("hostpool.info", doing="list hosts", subject="host pool",
                          hint="check the user's permissions")
        return host_capacities_from_binding(pool)

    def migrate(self, vm_id: int, host_id: int, *, live: bool, enforce: bool = True) -> None:
        """Move a VM to host ``host_id`` (one.vm.migrate): ``live`` keeps a RUNNING guest
        running; a SUSPENDED or POWEROFF VM moves cold; ``enforce`` has oned check the
        host's capacity (it refuses with "does not fit in host")."""
        how = "live-migrate" if live else "migrate"
        self._call("vm.migrate", int(vm_id), int(host_id), bool(live), bool(enforce), -1, 0,
                   doing=f"{how} VM {vm_id} to host {host_id}", subject=f"VM {vm_id}",
                   hint="the VM's state or the host does not allow it", idempotent=False)

    def host_status(self, host_id: int, status: int) -> None:
        """one.host.status: 0 ENABLED, 1 DISABLED (no new VMs), 2 OFFLINE."""
        self._call("host.status", int(host_id), int(status),
                   doing=f"set the status of host {host_id}", subject=f"host {host_id}",
                   hint="managing hosts needs an oneadmin-group user")

    def action(self, action: str, vm_id: int) -> None:
        """Run a VM action (``terminate``, ``poweroff-hard``, ``resume``...)."""
        self._call("vm.action", action, int(vm_id), doing=f"{action} VM {vm_id}",
                   subject=f"VM {vm_id}", hint="the VM is not in a state that allows it",
                   idempotent=False)

    def terminate(self, vm_id: int, *, hard: bool = False) -> None:
        """Terminate a VM. A VM already gone, DONE or shutting down counts as success."""
        action = "terminate-hard" if hard else "terminate"
        try:
            # Safe to retry: a repeat of a terminate that did land fails on the VM's state,
            # and that is checked below.
            self._call("vm.action", action, int(vm_id), doing=f"{action} VM {vm_id}",
                       subject=f"VM {vm_id}", hint="the VM is not in a state that allows it")
        except OneNotFound:
            logger.info("VM %s is already gone", vm_id)
        except OneBadRequest:
            vm = self.vm(vm_id)  # raises OneNotFound if it vanished meanwhile
            if not (vm.is_gone or vm.is_terminating):
                raise
            logger.info("VM %s is already %s", vm_id, vm.state_name)

    def template_nics(self, template_id: int) -> list[dict[str, str]]:
        """The NICs of VM template ``template_id`` (for ``vcluster doctor``)."""
        body = self._call("template.info", int(template_id), False, False,
                          doing=f"read VM template {template_id}",
                          subject=f"VM template {template_id}", hint="check the template id")
        return template_nics(body)

    def vnets(self) -> list[VNetInfo]:
        """Every virtual network the user can see, with its lease counts."""
        pool = self._call("vnpool.info", -2, -1, -1, doing="list virtual networks",
                          subject="virtual network pool", hint="check the user's permissions")
        return [vnet_from_binding(v) for v in (pool.VNET or [])]

    def update_user_template(self, vm_id: int, attrs: Mapping[str, str]) -> None:
        """Merge ``attrs`` into the VM's USER_TEMPLATE (other attributes are kept)."""
        self._call("vm.update", int(vm_id), render_template(attrs), 1,
                   doing=f"update VM {vm_id}", subject=f"VM {vm_id}",
                   hint="check the attribute names and values")
