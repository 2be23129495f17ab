"""Where a job's submit -> start goes on standby VMs: stage times from a testbed site's logs.

Reads a site's state directory after ``e2e_jobs.py --standby K --slurm-debug`` (it prints
``site state (logs): DIR``; the directory is kept): slurmctld's log (submit, allocation,
the power-save pass waking the node, the node's registration, the job's configuration
complete), the controller's log (the standby VM handed over, the prolog's wait ended) and
the guests' join logs (slurmd started). Prints, per stage, the median and the 90th
percentile over the jobs, as JSON.

Run: ``python3 benchmarks/standby_timeline.py DIR [--output results/x.json]``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from datetime import datetime
from pathlib import Path

CTLD = {
    "submit": re.compile(r"_slurm_rpc_submit_batch_job: JobId=(\d+) "),
    "allocated": re.compile(r"sched: Allocate JobId=(\d+) NodeList=(\S+)"),
    "configured": re.compile(r"Configuration for JobId=(\d+) (?:is )?complete"),
}
WAKE = re.compile(r"power_save: (?:pid \d+ )?waking nodes (\S+)")
RESPONDING = re.compile(r"Node (\S+) now responding")
CONTROLLER = {
    "handed_over": re.compile(r"event vm\.standby_claimed node=(\S+) job=(\d+)"),
    "prolog_done": re.compile(r"event job\.nodes_up node=\S+ job=(\d+)"),
}
STAGES = [("submit", "allocated"), ("allocated", "handed_over"), ("allocated", "woken"),
          ("handed_over", "registered"), ("woken", "registered"),
          ("registered", "prolog_done"), ("prolog_done", "configured"),
          ("submit", "configured")]


def stamp(line: str) -> float | None:
    m = re.match(r"\[?(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d[.,]\d{3})", line)
    if not m:
        return None
    return datetime.fromisoformat(m.group(1).replace(",", ".").replace(" ", "T")).timestamp()


def timeline(state: Path) -> dict[int, dict[str, float]]:
    jobs: dict[int, dict[str, float]] = {}
    node_job: dict[str, int] = {}
    for line in (state / "slurm" / "log" / "slurmctld.log").read_text().splitlines():
        t = stamp(line)
        if t is None:
            continue
        for key, pattern in CTLD.items():
            if m := pattern.search(line):
                job = jobs.setdefault(int(m.group(1)), {})
                job.setdefault(key, t)
                if key == "allocated":
                    node_job[m.group(2)] = int(m.group(1))
        for key, pattern in (("woken", WAKE), ("registered", RESPONDING)):
            if (m := pattern.search(line)) and m.group(1) in node_job:
                jobs[node_job[m.group(1)]].setdefault(key, t)
    for line in (state / "log" / "controller.log").read_text().splitlines():
        t = stamp(line)
        if t is None:
            continue
        if m := CONTROLLER["handed_over"].search(line):
            jobs.setdefault(int(m.group(2)), {}).setdefault("handed_over", t)
        elif m := CONTROLLER["prolog_done"].search(line):
            jobs.setdefault(int(m.group(1)), {}).setdefault("prolog_done", t)
    return jobs


def summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"n": len(values), "median": round(statistics.median(values), 3),
            "p90": round(values[max(0, int(len(values) * 0.9) - 1)], 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("state", type=Path)
    ap.add_argument("--output", type=Path)
    args = ap.parse_args()
    jobs = timeline(args.state)
    stages = {}
    for a, b in STAGES:
        values = [j[b] - j[a] for j in jobs.values() if a in j and b in j]
        if values:
            stages[f"{a} -> {b}"] = summary(values)
    result = {"benchmark": "standby_timeline", "jobs": len(jobs), "stages_s": stages}
    text = json.dumps(result, indent=2) + "\n"
    if args.output:
        args.output.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
