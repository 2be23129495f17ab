"""How long the guest's join script (contextualization/vcluster-join.sh) takes in a VM.

Brings up its own testbed site (instance ``vcj`` on 10.118.0.0/24, or ``vcjN`` on
10.(118+10N).0.0/24 with VCLUSTER_TEST_SLOT=N), submits JOBS one-node jobs at once (each
sleeps long enough for the script to finish), and reads the VMs' logs that the testbed keeps
in ``<site>/cloud/logs``: ``vmN.console.log`` (the VM's init: "running the start script",
"start script exited with 0 after X s", millisecond times) and ``vmN.join.log`` (the
script's own lines). Reports, as JSON in benchmarks/results/join_time.json (``--label``
names the run, e.g. before/after a change of the script):

- ``join_s``: the script's run, start to exit (the console log's figure);
- ``to_slurmd_s``: the script's start -> its "starting: slurmd" line (the join log's times:
  whole seconds in scripts that log no fraction, so a coarse figure for those).

Run as root: ``python3 benchmarks/join_time.py [--jobs 10] [--label after]``.
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

RESULTS = Path(__file__).resolve().parent / "results" / "join_time.json"
SLOT = int(os.environ.get("VCLUSTER_TEST_SLOT", "0") or "0")
CONSOLE_START = re.compile(r"^(\S+ \S+) vminit: running the start script")
CONSOLE_EXIT = re.compile(r"start script exited with (\d+) after ([0-9.]+) s")
JOIN_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z vcluster-join")


def summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"n": len(values), "median": round(statistics.median(values), 3),
            "mean": round(statistics.fmean(values), 3), "min": round(values[0], 3),
            "max": round(values[-1], 3)}


def _stamp(text: str) -> float:
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in text else "%Y-%m-%dT%H:%M:%S"
    return datetime.strptime(text, fmt).timestamp()


def read_logs(logs: Path) -> tuple[list[float], list[float], list[str]]:
    """(join seconds, script start -> slurmd start seconds, problems) of every VM."""
    join_s: list[float] = []
    to_slurmd_s: list[float] = []
    problems: list[str] = []
    for console in sorted(logs.glob("vm*.console.log")):
        text = console.read_text(errors="replace")
        if m := CONSOLE_EXIT.search(text):
            if m.group(1) == "0":
                join_s.append(float(m.group(2)))
            else:
                problems.append(f"{console.name}: start script exited with {m.group(1)}")
        else:
            problems.append(f"{console.name}: the start script did not finish")
        join_log = console.with_name(console.name.replace("console", "join"))
        lines = join_log.read_text(errors="replace").splitlines() if join_log.exists() else []
        stamps = [(JOIN_STAMP.match(line), line) for line in lines]
        first = next((_stamp(m.group(1)) for m, _ in stamps if m), None)
        slurmd = next((_stamp(m.group(1)) for m, line in stamps
                       if m and "starting: slurmd" in line), None)
        if first is not None and slurmd is not None:
            to_slurmd_s.append(slurmd - first)
    return join_s, to_slurmd_s, problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--job-s", type=float, default=6.0, help="how long each job sleeps")
    ap.add_argument("--label", default="current")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args()
    name = f"vcj{SLOT}" if SLOT else "vcj"
    root = Path(tempfile.mkdtemp(prefix=f"{name}-site-", dir="/tmp"))
    os.chmod(root, 0o755)
    work = root / "work"
    work.mkdir(mode=0o1777)
    spec = site.SiteSpec(name=name, subnet=f"10.{118 + 10 * SLOT}.0.0/24",
                         state_dir=str(root / "state"), slurm_port=7417 + 10 * SLOT,
                         one_port=3233 + 10 * SLOT, onegate_port=5630 + 10 * SLOT,
                         per_job_nodes=args.jobs, pool_nodes=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "ONE_"))}
    env.update(VCLUSTER_CONFIG=str(spec.config_path), SLURM_CONF=str(spec.slurm.conf))
    site.down(spec)
    failures: list[str] = []
    try:
        site.up(spec, say=lambda line: print(line, file=sys.stderr))
        config = load_config(spec.config_path, environ={})
        env["PATH"] = f"{config.slurm.bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
        procs = [subprocess.Popen(
            ["fsub", "-N1", "--parsable", f"--output={work / f'job-{i}.out'}", "--wrap",
             f"sleep {args.job_s:g}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env) for i in range(args.jobs)]
        job_ids = []
        for proc in procs:
            out, err = proc.communicate()
            if proc.returncode != 0:
                failures.append(f"fsub exit {proc.returncode}: {err.strip()}")
            else:
                job_ids.append(out.strip().split(";")[0])
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            queue = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True,
                                   text=True, env=env, check=False).stdout.split()
            if not set(job_ids) & set(queue) and not [
                    v for v in site.status(spec).vms if not v.startswith("(")]:
                break
            time.sleep(1)
        else:
            failures.append(f"jobs or VMs left after {args.timeout:g} s")
        join_s, to_slurmd_s, problems = read_logs(spec.root / "cloud" / "logs")
        failures += problems
    finally:
        site.down(spec)
    previous = json.loads(args.output.read_text()) if args.output.exists() else {}
    runs = previous.get("runs", {}) if isinstance(previous, dict) else {}
    runs[args.label] = {
        "when": datetime.now().isoformat(timespec="seconds"), "jobs": args.jobs,
        "join_s": summary(join_s) if join_s else None,
        "to_slurmd_s": summary(to_slurmd_s) if to_slurmd_s else None,
        "failures": failures}
    result = {"benchmark": "join_time",
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "runs": runs}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(runs[args.label], indent=2))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
