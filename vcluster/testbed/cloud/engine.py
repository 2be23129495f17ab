"""Time in the testbed cloud: a timer wheel for life-cycle phases, driver calls, monitoring.

Why this exists: oned's transitions take time (PROLOG, BOOT, SHUTDOWN, EPILOG...) and the RPC
thread must never wait for them. Each transitional phase gets a timer; when it fires, the
phase's driver call runs on a small worker pool (outside the cloud's lock, one call at a
time per VM; a power cut for ``-hard`` actions and for VMs that are not running), then the
VM moves on (or to the failure state, with ERROR in its template).
A monitoring thread asks the driver whether RUNNING VMs are alive: a dead one goes UNKNOWN,
an UNKNOWN one that is alive again goes back to RUNNING.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from vcluster.testbed.cloud.cloud import Cloud
from vcluster.testbed.cloud.drivers.base import DriverError
from vcluster.testbed.cloud.lifecycle import PHASES, RUNNING, UNKNOWN
from vcluster.testbed.cloud.model import ACTIVE, DONE, VM, now_s

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 10.0
"""How often the leftovers of DONE VMs are looked for (and removed)."""

ERROR_PREFIX = {"boot": "Error deploying virtual machine", "resume": "Error restoring VM",
                "shutdown": "Error shutting down VM", "poweroff": "Error powering off VM",
                "suspend": "Error saving VM state"}


class Engine:
    """Runs the timers, driver calls and monitoring of one :class:`Cloud`."""

    def __init__(self, cloud: Cloud, *, workers: int = 8) -> None:
        self.cloud = cloud
        self._heap: list[tuple[float, int, int, int]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cloud-driver")
        self._vm_locks: dict[int, threading.Lock] = {}
        self._threads: list[threading.Thread] = []
        cloud.on_phase = self.schedule_phase
        cloud.on_reboot = self.reboot

    def start(self) -> None:
        with self.cloud.lock:
            for vm in self.cloud.vms.values():
                if vm.state == ACTIVE and vm.lcm_state in PHASES:
                    self.schedule_phase(vm)
        for target, name in ((self._timer_loop, "cloud-timers"),
                             (self._monitor_loop, "cloud-monitor")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)

    # --- timers ------------------------------------------------------------------------

    def schedule_phase(self, vm: VM) -> None:
        """Called under the cloud lock when ``vm`` enters a timed phase."""
        phase = PHASES[vm.lcm_state]
        delay = self.cloud.settings.timings.duration_s(phase.timing)
        if phase.timing == "boot":
            delay += self.cloud.fault(vm).slow_boot_s
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq),
                                        vm.vm_id, vm.epoch))
            self._cond.notify()

    def _timer_loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                if not self._heap:
                    self._cond.wait(timeout=1.0)
                    continue
                due = self._heap[0][0] - time.monotonic()
                if due > 0:
                    self._cond.wait(timeout=min(due, 1.0))
                    continue
                _, _, vm_id, epoch = heapq.heappop(self._heap)
            try:
                self._pool.submit(self._complete_phase, vm_id, epoch)
            except RuntimeError:
                return  # pool shut down: the server is stopping

    def _vm_lock(self, vm_id: int) -> threading.Lock:
        with self._cond:
            return self._vm_locks.setdefault(vm_id, threading.Lock())

    def _complete_phase(self, vm_id: int, epoch: int) -> None:
        cloud = self.cloud
        with self._vm_lock(vm_id):
            with cloud.lock:
                vm = cloud.vms.get(vm_id)
                if vm is None or vm.epoch != epoch or vm.state != ACTIVE:
                    return
                phase = PHASES.get(vm.lcm_state)
                if phase is None:
                    return
                spec = cloud.spec(vm) if phase.driver_op == "boot" else None
                hard = phase.power_cut or cloud.hard_action(vm)
            error = ""
            if phase.driver_op:
                try:
                    self._call_driver(phase.driver_op, vm_id, spec, hard=hard)
                except DriverError as exc:
                    error = f"{ERROR_PREFIX[phase.driver_op]}: {exc}"
                except Exception as exc:  # a driver bug must not kill the engine
                    log.exception("driver %s of VM %s failed", phase.driver_op, vm_id)
                    error = f"{ERROR_PREFIX[phase.driver_op]}: {exc}"
            with cloud.lock:
                if vm.epoch != epoch:
                    return
                if error and phase.next_fail is not None:
                    cloud.transition(vm, *phase.next_fail, error=error)
                    return
                if phase.driver_op in ("boot", "resume"):
                    vm.deploy_id = vm.deploy_id or f"one-{vm_id}"
                    vm.last_poll = now_s()
                cloud.transition(vm, *phase.next_ok, error=error)
            if phase.next_ok[0] != ACTIVE or phase.driver_op == "shutdown":
                with self._cond:
                    self._vm_locks.pop(vm_id, None)

    def _call_driver(self, op: str, vm_id: int, spec: object, *, hard: bool) -> None:
        driver = self.cloud.driver
        if op == "boot":
            driver.boot(spec)  # type: ignore[arg-type]
        elif op == "shutdown":
            driver.shutdown(vm_id, hard=hard)
        elif op == "poweroff":
            driver.poweroff(vm_id, hard=hard)
        elif op == "suspend":
            driver.suspend(vm_id)
        elif op == "resume":
            driver.resume(vm_id)

    def reboot(self, vm: VM) -> None:
        """reboot / reboot-hard of a RUNNING VM: its processes restart, the state stays."""
        spec = self.cloud.spec(vm)

        def run() -> None:
            with self._vm_lock(vm.vm_id):
                try:
                    self.cloud.driver.poweroff(vm.vm_id, hard=self.cloud.hard_action(vm))
                    self.cloud.driver.boot(spec)
                except DriverError as exc:
                    log.warning("reboot of VM %s failed: %s", vm.vm_id, exc)

        self._pool.submit(run)

    # --- monitoring --------------------------------------------------------------------

    def _monitor_loop(self) -> None:
        interval = self.cloud.settings.timings.monitor_interval_s
        swept = time.monotonic()
        while not self._stop.wait(interval):
            try:
                self.monitor_once()
                if time.monotonic() - swept >= SWEEP_INTERVAL_S:
                    swept = time.monotonic()
                    self.sweep_once()
            except Exception:  # keep monitoring whatever one pass did
                log.exception("monitoring pass failed")

    def sweep_once(self) -> None:
        """Remove whatever the driver still holds of VMs that are DONE (or unknown): a DONE
        VM leaves nothing behind, whatever went wrong while it was torn down."""
        with self.cloud.lock:
            known = {vm.vm_id for vm in self.cloud.vms.values() if vm.state != DONE}
        self.cloud.driver.cleanup_stale(known)

    def monitor_once(self) -> None:
        cloud = self.cloud
        with cloud.lock:
            watched = [(vm.vm_id, vm.epoch) for vm in cloud.vms.values()
                       if vm.state == ACTIVE and vm.lcm_state in (RUNNING, UNKNOWN)]
        for vm_id, epoch in watched:
            with self._vm_lock(vm_id):
                alive = cloud.driver.alive(vm_id)
                with cloud.lock:
                    vm = cloud.vms[vm_id]
                    if vm.epoch != epoch:
                        continue
                    if vm.lcm_state == RUNNING and not alive:
                        cloud.transition(vm, ACTIVE, UNKNOWN)
                    elif vm.lcm_state == UNKNOWN and alive:
                        cloud.transition(vm, ACTIVE, RUNNING)
                    elif alive:
                        vm.last_poll = now_s()
