"""State database: migrations build the schema the models describe, and its constraints hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from vcluster import db
from vcluster.config import DatabaseSettings


@pytest.fixture()
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    eng = db.make_engine(DatabaseSettings(url=f"sqlite:///{tmp_path}/sub/dir/state.db"))
    try:
        yield eng
    finally:
        eng.dispose()


def test_migrations_create_parent_dirs_and_all_tables(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert (tmp_path / "sub" / "dir" / "state.db").exists()
    tables = set(inspect(engine).get_table_names())
    assert tables == {"alembic_version", "launch", "job", "hook_request", "event", "heartbeat",
                      "drain", "class_backoff", "controller", "join_token", "suspension",
                      "reservation"}
    assert db.current_revision(engine) == db.HEAD_REVISION


def test_head_revision_constant_matches_alembic_head() -> None:
    script = ScriptDirectory.from_config(db._alembic_config("sqlite://"))
    assert script.get_current_head() == db.HEAD_REVISION


def test_models_and_migrations_agree(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), db.Base.metadata)
    assert diff == []


def test_sqlite_runs_in_wal_with_busy_timeout_and_foreign_keys(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_MS
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_second_open_launch_for_one_node_is_refused(engine) -> None:  # type: ignore[no-untyped-def]
    factory = db.session_factory(engine)
    with db.transaction(factory) as s:
        s.add(db.Launch(node_name="vc-small-001", node_class="small", job_id=7))
    with pytest.raises(IntegrityError, match="UNIQUE constraint failed: launch.node_name"):
        with db.transaction(factory) as s:
            s.add(db.Launch(node_name="vc-small-001", node_class="small", job_id=8))
    # Once the first launch has ended, the node may be launched again.
    with db.transaction(factory) as s:
        first = s.scalars(db.select(db.Launch)).one()
        first.state, first.ended_at = "terminated", db.utcnow()
    with db.transaction(factory) as s:
        s.add(db.Launch(node_name="vc-small-001", node_class="small", job_id=8))
    with factory() as s:
        assert [(la.job_id, la.is_open) for la in s.scalars(
            db.select(db.Launch).order_by(db.Launch.id))] == [(7, False), (8, True)]


def test_one_vm_cannot_serve_two_launches(engine) -> None:  # type: ignore[no-untyped-def]
    factory = db.session_factory(engine)
    with db.transaction(factory) as s:
        s.add(db.Launch(node_name="vc-small-001", node_class="small", vm_id=42))
    with pytest.raises(IntegrityError, match="UNIQUE constraint failed: launch.vm_id"):
        with db.transaction(factory) as s:
            s.add(db.Launch(node_name="vc-small-002", node_class="small", vm_id=42))


def test_unknown_launch_state_is_refused(engine) -> None:  # type: ignore[no-untyped-def]
    factory = db.session_factory(engine)
    with pytest.raises(IntegrityError, match="CHECK constraint failed: ck_launch_state"):
        with db.transaction(factory) as s:
            s.add(db.Launch(node_name="vc-small-001", node_class="small", state="running"))


def test_heartbeat_is_one_row_and_times_come_back_in_utc(engine) -> None:  # type: ignore[no-untyped-def]
    factory = db.session_factory(engine)
    t0 = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)
    with db.transaction(factory) as s:
        db.beat(s, at=t0)
    with db.transaction(factory) as s:
        db.beat(s, at=t0 + timedelta(seconds=5))
    with factory() as s:
        hb = db.heartbeat(s)
        assert hb is not None and hb.at == t0 + timedelta(seconds=5)
        assert hb.at.tzinfo is UTC
        assert s.execute(text("SELECT count(*) FROM heartbeat")).scalar() == 1


def test_naive_datetimes_are_refused(engine) -> None:  # type: ignore[no-untyped-def]
    factory = db.session_factory(engine)
    with pytest.raises(Exception, match="naive datetime"):
        with db.transaction(factory) as s:
            db.record_event(s, "test", "x", at=datetime(2026, 1, 1))


def test_hooks_open_without_migrating_and_refuse_an_unmigrated_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    with pytest.raises(db.DatabaseError) as info:
        db.make_engine(DatabaseSettings(url=url), migrate=False)
    assert str(info.value) == (
        f"database sqlite:///{tmp_path}/empty.db is at schema none, expected "
        f"{db.HEAD_REVISION}; "
        "start the controller (`vcluster controller run`) once to migrate it"
    )
    db.upgrade(url)
    db.make_engine(DatabaseSettings(url=url), migrate=False).dispose()


def test_upgrade_is_idempotent_and_downgrade_empties(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    db.upgrade(url)
    db.upgrade(url)
    db.downgrade(url)
    eng = db.create_db_engine(url)
    try:
        assert set(inspect(eng).get_table_names()) == {"alembic_version"}
    finally:
        eng.dispose()


def test_usage_columns_arrive_on_a_database_with_history(tmp_path: Path) -> None:
    """0002 adds the VM's size, template, host and lifetime to launches and the account to
    jobs; rows written before it keep their values (account "", the rest unknown)."""
    url = f"sqlite:///{tmp_path}/old.db"
    db.upgrade(url, "0001")
    eng = db.create_db_engine(url)
    try:
        with eng.begin() as conn:
            conn.execute(text(
                "INSERT INTO job (job_id, user, state, nodes, first_seen) "
                "VALUES (7, 'alice', 'COMPLETED', 'vc-small-001', '2026-11-21 06:00:00')"))
            conn.execute(text(
                "INSERT INTO launch (node_name, node_class, job_id, vm_id, state, reason, "
                "attempts, created_at, updated_at) VALUES ('vc-small-001', 'small', 7, 3, "
                "'terminated', '', 1, '2026-11-21 06:00:00', '2026-11-21 06:00:00')"))
        db.upgrade_engine(eng)
        with db.session_factory(eng)() as s:
            job = s.get(db.Job, 7)
            launch = s.scalars(db.select(db.Launch)).one()
        assert job is not None and (job.user, job.account) == ("alice", "")
        assert (launch.vm_id, launch.cpus, launch.memory_mb, launch.template, launch.host,
                launch.vm_started_at, launch.vm_ended_at) == (3, None, None, None, None,
                                                              None, None)
    finally:
        eng.dispose()


SMALL_TABLES = ("drain", "class_backoff", "suspension")
"""Tables with a row per node class, drained node or suspended node: cheap to scan."""


def test_a_pass_reads_history_through_indexes(engine) -> None:  # type: ignore[no-untyped-def]
    """Every query of the pass's database read is an index search, not a scan of a table
    that grows with every job the site ever ran (tables of a row per class or per drained
    node, an admin's short lists, may be scanned)."""
    from sqlalchemy import event

    from tests.unit.controller_fixtures import make_config
    from vcluster.controller.observe import read_database

    params: list[tuple[str, object]] = []

    def keep(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT"):
            params.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", keep)
    with db.session_factory(engine)() as s:
        read_database(s, make_config(), datetime.now(UTC))
    event.remove(engine, "before_cursor_execute", keep)
    assert len(params) >= 6
    with engine.connect() as conn:
        for statement, parameters in params:
            plan = [row[-1] for row in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + statement, parameters)]
            scans = [p for p in plan if p.startswith("SCAN")
                     and p.split()[1] not in SMALL_TABLES]
            assert not scans, f"{statement!r} scans: {plan}"
