"""Waking the controller: one byte on a UNIX datagram socket in ``controller.state_dir``.

Why it exists: Slurm's hooks record a request in the database and must return at once; the
controller should act on it now, not at its next periodic pass. A datagram socket is the
smallest thing that does this: the controller binds it and waits on it with a timeout (its
periodic pass); a hook sends one byte without blocking and ignores every error (no
controller listening, queue full), because the periodic pass catches anything missed.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
from pathlib import Path

log = logging.getLogger(__name__)

SOCKET_NAME = "wake.sock"
_MAX_DRAIN = 1024


def socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, SOCKET_NAME)


def send_wake(state_dir: str) -> bool:
    """Nudge the controller; never blocks, never raises. True if the byte was queued."""
    path = socket_path(state_dir)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(b"w", path)
        return True
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN):
            log.warning("cannot wake the controller at %s: %s", path, exc)
        else:
            log.debug("controller not listening at %s (%s)", path, exc.strerror)
        return False


class WakeListener:
    """The controller's end: bind the socket, wait for a nudge or a timeout."""

    def __init__(self, state_dir: str) -> None:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        self.path = socket_path(state_dir)
        try:
            os.unlink(self.path)  # a stale socket left by a previous controller
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        # Hooks may run as SlurmUser while the controller runs as root; a wake-up grants
        # nothing but an earlier pass, so anyone local may send one.
        os.chmod(self.path, 0o666)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def wait(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s``; True if woken. Pending nudges are drained (coalesced)."""
        try:
            ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout_s))
        except InterruptedError:
            return False
        if not ready:
            return False
        self.drain()
        return True

    def drain(self) -> int:
        count = 0
        while count < _MAX_DRAIN:
            try:
                self.sock.recv(64)
            except (BlockingIOError, InterruptedError):
                break
            count += 1
        return count

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
