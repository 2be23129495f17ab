"""Benchmark: the controller passes that request the VMs of a burst of N one-node jobs.

Why: issue 11 wants every VM of a 1,000-job burst requested within 10 s of Slurm's ask; the
real burst (benchmarks/burst.py) showed the bound is the controller's pass while ~1,000
launches are in flight, not the boot rate. This rebuilds that state in-process, so the pass
itself can be measured and profiled without slurmctld or a cloud:

* Slurm: ``squeue --json`` and the node listing in Slurm 22.05's shape (the captures in
  tests/data/slurm/22.05), parsed by vcluster's parsers on every pass as the real adapter
  does: N jobs CONFIGURING on their nodes, N nodes ALLOCATED + POWERING_UP (CLOUD).
* Hook requests: Slurm's resume for the N nodes as ``vcluster-resume`` records them, in
  batches of ``--per-resume`` nodes (slurmctld batches ResumeProgram calls).
* OpenNebula: a fake of :class:`~vcluster.controller.ports.OnePort` answering instantly; each
  instantiate adds a PENDING VM with an IP, listed by the next pass.
* The database: SQLite in a temporary directory, as a single-host site runs it.

Passes of the real ``Controller.run_pass`` run until every VM is requested (boot rate set
high enough not to bound it: this measures the controller). Reported per N: passes, CPU
and wall seconds until the last VM was requested, per VM, the slowest pass; and as the
reference measured in the same run, the CPU of a quiet pass over the same N (every VM
RUNNING, every launch up, every job RUNNING): ``ratio_vs_quiet``. With
``VCLUSTER_BENCH_PROFILE=cumulative`` the first pass at the largest N is profiled (stderr).

    python3 benchmarks/burst_pass.py [--jobs 100,1000] [--per-resume 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CAPTURES = HERE.parent / "tests" / "data" / "slurm" / "22.05"
CLUSTER = "bench"
PREFIX = "vb"


def node_name(i: int) -> str:
    return f"{PREFIX}-{i:04d}"


class LoopClock:
    """The controller's clock: real time, plus the waits between passes the loop would
    sleep (skipped here, so the timeline is the loop's without waiting it out)."""

    def __init__(self) -> None:
        from vcluster import db
        self.base, self.m0, self.skipped = db.utcnow(), time.monotonic(), 0.0

    def __call__(self) -> Any:
        from datetime import timedelta
        return self.base + timedelta(seconds=self.elapsed_s())

    def elapsed_s(self) -> float:
        return time.monotonic() - self.m0 + self.skipped


def config_dict(n: int, state_dir: Path, rate: float = 100000.0,
                burst: int = 100000) -> dict[str, Any]:
    return {
        "opennebula": {"xmlrpc": "http://127.0.0.1:1/RPC2", "retry_delays_s": []},
        "controller": {"cluster_name": CLUSTER, "state_dir": str(state_dir),
                       "status_file": "", "boot_rate_per_s": rate, "boot_burst": burst},
        "database": {"url": f"sqlite:///{state_dir}/vcluster.db"},
        "node_class": [{"name": "small", "prefix": f"{PREFIX}-", "count": n,
                        "first_index": 0, "cpus": 2, "memory_mb": 2048,
                        "template": "worker"}],
    }


def slurm_texts(n: int, state_dir: Path, *, quiet: bool, resumed: int | None = None) -> None:
    """squeue and sinfo JSON in 22.05's shape: the burst (the first ``resumed`` jobs
    CONFIGURING on POWERING_UP nodes, the others PENDING, their nodes POWERED_DOWN) or, with
    ``quiet``, every job RUNNING on its powered-up node."""
    resumed = n if resumed is None else resumed
    listing = json.loads((CAPTURES / "sinfo.json").read_text())
    proto = listing["nodes"][0]
    listing["nodes"] = [
        dict(proto, name=node_name(i), hostname=node_name(i), address=node_name(i),
             partitions=["vcluster"], features="small", active_features="small", cpus=2,
             real_memory=2048, reason="", state="allocated" if i < resumed else "idle",
             state_flags=["CLOUD"] if quiet else ["CLOUD", "POWERING_UP"] if i < resumed
             else ["CLOUD", "POWERED_DOWN"])
        for i in range(n)]
    (state_dir / "nodes.json").write_text(json.dumps(listing))
    squeue = json.loads((CAPTURES / "squeue.json").read_text())
    proto_job = next(j for j in squeue["jobs"] if "RUNNING" in j["job_state"])
    squeue["jobs"] = [dict(proto_job, job_id=1000 + i, nodes=node_name(i) if i < resumed
                           else "", partition="vcluster", features="small", node_count=1,
                           comment="", job_state="RUNNING" if quiet else "CONFIGURING"
                           if i < resumed else "PENDING")
                      for i in range(n)]
    (state_dir / "squeue.json").write_text(json.dumps(squeue))


class FileSlurm:
    """SlurmPort over the texts, parsed on every call as the real adapter parses output."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.updates = 0

    def jobs(self) -> list[Any]:
        from vcluster.slurm import _mapped
        from vcluster.slurm_parse import parse_squeue_json
        with open(self.state_dir / "squeue.json", "rb") as out:
            with _mapped(out) as text:
                return parse_squeue_json(text, "squeue")

    def nodes(self) -> list[Any]:
        from vcluster.slurm import _mapped
        from vcluster.slurm_parse import parse_nodes_json
        with open(self.state_dir / "nodes.json", "rb") as out:
            with _mapped(out) as text:
                return parse_nodes_json(text, "nodes")

    def update_nodes(self, nodes: str | Sequence[str], **fields: Any) -> None:
        self.updates += 1

    def update_job(self, job_id: int, **fields: str) -> None:
        self.updates += 1

    def hold(self, job_id: int) -> None:
        self.updates += 1

    def suspend(self, job_id: int) -> None:
        self.updates += 1

    def resume(self, job_id: int) -> None:
        self.updates += 1

    def requeue(self, job_id: int) -> None:
        self.updates += 1

    def update_reservation(self, name: str, **fields: str) -> None:
        self.updates += 1


class InstantOne:
    """OnePort answering at once: instantiate adds a PENDING VM tagged as oned would keep the
    extra template's tags; ``running`` lists them RUNNING (the quiet pass)."""

    def __init__(self) -> None:
        from vcluster.one_vm import VM
        self.vm_type = VM
        self.vms_by_id: dict[int, Any] = {}
        self.next_id = 100
        self.calls = 0
        """Reads of a VM or a VM range (each a round trip to oned)."""
        self.ids = threading.Lock()
        """A pass's boots call instantiate from several threads (controller.boot_concurrency)."""

    def template_id(self, name_or_id: str) -> int:
        return 7

    def instantiate(self, template_id: int, name: str, extra_template: str, *,
                    hold: bool = False) -> int:
        with self.ids:
            vm_id, self.next_id = self.next_id, self.next_id + 1
        tags = dict(re.findall(r'^(VCLUSTER_\w+) = "([^"]*)"$', extra_template, re.M))
        self.vms_by_id[vm_id] = self.vm_type(vm_id, name, 1, 0, "PENDING",
                                             (f"10.{vm_id >> 16}.{vm_id >> 8 & 255}."
                                              f"{vm_id & 255}",), tags)
        return vm_id

    def running(self) -> None:
        for vm_id, v in self.vms_by_id.items():
            self.vms_by_id[vm_id] = replace(v, state=3, lcm_state=3, state_name="RUNNING")

    def vm(self, vm_id: int) -> Any:
        self.calls += 1
        return self.vms_by_id[vm_id]

    def vms(self, *, cluster: str | None = None) -> list[Any]:
        return list(self.vms_by_id.values())

    def vm_range(self, first_id: int, last_id: int) -> list[Any]:
        self.calls += 1
        return [v for i, v in self.vms_by_id.items() if first_id <= i <= last_id]

    def terminate(self, vm_id: int, *, hard: bool = False) -> None:
        pass

    def action(self, action: str, vm_id: int) -> None:
        pass

    def host_states(self) -> dict[str, str]:
        return {}

    def host_capacities(self) -> list[Any]:
        return []

    def migrate(self, vm_id: int, host_id: int, *, live: bool, enforce: bool = True) -> None:
        pass

    def update_user_template(self, vm_id: int, attrs: Mapping[str, str]) -> None:
        pass


def measure(n: int, per_resume: int, profile: str, staggered: bool, rate: float,
            burst: int) -> dict[str, Any]:
    from vcluster import db
    from vcluster.config import parse_config
    from vcluster.controller.act import Actor
    from vcluster.controller.loop import Controller
    try:
        from vcluster.controller.loop import next_pass_in_s
    except ImportError:  # before it: busy passes started a second apart
        def next_pass_in_s(report: Any, config: Any, interval_s: float) -> float:  # type: ignore[misc]
            return max(0.0, min(interval_s, 1.0) - report.duration_s) if report.busy \
                else interval_s
    from vcluster.slurm_parse import compress_hostlist
    from vcluster.vmtemplate import GuestContext

    with tempfile.TemporaryDirectory(prefix="burst-pass-") as tmp:
        state_dir = Path(tmp)
        config = parse_config(config_dict(n, state_dir, rate, burst))
        clock = LoopClock()
        engine = db.make_engine(config.database)
        sessions = db.session_factory(engine)
        slurm_texts(n, state_dir, quiet=False)
        starts = list(range(0, n, per_resume))

        def resume_calls(count: int) -> None:
            """The next ``count`` of Slurm's resume calls, as vcluster-resume records them."""
            with db.transaction(sessions) as s:
                for start in starts[:count]:
                    names = [node_name(i) for i in range(start, min(n, start + per_resume))]
                    jobs = [1000 + i for i in range(start, min(n, start + per_resume))]
                    s.add(db.HookRequest(kind="resume", nodes=compress_hostlist(names),
                                         job_ids=jobs, payload={"jobs": [
                                             {"job_id": j, "nodes": nm}
                                             for j, nm in zip(jobs, names, strict=True)]},
                                         created_at=clock()))
            del starts[:count]

        if not staggered:
            resume_calls(len(starts))
        slurm, one = FileSlurm(state_dir), InstantOne()
        actor = Actor(config, sessions, slurm, one,
                      guest=GuestContext(slurm_conf_server="10.0.0.1:6817",
                                         join_url="http://10.0.0.1:6830"), now=clock)
        controller = Controller(config, sessions, slurm, one, actor,
                                now=clock)
        from sqlalchemy import event
        commits = [0]
        event.listen(engine, "commit", lambda _conn: commits.__setitem__(0, commits[0] + 1))
        passes: list[dict[str, Any]] = []
        cpu0, wall0 = time.process_time(), time.monotonic()
        while len(one.vms_by_id) < n and len(passes) < 20 + n // per_resume:
            if staggered:  # one resume call lands before each pass
                slurm_texts(n, state_dir, quiet=False,
                            resumed=min(n, (len(passes) + 1) * per_resume))
                resume_calls(1)
            p_cpu, p_wall = time.process_time(), time.monotonic()
            if profile and len(passes) == n // per_resume - 1:
                import cProfile
                import pstats
                with cProfile.Profile() as prof:
                    report = controller.run_pass()
                pstats.Stats(prof, stream=sys.stderr).sort_stats(profile).print_stats(40)
            else:
                report = controller.run_pass()
            wait_s = next_pass_in_s(report, config, 60.0)
            clock.skipped += wait_s  # the loop sleeps this long before the next pass
            passes.append({"cpu_s": round(time.process_time() - p_cpu, 3),
                           "at_s": round(clock.elapsed_s() - wait_s, 3),
                           "wall_s": round(time.monotonic() - p_wall, 3),
                           "actions": len(report.actions), "failed": report.failed,
                           "vms": len(one.vms_by_id)})
        burst_cpu, burst_wall = time.process_time() - cpu0, time.monotonic() - wall0
        calls = {"db_commits": commits[0], "one_reads": one.calls,
                 "slurm_updates": slurm.updates}
        # the reference: a quiet pass over the same N (VMs RUNNING, launches up, jobs RUNNING)
        one.running()
        slurm_texts(n, state_dir, quiet=True)
        quiet = []
        for _ in range(6):
            q_cpu = time.process_time()
            controller.run_pass()
            quiet.append(time.process_time() - q_cpu)
        engine.dispose()
    quiet_s = min(quiet[-3:])
    return {"jobs": n, "resume_calls": "one per pass" if staggered else "all before the first pass",
            "vms_requested": len(one.vms_by_id), "passes": len(passes),
            "burst_cpu_s": round(burst_cpu, 3), "burst_wall_s": round(burst_wall, 3),
            "cpu_ms_per_vm": round(1000 * burst_cpu / max(1, len(one.vms_by_id)), 3),
            "boot_rate_per_s": rate, "boot_burst": burst,
            "all_requested_s": passes[-1]["at_s"],
            "slowest_pass_s": max(p["wall_s"] for p in passes),
            "round_trips": calls,
            "round_trips_per_vm": {k: round(v / max(1, len(one.vms_by_id)), 3)
                                   for k, v in calls.items()},
            "quiet_pass_cpu_s": round(quiet_s, 3),
            "ratio_vs_quiet": round(burst_cpu / quiet_s, 2) if quiet_s else None,
            "pass_detail": passes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="100,1000")
    parser.add_argument("--per-resume", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0,
                        help="controller.boot_rate_per_s (burst.py's run: 200)")
    parser.add_argument("--burst", type=int, default=100,
                        help="controller.boot_burst (burst.py's run: 100)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "burst_pass.json")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    sizes = [int(x) for x in args.jobs.split(",")]
    profile = os.environ.get("VCLUSTER_BENCH_PROFILE", "")
    results = [measure(n, args.per_resume, profile if n == sizes[-1] and staggered else "",
                       staggered, args.rate, args.burst)
               for n in sizes for staggered in (False, True)]
    out = {"benchmark": "burst_pass", "slurm_shape": "22.05", "per_resume": args.per_resume,
           "boot_rate_per_s": args.rate, "boot_burst": args.burst,
           "sizes": results, "python": platform.python_version(), "cpus": os.cpu_count(),
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
