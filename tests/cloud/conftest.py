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

from tests.cloud.schema_proxy import SchemaProxy
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


def connect(server: CloudServer, proxies: list[SchemaProxy]) -> Running:
    """Clients of ``server`` whose traffic goes through a schema-validating proxy."""
    proxy = SchemaProxy(server.endpoint)
    proxies.append(proxy)
    return Running(server, pyone.OneServer(proxy.endpoint, session=AUTH),
                   xmlrpc.client.ServerProxy(proxy.endpoint))


def check_proxies(proxies: list[SchemaProxy]) -> None:
    failures = [f for proxy in proxies for f in proxy.failures]
    for proxy in proxies:
        proxy.close()
    assert not failures, "XML bodies that fail the official schemas:\n" + "\n".join(failures)


@pytest.fixture
def start_cloud(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Start servers with given settings changes; every one is stopped at the end, and every
    XML body they sent must have passed the official schemas."""
    started: list[CloudServer] = []
    proxies: list[SchemaProxy] = []

    def start(state_dir: Path | None = None, **changes: object) -> Running:
        server = CloudServer(make_settings(state_dir or tmp_path / "state", **changes))
        started.append(server)
        server.start()
        return connect(server, proxies)

    try:
        yield start
    finally:
        for server in started:
            server.stop()
    check_proxies(proxies)


@pytest.fixture
def cloud(start_cloud: Callable[..., Running]) -> Running:
    return start_cloud()


VM_TEXT = 'CPU = "0.1"\nMEMORY = "64"\n'
