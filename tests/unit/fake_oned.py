"""A tiny oned for unit tests: real XML-RPC on loopback, a handful of methods, oned's shapes.

It is a fake implementing the same protocol (``[True, value, 0]`` / ``[False, message,
code, resp_id, 0]``, oned's messages and codes), not a patch of the client: the client
under test talks to it over a real socket through real pyone. Failures can be queued per
method to exercise the client's retries. The full server is the testbed cloud, used by
the integration tests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

AUTHENTICATION, NO_EXISTS, ACTION, INTERNAL = 0x100, 0x400, 0x800, 0x2000


def vm_xml(vm_id: int, name: str, *, state: int = 3, lcm_state: int = 3,
           user_template: str = "", nics: tuple[str, ...] = ("10.111.0.100",),
           context: str = "", hosts: tuple[str, ...] = (), stime: int = 1763700000,
           etime: int = 0) -> str:
    nic_xml = "".join(
        f"<NIC><IP><![CDATA[{ip}]]></IP><NETWORK><![CDATA[vnet]]></NETWORK>"
        f"<NIC_ID><![CDATA[{i}]]></NIC_ID></NIC>" for i, ip in enumerate(nics)
    )
    history = "<HISTORY_RECORDS>" + "".join(
        f"<HISTORY><OID>{vm_id}</OID><SEQ>{seq}</SEQ><HOSTNAME>{host}</HOSTNAME></HISTORY>"
        for seq, host in enumerate(hosts)) + "</HISTORY_RECORDS>" if hosts else ""
    return (
        f"<VM><ID>{vm_id}</ID><UID>0</UID><GID>0</GID><UNAME>oneadmin</UNAME>"
        f"<GNAME>oneadmin</GNAME><NAME>{name}</NAME><LAST_POLL>0</LAST_POLL>"
        f"<STATE>{state}</STATE><LCM_STATE>{lcm_state}</LCM_STATE><PREV_STATE>{state}</PREV_STATE>"
        f"<PREV_LCM_STATE>{lcm_state}</PREV_LCM_STATE><RESCHED>0</RESCHED>"
        f"<STIME>{stime}</STIME><ETIME>{etime}</ETIME><DEPLOY_ID></DEPLOY_ID><MONITORING/>"
        f"<TEMPLATE><CONTEXT>{context}</CONTEXT><CPU><![CDATA[1]]></CPU>"
        f"<MEMORY><![CDATA[512]]></MEMORY>{nic_xml}<VMID><![CDATA[{vm_id}]]></VMID></TEMPLATE>"
        f"<USER_TEMPLATE>{user_template}</USER_TEMPLATE>{history}</VM>"
    )


class _QuietHandler(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/RPC2",)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass


class FakeOned:
    """oned's answers for a few methods; ``vms`` maps id -> ``<VM>`` XML."""

    def __init__(self, session: str = "oneadmin:opensesame") -> None:
        self.session = session
        self.vms: dict[int, str] = {}
        self.templates: dict[int, str] = {}
        self.failures: dict[str, list[tuple[str, int]]] = {}
        self.calls: list[str] = []
        self.bare_answers = False  # answer like a generic XML-RPC server, not like oned
        self.server = SimpleXMLRPCServer(("127.0.0.1", 0), requestHandler=_QuietHandler,
                                         logRequests=False)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/RPC2"
        self.template_bodies: dict[int, str] = {}
        """Template id -> the XML inside its <TEMPLATE> (NICs...)."""
        self.vnets: list[str] = []
        """<VNET> elements of one.vnpool.info."""
        for name in ("system.version", "vm.info", "vm.allocate", "vm.action",
                     "vmpool.infoextended", "templatepool.info", "template.info",
                     "vnpool.info"):
            self.server.register_function(self._wrap(name), f"one.{name}")

    def fail_next(self, method: str, message: str, code: int, times: int = 1) -> None:
        self.failures.setdefault(method, []).extend([(message, code)] * times)

    def _wrap(self, name: str) -> Any:
        handler = getattr(self, "_" + name.replace(".", "_"))

        def call(session: str, *args: Any) -> Any:
            method = f"one.{name}"
            self.calls.append(method)
            if session != self.session:
                return [False, f"[{method}] User couldn't be authenticated, aborting call.",
                        AUTHENTICATION, -1, 0]
            queued = self.failures.get(method)
            if queued:
                message, code = queued.pop(0)
                return [False, message, code, -1, 0]
            return handler(*args)

        return call

    def _system_version(self) -> Any:
        return "7.4.0" if self.bare_answers else [True, "7.4.0", 0]

    def _vm_info(self, vm_id: int, decrypt: bool = False) -> list[Any]:
        if vm_id not in self.vms:
            return [False, f"[one.vm.info] Error getting virtual machine [{vm_id}].",
                    NO_EXISTS, vm_id, 0]
        return [True, self.vms[vm_id], 0]

    def _vm_allocate(self, text: str, hold: bool = False) -> list[Any]:
        vm_id = max(self.vms, default=-1) + 1
        self.vms[vm_id] = vm_xml(vm_id, f"one-{vm_id}", state=2 if hold else 1, lcm_state=0)
        return [True, vm_id, 0]

    def _vm_action(self, action: str, vm_id: int) -> list[Any]:
        if vm_id not in self.vms:
            return [False, f"[one.vm.action] Error getting virtual machine [{vm_id}].",
                    NO_EXISTS, vm_id, 0]
        return [False, f'[one.vm.action] Error performing action "{action}": This action '
                "is not available for state PENDING", ACTION, -1, 0]

    def _vmpool_infoextended(self, flt: int, start: int, end: int, state: int) -> list[Any]:
        body = "".join(self.vms[i] for i in sorted(self.vms, reverse=True))
        return [True, f"<VM_POOL>{body}</VM_POOL>", 0]

    def _templatepool_info(self, flt: int, start: int, end: int) -> list[Any]:
        body = "".join(
            f"<VMTEMPLATE><ID>{i}</ID><UID>0</UID><GID>0</GID><UNAME>oneadmin</UNAME>"
            f"<GNAME>oneadmin</GNAME><NAME>{name}</NAME><REGTIME>0</REGTIME>"
            "<TEMPLATE><MEMORY><![CDATA[512]]></MEMORY></TEMPLATE></VMTEMPLATE>"
            for i, name in sorted(self.templates.items(), reverse=True)
        )
        return [True, f"<VMTEMPLATE_POOL>{body}</VMTEMPLATE_POOL>", 0]


    def _template_info(self, tmpl_id: int, extended: bool = False,
                       decrypt: bool = False) -> list[Any]:
        if tmpl_id not in self.templates:
            return [False, f"[one.template.info] Error getting VM template [{tmpl_id}].",
                    NO_EXISTS, tmpl_id, 0]
        return [True, f"<VMTEMPLATE><ID>{tmpl_id}</ID><UID>0</UID><GID>0</GID>"
                f"<UNAME>oneadmin</UNAME><GNAME>oneadmin</GNAME>"
                f"<NAME>{self.templates[tmpl_id]}</NAME><REGTIME>0</REGTIME>"
                f"<TEMPLATE>{self.template_bodies.get(tmpl_id, '')}</TEMPLATE></VMTEMPLATE>", 0]

    def _vnpool_info(self, flt: int, start: int, end: int) -> list[Any]:
        return [True, f"<VNET_POOL>{''.join(self.vnets)}</VNET_POOL>", 0]


def vnet_xml(vnet_id: int, name: str, owner: str, size: int, used: int) -> str:
    """A <VNET> of one.vnpool.info with one address range of ``size`` and ``used`` leases."""
    return (f"<VNET><ID>{vnet_id}</ID><UID>0</UID><GID>0</GID><UNAME>{owner}</UNAME>"
            f"<GNAME>oneadmin</GNAME><NAME>{name}</NAME><USED_LEASES>{used}</USED_LEASES>"
            f"<AR_POOL><AR><AR_ID>0</AR_ID><IP>10.1.0.2</IP><SIZE>{size}</SIZE>"
            f"<TYPE>IP4</TYPE></AR></AR_POOL></VNET>")


@contextmanager
def running_fake_oned(session: str = "oneadmin:opensesame") -> Iterator[FakeOned]:
    fake = FakeOned(session)
    thread = threading.Thread(target=fake.server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        thread.join(timeout=5)
