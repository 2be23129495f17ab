"""What `vcluster status` and `vcluster events --unscheduled` show of VMs that reached a state
vcluster did not ask for: what was seen, the rule of the node's class, what was done, how long
the job took to recover; exact lines, from a real SQLite database."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from click.testing import CliRunner

from tests.unit import test_status
from tests.unit.test_status import NOW, fill, rendered
from vcluster import db
from vcluster.cli import cli
from vcluster.config import Config
from vcluster.vm_events import lost_message

oned, site = test_status.oned, test_status.site  # the status tests' site, as fixtures


def add_unscheduled(config: Config, now: datetime) -> None:
    """A powered-off VM whose job reran on a fresh VM, a suspended pool VM resumed, a VM
    whose host went OFFLINE and whose job has not recovered yet."""
    engine = db.make_engine(config.database)
    ago = lambda seconds: now - timedelta(seconds=seconds)  # noqa: E731
    try:
        with db.transaction(db.session_factory(engine)) as s:
            db.record_event(s, db.VM_LOST_EVENT, lost_message(
                7, "POWEROFF", "POWEROFF", "fail", "small",
                "node set DOWN (job 21 requeued by Slurm), VM terminated"),
                node_name="vc-small-001", job_id=21, vm_id=7, at=ago(300))
            db.record_recovery(s, 21, "VM 8", at=ago(265.8), node_name="vc-small-002",
                               vm_id=8)
            db.record_event(s, db.VM_LOST_EVENT, lost_message(
                19, "SUSPENDED", "SUSPENDED", "resume", "pool", "VM resumed"),
                node_name="vc-pool-001", job_id=22, vm_id=19, at=ago(200))
            db.record_recovery(s, 22, "VM 19", at=ago(197.5), node_name="vc-pool-001",
                               vm_id=19)
            db.record_event(s, db.VM_LOST_EVENT, lost_message(
                9, "on host h1 OFFLINE", "HOST_OFFLINE", "fail", "small",
                "node set DOWN (job 23 requeued by Slurm), VM terminated"),
                node_name="vc-small-003", job_id=23, vm_id=9, at=ago(30))
    finally:
        engine.dispose()


LINES = [
    "2026-11-21 07:55:00 vc-small-001 job 21 VM 7: seen POWEROFF; rule POWEROFF=fail "
    "(class small); node set DOWN (job 21 requeued by Slurm), VM terminated; "
    "recovery 34.2 s, on VM 8",
    "2026-11-21 07:56:40 vc-pool-001 job 22 VM 19: seen SUSPENDED; rule SUSPENDED=resume "
    "(class pool); VM resumed; recovery 2.5 s, on VM 19",
    "2026-11-21 07:59:30 vc-small-003 job 23 VM 9: seen on host h1 OFFLINE; rule "
    "HOST_OFFLINE=fail (class small); node set DOWN (job 23 requeued by Slurm), VM "
    "terminated; recovery not yet (30 s)",
]


def test_status_shows_each_unscheduled_event_with_its_rule_and_recovery(site: Config) -> None:
    fill(site, NOW, heartbeat_age_s=3)
    add_unscheduled(site, NOW)
    out = rendered(site).splitlines()
    at = out.index("Unscheduled events (last day)")
    assert out[at + 1:] == LINES


def test_status_without_unscheduled_events_has_no_such_section(site: Config) -> None:
    fill(site, NOW, heartbeat_age_s=3)
    assert "Unscheduled events" not in rendered(site)


def test_status_json_has_each_unscheduled_event(site: Config) -> None:
    add_unscheduled(site, db.utcnow())
    result = CliRunner().invoke(cli, ["status", "--json"])
    rows = json.loads(result.stdout)["unscheduled"]
    assert [(r["node_name"], r["seen"], r["rule"], r["recovery_s"]) for r in rows] == [
        ("vc-small-001", "POWEROFF", "fail", 34.2), ("vc-pool-001", "SUSPENDED", "resume", 2.5),
        ("vc-small-003", "on host h1 OFFLINE", "fail", None)]


def test_events_unscheduled_prints_the_same_lines(site: Config) -> None:
    now = db.utcnow()
    add_unscheduled(site, now.replace(microsecond=0))
    result = CliRunner().invoke(cli, ["events", "--unscheduled"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(" ", 2)[2] for line in lines[:2]] == [
        line.split(" ", 2)[2] for line in LINES[:2]]
    assert lines[2].startswith("vc-small-003 job 23 VM 9: seen on host h1 OFFLINE", 20)
    assert " recovery not yet (" in lines[2]
    result = CliRunner().invoke(cli, ["events", "--unscheduled", "--job", "22", "--json"])
    (row,) = json.loads(result.stdout)
    assert {k: row[k] for k in ("node_name", "seen", "event", "rule", "node_class", "done",
                                "recovery_s", "recovered_on")} == {
        "node_name": "vc-pool-001", "seen": "SUSPENDED", "event": "SUSPENDED",
        "rule": "resume", "node_class": "pool", "done": "VM resumed", "recovery_s": 2.5,
        "recovered_on": "VM 19"}
    result = CliRunner().invoke(cli, ["events", "--unscheduled", "--node", "vc-big-001"])
    assert result.stdout == "no unscheduled events in the last day\n"


def test_the_raw_event_log_says_the_same_in_two_events(site: Config) -> None:
    add_unscheduled(site, db.utcnow())
    result = CliRunner().invoke(cli, ["events", "--job", "21", "--json"])
    assert [(e["kind"], e["message"]) for e in json.loads(result.stdout)] == [
        ("vm.lost", "VM 7 seen POWEROFF (not asked by vcluster); rule POWEROFF=fail (class "
                    "small): node set DOWN (job 21 requeued by Slurm), VM terminated"),
        ("vm.recovered", "job 21 has a working node again on VM 8, 34.2 s after VM 7 was lost "
                         "(recovery 34.2 s)")]


def test_a_kept_vm_needs_no_recovery(site: Config) -> None:
    engine = db.make_engine(site.database)
    try:
        with db.transaction(db.session_factory(engine)) as s:
            db.record_event(s, db.VM_LOST_EVENT, lost_message(
                9, "on host h1 OFFLINE", "HOST_OFFLINE", "keep", "small",
                "VM and job left running"), node_name="vc-small-003", job_id=23, vm_id=9,
                at=db.utcnow())
    finally:
        engine.dispose()
    (line,) = CliRunner().invoke(cli, ["events", "--unscheduled"]).stdout.splitlines()
    assert line.endswith(" vc-small-003 job 23 VM 9: seen on host h1 OFFLINE; rule "
                         "HOST_OFFLINE=keep (class small); VM and job left running; "
                         "recovery none needed (kept)")
