"""The state database's tables, as SQLAlchemy declarative models, with their states.

Why a module of its own: :mod:`vcluster.db` opens, migrates and writes the database; these
are the shapes it stores (the Alembic migrations in ``vcluster/migrations`` own the schema,
and a unit test checks these models against it). Import them from :mod:`vcluster.db`, which
re-exports every public name here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

LAUNCH_STATES = ("requested", "allocating", "booting", "up", "terminating", "terminated",
                 "failed")
OPEN_LAUNCH_STATES = ("requested", "allocating", "booting", "up", "terminating")
HOOK_KINDS = ("resume", "suspend", "resume-fail", "prolog", "epilog", "job-finished")
RESUME_REFUSED_EVENT = "hook.resume_refused"
"""Event a resume hook writes, per job, when it failed nodes because the controller was
down: the controller, once back, makes those requeued jobs eligible at once."""


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
