"""Log lines to journald (its native protocol) or syslog (``/dev/log``), files as the fallback.

Why it exists: a site's admins read their daemons' logs with ``journalctl`` or in their
syslog pipeline, filtered by program and by what a line is about. So every vcluster program
logs under its own identifier (``vcluster-controller``, ``vcluster-prolog``,
``vcluster-resume``, ...) with structured fields ``NODE``, ``JOB`` and ``VM_ID`` where it
knows them (``journalctl -t vcluster-prolog JOB=42``). Where neither socket exists (a
container, this project's test machine) the programs keep writing their files under
``controller.log_dir``. ``controller.log_to`` chooses: ``auto`` (journald, else syslog, else
files), ``journal``, ``syslog`` or ``file``.

Standard library only, and cheap: the hook programs slurmctld runs import it (one datagram
socket, one ``send`` per line). The journald native protocol is a datagram of
``FIELD=value`` lines; a value holding a newline is written as the field name, a newline, its
length as 64-bit little-endian and the raw bytes. Syslog gets an RFC 3164 line (facility
daemon) with the fields appended as ``KEY=value``. The logging handler for the controller
(:func:`logging_handler`) imports :mod:`logging` only when asked for.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Mapping

TYPE_CHECKING = False  # typing costs the hook programs 2 ms of import; mypy reads it
if TYPE_CHECKING:
    from typing import Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_SOCKET = "/dev/log"
LOG_TARGETS = ("auto", "journal", "syslog", "file")
PRIORITIES = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}
"""Python level name -> syslog priority (journald's PRIORITY field)."""
SYSLOG_FACILITY_DAEMON = 3
MAX_MESSAGE_BYTES = 48_000
"""Longer messages are cut: a datagram must fit the socket's buffer (journald's limit is
larger, but a cut line is better than a lost one)."""


def journal_datagram(fields: Mapping[str, str]) -> bytes:
    """``fields`` in journald's native datagram format (names upper-case A-Z, 0-9, _)."""
    out = bytearray()
    for name, value in fields.items():
        raw = value.encode("utf-8", "replace")
        key = name.encode("ascii")
        if b"\n" in raw:
            out += key + b"\n" + struct.pack("<Q", len(raw)) + raw + b"\n"
        else:
            out += key + b"=" + raw + b"\n"
    return bytes(out)


def syslog_datagram(identifier: str, pid: int, priority: int, message: str,
                    fields: Mapping[str, str]) -> bytes:
    """An RFC 3164 line for ``/dev/log``: ``<PRI>Mmm dd hh:mm:ss IDENT[PID]: message``."""
    extra = "".join(f" {k}={v}" for k, v in fields.items() if v)
    stamp = time.strftime("%b %d %H:%M:%S", time.localtime())
    line = (f"<{SYSLOG_FACILITY_DAEMON * 8 + priority}>{stamp} {identifier}[{pid}]: "
            f"{message}{extra}")
    return line.replace("\n", " ").encode("utf-8", "replace")


class Sink:
    """A connected datagram socket to journald (``kind`` "journal") or syslog ("syslog")."""

    def __init__(self, kind: str, path: str) -> None:
        self.kind = kind
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.connect(path)
        except OSError:
            self._sock.close()
            raise

    def send(self, identifier: str, level: str, message: str,
             fields: Mapping[str, str] | None = None) -> bool:
        """Send one line; False if the socket refused it (the caller falls back)."""
        priority = PRIORITIES.get(level, 6)
        message = message[:MAX_MESSAGE_BYTES]
        known = {k: str(v) for k, v in (fields or {}).items() if v not in (None, "")}
        if self.kind == "journal":
            data = journal_datagram({"MESSAGE": message, "PRIORITY": str(priority),
                                     "SYSLOG_IDENTIFIER": identifier,
                                     "SYSLOG_PID": str(os.getpid()), **known})
        else:
            data = syslog_datagram(identifier, os.getpid(), priority, message, known)
        try:
            self._sock.send(data)
        except OSError:
            return False
        return True

    def close(self) -> None:
        self._sock.close()


def open_sink(log_to: str, *, journal_path: str = JOURNAL_SOCKET,
              syslog_path: str = SYSLOG_SOCKET) -> Sink | None:
    """The sink ``log_to`` asks for if its socket is there and takes a connection, else None
    (the caller writes its file)."""
    if log_to == "file":
        return None
    choices = {"auto": (("journal", journal_path), ("syslog", syslog_path)),
               "journal": (("journal", journal_path),),
               "syslog": (("syslog", syslog_path),)}.get(log_to, ())
    for kind, path in choices:
        if not os.path.exists(path):
            continue
        try:
            return Sink(kind, path)
        except OSError:
            continue
    return None


FIELD_ATTRIBUTES = (("node", "NODE"), ("job", "JOB"), ("vm_id", "VM_ID"))
"""``logging`` record attributes (``extra={"node": ...}``) sent as journal fields."""


def logging_handler(sink: Sink, identifier: str) -> Any:
    """A :class:`logging.Handler` sending each record to ``sink`` under ``identifier``, with
    the record's logger name (``VCLUSTER_LOGGER``) and its node, job and VM id if given."""
    import logging

    class SinkHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                message = self.format(record)
                fields = {name: str(getattr(record, attr)) for attr, name in FIELD_ATTRIBUTES
                          if getattr(record, attr, None) not in (None, "")}
                fields["VCLUSTER_LOGGER"] = record.name
                if not sink.send(identifier, record.levelname, message, fields):
                    self.handleError(record)
            except Exception:
                self.handleError(record)

        def close(self) -> None:
            sink.close()
            super().close()

    handler = SinkHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler
