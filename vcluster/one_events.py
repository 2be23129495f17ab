"""OpenNebula's state-change events: a ZeroMQ subscriber that wakes the controller.

Why it exists: polling oned every few seconds makes vcluster see a VM powered off, suspended
or terminated behind its back seconds late; oned already publishes every state change. This
module reads that stream and says "something of ours changed" at once; the controller then
runs a pass, which reads oned itself. An event is only a wake-up, never the state: PUB/SUB
loses whatever is published while nobody is connected, so the periodic pass stays, and every
(re)connection wakes the controller once to catch up.

What oned sends (its source decides: src/hm/HookStateVM.cc, HookStateHost.cc,
src/vm/VirtualMachinePool.cc, src/host/HostPool.cc, src/hm_mad/one_hm.rb, share/etc/oned.conf;
the same in 6.10 and 7.x):

- oned hands the hook manager driver (``one_hm``) an event for every VM whose STATE or
  LCM_STATE differs from the one last written (checked at every pool update, so one per
  change), for every VM allocated, and likewise for hosts; whether or not hooks are defined.
- ``one_hm`` publishes each on a ZeroMQ PUB socket bound to ``tcp://<-b>:<-p>`` (oned.conf
  ``HM_MAD = [ EXECUTABLE = "one_hm", ARGUMENTS = "-p 2101 -l 2102 -b 127.0.0.1" ]``: port
  2101, loopback only unless the site changes ``-b``), as two frames: a key, then the payload.
- Keys, each change under two (note the trailing space, so that ``.../4 `` is not ``.../42``)::

      EVENT VM <id>/<STATE>/<LCM_STATE>          EVENT STATE VM/<STATE>/<LCM_STATE>/<id>
      EVENT HOST <id>/<STATE>/                   EVENT STATE HOST/<STATE>//<id>

  (plus ``EVENT SERVICE <id>`` for a VM of a OneFlow service, ``EVENT API <method> <0|1>``
  for API calls). STATE and LCM_STATE are names (``ACTIVE``/``RUNNING``, ``POWEROFF``/
  ``LCM_INIT``). A subscriber filters by key prefix: ``EVENT STATE VM/`` gets each VM change
  once.
- Payload: base64 (no line breaks) of ``<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE>
  <HOOK_OBJECT>VM</HOOK_OBJECT><STATE>..</STATE><LCM_STATE>..</LCM_STATE>
  <RESOURCE_ID>id</RESOURCE_ID>[<SERVICE_ID>..</SERVICE_ID>]<REMOTE_HOST>host</REMOTE_HOST>
  <VM>..the whole VM, as one.vm.info..</VM></HOOK_MESSAGE>`` (``<REMOTE_HOST/>`` before the
  first deployment). A host's: HOOK_TYPE, HOOK_OBJECT HOST, STATE, REMOTE_HOST (its name),
  RESOURCE_ID, then ``<HOST>``. So a VM's ``USER_TEMPLATE/VCLUSTER_CLUSTER`` tells whose it is.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger(__name__)

DEFAULT_PORT = 2101
"""``one_hm``'s publisher port in oned.conf's HM_MAD (``-p``)."""
SUBSCRIPTIONS = (b"EVENT STATE VM/", b"EVENT STATE HOST/")
"""Each VM and host state change once (not the ``EVENT VM <id>/...`` copy, not API calls)."""
POLL_S = 0.5
"""How often the subscriber thread looks at its stop flag, seconds."""
RECONNECT_MAX_S = 5.0
"""ZeroMQ retries a lost publisher after 0.1 s, doubling up to this, seconds."""
HEARTBEAT_S = 5.0
"""ZMTP heartbeat: a publisher silent (gone, not just quiet) for 3 of these is lost, seconds."""


class BadEvent(ValueError):
    """A message that is not an oned state-change event as ``one_hm`` publishes it."""


@dataclass(frozen=True)
class OneEvent:
    """One state change of a VM or a host, as oned published it."""

    object: str
    """``VM`` or ``HOST``."""
    resource_id: int
    state: str
    """oned's state name: ``ACTIVE``, ``POWEROFF``... for a VM; ``MONITORED``... for a host."""
    lcm_state: str = ""
    """A VM's LCM state name (``RUNNING``, ``LCM_INIT`` when not ACTIVE); "" for a host."""
    cluster: str = ""
    """The VM's ``VCLUSTER_CLUSTER`` tag ("" if it has none, and for a host)."""
    node: str = ""
    """The VM's ``VCLUSTER_NODE`` tag."""
    host: str = ""
    """REMOTE_HOST: the host the VM is on ("" before its first deployment), or the host."""

    @property
    def state_name(self) -> str:
        """The name vcluster shows (oned's state_str: the LCM state while ACTIVE)."""
        return self.lcm_state if self.state == "ACTIVE" and self.lcm_state else self.state

    def __str__(self) -> str:
        tag = f" (node {self.node})" if self.node else ""
        return f"{self.object} {self.resource_id} {self.state_name}{tag}"


def wakes(event: OneEvent, cluster_name: str) -> bool:
    """Whether ``event`` is worth a pass now: a change of a VM tagged with this cluster, or of
    any host (rare; a host OFFLINE or in ERROR is an event for the VMs on it)."""
    return event.object == "HOST" or (event.object == "VM" and event.cluster == cluster_name)


def parse_key(key: bytes | str) -> tuple[str, str, str, int]:
    """``EVENT STATE VM/ACTIVE/RUNNING/42 `` -> ``("VM", "ACTIVE", "RUNNING", 42)``."""
    text = key.decode("ascii", "replace") if isinstance(key, bytes) else key
    prefix = "EVENT STATE "
    parts = text.strip().removeprefix(prefix).split("/") if text.startswith(prefix) else []
    if len(parts) != 4 or not parts[0] or not parts[1] or not parts[3].isdigit():
        raise BadEvent(f"not a state-change key: {text[:80]!r}")
    return parts[0], parts[1], parts[2], int(parts[3])


def parse_event(key: bytes | str, payload: bytes | str) -> OneEvent:
    """The event of one published message (key frame, payload frame); :class:`BadEvent` if
    the key or the payload is not what ``one_hm`` sends, or they disagree."""
    obj, state, lcm_state, resource_id = parse_key(key)
    try:
        root = ET.fromstring(base64.b64decode(payload, validate=True))
    except (binascii.Error, ValueError, ET.ParseError) as exc:
        raise BadEvent(f"payload of {obj} {resource_id} is not base64 of XML: {exc}") from None
    if root.tag != "HOOK_MESSAGE" or root.findtext("HOOK_TYPE") != "STATE":
        raise BadEvent(f"payload of {obj} {resource_id} is not a state HOOK_MESSAGE")
    if (root.findtext("HOOK_OBJECT"), root.findtext("RESOURCE_ID"), root.findtext("STATE")) \
            != (obj, str(resource_id), state):
        raise BadEvent(f"payload of {obj} {resource_id} names another object or state")
    if obj != "VM":
        return OneEvent(obj, resource_id, state, host=root.findtext("REMOTE_HOST") or "")
    return OneEvent(obj, resource_id, state, lcm_state=root.findtext("LCM_STATE") or lcm_state,
                    cluster=(root.findtext("VM/USER_TEMPLATE/VCLUSTER_CLUSTER") or "").strip(),
                    node=(root.findtext("VM/USER_TEMPLATE/VCLUSTER_NODE") or "").strip(),
                    host=root.findtext("REMOTE_HOST") or "")


class EventSubscriber(threading.Thread):
    """Subscribes to ``endpoint`` and calls ``on_event`` for each state change, and
    ``on_connect`` each time the publisher is (re)connected (events may have been missed).

    Never raises out of its thread: a publisher that cannot be reached or is lost is logged
    once, in one line, and ZeroMQ keeps retrying; a malformed message is logged and skipped.
    Callbacks run in this thread and must be quick (a wake-up).
    """

    def __init__(self, endpoint: str, on_event: Callable[[OneEvent], None],
                 on_connect: Callable[[], object] = lambda: None, *,
                 poll_s: float = POLL_S) -> None:
        super().__init__(name="one-events", daemon=True)
        self.endpoint = endpoint
        self.on_event = on_event
        self.on_connect = on_connect
        self.poll_s = poll_s
        self.connected = threading.Event()
        """Set while the publisher is connected (for tests and status)."""
        self.received = 0
        self._stop_flag = threading.Event()
        self._ever_connected = False
        self._said_unreachable = False

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop_flag.set()
        if self.is_alive():
            self.join(timeout=timeout_s)

    def run(self) -> None:
        try:
            self._run()
        except Exception:  # the controller outlives a bug here: it still polls
            log.exception("OpenNebula event subscriber stopped; passes every interval go on")

    def _run(self) -> None:
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RECONNECT_IVL_MAX, int(RECONNECT_MAX_S * 1000))
        sub.setsockopt(zmq.HEARTBEAT_IVL, int(HEARTBEAT_S * 1000))
        sub.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(3 * HEARTBEAT_S * 1000))
        sub.setsockopt(zmq.TCP_KEEPALIVE, 1)
        for prefix in SUBSCRIPTIONS:
            sub.setsockopt(zmq.SUBSCRIBE, prefix)
        monitor = sub.get_monitor_socket()
        try:
            sub.connect(self.endpoint)
            log.info("subscribing to OpenNebula's state-change events at %s", self.endpoint)
            poller = zmq.Poller()
            poller.register(sub, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            while not self._stop_flag.is_set():
                ready = dict(poller.poll(int(self.poll_s * 1000)))
                if monitor in ready:
                    self._monitor(monitor)
                if sub in ready:
                    self._receive(sub)
        finally:
            sub.disable_monitor()
            monitor.close(linger=0)
            sub.close(linger=0)
            ctx.term()

    def _monitor(self, monitor: zmq.Socket[bytes]) -> None:
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected.set()
                self._said_unreachable = False
                log.info("%s OpenNebula's event publisher at %s", "reconnected to"
                         if self._ever_connected else "receiving events from", self.endpoint)
                self._ever_connected = True
                self.on_connect()
            elif kind == zmq.EVENT_DISCONNECTED and self.connected.is_set():
                self.connected.clear()
                self._said_unreachable = True
                log.warning("lost OpenNebula's event publisher at %s; reconnecting (the "
                            "periodic pass goes on meanwhile)", self.endpoint)
            elif kind == zmq.EVENT_CONNECT_RETRIED and not self.connected.is_set() \
                    and not self._said_unreachable:
                self._said_unreachable = True
                log.warning("cannot reach OpenNebula's event publisher at %s (HM_MAD's -p/-b "
                            "in oned.conf); retrying, the periodic pass goes on meanwhile",
                            self.endpoint)

    def _receive(self, sub: zmq.Socket[bytes]) -> None:
        while True:
            try:
                frames = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.received += 1
            if len(frames) != 2:
                log.warning("skipping an OpenNebula event of %d frames (key and payload "
                            "expected)", len(frames))
                continue
            try:
                event = parse_event(frames[0], frames[1])
            except BadEvent as exc:
                log.warning("skipping an OpenNebula event: %s", exc)
                continue
            log.debug("OpenNebula event: %s", event)
            try:
                self.on_event(event)
            except Exception:  # one bad callback must not end the subscription
                log.exception("handling OpenNebula event %s failed", event)
