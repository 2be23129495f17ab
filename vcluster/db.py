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
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Connection,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from vcluster import __version__
from vcluster.config import DatabaseSettings
from vcluster.errors import ConfigError, VclusterError

log = logging.getLogger(__name__)

HEAD_REVISION = "0009"
"""The newest migration; a unit test checks it equals Alembic's head."""
SQLITE_BUSY_TIMEOUT_MS = 10_000

LAUNCH_STATES = ("requested", "allocating", "booting", "up", "terminating", "terminated",
                 "failed")
OPEN_LAUNCH_STATES = ("requested", "allocating", "booting", "up", "terminating")
HOOK_KINDS = ("resume", "suspend", "resume-fail", "prolog", "epilog", "job-finished")
RESUME_REFUSED_EVENT = "hook.resume_refused"
"""Event a resume hook writes, per job, when it failed nodes because the controller was
down: the controller, once back, makes those requeued jobs eligible at once."""


class DatabaseError(VclusterError):
    """The state database cannot be opened, is not migrated, or refused a write."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use vcluster.db.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Launch(Base):
    """One VM booted (or being booted) for one Slurm node: the map's row."""

    __tablename__ = "launch"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_name: Mapped[str] = mapped_column(String(128))
    node_class: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[int | None] = mapped_column(Integer)
    vm_id: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="requested")
    ip: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """Allocation attempts made so far (temporary OpenNebula errors are retried)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    """Set by whoever changes the row (with its own clock: tests inject one)."""
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # What the VM was, for usage accounting (``vcluster usage``): None until known.
    cpus: Mapped[int | None] = mapped_column(Integer)
    """VCPUs asked of OpenNebula."""
    memory_mb: Mapped[int | None] = mapped_column(Integer)
    """Memory asked of OpenNebula, MB."""
    template: Mapped[str | None] = mapped_column(String(256))
    """The OpenNebula template (name or id) the VM was booted from."""
    host: Mapped[str | None] = mapped_column(String(256))
    """The OpenNebula host the VM last ran on (its last history record)."""
    vm_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """When the VM existed: OpenNebula's STIME (else when the allocation returned)."""
    vm_ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """When the VM ended: OpenNebula's ETIME (else when vcluster terminated it or saw it
    gone); None while it lives."""

    __table_args__ = (
        UniqueConstraint("vm_id", name="uq_launch_vm_id"),
        CheckConstraint(
            "state IN (" + ", ".join(f"'{s}'" for s in LAUNCH_STATES) + ")",
            name="ck_launch_state",
        ),
        Index("uq_launch_open_node", "node_name", unique=True,
              sqlite_where=text("ended_at IS NULL"), postgresql_where=text("ended_at IS NULL")),
        Index("ix_launch_job_id", "job_id"),
        Index("ix_launch_ended_at", "ended_at"),
    )

    @property
    def is_open(self) -> bool:
        return self.ended_at is None


class Job(Base):
    """A Slurm job vcluster has served, as last seen."""

    __tablename__ = "job"
    job_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    node_class: Mapped[str | None] = mapped_column(String(64))
    template: Mapped[str | None] = mapped_column(String(256))
    """VM template override from the job comment (``vcluster[template=NAME]``), if any."""
    user: Mapped[str] = mapped_column(String(64), default="")
    account: Mapped[str] = mapped_column(String(64), default="")
    """The job's Slurm account (``""`` where Slurm keeps no accounts)."""
    state: Mapped[str] = mapped_column(String(32), default="PENDING")
    nodes: Mapped[str] = mapped_column(Text, default="")
    """The job's nodes as a Slurm hostlist."""
    exit_code: Mapped[int | None] = mapped_column(Integer)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_job_ended_at", "ended_at"),)


class HookRequest(Base):
    """What one of Slurm's hooks asked, recorded for the controller to act on."""

    __tablename__ = "hook_request"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    nodes: Mapped[str] = mapped_column(Text, default="")
    """Hostlist the hook was given ("" for job-only hooks)."""
    job_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """Extra detail, e.g. the copied SLURM_RESUME_FILE for resume."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    handled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint(
            "kind IN (" + ", ".join(f"'{k}'" for k in HOOK_KINDS) + ")", name="ck_hook_kind"
        ),
        Index("ix_hook_request_unhandled", "handled_at"),
        Index("ix_hook_request_kind_created", "kind", "created_at"),
    )


class Event(Base):
    """Append-only log of everything vcluster did or saw happen."""

    __tablename__ = "event"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    node_name: Mapped[str | None] = mapped_column(String(128))
    job_id: Mapped[int | None] = mapped_column(Integer)
    vm_id: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_event_at", "at"), Index("ix_event_node", "node_name"))


DRAIN_KINDS = ("class", "node")


class Drain(Base):
    """An admin's ``vcluster drain``: no new VMs for a node class or one node until
    ``vcluster undrain``; the controller's plan keeps Slurm's DRAIN flag in line with it."""

    __tablename__ = "drain"
    target: Mapped[str] = mapped_column(String(128), primary_key=True)
    """The node class's name or the node's name."""
    kind: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(Text, default="")
    by: Mapped[str] = mapped_column(String(64), default="")
    """Who drained it (the login name of the admin)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint("kind IN (" + ", ".join(f"'{k}'" for k in DRAIN_KINDS) + ")",
                        name="ck_drain_kind"),
    )


class ClassBackoff(Base):
    """A node class's template OpenNebula could not place (no host with room, a quota): no
    new VM from it until ``until``, then one probe VM; the plan writes and clears it
    (:mod:`vcluster.controller.backoff`)."""

    __tablename__ = "class_backoff"
    node_class: Mapped[str] = mapped_column(String(64), primary_key=True)
    template: Mapped[str] = mapped_column(String(256), primary_key=True)
    level: Mapped[int] = mapped_column(Integer)
    """How many back-offs in a row (each longer than the last) without a placement."""
    cause: Mapped[str] = mapped_column(String(16))
    """``placement`` (oned's scheduler left the VM PENDING) or ``quota`` (allocation refused)."""
    reason: Mapped[str] = mapped_column(Text, default="")
    since: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    until: Mapped[datetime] = mapped_column(UTCDateTime)
    """When the next probe VM may be booted."""


class JoinToken(Base):
    """A one-time token a worker VM redeems for the munge key (:mod:`vcluster.join_tokens`).

    Only the token's SHA-256 is kept: a copy of the database does not let anyone redeem."""

    __tablename__ = "join_token"
    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    launch_id: Mapped[int | None] = mapped_column(Integer)
    """The boot attempt it belongs to; None for a VM booted without a node yet (a standby
    VM, a VM booted at allocation), which ``vm_id`` names once allocated."""
    vm_id: Mapped[int | None] = mapped_column(Integer)
    node_name: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    redeemed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    redeemed_from: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_join_token_launch", "launch_id"),)


SUSPENSION_STATES = ("suspending", "stopping", "stopped", "resuming")


class Suspension(Base):
    """A VM vcluster stopped (or is stopping, or bringing back) because Slurm suspended its
    job: what vcluster asked for, so that its STOPPED VM is not an ``on_vm_event``. One row
    per node; ``by_job`` is the job vcluster suspended it for (None: Slurm or an admin did)."""

    __tablename__ = "suspension"
    node_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    job_id: Mapped[int] = mapped_column(Integer)
    vm_id: Mapped[int] = mapped_column(Integer)
    by_job: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="suspending")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint("state IN (" + ", ".join(f"'{s}'" for s in SUSPENSION_STATES) + ")",
                        name="ck_suspension_state"),
    )


RESERVATION_STATES = ("accepted", "booting", "ready", "ended", "cancelled", "refused")


class Reservation(Base):
    """An advance reservation (``vcluster reserve``): N nodes of a class from ``start`` to
    ``end``, admitted against the cloud's capacity; its VMs are booted ``lead_s`` ahead
    (:mod:`vcluster.reserve`, :mod:`vcluster.controller.reserve_plan`)."""

    __tablename__ = "reservation"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    slurm_name: Mapped[str] = mapped_column(String(64), default="")
    """The Slurm reservation's name (``sbatch --reservation=``)."""
    node_class: Mapped[str] = mapped_column(String(64))
    node_count: Mapped[int] = mapped_column(Integer)
    nodes: Mapped[str] = mapped_column(Text, default="")
    """The reserved nodes as a Slurm hostlist (Slurm's choice)."""
    cpu_pct: Mapped[int] = mapped_column(Integer)
    """OpenNebula CPU (percent of a host core) one VM holds."""
    memory_mb: Mapped[int] = mapped_column(Integer)
    """Memory one VM holds, MB."""
    users: Mapped[str] = mapped_column(Text, default="")
    start: Mapped[datetime] = mapped_column(UTCDateTime)
    end: Mapped[datetime] = mapped_column(UTCDateTime)
    lead_s: Mapped[float] = mapped_column(Float)
    """How long before ``start`` its VMs are booted (from measured boot times)."""
    state: Mapped[str] = mapped_column(String(16), default="accepted")
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    powered_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ready_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("state IN (" + ", ".join(f"'{s}'" for s in RESERVATION_STATES) + ")",
                        name="ck_reservation_state"),
        Index("ix_reservation_end", "end"),
    )


class Heartbeat(Base):
    """The controller's liveness: one row (id 1), rewritten every pass."""

    __tablename__ = "heartbeat"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    pid: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(String(256))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    version: Mapped[str] = mapped_column(String(32))

    __table_args__ = (CheckConstraint("id = 1", name="ck_heartbeat_single_row"),)


class ControllerSeen(Base):
    """A controller process, leading or standing by, as it last said (several may run
    against one PostgreSQL database; :mod:`vcluster.controller.leader`)."""

    __tablename__ = "controller"
    host: Mapped[str] = mapped_column(String(256), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    role: Mapped[str] = mapped_column(String(8))
    since: Mapped[datetime] = mapped_column(UTCDateTime)
    """When it took its role (became leader, or started standing by)."""
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    version: Mapped[str] = mapped_column(String(32))

    __table_args__ = (CheckConstraint("role IN ('leader', 'standby')",
                                      name="ck_controller_role"),)


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
