"""``vcluster reserve`` against a real database and a fake ``scontrol``: what is recorded,
what Slurm is asked, refusals that name their reason, cancel, and the measured lead."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.unit.controller_fixtures import make_config
from vcluster import db
from vcluster.config import DatabaseSettings
from vcluster.errors import SlurmCommandError, VclusterError
from vcluster.one_site import HostCapacity
from vcluster.reserve import DEFAULT_LEAD_S, LEAD_MARGIN_S, cancel, listing, make

NOW = datetime(2026, 12, 2, 13, 0, tzinfo=UTC)
HOSTS = [HostCapacity("h1", "MONITORED", 800, 16 * 1024 * 1024, 0, 0)]


@dataclass
class Out:
    stdout: str


@dataclass
class FakeScontrol:
    """Answers ``scontrol`` as slurmctld would for these calls."""

    picks: str = "vc-small-[001-002]"
    refuse: str = ""
    in_use: bool = False
    """A job waits or runs in the reservation: slurmctld refuses to delete it."""
    listed: str = ""
    """What ``squeue --reservation`` lists (job ids, one a line)."""
    calls: list[list[str]] = field(default_factory=list)

    def run(self, argv: Sequence[str], **_: Any) -> Out:
        self.calls.append(list(argv))
        if self.refuse and argv[1] == "create":
            raise SlurmCommandError(list(argv), 1, "", self.refuse)
        if self.in_use and argv[1] == "delete":
            raise SlurmCommandError(list(argv), 1, "", "Error deleting the reservation: "
                                    "Requested reservation is in use")
        if argv[0] == "squeue":
            return Out(self.listed)
        if argv[1] == "show":
            return Out(f"ReservationName={argv[3]} StartTime=x Nodes={self.picks} NodeCnt=2")
        return Out("")


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = db.make_engine(DatabaseSettings(url=f"sqlite:///{tmp_path}/state.db"))
    try:
        yield db.session_factory(engine)
    finally:
        engine.dispose()


def reserve(sessions: sessionmaker[Session], slurm: FakeScontrol, count: int,
            start_s: float = 120.5, duration_s: float = 600) -> Any:
    config = make_config()
    start = NOW + timedelta(seconds=start_s)
    return make(sessions, slurm, config, HOSTS, config.node_class("small"),  # type: ignore[arg-type]
                count, start, start + timedelta(seconds=duration_s), "alice", now=NOW)


def test_an_accepted_reservation_is_made_in_slurm_and_recorded(sessions: Any) -> None:
    slurm = FakeScontrol()
    made = reserve(sessions, slurm, 2)
    assert made.accepted, made.reason
    r = made.reservation
    assert (r["state"], r["nodes"], r["slurm_name"]) == ("accepted", "vc-small-[001-002]",
                                                         "vc-r1")
    assert r["lead_s"] == DEFAULT_LEAD_S
    assert r["start"] == "2026-12-02T13:02:01+00:00"  # whole seconds, rounded up
    create = slurm.calls[0]
    assert create[:4] == ["scontrol", "create", "reservation", "ReservationName=vc-r1"]
    assert {"NodeCnt=2", "Features=small", "Users=alice"} <= set(create)
    assert [x["id"] for x in listing(sessions, all_=False)] == [1]


def test_one_the_cloud_cannot_hold_next_to_it_is_refused_with_its_reason(
        sessions: Any) -> None:
    slurm = FakeScontrol()
    assert reserve(sessions, slurm, 2).accepted
    made = reserve(sessions, slurm, 2, start_s=300)  # 4 x 200 % on one 800 % host: fits
    assert made.accepted, made.reason
    slurm.picks = "vc-small-[003-004]"
    third = reserve(sessions, slurm, 1, start_s=400)
    assert not third.accepted
    assert third.reason.startswith("refused: class small has 4 nodes, 4 of them reserved")
    assert third.reservation["state"] == "refused"
    assert len([c for c in slurm.calls if c[1] == "create"]) == 2  # Slurm never asked
    later = reserve(sessions, slurm, 1, start_s=2000)  # after both end: accepted
    assert later.accepted, later.reason


def test_slurm_refusing_the_reservation_refuses_it(sessions: Any) -> None:
    made = reserve(sessions, FakeScontrol(refuse="Requested nodes are busy"), 1)
    assert not made.accepted
    assert "refused: Slurm would not create the reservation" in made.reason
    assert "Requested nodes are busy" in made.reason
    assert listing(sessions, all_=False) == []


def test_cancel_deletes_slurms_reservation_and_ends_one_never_booted(sessions: Any) -> None:
    slurm = FakeScontrol()
    reserve(sessions, slurm, 1)
    row = cancel(sessions, slurm, 1, now=NOW)  # type: ignore[arg-type]
    assert row["state"] == "cancelled" and row["ended_at"] is not None
    assert slurm.calls[-1] == ["scontrol", "delete", "ReservationName=vc-r1"]
    with pytest.raises(VclusterError, match="reservation 1 is cancelled: nothing to cancel"):
        cancel(sessions, slurm, 1, now=NOW)  # type: ignore[arg-type]
    with pytest.raises(VclusterError, match="no reservation 9"):
        cancel(sessions, slurm, 9, now=NOW)  # type: ignore[arg-type]


def test_cancel_of_a_reservation_jobs_are_in_is_refused_naming_them(sessions: Any) -> None:
    slurm = FakeScontrol(listed="41\n42\n")
    reserve(sessions, slurm, 2)
    with db.transaction(sessions) as s:  # booted, started, jobs in it
        row = s.get(db.Reservation, 1)
        row.state, row.powered_up_at = "ready", NOW
    refusal = ("reservation 1 not cancelled: job(s) 41, 42 wait or run in it and Slurm "
               "deletes no reservation in use; cancel them (scancel) or let them end (squeue "
               "--reservation=vc-r1), then cancel it again")
    with pytest.raises(VclusterError) as exc:
        cancel(sessions, slurm, 1, now=NOW)  # type: ignore[arg-type]
    assert str(exc.value) == refusal
    assert slurm.calls[-1] == ["squeue", "--noheader", "--reservation=vc-r1", "--format=%i"]
    assert [r["state"] for r in listing(sessions, all_=False)] == ["ready"]
    # a job submitted between the check and the delete: back to what it was
    slurm.listed, slurm.in_use = "", True
    with pytest.raises(VclusterError, match="reservation 1 not cancelled: job"):
        cancel(sessions, slurm, 1, now=NOW)  # type: ignore[arg-type]
    assert [(r["state"], r["ended_at"]) for r in listing(sessions, all_=False)] == [
        ("ready", None)]
    slurm.in_use = False
    assert cancel(sessions, slurm, 1, now=NOW)["state"] == "cancelled"  # type: ignore[arg-type]


def test_the_lead_comes_from_the_class_s_measured_boots(sessions: Any) -> None:
    with db.transaction(sessions) as s:
        for vm_id, boot_s in ((11, 24.0), (12, 31.5)):
            s.add(db.Launch(node_name=f"vc-small-00{vm_id - 10}", node_class="small",
                            vm_id=vm_id, state="up", created_at=NOW - timedelta(minutes=5)))
            db.record_event(s, "node.up", "up", vm_id=vm_id,
                            at=NOW - timedelta(minutes=5) + timedelta(seconds=boot_s))
    made = reserve(sessions, FakeScontrol(), 1)
    assert made.reservation["lead_s"] == 31.5 + LEAD_MARGIN_S
