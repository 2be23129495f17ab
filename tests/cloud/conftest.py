"""Fixtures for the testbed cloud tests: a real server in-process on ephemeral ports.

Tests talk to it only through the real pyone 6.10.5 client (and raw ``xmlrpc.client`` where
they look at faults or at the exact XML on the wire), never through the server's internals.
"""

from __future__ import annotations

import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pyone
import pytest

from vcluster.testbed.cloud.server import CloudServer
from vcluster.testbed.cloud.settings import CloudSettings, SchedulerSettings, Timings

AUTH = "oneadmin:opennebula"

FAST = Timings(prolog_s=0.05, boot_s=0.05, shutdown_s=0.05, epilog_s=0.05, save_s=0.05,
               migrate_s=0.05, monitor_interval_s=0.1)
SLOW_STEPS = Timings(prolog_s=0.4, boot_s=0.4, shutdown_s=0.4, epilog_s=0.4, save_s=0.4,
                     migrate_s=0.4, monitor_interval_s=0.1)
NOW = SchedulerSettings(max_wnd_time_s=0.0, max_wnd_length=7, timer_s=0.5)


@dataclass
class Running:
    server: CloudServer
    one: pyone.OneServer
    raw: xmlrpc.client.ServerProxy

    def vm_state(self, vm_id: int) -> tuple[int, int]:
        vm = self.one.vm.info(vm_id)
        return int(vm.STATE), int(vm.LCM_STATE)

    def wait_state(self, vm_id: int, state: int, lcm: int = 0, timeout_s: float = 10.0
                   ) -> None:
        """Poll one.vm.info until the VM is in (state, lcm); fail with what it was."""
        deadline = time.monotonic() + timeout_s
        seen = self.vm_state(vm_id)
        while seen != (state, lcm):
            if time.monotonic() > deadline:
                raise AssertionError(f"VM {vm_id} stayed {seen}, expected {(state, lcm)}")
            time.sleep(0.02)
            seen = self.vm_state(vm_id)


def make_settings(state_dir: Path, **changes: object) -> CloudSettings:
    base = CloudSettings(state_dir=state_dir, port=0, onegate_port=0, hosts=2,
                         timings=FAST, scheduler=NOW)
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def start_cloud(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Start servers with given settings changes; every one is stopped at the end."""
    started: list[CloudServer] = []

    def start(state_dir: Path | None = None, **changes: object) -> Running:
        server = CloudServer(make_settings(state_dir or tmp_path / "state", **changes))
        server.start()
        started.append(server)
        return Running(server, pyone.OneServer(server.endpoint, session=AUTH),
                       xmlrpc.client.ServerProxy(server.endpoint))

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def cloud(start_cloud: Callable[..., Running]) -> Running:
    return start_cloud()


VM_TEXT = 'CPU = "0.1"\nMEMORY = "64"\n'
