"""Benchmark: 1,000 one-node jobs submitted at once to a real Slurm with 1,000 CLOUD nodes.

Brings up a testbed site whose cloud runs the ``dummy`` driver (VMs go through oned's states
but run nothing, so their nodes never register: the burst measures the request path, not
boots), with a per-job class of ``--nodes`` nodes, submits ``--jobs`` one-node jobs with
``sbatch`` from 8 threads at once (the sbatch line fsub writes), and waits until vcluster
has asked OpenNebula for a VM for every job's node. Then it cancels the jobs and takes the
site down.

Reported (JSON in benchmarks/results/burst.json):

* ``submit_s``: first sbatch started -> last sbatch returned;
* ``slurm_resumed_s``: first sbatch -> the last ResumeProgram request (Slurm's side: when
  slurmctld had allocated every job and asked for its node), the reference;
* ``all_vms_requested_s``: first sbatch -> the last VM requested from OpenNebula (the
  ``vm.allocated`` events); ``vcluster_after_slurm_s`` = that minus ``slurm_resumed_s``;
* per node, resume request -> VM requested: p50 / p95 / max;
* the controller's passes while it worked (count, p50 / max duration, from controller.log)
  and its peak RSS (VmHWM).

Run as root: ``python3 benchmarks/burst.py [--jobs 1000]``; VCLUSTER_TEST_SLOT=N picks another
instance name.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from vcluster import db
from vcluster.config import load_config
from vcluster.testbed import site

RESULTS = Path(__file__).resolve().parent / "results" / "burst.json"
SLOT = int(os.environ.get("VCLUSTER_TEST_SLOT", "0") or "0")
PASS_LINE = re.compile(r"pass: (\d+) actions \((\d+) failed\) in ([0-9.]+) s")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def submit(spec: site.SiteSpec, jobs: int) -> tuple[float, float, list[int]]:
    env = dict(os.environ, SLURM_CONF=str(spec.slurm.conf))
    sbatch = str(spec.slurm.client_bin_dir / "sbatch")
    argv = [sbatch, "--parsable", "-N1", "--partition=vcluster", "--constraint=small",
            "--exclusive", "--output=/dev/null", "--wrap", "sleep 1"]

    def one(_: int) -> int:
        for attempt in range(1, 6):  # slurmctld may say "try again" under a flood: as sbatch's
            out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
            if out.returncode == 0:
                return int(out.stdout.strip().split(";")[0])
            time.sleep(attempt)
        raise RuntimeError(f"sbatch failed 5 times: {out.stderr.strip()}")

    started = time.time()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(one, range(jobs)))
    return started, time.time(), ids


def wait_requested(sessions: Any, jobs: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with sessions() as s:
            done = len(s.scalars(select(db.Event.id).where(
                db.Event.kind == "vm.allocated")).all())
        if done >= jobs:
            return
        time.sleep(1)
    raise RuntimeError(f"only {done} of {jobs} VMs requested within {timeout_s:.0f} s")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    third = 232 + SLOT
    spec = site.SiteSpec(name=f"vcb{SLOT or ''}", subnet=f"10.{third}.0.0/21",
                         slurm_port=6890 + SLOT, one_port=2690 + SLOT,
                         onegate_port=5090 + SLOT, per_job_nodes=args.nodes, pool_nodes=1,
                         resume_timeout_s=900, driver="dummy")
    site.up(spec, say=print)
    try:
        config = load_config(spec.config_path, environ={})
        engine = db.make_engine(config.database, migrate=False)
        sessions = db.session_factory(engine)
        started, submitted, ids = submit(spec, args.jobs)
        wait_requested(sessions, args.jobs, args.timeout_s)
        with sessions() as s:
            resumes = s.scalars(select(db.HookRequest).where(
                db.HookRequest.kind == "resume")).all()
            allocated = s.scalars(select(db.Event).where(
                db.Event.kind == "vm.allocated")).all()
            resumed_at: dict[str, datetime] = {}
            for r in resumes:
                for name in site_hostlist(r.nodes):
                    resumed_at.setdefault(name, r.created_at)
            latencies = [(e.at - resumed_at[e.node_name]).total_seconds()
                         for e in allocated if e.node_name in resumed_at]
            last_resume = max(r.created_at for r in resumes).timestamp()
            last_vm = max(e.at for e in allocated).timestamp()
        pid = int(spec.pid_file("controller").read_text().split()[0])
        peak_mb = status_kb(pid, "VmHWM") / 1024
        passes = [float(m.group(3)) for m in PASS_LINE.finditer(
            spec.log_file("controller").read_text(errors="replace"))]
        engine.dispose()
    finally:
        subprocess.run([str(spec.slurm.client_bin_dir / "scancel"), "--partition=vcluster"],
                       env=dict(os.environ, SLURM_CONF=str(spec.slurm.conf)), check=False)
        site.down(spec, say=print)
    return {
        "jobs": args.jobs, "nodes": args.nodes, "submitted_jobs": len(ids),
        "submit_s": round(submitted - started, 2),
        "slurm_resumed_s": round(last_resume - started, 2),
        "all_vms_requested_s": round(last_vm - started, 2),
        "vcluster_after_slurm_s": round(last_vm - last_resume, 2),
        "resume_to_vm_requested_s": {
            "n": len(latencies), "p50": round(statistics.median(latencies), 3),
            "p95": round(percentile(latencies, 95), 3), "max": round(max(latencies), 3)},
        "controller_passes": {"n": len(passes),
                              "p50_s": round(statistics.median(passes), 3) if passes else None,
                              "max_s": round(max(passes), 3) if passes else None},
        "controller_peak_rss_mb": round(peak_mb, 1),
    }


def site_hostlist(text: str) -> list[str]:
    from vcluster.slurm_parse import expand_hostlist
    return list(expand_hostlist(text))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--timeout-s", type=float, default=600)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("burst: run as root (the testbed needs it)", file=sys.stderr)
        return 2
    result = {"benchmark": "burst", **measure(args), "python": platform.python_version(),
              "cpus": os.cpu_count(),
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
