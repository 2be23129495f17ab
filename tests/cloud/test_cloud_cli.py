"""``vcluster testbed cloud serve`` in the foreground: serves, answers pyone, stops on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyone
from click.testing import CliRunner

from vcluster.cli import cli

SERVE = [sys.executable, "-c", "from vcluster.cli import main; main()", "testbed", "cloud",
         "serve"]


def test_serve_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    auth_file = tmp_path / "one_auth"
    auth_file.write_text("admin:s3cret\n")
    proc = subprocess.Popen(
        SERVE + ["--port", "0", "--onegate-port", "0", "--state-dir", str(tmp_path / "st"),
                 "--auth-file", str(auth_file), "--hosts", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert banner.startswith("testbed cloud: XML-RPC http://127.0.0.1:")
        endpoint = banner.split()[3].rstrip(",")
        one = pyone.OneServer(endpoint, session="admin:s3cret")
        assert one.system.version() == "7.4.0"
        assert [h.NAME for h in one.hostpool.info().HOST] == ["host2", "host1", "host0"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out == "testbed cloud: stopped\n"
    assert (tmp_path / "st" / "cloud.sqlite").exists()


def test_serve_refuses_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["testbed", "cloud", "serve", "--state-dir", str(tmp_path),
                                 "--auth", "nopassword"], prog_name="vcluster")
    assert result.exit_code == 1
    assert result.output == ("vcluster: error: auth 'nopassword' is not user:password; "
                             "give e.g. --auth oneadmin:opennebula\n")
    result = runner.invoke(cli, ["testbed", "cloud", "serve", "--state-dir", str(tmp_path),
                                 "--subnet", "10.1.0.0/28", "--lease-start", "20"],
                           prog_name="vcluster")
    assert result.exit_code == 1
    assert result.output == "vcluster: error: --lease-start 20 is outside 10.1.0.0/28\n"


def test_serve_help_has_an_example() -> None:
    result = CliRunner().invoke(cli, ["testbed", "cloud", "serve", "--help"])
    assert result.exit_code == 0
    assert "vcluster testbed cloud serve --port 2633 --driver dummy" in result.output


def test_serve_says_when_it_cannot_listen(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["testbed", "cloud", "serve", "--state-dir", str(tmp_path), "--port", "0",
              "--onegate-host", "192.0.2.1", "--onegate-port", "0"], prog_name="vcluster")
    assert result.exit_code == 1
    assert result.output == (
        "vcluster: error: cannot listen on 192.0.2.1:0 (OneGate): no such address on this "
        "machine; bring it up (the bridge) first, or choose another with --onegate-host\n")


def _occupied_port() -> socket.socket:
    """A listening socket on a free port of 127.0.0.1, as a running oned holds 2633."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _serve_beside(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    result = subprocess.run(SERVE + ["--state-dir", str(tmp_path / "st"), *args],
                            capture_output=True, text=True, timeout=20)
    assert time.monotonic() - started < 10, "it must say so at once, not wait"
    return result


def test_serve_names_a_taken_xmlrpc_port_and_its_option(tmp_path: Path) -> None:
    with _occupied_port() as taken:
        port = taken.getsockname()[1]
        result = _serve_beside(["--port", str(port), "--onegate-port", "0"], tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"vcluster: error: port {port} on 127.0.0.1 (XML-RPC) is already in use (an oned, or "
        "another testbed cloud?); choose another with --port (0 picks a free one)\n")


def test_serve_names_a_taken_onegate_port_and_its_option(tmp_path: Path) -> None:
    with _occupied_port() as taken:
        port = taken.getsockname()[1]
        result = _serve_beside(["--port", "0", "--onegate-port", str(port)], tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        f"vcluster: error: port {port} on 127.0.0.1 (OneGate) is already in use (an oned, or "
        "another testbed cloud?); choose another with --onegate-port (0 picks a free one)\n")
