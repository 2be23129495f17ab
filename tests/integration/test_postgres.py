"""The state database on a real PostgreSQL server, through vcluster's own code.

The config says ``database.url`` may be ``postgresql+psycopg://...``; these tests hold it to
that. A session fixture runs a private PostgreSQL cluster of its own (``initdb`` into a temp
dir as the ``postgres`` user, a unix socket only, no TCP, port 5499) and removes it at the
end, even when a test fails. Each test gets a fresh database made with ``createdb``.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from vcluster import db
from vcluster.config import DatabaseSettings

pytestmark = pytest.mark.integration

PG_PORT = 5499
PG_USER = "postgres"
COMMAND_TIMEOUT_S = 60.0
TABLES = {"alembic_version", "launch", "job", "hook_request", "event", "drain", "heartbeat",
          "controller", "class_backoff", "join_token", "suspension", "reservation"}


def _pg_bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        pytest.fail("PostgreSQL server not installed (/usr/lib/postgresql/*/bin/initdb); "
                    "run deploy/install-deps.sh")
    return Path(found[-1]).parent


@dataclass(frozen=True)
class PgServer:
    """A private PostgreSQL cluster listening on a unix socket in ``sock_dir`` only."""

    bin_dir: Path
    base_dir: Path
    data_dir: Path
    sock_dir: Path
    port: int

    def as_postgres(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool as the ``postgres`` system user; fail the test if it fails."""
        argv = ["runuser", "-u", PG_USER, "--", str(self.bin_dir / tool), *args]
        proc = subprocess.run(argv, cwd=self.base_dir, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"{argv} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def client(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.as_postgres(tool, "-h", str(self.sock_dir), "-p", str(self.port), *args)

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{PG_USER}@/{dbname}?host={self.sock_dir}&port={self.port}"


def _stop(bin_dir: Path, data_dir: Path, base_dir: Path) -> None:
    """Stop the server of ``data_dir`` (only if its pid file says one runs)."""
    if not (data_dir / "postmaster.pid").exists():
        return
    subprocess.run(["runuser", "-u", PG_USER, "--", str(bin_dir / "pg_ctl"), "-D",
                    str(data_dir), "stop", "-m", "fast", "-w"],
                   cwd=base_dir, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                   check=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bin_dir = _pg_bin_dir()
    postgres = pwd.getpwnam(PG_USER)
    base_dir = Path(tempfile.mkdtemp(prefix="vcluster-pg-"))
    data_dir, sock_dir = base_dir / "data", base_dir / "sock"
    try:
        sock_dir.mkdir()
        for path in (base_dir, sock_dir):
            os.chown(path, postgres.pw_uid, postgres.pw_gid)
        server = PgServer(bin_dir, base_dir, data_dir, sock_dir, PG_PORT)
        server.as_postgres("initdb", "-D", str(data_dir), "-U", PG_USER, "-A", "trust",
                           "-E", "UTF8", "--no-locale")
        server.as_postgres(
            "pg_ctl", "-D", str(data_dir), "-l", str(base_dir / "server.log"),
            "-o", f"-k {sock_dir} -p {PG_PORT} -c listen_addresses=''", "-w", "start")
        yield server
    finally:
        _stop(bin_dir, data_dir, base_dir)
        shutil.rmtree(base_dir, ignore_errors=True)


_db_numbers = count(1)


@pytest.fixture()
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database on the private server; dropped afterwards."""
    name = f"vcluster_test_{next(_db_numbers)}"
    pg_server.client("createdb", name)
    try:
        yield pg_server.url(name)
    finally:
        pg_server.client("dropdb", "--force", name)


@pytest.fixture()
def engine(pg_url: str) -> Iterator[Engine]:
    eng = db.make_engine(DatabaseSettings(url=pg_url))
    try:
        yield eng
    finally:
        eng.dispose()


def test_server_is_postgres_on_a_unix_socket_only(pg_server: PgServer, engine: Engine) -> None:
    with engine.connect() as conn:
        assert conn.dialect.name == "postgresql"
        assert conn.dialect.driver == "psycopg"
        assert conn.execute(text("SHOW listen_addresses")).scalar() == ""
        assert conn.execute(text("SELECT inet_server_addr()")).scalar() is None  # not TCP
    assert (pg_server.sock_dir / f".s.PGSQL.{PG_PORT}").is_socket()


def test_make_engine_migrates_to_head(engine: Engine) -> None:
    assert db.current_revision(engine) == db.HEAD_REVISION
    assert set(inspect(engine).get_table_names()) == TABLES
    db.check_schema(engine)  # what hooks do: no error at head
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), db.Base.metadata)
    assert diff == []


def test_partial_unique_index_refuses_a_second_open_launch(engine: Engine) -> None:
    indexes = {i["name"]: i for i in inspect(engine).get_indexes("launch")}
    assert indexes["uq_launch_open_node"]["unique"] is True
    assert indexes["uq_launch_open_node"]["dialect_options"]["postgresql_where"] == (
        "(ended_at IS NULL)")
    factory = db.session_factory(engine)
    with db.transaction(factory) as s:
        s.add(db.Launch(node_name="vc-small-001", node_class="small", job_id=7, vm_id=70))
    with pytest.raises(IntegrityError, match='duplicate key value violates unique constraint '
                                             '"uq_launch_open_node"'):
        with db.transaction(factory) as s:
            s.add(db.Launch(node_name="vc-small-001", node_class="small", job_id=8))
    with db.transaction(factory) as s:
        first = s.scalars(select(db.Launch)).one()
        first.state, first.ended_at = "terminated", db.utcnow()
    with db.transaction(factory) as s:
        s.add(db.Launch(node_name="vc-small-001", node_class="small", job_id=8, vm_id=71))
    with factory() as s:
        rows = s.scalars(select(db.Launch).order_by(db.Launch.id)).all()
        assert [(r.job_id, r.state, r.is_open) for r in rows] == [
            (7, "terminated", False), (8, "requested", True)]
        assert [la.job_id for la in db.open_launches(s)] == [8]
    with pytest.raises(IntegrityError, match='"uq_launch_vm_id"'):
        with db.transaction(factory) as s:
            s.add(db.Launch(node_name="vc-small-002", node_class="small", job_id=9, vm_id=71))
    with pytest.raises(IntegrityError, match='"ck_launch_state"'):
        with db.transaction(factory) as s:
            s.add(db.Launch(node_name="vc-small-003", node_class="small", state="running"))


def test_hook_request_json_and_event_round_trip(engine: Engine) -> None:
    factory = db.session_factory(engine)
    payload = {"resume_file": {"all_nodes_resume": "vc-small-[001-002]",
                               "jobs": [{"job_id": 12, "nodes": "vc-small-[001-002]"}]},
               "note": "ünïcode ✓", "nested": [1, None, True, 2.5]}
    with db.transaction(factory) as s:
        s.add(db.HookRequest(kind="resume", nodes="vc-small-[001-002]", job_ids=[12, 13],
                             payload=payload))
        s.add(db.HookRequest(kind="suspend", nodes="vc-small-003"))
        db.record_event(s, "resume", "resume requested for vc-small-[001-002]", job_id=12)
    with factory() as s:
        reqs = db.unhandled_requests(s)
        assert [(r.kind, r.nodes, r.job_ids, r.payload) for r in reqs] == [
            ("resume", "vc-small-[001-002]", [12, 13], payload),
            ("suspend", "vc-small-003", [], {}),
        ]
        ev = s.scalars(select(db.Event)).one()
        assert (ev.kind, ev.message, ev.job_id, ev.node_name, ev.vm_id) == (
            "resume", "resume requested for vc-small-[001-002]", 12, None, None)
    with engine.connect() as conn:  # stored as JSON the server understands
        assert conn.execute(text(
            "SELECT payload->'resume_file'->'jobs'->0->>'job_id', json_typeof(job_ids) "
            "FROM hook_request WHERE kind = 'resume'")).one() == ("12", "array")
    with db.transaction(factory) as s:
        s.scalars(select(db.HookRequest).where(db.HookRequest.kind == "resume")).one() \
            .handled_at = db.utcnow()
    with factory() as s:
        assert [r.kind for r in db.unhandled_requests(s)] == ["suspend"]
    with pytest.raises(IntegrityError, match='"ck_hook_kind"'):
        with db.transaction(factory) as s:
            s.add(db.HookRequest(kind="reboot"))


def test_timestamps_come_back_timezone_aware_utc(engine: Engine) -> None:
    with engine.connect() as conn:
        assert conn.execute(text(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'event' "
            "AND column_name = 'at'")).scalar() == "timestamp with time zone"
    paris = datetime(2026, 11, 21, 9, 30, 15, 123456, tzinfo=ZoneInfo("Europe/Paris"))
    expected = datetime(2026, 11, 21, 8, 30, 15, 123456, tzinfo=UTC)
    # A session in another time zone must change neither what is stored nor what comes back.
    with engine.connect() as conn:
        conn.execute(text("SET TIME ZONE 'America/New_York'"))
        with Session(bind=conn) as s, s.begin():
            db.beat(s, at=paris)
            db.record_event(s, "tick", "at a Paris time", at=paris)
        raw = conn.execute(text("SELECT at FROM heartbeat")).scalar()
        assert raw == expected and raw.utcoffset() == timedelta(hours=-5)
        assert conn.execute(text(
            "SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM event"
        )).scalar() == "2026-11-21 08:30:15.123456"
        with Session(bind=conn) as s:
            hb = db.heartbeat(s)
            assert hb is not None
            ev = s.scalars(select(db.Event)).one()
            for at in (hb.at, ev.at):
                assert at.tzinfo is UTC and at == expected
            # Comparisons in SQL see the same instant.
            assert s.scalars(select(db.Event.kind).where(
                db.Event.at >= datetime(2026, 11, 21, 8, 30, 15, tzinfo=UTC))).all() == ["tick"]
            assert s.scalars(select(db.Event.kind).where(
                db.Event.at > datetime(2026, 11, 21, 8, 30, 16, tzinfo=UTC))).all() == []
    with pytest.raises(StatementError, match="naive datetime given to the database"):
        with db.transaction(db.session_factory(engine)) as s:
            db.record_event(s, "tick", "naive", at=datetime(2026, 11, 21, 8, 0))


def test_downgrade_to_base_then_upgrade_to_head(pg_url: str, engine: Engine) -> None:
    with db.transaction(db.session_factory(engine)) as s:
        db.record_event(s, "tick", "before the downgrade")
    engine.dispose()
    db.downgrade(pg_url, "base")
    assert db.current_revision(engine) is None
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    db.upgrade(pg_url)
    assert db.current_revision(engine) == db.HEAD_REVISION
    assert set(inspect(engine).get_table_names()) == TABLES
    with db.session_factory(engine)() as s:
        assert s.scalars(select(db.Event)).all() == []
    # and the constraints are back
    factory = db.session_factory(engine)
    with db.transaction(factory) as s:
        s.add(db.Launch(node_name="vc-small-001", node_class="small"))
    with pytest.raises(IntegrityError, match='"uq_launch_open_node"'):
        with db.transaction(factory) as s:
            s.add(db.Launch(node_name="vc-small-001", node_class="small"))


STATUS_CONFIG = """
[slurm]
bin_dir = "{tmp}/no-slurm-here"
conf = "{tmp}/slurm.conf"
partitions = ["vcluster"]

[database]
url = "{url}"

[[node_class]]
name = "small"
count = 3
cpus = 2
memory_mb = 2000
template = "worker"
"""


def test_vcluster_status_json_reads_postgres(pg_url: str, engine: Engine,
                                             tmp_path: Path) -> None:
    now = db.utcnow()
    factory = db.session_factory(engine)
    with db.transaction(factory) as s:
        db.beat(s, at=now - timedelta(seconds=4))
        hb = db.heartbeat(s)
        assert hb is not None
        hb.pid, hb.host, hb.version = 4242, "ctl1", "0.1.0"
        s.add(db.Job(job_id=12, node_class="small", user="alice", state="RUNNING",
                     nodes="vc-small-001", first_seen=now - timedelta(seconds=90),
                     started_at=now - timedelta(seconds=30)))
        s.add(db.Launch(node_name="vc-small-001", node_class="small", job_id=12, vm_id=17,
                        state="up", ip="10.111.0.100",
                        created_at=now - timedelta(seconds=80)))
        db.record_event(s, "resume", "resume requested for vc-small-001", job_id=12,
                        at=now - timedelta(seconds=81))
        db.record_event(s, "node-up", "vc-small-001 registered with Slurm",
                        node_name="vc-small-001", job_id=12, vm_id=17,
                        at=now - timedelta(seconds=40))
    config_path = tmp_path / "vcluster.toml"
    config_path.write_text(STATUS_CONFIG.format(tmp=tmp_path, url=pg_url))
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_CONF", "ONE_XMLRPC",
                                                            "ONE_AUTH")}
    env["VCLUSTER_CONFIG"] = str(config_path)
    proc = subprocess.run([sys.executable, "-m", "vcluster", "status", "--json"],
                          capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT_S,
                          check=False)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    data = json.loads(proc.stdout)
    controller = data["controller"]
    assert 4 <= controller.pop("heartbeat_age_s") < 4 + COMMAND_TIMEOUT_S
    assert datetime.fromisoformat(controller.pop("heartbeat_at")) == now - timedelta(seconds=4)
    assert controller == {"running": True, "pid": 4242, "host": "ctl1", "version": "0.1.0",
                          "stale_after_s": 60.0, "instances": []}
    # Slurm cannot be run here (its version is asked first): status still shows the
    # database's view and says why.
    assert data["slurm_error"] == (
        f"cannot run `{tmp_path}/no-slurm-here/scontrol`: No such file or directory; "
        "check slurm.bin_dir in the vcluster config")
    assert data["classes"] == [{
        "name": "small", "policy": "per-job", "partition": "vcluster", "template": "worker",
        "templates": [], "nodes": "vc-small-[001-003]", "count": 3, "node_states": {},
        "open_launches": 1}]
    [job] = data["jobs"]
    assert 90 <= job.pop("age_s") < 90 + COMMAND_TIMEOUT_S
    [vm] = job.pop("vms")
    assert 80 <= vm.pop("age_s") < 80 + COMMAND_TIMEOUT_S
    assert job == {"job_id": 12, "user": "alice", "state": "RUNNING", "node_class": "small",
                   "template": "", "nodes": "vc-small-001", "exit_code": None}
    assert vm == {"node_name": "vc-small-001", "node_class": "small", "job_id": 12,
                  "vm_id": 17, "launch_state": "up", "slurm_state": "", "ip": "10.111.0.100",
                  "reason": "", "ended": False}
    assert data["pool_vms"] == []
    for ev in data["events"]:
        assert datetime.fromisoformat(ev.pop("at")).utcoffset() == timedelta(0)
    assert data["events"] == [
        {"kind": "resume", "node_name": None, "job_id": 12, "vm_id": None,
         "message": "resume requested for vc-small-001"},
        {"kind": "node-up", "node_name": "vc-small-001", "job_id": 12, "vm_id": 17,
         "message": "vc-small-001 registered with Slurm"},
    ]


def _status(config_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    env["VCLUSTER_CONFIG"] = str(config_path)
    return subprocess.run([sys.executable, "-m", "vcluster", "status"], capture_output=True,
                          text=True, env=env, timeout=COMMAND_TIMEOUT_S, check=False)


def test_status_says_in_one_line_when_the_server_is_down(tmp_path: Path) -> None:
    sock_dir = tmp_path / "no-server"
    sock_dir.mkdir()
    url = f"postgresql+psycopg://postgres@/vcluster?host={sock_dir}&port={PG_PORT}"
    config_path = tmp_path / "vcluster.toml"
    config_path.write_text(STATUS_CONFIG.format(tmp=tmp_path, url=url))
    proc = _status(config_path)
    quoted = str(sock_dir).replace("/", "%2F")
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == (
        f"vcluster: error: cannot connect to database postgresql+psycopg://postgres@/vcluster"
        f"?host={quoted}&port={PG_PORT}: connection is bad: connection to server on socket "
        f'"{sock_dir}/.s.PGSQL.{PG_PORT}" failed: No such file or directory; '
        "is the database server running, and is database.url right?\n")
    with pytest.raises(db.DatabaseError, match="^cannot connect to database .*; is the "
                                               "database server running"):
        db.make_engine(DatabaseSettings(url=url))


def test_status_on_an_unmigrated_database_says_how_to_migrate(pg_server: PgServer,
                                                              tmp_path: Path) -> None:
    pg_server.client("createdb", "vcluster_empty")
    try:
        url = pg_server.url("vcluster_empty")
        config_path = tmp_path / "vcluster.toml"
        config_path.write_text(STATUS_CONFIG.format(tmp=tmp_path, url=url))
        proc = _status(config_path)
        quoted = str(pg_server.sock_dir).replace("/", "%2F")
        assert (proc.returncode, proc.stdout) == (1, "")
        assert proc.stderr == (
            "vcluster: error: database postgresql+psycopg://postgres@/vcluster_empty"
            f"?host={quoted}&port={PG_PORT} is at schema none, expected {db.HEAD_REVISION}; "
            "start the controller (`vcluster controller run`) once to migrate it\n")
    finally:
        pg_server.client("dropdb", "--force", "vcluster_empty")


def test_concurrent_launches_for_one_node_one_wins(pg_url: str, engine: Engine) -> None:
    """Two writers (controller passes, say) race for one node: the second waits for the
    first and is refused, never a second open launch."""
    other = db.make_engine(DatabaseSettings(url=pg_url), migrate=False)
    try:
        first = db.session_factory(engine)()
        first.begin()
        first.add(db.Launch(node_name="vc-small-001", node_class="small", job_id=1))
        first.flush()  # the row is in, uncommitted
        outcome: list[str] = []

        def second_writer() -> None:
            try:
                with db.transaction(db.session_factory(other)) as s:
                    s.add(db.Launch(node_name="vc-small-001", node_class="small", job_id=2))
                outcome.append("committed")
            except IntegrityError as exc:
                outcome.append(type(exc.orig).__name__)

        thread = threading.Thread(target=second_writer)
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive() and outcome == []  # waits on the first's uncommitted row
        first.commit()
        first.close()
        thread.join(timeout=COMMAND_TIMEOUT_S)
        assert outcome == ["UniqueViolation"]
    finally:
        other.dispose()
    with db.session_factory(engine)() as s:
        assert [la.job_id for la in db.open_launches(s)] == [1]


def test_engine_survives_a_server_restart(pg_server: PgServer, engine: Engine) -> None:
    """The controller keeps its engine for days; a restarted server must not fail a pass."""
    factory = db.session_factory(engine)
    with db.transaction(factory) as s:
        db.record_event(s, "tick", "before the restart")
    pg_server.as_postgres("pg_ctl", "-D", str(pg_server.data_dir), "-l",
                          str(pg_server.base_dir / "server.log"), "-m", "fast", "-w", "restart")
    with db.transaction(factory) as s:
        db.record_event(s, "tick", "after the restart")
    with factory() as s:
        assert s.scalars(select(db.Event.message).order_by(db.Event.id)).all() == [
            "before the restart", "after the restart"]


def test_a_missing_driver_is_named_and_the_password_is_not() -> None:
    with pytest.raises(db.DatabaseError) as caught:
        db.make_engine(DatabaseSettings(url="postgresql+pg8000://vc:s3cret@db.example/vc"))
    assert str(caught.value) == (
        "cannot open database postgresql+pg8000://vc:***@db.example/vc: No module named "
        "'pg8000'; install the database driver (PostgreSQL: pip install 'vcluster[postgres]')")
