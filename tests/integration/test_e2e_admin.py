"""What an admin runs at a live site, end to end: usage accounting and admin commands.

Every test leaves the site clean: no VM alive, no VM namespace, every cloud node powered down.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pyone
import pytest

from tests.integration.site_fixtures import (
    Site,
    e2e_site,
    job_id_of,
    slurm_flavor,
    system_fsub,
    wait_clean,
    wait_for,
)
from vcluster.config import read_one_auth

__all__ = ["e2e_site", "slurm_flavor", "system_fsub"]

pytestmark = pytest.mark.integration


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
