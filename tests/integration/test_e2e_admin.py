"""What an admin runs at a live site, end to end: usage accounting and admin commands.

Every test leaves the site clean: no VM alive, no VM namespace, every cloud node powered down.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pyone
import pytest

from tests.integration.site_fixtures import (
    Site,
    job_id_of,
    wait_clean,
    wait_for,
)
from vcluster.config import read_one_auth

pytestmark = [pytest.mark.integration, pytest.mark.one_slurm]


@pytest.fixture()
def s(e2e_site: Site) -> Iterator[Site]:
    wait_clean(e2e_site)
    yield e2e_site
    wait_clean(e2e_site)


def vcluster(s: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vcluster", *args], capture_output=True,
                          text=True, timeout=60, env=s.env, check=False)


def vcluster_json(s: Site, *args: str) -> Any:
    proc = vcluster(s, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def oned_vms_of_job(s: Site, job_id: int) -> list[Any]:
    """oned's records of every VM booted for the job, DONE ones included."""
    server = pyone.OneServer(s.config.opennebula.xmlrpc,
                             session=read_one_auth(s.config.opennebula.auth_file))
    return [vm for vm in server.vmpool.infoextended(-2, -1, -1, -2).VM or []
            if str((vm.USER_TEMPLATE or {}).get("VCLUSTER_JOB", "")) == str(job_id)]


def test_usage_reports_a_jobs_vm_hours_as_its_vms_lifetime(s: Site) -> None:
    proc = s.fsub("-N1", "--wait", "--wrap", "sleep 4")
    assert proc.returncode == 0, proc.stderr
    job_id = job_id_of(proc)
    wait_clean(s)

    def vms_closed() -> bool:
        jobs = vcluster_json(s, "status", "--all")["jobs"]
        vms = [v for j in jobs if j["job_id"] == job_id for v in j["vms"]]
        return bool(vms) and all(v["ended"] for v in vms)

    wait_for("the job's launches closed", vms_closed, 30)
    vms = oned_vms_of_job(s, job_id)
    assert vms and all(int(vm.ETIME) > 0 for vm in vms)
    lifetime_s = sum(int(vm.ETIME) - int(vm.STIME) for vm in vms)
    (row,) = [j for j in vcluster_json(s, "usage")["jobs"] if j["job_id"] == job_id]
    assert row["vms"] == len(vms)
    assert abs(row["vm_hours"] * 3600 - lifetime_s) <= 1.0, (row, lifetime_s)
    core_s = sum((int(vm.ETIME) - int(vm.STIME)) * int(vm.TEMPLATE["VCPU"]) for vm in vms)
    assert abs(row["core_hours"] * 3600 - core_s) <= 1.0 * int(vms[0].TEMPLATE["VCPU"])
    assert (row["user"], row["node_class"]) == ("root", "small")


JOB_TIMEOUT_S = 240


def test_doctor_finds_only_the_sites_deliberately_missing_template(s: Site) -> None:
    # another test registers vcluster-broken when it needs it: remove it, as a site would
    # have it missing, whatever ran before
    server = pyone.OneServer(s.config.opennebula.xmlrpc,
                             session=read_one_auth(s.config.opennebula.auth_file))
    for template in server.templatepool.info(-2, -1, -1).VMTEMPLATE or []:
        if template.NAME == "vcluster-broken":
            server.template.delete(template.ID, False)
    proc = vcluster(s, "doctor")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    # the e2e site offers "vcluster-broken" on purpose (jobs asking for it must fail)
    assert [line for line in lines if not line.startswith("ok ")] == [
        "FAIL  template vcluster-broken: OpenNebula has no VM template named 'vcluster-broken' "
        "that user 'oneadmin' can use; create it or fix node_class.template (class small, "
        "node_class[0].templates)"]
    assert "ok    template vcluster-worker: exists (id 0, class small, 1 NIC)" in lines
    assert any(line.startswith("ok    network of vcluster-worker: network ") for line in lines)
    assert any(line.startswith("ok    hook ResumeProgram: ") and "a wrapper of" in line
               for line in lines)


def test_a_drained_class_boots_nothing_until_undrained(s: Site) -> None:
    proc = vcluster(s, "drain", "small", "--reason", "e2e drain")
    assert proc.returncode == 0, proc.stderr
    small = s.config.node_class("small")
    assert proc.stdout == (f"class small drained: {small.hostlist} "
                           "(vcluster drain: e2e drain (by root))\n")
    try:
        nodes = {n["name"]: n for n in vcluster_json(s, "nodes")["nodes"]}
        assert all(nodes[name]["drained"] for name in small.node_names())
        job_id = job_id_of(s.fsub("-N1", f"--output={s.work / 'drained.out'}", "--wrap",
                                  "hostname"))
        time.sleep(8)  # several passes of the controller
        job = s.job(job_id)
        assert job is not None and job.state == "PENDING", job
        assert not oned_vms_of_job(s, job_id)
    finally:
        proc = vcluster(s, "undrain", "small")
    assert proc.returncode == 0, proc.stderr
    wait_for("job completed", lambda: (j := s.job(job_id)) and j.state == "COMPLETED",
             JOB_TIMEOUT_S, 1)
    drained: list[object] = []

    def none_drained() -> bool:
        drained[:] = [(n.name, n.state, sorted(n.flags), n.reason) for n in s.cloud_nodes()
                      if n.is_drained]
        return not drained

    try:
        wait_for("no node drained", none_drained, 10)  # within a pass of the controller's
    except AssertionError:
        raise AssertionError(f"still drained after undrain: {drained}") from None


def test_terminate_a_running_jobs_vm_requeues_the_job(s: Site) -> None:
    marker = s.work / "terminate.marker"
    out = s.work / "terminate.out"
    script = f"if [ -e {marker} ]; then hostname; else touch {marker}; sleep 300; fi"
    job_id = job_id_of(s.fsub("-N1", f"--output={out}", "--wrap", script))
    wait_for("job running", marker.exists, JOB_TIMEOUT_S, 0.5)
    (vm,) = oned_vms_of_job(s, job_id)
    node = str(vm.USER_TEMPLATE["VCLUSTER_NODE"])
    row = {n["name"]: n for n in vcluster_json(s, "nodes")["nodes"]}[node]
    assert (row["vm_id"], row["vm_state"], row["job_id"]) == (int(vm.ID), "RUNNING", job_id)
    proc = vcluster(s, "terminate", node, "--yes")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (f"VM {vm.ID} terminated; node {node} set DOWN, so Slurm requeues "
                           "its job\n")
    wait_for("job completed", lambda: (j := s.job(job_id)) and j.state == "COMPLETED",
             JOB_TIMEOUT_S, 1)
    assert len(oned_vms_of_job(s, job_id)) == 2
    events = vcluster_json(s, "events", "--job", str(job_id))
    assert any(e["kind"] == "admin.terminate" and e["vm_id"] == int(vm.ID) for e in events)


def test_cleanup_leaves_a_vm_booted_just_now_alone(s: Site) -> None:
    tags = {"VCLUSTER_NODE": "nowhere-001", "VCLUSTER_CLUSTER": s.config.controller.cluster_name}
    one = s.one
    template_id = one.template_id(s.config.node_class("small").template)
    vm_id = one.instantiate(template_id, "orphan", "\n".join(
        f'{k} = "{v}"' for k, v in tags.items()), hold=True)
    try:
        proc = vcluster(s, "cleanup", "--dry-run", "--json")
        assert proc.returncode == 0, proc.stderr
        # younger than cleanup's grace: left alone (the running controller sweeps it anyway)
        assert all(item["vm_id"] != vm_id for item in json.loads(proc.stdout)["leftovers"])
    finally:
        one.terminate(vm_id)
