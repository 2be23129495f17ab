"""Jobs on fresh VMs, end to end: fsub -> Slurm power saving -> controller -> the cloud's netns
VMs -> slurmd joins -> the job runs -> epilog -> VMs terminated.

Every test leaves the site clean: no VM alive, no VM namespace, every cloud node powered down.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
from collections.abc import Iterator

import pyone
import pytest

from tests.integration.site_fixtures import (
    E2E_NAME,
    E2E_PORTS,
    E2E_SUBNET,
    Site,
    job_id_of,
    wait_clean,
    wait_for,
)
from vcluster.config import read_one_auth
from vcluster.testbed import netns, site

pytestmark = pytest.mark.integration

JOB_TIMEOUT_S = 240


@pytest.fixture()
def s(e2e_site: Site) -> Iterator[Site]:
    wait_clean(e2e_site)
    yield e2e_site
    wait_clean(e2e_site)


def vms_ever(s: Site, *, job_id: int | None = None, node: str | None = None
             ) -> dict[int, str]:
    """{VM id: node} of every VM ever booted for the job or node, terminated ones included
    (what `onevm list` shows with DONE VMs): a finished job's VMs may already be gone."""
    server = pyone.OneServer(s.config.opennebula.xmlrpc,
                             session=read_one_auth(s.config.opennebula.auth_file))
    found = {}
    for vm in server.vmpool.infoextended(-2, -1, -1, -2).VM or []:
        tags = vm.USER_TEMPLATE or {}
        if job_id is not None and str(tags.get("VCLUSTER_JOB", "")) != str(job_id):
            continue
        if node is not None and tags.get("VCLUSTER_NODE") != node:
            continue
        found[int(vm.ID)] = str(tags.get("VCLUSTER_NODE", ""))
    return found


def vm_ids_for_job(s: Site, job_id: int) -> set[int]:
    return set(vms_ever(s, job_id=job_id))


def test_one_node_job_prints_the_vm_hostname(s: Site) -> None:
    out = s.work / "one.out"
    proc = s.fsub("-N1", "--wait", f"--output={out}", "--wrap",
                  "hostname; cat /proc/sys/kernel/hostname")
    assert proc.returncode == 0, proc.stderr
    job_id = job_id_of(proc)
    (node,) = vms_ever(s, job_id=job_id).values()
    assert out.read_text().split() == [node, node]
    assert node.startswith(f"{E2E_NAME}-small-")


def test_two_node_job_runs_srun_across_two_vms(s: Site) -> None:
    out = s.work / "two.out"
    proc = s.fsub("-N2", "--wait", f"--output={out}", "--wrap", "srun hostname | sort")
    assert proc.returncode == 0, proc.stderr
    job_id = job_id_of(proc)
    nodes = sorted(vms_ever(s, job_id=job_id).values())
    assert len(nodes) == 2
    assert out.read_text().split() == nodes


def test_memory_and_cpu_requests_show_in_the_vm_templates(s: Site) -> None:
    proc = s.fsub("-N1", "-c2", "--mem=700M", "--wait", f"--output={s.work / 'size.out'}",
                  "--wrap", "true")
    assert proc.returncode == 0, proc.stderr
    job_id = job_id_of(proc)
    (vm_id,) = vm_ids_for_job(s, job_id)
    # what `onevm show` would print, read with the real pyone client
    server = pyone.OneServer(s.config.opennebula.xmlrpc,
                             session=read_one_auth(s.config.opennebula.auth_file))
    template = server.vm.info(vm_id).TEMPLATE
    assert template["MEMORY"] == "700"
    assert template["VCPU"] == "2"


def test_job_array_runs_each_task_on_fresh_vms(s: Site) -> None:
    out = s.work / "array-%a.out"
    proc = s.fsub("-N1", "--array=0-2", f"--output={out}", "--wait", "--wrap", "hostname")
    assert proc.returncode == 0, proc.stderr
    first = job_id_of(proc)
    # array tasks have their own raw job ids: the VMs are tagged with those
    tasks = range(first, first + 3)
    vm_ids = {j: vm_ids_for_job(s, j) for j in tasks}
    if [len(v) for v in vm_ids.values()] != [1, 1, 1]:  # why, in the failure's message
        said = [subprocess.run(["vcluster", "events", "--job", str(j), "-n", "100"],
                               capture_output=True, text=True, env=s.env).stdout for j in tasks]
        pytest.fail(f"one fresh VM per task, got {vm_ids}; the tasks' events:\n"
                    + "\n".join(said))
    for task in range(3):
        text = (s.work / f"array-{task}.out").read_text().strip()
        assert text.startswith(f"{E2E_NAME}-small-")


def test_dependency_afterok_runs_after_its_parent(s: Site) -> None:
    first = s.fsub("-N1", f"--output={s.work / 'parent.out'}", "--wrap", "sleep 2; date +%s.%N")
    parent = job_id_of(first)
    second = s.fsub("-N1", f"--dependency=afterok:{parent}", "--wait",
                    f"--output={s.work / 'child.out'}", "--wrap", "date +%s.%N")
    assert second.returncode == 0, second.stderr
    parent_end = float((s.work / "parent.out").read_text())
    child_start = float((s.work / "child.out").read_text())
    assert child_start > parent_end
    # the child became eligible the moment its parent ended: it still got a fresh VM
    parent_vms, child_vms = vm_ids_for_job(s, parent), vm_ids_for_job(s, job_id_of(second))
    assert len(parent_vms) == 1 and len(child_vms) == 1 and not parent_vms & child_vms


def test_scancel_while_vms_boot_leaves_no_vm(s: Site) -> None:
    proc = s.fsub("-N2", f"--output={s.work / 'cancel.out'}", "--wrap", "sleep 60")
    job_id = job_id_of(proc)
    wait_for("a VM of the job exists", lambda: vm_ids_for_job(s, job_id), 60, 0.2)
    subprocess.run(["scancel", str(job_id)], env=s.env, check=True)
    # the per-test fixture then waits until no VM, namespace or powered-up node is left
    wait_clean(s, 120)
    assert s.job(job_id) is None or s.job(job_id).state == "CANCELLED"  # type: ignore[union-attr]


def test_job_exit_code_is_fsubs_exit_code(s: Site) -> None:
    proc = s.fsub("-N1", "--wait", f"--output={s.work / 'exit3.out'}", "--wrap", "exit 3")
    assert proc.returncode == 3, proc.stderr


def test_boot_failure_on_one_vm_requeues_and_completes(s: Site) -> None:
    from tests.integration.test_e2e_joinerr import placement_held

    out = s.work / "bootfail.out"
    with placement_held(s):  # the fault is read at the boot: it must be there before it
        proc = s.fsub("-N1", f"--output={out}", "--wrap", "hostname")
        job_id = job_id_of(proc)
        first = wait_for("the job's first VM", lambda: sorted(vm_ids_for_job(s, job_id)), 60,
                         0.05)
        assert isinstance(first, list)
        s.one.update_user_template(first[0], {"TESTBED_FAULT": "boot-fail"})
    done = wait_for("job completed", lambda: (j := s.job(job_id)) and j.state == "COMPLETED",
                    JOB_TIMEOUT_S, 1)
    assert done
    assert len(vm_ids_for_job(s, job_id)) >= 2, "a second VM was booted after the failure"
    assert out.read_text().strip().startswith(f"{E2E_NAME}-small-")
    events = subprocess.run(["vcluster", "events", "-n", "200"], capture_output=True,
                            text=True, env=s.env, check=True).stdout
    if f"VM {first[0]} booted early for" in events:
        # booted at the job's allocation, failed before Slurm powered its node up: the node
        # got its own VM at Slurm's resume, and the job was not requeued
        assert f"VM {first[0]} booted early for" in events and "failed to boot" in events
        return
    show = subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True,
                          text=True, env=s.env, check=True).stdout
    # why it went back to the queue, where its user sees it (fsub --wait shows it too)
    assert f"AdminComment=vcluster: requeued after a VM failed (1 so far); last: VM {first[0]} " \
           "failed to boot (BOOT_FAILURE)" in show


def power_cut(ns_name: str) -> None:
    """SIGKILL every process in the VM's namespace, again for any forked meanwhile, as the
    testbed's own power cut does. A process that ended between the listing and its kill
    (the guest's short-lived helpers) is fine: it is gone, which is what is wanted."""
    deadline = time.monotonic() + 10
    while pids := netns.pids_in(ns_name):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert time.monotonic() < deadline, f"processes {pids} survive SIGKILL"
        time.sleep(0.05)


def test_vm_crash_under_a_running_job_requeues_and_completes(s: Site) -> None:
    out = s.work / "crash.out"
    marker = s.work / "crash.marker"
    script = (f"if [ -e {marker} ]; then hostname; else touch {marker}; sleep 300; fi")
    proc = s.fsub("-N1", f"--output={out}", "--wrap", script)
    job_id = job_id_of(proc)
    wait_for("job running", lambda: marker.exists(), JOB_TIMEOUT_S, 0.5)
    (vm_id,) = vm_ids_for_job(s, job_id)
    # the VM crashes: every process of it dies at once, nothing gets to say goodbye
    power_cut(f"{E2E_NAME}-vm{vm_id}")
    done = wait_for("job completed", lambda: (j := s.job(job_id)) and j.state == "COMPLETED",
                    JOB_TIMEOUT_S, 1)
    assert done
    assert len(vm_ids_for_job(s, job_id)) >= 2
    assert out.read_text().strip().splitlines()[-1].startswith(f"{E2E_NAME}-small-")


def test_pool_class_serves_two_jobs_with_one_boot(s: Site) -> None:
    outs = [s.work / "pool-1.out", s.work / "pool-2.out"]
    before = set(vms_ever(s))  # VMs other tests booted for the pool's nodes
    for out in outs:
        proc = s.fsub("--vm-class=pool", "-N1", "--wait", f"--output={out}", "--wrap", "hostname")
        assert proc.returncode == 0, proc.stderr
    hosts = [o.read_text().strip() for o in outs]
    assert hosts[0] == hosts[1] and hosts[0].startswith(f"{E2E_NAME}-pool-")
    assert len(set(vms_ever(s, node=hosts[0])) - before) == 1, "one boot served both jobs"
    wait_clean(s, 120)  # idles out after SuspendTime


def test_job_submitted_by_a_non_root_user(s: Site, system_fsub: str) -> None:
    user = "vcuser"
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--create-home", user], check=True)
    out = s.work / "user.out"
    proc = s.fsub("-N1", "--wait", f"--output={out}", "--wrap", "id -un; hostname", user=user,
                  fsub=system_fsub)
    assert proc.returncode == 0, proc.stderr
    lines = out.read_text().split()
    assert lines[0] == user and lines[1].startswith(f"{E2E_NAME}-small-")
    assert out.stat().st_uid == pwd.getpwnam(user).pw_uid


def test_controller_restarted_while_vms_boot_loses_nothing(s: Site) -> None:
    out = s.work / "restart.out"
    proc = s.fsub("-N2", f"--output={out}", "--wrap", "sleep 3; srun hostname")
    job_id = job_id_of(proc)
    wait_for("the job's VMs exist", lambda: len(vm_ids_for_job(s, job_id)) == 2, 60, 0.1)
    site.stop_controller(s.spec)
    time.sleep(3)  # the VMs boot and the job starts while no controller runs
    site.start_controller(s.spec)
    done = wait_for("job completed", lambda: (j := s.job(job_id)) and j.state == "COMPLETED",
                    JOB_TIMEOUT_S, 1)
    assert done
    assert len(vm_ids_for_job(s, job_id)) == 2, "the restarted controller booted no VM twice"
    assert len(out.read_text().split()) == 2
    # the per-test fixture checks that both VMs were terminated and the nodes powered down


def test_job_submitted_while_the_controller_is_down_runs_when_it_returns(s: Site) -> None:
    site.stop_controller(s.spec)
    time.sleep(s.config.controller.heartbeat_stale_s + 1)
    out = s.work / "ctl-down.out"
    proc = s.fsub("-N1", f"--output={out}", "--wrap", "hostname")
    job_id = job_id_of(proc)
    assert proc.stderr.startswith("fsub: the vcluster controller is not running (it was "
                                  "stopped "), proc.stderr  # SIGTERM: it said it stopped
    assert proc.stderr.endswith("): the job waits in the queue until it is back; tell your "
                                "admin\n")
    reason = "vcluster: the vcluster controller is not running; nodes not resumed"

    def node_failed_with_reason() -> bool:
        sinfo = subprocess.run(["sinfo", "-R", "-h", "-o", "%E"], capture_output=True,
                               text=True, env=s.env, check=True).stdout
        return reason in sinfo

    wait_for("the resumed node failed with a reason", node_failed_with_reason, 30, 0.5)
    # the job is requeued (COMPLETING, then PENDING): it waits, it is not lost
    wait_for("the job requeued", lambda: (j := s.job(job_id)) and j.state == "PENDING", 30, 0.5)
    started = time.monotonic()
    site.start_controller(s.spec)
    done = wait_for("job completed", lambda: (j := s.job(job_id)) and j.state == "COMPLETED",
                    JOB_TIMEOUT_S, 1)
    assert done
    assert time.monotonic() - started < 60, "not held back by Slurm's requeue deferral"
    assert out.read_text().strip().startswith(f"{E2E_NAME}-small-")
    show = subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True,
                          text=True, env=s.env, check=True).stdout
    assert ("AdminComment=vcluster: requeued: the controller was not running when Slurm "
            "asked for its nodes") in show


def test_a_job_whose_vms_always_fail_is_held_with_the_reason(s: Site) -> None:
    server = pyone.OneServer(s.config.opennebula.xmlrpc,
                             session=read_one_auth(s.config.opennebula.auth_file))
    names = [t.NAME for t in server.templatepool.info(-2, -1, -1).VMTEMPLATE or []]
    if "vcluster-broken" not in names:  # an image that never boots
        server.template.allocate('NAME = "vcluster-broken"\nCPU = "1"\nMEMORY = "256"\n'
                                 'NIC = [ NETWORK = "vcluster" ]\nTESTBED_FAULT = "boot-fail"\n')
    job_id = job_id_of(s.fsub("-N1", "--vm-template=vcluster-broken",
                              f"--output={s.work / 'broken.out'}", "--wrap", "hostname"))
    try:
        # three boots that fail, each with its back-off, and Slurm's requeues between them:
        # up to 4 minutes on a busy 2-core machine
        held = wait_for("the job held", lambda: (j := s.job(job_id)) and j.state == "PENDING"
                        and "Held" in j.state_reason and j, 2 * JOB_TIMEOUT_S, 1)
        assert held
        show = subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True,
                              text=True, env=s.env, check=True).stdout
        assert "AdminComment=vcluster: held after 3 failed VMs; last: VM" in show
        assert "failed to boot (BOOT_FAILURE)" in show
        # three failed VMs, then no more: a VM booted at the job's allocation that fails
        # before Slurm powers its node up counts as one (and the job's later tries boot at
        # Slurm's resume only), so the job costs three VMs however they failed
        tries = len(vm_ids_for_job(s, job_id))
        job_events = subprocess.run(["vcluster", "events", "--job", str(job_id), "-n", "100"],
                                    capture_output=True, text=True, env=s.env).stdout
        assert tries == 3, f"{tries} VMs; the job's events:\n{job_events}"
    finally:
        subprocess.run(["scancel", str(job_id)], env=s.env, check=False)
    # the fixture then checks no VM is left and every node is powered down (not DOWN)


def test_orphan_vms_of_this_cluster_are_terminated_others_left_alone(s: Site) -> None:
    server = pyone.OneServer(s.config.opennebula.xmlrpc,
                             session=read_one_auth(s.config.opennebula.auth_file))
    template_id = s.one.template_id("vcluster-worker")
    ours = server.template.instantiate(
        template_id, "stray", False,
        f'VCLUSTER_CLUSTER = "{E2E_NAME}"\nVCLUSTER_NODE = "{E2E_NAME}-small-006"\n'
        'VCLUSTER_JOB = "999"', False)
    theirs = server.template.instantiate(
        template_id, "neighbour", False, 'VCLUSTER_CLUSTER = "other"', False)
    try:
        wait_for("the orphan terminated", lambda: server.vm.info(ours).STATE == 6, 60, 0.5)
        assert server.vm.info(theirs).STATE != 6, "another cluster's VM was touched"
        events = subprocess.run(["vcluster", "events", "-n", "200"], capture_output=True,
                                text=True, env=s.env, check=True).stdout
        assert f"orphan VM {ours}" in events
    finally:
        wait_for("the neighbour's terminate accepted", lambda: _terminate_hard(server, theirs),
                 60, 0.5)
        wait_for("the neighbour gone", lambda: server.vm.info(theirs).STATE == 6, 60, 0.5)


def _terminate_hard(server: pyone.OneServer, vm_id: int) -> bool:
    """oned refuses terminate-hard while a VM is in PROLOG or BOOT: an admin tries again."""
    try:
        server.vm.action("terminate-hard", vm_id)
    except pyone.OneActionException:
        return False
    return True


def test_testbed_status_lists_the_parts(e2e_site: Site) -> None:
    proc = subprocess.run(
        ["vcluster", "testbed", "status", "--name", E2E_NAME, "--state-dir",
         str(e2e_site.spec.root), "--subnet", E2E_SUBNET,
         "--slurm-port", str(E2E_PORTS["slurm_port"]),
         "--one-port", str(E2E_PORTS["one_port"]),
         "--onegate-port", str(E2E_PORTS["onegate_port"])],
        capture_output=True, text=True, check=False, env=e2e_site.env)
    assert proc.returncode == 0, proc.stderr
    assert "cloud server" in proc.stdout and "running" in proc.stdout
    assert "controller" in proc.stdout
