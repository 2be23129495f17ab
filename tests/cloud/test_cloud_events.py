"""The testbed cloud publishes state changes as oned's hook manager does (``--events-port``).

A real pyzmq SUB socket subscribes as any oned client would (``one_hm``'s keys, two frames,
base64 ``HOOK_MESSAGE``); the VM inside each payload must pass the official vm.xsd, and
vcluster's own parser must read every message the testbed sends.
"""

from __future__ import annotations

import base64
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator

import pytest
import zmq

from tests.cloud.conftest import VM_TEXT, Running
from tests.cloud.schemas import validate
from vcluster.one_events import parse_event

TAGGED_VM = VM_TEXT + 'VCLUSTER_CLUSTER = "vce"\nVCLUSTER_NODE = "vce-small-001"\n'


class Sub:
    """A SUB socket on the cloud's publisher, connected (handshake seen) before use."""

    def __init__(self, endpoint: str, prefix: bytes) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, prefix)
        monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.sock.connect(endpoint)
        assert monitor.poll(5000), "no handshake with the cloud's publisher"
        self.sock.disable_monitor()
        monitor.close(linger=0)
        time.sleep(0.2)  # the subscription travels to the publisher after the handshake

    def messages(self, until: Callable[[list[list[bytes]]], bool], timeout_s: float = 10.0
                 ) -> list[list[bytes]]:
        got: list[list[bytes]] = []
        deadline = time.monotonic() + timeout_s
        while not until(got):
            left_ms = int((deadline - time.monotonic()) * 1000)
            assert left_ms > 0, f"not seen within {timeout_s:g} s; got {keys_of(got)}"
            if self.sock.poll(left_ms):
                got.append(self.sock.recv_multipart())
        return got

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def keys_of(messages: list[list[bytes]]) -> list[str]:
    return [m[0].decode() for m in messages]


@pytest.fixture
def evented(start_cloud: Callable[..., Running]) -> Running:
    return start_cloud(events_port=0)


@pytest.fixture
def sub_all(evented: Running) -> Iterator[Sub]:
    assert evented.server.events is not None
    sub = Sub(evented.server.events.endpoint, b"EVENT ")
    yield sub
    sub.close()


def test_events_are_off_unless_asked(cloud: Running) -> None:
    assert cloud.server.events is None


def test_a_vm_lifecycle_publishes_every_state_change_under_both_of_oneds_keys(
        evented: Running, sub_all: Sub) -> None:
    vm_id = evented.one.vm.allocate(TAGGED_VM, False)
    evented.wait_state(vm_id, 3, 3)
    evented.one.vm.action("poweroff-hard", vm_id)
    evented.wait_state(vm_id, 8)
    evented.one.vm.action("terminate-hard", vm_id)
    done_key = f"EVENT STATE VM/DONE/LCM_INIT/{vm_id} ".encode()
    got = sub_all.messages(lambda got: any(m[0] == done_key for m in got))
    assert all(len(m) == 2 for m in got)
    changes = ["PENDING/LCM_INIT", "ACTIVE/PROLOG", "ACTIVE/BOOT", "ACTIVE/RUNNING",
               "ACTIVE/SHUTDOWN_POWEROFF", "POWEROFF/LCM_INIT", "ACTIVE/EPILOG",
               "DONE/LCM_INIT"]
    expected = [key for change in changes for key in (
        f"EVENT VM {vm_id}/{change} ", f"EVENT STATE VM/{change}/{vm_id} ")]
    assert keys_of(got) == expected
    # both keys of one change carry the same payload
    assert all(got[i][1] == got[i + 1][1] for i in range(0, len(got), 2))


def test_a_payload_is_oneds_hook_message_with_the_whole_vm(
        evented: Running, sub_all: Sub) -> None:
    vm_id = evented.one.vm.allocate(TAGGED_VM, False)
    evented.wait_state(vm_id, 3, 3)
    running_key = f"EVENT STATE VM/ACTIVE/RUNNING/{vm_id} ".encode()
    got = sub_all.messages(lambda got: any(m[0] == running_key for m in got))
    payload = next(m[1] for m in got if m[0] == running_key)
    assert b"\n" not in payload  # EVP_EncodeBlock: one line
    root = ET.fromstring(base64.b64decode(payload, validate=True))
    assert [child.tag for child in root] == [
        "HOOK_TYPE", "HOOK_OBJECT", "STATE", "LCM_STATE", "RESOURCE_ID", "REMOTE_HOST", "VM"]
    assert [root.findtext(t) for t in ("HOOK_TYPE", "HOOK_OBJECT", "STATE", "LCM_STATE",
                                       "RESOURCE_ID", "REMOTE_HOST")] == [
        "STATE", "VM", "ACTIVE", "RUNNING", str(vm_id), "host0"]
    vm = root.find("VM")
    assert vm is not None and vm.findtext("STATE") == "3" and vm.findtext("LCM_STATE") == "3"
    validate(ET.tostring(vm, encoding="unicode"), "vm.xsd", full_vms=True)
    pending = next(m[1] for m in got if m[0] == f"EVENT VM {vm_id}/PENDING/LCM_INIT ".encode())
    assert b"<REMOTE_HOST/>" in base64.b64decode(pending)  # not deployed yet


def test_vclusters_parser_reads_what_the_testbed_publishes(
        evented: Running, sub_all: Sub) -> None:
    vm_id = evented.one.vm.allocate(TAGGED_VM, False)
    evented.wait_state(vm_id, 3, 3)
    evented.one.vm.action("suspend", vm_id)
    evented.wait_state(vm_id, 5)
    key = f"EVENT STATE VM/SUSPENDED/LCM_INIT/{vm_id} ".encode()
    got = sub_all.messages(lambda got: any(m[0] == key for m in got))
    events = [parse_event(*m) for m in got if m[0].startswith(b"EVENT STATE VM/")]
    assert [e.state_name for e in events] == [
        "PENDING", "PROLOG", "BOOT", "RUNNING", "SAVE_SUSPEND", "SUSPENDED"]
    assert {(e.object, e.resource_id, e.cluster, e.node) for e in events} == {
        ("VM", vm_id, "vce", "vce-small-001")}
    assert events[-1].host == "host0"


def test_a_host_state_change_publishes_under_oneds_host_keys(
        evented: Running, sub_all: Sub) -> None:
    evented.one.host.status(1, 2)  # OFFLINE
    evented.one.host.status(1, 2)  # no change: nothing published
    evented.one.host.status(1, 0)  # enabled: MONITORED
    key = b"EVENT STATE HOST/MONITORED//1 "
    got = sub_all.messages(lambda got: any(m[0] == key for m in got))
    assert keys_of(got) == ["EVENT HOST 1/OFFLINE/ ", "EVENT STATE HOST/OFFLINE//1 ",
                            "EVENT HOST 1/MONITORED/ ", "EVENT STATE HOST/MONITORED//1 "]
    offline = parse_event(*got[1])
    assert (offline.object, offline.resource_id, offline.state, offline.host) == (
        "HOST", 1, "OFFLINE", "host1")
    root = ET.fromstring(base64.b64decode(got[1][1]))
    assert [child.tag for child in root] == [
        "HOOK_TYPE", "HOOK_OBJECT", "STATE", "REMOTE_HOST", "RESOURCE_ID", "HOST"]
    host = root.find("HOST")
    assert host is not None
    validate(ET.tostring(host, encoding="unicode"), "host.xsd")


def test_a_subscriber_filters_by_oneds_key_prefix(evented: Running) -> None:
    assert evented.server.events is not None
    first = evented.one.vm.allocate(VM_TEXT, False)
    evented.wait_state(first, 3, 3)
    sub = Sub(evented.server.events.endpoint, f"EVENT VM {first}/".encode())
    try:
        second = evented.one.vm.allocate(VM_TEXT, False)
        evented.wait_state(second, 3, 3)
        evented.one.vm.action("terminate-hard", first)
        evented.wait_state(first, 6)
        got = sub.messages(lambda got: any(b"/DONE/" in m[0] for m in got))
    finally:
        sub.close()
    assert keys_of(got) == [f"EVENT VM {first}/ACTIVE/SHUTDOWN ",
                            f"EVENT VM {first}/ACTIVE/EPILOG ",
                            f"EVENT VM {first}/DONE/LCM_INIT "]
