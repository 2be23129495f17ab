"""Capacity back-off end to end: a class whose template OpenNebula cannot place backs off,
its nodes carry the reason in Slurm, its job waits in the queue (not held, not failed), jobs
of another class keep running, and one probe VM ends the back-off once there is room.

The pool class boots from its own template (``vcluster-worker-pool``); the test gives it a
SCHED_REQUIREMENTS that matches no host (``ID = 9999``, with ``one.template.update``, as an
admin would), so the cloud's scheduler leaves its VMs PENDING with oned's SCHED_MESSAGE.
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
    E2E_NAME,
    POOL_TEMPLATE,
    Site,
    job_id_of,
    wait_clean,
    wait_for,
)
from vcluster.config import read_one_auth
from vcluster.controller.backoff import BACKOFF_REASON_PREFIX

pytestmark = [pytest.mark.integration, pytest.mark.one_slurm]

NOWHERE = "ID = 9999"
REASON = f"No host meets capacity and SCHED_REQUIREMENTS: {NOWHERE}"


@pytest.fixture()
def s(e2e_site: Site) -> Iterator[Site]:
    wait_clean(e2e_site)
    yield e2e_site
    wait_clean(e2e_site)


def server(s: Site) -> Any:
    return pyone.OneServer(s.config.opennebula.xmlrpc,
                           session=read_one_auth(s.config.opennebula.auth_file))


def vcluster_json(s: Site, *args: str) -> Any:
    proc = subprocess.run([sys.executable, "-m", "vcluster", *args, "--json"],
                          capture_output=True, text=True, timeout=60, env=s.env, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def set_requirements(s: Site, requirements: str) -> None:
    one = server(s)
    (tid,) = [t.ID for t in one.templatepool.info(-2, -1, -1).VMTEMPLATE or []
              if t.NAME == POOL_TEMPLATE]
    one.template.update(tid, f'SCHED_REQUIREMENTS = "{requirements}"', 1)


def vms_of_job(s: Site, job_id: int) -> list[Any]:
    return [vm for vm in server(s).vmpool.infoextended(-2, -1, -1, -2).VM or []
            if str((vm.USER_TEMPLATE or {}).get("VCLUSTER_JOB", "")) == str(job_id)]


def test_an_unplaceable_class_backs_off_while_another_class_runs(s: Site) -> None:
    pool_nodes = s.config.node_class("pool").node_names()
    set_requirements(s, NOWHERE)
    job_id = None
    try:
        job_id = job_id_of(s.fsub("--vm-class=pool", "-N1", f"--output={s.work / 'bo.out'}",
                                  "--wrap", "hostname"))
        # oned's scheduler leaves the VM PENDING with its SCHED_MESSAGE; after
        # placement_wait_s (half of ResumeTimeout here: 30 s) the class backs off
        backoffs = wait_for("the pool class backed off",
                            lambda: vcluster_json(s, "status")["backoffs"], 90, 1)
        (b,) = backoffs  # type: ignore[misc]
        assert (b["node_class"], b["template"], b["level"], b["cause"], b["reason"]) == (
            "pool", POOL_TEMPLATE, 1, "placement", REASON)
        assert 0 < b["next_probe_in_s"] <= 60

        def drained() -> list[str]:
            return [n.reason for n in s.cloud_nodes()
                    if n.name in pool_nodes and n.is_drained]

        reasons = wait_for("the pool's nodes drained with the reason",
                           lambda: len(drained()) == len(pool_nodes) and drained(), 30, 1)
        for reason in reasons:  # type: ignore[union-attr]
            assert reason.startswith(f"{BACKOFF_REASON_PREFIX}template {POOL_TEMPLATE} cannot "
                                     f"be placed (placement): {REASON}; next probe at ")

        # another class keeps working meanwhile
        small = s.fsub("-N1", "--wait", f"--output={s.work / 'bo-small.out'}", "--wrap",
                       "hostname")
        assert small.returncode == 0, small.stderr
        assert (s.work / "bo-small.out").read_text().startswith(f"{E2E_NAME}-small-")

        # the pool job waits in the queue: neither held nor failed, its VM gone
        job = s.job(job_id)
        assert job is not None and job.state == "PENDING", job
        assert "held" not in job.state_reason.lower(), job
        (vm,) = vms_of_job(s, job_id)
        assert int(vm.STATE) == 6  # DONE: terminated, not left PENDING in oned
        events = vcluster_json(s, "events", "--job", str(job_id))
        assert any(e["kind"] == "node.unplaceable" and REASON in e["message"]
                   for e in events), events

        # room again: after the back-off, one probe VM is placed and the job runs
        set_requirements(s, "")
        wait_for("the pool job completed", lambda: (j := s.job(job_id)) and
                 j.state == "COMPLETED", 240, 1)
        assert (s.work / "bo.out").read_text().startswith(f"{E2E_NAME}-pool-")
        assert vcluster_json(s, "status")["backoffs"] == []
        wait_for("the pool's back-off drain lifted", lambda: not drained(), 15, 1)
        assert len(vms_of_job(s, job_id)) == 2  # the unplaced one and the probe
    finally:
        set_requirements(s, "")
        if job_id is not None:
            job = s.job(job_id)
            if job is not None and not job.is_finished:
                subprocess.run([f"{s.config.slurm.bin_dir}/scancel", str(job_id)], env=s.env,
                               check=False, timeout=30)
