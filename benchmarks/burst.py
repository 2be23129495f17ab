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
  first ``vm.allocated`` or ``vm.early_booted`` event of each node: a VM booted at the
  job's allocation is requested before Slurm's ResumeProgram asks; it is handed to the node
  later); ``vcluster_after_slurm_s`` = that minus ``slurm_resumed_s``;
* ``slurm_asked_last_s``: first sbatch -> Slurm's last ask (the earlier of the node's
  PrologSlurmctld and ResumeProgram request); per node, that ask -> VM requested:
  p50 / p95 / max (``asked_to_vm_requested_s``);
* ``requests_per_s``: VMs requested per second from the first request to the last, against
  the configured ``boot_rate_per_s`` / ``boot_burst`` (``--rate`` / ``--burst``);
* the controller's passes while it worked (count, p50 / max duration, the p50 of their observe
  and act phases, and each pass as [total, observe, act] seconds and its reads as [database,
  Slurm, OpenNebula] seconds, from controller.log) and its peak RSS (VmHWM);
* the CPU of each program slurmctld ran (hooks.log's ``cpu Y ms``): p50 / p95 / max;
* where the machine's CPU went from the first sbatch to the last VM requested
  (``cpu_s_until_all_requested``): the controller, the testbed cloud, slurmctld, the
  sbatch processes, and the rest (the hook programs, munged ...), against the whole
  machine's busy seconds; and the CPU of every program slurmctld ran, summed at the end
  (``hook_cpu_s_total``: the prologs end after the scancel; for the C hook front also its
  own CPU, without what the process had used when its ``main`` began: slurmscriptd's fork
  and the exec, ``own_p50_ms``);
* the end: the jobs are cancelled (dummy VMs never run slurmd, so no job can run), and
  ``all_vms_terminated_s`` is scancel -> no VM of the site left (no orphan VM), with the
  jobs still in Slurm's queue then (none expected).

Run as root: ``python3 benchmarks/burst.py [--jobs 1000] [--slurm host|other]``;
VCLUSTER_TEST_SLOT=N picks another instance name. JSON in benchmarks/results/burst_N.json
(``burst_N_other.json`` for the other Slurm).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from vcluster import db
from vcluster.config import load_config
from vcluster.one import OneClient
from vcluster.testbed import site
from vcluster.testbed.slurm_procs import read_pid
from vcluster.testbed.slurm_root import default_root_dir, other_suite

RESULTS = Path(__file__).resolve().parent / "results"
SLOT = int(os.environ.get("VCLUSTER_TEST_SLOT", "0") or "0")
PASS_LINE = re.compile(r"pass: (\d+) actions \((\d+) failed\) in ([0-9.]+) s"
                       r" \(observe ([0-9.]+), act ([0-9.]+)(?:; reads: database ([0-9.]+), "
                       r"Slurm ([0-9.]+), OpenNebula ([0-9.]+))?\)")
HOOK_DONE = re.compile(r" (vcluster-[a-z-]+)\[\d+\] INFO vcluster-[a-z-]+ done in [0-9.]+ s, "
                       r"cpu ([0-9.]+) ms(?:, ([0-9.]+) ms of it before its main)? \(exit \d+\)")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def summary(values: list[float], digits: int = 3) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(statistics.median(values), digits),
            "p95": round(percentile(values, 95), digits), "max": round(max(values), digits)}


def proc_cpu_s(pid: int) -> float:
    """utime + stime of one process (its waited-for children not included), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores; /proc/stat's first line)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    snap = {name: proc_cpu_s(pid) for name, pid in pids.items()}
    snap["sbatch"] = children_cpu_s()
    own = resource.getrusage(resource.RUSAGE_SELF)
    snap["benchmark (8 threads forking sbatch, polling)"] = own.ru_utime + own.ru_stime
    snap["machine"] = machine_busy_s()
    return snap


def child_named(parent: int | None, comm: str) -> int | None:
    """The pid of ``parent``'s child process called ``comm`` (slurmctld's slurmscriptd, which
    forks the programs slurmctld runs), or None."""
    if not parent:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if name == comm and int(stat[stat.rindex(")") + 2:].split()[1]) == parent:
            return int(entry.name)
    return None


def children_cpu_s() -> float:
    """CPU of this process's waited-for children (the sbatch processes), seconds."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_breakdown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each long-lived process used in between, the sbatch processes and this
    benchmark's own (the load: at a site they run on login nodes), and the rest of the
    machine (the hook programs slurmctld ran and everything else)."""
    used = {name: round(after[name] - before[name], 1) for name in before}
    used["rest (hook programs, the kernel, ...)"] = round(
        used["machine"] - sum(v for k, v in used.items() if k != "machine"), 1)
    return used


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


REQUESTED = ("vm.allocated", "vm.early_booted")
"""The events of a VM requested for a node: by its resume, or at its job's allocation."""


def wait_requested(sessions: Any, jobs: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with sessions() as s:
            done = len(set(s.scalars(select(db.Event.node_name).where(
                db.Event.kind.in_(REQUESTED))).all()))
        if done >= jobs:
            return
        time.sleep(1)
    raise RuntimeError(f"only {done} of {jobs} VMs requested within {timeout_s:.0f} s")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    third = 232 + SLOT
    root = str(default_root_dir(other_suite())) if args.slurm == "other" else ""
    state = Path(tempfile.mkdtemp(prefix="vcburst-", dir="/tmp"))  # a fresh database and logs
    os.chmod(state, 0o755)
    spec = site.SiteSpec(name=f"vcb{SLOT or ''}", subnet=f"10.{third}.0.0/21",
                         state_dir=str(state / "state"),
                         slurm_port=6890 + SLOT, one_port=2690 + SLOT,
                         onegate_port=5090 + SLOT, events_port=2190 + SLOT,
                         per_job_nodes=args.nodes, pool_nodes=1, resume_timeout_s=900,
                         driver="dummy", boot_rate_per_s=args.rate, boot_burst=args.burst,
                         boot_concurrency=args.concurrency,
                         slurm_root=root)
    site.down(spec)
    spec = site.choose_ports(spec)
    ended: dict[str, Any] = {}
    site.up(spec, say=print)
    try:
        config = load_config(spec.config_path, environ={})
        engine = db.make_engine(config.database, migrate=False)
        sessions = db.session_factory(engine)
        pids = {"controller": read_pid(spec.pid_file("controller")),
                "cloud": read_pid(spec.pid_file("cloud")),
                "slurmctld": read_pid(spec.slurm.slurmctld_pid_file),
                "munged": read_pid(spec.slurm.munged_pid_file)}
        pids["slurmscriptd"] = child_named(pids["slurmctld"], "slurmscriptd")
        cpu_before = cpu_snapshot({k: v for k, v in pids.items() if v})
        started, submitted, ids = submit(spec, args.jobs)
        wait_requested(sessions, args.jobs, args.timeout_s)
        cpu = cpu_breakdown(cpu_before, cpu_snapshot({k: v for k, v in pids.items() if v}))
        with sessions() as s:
            asks = s.scalars(select(db.HookRequest).where(
                db.HookRequest.kind.in_(("resume", "prolog")))).all()
            resumes = [r for r in asks if r.kind == "resume"]
            allocated = list({e.node_name: e for e in reversed(s.scalars(
                select(db.Event).where(db.Event.kind.in_(REQUESTED))
                .order_by(db.Event.id)).all())}.values())  # each node's first request
            early = sum(1 for e in allocated if e.kind == "vm.early_booted")
            asked_at: dict[str, datetime] = {}  # Slurm's first ask for the node
            for r in sorted(asks, key=lambda r: r.created_at):
                for name in site_hostlist(r.nodes):
                    asked_at.setdefault(name, r.created_at)
            latencies = [(e.at - asked_at[e.node_name]).total_seconds()
                         for e in allocated if e.node_name in asked_at]
            last_ask = max(asked_at.values()).timestamp()
            first_resume = min(r.created_at for r in resumes).timestamp()
            last_resume = max(r.created_at for r in resumes).timestamp()
            first_vm = min(e.at for e in allocated).timestamp()
            last_vm = max(e.at for e in allocated).timestamp()
        pid = int(spec.pid_file("controller").read_text().split()[0])
        peak_mb = status_kb(pid, "VmHWM") / 1024
        pass_lines = list(PASS_LINE.finditer(
            spec.log_file("controller").read_text(errors="replace")))
        passes = [float(m.group(3)) for m in pass_lines]
        observes = [float(m.group(4)) for m in pass_lines]
        acts = [float(m.group(5)) for m in pass_lines]
        reads = [[round(float(m.group(i)), 2) for i in (6, 7, 8)] for m in pass_lines
                 if m.group(6) is not None]
        hooks: dict[str, list[float]] = {}
        for m in HOOK_DONE.finditer((Path(config.controller.log_dir) / "hooks.log")
                                    .read_text(errors="replace")):
            hooks.setdefault(m.group(1), []).append(float(m.group(2)))
        time.sleep(2)  # the last NodeAddr batch
        addrs = nodeaddr_check(spec, sessions)
        ended = cancel_and_wait(spec, config, args.cancel_wait_s)
        totals: dict[str, list[float]] = {}
        own: dict[str, list[float]] = {}  # the hook front's own, without its start
        for m in HOOK_DONE.finditer((Path(config.controller.log_dir) / "hooks.log")
                                    .read_text(errors="replace")):
            totals.setdefault(m.group(1), []).append(float(m.group(2)))
            if m.group(3) is not None:
                own.setdefault(m.group(1), []).append(float(m.group(2)) - float(m.group(3)))
        ended["hook_cpu_s_total"] = {
            name: {"n": len(v), "cpu_s": round(sum(v) / 1000, 1),
                   "p50_ms": round(statistics.median(v), 1),
                   **({"own_p50_ms": round(statistics.median(own[name]), 2),
                       "own_max_ms": round(max(own[name]), 2)} if own.get(name) else {})}
            for name, v in sorted(totals.items())}
        engine.dispose()
    finally:
        if not ended:
            subprocess.run([str(spec.slurm.client_bin_dir / "scancel"), "--partition=vcluster"],
                           env=dict(os.environ, SLURM_CONF=str(spec.slurm.conf)), check=False)
        site.down(spec, say=print)
        if args.keep_state:
            print(f"state (logs, database) kept in {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)
    span = last_vm - first_vm
    return {
        "jobs": args.jobs, "nodes": args.nodes, "submitted_jobs": len(ids),
        "submit_s": round(submitted - started, 2),
        "slurm_resumed_s": round(last_resume - started, 2),
        "all_vms_requested_s": round(last_vm - started, 2),
        "vcluster_after_slurm_s": round(last_vm - last_resume, 2),
        "first_resume_s": round(first_resume - started, 2),
        "first_vm_requested_s": round(first_vm - started, 2),
        "slurm_asked_last_s": round(last_ask - started, 2),
        "asked_to_vm_requested_s": summary(latencies),
        "vms_requested": len(allocated),
        "vms_booted_at_allocation": early,
        "requests_per_s": round((len(allocated) - 1) / span, 1) if span > 0 else None,
        "configured_boot_rate_per_s": args.rate, "configured_boot_burst": args.burst,
        "configured_boot_concurrency": args.concurrency,
        "rate_needs_s": round(max(0.0, (len(allocated) - args.burst) / args.rate), 2),
        "controller_passes": {"n": len(passes),
                              "p50_s": round(statistics.median(passes), 3) if passes else None,
                              "max_s": round(max(passes), 3) if passes else None,
                              "observe_p50_s": round(statistics.median(observes), 3)
                              if observes else None,
                              "act_p50_s": round(statistics.median(acts), 3) if acts else None,
                              "each_s": [[round(p, 2), round(o, 2), round(a, 2)]
                                         for p, o, a in zip(passes, observes, acts, strict=True)],
                              "reads_each_s": reads},
        "controller_peak_rss_mb": round(peak_mb, 1),
        "hook_cpu_ms": {name: summary(v, 1) for name, v in sorted(hooks.items())},
        "cpu_s_until_all_requested": cpu,
        **addrs,
        **ended,
    }


def nodeaddr_check(spec: site.SiteSpec, sessions: Any) -> dict[str, int]:
    """Nodes whose VM has an IP in vcluster's database, and how many of them Slurm's NodeAddr
    does not match (the NodeAddr updates go in batches of paired lists)."""
    with sessions() as s:
        ips = {row.node_name: row.ip for row in s.scalars(select(db.Launch)) if row.ip}
    out = subprocess.run([str(spec.slurm.client_bin_dir / "scontrol"), "show", "node", "-o"],
                         env=dict(os.environ, SLURM_CONF=str(spec.slurm.conf)),
                         capture_output=True, text=True, check=False).stdout
    slurm_addr = {}
    for line in out.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        slurm_addr[fields.get("NodeName", "")] = fields.get("NodeAddr", "")
    wrong = [n for n, ip in ips.items() if slurm_addr.get(n) != ip]
    return {"nodes_with_ip": len(ips), "nodeaddr_mismatches": len(wrong)}


def cancel_and_wait(spec: site.SiteSpec, config: Any, timeout_s: float) -> dict[str, Any]:
    """scancel every job, then until no VM of the site is left: no orphan VM."""
    env = dict(os.environ, SLURM_CONF=str(spec.slurm.conf))
    bin_dir = spec.slurm.client_bin_dir
    t0 = time.time()
    subprocess.run([str(bin_dir / "scancel"), "--partition=vcluster"], env=env, check=False)
    one = OneClient(config.opennebula)
    deadline = time.monotonic() + timeout_s
    live = -1
    while time.monotonic() < deadline:
        live = sum(1 for vm in one.vms() if not vm.is_gone)
        if live == 0:
            break
        time.sleep(1)
    queued = subprocess.run([str(bin_dir / "squeue"), "-h", "-p", "vcluster"], env=env,
                            capture_output=True, text=True, check=False).stdout.split("\n")
    return {"all_vms_terminated_s": round(time.time() - t0, 2) if live == 0 else None,
            "vms_left": live, "jobs_left_in_queue": sum(1 for line in queued if line.strip())}


def site_hostlist(text: str) -> list[str]:
    from vcluster.slurm_parse import expand_hostlist
    return list(expand_hostlist(text))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0,
                        help="the controller's boot_rate_per_s")
    parser.add_argument("--burst", type=int, default=100, help="the controller's boot_burst")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="the controller's boot_concurrency")
    parser.add_argument("--slurm", choices=("host", "other"), default="host",
                        help="the host's Slurm or the other one (chrooted root)")
    parser.add_argument("--timeout-s", type=float, default=600)
    parser.add_argument("--cancel-wait-s", type=float, default=600,
                        help="how long to wait after scancel for every VM to be gone")
    parser.add_argument("--keep-state", action="store_true",
                        help="keep the site's logs and database (printed at the end)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.out = args.out or RESULTS / (f"burst_{args.jobs}"
                                      + ("_other" if args.slurm == "other" else "") + ".json")
    if os.geteuid() != 0:
        print("burst: run as root (the testbed needs it)", file=sys.stderr)
        return 2
    result = {"benchmark": "burst", "slurm": args.slurm, **measure(args),
              "python": platform.python_version(), "cpus": os.cpu_count(),
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
