"""Cold migration and host drain, end to end: the real slurmctld, the testbed cloud with two
hosts (netns VMs: a host is a record, the guest keeps running across a live migration), the
controller and ``vcluster drain-host``.

What a user must see:
- a job suspended (``scontrol suspend``) whose VM's host is then disabled resumes on the other
  host (``scontrol resume``: the STOPPED VM goes PENDING and OpenNebula places it where it
  may) and completes with every tick exactly once; the VM's history shows both hosts;
- ``vcluster drain-host`` with a running job: its VM migrates live, the job completes with
  every tick exactly once, nothing of this cluster is left on the drained host;
- ``vcluster drain-host`` where no other host has room: the job is requeued with the reason in
  its AdminComment, and runs to completion elsewhere once there is room.

Timings are printed (``pytest -s``) and appended to ``$VCLUSTER_MIGRATE_LOG`` (JSON lines).
This module runs its own site (``<e2e name>m``, its own subnet, ports +8): two hosts, and the
preempt partition (for SlurmdTimeout=0, which a suspended job's stopped VM needs).
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

NAME = f"{E2E_NAME}m"
SUBNET = f"10.{117 + 10 * _SLOT}.0.0/24"
PORTS = {k: v + 8 for k, v in E2E_PORTS.items()}
TICKS = 30
STOPPED, ACTIVE, RUNNING = 4, 3, 3
REASON = "vcluster: host {} drained for maintenance"


@pytest.fixture(scope="module")
def ms(slurm_flavor: str) -> Iterator[Site]:
    if os.geteuid() != 0:
        pytest.skip("the testbed needs root")
    root = Path(tempfile.mkdtemp(prefix="vcm-site-", dir="/tmp"))
    os.chmod(root, 0o755)
    work = root / "work"
    work.mkdir()
    os.chmod(work, 0o1777)
    spec = site.SiteSpec(name=NAME, subnet=SUBNET, state_dir=str(root / "state"), **PORTS,
                         per_job_nodes=3, pool_nodes=1, pool_idle_s=15, resume_timeout_s=60,
                         heartbeat_stale_s=10, preempt_partition="urgent", hosts=2,
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


def report(what: str, seconds: float, flavor: str) -> None:
    print(f"{what}: {seconds:.1f} s")
    path = os.environ.get("VCLUSTER_MIGRATE_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"what": what, "seconds": round(seconds, 2),
                                  "slurm": flavor or "host"}) + "\n")


def vcluster(s: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["vcluster", *args], capture_output=True, text=True, env=s.env,
                          check=False)


def events(s: Site) -> list[dict[str, object]]:
    return list(json.loads(vcluster(s, "events", "-n", "300", "--json").stdout))


def vms_of_job(s: Site, job_id: int) -> list[int]:
    return sorted(int(vm.ID) for vm in server(s).vmpool.infoextended(-2, -1, -1, -2).VM or []
                  if str((vm.USER_TEMPLATE or {}).get("VCLUSTER_JOB", "")) == str(job_id))


def history(s: Site, vm_id: int) -> list[tuple[str, int]]:
    """(HOSTNAME, ACTION) of each history record, oldest first."""
    records = server(s).vm.info(vm_id).HISTORY_RECORDS.HISTORY or []
    return [(str(h.HOSTNAME), int(h.ACTION)) for h in records]


def state(s: Site, vm_id: int) -> tuple[int, int]:
    vm = server(s).vm.info(vm_id)
    return int(vm.STATE), int(vm.LCM_STATE)


def host_ids(s: Site) -> dict[str, int]:
    return {str(h.NAME): int(h.ID) for h in server(s).hostpool.info().HOST}


def vms_on(s: Site, host: str) -> list[int]:
    """This cluster's VMs that hold ``host`` (ACTIVE, SUSPENDED, POWEROFF)."""
    out = []
    for vm in server(s).vmpool.infoextended(-2, -1, -1, -1).VM or []:
        records = vm.HISTORY_RECORDS.HISTORY if vm.HISTORY_RECORDS else []
        if (records and str(records[-1].HOSTNAME) == host and int(vm.STATE) in (3, 5, 8)
                and str((vm.USER_TEMPLATE or {}).get("VCLUSTER_CLUSTER", "")) == NAME):
            out.append(int(vm.ID))
    return out


def counter_job(s: Site, name: str) -> tuple[int, Path]:
    """A job that writes 1..TICKS, one a second."""
    out = s.work / f"{name}.ticks"
    script = s.work / f"{name}.sh"
    script.write_text("#!/bin/bash\n"
                      f"for i in $(seq 1 {TICKS}); do echo \"$i $(date +%s.%N)\" >> {out}; "
                      "sleep 1; done\n")
    script.chmod(0o755)
    return job_id_of(s.fsub("-N1", "-n1", f"--output={s.work / name}.out", str(script))), out


def ticks(out: Path) -> list[int]:
    return [int(line.split()[0]) for line in out.read_text().splitlines() if line.strip()] \
        if out.exists() else []


def slurm_state(s: Site, job_id: int) -> str:
    job = s.job(job_id)
    return job.state if job else "GONE"


def watch_states(s: Site, job_id: int, until: str, timeout_s: float) -> list[str]:
    seen: list[str] = []

    def reached() -> bool:
        now = slurm_state(s, job_id)
        if not seen or seen[-1] != now:
            seen.append(now)
        return now == until

    wait_for(f"job {job_id} {until}", reached, timeout_s, 0.3)
    return seen


def show_job(s: Site, job_id: int) -> str:
    return subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True,
                          text=True, env=s.env, check=True).stdout


def enable_all(s: Site) -> None:
    one = server(s)
    for h in one.hostpool.info().HOST:
        if int(h.STATE) != 2:
            one.host.status(int(h.ID), 0)


def fill(s: Site, host: str, leave_cpu: float) -> int:
    """A filler VM on ``host`` leaving ``leave_cpu`` CPUs free there: placed (its capacity
    is the host's from PROLOG on; a netns VM with no NIC need not boot)."""
    one = server(s)
    (h,) = [h for h in one.hostpool.info().HOST if str(h.NAME) == host]
    cpu = (int(h.HOST_SHARE.MAX_CPU) - int(h.HOST_SHARE.CPU_USAGE)) / 100 - leave_cpu
    filler = one.vm.allocate(f'NAME = "filler"\nCPU = "{cpu}"\nMEMORY = "64"\n'
                             f'SCHED_REQUIREMENTS = "ID = {int(h.ID)}"\n')
    wait_for("the filler placed", lambda: state(s, filler)[0] == ACTIVE, 60, 0.2)
    return int(filler)


@pytest.mark.parametrize("taken_out", ["disabled", "full"])
def test_a_suspended_job_whose_host_was_taken_resumes_on_the_other_host(
        ms: Site, slurm_flavor: str, taken_out: str) -> None:
    s = ms
    wait_clean(s)
    job, out = counter_job(s, f"cold-{taken_out}")
    fillers: list[int] = []
    try:
        wait_for("the job ticking", lambda: len(ticks(out)) >= 3, 120, 0.3)
        (vm_id,) = vms_of_job(s, job)
        first = history(s, vm_id)[-1][0]
        subprocess.run(["scontrol", "suspend", str(job)], env=s.env, check=True)
        wait_for("its VM STOPPED", lambda: state(s, vm_id)[0] == STOPPED, 60, 0.2)
        if taken_out == "disabled":  # the admin takes the host out (onehost disable)
            server(s).host.status(host_ids(s)[first], 1)
        else:  # another VM takes the room the stopped VM freed
            fillers.append(fill(s, first, 0.5))
        resumed = time.monotonic()
        subprocess.run(["scontrol", "resume", str(job)], env=s.env, check=True)
        wait_for("its VM RUNNING", lambda: state(s, vm_id) == (ACTIVE, RUNNING), 60, 0.2)
        n = len(ticks(out))
        wait_for("ticking again", lambda: len(ticks(out)) > n, 30, 0.2)
        resume_s = time.monotonic() - resumed
        states = watch_states(s, job, "COMPLETED", 120)
        assert not {"PENDING", "REQUEUED", "FAILED", "NODE_FAIL"} & set(states), states
        assert ticks(out) == list(range(1, TICKS + 1)), f"ticks lost or repeated: {ticks(out)}"
        hosts = [h for h, _ in history(s, vm_id)]
        assert hosts[0] == first and hosts[-1] != first, hosts
        assert vms_of_job(s, job) == [vm_id], "the same VM throughout"
        moved = [e["message"] for e in events(s)
                 if e["job_id"] == job and e["kind"] == "vm.migrated"]
        assert moved == [f"job {job}: VM {vm_id} resumed on host {hosts[-1]}, suspended on "
                         f"{first}"], moved
        report(f"cold ({taken_out} host): scontrol resume -> ticking on the other host",
               resume_s, slurm_flavor)
    finally:
        for filler in fillers:
            server(s).vm.action("terminate-hard", filler)
        enable_all(s)
    wait_clean(s, 120)


def test_drain_host_moves_a_running_job_live_and_empties_the_host(
        ms: Site, slurm_flavor: str) -> None:
    s = ms
    wait_clean(s)
    job, out = counter_job(s, "live")
    try:
        wait_for("the job ticking", lambda: len(ticks(out)) >= 3, 120, 0.3)
        (vm_id,) = vms_of_job(s, job)
        first = history(s, vm_id)[-1][0]
        dry = vcluster(s, "drain-host", first, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.splitlines()[0] == (f"host {first} would be disabled: 1 VM(s) of "
                                              "this cluster on it"), dry.stdout
        assert "would be live-migrated to" in dry.stdout and state(s, vm_id) == (3, 3)
        asked = time.monotonic()
        done = vcluster(s, "drain-host", first, "--json")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        (move,) = result["moves"]
        assert (move["vm_id"], move["action"], move["job_id"]) == (vm_id, "live-migrate", job)
        wait_for("the VM RUNNING on the other host",
                 lambda: state(s, vm_id) == (ACTIVE, RUNNING)
                 and history(s, vm_id)[-1][0] == move["to_host"], 60, 0.2)
        migrate_s = time.monotonic() - asked
        # live-migrate on the first host's record; the second's action is written by the
        # next action on the VM (terminate, once the job is done)
        assert history(s, vm_id)[:2] == [(first, 2), (move["to_host"], 0)]
        n = len(ticks(out))
        wait_for("still ticking", lambda: len(ticks(out)) > n, 10, 0.2)
        states = watch_states(s, job, "COMPLETED", 120)
        assert not {"PENDING", "REQUEUED", "FAILED", "NODE_FAIL"} & set(states), states
        assert ticks(out) == list(range(1, TICKS + 1)), f"ticks lost or repeated: {ticks(out)}"
        assert [h for h, _ in history(s, vm_id)] == [first, move["to_host"]]
        assert vms_on(s, first) == []
        status = vcluster(s, "status").stdout
        assert (f"Hosts out of service:\n  host {first} DISABLED: no new VMs; 0 VM(s) of this "
                "cluster on it") in status, status
        again = vcluster(s, "drain-host", first)
        assert again.returncode == 1 and again.stderr.strip() == (
            f"vcluster: error: host {first} is already DISABLED (drained); `vcluster "
            f"undrain-host {first}` enables it again")
        kinds = [e["kind"] for e in events(s)]
        assert "host.drain" in kinds and "vm.migrated" in kinds
        report("drain-host: live migration, asked -> RUNNING on the other host", migrate_s,
               slurm_flavor)
    finally:
        undo = vcluster(s, "undrain-host", first)
        assert undo.returncode == 0 and undo.stdout.strip() == (
            f"host {first} enabled: OpenNebula places new VMs on it again"), undo.stderr
    wait_clean(s, 120)


def test_drain_host_with_no_room_elsewhere_requeues_the_job_which_completes_later(
        ms: Site, slurm_flavor: str) -> None:
    s = ms
    wait_clean(s)
    out = s.work / "requeue.out"
    job = job_id_of(s.fsub("-N1", "-n1", f"--output={out}", "--wrap",
                           "sleep 30; echo done-on-$(hostname)"))
    fillers: list[int] = []
    first = ""
    try:
        wait_for("the job RUNNING", lambda: slurm_state(s, job) == "RUNNING", 120, 0.3)
        (vm_id,) = vms_of_job(s, job)
        first = history(s, vm_id)[-1][0]
        one = server(s)
        (other,) = [h for h in host_ids(s) if h != first]
        fillers.append(fill(s, other, 0.5))  # the other host full
        asked = time.monotonic()
        done = vcluster(s, "drain-host", first)
        assert done.returncode == 0, done.stderr
        assert (f"VM {vm_id} " in done.stdout and "job requeued (no other enabled host has "
                "room for it)" in done.stdout), done.stdout
        wait_for("the job requeued", lambda: "Restarts=1" in show_job(s, job), 90, 0.3)
        info = show_job(s, job)
        assert f"AdminComment={REASON.format(first)}" in info, info
        wait_for("nothing left on the drained host", lambda: vms_on(s, first) == [], 60, 0.3)
        for filler in fillers:  # room again: the job runs on the other host
            one.vm.action("terminate-hard", filler)
        fillers = []
        watch_states(s, job, "COMPLETED", 180)
        requeue_s = time.monotonic() - asked
        vms = vms_of_job(s, job)
        assert len(vms) == 2 and history(s, vms[-1])[0][0] != first, vms
        assert out.read_text().count("done-on-") >= 1
        kinds = [e["kind"] for e in events(s) if e["job_id"] == job]
        assert "job.requeued" in kinds, kinds
        report("drain-host: no room -> requeued job completed elsewhere (incl. filler)",
               requeue_s, slurm_flavor)
    finally:
        for filler in fillers:
            server(s).vm.action("terminate-hard", filler)
        enable_all(s)
    wait_clean(s, 120)
