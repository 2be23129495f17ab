"""A job's failed VMs as the planner reads them from the database (read_database): failed
launches and VMs booted at allocation that failed before their node was handed them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.unit.controller_fixtures import make_config
from vcluster import db
from vcluster.config import DatabaseSettings
from vcluster.controller.observe import EARLY_FAILED_EVENT, read_database

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def at(seconds_ago: float) -> datetime:
    return NOW - timedelta(seconds=seconds_ago)


def failed_launch(s: db.Session, vm_id: int, job_id: int, ended: datetime, reason: str) -> None:
    s.add(db.Launch(node_name="vc-small-001", node_class="small", job_id=job_id, vm_id=vm_id,
                    state="failed", attempts=1, reason=reason, created_at=ended,
                    updated_at=ended, ended_at=ended))


def test_an_early_vm_that_failed_counts_once_for_its_job_with_the_latest_reason(
        tmp_path: Path) -> None:
    engine = db.make_engine(DatabaseSettings(url=f"sqlite:///{tmp_path}/state.db"))
    try:
        with db.transaction(db.session_factory(engine)) as s:
            for when in (30, 29):  # said twice (a terminate tried again): one failed VM
                db.record_event(s, EARLY_FAILED_EVENT, "vcluster: VM 7 booted early for "
                                "vc-small-001 failed to boot (BOOT_FAILURE)",
                                node_name="", vm_id=7, job_id=12, at=at(when))
            failed_launch(s, 8, 12, at(20), "vcluster: VM 8 failed to boot (BOOT_FAILURE)")
            db.record_event(s, EARLY_FAILED_EVENT, "vcluster: VM 9 booted early for "
                            "vc-small-001 could not join: no key", vm_id=9, job_id=12,
                            at=at(10))
            db.record_event(s, EARLY_FAILED_EVENT, "vcluster: VM 5 booted early for x failed "
                            "to boot (BOOT_FAILURE)", vm_id=5, job_id=13, at=at(3600))
        with db.session_factory(engine)() as s:
            seen = read_database(s, make_config(), NOW)
    finally:
        engine.dispose()
    assert seen["job_failures"] == {
        12: (3, "vcluster: VM 9 booted early for vc-small-001 could not join: no key")}
    # the job was not requeued for them: only the failed launch asks for a requeue's handling
    assert {j: t.replace(tzinfo=UTC) for j, t in seen["failed_jobs"].items()} == {12: at(20)}


def test_a_nodes_last_launch_ended_with_its_job_is_read_per_node(tmp_path: Path) -> None:
    """What keeps a node powering up for nobody (its job cancelled) from getting a VM."""
    engine = db.make_engine(DatabaseSettings(url=f"sqlite:///{tmp_path}/state.db"))

    def launch(node: str, job_id: int | None, state: str, ended: datetime) -> db.Launch:
        return db.Launch(node_name=node, node_class="small", job_id=job_id, state=state,
                         attempts=1, reason="", created_at=ended, updated_at=ended,
                         ended_at=ended)
    try:
        with db.transaction(db.session_factory(engine)) as s:
            s.add_all([launch("vc-small-001", 12, "terminated", at(40)),
                       launch("vc-small-001", 13, "terminated", at(10)),
                       launch("vc-small-002", None, "terminated", at(10)),  # no job's
                       launch("vc-small-003", 14, "failed", at(10)),  # a failure's own rule
                       launch("vc-small-004", 15, "terminated", at(100_000))])  # long ago
        with db.session_factory(engine)() as s:
            seen = read_database(s, make_config(), NOW)
    finally:
        engine.dispose()
    assert {n: t.replace(tzinfo=UTC) for n, t in seen["last_served_at"].items()} == {
        "vc-small-001": at(10)}
