"""Passes of controllers that share a database: only the leader acts, a leader that loses
the lead mid-pass stops at once, and a new leader carries on the old one's boots without
launching a second VM. Leadership is a fake of its small protocol; the real one (a
PostgreSQL advisory lock) is tested in tests/integration/test_leader.py."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select

from tests.unit import test_controller_loop
from tests.unit.controller_fixtures import job, powering_up
from tests.unit.test_controller_loop import S1, S2, World
from vcluster import db
from vcluster.controller.actions import BootVM
from vcluster.controller.leader import (
    HeartbeatWatch,
    SoleLeader,
    keepalive_settings,
    lock_key,
)
from vcluster.controller.loop import DEPOSE_EVENT, LEAD_EVENT, Controller
from vcluster.metrics import Metrics

world = test_controller_loop.world  # the same fixture: a controller over fakes and SQLite


@dataclass
class FakeLeadership:
    """Implements Leadership: the test frees the lock or cuts the leader's session."""

    shared: bool = True
    leading: bool = False
    free: bool = True
    """The lock is free to take."""
    checks_left: int | None = None
    """``leads()`` says yes this many more times, then the session is lost; None: always."""

    def lead(self) -> bool:
        if self.leading:
            return self.leads()
        self.leading = self.free
        return self.leading

    def leads(self) -> bool:
        if not self.leading:
            return False
        if self.checks_left is not None:
            if self.checks_left <= 0:
                self.leading = False
                return False
            self.checks_left -= 1
        return True

    deposed: int = 0

    def depose(self) -> bool:
        """The hung leader's session ends: the lock is free."""
        self.deposed += 1
        self.free = True
        return True

    def holds_in(self, _session: object) -> bool:
        return self.leading

    def close(self) -> None:
        self.leading = False


def _with(w: World, leadership: FakeLeadership, metrics: Metrics | None = None) -> Controller:
    return Controller(w.config, w.sessions, w.slurm, w.one, w.controller.actor, now=w.clock,
                      leadership=leadership, metrics=metrics)


def _rows(w: World) -> list[tuple[str, int, str]]:
    with w.sessions() as s:
        return [(c.role, c.pid, c.host) for c in db.controllers_seen(s)]


def _two_node_job(w: World) -> None:
    w.slurm.nodes_by_name = {S1: powering_up(S1), S2: powering_up(S2)}
    w.slurm.jobs_by_id = {12: job(12, S1, S2)}


def test_a_standby_acts_on_nothing_until_the_lead_is_free(world: World) -> None:
    w = world
    _two_node_job(w)
    lock = FakeLeadership(free=False)
    metrics = Metrics()
    standby = _with(w, lock, metrics)
    report = standby.run_pass()
    assert report.standby and report.actions == []
    assert w.one.instantiated == [] and w.launches() == []
    with w.sessions() as s:
        assert db.heartbeat(s) is None  # hooks go by the leader's heartbeat only
    assert [role for role, _pid, _host in _rows(w)] == ["standby"]
    assert "vcluster_leader 0.0" in metrics.text()
    lock.free = True  # the leader died: its lock is free
    report = standby.run_pass()
    assert not report.standby
    assert sorted(name for _t, name, _x in w.one.instantiated) == [S1, S2]
    assert [role for role, _pid, _host in _rows(w)] == ["leader"]
    assert [kind for kind, _n, _m in w.events()].count(LEAD_EVENT) == 1
    with w.sessions() as s:
        assert db.heartbeat(s) is not None
    assert "vcluster_leader 1.0" in metrics.text()
    assert "vcluster_leader_changes_total 1.0" in metrics.text()


def test_a_leader_that_loses_the_lead_mid_pass_stops_acting(world: World) -> None:
    w = world
    _two_node_job(w)
    probe = _with(w, FakeLeadership())
    boots_at = [i for i, a in enumerate(probe.run_pass().actions) if isinstance(a, BootVM)]
    assert len(boots_at) == 2
    w.one.instantiated.clear()
    w.one.vms_by_id.clear()
    with db.transaction(w.sessions) as s:  # the same picture again, for a second controller
        for table in (db.Launch, db.Job, db.Event):
            for row in s.scalars(select(table)):
                s.delete(row)
    lock = FakeLeadership(checks_left=boots_at[1])  # lost right before the second boot
    report = _with(w, lock).run_pass()
    assert [name for _t, name, _x in w.one.instantiated] == [report.actions[boots_at[0]]
                                                               .node_name]
    assert report.done == boots_at[1]
    assert not lock.leading
    assert [role for role, _pid, _host in _rows(w)] == ["standby"]


def test_a_new_leader_adopts_the_vm_the_old_one_was_booting(world: World) -> None:
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.slurm.jobs_by_id = {12: job(12, S1)}
    old = _with(w, FakeLeadership())
    old.run_pass()
    ((_t, _name, _x),) = w.one.instantiated
    vm_id = next(iter(w.one.vms_by_id))
    # the old leader died between OpenNebula's answer and recording the VM's id
    with db.transaction(w.sessions) as s:
        launch = s.scalars(select(db.Launch)).one()
        launch.state, launch.vm_id = "allocating", None
    old.leadership.close()
    new = _with(w, FakeLeadership())
    w.clock.advance(5)
    new.run_pass()
    assert len(w.one.instantiated) == 1  # no second VM for the node
    assert [(n, st, v) for n, st, v, _ip, _ended in w.launches()] == [(S1, "booting", vm_id)]


def test_sqlite_keeps_one_controller_that_always_leads(world: World) -> None:
    w = world
    assert isinstance(w.controller.leadership, SoleLeader)
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.slurm.jobs_by_id = {12: job(12, S1)}
    assert not w.controller.run_pass().standby
    assert _rows(w) == []  # no list of controllers: there is only one
    assert LEAD_EVENT not in [kind for kind, _n, _m in w.events()]


def test_lock_keys_and_keepalives() -> None:
    assert lock_key("vc") == lock_key("vc") != lock_key("vc2")
    assert -2**63 <= lock_key("vc") < 2**63
    client, server = keepalive_settings(15)
    # the leader's end gives up first (it stops acting), the server frees the lock after
    assert client["tcp_user_timeout"] == 5000
    assert client["keepalives_idle"] + client["keepalives_interval"] * client[
        "keepalives_count"] <= 7
    assert server["tcp_keepalives_idle"] + server["tcp_keepalives_interval"] * server[
        "tcp_keepalives_count"] == 8
    assert server["tcp_user_timeout"] == 10000 <= 15 * 1000


def test_a_standby_ends_the_session_of_a_leader_silent_for_a_lease(world: World) -> None:
    w = world
    lease_s = w.config.controller.leader_lease_s
    with db.transaction(w.sessions) as s:  # the leader beat once, then hung
        db.beat(s, at=w.clock())
    lock = FakeLeadership(free=False)
    standby = _with(w, lock)
    ticks = [100.0]
    standby._watch = HeartbeatWatch(clock=lambda: ticks[0])
    assert standby.run_pass().standby
    ticks[0] += lease_s - 0.5
    assert standby.run_pass().standby and lock.deposed == 0  # not yet a lease
    ticks[0] += 1.0
    assert not standby.run_pass().standby  # the hung leader's lock is freed: it leads at once
    assert lock.deposed == 1
    ((kind, _node, message),) = [e for e in w.events() if e[0] == DEPOSE_EVENT]
    assert re.fullmatch(r"the leader \(\S+ pid \d+\) wrote no heartbeat for 15\.5 s "
                        r"\(controller\.leader_lease_s 15\): its lock's database session "
                        r"was ended, so that a standby leads", message), message
    assert [kind for kind, _n, _m in w.events()].count(LEAD_EVENT) == 1


def test_a_beating_leader_is_not_deposed(world: World) -> None:
    w = world
    lock = FakeLeadership(free=False)
    standby = _with(w, lock)
    ticks = [0.0]
    standby._watch = HeartbeatWatch(clock=lambda: ticks[0])
    for _ in range(5):
        with db.transaction(w.sessions) as s:
            w.clock.advance(5)
            db.beat(s, at=w.clock())
        ticks[0] += 10.0
        assert standby.run_pass().standby
    assert lock.deposed == 0
