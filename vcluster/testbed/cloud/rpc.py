"""The XML-RPC face of the testbed cloud: oned's methods, parameters, answers and faults.

Why this exists: pyone and vcluster must not be able to tell the testbed from oned. So this
module checks the session first (``[one.vm.info] User couldn't be authenticated, aborting
call.``), then reads parameters the way xmlrpc-c does (wrong type or too few: fault -501 with
xmlrpc-c's text; unknown method: fault -506; extra parameters ignored), and answers
``[True, value, 0]`` or ``[False, "[method] message", code, resp_id, -1]`` (the last is
oned's replication index, UINT64_MAX sent as ``<i8>``: -1).

Parameters are read as oned 7.4's ``src/rm/xml-rpc/*XRPC.cc`` read them: each optional one
when it is there (``paramList.size() > n``), in the order oned reads them.
"""

from __future__ import annotations

import logging
import socketserver
import xmlrpc.client
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

from vcluster.testbed.cloud import accounts_xml, xmlgen
from vcluster.testbed.cloud.accounts import ADMIN, MANAGE, USE, denial
from vcluster.testbed.cloud.cloud import Cloud
from vcluster.testbed.cloud.settings import (
    ACTION,
    ALLOCATE,
    AUTHENTICATION,
    AUTHORIZATION,
    INTERNAL,
    NO_EXISTS,
    XML_RPC_API,
    OneRequestError,
)
from vcluster.testbed.cloud.template_parse import Template, TemplateParseError, parse_str_or_xml

log = logging.getLogger(__name__)

FAULT_TYPE = -501
FAULT_NO_SUCH_METHOD = -506
_TYPE_TEXT = {"i": "Parameter that is supposed to be integer is not",
              "b": "Parameter that is supposed to be boolean is not",
              "s": "Parameter that is supposed to be a string is not",
              "a": "Parameter that is supposed to be an array is not"}
_TYPES = {"i": int, "b": bool, "s": str, "a": list}


@dataclass(frozen=True)
class Method:
    required: str
    """Parameter types after the session: i(nt), b(oolean), s(tring)."""
    optional: str
    """Optional parameter groups, comma-separated, read only when their first parameter is
    there; a group of several is read together (template.instantiate's hold and extra)."""
    handler: Callable[..., Any]
    read_first: int = 0
    """A required parameter oned reads before the others (vm.action reads the id, its
    second, first), so a wrong type there is the fault reported; 0: none."""


class I8(int):
    """An integer sent as ``<i8>`` (xmlrpc-c's value_i8), as oned sends the replication
    index of a failure."""


def _dump_i8(marshaller: xmlrpc.client.Marshaller, value: int, write: Callable[[str], Any]
             ) -> None:
    write(f"<value><i8>{int(value)}</i8></value>\n")


xmlrpc.client.Marshaller.dispatch[I8] = _dump_i8
NO_REPLICATION = I8(-1)
"""oned's replication_idx of a failure outside a raft log: UINT64_MAX, as an i8."""

# oned 7.4's VirtualMachinePoolAPI::info (the JSON query needs MySQL; the testbed is SQLite)
NO_JSON_QUERY = "JSON query search is not supported by the SQL backend"


def read_params(params: Sequence[Any], spec: str, optional: str, read_first: int = 0
                ) -> list[Any]:
    """xmlrpc-c's paramList::getInt/getString/getBoolean, in order; raise its faults."""
    if read_first and read_first < len(params) and \
            type(params[read_first]) is not _TYPES[spec[read_first - 1]]:
        raise xmlrpc.client.Fault(FAULT_TYPE, _TYPE_TEXT[spec[read_first - 1]])
    groups = [list(spec)] + [list(g) for g in optional.split(",") if g]
    values: list[Any] = []
    position = 1
    for number, group in enumerate(groups):
        if number and position >= len(params):
            break  # an optional group that is not there
        for kind in group:
            if position >= len(params):
                raise xmlrpc.client.Fault(FAULT_TYPE, "Not enough parameters")
            value = params[position]
            if type(value) is not _TYPES[kind]:
                raise xmlrpc.client.Fault(FAULT_TYPE, _TYPE_TEXT[kind])
            values.append(value)
            position += 1
    return values


def parse_template(text: str) -> Template:
    try:
        return parse_str_or_xml(text)
    except TemplateParseError as exc:
        raise OneRequestError(INTERNAL, str(exc)) from None


class OneApi:
    """Method table and dispatch over one :class:`Cloud`."""

    def __init__(self, cloud: Cloud, config: dict[str, str]) -> None:
        self.cloud = cloud
        self.config = config
        c = cloud
        self.methods: dict[str, Method] = {
            "one.system.version": Method("", "", lambda: c.settings.version),
            "one.system.config": Method("", "", lambda: xmlgen.config_xml(self.config)),
            "one.hostpool.info": Method("", "", self._hostpool),
            "one.host.info": Method("i", "b", self._host_info),
            "one.host.allocate": Method("sssi", "", self._host_allocate),
            "one.host.status": Method("ii", "", self._host_status),
            "one.vm.allocate": Method("s", "b", self._vm_allocate),
            "one.vm.info": Method("i", "b", self._vm_info),
            "one.vmpool.info": Method("iiii", "s", self._vmpool),
            "one.vmpool.infoextended": Method("iiii", "s", self._vmpool_extended),
            "one.vm.action": Method("si", "", self._vm_action, read_first=2),
            "one.vm.deploy": Method("ii", "b,i,s", self._vm_deploy),
            "one.vm.migrate": Method("iib", "b,i,i", self._vm_migrate),
            "one.vm.update": Method("is", "i", self._vm_update),
            "one.template.allocate": Method("s", "", self._template_allocate),
            "one.template.info": Method("i", "b,b", self._template_info),
            "one.template.delete": Method("i", "b", self._template_delete),
            "one.template.update": Method("is", "i", self._template_update),
            "one.template.instantiate": Method("is", "b,s,b", self._instantiate),
            "one.templatepool.info": Method("iii", "", self._templatepool),
            "one.vnpool.info": Method("iii", "", self._vnpool),
            "one.vn.info": Method("i", "b", self._vn_info),
            "one.vn.allocate": Method("si", "", self._vn_allocate),
            "one.image.allocate": Method("si", "b", self._image_allocate),
            **accounts_xml.methods(c, Method),
        }

    def dispatch(self, method_name: str, params: Sequence[Any]) -> list[Any]:
        method = self.methods.get(method_name)
        if method is None:
            raise xmlrpc.client.Fault(FAULT_NO_SUCH_METHOD, f"Method '{method_name}' not defined")
        if not params:
            raise xmlrpc.client.Fault(FAULT_TYPE, "Not enough parameters")
        if type(params[0]) is not str:
            raise xmlrpc.client.Fault(FAULT_TYPE, _TYPE_TEXT["s"])
        user = self.cloud.authenticate(params[0])
        if user is None:
            return [False, f"[{method_name}] User couldn't be authenticated, aborting call.",
                    AUTHENTICATION, -1, NO_REPLICATION]
        args = read_params(params, method.required, method.optional, method.read_first)
        self.cloud.set_caller(user)
        try:
            return [True, method.handler(*args), 0]
        except OneRequestError as exc:
            return [False, f"[{method_name}] {exc.message}", exc.code, exc.resp_id,
                    NO_REPLICATION]
        except Exception:
            log.exception("%s failed", method_name)
            return [False, f"[{method_name}] Internal error", INTERNAL, -1, NO_REPLICATION]
        finally:
            self.cloud.set_caller(None)

    # --- handlers ----------------------------------------------------------------------

    def _hostpool(self) -> str:
        # hosts have no owner and oned's default ACLs give users no USE on them: a user
        # outside group oneadmin sees the hosts an ACL rule lets it USE
        c = self.cloud
        with c.lock:
            hosts = [h for h in c.hosts.values() if c.may("host", h, h.host_id, USE)]
            return xmlgen.host_pool_xml(sorted(hosts, key=lambda h: -h.host_id))

    def _host_info(self, host_id: int, _decrypt: bool = False) -> str:
        with self.cloud.lock:
            host = self.cloud.get_host(host_id)
            self.cloud.check("host", host, host_id, USE)
            return xmlgen.host_xml(host)

    def _host_status(self, host_id: int, status: int) -> int:
        # oned 7.4 (HostAPI): ADMIN on the host, checked before the status code
        with self.cloud.lock:
            self.cloud.check("host", self.cloud.get_host(host_id), host_id, ADMIN)
            return self.cloud.host_status(host_id, status)

    def _host_allocate(self, name: str, im_mad: str, vmm_mad: str, cluster_id: int) -> int:
        # oned 7.4 (HostAllocateAPI): the cluster first; the pool's refusal is ALLOCATE
        check_cluster(cluster_id)
        try:
            return self.cloud.allocate_host(name, im_mad, vmm_mad, max(cluster_id, 0))
        except OneRequestError as exc:
            raise OneRequestError(ALLOCATE, f"Error allocating a new host. {exc.message}") \
                from None

    def _vm_allocate(self, text: str, hold: bool = False) -> int:
        return self.cloud.allocate_vm(parse_template(text), hold=hold)

    def _vm_info(self, vm_id: int, _decrypt: bool = False) -> str:
        with self.cloud.lock:
            vm = self.cloud.get_vm(vm_id)
            self.cloud.check("vm", vm, vm_id, USE)
            return xmlgen.vm_xml(vm)

    def _vmpool(self, flt: int, start: int, end: int, state: int, query: str = "") -> str:
        return self._vmpool_any(flt, start, end, state, query, extended=False)

    def _vmpool_extended(self, flt: int, start: int, end: int, state: int,
                         query: str = "") -> str:
        return self._vmpool_any(flt, start, end, state, query, extended=True)

    def _vmpool_any(self, flt: int, start: int, end: int, state: int, query: str, *,
                    extended: bool) -> str:
        # oned 7.4 (VirtualMachinePoolAPI.cc): the query, then the state, then the filter flag
        if query:
            raise OneRequestError(INTERNAL, NO_JSON_QUERY)
        if state < -2 or state > 11:
            raise OneRequestError(XML_RPC_API, f"Incorrect state filter {state}")
        with self.cloud.lock:
            vms = [vm for vm in self.cloud.vms.values()
                   if (state == -2 or (state == -1 and vm.state != 6) or vm.state == state)]
            chosen = select(vms, lambda vm: vm.vm_id, self.cloud, flt, start, end, "vm")
            return xmlgen.vm_pool_xml(chosen, extended=extended)

    def _vm_may(self, vm_id: int, op: int) -> None:
        with self.cloud.lock:
            self.cloud.check("vm", self.cloud.get_vm(vm_id), vm_id, op)

    def _vm_action(self, action: str, vm_id: int) -> int:
        if vm_id in self.cloud.vms:  # an unknown id: vm_action's own NO_EXISTS
            self._vm_may(vm_id, MANAGE)
        return self.cloud.vm_action(action, vm_id)

    def _vm_deploy(self, vm_id: int, host_id: int, enforce: bool = False, _ds_id: int = -1,
                   _extra: str = "") -> int:
        if vm_id in self.cloud.vms:
            self._vm_may(vm_id, ADMIN)
        return self.cloud.deploy(vm_id, host_id, enforce=enforce)

    def _vm_migrate(self, vm_id: int, host_id: int, live: bool, enforce: bool = False,
                    _ds_id: int = -1, _kind: int = 0) -> int:
        # oned 7.4 (VirtualMachineAPI::migrate): the host, then the VM; migrate is one of
        # oned.conf's VM_ADMIN_OPERATIONS (ADMIN on the VM), MANAGE on the target host; the
        # refusals of both joined by "; " (AuthRequest::add_auth)
        c = self.cloud
        with c.lock:
            host, vm = c.get_host(host_id), c.get_vm(vm_id)
            asked = (("vm", vm, vm_id, ADMIN), ("host", host, host_id, MANAGE))
            refused = [denial(kind, oid, op) for kind, obj, oid, op in asked
                       if not c.may(kind, obj, oid, op)]
            if refused:
                raise OneRequestError(AUTHORIZATION, f"User [{c.caller.uid}] : "
                                      + "; ".join(refused) + ".")
        return self.cloud.migrate(vm_id, host_id, live=live, enforce=enforce)

    def _vm_update(self, vm_id: int, text: str, append: int = 0) -> int:
        # oned 7.4 (VirtualMachineAPI::update): the VM, the update type, then the template,
        # whose parse error is an ACTION failure here (INTERNAL at allocate)
        self._vm_may(vm_id, MANAGE)
        if append not in (0, 1):
            raise OneRequestError(XML_RPC_API, "Wrong update type")
        try:
            tmpl = parse_str_or_xml(text)
        except TemplateParseError as exc:
            raise OneRequestError(ACTION, str(exc)) from None
        return self.cloud.update_vm(vm_id, tmpl, append)

    def _image_allocate(self, text: str, ds_id: int, _no_check: bool = False) -> int:
        tmpl = parse_template(text)
        try:
            return self.cloud.allocate_image(tmpl, ds_id)
        except OneRequestError as exc:
            if exc.code != INTERNAL:
                raise
            raise OneRequestError(ALLOCATE, f"Error allocating a new image. {exc.message}") \
                from None

    def _template_allocate(self, text: str) -> int:
        return self.cloud.allocate_template(parse_template(text))

    def _template_update(self, tmpl_id: int, text: str, append: int = 0) -> int:
        # as one.vm.update: the template, the update type, then the new text
        with self.cloud.lock:
            self.cloud.get_template(tmpl_id)
        if append not in (0, 1):
            raise OneRequestError(XML_RPC_API, "Wrong update type")
        try:
            tmpl = parse_str_or_xml(text)
        except TemplateParseError as exc:
            raise OneRequestError(ACTION, str(exc)) from None
        return self.cloud.update_template(tmpl_id, tmpl, append)

    def _template_delete(self, tmpl_id: int, _recursive: bool = False) -> int:
        with self.cloud.lock:
            return self.cloud.delete_template(tmpl_id)

    def _template_info(self, tmpl_id: int, _extended: bool = False,
                       _decrypt: bool = False) -> str:
        with self.cloud.lock:
            tmpl = self.cloud.get_template(tmpl_id)
            self.cloud.check("template", tmpl, tmpl_id, USE)
            return xmlgen.vmtemplate_xml(tmpl)

    def _instantiate(self, tmpl_id: int, name: str, hold: bool = False, extra: str = "",
                     _persistent: bool = False) -> int:
        with self.cloud.lock:
            self.cloud.get_template(tmpl_id)
        extra_tmpl = parse_template(extra) if extra else Template()
        return self.cloud.instantiate(tmpl_id, name, hold=hold, extra=extra_tmpl)

    def _templatepool(self, flt: int, start: int, end: int) -> str:
        with self.cloud.lock:
            chosen = select(list(self.cloud.templates.values()), lambda t: t.tmpl_id,
                            self.cloud, flt, start, end, "template")
            return xmlgen.vmtemplate_pool_xml(chosen)

    def _vnpool(self, flt: int, start: int, end: int) -> str:
        with self.cloud.lock:
            chosen = select(list(self.cloud.vnets.values()), lambda v: v.vnet_id,
                            self.cloud, flt, start, end, "vnet")
            return xmlgen.vnet_pool_xml(chosen)

    def _vn_info(self, vnet_id: int, _decrypt: bool = False) -> str:
        with self.cloud.lock:
            vnet = self.cloud.get_vnet(vnet_id)
            self.cloud.check("vnet", vnet, vnet_id, USE)
            return xmlgen.vnet_xml(vnet)

    def _vn_allocate(self, text: str, cluster_id: int) -> int:
        tmpl = parse_template(text)
        check_cluster(cluster_id)
        return self.cloud.allocate_vnet(tmpl)


def check_cluster(cluster_id: int) -> None:
    """The testbed has one cluster, ``default`` (0); -1 means it too (oned's NONE_CLUSTER)."""
    if cluster_id not in (-1, 0):
        raise OneRequestError(NO_EXISTS, f"Error getting cluster [{cluster_id}].", cluster_id)


def select(objs: list[Any], key: Callable[[Any], int], cloud: Cloud,
           flt: int, start: int, end: int, kind: str) -> list[Any]:
    """oned's pool filter (RequestManagerPoolInfoFilter: -4 the user's primary group, -3
    the user's, -2 all the user may USE, -1 the user's and their groups'; a uid >= 0 that
    user's, of what the caller may see), id range / page, newest first (DESC)."""
    if flt < -4:
        raise OneRequestError(XML_RPC_API, "Incorrect filter_flag")
    user = cloud.caller
    visible = [o for o in objs if cloud.may(kind, o, key(o), USE)]
    if flt == -4:
        objs = [o for o in visible if o.gid == user.gid]
    elif flt == -3:
        objs = [o for o in objs if o.uid == user.uid]
    elif flt == -2:
        objs = visible
    elif flt == -1:
        objs = [o for o in visible if o.uid == user.uid or o.gid in user.groups]
    else:
        objs = [o for o in visible if o.uid == flt]
    objs.sort(key=key, reverse=True)
    if end >= -1 and start != -1:
        return [o for o in objs if key(o) >= start and (end == -1 or key(o) <= end)]
    if end < -1:
        offset = max(start, 0)
        return objs[offset:offset - end]
    return objs


class _Handler(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/", "/RPC2")
    encode_threshold = None  # type: ignore[assignment]  # None turns it off; typeshed says int
    """Answers are never compressed, as oned's: its XML-RPC server (xmlrpc-c's Abyss) has no
    content coding. Python's server gzips an answer over 1,400 bytes for a client that accepts
    it (``requests``, pyone's transport, always says so), which cost the testbed and its
    client CPU oned's clients never pay (a VM pool listing in every controller pass)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("xmlrpc %s", format % args)


class RpcServer(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    """A threaded XML-RPC server whose every call goes through :class:`OneApi`."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 15
    """oned's listen() backlog (MAX_CONN_BACKLOG, 15 by default: OpenNebulaTemplate.cc,
    RequestManagerXRPC.cc); socketserver's 5 dropped the 6th of 8 concurrent connects, and
    the client's SYN was retried a second later."""

    def __init__(self, api: OneApi, host: str, port: int) -> None:
        super().__init__((host, port), requestHandler=_Handler, logRequests=False,
                         allow_none=False, encoding="utf-8")
        self.api = api

    def _dispatch(self, method: str, params: Any) -> Any:
        return self.api.dispatch(method, params)
