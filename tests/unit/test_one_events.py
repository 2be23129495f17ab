"""oned's state-change events: parsing what one_hm publishes, the subscriber (filtering,
an unreachable or lost publisher, reconnection), and the controller's wake-up on them.

The messages are shaped exactly as oned 7.x writes them (HookStateVM::format_message,
HookStateHost::format_message, one_hm.rb's keys); the publisher is a real ZeroMQ PUB socket.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from vcluster.cli.controller import _watch_events
from vcluster.config import parse_config
from vcluster.errors import ConfigError
from vcluster.metrics import Metrics
from vcluster.one_events import BadEvent, EventSubscriber, OneEvent, parse_event, parse_key, wakes
from vcluster.wake import WakeListener

# oned 7.4's payload of `onevm poweroff --hard 42` on host node07 (the VM element trimmed to
# the parts around USER_TEMPLATE; oned writes template values as CDATA)
VM_POWEROFF = (
    "<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE><HOOK_OBJECT>VM</HOOK_OBJECT>"
    "<STATE>POWEROFF</STATE><LCM_STATE>LCM_INIT</LCM_STATE><RESOURCE_ID>42</RESOURCE_ID>"
    "<REMOTE_HOST>node07</REMOTE_HOST><VM><ID>42</ID><UID>0</UID><GID>0</GID>"
    "<UNAME>oneadmin</UNAME><GNAME>oneadmin</GNAME><NAME>site-a-small-003</NAME>"
    "<STATE>8</STATE><LCM_STATE>0</LCM_STATE><PREV_STATE>3</PREV_STATE>"
    "<PREV_LCM_STATE>18</PREV_LCM_STATE><TEMPLATE><CPU><![CDATA[1]]></CPU></TEMPLATE>"
    "<USER_TEMPLATE><VCLUSTER_CLUSTER><![CDATA[site-a]]></VCLUSTER_CLUSTER>"
    "<VCLUSTER_JOB><![CDATA[17]]></VCLUSTER_JOB>"
    "<VCLUSTER_NODE><![CDATA[site-a-small-003]]></VCLUSTER_NODE></USER_TEMPLATE>"
    "<HISTORY_RECORDS/></VM></HOOK_MESSAGE>")
VM_KEY = b"EVENT STATE VM/POWEROFF/LCM_INIT/42 "
HOST_OFFLINE = (
    "<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE><HOOK_OBJECT>HOST</HOOK_OBJECT>"
    "<STATE>OFFLINE</STATE><REMOTE_HOST>node07</REMOTE_HOST><RESOURCE_ID>3</RESOURCE_ID>"
    "<HOST><ID>3</ID><NAME>node07</NAME><STATE>8</STATE></HOST></HOOK_MESSAGE>")
HOST_KEY = b"EVENT STATE HOST/OFFLINE//3 "


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


# --- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "parsed"), [
    (VM_KEY, ("VM", "POWEROFF", "LCM_INIT", 42)),
    ("EVENT STATE VM/ACTIVE/SHUTDOWN_POWEROFF/7 ", ("VM", "ACTIVE", "SHUTDOWN_POWEROFF", 7)),
    (HOST_KEY, ("HOST", "OFFLINE", "", 3)),
])
def test_state_keys_are_read(key: bytes | str, parsed: tuple[str, str, str, int]) -> None:
    assert parse_key(key) == parsed


@pytest.mark.parametrize("key", [
    b"EVENT VM 42/POWEROFF/LCM_INIT ", b"EVENT API one.vm.action 1", b"RETRY 12 arguments",
    b"EVENT STATE VM/POWEROFF/LCM_INIT/ ", b"EVENT STATE VM/POWEROFF/42 ", b"",
])
def test_other_keys_are_refused(key: bytes) -> None:
    with pytest.raises(BadEvent, match="not a state-change key"):
        parse_key(key)


def test_a_vm_event_names_the_vm_its_cluster_node_and_host() -> None:
    event = parse_event(VM_KEY, b64(VM_POWEROFF))
    assert event == OneEvent("VM", 42, "POWEROFF", "LCM_INIT", cluster="site-a",
                             node="site-a-small-003", host="node07")
    assert event.state_name == "POWEROFF"
    assert str(event) == "VM 42 POWEROFF (node site-a-small-003)"


def test_an_active_vm_is_named_by_its_lcm_state_and_an_undeployed_one_has_no_host() -> None:
    text = (VM_POWEROFF.replace("<STATE>POWEROFF</STATE><LCM_STATE>LCM_INIT</LCM_STATE>",
                                "<STATE>ACTIVE</STATE><LCM_STATE>SAVE_SUSPEND</LCM_STATE>")
            .replace("<REMOTE_HOST>node07</REMOTE_HOST>", "<REMOTE_HOST/>"))
    event = parse_event(b"EVENT STATE VM/ACTIVE/SAVE_SUSPEND/42 ", b64(text))
    assert (event.state_name, event.host) == ("SAVE_SUSPEND", "")


def test_a_host_event_names_the_host() -> None:
    event = parse_event(HOST_KEY, b64(HOST_OFFLINE))
    assert event == OneEvent("HOST", 3, "OFFLINE", host="node07")


def test_an_untagged_vm_has_no_cluster() -> None:
    text = VM_POWEROFF.split("<USER_TEMPLATE>")[0] + "<USER_TEMPLATE/></VM></HOOK_MESSAGE>"
    assert parse_event(VM_KEY, b64(text)).cluster == ""


@pytest.mark.parametrize(("key", "payload", "said"), [
    (VM_KEY, b"not base64!", "not base64 of XML"),
    (VM_KEY, b64("<HOOK_MESSAGE><unclosed>"), "not base64 of XML"),
    (VM_KEY, b64("<ARGUMENTS>x</ARGUMENTS>"), "not a state HOOK_MESSAGE"),
    (VM_KEY, b64(VM_POWEROFF.replace("<HOOK_TYPE>STATE", "<HOOK_TYPE>API")),
     "not a state HOOK_MESSAGE"),
    (b"EVENT STATE VM/POWEROFF/LCM_INIT/43 ", b64(VM_POWEROFF), "names another object"),
    (b"EVENT STATE VM/SUSPENDED/LCM_INIT/42 ", b64(VM_POWEROFF), "names another object"),
    (b"EVENT STATE HOST/POWEROFF//42 ", b64(VM_POWEROFF), "names another object"),
])
def test_bad_payloads_are_refused_in_one_line(key: bytes, payload: bytes, said: str) -> None:
    with pytest.raises(BadEvent, match=said) as caught:
        parse_event(key, payload)
    assert "\n" not in str(caught.value)


def test_only_this_clusters_vms_and_hosts_wake_the_controller() -> None:
    ours = OneEvent("VM", 1, "POWEROFF", "LCM_INIT", cluster="site-a")
    assert wakes(ours, "site-a")
    assert not wakes(ours, "site-b")
    assert not wakes(OneEvent("VM", 2, "POWEROFF", "LCM_INIT"), "site-a")
    assert wakes(OneEvent("HOST", 3, "OFFLINE"), "site-a")


# --- the subscriber against a real publisher ----------------------------------------------------


class Publisher:
    """oned's side: a PUB socket sending one_hm's two-frame messages."""

    def __init__(self, port: int = 0) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        if port:
            self.sock.bind(f"tcp://127.0.0.1:{port}")
            self.port = port
        else:
            self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


class Seen:
    def __init__(self) -> None:
        self.events: list[OneEvent] = []
        self.connects = 0
        self.changed = threading.Condition()

    def on_event(self, event: OneEvent) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def on_connect(self) -> None:
        with self.changed:
            self.connects += 1
            self.changed.notify_all()

    def wait(self, what: Callable[[], bool], timeout_s: float = 5.0) -> None:
        with self.changed:
            assert self.changed.wait_for(what, timeout_s), "not seen in time"


def wait_until(what: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.02)


def send_until_seen(pub: Publisher, seen: Seen, count: int, *frames: bytes) -> None:
    """Publish until the subscriber has ``count`` events (its subscription reaches the
    publisher a moment after the connection: PUB drops what nobody subscribed to yet)."""
    deadline = time.monotonic() + 5
    while len(seen.events) < count:
        assert time.monotonic() < deadline, "the subscriber saw nothing"
        pub.send(*frames)
        time.sleep(0.05)


@pytest.fixture
def pub() -> Iterator[Publisher]:
    p = Publisher()
    yield p
    p.close()


@pytest.fixture
def seen() -> Seen:
    return Seen()


def subscriber(endpoint: str, seen: Seen) -> EventSubscriber:
    sub = EventSubscriber(endpoint, seen.on_event, seen.on_connect, poll_s=0.05)
    sub.start()
    return sub


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "vcluster.one_events" and r.levelno == level]


def test_state_changes_arrive_and_api_events_are_not_subscribed(
        pub: Publisher, seen: Seen) -> None:
    sub = subscriber(pub.endpoint, seen)
    try:
        seen.wait(lambda: seen.connects == 1)
        send_until_seen(pub, seen, 1, VM_KEY, b64(VM_POWEROFF))
        seen.events.clear()
        pub.send(b"EVENT API one.vm.action 1", b64("<HOOK_MESSAGE/>"))
        pub.send(b"EVENT VM 42/POWEROFF/LCM_INIT ", b64(VM_POWEROFF))  # the same change
        pub.send(HOST_KEY, b64(HOST_OFFLINE))
        seen.wait(lambda: len(seen.events) == 1)
        time.sleep(0.2)
        assert [str(e) for e in seen.events] == ["HOST 3 OFFLINE"]
        assert sub.connected.is_set()
    finally:
        sub.stop()
    assert not sub.is_alive()


def test_a_malformed_message_or_a_failing_callback_is_logged_and_skipped(
        pub: Publisher, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vcluster.one_events")
    seen = Seen()
    calls: list[OneEvent] = []

    def on_event(event: OneEvent) -> None:
        calls.append(event)
        if len(calls) == 2:
            raise RuntimeError("a bug in the callback")
        seen.on_event(event)

    sub = EventSubscriber(pub.endpoint, on_event, seen.on_connect, poll_s=0.05)
    sub.start()
    try:
        seen.wait(lambda: seen.connects == 1)
        send_until_seen(pub, seen, 1, HOST_KEY, b64(HOST_OFFLINE))
        pub.send(VM_KEY, b"garbage")
        pub.send(VM_KEY)
        pub.send(VM_KEY, b64(VM_POWEROFF))  # the callback raises on this one
        pub.send(VM_KEY, b64(VM_POWEROFF))
        seen.wait(lambda: len(seen.events) == 2)
        assert sub.is_alive()
    finally:
        sub.stop()
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 2, warnings
    assert warnings[1] == "skipping an OpenNebula event of 1 frames (key and payload expected)"
    assert warnings[0].startswith("skipping an OpenNebula event: payload of VM 42 is not "
                                  "base64 of XML")
    assert any("handling OpenNebula event VM 42 POWEROFF" in r.getMessage()
               for r in caplog.records if r.levelno == logging.ERROR)


def test_an_unreachable_publisher_is_said_once_and_found_when_it_comes(
        caplog: pytest.LogCaptureFixture, seen: Seen) -> None:
    caplog.set_level(logging.INFO, logger="vcluster.one_events")
    port = _free_port()
    sub = subscriber(f"tcp://127.0.0.1:{port}", seen)
    try:
        wait_until(lambda: bool(messages(caplog, logging.WARNING)))
        time.sleep(1.0)  # ZeroMQ retries meanwhile: still one line
        assert messages(caplog, logging.WARNING) == [
            f"cannot reach OpenNebula's event publisher at tcp://127.0.0.1:{port} (HM_MAD's "
            "-p/-b in oned.conf); retrying, the periodic pass goes on meanwhile"]
        assert seen.connects == 0 and not sub.connected.is_set()
        late = Publisher(port)
        try:
            seen.wait(lambda: seen.connects == 1, timeout_s=10)
            send_until_seen(late, seen, 1, VM_KEY, b64(VM_POWEROFF))
        finally:
            late.close()
    finally:
        sub.stop()
    assert f"receiving events from OpenNebula's event publisher at tcp://127.0.0.1:{port}" \
        in messages(caplog, logging.INFO)


def test_a_lost_publisher_is_said_once_and_the_subscriber_reconnects_and_wakes_again(
        caplog: pytest.LogCaptureFixture, seen: Seen) -> None:
    caplog.set_level(logging.INFO, logger="vcluster.one_events")
    first = Publisher()
    port = first.port
    sub = subscriber(first.endpoint, seen)
    try:
        seen.wait(lambda: seen.connects == 1)
        send_until_seen(first, seen, 1, VM_KEY, b64(VM_POWEROFF))
        first.close()  # oned (its one_hm) restarts
        wait_until(lambda: not sub.connected.is_set())
        time.sleep(1.0)
        assert messages(caplog, logging.WARNING) == [
            f"lost OpenNebula's event publisher at tcp://127.0.0.1:{port}; reconnecting "
            "(the periodic pass goes on meanwhile)"]
        second = Publisher(port)
        try:
            seen.wait(lambda: seen.connects == 2, timeout_s=10)  # a wake to catch up
            send_until_seen(second, seen, 2, HOST_KEY, b64(HOST_OFFLINE))
        finally:
            second.close()
    finally:
        sub.stop()
    assert f"reconnected to OpenNebula's event publisher at tcp://127.0.0.1:{port}" \
        in messages(caplog, logging.INFO)


def _free_port() -> int:
    p = Publisher()
    port = p.port
    p.close()
    return port


# --- the controller: config key, filter, wake-up ------------------------------------------------

@pytest.mark.parametrize("endpoint", ["tcp://one.example.org:2101", "tcp://10.0.0.1:2101",
                                      "tcp://[::1]:2101"])
def test_the_events_key_takes_a_tcp_endpoint(endpoint: str) -> None:
    assert parse_config({"opennebula": {"events": endpoint}}).opennebula.events == endpoint
    assert parse_config({}).opennebula.events == ""


@pytest.mark.parametrize("endpoint", ["one.example.org:2101", "http://one:2101", "tcp://one",
                                      "tcp://one:2101; rm -rf /", "ipc:///tmp/x"])
def test_a_bad_events_key_is_named_in_one_line(endpoint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"opennebula": {"events": endpoint}})
    assert str(caught.value).count("\n") == 0
    assert "opennebula.events" in str(caught.value) and "tcp://HOST:PORT" in str(caught.value)


def test_events_of_this_clusters_vms_wake_the_controller_others_do_not(
        tmp_path: Path, pub: Publisher) -> None:
    config = parse_config({"opennebula": {"events": pub.endpoint},
                           "controller": {"cluster_name": "site-a",
                                          "state_dir": str(tmp_path)}})
    listener = WakeListener(str(tmp_path))
    metrics = Metrics()
    sub = _watch_events(config, metrics)
    assert sub is not None
    try:
        assert listener.wait(5), "no wake when the publisher was reached"
        other = VM_POWEROFF.replace("[site-a]", "[site-b]")
        deadline = time.monotonic() + 5
        while metrics.one_events.labels("vm", "no")._value.get() == 0:
            assert time.monotonic() < deadline, "the subscription never reached the publisher"
            pub.send(VM_KEY, b64(other))
            time.sleep(0.05)
        assert not listener.wait(0.3), "another cluster's VM woke the controller"
        sent = time.monotonic()
        pub.send(VM_KEY, b64(VM_POWEROFF))
        assert listener.wait(1.0), "this cluster's VM did not wake the controller"
        assert time.monotonic() - sent < 0.5
    finally:
        sub.stop()
        listener.close()
    assert "vcluster_one_events_total{object=\"vm\",woke=\"yes\"} 1.0" in metrics.text()


def test_no_events_key_no_subscriber(tmp_path: Path) -> None:
    assert _watch_events(parse_config({}), None) is None
