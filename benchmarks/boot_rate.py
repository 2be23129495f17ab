"""Benchmark: the boot-rate limits obeyed by the real controller loop in a burst of 1,000 nodes.

Runs ``vcluster testbed cloud serve --driver dummy`` as a separate process and the real
controller (observe, plan, act, the loop's pass timing, the real OneClient over XML-RPC, a
SQLite state database) against it. Slurm is the only stand-in: a picture of 1,000 CLOUD nodes
powering up at once (300 of class ``limited``, 700 of class ``open``), so that the burst is
the only thing measured. Every ``one.template.instantiate`` the controller sends is timed as
it goes out (a recording wrapper around the real client), and the result says, per class and
in total: the configured rate and burst, the most allocations seen in any window of
``burst / rate`` seconds (must not exceed the burst), the rate achieved, and how long the
burst took against the time the rate needs (``(N - burst) / rate``): a ratio near 1 means it
waited no longer than the limit requires. A limit is a token bucket: a class whose passes
take longer than ``burst / rate`` (a loaded machine; ``load_average_1m_at_end``) cannot reach
its rate, since a bucket holds no more than ``burst``.

    python3 benchmarks/boot_rate.py [--out benchmarks/results/boot_rate.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path

import pyone

from vcluster import db
from vcluster.config import Config, parse_config
from vcluster.controller.act import Actor
from vcluster.controller.loop import Controller, run_loop
from vcluster.one import OneClient
from vcluster.one_vm import VM
from vcluster.slurm_parse import Job, Node
from vcluster.vmtemplate import GuestContext

AUTH = "oneadmin:opennebula"
TEMPLATE = ('NAME = "bench-worker"\nCPU = "0.1"\nVCPU = "1"\nMEMORY = "64"\n'
            'NIC = [ NETWORK = "vcluster" ]\nCONTEXT = [ NETWORK = "YES" ]\n')
CLASSES = {"limited": (300, 10.0, 10), "open": (700, None, None)}
"""Class -> (nodes, boot_rate_per_s, boot_burst); None: only the total limit."""
TOTAL_RATE_PER_S, TOTAL_BURST = 50.0, 50


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BurstSlurm:
    """Slurm as the controller reads it right after a burst: every node powering up."""

    def __init__(self, config: Config) -> None:
        self._nodes = [Node(name=n, state="ALLOCATED", flags=frozenset({"CLOUD", "POWERING_UP"}),
                            address=n, hostname=n, cpus=1, real_memory_mb=512,
                            features=(nc.name,), partitions=("vcluster",), reason="")
                       for nc in config.node_classes for n in nc.node_names()]

    def jobs(self) -> list[Job]:
        return []

    def nodes(self) -> list[Node]:
        return list(self._nodes)

    def update_nodes(self, nodes: str | Sequence[str], *, state: str | None = None,
                     reason: str | None = None, nodeaddr: str | None = None,
                     nodehostname: str | None = None) -> None:
        pass  # NodeAddr of a dummy VM: nothing to record

    def update_job(self, job_id: int, **fields: str) -> None:
        pass

    def hold(self, job_id: int) -> None:
        pass


class TimedOne:
    """The real OneClient, noting when each allocation goes out and for which class."""

    def __init__(self, client: OneClient, config: Config) -> None:
        self.client = client
        self.config = config
        self.sent: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def worker(self) -> TimedOne:
        """The same notes from a boot worker's own client (OneClient is not thread-safe)."""
        other = TimedOne(OneClient(self.client.settings), self.config)
        other.sent, other.lock = self.sent, self.lock
        return other

    def template_id(self, name_or_id: str) -> int:
        return self.client.template_id(name_or_id)

    def instantiate(self, template_id: int, name: str, extra_template: str, *,
                    hold: bool = False) -> int:
        nc = self.config.class_of_node(name)
        with self.lock:
            self.sent.append((time.monotonic(), nc.name if nc else "?"))
        return self.client.instantiate(template_id, name, extra_template, hold=hold)

    def vm(self, vm_id: int) -> VM:
        return self.client.vm(vm_id)

    def vms(self, *, cluster: str | None = None) -> list[VM]:
        return self.client.vms(cluster=cluster)

    def vm_range(self, first_id: int, last_id: int) -> list[VM]:
        return self.client.vm_range(first_id, last_id)

    def terminate(self, vm_id: int, *, hard: bool = False) -> None:
        self.client.terminate(vm_id, hard=hard)

    def action(self, action: str, vm_id: int) -> None:
        self.client.action(action, vm_id)

    def host_states(self) -> dict[str, str]:
        return self.client.host_states()


def max_in_window(times: list[float], window_s: float) -> int:
    """The most allocations within any half-open window of ``window_s`` seconds."""
    times = sorted(times)
    return max((bisect_right(times, t + window_s - 1e-9) - i for i, t in enumerate(times)),
               default=0)


def needed_s(count: int, rate: float, burst: int) -> float:
    """What a token bucket needs for ``count`` allocations: the burst at once, then the rate."""
    return max(0.0, (count - burst) / rate)


def summary(times: list[float], rate: float, burst: int, needed: float | None = None
            ) -> dict[str, object]:
    span_s = max(times) - min(times)
    needed_s_ = needed_s(len(times), rate, burst) if needed is None else needed
    window_s = burst / rate
    return {"allocations": len(times), "rate_per_s": rate, "burst": burst,
            "window_s": round(window_s, 3),
            "max_in_any_window": max_in_window(times, window_s),
            "token_bucket_allows_in_window": burst + round(rate * window_s),
            "max_in_any_10s": max_in_window(times, 10.0),
            "token_bucket_allows_in_10s": burst + round(rate * 10.0),
            "achieved_rate_per_s": round((len(times) - 1) / span_s, 2) if span_s else None,
            "burst_took_s": round(span_s, 2), "rate_needs_s": round(needed_s_, 2),
            "took_over_needed": round(span_s / needed_s_, 3) if needed_s_ else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "boot_rate.json")
    args = parser.parse_args()
    port, gate_port = free_port(), free_port()
    total = sum(n for n, _, _ in CLASSES.values())
    with tempfile.TemporaryDirectory(prefix="boot-rate-bench-") as tmp:
        auth = Path(tmp) / "one_auth"
        auth.write_text(AUTH + "\n")
        auth.chmod(0o600)
        config = parse_config({
            "opennebula": {"xmlrpc": f"http://127.0.0.1:{port}/RPC2", "auth_file": str(auth)},
            "database": {"url": f"sqlite:///{tmp}/state.db"},
            "controller": {"cluster_name": "bench", "resume_timeout_s": 3600,
                           "boot_rate_per_s": TOTAL_RATE_PER_S, "boot_burst": TOTAL_BURST,
                           "state_dir": f"{tmp}/ctl", "log_dir": f"{tmp}/log"},
            "node_class": [
                {"name": name, "count": count, "cpus": 1, "memory_mb": 512,
                 "template": "bench-worker",
                 **({"boot_rate_per_s": rate, "boot_burst": burst} if rate else {})}
                for name, (count, rate, burst) in CLASSES.items()],
        })
        argv = [sys.executable, "-c", "from vcluster.cli import main; main()", "testbed",
                "cloud", "serve", "--port", str(port), "--onegate-port", str(gate_port),
                "--driver", "dummy", "--state-dir", f"{tmp}/cloud", "--hosts", "4",
                "--host-cpu", "4000", "--host-mem", str(64 * 1024 * 1024),
                "--subnet", "10.250.0.0/20", "--lease-start", "16", "--auth", AUTH]
        server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        engine = db.make_engine(config.database)
        try:
            assert server.stdout is not None
            server.stdout.readline()  # "testbed cloud: XML-RPC ...": it is serving
            pyone.OneServer(config.opennebula.xmlrpc, session=AUTH).template.allocate(TEMPLATE)
            sessions = db.session_factory(engine)
            one = TimedOne(OneClient(config.opennebula), config)
            slurm = BurstSlurm(config)
            actor = Actor(config, sessions, slurm, one,
                          GuestContext(slurm_conf_server="127.0.0.1:6817",
                                       join_url="http://127.0.0.1:6830"),
                          guest_script=b"#!/bin/sh\n", one_client=one.worker)
            controller = Controller(config, sessions, slurm, one, actor)
            stop = threading.Event()
            loop = threading.Thread(target=run_loop, args=(controller, None),
                                    kwargs={"interval_s": 5.0, "stop": stop}, daemon=True)
            started = time.monotonic()
            loop.start()
            while len(one.sent) < total and time.monotonic() - started < 600:
                time.sleep(0.2)
            stop.set()
            loop.join(timeout=60)
        finally:
            engine.dispose()
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    sent = one.sent
    left_over = (TOTAL_RATE_PER_S - sum(r for _, r, _ in CLASSES.values() if r),
                 TOTAL_BURST - sum(b for _, _, b in CLASSES.values() if b))
    by_class = {name: [t for t, c in sent if c == name] for name in CLASSES}
    result: dict[str, object] = {
        "benchmark": "boot_rate", "nodes": total, "driver": "dummy",
        "loop": "vcluster controller loop (passes every 1 s while boots are pending)",
        # the whole burst cannot end before its slowest class: the limited one
        "total": summary([t for t, _ in sent], TOTAL_RATE_PER_S, TOTAL_BURST, max(
            [needed_s(total, TOTAL_RATE_PER_S, TOTAL_BURST)]
            + [needed_s(n, r, b) for n, r, b in CLASSES.values() if r and b])),
        # a class with only the total limit shares it with the limited ones, which are busy
        # all along: it has what they leave of the total's burst and rate
        "classes": {name: summary(times, rate or TOTAL_RATE_PER_S, burst or TOTAL_BURST,
                                  None if rate else needed_s(len(times), *left_over))
                    | ({} if rate else {"limit": "total only"})
                    for name, times in by_class.items()
                    for _, rate, burst in [CLASSES[name]]},
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
