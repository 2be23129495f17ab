"""End-to-end latency of jobs on fresh VMs, on the testbed site (real Slurm, netns VMs).

Brings up its own site (instance ``vcb``, 10.117.0.0/24), submits JOBS one-node jobs with
``fsub`` (STREAMS at a time), and reports, as JSON in benchmarks/results/e2e_jobs.json:

- ``overhead_s``: submit -> job start, minus the VM's own boot. Submit is taken just before
  ``fsub`` runs; job start is the first thing the job script prints (``date +%s.%N``); the
  VM's own boot is ``vm.allocated`` (the controller's allocate call returned) ->
  ``job.nodes_up`` (the prolog, polling every 0.25 s, saw the node registered) in vcluster's
  event log: the VM boots, runs its contextualization, and its slurmd registers. What remains
  is Slurm's scheduling and power-saving delays, the hooks, the controller's planning and
  allocation, and the prolog.
- ``end_to_terminate_s``: the job script's last ``date +%s.%N`` -> the controller's
  ``terminate`` call for that job's VM (``vm.terminated`` event).
- ``controller_cpu_s_per_job``: the controller's user+system CPU time over the run / JOBS.
- ``submit_to_start_s``: submit -> job start, the VM's boot included: what a user waits.

``--boot-s 30`` makes every VM spend 30 s in BOOT, as a real VM does. ``--standby K`` keeps
K standby VMs in the per-job class; each job is then submitted once a standby VM is ready
(jobs arriving no faster than the reserve is refilled; the wait before a submission is not
counted), and its VM's "allocation" is the handover (``vm.standby_claimed``).
``--slurm other`` runs the site on the other Debian release's Slurm (24.11 from its
debootstrapped root, :mod:`vcluster.testbed.slurm_root`) instead of the host's (22.05).
``VCLUSTER_TEST_SLOT=N`` moves the site (name, subnet, ports) out of another run's way.

Run as root: ``python3 benchmarks/e2e_jobs.py [--jobs 20] [--streams 2] [--boot-s 30]
[--standby 2] [--slurm host|other] [--output results/x.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from vcluster import db
from vcluster.config import load_config
from vcluster.controller.standby import is_claimable, is_standby
from vcluster.one import OneClient
from vcluster.testbed import site, slurm_root

RESULTS = Path(__file__).resolve().parent / "results" / "e2e_jobs.json"


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ts(dt: datetime) -> float:
    return dt.timestamp()


def summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "n": len(values),
        "mean": round(statistics.fmean(values), 3),
        "median": round(statistics.median(values), 3),
        "p90": round(values[max(0, int(len(values) * 0.9) - 1)], 3),
        "min": round(values[0], 3),
        "max": round(values[-1], 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument("--boot-s", type=float, default=0.5)
    ap.add_argument("--standby", type=int, default=0)
    ap.add_argument("--slurm", choices=("host", "other"), default="host")
    ap.add_argument("--slurm-debug", action="store_true",
                    help="slurmctld logs at level debug with DebugFlags=Power (for timelines)")
    args = ap.parse_args()
    slot = int(os.environ.get("VCLUSTER_TEST_SLOT", "0") or "0")
    root = Path(tempfile.mkdtemp(prefix="vcb-site-", dir="/tmp"))
    os.chmod(root, 0o755)
    work = root / "work"
    work.mkdir(mode=0o1777)
    spec = site.SiteSpec(name=f"vcb{slot or ''}", subnet=f"10.{117 + 10 * slot}.0.0/24",
                         state_dir=str(root / "state"), slurm_port=7117 + 10 * slot,
                         one_port=2933 + 10 * slot, onegate_port=5330 + 10 * slot,
                         per_job_nodes=max(4, 2 * args.streams), pool_nodes=1,
                         boot_s=args.boot_s, standby=args.standby,
                         resume_timeout_s=max(90, int(args.boot_s) + 60),
                         slurm_root="" if args.slurm == "host" else slurm_root.build().path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "ONE_"))}
    env.update(VCLUSTER_CONFIG=str(spec.config_path), SLURM_CONF=str(spec.slurm.conf),
               PATH=f"{spec.slurm.client_bin_dir}:{sysconfig.get_path('scripts')}:"
                    f"{env.get('PATH', '/usr/bin:/bin')}")
    site.down(spec)
    try:
        site.up(spec, say=lambda line: print(line, file=sys.stderr))
        config = load_config(spec.config_path, environ={})
        if args.slurm_debug:
            for argv in (["scontrol", "setdebug", "debug"],
                         ["scontrol", "setdebugflags", "+Power"]):
                subprocess.run(argv, env=env, check=True, timeout=30)
        print(f"site state (logs): {spec.root}", file=sys.stderr)
        ctl_pid = int(spec.pid_file("controller").read_text())
        cpu0 = cpu_s(ctl_pid)
        submitted: dict[int, float] = {}
        lock = threading.Lock()
        failures: list[str] = []
        one = OneClient(config.opennebula)

        def standby_ready() -> None:
            """Until a standby VM is ready (at most twice a boot and a minute)."""
            deadline = time.monotonic() + 2 * args.boot_s + 60
            while time.monotonic() < deadline:
                vms = one.vms(cluster=config.controller.cluster_name)
                if any(is_standby(v) and is_claimable(v) for v in vms):
                    return
                time.sleep(0.5)

        def stream(indices: range) -> None:
            for i in indices:
                out = work / f"job-{i}.out"
                if args.standby:
                    standby_ready()
                t0 = time.time()
                proc = subprocess.run(
                    ["fsub", "-N1", "--wait", "--parsable", f"--output={out}", "--wrap",
                     "date +%s.%N; hostname; date +%s.%N"],
                    capture_output=True, text=True, env=env, timeout=600, check=False,
                    cwd=work)  # the job's working directory: in every VM's root
                if proc.returncode != 0:
                    failures.append(f"job {i}: exit {proc.returncode}: {proc.stderr.strip()}")
                    continue
                with lock:
                    submitted[int(proc.stdout.strip().split(";")[0])] = t0

        per = -(-args.jobs // args.streams)
        threads = [threading.Thread(target=stream, args=(range(s * per, min(args.jobs,
                                                                            (s + 1) * per)),))
                   for s in range(args.streams)]
        t_start = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall_s = time.time() - t_start
        time.sleep(config.controller.interval_s * 2 + 6)  # let the last terminations land
        cpu1 = cpu_s(ctl_pid)

        factory = db.session_factory(db.make_engine(config.database))
        with db.transaction(factory) as s:
            events = s.scalars(select(db.Event).order_by(db.Event.id)).all()
        first: dict[tuple[str, int], float] = {}
        for ev in events:
            if ev.job_id is not None and ev.kind in ("vm.allocated", "job.nodes_up",
                                                      "vm.terminated", "vm.standby_claimed",
                                                      "vm.early_booted"):
                kind = "vm.allocated" if ev.kind in ("vm.standby_claimed",
                                                     "vm.early_booted") else ev.kind
                first.setdefault((kind, ev.job_id), ts(ev.at))
        overhead: list[float] = []
        boot: list[float] = []
        end_term: list[float] = []
        waited: list[float] = []
        for job_id, t_submit in sorted(submitted.items()):
            alloc = first.get(("vm.allocated", job_id))
            up = first.get(("job.nodes_up", job_id))
            term = first.get(("vm.terminated", job_id))
            out = _output_for(job_id, env)
            if alloc is None or term is None:
                failures.append(f"job {job_id}: no VM of its own was booted and terminated")
                continue
            if up is None or out is None:
                failures.append(f"job {job_id}: no nodes-up event or no output")
                continue
            assert alloc is not None and up is not None and term is not None
            start, end = out
            boot_s = up - alloc
            boot.append(boot_s)
            overhead.append((start - t_submit) - boot_s)
            waited.append(start - t_submit)
            end_term.append(term - end)
        result = {
            "benchmark": "e2e_jobs",
            "when": datetime.now().isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "jobs": args.jobs,
            "boot_s_setting": args.boot_s,
            "standby": args.standby,
            "streams": args.streams,
            "slurm": _slurm_version(env),
            "completed": len(overhead),
            "failures": failures,
            "wall_s": round(wall_s, 1),
            "vm_boot_s": summary(boot) if boot else None,
            "overhead_s": summary(overhead) if overhead else None,
            "submit_to_start_s": summary(waited) if waited else None,
            "end_to_terminate_s": summary(end_term) if end_term else None,
            "controller_cpu_s_per_job": round((cpu1 - cpu0) / max(1, args.jobs), 4),
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0 if not failures else 1
    finally:
        site.down(spec)


def _slurm_version(env: dict[str, str]) -> str:
    proc = subprocess.run(["scontrol", "--version"], capture_output=True, text=True, env=env,
                          check=False)
    return proc.stdout.strip()


def _output_for(job_id: int, env: dict[str, str]) -> tuple[float, float] | None:
    """The job's (start, end) as printed by its script, found through its StdOut."""
    proc = subprocess.run(["scontrol", "show", "job", str(job_id), "-o"], capture_output=True,
                          text=True, env=env, check=False)
    for word in proc.stdout.split():
        if word.startswith("StdOut="):
            lines = Path(word.split("=", 1)[1]).read_text().split()
            if len(lines) == 3:
                return float(lines[0]), float(lines[2])
    return None


if __name__ == "__main__":
    sys.exit(main())
