"""The world acts on VMs behind vcluster's back, end to end: an admin powers off, suspends or
terminates a running job's VM through OpenNebula's API; a job is cancelled while its VM
cannot be placed. The real slurmctld, the testbed cloud's netns VMs, the controller.

What a user must see: the job requeued and completed on a fresh VM, never FAILED; nothing of
the lost VM left (no VM, namespace, freezer cgroup or process). Each recovery time is printed
(`pytest -s`) and appended to ``$VCLUSTER_RECOVERY_LOG`` when that is set.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pyone
import pytest

from tests.integration.site_fixtures import (
    E2E_NAME,
    Site,
    job_id_of,
    wait_clean,
    wait_for,
)
from vcluster.config import read_one_auth
from vcluster.testbed import netns
from vcluster.testbed.cloud.drivers.netns import FREEZER_ROOT

pytestmark = pytest.mark.integration

JOB_TIMEOUT_S = 240
DONE = 6


@pytest.fixture()
def s(e2e_site: Site) -> Iterator[Site]:
    wait_clean(e2e_site)
    yield e2e_site
    wait_clean(e2e_site)


def server(s: Site) -> pyone.OneServer:
    return pyone.OneServer(s.config.opennebula.xmlrpc,
                           session=read_one_auth(s.config.opennebula.auth_file))


def vms_of_job(s: Site, job_id: int) -> dict[int, int]:
    """{VM id: STATE} of every VM ever booted for the job (DONE ones included)."""
    return {int(vm.ID): int(vm.STATE)
            for vm in server(s).vmpool.infoextended(-2, -1, -1, -2).VM or []
            if str((vm.USER_TEMPLATE or {}).get("VCLUSTER_JOB", "")) == str(job_id)}


def report(s: Site, scenario: str, measure: str, seconds: float) -> None:
    """Print one recovery time; append it to ``$VCLUSTER_RECOVERY_LOG`` (a line) and merge it
    into ``$VCLUSTER_RECOVERY_JSON`` (per Slurm version, scenario and measure) if set."""
    line = f"{scenario}: {measure}: {seconds:.1f} s"
    print(line)
    path = os.environ.get("VCLUSTER_RECOVERY_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"{line}\n")
    json_path = os.environ.get("VCLUSTER_RECOVERY_JSON")
    if json_path:
        version = subprocess.run(["scontrol", "--version"], capture_output=True, text=True,
                                 env=s.env, check=True).stdout.split()[-1]
        results = json.loads(Path(json_path).read_text()) if Path(json_path).exists() else {}
        slurm = results.setdefault("runs", {}).setdefault(f"slurm {version}", {})
        slurm.setdefault(scenario, {})[measure] = round(seconds, 1)
        results["benchmark"] = "world_recovery"
        results["unit"] = "seconds from the action on the VM (or its host)"
        Path(json_path).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def unscheduled(s: Site, job_id: int) -> list[str]:
    """What `vcluster events --unscheduled --job N` prints, one line each."""
    out = subprocess.run(["vcluster", "events", "--unscheduled", "--job", str(job_id)],
                         capture_output=True, text=True, env=s.env, check=True).stdout
    return out.splitlines()


def vclusters_recovery_s(s: Site, job_id: int) -> float:
    """The recovery time vcluster itself recorded for the job's (one) unscheduled event."""
    out = subprocess.run(["vcluster", "events", "--unscheduled", "--job", str(job_id),
                          "--json"], capture_output=True, text=True, env=s.env,
                         check=True).stdout
    (row,) = json.loads(out)
    assert row["recovery_s"] is not None, row
    return float(row["recovery_s"])


def events(s: Site) -> str:
    """The messages `vcluster events` shows, one a line (from --json: a table wraps them)."""
    out = subprocess.run(["vcluster", "events", "-n", "300", "--json"], capture_output=True,
                         text=True, env=s.env, check=True).stdout
    return "\n".join(f"{e['kind']} {e['message']}" for e in json.loads(out))


def nothing_left_of(s: Site, vm_id: int) -> str:
    """'' once the VM is DONE and no namespace or freezer cgroup of it is left."""
    if server(s).vm.info(vm_id).STATE != DONE:
        return f"VM {vm_id} not DONE"
    if netns.host_exists(f"{E2E_NAME}-vm{vm_id}"):
        return f"namespace of VM {vm_id} left"
    if (FREEZER_ROOT / f"{E2E_NAME}-vm{vm_id}").exists():
        return f"freezer cgroup of VM {vm_id} left"
    return ""


@pytest.mark.parametrize(("action", "seen"), [
    ("poweroff-hard", "POWEROFF"),
    ("suspend", "SUSPENDED"),
    ("terminate-hard", "DONE"),
    ("stop", "STOPPED"),
    ("undeploy-hard", "UNDEPLOYED"),
])
def test_a_vm_acted_on_behind_vclusters_back_requeues_its_job_onto_a_fresh_vm(
        s: Site, action: str, seen: str) -> None:
    out = s.work / f"world-{action}.out"
    marker = s.work / f"world-{action}.marker"
    marker.unlink(missing_ok=True)
    script = f"if [ -e {marker} ]; then hostname; else touch {marker}; sleep 300; fi"
    job_id = job_id_of(s.fsub("-N1", f"--output={out}", "--wrap", script))
    wait_for("job running", marker.exists, JOB_TIMEOUT_S, 0.2)
    (vm_id,) = vms_of_job(s, job_id)
    acted = time.monotonic()
    s.one.action(action, vm_id)
    states: list[str] = []

    def node_failed() -> bool:
        return f"VM {vm_id} seen" in events(s)

    wait_for("the VM's loss handled by its class's rule", node_failed, 30, 0.2)
    handled_s = time.monotonic() - acted

    def completed() -> bool:
        job = s.job(job_id)
        if job is not None and (not states or states[-1] != job.state):
            states.append(job.state)
        return job is not None and job.state == "COMPLETED"

    wait_for("job completed", completed, JOB_TIMEOUT_S, 0.5)
    recovered_s = time.monotonic() - acted
    assert "FAILED" not in states, f"the job went through {states}"
    assert out.read_text().strip().splitlines()[-1].startswith(f"{E2E_NAME}-small-")
    assert len(vms_of_job(s, job_id)) >= 2, "the rerun had a fresh VM"
    wait_for("nothing of the lost VM left", lambda: not nothing_left_of(s, vm_id), 60, 0.5)
    log = events(s)
    assert f"VM {vm_id} seen" in log and f"rule {seen}=fail" in log
    assert f"job {job_id} has a working node again" in log
    (line,) = unscheduled(s, job_id)
    assert re.fullmatch(rf"\S+ \S+ {E2E_NAME}-small-\d+ job {job_id} VM {vm_id}: seen \S+; "
                        rf"rule {seen}=fail \(class small\); node set DOWN \(job {job_id} "
                        rf"requeued by Slurm\), VM terminated; recovery [\d.]+ s, on "
                        rf"(VM \d+|nodes {E2E_NAME}-small-\d+)",
                        line), line
    report(s, action, "handled (node DOWN, rule applied)", handled_s)
    report(s, action, "job running again on a fresh VM (vcluster's event)",
           vclusters_recovery_s(s, job_id))
    report(s, action, "job completed on a fresh VM", recovered_s)


def test_a_soft_poweroff_whose_guest_kills_the_job_still_ends_completed(s: Site) -> None:
    # an ACPI shutdown: the guest's processes get SIGTERM, so Slurm may end the run FAILED
    # (exit 143) before vcluster sets the node DOWN; vcluster then requeues it
    out = s.work / "world-poweroff.out"
    marker = s.work / "world-poweroff.marker"
    marker.unlink(missing_ok=True)
    script = f"if [ -e {marker} ]; then hostname; else touch {marker}; sleep 300; fi"
    job_id = job_id_of(s.fsub("-N1", f"--output={out}", "--wrap", script))
    wait_for("job running", marker.exists, JOB_TIMEOUT_S, 0.2)
    (vm_id,) = vms_of_job(s, job_id)
    acted = time.monotonic()
    s.one.action("poweroff", vm_id)
    states: list[str] = []

    def completed() -> bool:
        job = s.job(job_id)
        if job is not None and (not states or states[-1] != job.state):
            states.append(job.state)
        return job is not None and job.state == "COMPLETED"

    wait_for("job completed", completed, JOB_TIMEOUT_S, 0.5)
    recovered_s = time.monotonic() - acted
    assert out.read_text().strip().splitlines()[-1].startswith(f"{E2E_NAME}-small-")
    assert len(vms_of_job(s, job_id)) >= 2, "the rerun had a fresh VM"
    wait_for("nothing of the VM left", lambda: not nothing_left_of(s, vm_id), 60, 0.5)
    log = events(s)
    assert f"VM {vm_id} seen" in log and "rule POWEROFF=fail (class small)" in log
    if "FAILED" in states:  # the guest's SIGTERM ended the run first: said, and requeued
        assert f"job {job_id} requeued: vcluster: it ended FAILED when vcluster gave its " \
            "VM up" in log, states
    print(f"poweroff (soft): the job went through {' > '.join(states)}")
    report(s, "poweroff (soft)", "job completed on a fresh VM", recovered_s)


def test_a_host_set_offline_under_a_running_job_requeues_it_onto_a_fresh_vm(s: Site) -> None:
    one = server(s)
    out = s.work / "world-host-offline.out"
    marker = s.work / "world-host-offline.marker"
    marker.unlink(missing_ok=True)
    script = f"if [ -e {marker} ]; then hostname; else touch {marker}; sleep 300; fi"
    job_id = job_id_of(s.fsub("-N1", f"--output={out}", "--wrap", script))
    wait_for("job running", marker.exists, JOB_TIMEOUT_S, 0.2)
    (vm_id,) = vms_of_job(s, job_id)
    host_id = int(one.vm.info(vm_id).HISTORY_RECORDS.HISTORY[-1].HID)
    acted = time.monotonic()
    one.host.status(host_id, 2)  # OFFLINE
    try:
        wait_for("the host's state handled by the class's rule",
                 lambda: f"VM {vm_id} seen on host" in events(s), 30, 0.2)
        handled_s = time.monotonic() - acted
    finally:
        one.host.status(host_id, 0)  # the site's only host: enabled again for the rerun
    states: list[str] = []

    def completed() -> bool:
        job = s.job(job_id)
        if job is not None and (not states or states[-1] != job.state):
            states.append(job.state)
        return job is not None and job.state == "COMPLETED"

    wait_for("job completed", completed, JOB_TIMEOUT_S, 0.5)
    recovered_s = time.monotonic() - acted
    assert "FAILED" not in states, f"the job went through {states}"
    assert out.read_text().strip().splitlines()[-1].startswith(f"{E2E_NAME}-small-")
    assert len(vms_of_job(s, job_id)) >= 2, "the rerun had a fresh VM"
    wait_for("nothing of the VM left", lambda: not nothing_left_of(s, vm_id), 60, 0.5)
    log = events(s)
    assert "OFFLINE (not asked by vcluster); rule HOST_OFFLINE=fail (class small): node set " \
        "DOWN" in log
    (line,) = unscheduled(s, job_id)
    assert f"VM {vm_id}: seen on host " in line and "; recovery " in line, line
    report(s, "host OFFLINE", "handled (node DOWN, rule applied)", handled_s)
    report(s, "host OFFLINE", "job running again on a fresh VM (vcluster's event)",
           vclusters_recovery_s(s, job_id))
    report(s, "host OFFLINE", "job completed on a fresh VM", recovered_s)


def test_a_suspended_vm_of_a_class_whose_rule_is_resume_is_resumed_and_its_job_completes_on_it(
        s: Site) -> None:
    # the e2e site's pool class has on_vm_event SUSPENDED = "resume"; small keeps "fail"
    out = s.work / "world-resume.out"
    marker = s.work / "world-resume.marker"
    marker.unlink(missing_ok=True)
    script = f"hostname; touch {marker}; sleep 20; hostname"
    job_id = job_id_of(s.fsub("--vm-class=pool", "-N1", f"--output={out}", "--wrap", script))
    wait_for("job running", marker.exists, JOB_TIMEOUT_S, 0.2)
    job = s.job(job_id)
    assert job is not None
    (node_name,) = job.nodes
    (vm_id,) = [vm.vm_id for vm in s.live_vms()
                if vm.user_template.get("VCLUSTER_NODE") == node_name]
    acted = time.monotonic()
    s.one.action("suspend", vm_id)
    wait_for("the VM resumed by its class's rule",
             lambda: f"VM {vm_id} seen SUSPENDED" in events(s), 30, 0.2)
    wait_for("the VM RUNNING again", lambda: server(s).vm.info(vm_id).LCM_STATE == 3, 30, 0.2)
    resumed_s = time.monotonic() - acted
    states: list[str] = []

    def completed() -> bool:
        job = s.job(job_id)
        if job is not None and (not states or states[-1] != job.state):
            states.append(job.state)
        return job is not None and job.state == "COMPLETED"

    wait_for("job completed", completed, JOB_TIMEOUT_S, 0.5)
    completed_s = time.monotonic() - acted
    assert not {"PENDING", "REQUEUED", "FAILED", "NODE_FAIL"} & set(states), \
        f"the job went through {states}"
    assert out.read_text().split() == [node_name, node_name], "ran once, on the same node"
    assert server(s).vm.info(vm_id).STATE == 3, "the same VM still ACTIVE"
    log = events(s)
    assert f"VM {vm_id} seen SUSPENDED (not asked by vcluster); rule SUSPENDED=resume " \
        "(class pool): VM resumed" in log
    (line,) = unscheduled(s, job_id)
    assert re.fullmatch(rf"\S+ \S+ {node_name} job {job_id} VM {vm_id}: seen SUSPENDED; rule "
                        rf"SUSPENDED=resume \(class pool\); VM resumed; recovery [\d.]+ s, "
                        rf"on VM {vm_id}", line), line
    report(s, "suspend (rule resume)", "VM RUNNING again", resumed_s)
    report(s, "suspend (rule resume)", "VM up again (vcluster's event)",
           vclusters_recovery_s(s, job_id))
    report(s, "suspend (rule resume)", "job completed on the same VM", completed_s)


def test_a_job_cancelled_while_its_vm_cannot_be_placed_leaves_no_vm(s: Site) -> None:
    one = server(s)
    # fill every host, so that the job's VM stays PENDING ("Not enough CPU")
    fillers = []
    for host in one.hostpool.info().HOST:
        share = host.HOST_SHARE
        cpu = (int(share.MAX_CPU) - int(share.CPU_USAGE)) / 100
        mem_mb = (int(share.MAX_MEM) - int(share.MEM_USAGE)) // 1024
        fillers.append(one.vm.allocate(f'NAME = "filler"\nCPU = "{cpu}"\nMEMORY = "{mem_mb}"\n'
                                       f'SCHED_REQUIREMENTS = "ID = {int(host.ID)}"\n', False))
    try:
        job_id = job_id_of(s.fsub("-N1", f"--output={s.work / 'unplaced.out'}", "--wrap",
                                  "hostname"))
        wait_for("the job's VM unplaced (PENDING with a SCHED_MESSAGE)", lambda: any(
            state == 1 and "SCHED_MESSAGE" in (one.vm.info(vm_id).USER_TEMPLATE or {})
            for vm_id, state in vms_of_job(s, job_id).items()), 60, 0.2)
        subprocess.run(["scancel", str(job_id)], env=s.env, check=True)
        cancelled = time.monotonic()
        wait_for("no VM of the job left", lambda: all(
            state == DONE for state in vms_of_job(s, job_id).values()), 5, 0.1)
        report(s, "job cancelled while its VM cannot be placed", "no VM left",
               time.monotonic() - cancelled)
    finally:
        for vm_id in fillers:  # oned refuses terminate-hard in PROLOG or BOOT: try again
            wait_for(f"filler {vm_id}'s terminate accepted",
                     lambda vm_id=vm_id: _terminate_hard(one, vm_id), 60, 0.5)
    wait_clean(s, 120)


def _terminate_hard(one: pyone.OneServer, vm_id: int) -> bool:
    try:
        one.vm.action("terminate-hard", vm_id)
    except pyone.OneActionException:
        return False
    return True
