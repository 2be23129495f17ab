"""The testbed cloud server: store, driver, cloud, engine, scheduler, XML-RPC and OneGate.

Why this exists: the CLI (``vcluster testbed cloud serve``), the tests and the benchmark all
start the same thing; :class:`CloudServer` wires the parts together, starts their threads
(ports may be 0 for an ephemeral port), and stops them cleanly. State persists in the state
directory: a restart finds every VM again, asks the driver to drop leftovers of VMs it no
longer knows, resumes timed phases, and lets monitoring catch VMs that died meanwhile.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from vcluster.testbed.cloud.cloud import Cloud
from vcluster.testbed.cloud.drivers import make_driver
from vcluster.testbed.cloud.drivers.base import VMDriver
from vcluster.testbed.cloud.engine import Engine
from vcluster.testbed.cloud.events import EventPublisher
from vcluster.testbed.cloud.model import DONE
from vcluster.testbed.cloud.onegate import OneGateServer
from vcluster.testbed.cloud.rpc import OneApi, RpcServer
from vcluster.testbed.cloud.scheduler import Scheduler
from vcluster.testbed.cloud.settings import CloudSettings
from vcluster.testbed.cloud.store import Store

log = logging.getLogger(__name__)


def oned_config(settings: CloudSettings, port: int) -> dict[str, str]:
    """What ``one.system.config`` reports."""
    sched = settings.scheduler
    monitor_s = max(1, int(settings.timings.monitor_interval_s))
    return {
        "API_LIST_ORDER": "DESC", "DEFAULT_UMASK": "177", "MAC_PREFIX": "02:00",
        "MONITORING_INTERVAL_HOST": str(monitor_s), "MONITORING_INTERVAL_VM": str(monitor_s),
        "NETWORK_SIZE": "254", "PORT": str(port),
        "SCHED_MAX_WND_LENGTH": str(sched.max_wnd_length),
        "SCHED_MAX_WND_TIME": f"{sched.max_wnd_time_s:g}",
        "SCHED_RETRY_TIME": f"{sched.timer_s:g}", "VM_SUBMIT_ON_HOLD": "NO",
    }


_Server = TypeVar("_Server")

WHAT = {"xmlrpc": "XML-RPC", "onegate": "OneGate", "events": "events"}


class ListenError(Exception):
    """A port or address the server needs cannot be bound.

    ``what`` is ``xmlrpc``, ``onegate`` or ``events``; the caller knows which of its options
    sets it.
    """

    def __init__(self, what: str, host: str, port: int, error: OSError) -> None:
        self.what, self.host, self.port = what, host, port
        self.in_use = error.errno == errno.EADDRINUSE
        self.not_here = error.errno == errno.EADDRNOTAVAIL
        self.strerror = error.strerror or str(error)
        super().__init__(f"cannot listen on {host}:{port} ({WHAT[what]}): {self.strerror}")


def _listen(what: str, host: str, port: int, make: Callable[[], _Server]) -> _Server:
    try:
        return make()
    except OSError as exc:
        raise ListenError(what, host, port, exc) from exc


class CloudServer:
    """One running testbed cloud."""

    def __init__(self, settings: CloudSettings, *, driver: VMDriver | None = None) -> None:
        self.settings = settings
        self.store = Store(settings.state_dir)
        self.driver = driver or make_driver(settings.driver, state_dir=settings.state_dir,
                                            prefix=settings.prefix,
                                            guest_shares=settings.guest_shares or None)
        self.cloud = Cloud(settings, self.store, self.driver)
        self.engine = Engine(self.cloud)
        self.scheduler = Scheduler(self.cloud)
        self.rpc: RpcServer | None = None
        self.onegate: OneGateServer | None = None
        self.events: EventPublisher | None = None
        self._threads: list[threading.Thread] = []
        self._stopped = False

    @property
    def port(self) -> int:
        assert self.rpc is not None
        return int(self.rpc.server_address[1])

    @property
    def onegate_port(self) -> int:
        assert self.onegate is not None
        return int(self.onegate.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://{self.settings.host}:{self.port}/RPC2"

    def start(self) -> None:
        """Bind every port first (a taken one raises :class:`ListenError` before anything
        else has started), then load the state and start every thread."""
        self.rpc = _listen("xmlrpc", self.settings.host, self.settings.port,
                           lambda: RpcServer(OneApi(self.cloud, {}), self.settings.host,
                                             self.settings.port))
        try:
            self.onegate = _listen("onegate", self.settings.onegate_host,
                                   self.settings.onegate_port,
                                   lambda: OneGateServer(self.cloud, self.settings.onegate_host,
                                                         self.settings.onegate_port))
            if self.settings.events_port is not None:
                port = self.settings.events_port
                self.events = _listen("events", self.settings.host, port,
                                      lambda: EventPublisher(self.settings.host, port))
        except ListenError:
            self.rpc.server_close()
            self.rpc = None
            if self.onegate is not None:
                self.onegate.server_close()
                self.onegate = None
            raise
        if self.events is not None:
            self.cloud.on_state_change = self.events.vm_changed
            self.cloud.on_host_state_change = self.events.host_changed
        if not self.settings.onegate_endpoint and self.settings.onegate_port == 0:
            # an ephemeral OneGate port: tell VMs the port actually bound
            self.settings = replace(self.settings, onegate_port=self.onegate_port)
            self.cloud.settings = self.settings
        self.cloud.load()
        with self.cloud.lock:
            known = {vm.vm_id for vm in self.cloud.vms.values() if vm.state != DONE}
        self.driver.cleanup_stale(known)
        self.engine.start()
        self.scheduler.start()
        self.rpc.api.config = oned_config(self.settings, self.port)
        for srv, name in ((self.rpc, "cloud-xmlrpc"), (self.onegate, "cloud-onegate")):
            thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2},
                                      name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("testbed cloud on %s (OneGate %s%s)", self.endpoint, self.settings.gate_endpoint,
                 f", events {self.events.endpoint}" if self.events is not None else "")

    def stop(self) -> None:
        """Stop serving; VMs stay as they are (the state directory keeps them). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for srv in (self.rpc, self.onegate):
            if srv is not None:
                if self._threads:  # shutdown() waits for serve_forever: only if it ran
                    srv.shutdown()
                srv.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self.scheduler.stop()
        self.engine.stop()
        if self.events is not None:
            self.cloud.on_state_change = lambda vm: None
            self.cloud.on_host_state_change = lambda host: None
            self.events.close()
        self.store.close()
