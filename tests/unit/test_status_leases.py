"""What `vcluster status`, `vcluster events` and `vcluster nodes` show of suspended jobs and
reservations: exact tables and JSON, from a real SQLite database, Slurm's real JSON shapes
(a 22.05 squeue capture) and VM states read through pyone from the fake oned."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from datetime import datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console
from sqlalchemy import delete, select

from tests.unit import test_status
from tests.unit.fake_oned import FakeOned, vm_xml
from tests.unit.test_status import NOW, fill, nodes, session
from vcluster import db
from vcluster.admin import build_nodes, read_drains
from vcluster.cli import cli
from vcluster.config import Config
from vcluster.one_vm import VM, vms_from_pool_xml
from vcluster.report import build_status
from vcluster.report_leases import suspension_reasons
from vcluster.report_tables import render_status
from vcluster.slurm_parse import Job, parse_squeue_json

oned, site = test_status.oned, test_status.site  # the status tests' site, as fixtures

SQUEUE = Path(__file__).resolve().parent.parent / "data" / "slurm" / "22.05" / "squeue.json"
STOPPED, ACTIVE, PENDING = 4, 3, 1
ago = lambda seconds: NOW - timedelta(seconds=seconds)  # noqa: E731


def squeue_json(now: datetime) -> str:
    """Slurm's view (the capture's job 4 record, reshaped): job 21 SUSPENDED by vcluster for
    job 23 (urgent), job 22 SUSPENDED by an admin, job 23 RUNNING; job 24 SUSPENDED on a
    node of no class (not vcluster's)."""
    base = next(j for j in json.loads(SQUEUE.read_text())["jobs"] if j["job_id"] == 4)
    at = int((now - timedelta(seconds=40)).timestamp())
    jobs = [dict(base, job_id=21, job_state="SUSPENDED", nodes="vc-small-001",
                 partition="vcluster", user_name="alice", suspend_time=at),
            dict(base, job_id=22, job_state="SUSPENDED", nodes="vc-small-002",
                 partition="vcluster", user_name="bob", suspend_time=at + 10),
            dict(base, job_id=23, job_state="RUNNING", nodes="vc-small-003",
                 partition="urgent", user_name="carol", suspend_time=0),
            dict(base, job_id=24, job_state="SUSPENDED", nodes="static01",
                 partition="debug", user_name="dave", suspend_time=at)]
    return json.dumps({"jobs": jobs})


def tagged(vm_id: int, node: str, state: int, lcm_state: int) -> str:
    return vm_xml(vm_id, node, state=state, lcm_state=lcm_state, hosts=("h1",),
                  user_template=f"<VCLUSTER_CLUSTER>vcluster</VCLUSTER_CLUSTER>"
                                f"<VCLUSTER_NODE>{node}</VCLUSTER_NODE>")


def cloud(vm_21: tuple[int, int] = (STOPPED, 0)) -> dict[int, str]:
    """OpenNebula's VMs: job 21's STOPPED (by default), the others RUNNING."""
    return {17: tagged(17, "vc-small-001", *vm_21), 18: tagged(18, "vc-small-002", ACTIVE, 3),
            19: tagged(19, "vc-pool-001", ACTIVE, 3)}


def cloud_vms(vms: dict[int, str]) -> list[VM]:
    return vms_from_pool_xml("<VM_POOL>" + "".join(vms.values()) + "</VM_POOL>")


def add_leases(config: Config, now: datetime, reservation_state: str = "booting") -> None:
    """Job 21's VM stopped by vcluster for job 23 (no suspension row for job 22: its VM is
    not stopped yet), and a reservation of both pool nodes starting in a minute."""
    engine = db.make_engine(config.database)
    try:
        with db.transaction(db.session_factory(engine)) as s:
            for job in s.scalars(select(db.Job)):  # the fill's job 12 becomes job 21
                job.job_id = 21 if job.job_id == 12 else job.job_id
            for event in s.scalars(select(db.Event).where(db.Event.job_id == 12)):
                event.job_id = 21
            for launch in s.scalars(select(db.Launch)):
                launch.job_id = {12: 21}.get(launch.job_id or 0, launch.job_id)
                if launch.node_name == "vc-small-002":
                    launch.job_id, launch.state, launch.reason = 22, "up", ""
            s.add(db.Suspension(node_name="vc-small-001", job_id=21, vm_id=17, by_job=23,
                                state="stopped", created_at=now - timedelta(seconds=39),
                                updated_at=now - timedelta(seconds=30)))
            s.add(db.Reservation(
                slurm_name="vcluster-r1", node_class="pool", node_count=2,
                nodes="vc-pool-[001-002]", cpu_pct=200, memory_mb=2000, users="root",
                start=now + timedelta(seconds=60), end=now + timedelta(seconds=660), lead_s=35.0,
                state=reservation_state, reason="accepted: 2 VMs of class pool fit",
                created_at=now - timedelta(hours=4),
                powered_up_at=now - timedelta(hours=4) if reservation_state != "accepted"
                else None))
            db.record_event(s, "job.preempt", "suspending job 21 for job 23: job 23 (urgent) "
                            "needs room", job_id=21, at=now - timedelta(seconds=40))
            db.record_event(s, "vm.stop", "job 21 suspended: VM 17 stopped (memory saved, "
                            "host freed), node drained", node_name="vc-small-001", job_id=21,
                            vm_id=17, at=now - timedelta(seconds=39))
            db.record_event(s, "reservation.power_up", "reservation 1: booting "
                            "vc-pool-002 25 s before its start (lead 35 s)",
                            at=now - timedelta(seconds=30))
            db.record_event(s, "reservation.accepted", "reservation 12: accepted: 1 VM",
                            at=now - timedelta(seconds=20))
    finally:
        engine.dispose()


def rendered(config: Config, now: datetime = NOW, vms: dict[int, str] | None = None,
             jobs: list[Job] | None = None) -> str:
    with session(config) as s:
        report = build_status(s, config, nodes(), now,
                              slurm_jobs=parse_squeue_json(squeue_json(NOW))
                              if jobs is None else jobs,
                              cloud_vms=cloud_vms(cloud() if vms is None else vms))
    out = StringIO()
    render_status(report, Console(file=out, width=200, color_system=None, highlight=False))
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"


def section(text: str, title: str) -> list[str]:
    """The lines of one table of the status, its title first."""
    lines = text.splitlines()
    start = lines.index(title)
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    return lines[start:end]


def spaced(line: str) -> str:
    """A table line with each run of spaces made one (column widths follow the rows)."""
    return " ".join(line.split())


def test_suspended_jobs_with_their_vms_states_and_who_suspended_them(site: Config) -> None:
    fill(site, NOW, heartbeat_age_s=3)
    add_leases(site, NOW)
    text = rendered(site)
    assert section(text, "Jobs")[2] == (  # Slurm's state, not the controller's last view
        "21   alice  SUSPENDED  small  ubuntu    vc-small-[001-002]  2m05s  -")
    assert section(text, "Suspended jobs") == [
        "Suspended jobs",
        "JOB  USER   PARTITION  SLURM      SUSPENDED           BY                             "
        "       NODE          VM  VM STATE  VCLUSTER",
        "21   alice  vcluster   SUSPENDED  07:59:20 (40s ago)  preempted by job 23 (vcluster)"
        "        vc-small-001  17  STOPPED   stopped",
        "22   bob    vcluster   SUSPENDED  07:59:30 (30s ago)  Slurm or an admin (scontrol "
        "suspend)  vc-small-002  18  RUNNING   -",
    ]


def test_a_resuming_vm_is_pending_in_opennebula_then_the_job_leaves_the_section(
        site: Config) -> None:
    fill(site, NOW, heartbeat_age_s=3)
    add_leases(site, NOW)
    with session(site) as s:
        row = s.get(db.Suspension, "vc-small-001")
        assert row is not None
        row.state = "resuming"
        s.commit()
    lines = section(rendered(site, vms=cloud((PENDING, 0))), "Suspended jobs")
    assert spaced(lines[2]) == ("21 alice vcluster SUSPENDED 07:59:20 (40s ago) preempted by "
                                "job 23 (vcluster) vc-small-001 17 PENDING resuming")
    # Slurm resumed both; vcluster dropped its row once the VM was back: no section
    running = [replace(j, state="RUNNING", suspend_time=None)
               for j in parse_squeue_json(squeue_json(NOW))]
    with session(site) as s:
        s.execute(delete(db.Suspension))
        s.commit()
    text = rendered(site, vms=cloud((ACTIVE, 3)), jobs=running)
    assert "Suspended jobs" not in text


def test_without_slurm_the_databases_suspended_jobs_are_shown(site: Config) -> None:
    fill(site, NOW, heartbeat_age_s=3)
    add_leases(site, NOW)
    with session(site) as s:
        report = build_status(s, site, None, NOW, slurm_error="squeue timed out",
                              cloud_vms=None, vm_error="oned refused the connection")
    (job,) = report.suspended_jobs  # job 21 has vcluster's row; job 22 nothing it knows of
    assert (job.job_id, job.slurm_state, job.suspended_by, job.vms[0].vm_state,
            job.vms[0].step) == (21, "RUNNING", "preempted by job 23 (vcluster)", "", "stopped")
    out = StringIO()
    render_status(report, Console(file=out, width=200, color_system=None, highlight=False))
    assert "opennebula: VM states unavailable: oned refused the connection" in out.getvalue()


@pytest.mark.parametrize(("state", "at_s", "line"), [
    ("accepted", 0, "admitted (boots at 08:00:25, lead 35 s) - - - -"),
    ("booting", 0, "booting (lead 35 s, 1 of 2 nodes working) vc-pool-001 19 RUNNING up"),
    ("ready", 0, "ready (1 of 2 nodes working) vc-pool-001 19 RUNNING up"),
    ("ready", 90, "active (1 of 2 nodes working) vc-pool-001 19 RUNNING up"),
    ("cancelled", 90, "cancelled (powering its nodes down) vc-pool-001 19 RUNNING up"),
])
def test_a_reservation_is_shown_with_its_state_and_its_vms(
        site: Config, state: str, at_s: float, line: str) -> None:
    fill(site, NOW, heartbeat_age_s=3)
    add_leases(site, NOW, state)
    lines = section(rendered(site, NOW + timedelta(seconds=at_s)), "Reservations")
    assert lines[1].split() == ["ID", "NAME", "CLASS", "NODES", "START", "(UTC)", "END",
                                "STATE", "NODE", "VM", "VM", "STATE", "LAUNCH"]
    assert spaced(lines[2]) == ("1 vcluster-r1 pool vc-pool-[001-002] (2) 2026-11-21 08:01:00 "
                                "08:11:00 " + line)
    assert len(lines) == 3


def test_a_refused_reservation_says_why_and_an_old_one_is_gone(site: Config) -> None:
    fill(site, NOW, heartbeat_age_s=3)
    engine = db.make_engine(site.database)
    with db.transaction(db.session_factory(engine)) as s:
        s.add(db.Reservation(slurm_name="vcluster-r1", node_class="small", node_count=3,
                             cpu_pct=200, memory_mb=2000, start=NOW + timedelta(hours=1),
                             end=NOW + timedelta(hours=2), lead_s=60.0, state="refused",
                             reason="refused: not enough CPU: the cloud can hold 2 of the 3 "
                             "VMs [of class small]", created_at=ago(5)))
    engine.dispose()
    lines = section(rendered(site), "Reservations")
    assert lines[2:] == [
        "1   vcluster-r1  small  - (3)  2026-11-21 09:00:00  10:00:00  refused  -     -   -"
        "         -",
        "reservation 1: refused: not enough CPU: the cloud can hold 2 of the 3 VMs [of class "
        "small]"]
    assert "Reservations" not in rendered(site, NOW + timedelta(hours=3))


def test_status_json_lists_suspended_jobs_and_reservations_with_their_vms(
        site: Config, oned: FakeOned, tmp_path: Path) -> None:
    now = db.utcnow().replace(microsecond=0)
    fill(site, now, heartbeat_age_s=3)
    add_leases(site, now)
    oned.vms.update(cloud())
    (tmp_path / "squeue.json").write_text(squeue_json(now))
    squeue = tmp_path / "bin" / "squeue"
    squeue.write_text(f"#!{sys.executable}\nimport pathlib\n"
                      f"print(pathlib.Path({str(tmp_path / 'squeue.json')!r}).read_text())\n")
    squeue.chmod(0o755)
    result = CliRunner().invoke(cli, ["status", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    vm = {"host": "h1", "slurm_state": "allocated", "reason": ""}
    suspended = [{k: v for k, v in j.items() if k != "suspended_s"}
                 for j in data["suspended_jobs"]]
    assert suspended == [
        {"job_id": 21, "user": "alice", "partition": "vcluster", "slurm_state": "SUSPENDED",
         "since": (now - timedelta(seconds=40)).isoformat(), "origin": "vcluster",
         "by_job": 23, "suspended_by": "preempted by job 23 (vcluster)",
         "nodes": "vc-small-001",
         "vms": [dict(vm, node_name="vc-small-001", vm_id=17, vm_state="STOPPED",
                      step="stopped", job_id=21)]},
        {"job_id": 22, "user": "bob", "partition": "vcluster", "slurm_state": "SUSPENDED",
         "since": (now - timedelta(seconds=30)).isoformat(), "origin": "slurm",
         "by_job": None, "suspended_by": "Slurm or an admin (scontrol suspend)",
         "nodes": "vc-small-002",
         "vms": [dict(vm, node_name="vc-small-002", vm_id=18, vm_state="RUNNING", step="",
                      job_id=22, slurm_state="powering_up")]},
    ]
    assert data["reservations"] == [{
        "reservation_id": 1, "slurm_name": "vcluster-r1", "node_class": "pool",
        "nodes": "vc-pool-[001-002]", "node_count": 2,
        "start": (now + timedelta(seconds=60)).isoformat(),
        "end": (now + timedelta(seconds=660)).isoformat(), "lead_s": 35.0,
        "state": "booting", "working_nodes": 1,
        "detail": "booting (lead 35 s, 1 of 2 nodes working)",
        "reason": "accepted: 2 VMs of class pool fit",
        "vms": [{"node_name": "vc-pool-001", "vm_id": 19, "vm_state": "RUNNING", "host": "h1",
                 "step": "up", "slurm_state": "idle", "job_id": None, "reason": ""}]}]
    assert data["vm_error"] == ""


def test_events_of_a_vm_a_kind_and_a_reservation(site: Config) -> None:
    fill(site, NOW, heartbeat_age_s=3)
    add_leases(site, NOW)

    def kinds(*args: str) -> list[Any]:
        result = CliRunner().invoke(cli, ["events", *args, "--json"])
        assert result.exit_code == 0, result.output
        return [(e["kind"], e["job_id"], e["vm_id"]) for e in json.loads(result.stdout)]

    assert kinds("--vm", "17") == [("vm-allocated", 21, 17), ("node-up", 21, 17),
                                   ("vm.stop", 21, 17)]
    assert kinds("--kind", "job") == [("job.preempt", 21, None)]
    assert kinds("--kind", "vm.stop", "--job", "21") == [("vm.stop", 21, 17)]
    assert kinds("--reservation", "1") == [("reservation.power_up", None, None)]
    result = CliRunner().invoke(cli, ["events", "--reservation", "1"])
    assert [line.rstrip() for line in result.stdout.splitlines()] == [
        "Events",
        "TIME (UTC)           KIND                  NODE  JOB  VM  MESSAGE",
        "2026-11-21 07:59:30  reservation.power_up  -     -    -   reservation 1: booting "
        "vc-pool-002 25 s before its start (lead 35 s)",
    ]
    result = CliRunner().invoke(cli, ["events", "--reservation", "2"])
    assert result.stdout == "no events for reservation 2\n"


def test_nodes_says_plainly_why_a_suspended_jobs_node_is_drained(site: Config) -> None:
    fill(site, NOW, heartbeat_age_s=3)
    add_leases(site, NOW)
    with session(site) as s:
        rows = build_nodes(site, nodes(), cloud_vms(cloud()), db.open_launches(s),
                           read_drains(s), NOW, suspension_reasons(s))
    by_name = {r.name: r for r in rows}
    assert (by_name["vc-small-001"].vm_state, by_name["vc-small-001"].reason) == (
        "STOPPED", "job 21 preempted by vcluster for job 23: VM 17 stopped, node drained "
        "until the job runs again")
    assert by_name["vc-small-002"].reason == ""


def test_a_reservation_whose_vm_failed_to_boot_says_why(site: Config) -> None:
    fill(site, NOW, heartbeat_age_s=3)
    add_leases(site, NOW)
    failure = "vcluster: VM 20 failed: BOOT_FAILURE on host h1"
    with session(site) as s:
        s.add(db.Launch(node_name="vc-pool-002", node_class="pool", vm_id=20, state="failed",
                        reason=failure, created_at=ago(50), ended_at=ago(25)))
        row = s.get(db.Reservation, 1)
        assert row is not None
        row.reason = f"booting again after a failure at 07:59:35 UTC: vc-pool-002: {failure}"
        s.commit()
    lines = section(rendered(site), "Reservations")
    assert [spaced(line) for line in lines[2:]] == [
        "1 vcluster-r1 pool vc-pool-[001-002] (2) 2026-11-21 08:01:00 08:11:00 booting (lead "
        "35 s, 1 of 2 nodes working) vc-pool-001 19 RUNNING up",
        "vc-pool-002 20 - failed",
        "reservation 1: booting again after a failure at 07:59:35 UTC: vc-pool-002: vcluster: "
        "VM 20 failed: BOOT_FAILURE on host h1",
        "reservation 1: vc-pool-002 VM 20 failed: vcluster: VM 20 failed: BOOT_FAILURE on "
        "host h1",
    ]
