"""Which controller leads: with PostgreSQL several may run, exactly one acts.

Why it exists: a controller is a single point of failure, so a site may run one on each of
two hosts against one PostgreSQL database. Only one may boot and terminate VMs, or two
would launch a VM each for one node. The leader holds a PostgreSQL session-level advisory
lock (``pg_try_advisory_lock``) on a session of its own, kept for as long as it leads; the
others stand by (they serve Slurm's hooks on their host, recording requests for the
leader) and try to take the lock every ``controller.leader_poll_s``.

- A leader whose process dies loses its session at once (the server sees the socket
  close), so a standby leads within ``leader_poll_s`` and starts its first pass.
- A leader that hangs (its process stopped, its host frozen, its database writes failing)
  writes no heartbeat: a standby that sees the leader's heartbeat row unchanged for
  ``controller.leader_lease_s`` (by its own clock: no clock skew between hosts) ends the
  leader's sessions (``pg_terminate_backend``: the lock's, and every other one named after
  it by :func:`name_sessions`, so that a transaction it left open blocks nobody) and takes
  the lead at once.
- A leader whose host or network is lost silently keeps its session until TCP keepalives
  give up: set on the lock's session, on both ends, to give up within
  ``controller.leader_lease_s`` (the server's side, two thirds of it: the lock is freed then;
  the leader's side, a third: it learns first that it lost the lead).
- Fencing: the leader checks its lock session answers before each step it acts on
  (:meth:`AdvisoryLock.leads`); one that cannot say so stops acting and stands by. A step
  cut off by a lost lead was recorded before it reached OpenNebula (launch rows first),
  and its VM carries the ``VCLUSTER_*`` tags: the new leader adopts it instead of
  booting another (the plan's ``AdoptVM``), and the open-launch-per-node constraint
  forbids a second launch.

SQLite stays single-controller: its file is on one host, where the ``controller.lock``
flock already allows one controller; :class:`SoleLeader` always leads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

DEPOSE_WAIT_S = 2.0
"""How long a standby that ended a hung leader's session waits for it to free the lock,
seconds (a backend exits in milliseconds)."""


class Leadership(Protocol):
    """Whether this controller leads, and taking the lead when it is free."""

    shared: bool
    """Several controllers may run (the database is a server's)."""
    leading: bool
    """The last answer of :meth:`lead` or :meth:`leads` (read by the heartbeat thread)."""

    def lead(self) -> bool:
        """Keep the lead, or take it if it is free; whether this controller leads now."""
        ...

    def leads(self) -> bool:
        """Whether this controller still leads (the fence before each step it acts on)."""
        ...

    def depose(self) -> bool:
        """End the leader's lock session (it hangs), and its other sessions (named as in
        :func:`name_sessions`: a transaction it left open must not block the new leader's
        writes); whether the lock session was ended."""
        ...

    def holds_in(self, session: Session) -> bool:
        """Whether the lock is still this controller's, asked on another of its sessions
        (the heartbeat thread's: a leader that hung and was deposed must not write the
        heartbeat when it wakes up)."""
        ...

    def close(self) -> None:
        """Give the lead up (a standby takes it at its next try)."""
        ...


class SoleLeader:
    """SQLite: one controller, kept alone by its state directory's flock; it always leads."""

    shared = False
    leading = True

    def lead(self) -> bool:
        return True

    def leads(self) -> bool:
        return True

    def depose(self) -> bool:
        return False

    def holds_in(self, session: Session) -> bool:
        return True

    def close(self) -> None:
        pass


class HeartbeatWatch:
    """How long the leader's heartbeat row has stayed the same, by this host's clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last: object = _NEVER
        self._since = 0.0

    def silent_for_s(self, beat: object) -> float:
        """``beat``: the row as read now (any comparable value); seconds it has not changed."""
        now = self.clock()
        if beat != self._last:
            self._last, self._since = beat, now
        return now - self._since

    def reset(self) -> None:
        self._last = _NEVER


_NEVER = object()


def lock_key(cluster_name: str) -> int:
    """The advisory lock's key: a signed 64-bit number from the cluster's name, so that
    clusters sharing one database server each have their own leader."""
    digest = hashlib.sha256(f"vcluster-leader:{cluster_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def keepalive_settings(lease_s: float) -> tuple[dict[str, Any], dict[str, int]]:
    """libpq's connection parameters (the leader's end) and the server's session settings
    for a lock session that gives up within ``lease_s`` of silence (see the module doc)."""
    third = max(1, int(lease_s / 3))
    client = {"keepalives": 1, "keepalives_idle": third, "keepalives_interval": 1,
              "keepalives_count": 2, "tcp_user_timeout": third * 1000,
              "connect_timeout": max(2, third)}
    server = {"tcp_keepalives_idle": third, "tcp_keepalives_interval": max(1, third // 3),
              "tcp_keepalives_count": 3, "tcp_user_timeout": 2 * third * 1000}
    return client, server


class AdvisoryLock:
    """The lead as a PostgreSQL advisory lock held on a session of its own."""

    shared = True

    def __init__(self, url: str, cluster_name: str, *, lease_s: float) -> None:
        self.key = lock_key(cluster_name)
        client, self._server_settings = keepalive_settings(lease_s)
        if make_url(url).get_backend_name() != "postgresql":
            client = {}
        if client:
            client["application_name"] = session_name()
        self._engine = create_engine(url, poolclass=NullPool, connect_args=client)
        self._conn: Connection | None = None
        self._backend_pid: int | None = None
        self.leading = False

    def lead(self) -> bool:
        if self.leading:
            return self.leads()
        try:
            conn = self._session()
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                    {"key": self.key}).scalar())
            self._backend_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        except SQLAlchemyError as exc:
            log.warning("cannot try to take the lead: %s", _first_line(exc))
            self._drop()
            return False
        self.leading = got
        return got

    def leads(self) -> bool:
        if not self.leading or self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1")).scalar()
        except SQLAlchemyError as exc:
            log.error("lost the lead: its database session failed (%s); standing by",
                      _first_line(exc))
            self._drop()
            return False
        return True

    def depose(self) -> bool:
        try:
            ended = self._session().execute(text(
                f"WITH holder AS (SELECT pid FROM pg_locks WHERE {_HOLDER}), "
                "named AS (SELECT a.pid, a.application_name FROM pg_stat_activity a "
                "JOIN holder h ON a.pid = h.pid) "
                "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a, named n "
                "WHERE a.pid <> pg_backend_pid() AND (a.pid = n.pid OR ("
                "n.application_name LIKE :prefix AND a.application_name = "
                "n.application_name))"),
                {**self._lock_ids(), "prefix": f"{SESSION_NAME_PREFIX}%"}).scalars().all()
        except SQLAlchemyError as exc:
            log.warning("cannot end the hung leader's session: %s", _first_line(exc))
            self._drop()
            return False
        if any(ended):
            self._wait_free()
        return any(ended)

    def _wait_free(self) -> None:
        """Wait (a little) until the ended session has left the lock, so that it can be
        taken at once."""
        deadline = time.monotonic() + DEPOSE_WAIT_S
        while time.monotonic() < deadline:
            held = self._session().execute(text(f"SELECT count(*) FROM pg_locks WHERE "
                                                f"{_HOLDER}"), self._lock_ids()).scalar()
            if not held:
                return
            time.sleep(0.05)

    def holds_in(self, session: Session) -> bool:
        pid = self._backend_pid
        if not self.leading or pid is None:
            return False
        return bool(session.execute(text(f"SELECT count(*) FROM pg_locks WHERE {_HOLDER} "
                                         "AND pid = :pid"),
                                    {**self._lock_ids(), "pid": pid}).scalar())

    def _lock_ids(self) -> dict[str, int]:
        """The key as pg_locks shows a bigint advisory lock: classid, objid (unsigned)."""
        unsigned = self.key & 0xFFFF_FFFF_FFFF_FFFF
        return {"high": unsigned >> 32, "low": unsigned & 0xFFFF_FFFF}

    def close(self) -> None:
        if self._conn is not None and self.leading:
            try:  # at once: closing the session frees it too, but a moment later
                self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            except SQLAlchemyError:
                pass
        self._drop()
        self._engine.dispose()

    def _session(self) -> Connection:
        if self._conn is None:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                for name, value in self._server_settings.items():
                    conn.execute(text(f"SET {name} = {int(value)}"))
            except SQLAlchemyError:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        """Forget the lock's session (closing it frees the lock if the server still has it)."""
        self.leading = False
        self._backend_pid = None
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.invalidate()
            conn.close()
        except SQLAlchemyError:
            pass


_HOLDER = ("locktype = 'advisory' AND granted AND classid::bigint = :high AND objid::bigint "
           "= :low AND objsubid = 1 AND database = (SELECT oid FROM pg_database WHERE datname "
           "= current_database())")
"""Rows of pg_locks of the holder of the lock of ``_lock_ids()``."""


SESSION_NAME_PREFIX = "vcluster-controller "


def session_name() -> str:
    """The ``application_name`` of this controller's database sessions (host and pid)."""
    return f"{SESSION_NAME_PREFIX}{socket.gethostname()}:{os.getpid()}"[:63]


def name_sessions(engine: Engine) -> None:
    """Name every session ``engine`` opens after this controller (PostgreSQL only), so that
    a standby that deposes it when it hangs ends all of them."""
    if engine.dialect.name != "postgresql":
        return
    name = session_name()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("SELECT set_config('application_name', %s, false)", (name,))
        cursor.close()
        dbapi_conn.commit()

    engine.dispose()  # sessions opened before (the schema's check) are not named: close them


def leadership_for(url: str, cluster_name: str, *, lease_s: float) -> Leadership:
    """An advisory lock for a database server, :class:`SoleLeader` for SQLite."""
    if make_url(url).get_backend_name() == "sqlite":
        return SoleLeader()
    return AdvisoryLock(url, cluster_name, lease_s=lease_s)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
