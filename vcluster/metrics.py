"""The controller's Prometheus metrics: one registry of its own, and what feeds it.

Why it exists: site admins scrape the controller to see why it scales as it does (VMs per
class and state, launches, boot failures, boot times) and whether its outside systems are
healthy (OpenNebula and Slurm call latency and errors, hook requests, heartbeat age). The
registry is not prometheus_client's global one, so tests and several controllers in one
process never share numbers. Only the controller imports this module: hooks stay light.
Labels are bounded (class, state, cause, method, command, kind); never a job id or a node.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter as Tally
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

if TYPE_CHECKING:
    from vcluster.config import Config
    from vcluster.controller.observe import Observed

BOOT_BUCKETS_S = (5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0,
                  900.0, 1800.0)
"""Histogram buckets of boot and node-ready times, seconds."""
CALL_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Histogram buckets of passes and of OpenNebula and Slurm calls, seconds."""


class Metrics:
    """Every metric the controller exports, in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.vms = Gauge("vcluster_vms", "VMs of this cluster OpenNebula lists, by node class "
                         "and OpenNebula state, as the last whole pass saw them",
                         ["class", "state"], registry=r)
        self.launches = Counter("vcluster_launches", "VMs asked of OpenNebula, by node class",
                                ["class"], registry=r)
        self.boot_failures = Counter(
            "vcluster_boot_failures", "Launches that failed before their node was up, by node "
            "class and cause (allocate: OpenNebula refused the VM; boot: the VM failed or "
            "timed out before slurmd registered)", ["class", "cause"], registry=r)
        self.boot_seconds = Histogram(
            "vcluster_boot_seconds", "From the VM's allocation to its node up in Slurm, "
            "seconds", ["class"], buckets=BOOT_BUCKETS_S, registry=r)
        self.node_ready_seconds = Histogram(
            "vcluster_node_ready_seconds", "From the launch (Slurm's resume request) to the "
            "node up in Slurm, seconds", ["class"], buckets=BOOT_BUCKETS_S, registry=r)
        self.pass_seconds = Histogram("vcluster_pass_seconds", "Duration of controller "
                                      "passes, seconds", buckets=CALL_BUCKETS_S, registry=r)
        self.passes_skipped = Counter("vcluster_passes_skipped", "Passes skipped because a "
                                      "read failed or planning failed", registry=r)
        self.one_call_seconds = Histogram(
            "vcluster_opennebula_call_seconds", "OpenNebula XML-RPC call attempts by method, "
            "seconds", ["method"], buckets=CALL_BUCKETS_S, registry=r)
        self.one_errors = Counter("vcluster_opennebula_errors", "Failed OpenNebula XML-RPC "
                                  "call attempts by method", ["method"], registry=r)
        self.slurm_command_seconds = Histogram(
            "vcluster_slurm_command_seconds", "Slurm commands by command, seconds",
            ["command"], buckets=CALL_BUCKETS_S, registry=r)
        self.slurm_errors = Counter("vcluster_slurm_errors", "Slurm commands that failed "
                                    "(could not start, timed out or exited non-zero) by "
                                    "command", ["command"], registry=r)
        self.hook_requests = Counter("vcluster_hook_requests", "Requests from Slurm's hooks "
                                     "served, by kind", ["kind"], registry=r)
        self.one_events = Counter(
            "vcluster_one_events", "State-change events received from OpenNebula's publisher "
            "(opennebula.events), by object (vm, host) and whether they woke the controller "
            "(a VM of this cluster, or any host)", ["object", "woke"], registry=r)
        self.heartbeat_age = Gauge("vcluster_heartbeat_age_seconds", "Age of the heartbeat "
                                   "the controller last wrote (hooks refuse when it is "
                                   "stale), seconds; NaN before the first", registry=r)
        self._beat_at = math.nan
        self._lock = threading.Lock()
        self.heartbeat_age.set_function(self._heartbeat_age_s)

    # --- what the controller reports ------------------------------------------------------

    def beat(self, at_monotonic: float | None = None) -> None:
        """The heartbeat was written (now, or at ``at_monotonic``)."""
        self._beat_at = time.monotonic() if at_monotonic is None else at_monotonic

    def _heartbeat_age_s(self) -> float:
        return time.monotonic() - self._beat_at

    def picture(self, observed: Observed, config: Config) -> None:
        """VMs by class and state from a whole pass's picture (the last one stays). A VM's
        class is its launch's, else its name's (an orphan), else ``unknown``."""
        class_of_vm = {la.vm_id: la.node_class for la in observed.launches
                       if la.vm_id is not None}

        def class_of(vm_id: int, vm_name: str) -> str:
            node_class = config.class_of_node(vm_name)
            return class_of_vm.get(vm_id) or (node_class.name if node_class else "unknown")

        tally = Tally((class_of(vm_id, vm.name), vm.state_name.lower())
                      for vm_id, vm in observed.vms.items())
        with self._lock:
            self.vms.clear()
            for (node_class, state), count in tally.items():
                self.vms.labels(node_class, state).set(count)

    def pass_done(self, duration_s: float, *, skipped: bool) -> None:
        self.pass_seconds.observe(duration_s)
        if skipped:
            self.passes_skipped.inc()

    def launched(self, node_class: str) -> None:
        self.launches.labels(node_class).inc()

    def boot_failed(self, node_class: str, cause: str) -> None:
        self.boot_failures.labels(node_class, cause).inc()

    def node_up(self, node_class: str, *, boot_s: float | None, ready_s: float) -> None:
        if boot_s is not None:
            self.boot_seconds.labels(node_class).observe(max(0.0, boot_s))
        self.node_ready_seconds.labels(node_class).observe(max(0.0, ready_s))

    def one_call(self, method: str, duration_s: float, failed: bool) -> None:
        """One OpenNebula call attempt (``method`` as ``vm.info``)."""
        self.one_call_seconds.labels(method).observe(duration_s)
        if failed:
            self.one_errors.labels(method).inc()

    def slurm_command(self, command: str, duration_s: float, failed: bool) -> None:
        """One Slurm command (``command`` as ``scontrol``)."""
        self.slurm_command_seconds.labels(command).observe(duration_s)
        if failed:
            self.slurm_errors.labels(command).inc()

    def one_event(self, obj: str, *, woke: bool) -> None:
        """One state-change event from oned (``obj``: ``VM`` or ``HOST``)."""
        self.one_events.labels(obj.lower(), "yes" if woke else "no").inc()

    def hook_request(self, kind: str) -> None:
        self.hook_requests.labels(kind).inc()

    # --- exposing them ----------------------------------------------------------------------

    def text(self) -> str:
        """The exposition text a scrape gets."""
        return generate_latest(self.registry).decode()

    def serve(self, address: str, port: int) -> Any:
        """Serve ``/metrics`` on ``address:port`` in a daemon thread; returns the server
        (``server_address`` holds the port bound; ``shutdown()`` stops it)."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        return server
