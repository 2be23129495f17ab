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
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
    text,
)
from sqlalchemy import select as select  # callers write db.select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

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
from vcluster.db_records import (
    CONTROLLER_FORGET_S,
    RECOVERY_WINDOW_S,
    VM_LOST_EVENT,
    VM_RECOVERED_EVENT,
    beat,
    controllers_seen,
    forget_controller,
    heartbeat,
    notify_wake,
    open_launches,
    record_event,
    record_recovery,
    see_controller,
    unhandled_requests,
    wake_channel,
)
from vcluster.errors import ConfigError, VclusterError

__all__ = [  # the models and states of vcluster.db_models and the records of db_records
    # (import them from here)
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
