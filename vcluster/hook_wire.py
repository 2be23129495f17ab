"""The wire between Slurm's hook programs and the controller: one request, one or two answers.

Why it exists: a hook used to open the database itself, and importing SQLAlchemy cost each
hook about 0.3 s of CPU on every job's critical path. Now the hook hands its request to the
controller over a UNIX stream socket (``<state_dir>/hooks.sock``, mode 0600: root and the
controller's user only) and the controller records it in the database before it answers.
This module is the framing both sides share; it imports only the standard library.

Framing: JSON objects, one per line (UTF-8, at most :data:`MAX_LINE_BYTES`). The hook sends
one request; the controller answers ``{"recorded": ID, "wait_s": S}`` once the request is in
the database (only for requests it records), then ``{"code": N, "message": "..."}`` when the
hook is done (the prolog's comes when the job's nodes are up, within ``wait_s``). Exit codes
are the hooks' own (see :mod:`vcluster.hooks`).
"""

from __future__ import annotations

import errno
import json
import socket
import time

TYPE_CHECKING = False  # typing costs the hook programs 2 ms of import; mypy reads it
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

EXIT_OK, EXIT_BAD_INPUT, EXIT_STALE, EXIT_CONFIG, EXIT_FAILED = 0, 2, 3, 4, 5
"""The hooks' exit codes: done, invalid input, controller not running, configuration
error, other failure (database, Slurm)."""
PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 8 * 1024 * 1024
"""Largest request or answer line: a SLURM_RESUME_FILE for thousands of jobs fits."""
RECORD_ANSWER_S = 10.0
"""How long a hook waits for the controller to record its request, seconds: a controller
that has not answered by then is treated like one whose heartbeat is stale."""
FINAL_ANSWER_MARGIN_S = 10.0
"""Added to the ``wait_s`` the controller announces, for the final answer, seconds."""
AFTER_FAILED_SEND_S = 1.0
"""How long a hook whose request could not be sent whole reads for what the controller
said before closing (its refusal is already in the socket's buffer), seconds."""


class NotListening(Exception):
    """No controller takes requests on the socket (absent, refused, or not ours to use)."""


class NoAnswer(Exception):
    """The controller did not record the request within the bound (or hung up first)."""

    def __init__(self, message: str, *, hung_up: bool = False) -> None:
        super().__init__(message)
        self.hung_up = hung_up


class AnswerLost(Exception):
    """The request was recorded, but the final answer never came (the controller stopped)."""

    def __init__(self, message: str, recorded_id: int) -> None:
        super().__init__(message)
        self.recorded_id = recorded_id


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


class LineReader:
    """Reads newline-terminated JSON objects from a socket, each before a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def read(self, deadline: float) -> dict[str, Any] | None:
        """The next object; None if the peer closed first. Raises TimeoutError at the
        deadline and ValueError on a line that is too long or not a JSON object."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_LINE_BYTES:
                raise ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise TimeoutError("no answer in time")
            self.sock.settimeout(left_s)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError("no answer in time") from None
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        value = json.loads(line.decode("utf-8"))
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value


def ask(path: str, request: dict[str, Any], *,
        record_answer_s: float = RECORD_ANSWER_S,
        on_run: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Send ``request`` to the controller at ``path``; return its final answer.

    A request that offers ``"runs": ["strigger"]`` may get, between the two answers,
    ``{"run": ARGV, "env": {...}, "timeout_s": S}`` lines: commands for the hook to run in its
    own process (``on_run`` runs each; the final answer's deadline is not moved).

    Raises :class:`NotListening` if nobody takes the connection, :class:`NoAnswer` if the
    request was not recorded within ``record_answer_s``, :class:`AnswerLost` if it was but
    the final answer did not come within the announced ``wait_s`` (plus a margin).
    """
    started = time.monotonic()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(record_answer_s)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise NotListening(f"no controller socket at {path}") from None
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.EACCES, errno.EPERM, errno.ENOTSOCK):
                raise NotListening(f"cannot connect to {path}: {exc.strerror}") from None
            if isinstance(exc, TimeoutError):  # the listen queue is full: a hung controller
                raise NoAnswer(f"the controller did not take the connection on {path} "
                               f"within {record_answer_s:g} s") from None
            raise NotListening(f"cannot connect to {path}: {exc}") from None
        reader = LineReader(sock)
        silent = f"no answer within {record_answer_s:g} s on {path}"
        try:
            sock.sendall(encode({"v": PROTOCOL_VERSION, **request}))
        except TimeoutError:  # not taking the request: as not answering it
            raise NoAnswer(silent) from None
        except OSError as exc:  # a refusal may have come before the end of the request
            return _answer_after_failed_send(reader, path, exc)
        try:
            first = reader.read(started + record_answer_s)
        except TimeoutError:
            raise NoAnswer(silent) from None
        except (OSError, ValueError) as exc:
            raise NoAnswer(f"the controller hung up on {path}: {exc}", hung_up=True) from None
        if first is None:
            raise NoAnswer(f"the controller hung up on {path} before recording the request",
                           hung_up=True)
        if "recorded" not in first:
            return first
        recorded_id = int(first["recorded"])
        deadline = time.monotonic() + float(first.get("wait_s", 0.0)) + FINAL_ANSWER_MARGIN_S
        while True:
            try:
                final = reader.read(deadline)
            except (OSError, ValueError) as exc:  # TimeoutError is an OSError
                raise AnswerLost(f"request {recorded_id} recorded, then no answer: {exc}",
                                 recorded_id) from None
            if final is None:
                raise AnswerLost(f"request {recorded_id} recorded, then the controller hung "
                                 "up", recorded_id)
            if "run" not in final or "code" in final:
                return final
            if on_run is not None:
                on_run(final)
    finally:
        sock.close()


def _answer_after_failed_send(reader: LineReader, path: str, error: OSError) -> dict[str, Any]:
    """The controller closed the connection while the request was being sent: what it
    said before closing (a refusal, which is final) is still to be read; without one,
    the controller hung up before recording anything."""
    try:
        said = reader.read(time.monotonic() + AFTER_FAILED_SEND_S)
    except (OSError, ValueError):
        said = None
    if said is None or "recorded" in said or "code" not in said:
        raise NoAnswer(f"the controller hung up on {path}: {error}", hung_up=True)
    return said
