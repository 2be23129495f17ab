"""OpenNebula, behind a small client that speaks only vcluster's own errors.

Everything vcluster asks of oned goes through :class:`OneClient`: pyone does the XML-RPC
and parses the answers, and the client turns every failure into a
:class:`~vcluster.errors.OneError` whose message says what happened and what to do:
pyone's exceptions, and the ones pyone lets through unwrapped (``requests``' connection
errors and timeouts, ``xmlrpc.client.ProtocolError`` for a wrong URL, XML-RPC faults).
Temporary errors (unreachable, timed out, oned internal errors) are retried after each
delay of ``settings.retry_delays_s``; permanent ones are raised at once. Every failed
attempt is logged with its number.

The client is in three parts: the calls vcluster makes (here), the retrying and the
translation of errors (:mod:`vcluster.one_call`), and what reaches under pyone
(:mod:`vcluster.one_transport`, which says precisely how pyone is used).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from vcluster.errors import OneBadRequest, OneNotFound
from vcluster.one_call import OneCaller
from vcluster.one_site import (
    HostCapacity,
    VNetInfo,
    host_capacities_from_binding,
    host_states_from_binding,
    template_nics,
    vnet_from_binding,
)
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


class OneClient(OneCaller):
    """A small client for the oned calls vcluster needs.

    ``session`` is ``user:password``; by default it is read, on first use, from the
    ``ONE_AUTH`` file ``settings.auth_file``. Not thread-safe: one client per thread.
    """

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
