"""Every way a call to oned can fail becomes one vcluster error with an exact message.

The peers are real sockets on loopback: a closed port, a server that accepts and never
answers, Python's http.server answering HTTP errors, and a small XML-RPC oned
(:mod:`tests.unit.fake_oned`). The client under test is the real OneClient over real pyone.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.unit.fake_oned import INTERNAL, running_fake_oned, vm_xml
from vcluster.config import OpenNebulaSettings
from vcluster.errors import (
    ConfigError,
    OneAuthError,
    OneBadRequest,
    OneError,
    OneInternalError,
    OneNotFound,
    OneUnavailable,
)
from vcluster.one import OneClient

UNREACHABLE_HINT = "check ONE_XMLRPC and that oned is running"


def client(url: str, *, session: str | None = "oneadmin:opensesame", auth_file: str = "",
           timeout_s: float = 2.0, retry_delays_s: tuple[float, ...] = ()) -> OneClient:
    settings = OpenNebulaSettings(xmlrpc=url, auth_file=auth_file or "~/.one/one_auth",
                                  timeout_s=timeout_s, retry_delays_s=retry_delays_s)
    return OneClient(settings, session=session)


def attempts_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "vcluster.one" and r.levelno == logging.WARNING]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def silent_server() -> Iterator[int]:
    """Accepts connections, reads nothing, answers nothing."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.05)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_forever() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


@contextmanager
def serving_posts(answer: Callable[[], tuple[int, str, bytes] | None]) -> Iterator[int]:
    """Python's http.server on a free port: reads each POST, then sends what ``answer()``
    returns (status, content type, body), or closes the connection without a word when it
    returns None. Yields the port."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            reply = answer()
            if reply is None:
                self.close_connection = True
                return
            status, content_type, body = reply
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def http_server(status: int, body: bytes = b"") -> AbstractContextManager[int]:
    """Answers every POST with ``status`` and ``body`` (an HTML page)."""
    return serving_posts(lambda: (status, "text/html", body))


@contextmanager
def dropping_server(drops: int) -> Iterator[tuple[str, list[str]]]:
    """Closes the first ``drops`` connections without a word once it has read their request
    (a busy server or proxy shedding them), then answers as oned 7.4 answers
    one.system.version. Yields its URL and what it did with each request: "dropped" or
    "answered"."""
    done: list[str] = []

    def answer() -> tuple[int, str, bytes] | None:
        if done.count("dropped") < drops:
            done.append("dropped")
            return None
        done.append("answered")
        return 200, "text/xml", xmlrpc.client.dumps(([True, "7.4.0", 0],),
                                                   methodresponse=True).encode()

    with serving_posts(answer) as port:
        yield f"http://127.0.0.1:{port}/RPC2", done


# --- unreachable, silent, wrong endpoint -------------------------------------------------------


def test_closed_port_is_unavailable_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{closed_port()}/RPC2"
    one = client(url, retry_delays_s=(0.0, 0.0))
    with caplog.at_level(logging.WARNING, logger="vcluster.one"), \
            pytest.raises(OneUnavailable) as err:
        one.version()
    assert str(err.value) == f"cannot reach OpenNebula at {url} (connection refused); " \
                             f"{UNREACHABLE_HINT}"
    assert err.value.temporary
    logged = attempts_logged(caplog)
    assert [m.split(" failed")[0] for m in logged] == [
        "one.system.version attempt 1/3", "one.system.version attempt 2/3",
        "one.system.version attempt 3/3"]
    assert logged[0].endswith("; retrying in 0 s")
    assert logged[2].endswith("; giving up")


def test_backoff_waits_the_configured_delays() -> None:
    one = client(f"http://127.0.0.1:{closed_port()}/RPC2", retry_delays_s=(0.1, 0.2))
    started = time.monotonic()
    with pytest.raises(OneUnavailable):
        one.version()
    assert 0.3 <= time.monotonic() - started < 2.0


def test_refused_create_is_retried_since_it_never_reached_oned(
        caplog: pytest.LogCaptureFixture) -> None:
    one = client(f"http://127.0.0.1:{closed_port()}/RPC2", retry_delays_s=(0.0,))
    with caplog.at_level(logging.WARNING, logger="vcluster.one"), pytest.raises(OneUnavailable):
        one.allocate('MEMORY = "64"\n')
    assert len(attempts_logged(caplog)) == 2


def test_silent_server_times_out_within_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    with silent_server() as port:
        url = f"http://127.0.0.1:{port}/RPC2"
        one = client(url, timeout_s=0.5, retry_delays_s=(0.0,))
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="vcluster.one"), \
                pytest.raises(OneUnavailable) as err:
            one.version()
        elapsed = time.monotonic() - started
    assert str(err.value) == (
        f"OpenNebula at {url} did not answer one.system.version within 0.5 s; check that "
        "oned is running and not overloaded, or raise opennebula.timeout_s")
    assert 1.0 <= elapsed < 3.0  # two attempts of 0.5 s
    assert len(attempts_logged(caplog)) == 2
    assert socket.getdefaulttimeout() is None  # pyone's setdefaulttimeout was not used


def test_a_create_that_timed_out_is_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    with silent_server() as port:
        one = client(f"http://127.0.0.1:{port}/RPC2", timeout_s=0.3, retry_delays_s=(0.0, 0.0))
        with caplog.at_level(logging.WARNING, logger="vcluster.one"), \
                pytest.raises(OneUnavailable):
            one.instantiate(0, "vc-small-001", 'MEMORY = "64"\n')
    logged = attempts_logged(caplog)
    assert len(logged) == 1
    assert logged[0].endswith("; not retrying: the call may have taken effect")


def test_wrong_path_is_a_bad_request_and_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    with http_server(404, b"<html>no</html>") as port:
        url = f"http://127.0.0.1:{port}/RPC3"
        with caplog.at_level(logging.WARNING, logger="vcluster.one"), \
                pytest.raises(OneBadRequest) as err:
            client(url, retry_delays_s=(0.0, 0.0)).version()
    assert str(err.value) == (
        f"OpenNebula at {url} answered HTTP 404 Not Found, so it is not oned's XML-RPC "
        "endpoint; check ONE_XMLRPC (usually http://HOST:2633/RPC2)")
    assert err.value.code == 404
    assert len(attempts_logged(caplog)) == 1


def test_proxy_error_is_temporary(caplog: pytest.LogCaptureFixture) -> None:
    with http_server(503) as port:
        url = f"http://127.0.0.1:{port}/RPC2"
        with caplog.at_level(logging.WARNING, logger="vcluster.one"), \
                pytest.raises(OneUnavailable) as err:
            client(url, retry_delays_s=(0.0,)).version()
    assert str(err.value) == (
        f"OpenNebula at {url} answered HTTP 503 Service Unavailable; check that oned and "
        "any proxy in front of it are running")
    assert len(attempts_logged(caplog)) == 2


def test_a_web_page_is_not_xml_rpc() -> None:
    with http_server(200, b"<html><body>It works!</body></html>") as port:
        url = f"http://127.0.0.1:{port}/RPC2"
        with pytest.raises(OneBadRequest) as err:
            client(url).version()
    message = str(err.value)
    assert message.startswith(f"OpenNebula at {url} answered one.system.version with "
                              "something that is not XML-RPC (")
    assert message.endswith("); check ONE_XMLRPC")


def test_an_xml_rpc_server_that_is_not_oned() -> None:
    with running_fake_oned() as fake:
        fake.bare_answers = True
        with pytest.raises(OneBadRequest) as err:
            client(fake.url).version()
    assert str(err.value) == (f"OpenNebula at {fake.url} answered one.system.version with "
                              "7.4.0, which is not how oned answers; check ONE_XMLRPC")


# --- oned's own failures (fake oned) -----------------------------------------------------------


def test_wrong_credentials_name_the_file_and_user_never_the_password(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    auth = tmp_path / "one_auth"
    auth.write_text("alice:wrong-password\n")
    with running_fake_oned() as fake, caplog.at_level(logging.DEBUG), \
            pytest.raises(OneAuthError) as err:
        client(fake.url, session=None, auth_file=str(auth), retry_delays_s=(0.0,)).version()
    assert str(err.value) == (f"OpenNebula rejected the credentials in {auth} (user 'alice'); "
                              "check the ONE_AUTH file")
    assert fake.calls == ["one.system.version"]  # permanent: not retried
    assert "wrong-password" not in caplog.text


def test_credentials_given_directly() -> None:
    with running_fake_oned() as fake, pytest.raises(OneAuthError) as err:
        client(fake.url, session="bob:nope").version()
    assert str(err.value) == ("OpenNebula rejected the credentials given to vcluster "
                              "(user 'bob'); check the ONE_AUTH file")


def test_missing_vm_is_not_found() -> None:
    with running_fake_oned() as fake, pytest.raises(OneNotFound) as err:
        client(fake.url, retry_delays_s=(0.0,)).vm(42)
    assert str(err.value) == ("OpenNebula has no VM 42 ([one.vm.info] Error getting virtual "
                              "machine [42].); check the id")
    assert err.value.code == 0x400
    assert fake.calls == ["one.vm.info"]


def test_unknown_method_fault_is_a_bad_request() -> None:
    with running_fake_oned() as fake, pytest.raises(OneBadRequest) as err:
        client(fake.url, retry_delays_s=(0.0,))._call(
            "vm.explode", 1, doing="explode VM 1", subject="VM 1", hint="")
    assert str(err.value) == ('OpenNebula refused one.vm.explode with XML-RPC fault 1: '
                              '<class \'Exception\'>:method "one.vm.explode" is not supported; '
                              "check that ONE_XMLRPC points at oned 6 or 7")


def test_internal_error_is_retried_then_raised(caplog: pytest.LogCaptureFixture) -> None:
    with running_fake_oned() as fake:
        fake.vms[3] = vm_xml(3, "vc-small-003")
        fake.fail_next("one.vm.info", "[one.vm.info] Cannot connect to database", INTERNAL, 3)
        one = client(fake.url, retry_delays_s=(0.0, 0.0))
        with caplog.at_level(logging.WARNING, logger="vcluster.one"), \
                pytest.raises(OneInternalError) as err:
            one.vm(3)
        assert str(err.value) == ("OpenNebula failed to read VM 3: [one.vm.info] Cannot connect "
                                  "to database; it may be temporary, see oned.log if it persists")
        assert len(attempts_logged(caplog)) == 3
        # once oned recovers, the next call succeeds on its first attempt
        caplog.clear()
        fake.fail_next("one.vm.info", "[one.vm.info] Cannot connect to database", INTERNAL, 1)
        with caplog.at_level(logging.WARNING, logger="vcluster.one"):
            assert one.vm(3).name == "vc-small-003"
        assert len(attempts_logged(caplog)) == 1


def test_template_syntax_error_is_permanent() -> None:
    msg = ("[one.vm.allocate] Parse error: syntax error, unexpected $end, expecting EQUAL or "
           "EQUAL_EMPTY at line 2, columns 1:4")
    with running_fake_oned() as fake:
        fake.fail_next("one.vm.allocate", msg, INTERNAL, 3)
        with pytest.raises(OneBadRequest) as err:
            client(fake.url, retry_delays_s=(0.0, 0.0)).allocate("JUNK")
    assert str(err.value) == (f"OpenNebula refused to allocate a VM: {msg}; "
                              "check the VM template text")
    assert fake.calls == ["one.vm.allocate"]


def test_terminate_of_a_vm_that_is_gone_is_success() -> None:
    with running_fake_oned() as fake:
        client(fake.url).terminate(99)
        assert fake.calls == ["one.vm.action"]


def test_terminate_refused_in_a_live_state_is_raised() -> None:
    with running_fake_oned() as fake:
        fake.vms[5] = vm_xml(5, "vc-small-005", state=1, lcm_state=0)
        with pytest.raises(OneBadRequest) as err:
            client(fake.url).terminate(5)
    assert str(err.value) == (
        'OpenNebula refused to terminate VM 5: [one.vm.action] Error performing action '
        '"terminate": This action is not available for state PENDING; the VM is not in a '
        "state that allows it")
    assert fake.calls == ["one.vm.action", "one.vm.info"]


def test_terminate_of_a_vm_already_shutting_down_is_success() -> None:
    with running_fake_oned() as fake:
        fake.vms[6] = vm_xml(6, "vc-small-006", state=3, lcm_state=12)  # SHUTDOWN
        client(fake.url).terminate(6)
        fake.vms[7] = vm_xml(7, "vc-small-007", state=6, lcm_state=0)  # DONE
        client(fake.url).terminate(7)


def test_template_by_name_or_id() -> None:
    with running_fake_oned() as fake:
        fake.templates = {0: "vcluster-worker", 1: "other", 2: "twin", 3: "twin"}
        one = client(fake.url)
        assert one.template_id("vcluster-worker") == 0
        assert one.template_id("7") == 7
        with pytest.raises(OneNotFound) as missing:
            one.template_id("nope")
        with pytest.raises(OneBadRequest) as twins:
            one.template_id("twin")
    assert str(missing.value) == ("OpenNebula has no VM template named 'nope' that user "
                                  "'oneadmin' can use; create it or fix node_class.template")
    assert str(twins.value) == ("OpenNebula has several VM templates named 'twin' (ids 2, 3); "
                                "put the id in node_class.template")


def test_every_error_is_a_one_error_with_one_line() -> None:
    url = f"http://127.0.0.1:{closed_port()}/RPC2"
    with pytest.raises(OneError) as err:
        client(url).vms(cluster="vc")
    assert "\n" not in str(err.value)


def test_missing_one_auth_file_says_how_to_fix_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "one_auth"
    with running_fake_oned() as fake, pytest.raises(ConfigError) as err:
        client(fake.url, session=None, auth_file=str(missing)).version()
    assert str(err.value) == (f"config: opennebula.auth_file: ONE_AUTH file '{missing}' not found; "
                              "write one line user:password to it (mode 600)")
    assert fake.calls == []



# --- a connection closed without an answer ------------------------------------------------------


def test_a_read_whose_connection_was_dropped_is_sent_again_at_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """Even with no retries configured (vcluster status reads once), a read is sent again
    once, at once, when the server closed its connection without answering."""
    with dropping_server(drops=1) as (url, done), \
            caplog.at_level(logging.WARNING, logger="vcluster.one"):
        started = time.monotonic()
        assert client(url).version() == "7.4.0"
        elapsed = time.monotonic() - started
    assert done == ["dropped", "answered"]
    assert elapsed < 1.0
    assert [m.split(" after ")[0] for m in attempts_logged(caplog)] == [
        f"one.system.version: OpenNebula at {url} closed the connection without answering"]


def test_a_dropped_read_is_sent_again_only_once_beside_the_configured_retries(
        caplog: pytest.LogCaptureFixture) -> None:
    with dropping_server(drops=10) as (url, done), \
            caplog.at_level(logging.WARNING, logger="vcluster.one"), \
            pytest.raises(OneUnavailable) as err:
        client(url, retry_delays_s=(0.0,)).version()
    assert done == ["dropped"] * 3  # the extra one, then the two configured attempts
    assert str(err.value) == (
        f"cannot reach OpenNebula at {url} (('Connection aborted.', RemoteDisconnected('Remote "
        f"end closed connection without response'))); {UNREACHABLE_HINT}")
    assert attempts_logged(caplog)[-1].endswith("; giving up")


def test_a_create_whose_connection_was_dropped_is_not_sent_again(
        caplog: pytest.LogCaptureFixture) -> None:
    """oned may have read the request before the connection went: a second VM could be
    born."""
    with dropping_server(drops=1) as (url, done), \
            caplog.at_level(logging.WARNING, logger="vcluster.one"), \
            pytest.raises(OneUnavailable):
        client(url, retry_delays_s=(0.0,)).allocate('MEMORY = "64"\n')
    assert done == ["dropped"]
    assert attempts_logged(caplog)[-1].endswith("; not retrying: the call may have taken effect")
