"""vcluster against a minimal reference bridge, same testbed site, same run.

For each setting (VM boot time, standby VMs) it brings up the testbed site
(:mod:`vcluster.testbed.site`: real slurmctld/slurmd and munge, the OpenNebula-compatible
cloud with netns VMs), runs the job shapes through vcluster, then stops vcluster's controller,
terminates every VM, points the same slurmctld's ResumeProgram, SuspendProgram,
ResumeFailProgram, PrologSlurmctld and EpilogSlurmctld at ``reference_bridge/`` (sequential
allocation with pyone, a shell prolog that waits for the nodes, an epilog that powers them
down), ``scontrol reconfigure``, and runs the same shapes again; then back (the saved
slurm.conf, reconfigure, the controller started again), and so on.

The shapes of one to five jobs run ``--repeat`` times per side (default 5), one after
another, the sides alternating A B B A ... (one switch a round; a drift in the machine's load
hits both); 50 jobs run ``--repeat-large`` times per side (default 1) at the end. The p50s
are over every job of a shape's runs; the JSON keeps every sample.

Shapes: ``1node`` (one -N1 job), ``2node_srun`` (one -N2 job whose script runs ``srun -N2``),
``5jobs`` and ``50jobs`` (five / fifty -N1 jobs submitted at once; ``--shapes`` picks); one
unmeasured -N1 job first (slurmctld, just started, schedules its first job ~2 s late). Both
sides submit with the same ``sbatch -p vcluster --constraint=small --exclusive``. Per job:

- submit -> running: just before sbatch runs -> the first ``date +%s.%N`` of the job script;
- job end -> VM terminated: the script's last ``date`` -> the terminate call for the last
  of the job's VMs (vcluster: its ``vm.terminated`` events; reference: the SuspendProgram's
  log line written when ``one.vm.action terminate-hard`` returned).

Writes p50 of each, per shape and side, and the ratios vcluster/reference, into
benchmarks/results/compare.json (settings already there from another run are kept).
Run as root: ``python3 benchmarks/compare.py [--settings 0.5:0,30:0,30:2] [--shapes ...]
[--repeat N] [--output X.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from vcluster import db
from vcluster.config import load_config
from vcluster.controller.standby import is_claimable, is_standby
from vcluster.errors import VclusterError
from vcluster.one import OneClient
from vcluster.testbed import site

HERE = Path(__file__).resolve().parent
BRIDGE = HERE / "reference_bridge"
RESULTS = HERE / "results" / "compare.json"
SHAPES = {"1node": (1, 1), "2node_srun": (1, 2), "5jobs": (5, 1), "50jobs": (50, 1)}
REPEATED_JOBS = 5
"""Shapes of up to this many jobs run ``--repeat`` times (their jobs share one VM placement
pass of the cloud, so one run is one sample); 50 jobs run once."""
HOOK_KEYS = ("ResumeProgram", "SuspendProgram", "ResumeFailProgram", "PrologSlurmctld",
             "EpilogSlurmctld")


def run(argv: list[str], env: dict[str, str], check: bool = True) -> str:
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120,
                          check=check).stdout


class Side:
    """One side's way to find a job's VM terminations."""

    def __init__(self, name: str, spec: site.SiteSpec, env: dict[str, str]) -> None:
        self.name, self.spec, self.env = name, spec, env
        self.config = load_config(spec.config_path, environ={})
        self.one = OneClient(self.config.opennebula)

    def terminated(self, job_id: int, nodes: list[str], end: float) -> float | None:
        if self.name == "vcluster":
            factory = db.session_factory(db.make_engine(self.config.database))
            with db.transaction(factory) as s:
                times = [ev.at.timestamp() for ev in s.scalars(
                    select(db.Event).where(db.Event.job_id == job_id,
                                           db.Event.kind == "vm.terminated"))]
            return max(times) if len(times) >= len(nodes) else None
        last = 0.0
        lines = (self.spec.root / "refbridge.log").read_text().splitlines()
        for node in nodes:
            found = [float(line.split()[0]) for line in lines
                     if f" terminated node {node} " in line and float(line.split()[0]) > end]
            if not found:
                return None
            last = max(last, min(found))
        return last

    def busy_vms(self) -> int:
        return sum(1 for vm in self.one.vms() if not vm.is_gone and not is_standby(vm))

    def settle(self, standby: int, timeout_s: float) -> None:
        """Until no job VM lives, every node is powered down, and the standby reserve is full."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = run(["sinfo", "-h", "-N", "-p", "vcluster", "-o", "%t"], self.env).split()
            ready = sum(1 for vm in self.one.vms() if is_standby(vm) and is_claimable(vm))
            if (self.busy_vms() == 0 and states and all(s == "idle~" for s in states)
                    and ready >= standby):
                return
            time.sleep(0.5)
        print(f"warning: {self.name}: site not settled after {timeout_s:g} s", file=sys.stderr)


def shape_timeout_s(shape: str, boot_s: float) -> float:
    """How long a shape's jobs may take: three boots and 3 minutes, and for the 50 jobs a
    boot per wave of 5 more (the testbed cloud's host runs about 8 VMs at once: at 30 s
    boots the last of 50 jobs started 240-270 s in, past the 270 s the small shapes get,
    and the side that ran over left its jobs and VMs to the other side)."""
    jobs, nodes = SHAPES[shape]
    return 3 * boot_s + 180 + (jobs * nodes // 5) * boot_s


def run_shape(side: Side, shape: str, work: Path, timeout_s: float) -> dict[str, Any]:
    jobs, nodes = SHAPES[shape]
    body = ("date +%s.%N; srun -N2 hostname; date +%s.%N" if nodes == 2
            else "date +%s.%N; hostname; date +%s.%N")
    submitted: dict[int, tuple[float, Path]] = {}
    failures: list[str] = []
    for i in range(jobs):
        out = work / f"{side.name}-{shape}-{i}.out"
        t0 = time.time()
        proc = subprocess.run(["sbatch", "--parsable", "-p", "vcluster", "--constraint=small",
                               "--exclusive", f"-N{nodes}", f"--output={out}", "--wrap", body],
                              capture_output=True, text=True, env=side.env, check=False)
        if proc.returncode != 0:
            failures.append(f"sbatch exit {proc.returncode}: {proc.stderr.strip()}")
            continue
        submitted[int(proc.stdout.strip().split(";")[0])] = (t0, out)
    job_nodes: dict[int, list[str]] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # one squeue a round: 50 scontrol calls would load the CPU
        queued = run(["squeue", "-h", "-j", ",".join(map(str, submitted)), "-o", "%i %N"],
                     side.env, check=False).splitlines()
        for line in queued:
            job, _, nodelist = line.strip().partition(" ")
            if job.isdigit() and int(job) not in job_nodes and nodelist.strip():
                job_nodes[int(job)] = run(["scontrol", "show", "hostnames", nodelist.strip()],
                                          side.env).split()
        if not queued:
            break
        time.sleep(0.5)
    wait_vms = time.monotonic() + 60
    while side.busy_vms() and time.monotonic() < wait_vms:
        time.sleep(0.5)
    time.sleep(1)
    to_run: list[float] = []
    to_term: list[float] = []
    for job_id, (t0, out) in sorted(submitted.items()):
        lines = out.read_text().split() if out.exists() else []
        if len(lines) < 3:
            failures.append(f"job {job_id}: no output ({out})")
            continue
        start, end = float(lines[0]), float(lines[-1])
        to_run.append(start - t0)
        term = side.terminated(job_id, job_nodes.get(job_id, []), end)
        if term is None:
            failures.append(f"job {job_id}: no terminate found for its VMs")
        else:
            to_term.append(term - end)
    return {"jobs": jobs, "nodes_per_job": nodes, "completed": len(to_run), "failures": failures,
            "submit_to_running_p50_s": p50(to_run), "end_to_terminated_p50_s": p50(to_term),
            "submit_to_running_s": [round(x, 3) for x in to_run],
            "end_to_terminated_s": [round(x, 3) for x in to_term]}


def p50(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def use_reference_bridge(spec: site.SiteSpec, env: dict[str, str]) -> None:
    """Stop vcluster, terminate every VM, and point slurmctld's hooks at the reference."""
    site.stop_controller(spec)
    config = load_config(spec.config_path, environ={})
    one = OneClient(config.opennebula)
    deadline = time.monotonic() + spec.boot_s + 30
    while time.monotonic() < deadline:  # a VM still in BOOT cannot be terminated yet
        live = [vm for vm in one.vms() if not vm.is_gone]
        if not live:
            break
        for vm in live:
            try:
                one.terminate(vm.vm_id, hard=True)
            except VclusterError:
                pass
        time.sleep(1)
    bin_dir = spec.root / "refbridge"
    bin_dir.mkdir(exist_ok=True)
    settings = {"xmlrpc": spec.xmlrpc, "auth_file": str(spec.auth_file),
                "template": site.WORKER_TEMPLATE, "munge_key_file": str(spec.slurm.munge_key),
                "slurmctld": f"{spec.gateway}:{spec.slurm_port}", "cluster": spec.name,
                "scontrol": str(spec.slurm.client_bin_dir / "scontrol"),
                "join_script": str(HERE.parent / "contextualization" / "vcluster-join.sh"),
                "log": str(spec.root / "refbridge.log")}
    (bin_dir / "bridge.json").write_text(json.dumps(settings, indent=2))
    head = (f"#!/bin/sh\nexport REFBRIDGE_CONFIG={bin_dir / 'bridge.json'} "
            f"SLURM_CONF={spec.slurm.conf} REFBRIDGE_SCONTROL={settings['scontrol']}\n"
            f"export REFBRIDGE_WAIT_S={spec.resume_timeout_s}\n")
    programs = {"resume": f'exec {sys.executable} {BRIDGE / "bridge.py"} resume "$@"\n',
                "suspend": f'exec {sys.executable} {BRIDGE / "bridge.py"} suspend "$@"\n',
                "prolog": f'exec {BRIDGE / "prolog.sh"}\n',
                "epilog": f'exec {BRIDGE / "epilog.sh"}\n'}
    for name, line in programs.items():
        (bin_dir / name).write_text(head + line)
        (bin_dir / name).chmod(0o755)
    wanted = {"ResumeProgram": "resume", "SuspendProgram": "suspend",
              "ResumeFailProgram": "suspend", "PrologSlurmctld": "prolog",
              "EpilogSlurmctld": "epilog"}
    lines = spec.slurm.conf.read_text().splitlines()
    lines = [f"{line.split('=')[0]}={bin_dir / wanted[line.split('=')[0]]}"
             if line.split("=")[0] in HOOK_KEYS else line for line in lines]
    spec.slurm.conf.write_text("\n".join(lines) + "\n")
    run(["scontrol", "reconfigure"], env)
    time.sleep(2)


def use_vcluster(spec: site.SiteSpec, env: dict[str, str], vcluster_conf: str) -> None:
    """Point slurmctld's hooks back at vcluster and start its controller again."""
    spec.slurm.conf.write_text(vcluster_conf)
    run(["scontrol", "reconfigure"], env)
    site.start_controller(spec)
    time.sleep(2)


def plan(shapes: list[str], repeat: int, repeat_large: int = 1) -> list[tuple[str, list[str]]]:
    """Blocks of (side, shapes) in the order they run: vcluster and the reference alternate
    A B B A ... (one switch a round, and a drift in the machine's load hits both sides);
    each shape of up to REPEATED_JOBS jobs once per block, ``repeat`` rounds; then the
    larger shapes, ``repeat_large`` rounds."""
    singles = [s for s in shapes if SHAPES[s][0] <= REPEATED_JOBS]
    multis = [s for s in shapes if SHAPES[s][0] > REPEATED_JOBS]
    order = ("vcluster", "reference")
    blocks: list[tuple[str, list[str]]] = []
    rounds = repeat if singles else 0
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            blocks.append((name, singles))
    for r in range(rounds, rounds + (repeat_large if multis else 0)):
        for name in order if r % 2 == 0 else order[::-1]:
            blocks.append((name, multis))
    return blocks


def merge(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One shape's runs on one side: every job's times, p50 over all of them."""
    to_run = [x for s in samples for x in s["submit_to_running_s"]]
    to_term = [x for s in samples for x in s["end_to_terminated_s"]]
    first = samples[0]
    return {"jobs": first["jobs"], "nodes_per_job": first["nodes_per_job"],
            "runs": len(samples), "completed": sum(s["completed"] for s in samples),
            "failures": [f for s in samples for f in s["failures"]],
            "submit_to_running_p50_s": p50(to_run), "end_to_terminated_p50_s": p50(to_term),
            "submit_to_running_s": to_run, "end_to_terminated_s": to_term}


def one_setting(boot_s: float, standby: int, shapes: list[str], slot: int, repeat: int,
                repeat_large: int = 1) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="vccmp-site-", dir="/tmp"))
    os.chmod(root, 0o755)
    work = root / "work"
    work.mkdir(mode=0o1777)
    (work / "warmup").mkdir(mode=0o1777)
    most = max(SHAPES[s][0] * SHAPES[s][1] for s in shapes)
    spec = site.SiteSpec(name=f"vcc{slot or ''}", subnet=f"10.{118 + 10 * slot}.0.0/24",
                         state_dir=str(root / "state"), slurm_port=7118 + 10 * slot,
                         one_port=2934 + 10 * slot, onegate_port=5331 + 10 * slot,
                         events_port=2102 + 10 * slot, per_job_nodes=most + standby,
                         pool_nodes=1, boot_s=boot_s, standby=standby,
                         resume_timeout_s=max(90, int(boot_s) + 60))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "ONE_"))}
    env.update(VCLUSTER_CONFIG=str(spec.config_path), SLURM_CONF=str(spec.slurm.conf))
    timeout_s = 3 * boot_s + 180
    out: dict[str, Any] = {"boot_s": boot_s, "standby": standby, "repeat": repeat,
                           "repeat_large": repeat_large, "shapes": {}}
    site.down(spec)
    spec = site.choose_ports(spec)  # free ports now, which up() then keeps
    try:
        site.up(spec, say=lambda line: print(line, file=sys.stderr))
        vcluster_conf = spec.slurm.conf.read_text()
        samples: dict[str, dict[str, list[dict[str, Any]]]] = {
            s: {"vcluster": [], "reference": []} for s in shapes}
        current = "vcluster"
        side = Side("vcluster", spec, env)
        side.settle(standby, timeout_s)  # a fresh slurmctld schedules its first job ~2 s late
        run_shape(side, "1node", work / "warmup", timeout_s)
        for n, (name, block) in enumerate(plan(shapes, repeat, repeat_large)):
            if name != current:
                if name == "reference":
                    use_reference_bridge(spec, env)
                else:
                    use_vcluster(spec, env, vcluster_conf)
                current, side = name, Side(name, spec, env)
            (work / f"b{n}").mkdir(mode=0o1777)
            for shape in block:
                side.settle(standby if name == "vcluster" else 0, timeout_s)
                print(f"{time.strftime('%H:%M:%S')} block {n}: {name}: {shape} "
                      f"(boot {boot_s:g} s, standby {standby})", file=sys.stderr)
                samples[shape][name].append(run_shape(side, shape, work / f"b{n}",
                                                      shape_timeout_s(shape, boot_s)))
        results: dict[str, dict[str, Any]] = {}
        for shape in shapes:
            sides: dict[str, Any] = {name: merge(runs) for name, runs in samples[shape].items()}
            ratio = {}
            for key in ("submit_to_running_p50_s", "end_to_terminated_p50_s"):
                v, r = sides["vcluster"][key], sides["reference"][key]
                ratio[key.replace("_p50_s", "")] = (round(v / r, 3) if isinstance(v, float)
                                                    and isinstance(r, float) and r else None)
            sides["ratio_vcluster_over_reference"] = ratio
            results[shape] = sides
        out["shapes"] = results
        return out
    finally:
        site.down(spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="0.5:0,30:0,30:2",
                    help="boot_s:standby pairs, comma-separated")
    ap.add_argument("--shapes", default=",".join(SHAPES),
                    help=f"comma-separated, of {', '.join(SHAPES)}")
    ap.add_argument("--repeat", type=int, default=5,
                    help="runs of each shape of up to 5 jobs per side (p50 over their jobs)")
    ap.add_argument("--repeat-large", type=int, default=1,
                    help="runs of the 50-job shape per side")
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args()
    slot = int(os.environ.get("VCLUSTER_TEST_SLOT", "0") or "0")
    shapes = [s for s in args.shapes.split(",") if s]
    if unknown := [s for s in shapes if s not in SHAPES]:
        ap.error(f"unknown shape(s) {', '.join(unknown)}: choose from {', '.join(SHAPES)}")
    doc = json.loads(args.output.read_text()) if args.output.exists() else {}
    doc.update(benchmark="compare", machine={"cpus": os.cpu_count(),
                                             "python": platform.python_version()})
    doc.setdefault("settings", {})
    failed = False
    for pair in args.settings.split(","):
        boot, standby = pair.split(":")
        result = one_setting(float(boot), int(standby), shapes, slot, args.repeat,
                             args.repeat_large)
        result["when"] = datetime.now().isoformat(timespec="seconds")
        doc["settings"][f"boot{float(boot):g}_standby{int(standby)}"] = result
        failed |= any(side.get("failures") for sides in result["shapes"].values()
                      for side in sides.values() if isinstance(side, dict))
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
