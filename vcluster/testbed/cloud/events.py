"""oned's state-change events, published as its hook manager driver (``one_hm``) does.

Why this exists: a site whose oned publishes events lets vcluster react to a VM acted on
behind its back within a second (``opennebula.events``); the testbed must emit the same
stream so that this path is tried end to end. The facts (keys, two frames, base64 of a
``HOOK_MESSAGE`` holding the whole object) are oned's, summed up in :mod:`vcluster.one_events`
(src/hm/HookStateVM.cc, HookStateHost.cc, src/hm_mad/one_hm.rb). Like oned, every VM
allocate and every change of STATE or LCM_STATE publishes, and every host state change.
"""

from __future__ import annotations

import base64
import logging
import threading

import zmq

from vcluster.testbed.cloud.model import (
    HOST_DISABLED,
    HOST_ERROR,
    HOST_MONITORED,
    HOST_OFFLINE,
    LCM_NAMES,
    STATE_NAMES,
    VM,
    Host,
)
from vcluster.testbed.cloud.xmlgen import host_xml, vm_xml

log = logging.getLogger(__name__)

HOST_STATE_NAMES = {0: "INIT", HOST_MONITORED: "MONITORED", HOST_ERROR: "ERROR",
                    HOST_DISABLED: "DISABLED", HOST_OFFLINE: "OFFLINE"}
"""Host::state_to_str (oned 7.x: the MONITORING_* states are gone, named "")."""


def _b64(xml: str) -> bytes:
    # EVP_EncodeBlock: standard alphabet, padded, no line breaks
    return base64.b64encode(xml.encode("utf-8"))


def vm_message(vm: VM) -> tuple[list[bytes], bytes]:
    """HookStateVM::format_message and one_hm's keys: (keys, payload) of ``vm``'s state."""
    state = STATE_NAMES.get(vm.state, "")
    lcm = LCM_NAMES[vm.lcm_state] if vm.lcm_state < len(LCM_NAMES) else ""
    host = vm.history[-1].hostname if vm.history else ""
    service = vm.user_template.get_str("SERVICE_ID")
    payload = ("<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE><HOOK_OBJECT>VM</HOOK_OBJECT>"
               f"<STATE>{state}</STATE><LCM_STATE>{lcm}</LCM_STATE>"
               f"<RESOURCE_ID>{vm.vm_id}</RESOURCE_ID>"
               + (f"<SERVICE_ID>{service}</SERVICE_ID>" if service else "")
               + (f"<REMOTE_HOST>{host}</REMOTE_HOST>" if vm.history else "<REMOTE_HOST/>")
               + vm_xml(vm) + "</HOOK_MESSAGE>")
    keys = [f"EVENT VM {vm.vm_id}/{state}/{lcm} ", f"EVENT STATE VM/{state}/{lcm}/{vm.vm_id} "]
    if service:
        keys.append(f"EVENT SERVICE {service} ")
    return [k.encode() for k in keys], _b64(payload)


def host_message(host: Host) -> tuple[list[bytes], bytes]:
    """HookStateHost::format_message and one_hm's keys (a host has no LCM state: "")."""
    state = HOST_STATE_NAMES.get(host.state, "")
    payload = ("<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE><HOOK_OBJECT>HOST</HOOK_OBJECT>"
               f"<STATE>{state}</STATE><REMOTE_HOST>{host.name}</REMOTE_HOST>"
               f"<RESOURCE_ID>{host.host_id}</RESOURCE_ID>" + host_xml(host)
               + "</HOOK_MESSAGE>")
    keys = [f"EVENT HOST {host.host_id}/{state}/ ", f"EVENT STATE HOST/{state}//{host.host_id} "]
    return [k.encode() for k in keys], _b64(payload)


class EventPublisher:
    """A ZeroMQ PUB socket bound like one_hm's (``tcp://host:port``; port 0: a free one)."""

    def __init__(self, host: str, port: int) -> None:
        self._ctx = zmq.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._lock = threading.Lock()  # one_hm's @publisher_lock: one sender at a time
        try:
            if port == 0:
                self.port = self._pub.bind_to_random_port(f"tcp://{host}")
            else:
                self._pub.bind(f"tcp://{host}:{port}")
                self.port = port
        except zmq.ZMQError as exc:
            self.close()
            raise OSError(exc.errno, exc.strerror) from exc
        self.endpoint = f"tcp://{host}:{self.port}"
        self.sent = 0

    def publish(self, keys: list[bytes], payload: bytes) -> None:
        """Each key with the payload, as one_hm does (a subscriber not keeping up loses
        messages past the high-water mark; never blocks)."""
        with self._lock:
            for key in keys:
                try:
                    self._pub.send_multipart([key, payload], zmq.NOBLOCK)
                    self.sent += 1
                except zmq.ZMQError as exc:
                    log.warning("cannot publish %s: %s", key.decode(errors="replace"), exc)

    def vm_changed(self, vm: VM) -> None:
        self.publish(*vm_message(vm))

    def host_changed(self, host: Host) -> None:
        self.publish(*host_message(host))

    def close(self) -> None:
        with self._lock:
            self._pub.close(linger=0)
        self._ctx.term()
