"""Which of several controllers leads, on a real PostgreSQL server (no Slurm, no cloud).

Two leaderships on one database: exactly one leads; when the leader closes, dies (SIGKILL of
its process) or loses its database session, the other leads at its next try, and the one
that lost its session says so before it acts again (the fence). The controllers' rows say
who leads, and ``vcluster status`` shows them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from tests.integration.pg_fixtures import new_database, private_pg
from tests.integration.test_postgres import PgServer
from vcluster import db
from vcluster.cli import cli as main
from vcluster.config import DatabaseSettings
from vcluster.controller.leader import AdvisoryLock, leadership_for, lock_key
from vcluster.controller.pg_wake import WakeRelay

pytestmark = pytest.mark.integration

POLL_S = 0.2
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    if os.geteuid() != 0:
        pytest.skip("a private PostgreSQL server runs as the postgres user: needs root")
    with private_pg() as server:
        yield server


@pytest.fixture()
def url(pg: PgServer) -> Iterator[str]:
    url = new_database(pg)
    db.make_engine(DatabaseSettings(url=url)).dispose()  # schema at head
    yield url


def _lock(url: str) -> AdvisoryLock:
    lock = leadership_for(url, "vc", lease_s=15)
    assert isinstance(lock, AdvisoryLock)
    return lock


def _until_leads(lock: AdvisoryLock, timeout_s: float = 10) -> float:
    """Try every POLL_S as a standby does; seconds until it leads."""
    started = time.monotonic()
    while not lock.lead():
        assert time.monotonic() - started < timeout_s, "the standby never took the lead"
        time.sleep(POLL_S)
    return time.monotonic() - started


def test_exactly_one_leads_and_the_other_takes_over_when_it_closes(url: str) -> None:
    a, b = _lock(url), _lock(url)
    try:
        assert a.lead() is True
        assert b.lead() is False and b.lead() is False
        assert a.leads() is True and b.leads() is False
        a.close()
        assert a.leads() is False
        assert b.lead() is True
        assert a.lead() is False  # the old leader now stands by
    finally:
        a.close()
        b.close()


def test_clusters_on_one_database_each_have_a_leader(url: str) -> None:
    a = _lock(url)
    other = leadership_for(url, "another-cluster", lease_s=15)
    try:
        assert lock_key("vc") != lock_key("another-cluster")
        assert a.lead() is True and other.lead() is True
    finally:
        a.close()
        other.close()


def test_a_leader_whose_session_is_killed_stops_leading_and_the_standby_takes_over(
        url: str) -> None:
    a, b = _lock(url), _lock(url)
    engine = db.make_engine(DatabaseSettings(url=url))
    try:
        assert a.lead() is True and b.lead() is False
        with engine.connect() as conn:  # the leader's session dies (a DBA, a server restart)
            killed = conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND granted AND pid <> pg_backend_pid()")).scalars().all()
        assert killed == [True]
        assert a.leads() is False  # the fence: it must not act any more
        assert b.lead() is True
        assert a.lead() is False
    finally:
        a.close()
        b.close()
        engine.dispose()


def test_a_sigkilled_leader_is_replaced_within_the_poll_period(url: str, tmp_path: Path
                                                               ) -> None:
    ready = tmp_path / "leading"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, time
        from vcluster.controller.leader import leadership_for
        lock = leadership_for({url!r}, "vc", lease_s=15)
        assert lock.lead()
        pathlib.Path({str(ready)!r}).write_text("yes")
        time.sleep(600)
        """)], cwd=REPO)
    b = _lock(url)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert child.poll() is None and time.monotonic() < deadline, "no leader started"
            time.sleep(0.05)
        assert b.lead() is False
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        took_s = _until_leads(b)
        assert took_s <= POLL_S + 1.0, f"takeover took {took_s:.2f} s"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        b.close()


def test_status_names_the_leader_and_the_standby(url: str, tmp_path: Path) -> None:
    config_path = tmp_path / "vcluster.toml"
    config_path.write_text(textwrap.dedent(f"""
        [slurm]
        bin_dir = "/nonexistent"
        [database]
        url = "{url}"
        [controller]
        state_dir = "{tmp_path / 'state'}"
        log_dir = "{tmp_path / 'log'}"
        [[node_class]]
        name = "small"
        prefix = "vc-small-"
        count = 2
        cpus = 1
        memory_mb = 512
        template = "worker"
        """))
    sessions = db.session_factory(db.make_engine(DatabaseSettings(url=url)))
    since = db.utcnow()
    with db.transaction(sessions) as s:
        db.beat(s, at=since)
        db.see_controller(s, "leader", since, at=since)
        s.add(db.ControllerSeen(host="host-b", pid=4242, role="standby", since=since,
                                seen_at=since, version="0"))
    result = CliRunner().invoke(main, ["--config", str(config_path), "status"],
                                env={"COLUMNS": "200"})
    lines = result.output.splitlines()
    leader = [line for line in lines if "leader:" in line]
    standby = [line for line in lines if "standby:" in line]
    assert leader == [f"  leader: {os.uname().nodename} pid {os.getpid()}, leading since "
                      f"{since:%Y-%m-%d %H:%M:%S} UTC"], result.output
    assert len(standby) == 1 and standby[0].startswith(
        f"  standby: host-b pid 4242, standing by since {since:%Y-%m-%d %H:%M:%S} UTC, seen ")
    as_json = CliRunner().invoke(main, ["--config", str(config_path), "status", "--json"])
    instances = json.loads(as_json.output)["controller"]["instances"]
    assert [(i["host"], i["role"]) for i in instances] == [
        (os.uname().nodename, "leader"), ("host-b", "standby")]


def test_a_request_recorded_on_one_host_wakes_the_controllers_of_its_cluster(url: str) -> None:
    woken, other = threading.Event(), threading.Event()
    relay = WakeRelay(url, "vc", woken.set, retry_s=0.5)
    elsewhere = WakeRelay(url, "another-cluster", other.set, retry_s=0.5)
    assert WakeRelay.usable(url) and not WakeRelay.usable("sqlite:////tmp/x.db")
    engine = db.make_engine(DatabaseSettings(url=url))
    sessions = db.session_factory(engine)
    try:
        relay.start()
        elsewhere.start()
        time.sleep(0.5)  # both listen
        with db.transaction(sessions) as s:
            db.notify_wake(s, "vc")
            time.sleep(0.3)
            assert not woken.is_set()  # delivered when the request is committed, not before
        assert woken.wait(3)
        assert not other.wait(1.5)
    finally:
        relay.stop()
        elsewhere.stop()
        engine.dispose()


def test_a_standby_deposes_a_hung_leader_which_then_writes_nothing_as_leader(url: str
                                                                             ) -> None:
    a, b = _lock(url), _lock(url)
    engine = db.make_engine(DatabaseSettings(url=url))
    sessions = db.session_factory(engine)
    try:
        assert a.lead() is True and b.lead() is False
        with sessions() as s:
            assert a.holds_in(s) is True and b.holds_in(s) is False
        assert b.depose() is True  # a hangs: b ends its lock's session
        took_s = _until_leads(b)
        assert took_s <= POLL_S + 1.0
        with sessions() as s:  # a wakes up: its heartbeat thread asks before it beats
            assert a.holds_in(s) is False and b.holds_in(s) is True
        assert a.leads() is False  # and its next step is fenced
        assert b.depose() is False  # nobody else holds it
    finally:
        a.close()
        b.close()
        engine.dispose()


def test_deposing_a_hung_leader_ends_its_open_transactions_too(url: str, tmp_path: Path
                                                               ) -> None:
    """A leader stopped inside a transaction (writing the heartbeat) holds row locks: the
    new leader's first write would wait for ever, unless the deposal ends that session."""
    ready = tmp_path / "in-transaction"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, time
        from sqlalchemy import text
        from vcluster import db
        from vcluster.config import DatabaseSettings
        from vcluster.controller.leader import leadership_for, name_sessions
        engine = db.make_engine(DatabaseSettings(url={url!r}))
        name_sessions(engine)
        lock = leadership_for({url!r}, "vc", lease_s=15)
        assert lock.lead()
        with db.session_factory(engine)() as s:
            db.beat(s)
            s.flush()  # the heartbeat row is locked until this transaction ends
            pathlib.Path({str(ready)!r}).write_text("yes")
            time.sleep(600)  # hangs here
        """)], cwd=REPO)
    b = _lock(url)
    engine = db.make_engine(DatabaseSettings(url=url))
    sessions = db.session_factory(engine)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert child.poll() is None and time.monotonic() < deadline, "no leader started"
            time.sleep(0.05)
        assert b.lead() is False
        assert b.depose() is True
        assert b.lead() is True  # at once: the deposal waited for the lock to be free
        with db.transaction(sessions) as s:
            s.execute(text("SET LOCAL lock_timeout = '5s'"))
            db.beat(s)  # the hung leader's row lock is gone with its session
        with sessions() as s:
            hb = db.heartbeat(s)
            assert hb is not None and hb.pid == os.getpid()
    finally:
        child.kill()
        child.wait()
        b.close()
        engine.dispose()
