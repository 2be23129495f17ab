"""Standby VMs end to end: a job starts on a booted, never-used VM without a boot on its path.

Its own site (the shared one must stay free of VMs between tests): instance ``vcsN`` next to
the e2e site of slot N, the per-job class keeping one standby VM, VMs that spend BOOT_S in
BOOT. What a user must see: the job runs on the standby VM (it learnt its node name through
OneGate) and starts well within BOOT_S of its submission; a replacement standby VM boots;
the VM that ran the job is terminated at its end, never returned to the reserve.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.site_fixtures import _SLOT, Site, job_id_of, wait_for
from vcluster.config import load_config
from vcluster.one import VM
from vcluster.testbed import netns, site

pytestmark = pytest.mark.integration

BOOT_S = 20.0
BIN = Path(sys.executable).parent
"""fsub and vcluster of this installation."""
NAME = f"vcs{_SLOT}"


def standby_vms(s: Site) -> list[VM]:
    return [vm for vm in s.live_vms() if vm.user_template.get("VCLUSTER_STANDBY")
            and not vm.user_template.get("VCLUSTER_NODE")]


def ready(vm: VM) -> bool:
    return vm.is_running and vm.is_ready


@pytest.fixture(scope="module")
def standby_site(slurm_flavor: str) -> Iterator[Site]:
    if os.geteuid() != 0:
        pytest.skip("the testbed needs root")
    root = Path(tempfile.mkdtemp(prefix="vcs-site-", dir="/tmp"))
    os.chmod(root, 0o755)
    work = root / "work"
    work.mkdir()
    os.chmod(work, 0o1777)
    spec = site.SiteSpec(name=NAME, subnet=f"10.{116 + 10 * _SLOT}.0.0/24",
                         state_dir=str(root / "state"), slurm_port=6922 + 10 * _SLOT,
                         one_port=2738 + 10 * _SLOT, onegate_port=5135 + 10 * _SLOT,
                         per_job_nodes=3, pool_nodes=1, resume_timeout_s=90,
                         standby=1, boot_s=BOOT_S, slurm_root=slurm_flavor)
    site.down(spec)
    try:
        site.up(spec)
        yield Site(spec, load_config(spec.config_path, environ={}), work)
    finally:
        site.down(spec)
        left = netns.list_hosts(f"{NAME}-")
        if not left:
            shutil.rmtree(root, ignore_errors=True)
        assert not left, f"namespaces left after down: {left}"


def test_a_job_starts_on_a_standby_vm_and_a_replacement_boots(standby_site: Site) -> None:
    s = standby_site
    first = wait_for("a ready standby VM", lambda: [v for v in standby_vms(s) if ready(v)],
                     BOOT_S + 60)
    assert isinstance(first, list) and len(first) == 1
    vm = first[0]
    out = s.work / "standby.out"
    t0 = time.time()
    proc = s.fsub("-N1", "--wait", f"--output={out}", "--wrap",
                  "date +%s.%N; hostname", timeout_s=120, fsub=str(BIN / "fsub"))
    assert proc.returncode == 0, proc.stderr
    job_id = job_id_of(proc)
    started_s, hostname = out.read_text().split()
    wait_s = float(started_s) - t0
    print(f"standby: submit -> job start {wait_s:.2f} s (VM boot {BOOT_S:g} s)")
    assert wait_s < BOOT_S / 2, f"the job waited {wait_s:.1f} s: a boot was on its path"

    handed = s.one.vm(vm.vm_id)
    assert handed.user_template["VCLUSTER_NODE"] == hostname
    assert handed.user_template["VCLUSTER_JOB"] == str(job_id)
    assert hostname.startswith(f"{NAME}-small-")

    # the VM that ran the job is terminated; a fresh standby VM takes its place
    wait_for(f"VM {vm.vm_id} terminated", lambda: s.one.vm(vm.vm_id).is_gone, 60)
    replacement = wait_for("a ready replacement standby VM",
                           lambda: [v for v in standby_vms(s) if ready(v)], BOOT_S + 60)
    assert isinstance(replacement, list)
    assert [v.vm_id for v in replacement] != [vm.vm_id] and len(replacement) == 1
    status = subprocess.run([str(BIN / "vcluster"), "status"], capture_output=True, text=True,
                            env=s.env, timeout=60, check=False)
    assert status.returncode == 0, status.stderr
    assert f"standby VM {replacement[0].vm_id}" in status.stdout, status.stdout


def test_a_vm_boots_at_allocation_and_joins_once_slurm_powers_its_node_up(
        standby_site: Site) -> None:
    """Two nodes, one standby VM: one node gets it; the other's VM is booted as soon as the
    prolog says the job is allocated, before Slurm's resume, and joins after it."""
    from sqlalchemy import select

    from vcluster import db

    s = standby_site
    wait_for("a ready standby VM", lambda: [v for v in standby_vms(s) if ready(v)],
             BOOT_S + 60)
    out = s.work / "early.out"
    proc = s.fsub("-N2", "--wait", f"--output={out}", "--wrap", "srun hostname",
                  timeout_s=180, fsub=str(BIN / "fsub"))
    assert proc.returncode == 0, proc.stderr
    job_id = job_id_of(proc)
    assert len(set(out.read_text().split())) == 2
    sessions = db.session_factory(db.make_engine(s.config.database))
    with sessions() as session:
        kinds = [(e.kind, e.at) for e in session.scalars(
            select(db.Event).where(db.Event.job_id == job_id).order_by(db.Event.id))]
    first = {k: at for k, at in reversed(kinds)}
    assert {"vm.early_booted", "vm.standby_claimed", "hook.resume"} <= set(first), kinds
    # booted before Slurm asked for the node, handed over after it did
    assert first["vm.early_booted"] <= first["hook.resume"], kinds
    claims = [k for k, _ in kinds if k == "vm.standby_claimed"]
    assert len(claims) == 2, kinds  # the standby VM and the early VM
    job = s.job(job_id)
    assert job is not None and job.state == "COMPLETED"
