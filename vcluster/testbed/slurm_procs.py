"""Processes of the local Slurm testbed: start daemons, find them again, install packages.

The testbed starts self-daemonizing programs (munged, slurmctld, slurmd) and must later find
and stop exactly those: a PID counts as ours only if it is alive and its command line names
one of this instance's files, so a recycled PID or another instance's daemon is never touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from vcluster.errors import VclusterError

PACKAGES = {"slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client",
            "munged": "munge"}
"""Command -> the Debian package that provides it."""
STOP_TIMEOUT_S = 10.0


class TestbedError(VclusterError):
    """The local Slurm testbed could not be started, stopped or read."""

    __test__ = False


Say = Callable[[str], None]


def quiet(_: str) -> None:
    """A ``say`` that prints nothing."""


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def is_ours(pid: int | None, marker: str) -> bool:
    """True if ``pid`` is a live process whose command line contains ``marker``."""
    if pid is None or pid <= 1:
        return False
    line = cmdline(pid)
    if not line or marker not in line:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


DAEMONS = ("slurmctld", "slurmd", "munged")


def pids_with(marker: str) -> list[int]:
    """Live Slurm/munge daemons whose command line contains ``marker`` (a path of ours)."""
    return [int(p) for p in os.listdir("/proc")
            if p.isdigit() and is_ours(int(p), marker)
            and os.path.basename(cmdline(int(p)).split(" ")[0]) in DAEMONS]


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, hint: str,
              interval_s: float = 0.2) -> float:
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise TestbedError(f"{what} not ready after {timeout_s:g} s; {hint}")
        time.sleep(interval_s)


def spawn_daemon(argv: Sequence[str], log: Path, env: dict[str, str],
                  timeout_s: float = 15.0) -> None:
    """Start a self-daemonizing program: stdin /dev/null, output appended to ``log``."""
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except FileNotFoundError:
            raise TestbedError(f"`{argv[0]}` not found; install it (deploy/install-deps.sh)"
                               ) from None
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise TestbedError(f"`{argv[0]}` did not daemonize within {timeout_s:g} s; "
                               f"see {log}") from None
    if code != 0:
        raise TestbedError(f"`{' '.join(argv)}` exited {code}; see {log}")


def ensure_packages(say: Say = quiet) -> list[str]:
    """Install the Debian Slurm and munge packages whose commands are missing."""
    missing = sorted({pkg for cmd, pkg in PACKAGES.items() if shutil.which(cmd) is None})
    if not missing:
        return []
    say(f"installing {' '.join(missing)} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    for argv in (install,) if shutil.which("slurmctld") else (["apt-get", "update", "-q"],
                                                               install):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900,
                                  check=False, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TestbedError(f"`{' '.join(argv)}` failed: {exc}") from exc
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise TestbedError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {last}")
    return missing


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
