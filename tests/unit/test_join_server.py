"""The join endpoint over real HTTP, and the guest scripts' own HTTP clients against it.

The guest side is the shipped shell code (vcluster-boot.sh; the ``post`` function of
vcluster-join.sh), run with each client it knows: curl, wget and bash's /dev/tcp.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.unit.controller_fixtures import T0, vm
from tests.unit.test_join_tokens import FakeVms
from vcluster import db
from vcluster.config import DatabaseSettings
from vcluster.controller.join_server import JoinServer
from vcluster.controller.join_tokens import issue

KEY_B64 = base64.b64encode(bytes(range(64))).decode()
SCRIPTS = Path(__file__).resolve().parents[2] / "contextualization"
JOINED = b'#!/bin/sh\necho "joined as $VCLUSTER_NODE"\n'
CLIENTS = [c for c in ("curl", "wget", "bash") if shutil.which(c)]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[JoinServer, sessionmaker[Session]]]:
    engine = db.make_engine(DatabaseSettings(url=f"sqlite:///{tmp_path}/state.db"))
    sessions = db.session_factory(engine)
    one = FakeVms({40: vm(40, "vc-small-001", ip="127.0.0.1")})
    server = JoinServer("127.0.0.1", 0, sessions=sessions, one=one, munge_key_b64=KEY_B64,
                        join_script=JOINED, now=lambda: T0)
    server.start()
    try:
        yield server, sessions
    finally:
        server.stop()
        engine.dispose()


def _token(sessions: sessionmaker[Session], vm_id: int | None = 40) -> str:
    with db.transaction(sessions) as s:
        row = db.Launch(node_name="vc-small-001", node_class="small", state="booting",
                        attempts=1, reason="", vm_id=vm_id, created_at=T0, updated_at=T0)
        s.add(row)
        s.flush()
        return issue(s, launch_id=row.id, node_name="vc-small-001", now=T0, ttl_s=60)


def _url(server: JoinServer) -> str:
    host, port = server.address
    return f"http://{host}:{port}"


def _post(server: JoinServer, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(_url(server) + "/v1/munge-key", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_the_key_once_then_refusals_and_events(site: tuple[JoinServer, sessionmaker[Session]]
                                               ) -> None:
    server, sessions = site
    token = _token(sessions)
    assert _post(server, token.encode()) == (200, KEY_B64.encode() + b"\n")
    status, body = _post(server, token.encode())
    assert (status, body) == (403, b"token already redeemed at 07:00:00 from 127.0.0.1\n")
    assert _post(server, b"not-a-token")[0] == 403
    assert _post(server, b"")[0] == 400
    with sessions() as s:
        events = [(e.kind, e.node_name) for e in s.scalars(select(db.Event).order_by(db.Event.id))]
        messages = " ".join(e.message for e in s.scalars(select(db.Event)))
    assert events == [("join.key_sent", "vc-small-001"), ("join.refused", "vc-small-001"),
                      ("join.refused", None)]
    assert KEY_B64 not in messages and token not in messages


def test_ask_again_while_the_vm_id_is_unknown(site: tuple[JoinServer, sessionmaker[Session]]
                                              ) -> None:
    server, sessions = site
    status, body = _post(server, _token(sessions, vm_id=None).encode())
    assert (status, body) == (503, b"the VM's id is not recorded yet; ask again\n")


def test_the_join_script_is_served_and_nothing_else(
        site: tuple[JoinServer, sessionmaker[Session]]) -> None:
    server, _ = site
    with urllib.request.urlopen(_url(server) + "/v1/join.sh", timeout=5) as answer:
        assert answer.read() == JOINED
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(_url(server) + "/v1/munge-key", timeout=5)  # GET: no
    assert err.value.code == 404


def _env(tmp_path: Path, client: str, url: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "VCLUSTER_HTTP_CLIENT": client, "VCLUSTER_JOIN_URL": url,
            "VCLUSTER_NODE": "vc-small-001", "VCLUSTER_RUN_DIR": str(tmp_path),
            "VCLUSTER_JOIN_LOG": str(tmp_path / "join.log"),
            "VCLUSTER_JOIN_SCRIPT": str(tmp_path / "not-in-this-image.sh")}


@pytest.mark.parametrize("client", CLIENTS)
def test_the_bootstrap_fetches_and_runs_the_join_script(
        site: tuple[JoinServer, sessionmaker[Session]], tmp_path: Path, client: str) -> None:
    server, _ = site
    proc = subprocess.run(["sh", str(SCRIPTS / "vcluster-boot.sh")], capture_output=True,
                          text=True, timeout=30, env=_env(tmp_path, client, _url(server)),
                          check=False)
    assert (proc.returncode, proc.stdout) == (0, "joined as vc-small-001\n"), proc.stderr


@pytest.mark.parametrize("client", CLIENTS)
def test_the_join_scripts_post_redeems_the_token(
        site: tuple[JoinServer, sessionmaker[Session]], tmp_path: Path, client: str) -> None:
    server, sessions = site
    text = (SCRIPTS / "vcluster-join.sh").read_text()
    match = re.search(r"^post\(\) \{\n.*?^\}\n", text, re.M | re.S)
    assert match, "vcluster-join.sh has no post() function"
    token = _token(sessions)
    program = match.group(0) + 'post "$1/v1/munge-key" "$2" "$3"'
    out = tmp_path / "answer"
    argv = ["sh", "-c", program, "sh", _url(server), token, str(out)]
    env = _env(tmp_path, client, _url(server))
    first = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env,
                           check=False)
    assert (first.stdout.strip(), out.read_text()) == ("200", KEY_B64 + "\n"), first.stderr
    second = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env,
                            check=False)
    assert second.stdout.strip() == "403"
    if client != "wget":  # wget keeps no body of an error answer (busybox has no option)
        assert out.read_text().startswith("token already redeemed")


def test_a_second_controller_takes_the_port_once_the_first_lets_go(
        site: tuple[JoinServer, sessionmaker[Session]]) -> None:
    first, sessions = site
    host, port = first.address
    second = JoinServer(host, port, sessions=sessions, one=FakeVms(), munge_key_b64=KEY_B64,
                        join_script=b"#!/bin/sh\necho second\n", now=lambda: T0,
                        bind_retry_s=0.05)
    second.start()
    try:
        first.stop()

        def served() -> bytes:
            try:
                with urllib.request.urlopen(_url(first) + "/v1/join.sh", timeout=2) as answer:
                    return bytes(answer.read())
            except OSError:
                return b""

        deadline = time.monotonic() + 5
        while served() != b"#!/bin/sh\necho second\n":
            assert time.monotonic() < deadline, "the second server never took the port"
            time.sleep(0.05)
    finally:
        second.stop()
