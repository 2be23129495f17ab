"""Placement of PENDING VMs on hosts, like OpenNebula's scheduler.

Why this exists: a VM allocated in oned is not placed at once: the scheduler runs when its
placement window holds SCHED_MAX_WND_LENGTH VMs or is SCHED_MAX_WND_TIME old, else on a
5 s timer; it keeps the hosts that have room (CPU, MEMORY) and match the VM's
SCHED_REQUIREMENTS, orders them by SCHED_RANK (default: fewest running VMs) and deploys.
A VM no host can take stays PENDING with SCHED_MESSAGE saying why, and is retried.
"""

from __future__ import annotations

import logging
import threading
import time

from vcluster.testbed.cloud import expr
from vcluster.testbed.cloud.cloud import PCI_UNAVAILABLE, Cloud, capacity_error, fits, log_time
from vcluster.testbed.cloud.model import ACTIVE, HOST_MONITORED, LCM, PENDING, VM, Host

log = logging.getLogger(__name__)

DEFAULT_RANK = "-RUNNING_VMS"


def choose_host(vm: VM, hosts: list[Host]) -> tuple[Host | None, str]:
    """The best host for ``vm``, or None and the SCHED_MESSAGE text explaining why."""
    if not hosts:
        return None, "No hosts enabled to run VMs"
    requirements = vm.user_template.get_str("SCHED_REQUIREMENTS")
    automatic = vm.template.get_str("AUTOMATIC_REQUIREMENTS")
    rank_expr = vm.user_template.get_str("SCHED_RANK") or DEFAULT_RANK
    fitting = [h for h in hosts if fits(vm, h)]
    if not fitting:
        if all(capacity_error(vm, h) == PCI_UNAVAILABLE for h in hosts):
            # oned 7.4's rank scheduler (SchedulerFailure::log_failures, HOST_PCI)
            ids = ",".join(str(h.host_id) for h in hosts)
            return None, f"[HOST] Unavailable PCI devices on hosts: {ids}"
        return None, "No host with enough capacity to deploy the VM"
    try:
        matching = [h for h in fitting if expr.matches(automatic, h.attribute)
                    and expr.matches(requirements, h.attribute)]
    except expr.ExprError as exc:
        return None, f"Error evaluating SCHED_REQUIREMENTS: {requirements}: {exc}"
    if not matching:
        return None, f"No host meets capacity and SCHED_REQUIREMENTS: {requirements}"
    try:
        ranked = sorted(matching, key=lambda h: (-expr.rank(rank_expr, h.attribute), h.host_id))
    except expr.ExprError as exc:
        return None, f"Error evaluating SCHED_RANK: {rank_expr}: {exc}"
    return ranked[0], ""


class Scheduler:
    """The placement loop of one :class:`Cloud`."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.settings = cloud.settings.scheduler
        self._cond = threading.Condition()
        self._window: list[float] = []
        """Monotonic times at which VMs entered the current window."""
        self._last_run = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        cloud.on_pending = self.notify

    def start(self) -> None:
        with self.cloud.lock:
            if any(vm.state == PENDING for vm in self.cloud.vms.values()):
                self.notify()
        self._thread = threading.Thread(target=self._loop, name="cloud-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def notify(self) -> None:
        """A VM became PENDING: it joins the placement window."""
        with self._cond:
            self._window.append(time.monotonic())
            self._cond.notify()

    def _due_in(self) -> float:
        now = time.monotonic()
        timer_due = self._last_run + self.settings.timer_s - now
        if not self._window:
            return timer_due
        if len(self._window) >= self.settings.max_wnd_length:
            return 0.0
        return min(timer_due, self._window[0] + self.settings.max_wnd_time_s - now)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                wait_s = self._due_in()
                if wait_s > 0:
                    self._cond.wait(timeout=min(wait_s, 1.0))
                    continue
                self._window.clear()
                self._last_run = time.monotonic()
            try:
                self.run_once()
            except Exception:  # the loop must survive a bad VM
                log.exception("scheduler pass failed")

    def run_once(self) -> int:
        """Place every PENDING VM that fits somewhere; returns how many were placed."""
        placed = 0
        with self.cloud.lock:
            # only a MONITORED host takes VMs (not one DISABLED, OFFLINE or in ERROR)
            hosts = sorted((h for h in self.cloud.hosts.values() if h.state == HOST_MONITORED),
                           key=lambda h: h.host_id)
            pending = sorted((vm for vm in self.cloud.vms.values() if vm.state == PENDING),
                             key=lambda vm: vm.vm_id)
            for vm in pending:
                host, message = choose_host(vm, hosts)
                if host is None:
                    vm.user_template.replace("SCHED_MESSAGE", f"{log_time()} : {message}")
                    self.cloud.store.put_vm(vm)
                    continue
                self.cloud.place(vm, host)
                placed += 1
            self._reschedule(hosts)
        return placed

    def _reschedule(self, hosts: list[Host]) -> None:
        """RUNNING VMs flagged with resched move to another host if one suits them (cold
        migration, as oned's scheduler does with LIVE_RESCHEDS=0)."""
        flagged = [vm for vm in self.cloud.vms.values()
                   if vm.resched and vm.state == ACTIVE and vm.lcm_state == LCM["RUNNING"]]
        for vm in sorted(flagged, key=lambda v: v.vm_id):
            host, _message = choose_host(vm, [h for h in hosts if h.host_id != vm.hid])
            if host is not None:
                vm.resched = 0
                self.cloud.migrate(vm.vm_id, host.host_id, live=False, enforce=False)
