"""Benchmark: a burst's VMs requested with controller.boot_concurrency 1, 4 and 8.

Why: the real 1,000-job burst (benchmarks/burst.py) requested its VMs at 20.9/s against a
configured 200/s; in-process, with an OpenNebula port that answers at once
(benchmarks/burst_pass.py), the same passes request 1,000 VMs in 5.3-5.8 s. What the real
run adds is the round trip of each ``one.template.instantiate``, which act made one after
the other. Here the same in-process burst as burst_pass.py (the real ``Controller.run_pass``,
Slurm's outputs in 22.05's shape parsed every pass, SQLite, the loop's waits between passes
added to a clock rather than slept) runs against an OpenNebula port whose instantiate
answers after a fixed LATENCY (``time.sleep``, as a remote oned's round trip would: the
thread waits, the CPU is free), once per concurrency, and reports for N = 100 and 1,000
jobs how long until every VM was requested, with the sequential run (concurrency 1) of the
same N as the reference: ``speedup_vs_1``. Two rate settings: burst.py's (200/s, burst
100: the floor for 1,000 VMs is (1,000 - 100) / 200 = 4.5 s) and one high enough not to
bound anything (what act alone costs).

With ``--cloud`` the OpenNebula port is the real thing instead: vcluster's OneClient
(pyone over XML-RPC; one per boot worker, as the controller makes them) against
``vcluster testbed cloud serve --driver dummy`` started afresh for each run, so the
controller's observe lists the testbed's VM pool every pass as it would oned's
(``results/burst_parallel_cloud.json``). The testbed shares this machine's two cores with
the controller: its round trip is CPU, which threads cannot overlap.

    python3 benchmarks/burst_parallel.py [--jobs 100,1000] [--latency-ms 30] [--cloud]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from burst_pass import (  # noqa: E402 (benchmarks/ is not a package)
    FileSlurm,
    InstantOne,
    LoopClock,
    config_dict,
    node_name,
    slurm_texts,
)


class RemoteOne(InstantOne):
    """InstantOne whose instantiate takes ``latency_s`` (slept: a round trip to a remote
    oned), safe to call from several threads; ``most_in_flight`` counts overlap."""

    def __init__(self, latency_s: float) -> None:
        super().__init__()
        self.latency_s = latency_s
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.last_at = 0.0

    def instantiate(self, template_id: int, name: str, extra_template: str, *,
                    hold: bool = False) -> int:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(self.latency_s)
        with self.lock:
            self.in_flight -= 1
            self.last_at = time.monotonic()
            return super().instantiate(template_id, name, extra_template, hold=hold)


class Stamps:
    """When each instantiate returned (monotonic), from any thread."""

    def __init__(self) -> None:
        self.at: list[float] = []

    def client(self, settings: Any) -> Any:
        from vcluster.one import OneClient

        stamps = self.at

        class TimedClient(OneClient):
            def instantiate(self, template_id: int, name: str, extra_template: str, *,
                            hold: bool = False) -> int:
                vm_id = super().instantiate(template_id, name, extra_template, hold=hold)
                stamps.append(time.monotonic())
                return vm_id

        return TimedClient(settings, session=AUTH)


AUTH = "oneadmin:opennebula"


def measure(n: int, concurrency: int, latency_s: float, rate: float, burst: int,
            per_resume: int = 100, cloud: bool = False) -> dict[str, Any]:
    from vcluster import db
    from vcluster.config import parse_config
    from vcluster.controller.act import Actor
    from vcluster.controller.loop import Controller, next_pass_in_s
    from vcluster.slurm_parse import compress_hostlist
    from vcluster.vmtemplate import GuestContext

    with tempfile.TemporaryDirectory(prefix="burst-parallel-") as tmp:
        state_dir = Path(tmp)
        raw = config_dict(n, state_dir, rate, burst)
        raw["controller"]["boot_concurrency"] = concurrency
        server = None
        if cloud:
            from cloud_parallel import TEMPLATE, start_cloud
            server, xmlrpc = start_cloud(f"{tmp}/cloud", TEMPLATE.replace("bench-worker",
                                                                          "worker"))
            raw["opennebula"]["xmlrpc"] = xmlrpc
        config = parse_config(raw)
        clock = LoopClock()
        engine = db.make_engine(config.database)
        sessions = db.session_factory(engine)
        slurm_texts(n, state_dir, quiet=False)
        with db.transaction(sessions) as s:  # Slurm's resume calls, all before the first pass
            for start in range(0, n, per_resume):
                idx = range(start, min(n, start + per_resume))
                names, jobs = [node_name(i) for i in idx], [1000 + i for i in idx]
                s.add(db.HookRequest(kind="resume", nodes=compress_hostlist(names),
                                     job_ids=jobs, payload={"jobs": [
                                         {"job_id": j, "nodes": nm}
                                         for j, nm in zip(jobs, names, strict=True)]},
                                     created_at=clock()))
        slurm = FileSlurm(state_dir)
        stamps = Stamps()
        one: Any = stamps.client(config.opennebula) if cloud else RemoteOne(latency_s)
        actor = Actor(config, sessions, slurm, one,
                      guest=GuestContext(slurm_conf_server="10.0.0.1:6817",
                                         join_url="http://10.0.0.1:6830"), now=clock,
                      one_client=(lambda: stamps.client(config.opennebula)) if cloud
                      else None)
        controller = Controller(config, sessions, slurm, one, actor, now=clock)

        def requested() -> int:
            return len(stamps.at) if cloud else len(one.vms_by_id)

        passes = 0
        cpu0, started = time.process_time(), time.monotonic()
        try:
            while requested() < n and passes < 50 + n // 10:
                report = controller.run_pass()
                passes += 1
                if requested() < n:
                    clock.skipped += next_pass_in_s(report, config, 60.0)
        finally:
            if server is not None:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=30)
        last_at = max(stamps.at) if cloud else one.last_at
        all_requested_s = last_at - started + clock.skipped
        cpu_s = time.process_time() - cpu0
        engine.dispose()
    return {"jobs": n, "boot_concurrency": concurrency, "boot_rate_per_s": rate,
            "boot_burst": burst, "vms_requested": requested(), "passes": passes,
            "all_requested_s": round(all_requested_s, 3),
            "requests_per_s": round(requested() / all_requested_s, 1),
            "cpu_s": round(cpu_s, 3),
            "most_in_flight": None if cloud else one.most_in_flight}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="100,1000")
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--cloud", action="store_true",
                        help="the real OneClient against the testbed cloud, not a fake")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.out = args.out or HERE / "results" / (
        "burst_parallel_cloud.json" if args.cloud else "burst_parallel.json")
    latency_s = args.latency_ms / 1000
    runs = []
    for rate, burst in ((200.0, 100), (100000.0, 100000)):
        for n in (int(x) for x in args.jobs.split(",")):
            reference = None
            for c in (int(x) for x in args.concurrency.split(",")):
                run = measure(n, c, latency_s, rate, burst, cloud=args.cloud)
                if c == 1:
                    reference = run["all_requested_s"]
                run["speedup_vs_1"] = (round(reference / run["all_requested_s"], 2)
                                       if reference else None)
                print(json.dumps(run), flush=True)
                runs.append(run)
    out = {"benchmark": "burst_parallel", "slurm_shape": "22.05",
           "opennebula": "testbed cloud (dummy driver) through OneClient, one per worker"
           if args.cloud else "fake port",
           "instantiate_latency_ms": None if args.cloud else args.latency_ms,
           "latency_kind": "the testbed's own round trip, on the same two cores"
           if args.cloud else "time.sleep in the fake OpenNebula port (a remote oned's "
                              "round trip: the thread waits, the CPU is free)",
           "runs": runs, "python": platform.python_version(), "cpus": os.cpu_count(),
           "load_average_1m_at_end": round(os.getloadavg()[0], 2),
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
