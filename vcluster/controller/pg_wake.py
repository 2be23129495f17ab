"""Wake-ups across hosts: a hook request recorded on one host wakes the leader on another.

Why it exists: a hook hands its request to the controller on its own host (``hooks.sock``,
then ``wake.sock``). With several controllers on one PostgreSQL database that controller
may be a standby; the leader would see the request only at its next timed pass
(``controller.interval_s``). So recording a request also sends a PostgreSQL notification
(:func:`vcluster.db.notify_wake`, delivered when its transaction commits), and every
controller listens for it here and turns it into a local wake-up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from vcluster import db

log = logging.getLogger(__name__)

NOTIFY_WAIT_S = 1.0
"""How long one wait for notifications lasts (the thread checks for stop between), seconds."""


class WakeRelay(threading.Thread):
    """LISTENs on the cluster's wake channel; each notification calls ``wake``. A lost
    connection is opened again after ``retry_s``; meanwhile timed passes still run."""

    def __init__(self, url: str, cluster_name: str, wake: Callable[[], object], *,
                 retry_s: float) -> None:
        super().__init__(name="pg-wake", daemon=True)
        self.channel = db.wake_channel(cluster_name)
        self.wake = wake
        self.retry_s = retry_s
        self.stopped = threading.Event()
        self._engine = create_engine(url, poolclass=NullPool)

    @staticmethod
    def usable(url: str) -> bool:
        """PostgreSQL through psycopg 3 (whose connections wait for notifications)."""
        u = make_url(url)
        return u.get_backend_name() == "postgresql" and u.get_driver_name() == "psycopg"

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self._listen()
            except Exception as exc:  # the database restarts: listen again later
                log.warning("cannot wait for wake-ups from other hosts: %s", exc)
                self.stopped.wait(self.retry_s)

    def _listen(self) -> None:
        raw = self._engine.raw_connection()
        try:
            conn = raw.driver_connection
            assert conn is not None
            conn.autocommit = True
            conn.execute(f'LISTEN "{self.channel}"')
            while not self.stopped.is_set():
                if any(True for _ in conn.notifies(timeout=NOTIFY_WAIT_S)):
                    self.wake()
        finally:
            raw.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=NOTIFY_WAIT_S + 5)
        self._engine.dispose()
