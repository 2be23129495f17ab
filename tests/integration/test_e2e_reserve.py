"""Advance reservations end to end: booted ahead, working at the start, refused when too big.

Its own site (instance ``vcrN`` next to the e2e site of slot N): five per-job nodes of 2 CPUs
on one host of 800 % CPU (the testbed's), so the cloud holds four of them; VMs spend BOOT_S
in BOOT. What a user must see: a reservation two minutes ahead is accepted; one the cloud
cannot hold next to it is refused at once with its reason; the first's nodes are working
before its start (booted a measured lead ahead); a job submitted into it starts within 2 s
of the start; at its end its VMs are terminated.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.integration.site_fixtures import _SLOT, Site, wait_for
from vcluster.config import load_config
from vcluster.slurm_parse import expand_hostlist
from vcluster.testbed import netns, site

pytestmark = pytest.mark.integration

BOOT_S = 20.0
BIN = Path(sys.executable).parent
NAME = f"vcr{_SLOT}"
AHEAD_S = 120
DURATION_S = 90


@pytest.fixture(scope="module")
def reserve_site(slurm_flavor: str) -> Iterator[Site]:
    if os.geteuid() != 0:
        pytest.skip("the testbed needs root")
    root = Path(tempfile.mkdtemp(prefix="vcr-site-", dir="/tmp"))
    os.chmod(root, 0o755)
    work = root / "work"
    work.mkdir()
    os.chmod(work, 0o1777)
    spec = site.SiteSpec(name=NAME, subnet=f"10.{118 + 10 * _SLOT}.0.0/24",
                         state_dir=str(root / "state"), slurm_port=6924 + 10 * _SLOT,
                         one_port=2740 + 10 * _SLOT, onegate_port=5137 + 10 * _SLOT,
                         events_port=2208 + 10 * _SLOT, per_job_nodes=5, pool_nodes=1,
                         resume_timeout_s=90, boot_s=BOOT_S, slurm_root=slurm_flavor)
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


def vcluster(s: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "vcluster"), *args], capture_output=True, text=True,
                          env=s.env, timeout=60, check=False)


def reservation(s: Site, rid: int) -> dict[str, object]:
    out = vcluster(s, "reserve", "list", "--all", "--json")
    assert out.returncode == 0, out.stderr
    return next(r for r in json.loads(out.stdout)["reservations"] if r["id"] == rid)


def node_state(s: Site, name: str) -> str:
    out = subprocess.run(["scontrol", "show", "node", name], capture_output=True, text=True,
                         env=s.env, timeout=30, check=False)
    return next((w.split("=", 1)[1] for w in out.stdout.split() if w.startswith("State=")),
                "?")


def test_a_reservation_has_working_nodes_at_its_start_and_one_too_big_is_refused(
        reserve_site: Site) -> None:
    s = reserve_site
    # one job first, so that the lead comes from a boot vcluster measured (long enough for
    # the controller to see its node up: that is when it records the boot time)
    proc = s.fsub("-N1", "--wait", "--wrap", "hostname; sleep 8", timeout_s=180,
                  fsub=str(BIN / "fsub"))
    assert proc.returncode == 0, proc.stderr

    made = vcluster(s, "reserve", "--start", f"+{AHEAD_S}s", "--duration",
                    f"{DURATION_S}s", "-N", "2", "--vm-class", "small", "--users", "root",
                    "--json")
    assert made.returncode == 0, made.stderr
    r = json.loads(made.stdout)
    assert r["state"] == "accepted" and r["node_count"] == 2
    nodes = expand_hostlist(str(r["nodes"]))
    assert len(nodes) == 2 and all(n.startswith(f"{NAME}-small-") for n in nodes)
    start_s = datetime.fromisoformat(str(r["start"])).timestamp()
    lead_s = float(str(r["lead_s"]))
    assert BOOT_S < lead_s < BOOT_S + 40, f"lead {lead_s} s not from the measured boot"

    # three more nodes of 2 CPUs next to it: the host (800 %) holds only two
    refused = vcluster(s, "reserve", "--start", f"+{AHEAD_S + 30}s", "--duration", "5m",
                       "-N", "3", "--vm-class", "small")
    assert refused.returncode == 1
    assert "refused: not enough CPU: the cloud can hold 2 of the 3 VMs" in refused.stderr, \
        refused.stderr
    listed = vcluster(s, "reserve", "list")
    assert listed.returncode == 0 and str(r["slurm_name"]) in listed.stdout, listed.stdout

    out = s.work / "in-reservation.out"
    sub = subprocess.run(["sbatch", "--parsable", f"--reservation={r['slurm_name']}", "-N1",
                          "--time=1", "-p", s.config.node_class("small").partition,
                          f"--output={out}", "--wrap", "date +%s.%N"],
                         capture_output=True, text=True, env=s.env, timeout=30, check=False,
                         cwd=s.work)  # a directory the VMs have too (not this tree)
    assert sub.returncode == 0, sub.stderr
    job_id = int(sub.stdout.strip().split(";")[0])

    # the nodes are working before the start: no boot left on the job's path
    wait_for("the reservation's nodes working", lambda: reservation(s, r["id"])["state"]
             in ("ready",), max(5.0, start_s - time.time()) + 5)
    ready = reservation(s, r["id"])
    ready_s = datetime.fromisoformat(str(ready["ready_at"])).timestamp()
    assert ready_s <= start_s, f"nodes working {ready_s - start_s:.1f} s after the start"
    assert time.time() < start_s, "the nodes came up only after the start"
    states = {n: node_state(s, n) for n in nodes}
    assert all(st.startswith("IDLE") and "POWER" not in st for st in states.values()), states
    shown = vcluster(s, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    (in_status,) = [x for x in json.loads(shown.stdout)["reservations"] if x["reservation_id"]
                    == r["id"]]
    assert (in_status["state"], in_status["working_nodes"], in_status["detail"]) == (
        "ready", 2, "ready (2 of 2 nodes working)"), in_status
    assert sorted((v["node_name"], v["vm_state"]) for v in in_status["vms"]) == [
        (n, "RUNNING") for n in sorted(nodes)], in_status

    wait_for(f"job {job_id}'s output", lambda: out.exists() and out.read_text().strip(),
             start_s - time.time() + 30)
    printed = out.read_text().split()
    assert len(printed) == 1, f"job {job_id} printed more than its start time: {printed}"
    delay_s = float(printed[0]) - start_s
    print(f"reservation: nodes working {start_s - ready_s:.1f} s before the start "
          f"(lead {lead_s:.1f} s, boot {BOOT_S:g} s); job start {delay_s:+.2f} s from it")
    # no boot on the job's path: it starts with the reservation, far sooner than a boot
    # (BOOT_S) would allow; the margin is Slurm's own scheduling on a busy 2-core machine
    assert -1.0 <= delay_s < BOOT_S / 4, f"the job started {delay_s:.2f} s after the start"

    # at the end, its VMs are terminated
    end_s = datetime.fromisoformat(str(r["end"])).timestamp()
    wait_for("the reservation ended", lambda: reservation(s, r["id"])["state"] == "ended",
             end_s - time.time() + 30)
    wait_for("its VMs terminated", lambda: not [
        vm for vm in s.live_vms() if vm.user_template.get("VCLUSTER_NODE") in nodes], 60)
    events = vcluster(s, "events", "-n", "100")
    assert "reservation.ready" in events.stdout or "working" in events.stdout, events.stdout


def test_a_reservation_a_job_runs_in_is_not_cancelled_until_the_job_ends(
        reserve_site: Site) -> None:
    """Slurm deletes no reservation a job waits or runs in (and ending it now would kill
    the job): the cancel is refused naming the job, the job completes, and a cancel after
    it ends the reservation and terminates its VM."""
    s = reserve_site
    made = vcluster(s, "reserve", "--start", "+5s", "--duration", "10m", "-N", "1",
                    "--vm-class", "small", "--users", "root", "--json")
    assert made.returncode == 0, made.stderr
    r = json.loads(made.stdout)
    # admitted; with its start 5 s away its lead time has begun, so the controller may have
    # moved it to booting before the command read it back (seen on a busy machine)
    assert r["state"] in ("accepted", "booting"), r
    (node,) = expand_hostlist(str(r["nodes"]))
    out = s.work / "in-cancelled.out"
    sub = subprocess.run(["sbatch", "--parsable", f"--reservation={r['slurm_name']}", "-N1",
                          "--time=2", "-p", s.config.node_class("small").partition,
                          f"--output={out}", "--wrap", "sleep 15; echo done"],
                         capture_output=True, text=True, env=s.env, timeout=30, check=False,
                         cwd=s.work)
    assert sub.returncode == 0, sub.stderr
    job_id = int(sub.stdout.strip().split(";")[0])
    wait_for(f"job {job_id} running", lambda: (j := s.job(job_id)) is not None
             and j.state == "RUNNING", 120, 0.5)

    refused = vcluster(s, "reserve", "cancel", str(r["id"]))
    assert refused.returncode == 1, refused.stdout
    assert f"reservation {r['id']} not cancelled: job(s) {job_id} wait or run in it" in \
        refused.stderr, refused.stderr
    assert reservation(s, r["id"])["state"] in ("booting", "ready"), "changed by a refusal"
    wait_for(f"job {job_id} completed", lambda: (j := s.job(job_id)) is not None
             and j.is_finished, 60, 0.5)
    job = s.job(job_id)
    assert job is not None and job.state == "COMPLETED", job
    assert out.read_text().strip() == "done"

    cancelled = vcluster(s, "reserve", "cancel", str(r["id"]))
    assert cancelled.returncode == 0, cancelled.stderr
    wait_for("the reservation's VM terminated", lambda: not [
        vm for vm in s.live_vms() if vm.user_template.get("VCLUSTER_NODE") == node], 90)
    row = reservation(s, r["id"])
    assert row["state"] == "cancelled" and row["ended_at"] is not None, row
