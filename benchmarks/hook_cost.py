"""CPU time of each program slurmctld runs, with JOBS one-node jobs starting at once.

Brings up its own testbed site (real slurmctld, the cloud with netns VMs, the controller;
instance ``vch`` on 10.116.0.0/24, or ``vchN`` on 10.(116+10N).0.0/24 with
VCLUSTER_TEST_SLOT=N), submits JOBS one-node jobs with ``fsub`` all at once, waits until
they ran and their VMs are gone, and reads the CPU each hook program reported in
``hooks.log`` (user+system of the process since exec, its sh wrapper included, plus its
finished children: ``done in X s, cpu Y ms``). Phases:

- ``socket``: the hooks hand their requests to the controller (``hooks.sock``);
- ``in_process`` (``--in-process``): the controller's socket is removed, so every hook does
  its work itself with its own database connection and Slurm calls: the path every hook
  took before the socket (its prolog polls Slurm itself).

In the same run, a reference: the CPU of ``/bin/true``, of a bare ``python3 -c pass`` and of
importing the hook module (and the one hooks imported before), each measured with wait4, so
that the figures are also ratios. fsub's own CPU (wait4) is reported too.
JSON in benchmarks/results/hook_cost.json.

Run as root: ``python3 benchmarks/hook_cost.py [--jobs 50] [--in-process]``.
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
import tempfile
import time
from datetime import datetime
from pathlib import Path

from vcluster.config import load_config
from vcluster.testbed import site

RESULTS = Path(__file__).resolve().parent / "results" / "hook_cost.json"
SLOT = int(os.environ.get("VCLUSTER_TEST_SLOT", "0") or "0")
DONE = re.compile(r" (vcluster-[a-z-]+)\[\d+\] INFO vcluster-[a-z-]+ done in ([0-9.]+) s, "
                  r"cpu ([0-9.]+) ms(?:, [0-9.]+ ms of it before its main)? \(exit (\d+)\)")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def summary(values: list[float], reference_ms: float | None = None) -> dict[str, float]:
    out = {"n": len(values), "p50_ms": round(statistics.median(values), 1),
           "p95_ms": round(percentile(values, 95), 1), "max_ms": round(max(values), 1)}
    if reference_ms:
        out["p50_x_python"] = round(out["p50_ms"] / reference_ms, 2)
        out["p95_x_python"] = round(out["p95_ms"] / reference_ms, 2)
    return out


def wait4_cpu_ms(argv: list[str], runs: int, env: dict[str, str] | None = None) -> list[float]:
    """CPU (user+system, ms) of each of ``runs`` runs of ``argv``, from wait4."""
    values = []
    for _ in range(runs):
        pid = os.posix_spawnp(argv[0], argv, env or os.environ)
        _, _, usage = os.wait4(pid, 0)
        values.append((usage.ru_utime + usage.ru_stime) * 1000)
    return values


def reference(runs: int) -> dict[str, dict[str, float]]:
    py = sys.executable
    probes = {
        "/bin/true": ["/bin/true"],
        "python3 -c pass": [py, "-c", "pass"],
        "import vcluster.hook_client (the hook programs)": [py, "-c",
                                                            "import vcluster.hook_client"],
        "import vcluster.hooks (what every hook imported before)": [py, "-c",
                                                                     "import vcluster.hooks"],
    }
    return {name: summary(wait4_cpu_ms(argv, runs)) for name, argv in probes.items()}


def hook_lines(log: Path, offset: int) -> dict[str, list[tuple[float, float, int]]]:
    """{program: [(wall s, cpu ms, exit)]} from hooks.log after ``offset`` bytes."""
    found: dict[str, list[tuple[float, float, int]]] = {}
    with log.open(encoding="utf-8", errors="replace") as handle:
        handle.seek(offset)
        for line in handle:
            if m := DONE.search(line):
                found.setdefault(m.group(1), []).append(
                    (float(m.group(2)), float(m.group(3)), int(m.group(4))))
    return found


def burst(spec: site.SiteSpec, env: dict[str, str], work: Path, jobs: int, tag: str,
          timeout_s: float) -> tuple[list[int], list[float], list[str], float]:
    """Submit ``jobs`` one-node jobs at once with fsub; wait until they are gone from Slurm
    and no VM of the site lives. Returns (job ids, fsub CPU ms, failures, wall s)."""
    started = time.monotonic()
    procs = []
    for i in range(jobs):
        argv = ["fsub", "-N1", "--parsable", f"--output={work / f'{tag}-{i}.out'}",
                "--wrap", "hostname"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env))
    job_ids: list[int] = []
    fsub_cpu: list[float] = []
    failures: list[str] = []
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out, err = proc.communicate()
        fsub_cpu.append((usage.ru_utime + usage.ru_stime) * 1000)
        if proc.returncode != 0:
            failures.append(f"fsub exit {proc.returncode}: {err.strip()}")
            continue
        job_ids.append(int(out.strip().split(";")[0]))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                               env=env, check=False).stdout.split()
        if not set(map(str, job_ids)) & set(queue) and not _live_vms(spec):
            break
        time.sleep(1)
    else:
        failures.append(f"{tag}: jobs or VMs left after {timeout_s:g} s")
    return job_ids, fsub_cpu, failures, time.monotonic() - started


def wait_for_triggers(log: Path, offset: int, jobs: int, timeout_s: float = 40.0) -> None:
    """strigger runs vcluster-job-finished up to 15 s after a job ends: wait for them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(hook_lines(log, offset).get("vcluster-job-finished", [])) >= jobs:
            return
        time.sleep(1)


def _live_vms(spec: site.SiteSpec) -> int:
    return len([line for line in site.status(spec).vms if not line.startswith("(")])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--in-process", action="store_true",
                    help="also run the burst with the controller's socket removed")
    ap.add_argument("--reference-runs", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args()
    name = f"vch{SLOT}" if SLOT else "vch"
    root = Path(tempfile.mkdtemp(prefix=f"{name}-site-", dir="/tmp"))
    os.chmod(root, 0o755)
    work = root / "work"
    work.mkdir(mode=0o1777)
    spec = site.SiteSpec(name=name, subnet=f"10.{116 + 10 * SLOT}.0.0/24",
                         state_dir=str(root / "state"), slurm_port=7217 + 10 * SLOT,
                         one_port=3033 + 10 * SLOT, onegate_port=5430 + 10 * SLOT,
                         per_job_nodes=args.jobs, pool_nodes=1, resume_timeout_s=180)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "ONE_"))}
    env.update(VCLUSTER_CONFIG=str(spec.config_path), SLURM_CONF=str(spec.slurm.conf))
    site.down(spec)
    result: dict[str, object] = {
        "benchmark": "hook_cost", "when": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "jobs": args.jobs}
    failures: list[str] = []
    try:
        ref = reference(args.reference_runs)
        python_ms = ref["python3 -c pass"]["p50_ms"]
        result["reference_cpu_ms"] = ref
        site.up(spec, say=lambda line: print(line, file=sys.stderr))
        config = load_config(spec.config_path, environ={})
        env["PATH"] = f"{config.slurm.bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
        log = Path(config.controller.log_dir) / "hooks.log"
        phases = ["socket"] + (["in_process"] if args.in_process else [])
        for phase in phases:
            if phase == "in_process":
                Path(config.controller.state_dir, "hooks.sock").unlink(missing_ok=True)
            offset = log.stat().st_size if log.exists() else 0
            job_ids, fsub_cpu, burst_failures, wall_s = burst(
                spec, env, work, args.jobs, phase, args.timeout)
            failures += burst_failures
            wait_for_triggers(log, offset, len(job_ids))
            lines = hook_lines(log, offset)
            result[phase] = {
                "jobs_submitted": len(job_ids), "wall_s": round(wall_s, 1),
                "hook_cpu_ms": {prog: summary([c for _, c, _ in v], python_ms)
                                for prog, v in sorted(lines.items())},
                "hook_wall_s": {prog: {"p50": round(statistics.median([w for w, _, _ in v]), 3),
                                       "p95": round(percentile([w for w, _, _ in v], 95), 3)}
                                for prog, v in sorted(lines.items())},
                "hook_exits": {prog: sorted({e for _, _, e in v}) for prog, v in lines.items()},
                "fsub_cpu_ms": summary(fsub_cpu, python_ms),
            }
        result["failures"] = failures
    finally:
        site.down(spec)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
