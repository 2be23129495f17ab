"""The controller's end of Slurm's hooks: take each request on ``hooks.sock``, record it in
the database, answer.

Why it exists: the hook programs must cost tens of milliseconds of CPU, so they import
nothing heavy and hand their request here (:mod:`vcluster.hook_wire`). The controller already
holds the database, Slurm and the config, so it runs the very same steps a hook ran itself
(:mod:`vcluster.hook_steps`: validate, check the heartbeat, record, wake) and answers once the
request is in the database: nothing is lost if it stops after that.

The socket is mode 0600 and each peer's credentials are checked (root or the controller's own
user): the programs slurmctld runs are root's. Requests are validated like the hooks' own
input (they are input from outside the process).

The prolog is answered when the job's nodes are up. The prologs of all jobs starting at once
share one wait (:class:`~vcluster.controller.prolog_wait.NodeWaits`): one ``scontrol show
node`` for every node anyone waits for, every :data:`~vcluster.hook_steps.PROLOG_POLL_S`, and
one database read for launches the controller gave up, instead of one poll loop per hook
process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from vcluster import db, wake
from vcluster.config import Config
from vcluster.controller.prolog_wait import NodeWaits, WaitSlurm
from vcluster.errors import UserInputError, VclusterError
from vcluster.hook_steps import (
    HookEnv,
    HookSlurm,
    do_epilog,
    do_job_finished,
    do_prolog,
    do_resume,
    do_resume_fail,
    do_suspend,
    parse_resume_json,
)
from vcluster.hook_wire import EXIT_BAD_INPUT, EXIT_OK, PROTOCOL_VERSION, LineReader, encode
from vcluster.hooks import exit_code_of
from vcluster.metrics import Metrics
from vcluster.paths import hook_socket_path

__all__ = ["REQUEST_READ_S", "HookServer", "NodeWaits", "ServerSlurm", "WaitSlurm", "peer_uid"]

log = logging.getLogger("vcluster.hooks")

REQUEST_READ_S = 10.0
"""How long a connected hook has to send its request, seconds."""
REFUSE_READ_S = 1.0
"""How long the server reads a refused peer's request before answering it, seconds."""
_JOB_ENV = frozenset({"SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_JOB_EXIT_CODE"})
_KINDS = frozenset(db.HOOK_KINDS)


class ServerSlurm(HookSlurm, WaitSlurm, Protocol):
    """The hooks' steps and the shared wait, together."""


# --- the socket ------------------------------------------------------------------------------


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end (SO_PEERCRED: pid, uid, gid)."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", raw)[1])


def _hung_up(conn: socket.socket) -> Callable[[], bool]:
    def gone() -> bool:
        try:
            readable, _, _ = select.select([conn], [], [], 0)
            return bool(readable) and conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (OSError, ValueError):
            return True
    return gone


def _text(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise UserInputError(f"malformed request: {what} is not a string")


class HookServer:
    """Listens on ``<state_dir>/hooks.sock``; one thread per connected hook."""

    def __init__(self, config: Config, sessions: sessionmaker[Session], slurm: ServerSlurm,
                 *, program_dir: str = "", wake_controller: Callable[[str], bool] = wake.send_wake,
                 waits: NodeWaits | None = None, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.sessions = sessions
        self.slurm = slurm
        self.program_dir = program_dir
        self.wake_controller = wake_controller
        self.waits = waits or NodeWaits(slurm, sessions)
        self.path = hook_socket_path(config.controller.state_dir)
        self.sock: socket.socket | None = None
        self.stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.allowed_uids = {0, os.getuid()}

    def start(self) -> None:
        Path(self.config.controller.state_dir).mkdir(parents=True, exist_ok=True)
        try:
            os.unlink(self.path)  # a stale socket left by a previous controller
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # 0600 from the start: no moment open to others
        try:
            sock.bind(self.path)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(256)
        self.sock = sock
        self._thread = threading.Thread(target=self._accept, name="hook-server", daemon=True)
        self._thread.start()
        log.info("taking Slurm's hook requests on %s", self.path)

    def stop(self) -> None:
        """Take no more requests (those in progress finish, or end with the process)."""
        self.stopped.set()
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _accept(self) -> None:
        assert self.sock is not None
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                if self.stopped.is_set():
                    return
                time.sleep(0.05)
                continue
            threading.Thread(target=self.serve, args=(conn,), name="hook",
                             daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        """Read one request from ``conn``, run it, answer, close."""
        with conn:
            def send(message: dict[str, Any]) -> None:
                try:
                    conn.sendall(encode(message))
                except OSError as exc:  # the hook is gone; what it asked is recorded
                    log.debug("cannot answer the hook: %s", exc)

            try:
                uid = peer_uid(conn)
                if uid not in self.allowed_uids:
                    log.warning("refused a hook request from uid %d on %s", uid, self.path)
                    # read the request first (bounded): a connection closed while its peer
                    # is still sending ends in EPIPE there, not in this refusal
                    with contextlib.suppress(OSError, ValueError):
                        LineReader(conn).read(time.monotonic() + REFUSE_READ_S)
                    send({"code": EXIT_BAD_INPUT, "message": f"uid {uid} may not use "
                          f"{self.path}; Slurm's programs run as root"})
                    return
                request = LineReader(conn).read(time.monotonic() + REQUEST_READ_S)
            except (OSError, ValueError) as exc:
                log.warning("unreadable hook request on %s: %s", self.path, exc)
                send({"code": EXIT_BAD_INPUT, "message": f"unreadable request: {exc}"})
                return
            if request is None:
                return
            code, message = self.handle(request, send, gone=_hung_up(conn))
            send({"code": code, "message": message})

    def handle(self, request: dict[str, Any], send: Callable[[dict[str, Any]], None], *,
               gone: Callable[[], bool] = lambda: False) -> tuple[int, str]:
        """Run one hook's request; ``send`` gets ``{"recorded": id}`` once it is in the
        database. Returns the hook's exit code and message."""
        started = time.monotonic()
        kind = request.get("kind")
        if self.metrics is not None:
            self.metrics.hook_request(str(kind) if kind in _KINDS else "malformed")
        try:
            if request.get("v") != PROTOCOL_VERSION or kind not in _KINDS:
                raise UserInputError(f"malformed request: version {request.get('v')!r}, "
                                     f"kind {kind!r}")
            code = self._run(str(kind), request, send, gone)
            message = ""
        except Exception as exc:  # every request gets a defined answer and a log line
            if not isinstance(exc, VclusterError):
                log.exception("hook %s failed unexpectedly", kind)
            code, message = exit_code_of(exc)
        level = logging.INFO if code == EXIT_OK else logging.WARNING
        log.log(level, "hook %s served in %.3f s (exit %d)%s", kind, time.monotonic() - started,
                code, f": {message}" if message else "")
        return code, message

    def _run(self, kind: str, request: dict[str, Any],
             send: Callable[[dict[str, Any]], None], gone: Callable[[], bool]) -> int:
        job_env = request.get("env") or {}
        if not isinstance(job_env, dict) or not set(job_env) <= _JOB_ENV:
            raise UserInputError("malformed request: env")
        arg = _text(request.get("arg"), "arg")
        job_id, nodelist, exit_code = (_text(job_env.get(k), k) for k in (
            "SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_JOB_EXIT_CODE"))
        controller = self.config.controller
        wait_s = self.config.slurm.command_timeout_s * 2 + (
            controller.prolog_wait_s if kind == "prolog" else 0.0)

        def waits(env: HookEnv, job: int, nodes: Sequence[str]) -> tuple[float, list[str]]:
            return self.waits.wait(env, job, nodes, gone=gone)

        runs = request.get("runs")
        hook_runs = None
        if isinstance(runs, list) and "strigger" in runs:
            def hook_runs(argv: list[str]) -> None:
                send({"run": argv, "env": {"SLURM_CONF": self.config.slurm.conf},
                      "timeout_s": self.config.slurm.command_timeout_s})

        env = HookEnv(config=self.config, sessions=self.sessions, slurm=self.slurm,
                      program_dir=self.program_dir, wake=self.wake_controller,
                      recorded=lambda rid: send({"recorded": rid, "wait_s": wait_s}),
                      wait_nodes=waits, hook_runs=hook_runs)
        match kind:
            case "resume":
                raw = _text(request.get("resume"), "resume")
                path = _text(request.get("resume_path"), "resume_path") or "SLURM_RESUME_FILE"
                return do_resume(env, arg, parse_resume_json(raw, path) if raw is not None
                                 else {})
            case "suspend":
                return do_suspend(env, arg)
            case "resume-fail":
                return do_resume_fail(env, arg)
            case "job-finished":
                return do_job_finished(env, arg)
            case "prolog":
                return do_prolog(env, job_id, nodelist)
            case "epilog":
                return do_epilog(env, job_id, nodelist, exit_code)
        raise UserInputError(f"malformed request: kind {kind!r}")
