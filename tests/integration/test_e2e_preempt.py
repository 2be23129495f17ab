"""Preemption that the job survives, end to end: the real slurmctld, the testbed cloud's netns
VMs (a stopped VM is frozen, its memory kept, its host's capacity freed), the controller.

A low-priority job writes a counter every second. On a cloud too small for both, a job of the
site's preempt partition ("urgent") cannot have its VM placed: vcluster suspends the first job
(``scontrol suspend``), stops its VM, the urgent job runs, then the first job's VM comes back
and the job resumes. An admin's ``scontrol suspend`` / ``scontrol resume`` stop and bring back
the VM the same way. What a user must see: the first job completes with every tick exactly
once, on the same VM, never requeued. Suspend and resume times are printed (``pytest -s``) and
appended to ``$VCLUSTER_PREEMPT_LOG`` (JSON lines) when that is set.

This module runs its own site (``<e2e name>p``, next subnet, ports +5): it needs the preempt
partition and SlurmdTimeout=0, which the other modules' site does not have.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyone
import pytest

from tests.integration.site_fixtures import (
    _SLOT,
    E2E_NAME,
    E2E_PORTS,
    Site,
    job_id_of,
    wait_clean,
    wait_for,
)
from vcluster.config import load_config, read_one_auth
from vcluster.testbed import netns, site

pytestmark = pytest.mark.integration

NAME = f"{E2E_NAME}p"
SUBNET = f"10.{116 + 10 * _SLOT}.0.0/24"
PORTS = {k: v + 5 for k, v in E2E_PORTS.items()}
TICKS = 30
STOPPED, ACTIVE = 4, 3


@pytest.fixture(scope="module")
def ps(slurm_flavor: str) -> Iterator[Site]:
    if os.geteuid() != 0:
        pytest.skip("the testbed needs root")
    root = Path(tempfile.mkdtemp(prefix="vcp-site-", dir="/tmp"))
    os.chmod(root, 0o755)
    work = root / "work"
    work.mkdir()
    os.chmod(work, 0o1777)
    spec = site.SiteSpec(name=NAME, subnet=SUBNET, state_dir=str(root / "state"), **PORTS,
                         per_job_nodes=3, pool_nodes=1, pool_idle_s=15, resume_timeout_s=60,
                         heartbeat_stale_s=10, preempt_partition="urgent",
                         slurm_root=slurm_flavor)
    site.down(spec)
    try:
        site.up(spec)
        yield Site(spec, load_config(spec.config_path, environ={}), work)
    finally:
        site.down(spec)
        left = netns.list_hosts(f"{NAME}-")
        if not left and not os.environ.get("VCLUSTER_KEEP_SITE"):
            shutil.rmtree(root, ignore_errors=True)
        assert not left, f"namespaces left after down: {left}"


def server(s: Site) -> pyone.OneServer:
    return pyone.OneServer(s.config.opennebula.xmlrpc,
                           session=read_one_auth(s.config.opennebula.auth_file))


def vms_of_job(s: Site, job_id: int) -> dict[int, tuple[int, int]]:
    """{VM id: (STATE, LCM_STATE)} of every VM ever booted for the job."""
    return {int(vm.ID): (int(vm.STATE), int(vm.LCM_STATE))
            for vm in server(s).vmpool.infoextended(-2, -1, -1, -2).VM or []
            if str((vm.USER_TEMPLATE or {}).get("VCLUSTER_JOB", "")) == str(job_id)}


def report(what: str, seconds: float, flavor: str) -> None:
    print(f"{what}: {seconds:.1f} s")
    path = os.environ.get("VCLUSTER_PREEMPT_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"what": what, "seconds": round(seconds, 2),
                                  "slurm": flavor or "host"}) + "\n")


def events(s: Site) -> list[dict[str, object]]:
    out = subprocess.run(["vcluster", "events", "-n", "300", "--json"], capture_output=True,
                         text=True, env=s.env, check=True).stdout
    return list(json.loads(out))


def counter_job(s: Site, name: str) -> tuple[int, Path]:
    """A job that writes 1..TICKS, one a second, each with the time it was written."""
    out = s.work / f"{name}.ticks"
    script = s.work / f"{name}.sh"
    script.write_text("#!/bin/bash\n"
                      f"for i in $(seq 1 {TICKS}); do echo \"$i $(date +%s.%N)\" >> {out}; "
                      "sleep 1; done\n")
    script.chmod(0o755)
    job_id = job_id_of(s.fsub("-N1", "-n1", f"--output={s.work / name}.out", str(script)))
    return job_id, out


def ticks(out: Path) -> list[tuple[int, float]]:
    if not out.exists():
        return []
    return [(int(a), float(b)) for a, b in (line.split() for line in
                                            out.read_text().splitlines() if line.strip())]


def slurm_state(s: Site, job_id: int) -> str:
    job = s.job(job_id)
    return job.state if job else "GONE"


def watch_states(s: Site, job_id: int, until: str, timeout_s: float) -> list[str]:
    """The job's Slurm states, polled until ``until``."""
    seen: list[str] = []

    def reached() -> bool:
        state = slurm_state(s, job_id)
        if not seen or seen[-1] != state:
            seen.append(state)
        return state == until

    wait_for(f"job {job_id} {until}", reached, timeout_s, 0.3)
    return seen


def check_every_tick_once(out: Path) -> float:
    """Every tick written once, in order; the longest pause between two ticks, seconds."""
    got = ticks(out)
    assert [i for i, _ in got] == list(range(1, TICKS + 1)), f"ticks lost or repeated: {got}"
    return max(b - a for (_, a), (_, b) in zip(got, got[1:], strict=False))


def suspended_in_status(s: Site, job_id: int) -> tuple[object, ...]:
    """What ``vcluster status --json`` says of a suspended job: Slurm's state, who suspended
    it (``vcluster``, for which job; or ``slurm``), its VMs' OpenNebula states and vcluster's
    step; the VM is STOPPED once vcluster has seen it so (a pass after oned)."""
    def read() -> dict[str, Any]:
        out = subprocess.run(["vcluster", "status", "--json"], capture_output=True, text=True,
                             env=s.env, check=True).stdout
        return next((j for j in json.loads(out)["suspended_jobs"] if j["job_id"] == job_id),
                    {})

    wait_for(f"job {job_id} stopped in vcluster status", lambda: [
        v["step"] for v in read().get("vms", [])] == ["stopped"], 30, 0.5)
    job = read()
    return (job["slurm_state"], job["origin"], job["by_job"],
            [(v["vm_id"], v["vm_state"], v["step"]) for v in job["vms"]])


def fill_host_but(s: Site, free_cpu: float) -> list[int]:
    """Filler VMs leaving ``free_cpu`` CPUs on every host."""
    one = server(s)
    fillers = []
    for host in one.hostpool.info().HOST:
        share = host.HOST_SHARE
        cpu = (int(share.MAX_CPU) - int(share.CPU_USAGE)) / 100 - free_cpu
        mem_mb = (int(share.MAX_MEM) - int(share.MEM_USAGE)) // 1024 - 4096
        fillers.append(one.vm.allocate(f'NAME = "filler"\nCPU = "{cpu}"\nMEMORY = "{mem_mb}"\n'
                                       f'SCHED_REQUIREMENTS = "ID = {int(host.ID)}"\n', False))
    return fillers


def end_fillers(s: Site, fillers: list[int]) -> None:
    one = server(s)
    for vm_id in fillers:
        def gone(vm_id: int = vm_id) -> bool:
            try:
                one.vm.action("terminate-hard", vm_id)
            except pyone.OneActionException:
                return False
            return True
        wait_for(f"filler {vm_id}'s terminate accepted", gone, 60, 0.5)


def test_an_urgent_job_suspends_a_running_one_that_then_completes_with_every_tick(
        ps: Site, slurm_flavor: str) -> None:
    s = ps
    wait_clean(s)
    # each job's VM takes 1 CPU (one task): with 1.5 free, one fits, not both
    fillers = fill_host_but(s, 1.5)
    try:
        low, out = counter_job(s, "low")
        wait_for("the low job ticking", lambda: len(ticks(out)) >= 3, 120, 0.3)
        (low_vm,) = vms_of_job(s, low)
        urgent_out = s.work / "urgent.out"
        submitted = time.monotonic()
        urgent = job_id_of(subprocess.run(
            ["sbatch", "-p", "urgent", "--constraint=small", "--exclusive", "-N1",
             f"--output={urgent_out}", "--wrap", "hostname; sleep 3; echo urgent-done"],
            capture_output=True, text=True, env=s.env, check=True, cwd=s.work))
        watch_states(s, low, "SUSPENDED", 60)
        wait_for("the low job's VM STOPPED", lambda: vms_of_job(s, low)[low_vm][0] == STOPPED,
                 60, 0.2)
        suspend_s = time.monotonic() - submitted
        status = subprocess.run(["vcluster", "status"], capture_output=True, text=True,
                                env=s.env, check=True).stdout
        assert "SUSPENDED" in status and f"job {low} suspended for job {urgent}" in status, \
            status
        assert suspended_in_status(s, low) == ("SUSPENDED", "vcluster", urgent,
                                               [(low_vm, "STOPPED", "stopped")])
        wait_for("the urgent job completed", lambda: slurm_state(s, urgent) == "COMPLETED",
                 180, 0.3)
        urgent_done = time.monotonic()
        assert "urgent-done" in urgent_out.read_text()
        watch_states(s, low, "RUNNING", 120)
        resume_s = time.monotonic() - urgent_done
        states = watch_states(s, low, "COMPLETED", 120)
        assert not {"PENDING", "REQUEUED", "FAILED", "NODE_FAIL"} & set(states), states
        pause_s = check_every_tick_once(out)
        assert pause_s > 3, f"the job was never paused (longest gap {pause_s:.1f} s)"
        assert list(vms_of_job(s, low)) == [low_vm], "the same VM throughout"
        kinds = [e["kind"] for e in events(s) if e["job_id"] == low]
        for kind in ("job.preempt", "vm.stop", "vm.stopped", "vm.restore", "job.resumed"):
            assert kind in kinds, f"no {kind} event for job {low}: {kinds}"
        assert "vm.lost" not in kinds
        report("preempt: urgent submit -> low job's VM STOPPED", suspend_s, slurm_flavor)
        report("preempt: urgent job done -> low job RUNNING again", resume_s, slurm_flavor)
        report("preempt: low job's longest pause", pause_s, slurm_flavor)
    finally:
        end_fillers(s, fillers)
    wait_clean(s, 120)


def test_an_admin_suspend_and_resume_stop_and_bring_back_the_vm(
        ps: Site, slurm_flavor: str) -> None:
    s = ps
    wait_clean(s)
    low, out = counter_job(s, "admin")
    wait_for("the job ticking", lambda: len(ticks(out)) >= 3, 120, 0.3)
    (vm_id,) = vms_of_job(s, low)
    asked = time.monotonic()
    subprocess.run(["scontrol", "suspend", str(low)], env=s.env, check=True)
    wait_for("its VM STOPPED", lambda: vms_of_job(s, low)[vm_id][0] == STOPPED, 60, 0.2)
    suspend_s = time.monotonic() - asked
    assert suspended_in_status(s, low) == ("SUSPENDED", "slurm", None,
                                           [(vm_id, "STOPPED", "stopped")])
    time.sleep(5)
    assert slurm_state(s, low) == "SUSPENDED"
    resumed = time.monotonic()
    subprocess.run(["scontrol", "resume", str(low)], env=s.env, check=True)
    wait_for("its VM RUNNING", lambda: vms_of_job(s, low)[vm_id] == (ACTIVE, 3), 60, 0.2)
    n = len(ticks(out))
    wait_for("ticking again", lambda: len(ticks(out)) > n, 30, 0.2)
    resume_s = time.monotonic() - resumed
    states = watch_states(s, low, "COMPLETED", 120)
    assert not {"PENDING", "REQUEUED", "FAILED", "NODE_FAIL"} & set(states), states
    assert check_every_tick_once(out) > 5
    assert list(vms_of_job(s, low)) == [vm_id]
    report("scontrol suspend -> VM STOPPED", suspend_s, slurm_flavor)
    report("scontrol resume -> ticking again", resume_s, slurm_flavor)
    wait_clean(s, 120)
