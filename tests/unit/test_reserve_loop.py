"""The controller's reservation step against a real database and a fake Slurm: power-up at
start - lead, ready once the nodes work, the scheduling kick at the start, release at the
end, and held nodes spared the idle power-down."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.unit.controller_fixtures import node, powered_down
from vcluster import db
from vcluster.config import DatabaseSettings
from vcluster.controller.reserve_plan import run_reservations
from vcluster.errors import SlurmCommandError
from vcluster.slurm_parse import Node

START = datetime(2026, 12, 2, 13, 10, tzinfo=UTC)


@dataclass
class FakeSlurm:
    listed: list[Node]
    updates: list[tuple[str, str | None]] = field(default_factory=list)
    kicks: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def nodes(self) -> list[Node]:
        return self.listed

    def update_nodes(self, nodes: str | Sequence[str], *, state: str | None = None,
                     reason: str | None = None, nodeaddr: str | None = None,
                     nodehostname: str | None = None) -> None:
        self.updates.append((nodes if isinstance(nodes, str) else ",".join(nodes), state))

    def update_reservation(self, name: str, **fields: str) -> None:
        self.kicks.append((name, fields))


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = db.make_engine(DatabaseSettings(url=f"sqlite:///{tmp_path}/state.db"))
    try:
        yield db.session_factory(engine)
    finally:
        engine.dispose()


def add(sessions: sessionmaker[Session], start: datetime = START) -> None:
    with db.transaction(sessions) as s:
        s.add(db.Reservation(slurm_name="vc-r1", node_class="small", node_count=2,
                             nodes="vc-small-[001-002]", cpu_pct=200, memory_mb=2048,
                             users="alice", start=start, end=start + timedelta(minutes=5),
                             lead_s=40.0, state="accepted", reason="accepted"))


def state_of(sessions: sessionmaker[Session]) -> db.Reservation:
    with db.transaction(sessions) as s:
        row = s.get(db.Reservation, 1)
        assert row is not None
        s.expunge(row)
        return row


def test_a_reservation_through_its_life(sessions: sessionmaker[Session]) -> None:
    add(sessions)
    slurm = FakeSlurm([powered_down("vc-small-001"), powered_down("vc-small-002")])
    assert run_reservations(sessions, slurm, START - timedelta(seconds=41)) == frozenset()
    assert slurm.updates == []

    held = run_reservations(sessions, slurm, START - timedelta(seconds=40))
    assert slurm.updates == [("vc-small-001,vc-small-002", "POWER_UP")]
    assert state_of(sessions).state == "booting" and held == frozenset()

    slurm.listed = [node("vc-small-001"), node("vc-small-002")]
    held = run_reservations(sessions, slurm, START - timedelta(seconds=12))
    row = state_of(sessions)
    assert row.state == "ready" and row.ready_at == START - timedelta(seconds=12)
    assert held == {"vc-small-001", "vc-small-002"}

    held = run_reservations(sessions, slurm, START + timedelta(minutes=5))
    assert slurm.updates[-1] == ("vc-small-001,vc-small-002", "POWER_DOWN_ASAP")
    row = state_of(sessions)
    assert row.state == "ended" and row.ended_at is not None and held == frozenset()
    with db.transaction(sessions) as s:
        kinds = [e.kind for e in s.query(db.Event).order_by(db.Event.id)]
    assert kinds == ["reservation.power_up", "reservation.ready", "reservation.release"]


def test_slurm_is_asked_to_schedule_at_the_start(sessions: sessionmaker[Session]) -> None:
    start = datetime.now(UTC) + timedelta(seconds=0.3)
    add(sessions, start)
    slurm = FakeSlurm([node("vc-small-001"), node("vc-small-002")])
    with db.transaction(sessions) as s:
        row = s.get(db.Reservation, 1)
        assert row is not None
        row.state, row.powered_up_at = "ready", start - timedelta(seconds=40)
    run_reservations(sessions, slurm, datetime.now(UTC))
    assert slurm.kicks == []
    time.sleep(0.6)
    assert [name for name, _ in slurm.kicks] == ["vc-r1"]
    run_reservations(sessions, slurm, datetime.now(UTC))  # once per reservation
    time.sleep(0.1)
    assert len(slurm.kicks) == 1


def test_a_node_whose_vm_failed_before_the_start_boots_again_and_the_reason_is_kept(
        sessions: sessionmaker[Session]) -> None:
    add(sessions)
    slurm = FakeSlurm([powered_down("vc-small-001"), powered_down("vc-small-002")])
    run_reservations(sessions, slurm, START - timedelta(seconds=40))
    # vcluster failed node 2's VM: DOWN, then POWER_DOWN_FORCE (Slurm keeps the reason)
    failed = node("vc-small-002", "IDLE", "POWERED_DOWN",
                  reason="vcluster: VM 18 failed: BOOT_FAILURE on host h1")
    slurm.listed = [node("vc-small-001"), failed]
    run_reservations(sessions, slurm, START - timedelta(seconds=20))
    assert slurm.updates[-1] == ("vc-small-002", "POWER_UP")
    row = state_of(sessions)
    assert (row.state, row.reason) == ("booting", "booting again after a failure at 13:09:40 "
                                       "UTC: vc-small-002: vcluster: VM 18 failed: "
                                       "BOOT_FAILURE on host h1")
    with db.transaction(sessions) as s:
        messages = [e.message for e in s.query(db.Event).order_by(db.Event.id)]
    assert messages[-1] == ("reservation 1: booting vc-small-002 20 s before its start (lead "
                            "40 s); again after a failure: vc-small-002: vcluster: VM 18 "
                            "failed: BOOT_FAILURE on host h1")


def test_a_controller_restarted_in_the_lead_time_boots_nothing_twice(
        sessions: sessionmaker[Session]) -> None:
    add(sessions)
    slurm = FakeSlurm([powered_down("vc-small-001"), powered_down("vc-small-002")])
    run_reservations(sessions, slurm, START - timedelta(seconds=40))
    assert slurm.updates == [("vc-small-001,vc-small-002", "POWER_UP")]
    # a new controller (nothing kept in memory but the kicks) while the VMs boot
    slurm.listed = [node("vc-small-001", "IDLE", "POWERING_UP"),
                    node("vc-small-002", "IDLE", "POWERING_UP")]
    held = run_reservations(sessions, slurm, START - timedelta(seconds=30))
    assert slurm.updates == [("vc-small-001,vc-small-002", "POWER_UP")]
    assert held == {"vc-small-001", "vc-small-002"}  # kept: the idle power-down spares them
    slurm.listed = [node("vc-small-001"), node("vc-small-002")]
    run_reservations(sessions, slurm, START - timedelta(seconds=10))
    assert state_of(sessions).state == "ready"


@dataclass
class RefusingSlurm(FakeSlurm):
    """slurmctld unreachable for the first POWER_UP (or the controller died at that call)."""

    refused: int = 1

    def update_nodes(self, nodes: str | Sequence[str], *, state: str | None = None,
                     reason: str | None = None, nodeaddr: str | None = None,
                     nodehostname: str | None = None) -> None:
        if self.refused:
            self.refused -= 1
            raise SlurmCommandError(["scontrol", "update"], 1, "", "Unable to contact "
                                    "slurm controller (connect failure)")
        super().update_nodes(nodes, state=state, reason=reason)


def test_a_power_up_slurm_did_not_take_is_asked_again_on_the_next_pass(
        sessions: sessionmaker[Session]) -> None:
    add(sessions)
    slurm = RefusingSlurm([powered_down("vc-small-001"), powered_down("vc-small-002")])
    run_reservations(sessions, slurm, START - timedelta(seconds=40))
    assert slurm.updates == [] and state_of(sessions).state == "booting"
    held = run_reservations(sessions, slurm, START - timedelta(seconds=38))
    assert slurm.updates == [("vc-small-001,vc-small-002", "POWER_UP")]
    assert held == {"vc-small-001", "vc-small-002"}


def test_nodes_up_already_at_the_lead_time_are_kept_not_booted(
        sessions: sessionmaker[Session]) -> None:
    add(sessions)
    slurm = FakeSlurm([node("vc-small-001"), node("vc-small-002")])
    run_reservations(sessions, slurm, START - timedelta(seconds=40))
    assert slurm.updates == [] and state_of(sessions).state == "booting"
    held = run_reservations(sessions, slurm, START - timedelta(seconds=39))
    assert state_of(sessions).state == "ready" and held == {"vc-small-001", "vc-small-002"}
