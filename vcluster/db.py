"""The state database: the job <-> node <-> VM map, hook requests, events, heartbeat.

Why it exists: Slurm's hooks are short-lived processes and the controller is a daemon;
they share state only through this database. SQLite (one file, WAL mode, a busy timeout,
``BEGIN IMMEDIATE`` transactions) lets several hook processes write beside the controller;
PostgreSQL works the same for production. The schema is owned by Alembic migrations
(``vcluster/migrations``) that run from the installed package without an ``alembic.ini``.

Constraints carry the invariants: at most one *open* launch (``ended_at IS NULL``) per node
and at most one launch per VM id, so a double launch for one node raises instead of booting
a second VM. ``event`` is append-only. ``heartbeat`` holds one row, rewritten every pass
by the leading controller; ``controller`` has a row per running controller (leader or
standby), rewritten as it beats.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from vcluster import __version__
from vcluster.config import DatabaseSettings
from vcluster.db_models import (
    DRAIN_KINDS,
    HOOK_KINDS,
    LAUNCH_STATES,
    OPEN_LAUNCH_STATES,
    RESERVATION_STATES,
    RESUME_REFUSED_EVENT,
    SUSPENSION_STATES,
    Base,
    ClassBackoff,
    ControllerSeen,
    Drain,
    Event,
    Heartbeat,
    HookRequest,
    Job,
    JoinToken,
    Launch,
    Reservation,
    Suspension,
    UTCDateTime,
    utcnow,
)
from vcluster.errors import ConfigError, VclusterError

__all__ = [  # the models and states of vcluster.db_models (import them from here)
    "Base",
    "ClassBackoff",
    "ControllerSeen",
    "DRAIN_KINDS",
    "Drain",
    "Event",
    "HOOK_KINDS",
    "Heartbeat",
    "HookRequest",
    "Job",
    "JoinToken",
    "LAUNCH_STATES",
    "Launch",
    "OPEN_LAUNCH_STATES",
    "RESERVATION_STATES",
    "RESUME_REFUSED_EVENT",
    "Reservation",
    "SUSPENSION_STATES",
    "Suspension",
    "UTCDateTime",
    "utcnow",
    # and its own
    "DatabaseError",
    "create_db_engine",
    "make_engine",
    "upgrade_engine",
    "upgrade",
    "downgrade",
    "connect",
    "current_revision",
    "check_schema",
    "session_factory",
    "transaction",
    "record_event",
    "record_recovery",
    "beat",
    "heartbeat",
    "open_launches",
    "unhandled_requests",
    "see_controller",
    "forget_controller",
    "controllers_seen",
    "wake_channel",
    "notify_wake",
    "HEAD_REVISION",
    "SQLITE_BUSY_TIMEOUT_MS",
    "VM_LOST_EVENT",
    "VM_RECOVERED_EVENT",
    "RECOVERY_WINDOW_S",
    "CONTROLLER_FORGET_S",
]

log = logging.getLogger(__name__)

HEAD_REVISION = "0009"
"""The newest migration; a unit test checks it equals Alembic's head."""
SQLITE_BUSY_TIMEOUT_MS = 10_000

class DatabaseError(VclusterError):
    """The state database cannot be opened, is not migrated, or refused a write."""


# --- engine ----------------------------------------------------------------------------------


def _sqlite_path(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def _install_sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front: a deferred transaction that later
        # writes can fail with "database is locked" without waiting for busy_timeout.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_db_engine(url: str) -> Engine:
    """An engine for ``url`` with vcluster's SQLite settings; no schema check."""
    try:
        sqlite_file = _sqlite_path(url)
    except Exception as exc:  # sqlalchemy.exc.ArgumentError
        raise ConfigError(f"not a valid SQLAlchemy URL: {url!r}", key="database.url") from exc
    if sqlite_file is not None:
        try:
            sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(
                f"cannot create database directory {str(sqlite_file.parent)!r}: "
                f"{exc.strerror}; fix database.url or the directory's permissions"
            ) from exc
    try:
        # A server (not SQLite) may restart under the controller's long-lived pool: test each
        # pooled connection before use instead of failing the next pass on a dead one.
        engine = create_engine(url, pool_pre_ping=make_url(url).get_backend_name() != "sqlite")
    except Exception as exc:  # missing driver, bad URL
        hint = ("; install the database driver (PostgreSQL: pip install 'vcluster[postgres]')"
                if isinstance(exc, ImportError) else "")
        raise DatabaseError(  # the URL's repr hides its password
            f"cannot open database {make_url(url)!r}: {exc}{hint}") from exc
    if engine.dialect.name == "sqlite":
        _install_sqlite_pragmas(engine)
    return engine


def make_engine(settings: DatabaseSettings, *, migrate: bool = True) -> Engine:
    """Open the database at ``settings.url``; with ``migrate`` bring its schema to head.

    For SQLite the file's parent directory is created and every connection runs in WAL
    mode with a busy timeout and foreign keys on. Without ``migrate`` the schema must
    already be at head (hooks use this: they never migrate).
    """
    engine = create_db_engine(settings.url)
    if migrate:
        upgrade_engine(engine)
    else:
        check_schema(engine)
    return engine


def _alembic_config(url: str) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("vcluster") / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_engine(engine: Engine, revision: str = "head", *, down: bool = False) -> None:
    """Run the Alembic migrations on ``engine`` up (or ``down``) to ``revision``."""
    from alembic import command

    cfg = _alembic_config(engine.url.render_as_string(hide_password=False))
    try:
        with connect(engine) as conn, conn.begin():
            cfg.attributes["connection"] = conn
            if down:
                command.downgrade(cfg, revision)
            else:
                command.upgrade(cfg, revision)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot migrate database {engine.url!r}: {_reason(exc)}") from exc


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` (creating a SQLite file if needed)."""
    engine = create_db_engine(url)
    try:
        upgrade_engine(engine, revision)
    finally:
        engine.dispose()


def downgrade(url: str, revision: str = "base") -> None:
    """Undo migrations of the database at ``url`` down to ``revision``."""
    engine = create_db_engine(url)
    try:
        upgrade_engine(engine, revision, down=True)
    finally:
        engine.dispose()


def _reason(exc: SQLAlchemyError) -> str:
    """The first line of the driver's message (psycopg adds hints and DETAIL lines)."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def connect(engine: Engine) -> Connection:
    """A connection, or a one-line DatabaseError if the server (or file) cannot be reached."""
    try:
        return engine.connect()
    except SQLAlchemyError as exc:
        raise DatabaseError(
            f"cannot connect to database {engine.url!r}: {_reason(exc)}; "
            "is the database server running, and is database.url right?"
        ) from exc


def current_revision(engine: Engine) -> str | None:
    with connect(engine) as conn:
        try:
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        except SQLAlchemyError:
            return None
    return None if row is None else str(row[0])


def check_schema(engine: Engine) -> None:
    rev = current_revision(engine)
    if rev != HEAD_REVISION:
        raise DatabaseError(
            f"database {engine.url!r} is at schema {rev or 'none'}, expected {HEAD_REVISION}; "
            "start the controller (`vcluster controller run`) once to migrate it"
        )


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One short transaction: commit on success, roll back on error."""
    with factory() as session, session.begin():
        yield session


# --- small helpers shared by hooks, controller and status -------------------------------------


def record_event(
    session: Session, kind: str, message: str, *, node_name: str | None = None,
    job_id: int | None = None, vm_id: int | None = None, at: datetime | None = None,
) -> Event:
    ev = Event(kind=kind, message=message, node_name=node_name, job_id=job_id, vm_id=vm_id,
               at=at or utcnow())
    session.add(ev)
    log.info("event %s node=%s job=%s vm=%s: %s", kind, node_name, job_id, vm_id, message)
    return ev


VM_LOST_EVENT = "vm.lost"
"""A VM reached a state vcluster did not ask for: what was seen, which rule, what was done."""
VM_RECOVERED_EVENT = "vm.recovered"
"""The job of a lost VM has a working node again: how long recovery took."""
RECOVERY_WINDOW_S = 86400.0
"""A VM lost longer ago than this is not looked for when its job's node comes up."""


def record_recovery(session: Session, job_id: int, on: str, *, at: datetime,
                    node_name: str | None = None, vm_id: int | None = None) -> Event | None:
    """If a VM of the job was lost (``vm.lost``) since the job last recovered, record how
    long it took until the job had a working node again (``on``: "VM 7", "nodes vc-[1-2]").
    The controller's node-up and the prolog's wait both call it: a rerun that ends before
    the controller's next pass is seen only by the prolog. Only the last day of events is
    read (through the index on ``at``): it runs on a job's start."""
    last = session.scalars(select(Event).where(
        Event.at >= at - timedelta(seconds=RECOVERY_WINDOW_S), Event.job_id == job_id,
        Event.kind.in_((VM_LOST_EVENT, VM_RECOVERED_EVENT)))
        .order_by(Event.at.desc(), Event.id.desc()).limit(1)).first()
    if last is None or last.kind != VM_LOST_EVENT:
        return None
    took_s = (at - last.at).total_seconds()
    return record_event(session, VM_RECOVERED_EVENT, f"job {job_id} has a working node again "
                        f"on {on}, {took_s:.1f} s after VM {last.vm_id} was lost (recovery "
                        f"{took_s:.1f} s)", node_name=node_name, vm_id=vm_id, job_id=job_id,
                        at=at)


def beat(session: Session, *, at: datetime | None = None) -> Heartbeat:
    hb = session.get(Heartbeat, 1)
    now = at or utcnow()
    if hb is None:
        hb = Heartbeat(id=1, pid=os.getpid(), host=socket.gethostname(), at=now,
                       version=__version__)
        session.add(hb)
    else:
        hb.pid, hb.host, hb.at, hb.version = os.getpid(), socket.gethostname(), now, __version__
    return hb


def heartbeat(session: Session) -> Heartbeat | None:
    return session.get(Heartbeat, 1)


def open_launches(session: Session) -> Sequence[Launch]:
    return session.scalars(select(Launch).where(Launch.ended_at.is_(None))
                           .order_by(Launch.id)).all()


def unhandled_requests(session: Session) -> Sequence[HookRequest]:
    return session.scalars(select(HookRequest).where(HookRequest.handled_at.is_(None))
                           .order_by(HookRequest.id)).all()


CONTROLLER_FORGET_S = 86400.0
"""A controller row not rewritten for this long is deleted (its process is long gone)."""


def see_controller(session: Session, role: str, since: datetime, *,
                   at: datetime | None = None) -> None:
    """This process's row: its role, since when, seen now. Rows of controllers gone for
    :data:`CONTROLLER_FORGET_S` are deleted."""
    now = at or utcnow()
    host, pid = socket.gethostname(), os.getpid()
    row = session.get(ControllerSeen, (host, pid))
    if row is None:
        session.add(ControllerSeen(host=host, pid=pid, role=role, since=since, seen_at=now,
                                   version=__version__))
    else:
        row.role, row.since, row.seen_at = role, since, now
    session.execute(delete(ControllerSeen).where(
        ControllerSeen.seen_at < now - timedelta(seconds=CONTROLLER_FORGET_S)))


def forget_controller(session: Session) -> None:
    """This process stops: its row goes."""
    session.execute(delete(ControllerSeen).where(
        ControllerSeen.host == socket.gethostname(), ControllerSeen.pid == os.getpid()))


def controllers_seen(session: Session) -> Sequence[ControllerSeen]:
    """Every controller's row, the leader first, then the most recently seen."""
    return session.scalars(select(ControllerSeen).order_by(
        ControllerSeen.role, ControllerSeen.seen_at.desc())).all()


def wake_channel(cluster_name: str) -> str:
    """The PostgreSQL notification channel that wakes the controllers of ``cluster_name``
    (a name of letters, digits, '_', '.', '-': safe inside double quotes)."""
    return f"vcluster_wake:{cluster_name}"[:63]


def notify_wake(session: Session, cluster_name: str) -> None:
    """With PostgreSQL, wake the controllers on every host when this transaction commits
    (:mod:`vcluster.controller.pg_wake`); nothing with SQLite (one host: ``wake.sock``)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_notify(wake_channel(cluster_name), "")))
