"""The controller's liveness where every user can read it, so that ``fsub`` can say it is down.

The state database and ``hooks.sock`` belong to the controller's user (modes 0750 and 0600):
an ordinary user's ``fsub`` can read neither. So the controller also keeps a small
world-readable JSON file, ``controller.status_file``, rewritten on every heartbeat and marked
stopped when the controller stops: when it last beat, on which host, its pid and version.
Nothing in it is secret. fsub reads it before submitting and, if the controller is stopped or
its heartbeat stale, says so in one line (the job is still submitted: it waits in the queue
and its VMs boot once the controller is back).

Standard library only: fsub imports this on every submission.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class ControllerStatus:
    """What the status file says."""

    running: bool
    at: datetime
    """Last heartbeat (running) or when it stopped."""
    host: str
    pid: int
    version: str


def write(path: str, status: ControllerStatus) -> None:
    """Replace the file atomically with ``status``, mode 0644 (its directory is made 0755)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    body = json.dumps({"running": status.running, "at": status.at.isoformat(),
                       "host": status.host, "pid": status.pid, "version": status.version})
    fd, tmp = tempfile.mkstemp(prefix=".status-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read(path: str) -> ControllerStatus | None:
    """The status the file holds; None if it is missing. Raises OSError if it cannot be read
    (e.g. permissions) and ValueError if it is not a status file."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not a vcluster status file: {exc}") from exc
    try:
        at = datetime.fromisoformat(str(raw["at"]))
        return ControllerStatus(running=bool(raw["running"]), at=at.astimezone(UTC),
                                host=str(raw["host"]), pid=int(raw["pid"]),
                                version=str(raw["version"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is not a vcluster status file: {exc}") from exc


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def down_reason(path: str, stale_s: float, now: datetime | None = None) -> str | None:
    """Why the controller is not running, in a few words; None if it runs or nothing can be
    said (the file cannot be read: not knowing is not "down")."""
    try:
        status = read(path)
    except (OSError, ValueError):
        return None
    if status is None:
        if not os.path.isdir(os.path.dirname(path) or "."):
            return None
        return "it has never run here (no status file)"
    age_s = ((now or datetime.now(UTC)) - status.at).total_seconds()
    if not status.running:
        return f"it was stopped {_ago(age_s)} on {status.host}"
    if age_s > stale_s:
        return f"its last heartbeat was {_ago(age_s)} on {status.host} (pid {status.pid})"
    return None
