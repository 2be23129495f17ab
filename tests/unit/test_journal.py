"""Logging to journald and syslog: the datagrams a socket bound by the test receives, and the
file fallback when there is no socket or it refuses."""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from vcluster.hook_client import HookLog, log_fields
from vcluster.journal import journal_datagram, logging_handler, open_sink


def parse_journal(data: bytes) -> dict[str, str]:
    """journald's side of the native protocol."""
    fields: dict[str, str] = {}
    while data:
        line, _, rest = data.partition(b"\n")
        if b"=" in line:
            name, _, value = line.partition(b"=")
            fields[name.decode()] = value.decode()
            data = rest
        else:
            (size,) = struct.unpack("<Q", rest[:8])
            fields[line.decode()] = rest[8:8 + size].decode()
            assert rest[8 + size:9 + size] == b"\n"
            data = rest[9 + size:]
    return fields


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "journal.socket")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(2)
    try:
        yield server, path
    finally:
        server.close()


def test_the_native_format_with_a_multiline_value() -> None:
    data = journal_datagram({"MESSAGE": "two\nlines", "NODE": "vc-small-001"})
    assert data == (b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\nNODE=vc-small-001\n")
    assert parse_journal(data) == {"MESSAGE": "two\nlines", "NODE": "vc-small-001"}


def test_a_hook_line_reaches_the_journal_with_its_fields(
        listening: tuple[socket.socket, str], tmp_path: Path) -> None:
    server, path = listening
    sink = open_sink("auto", journal_path=path, syslog_path=str(tmp_path / "no-dev-log"))
    assert sink is not None and sink.kind == "journal"
    fields = log_fields("prolog", ["vcluster-prolog"],
                        {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "vc-small-[001-002]"})
    log = HookLog(str(tmp_path / "log"), "vcluster-prolog", sink, fields)
    log.write("WARNING", "nodes not up yet")
    got = parse_journal(server.recv(65536))
    assert {k: got[k] for k in ("MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "JOB", "NODE")} == {
        "MESSAGE": "nodes not up yet", "PRIORITY": "4", "SYSLOG_IDENTIFIER": "vcluster-prolog",
        "JOB": "42", "NODE": "vc-small-[001-002]"}
    assert got["SYSLOG_PID"].isdigit()
    assert not (tmp_path / "log" / "hooks.log").exists()  # the journal has it: no file


def test_resume_names_its_nodes_from_its_argument() -> None:
    assert log_fields("resume", ["vcluster-resume", "vc-small-003"], {}) == {
        "JOB": "", "NODE": "vc-small-003"}


def test_the_file_when_the_journal_goes_away(listening: tuple[socket.socket, str],
                                             tmp_path: Path) -> None:
    server, path = listening
    sink = open_sink("journal", journal_path=path)
    assert sink is not None
    server.close()
    Path(path).unlink()
    log = HookLog(str(tmp_path / "log"), "vcluster-epilog", sink, {"JOB": "7"})
    log.write("INFO", "powered down")
    assert (tmp_path / "log" / "hooks.log").read_text().endswith(
        " INFO powered down\n")


def test_no_socket_or_file_chosen_means_files(tmp_path: Path,
                                              listening: tuple[socket.socket, str]) -> None:
    _, path = listening
    missing = str(tmp_path / "missing")
    assert open_sink("auto", journal_path=missing, syslog_path=missing) is None
    assert open_sink("file", journal_path=path, syslog_path=path) is None
    assert open_sink("syslog", journal_path=path, syslog_path=missing) is None


def test_syslog_gets_an_rfc3164_line_with_the_fields(listening: tuple[socket.socket, str],
                                                     tmp_path: Path) -> None:
    server, path = listening
    sink = open_sink("auto", journal_path=str(tmp_path / "none"), syslog_path=path)
    assert sink is not None and sink.kind == "syslog"
    assert sink.send("vcluster-resume", "ERROR", "cannot boot\nreally", {"NODE": "vc-1"})
    line = server.recv(65536).decode()
    assert line.startswith("<27>")  # daemon (3) * 8 + error (3)
    assert line.endswith("]: cannot boot really NODE=vc-1")
    assert " vcluster-resume[" in line


def test_the_controllers_handler_sends_node_job_and_vm(listening: tuple[socket.socket, str],
                                                       tmp_path: Path) -> None:
    server, path = listening
    sink = open_sink("journal", journal_path=path)
    assert sink is not None
    logger = logging.getLogger("vcluster.test_journal")
    handler = logging_handler(sink, "vcluster-controller")
    logger.addHandler(handler)
    try:
        logger.warning("VM %d failed", 40, extra={"node": "vc-small-001", "vm_id": 40,
                                                  "job": 12})
    finally:
        logger.removeHandler(handler)
        handler.close()
    got = parse_journal(server.recv(65536))
    assert {k: got[k] for k in ("MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "NODE", "JOB",
                                "VM_ID", "VCLUSTER_LOGGER")} == {
        "MESSAGE": "VM 40 failed", "PRIORITY": "4", "SYSLOG_IDENTIFIER": "vcluster-controller",
        "NODE": "vc-small-001", "JOB": "12", "VM_ID": "40",
        "VCLUSTER_LOGGER": "vcluster.test_journal"}
