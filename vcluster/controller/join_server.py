"""The controller's join endpoint: where a booting worker VM fetches its join script and
trades its one-time token for the munge key.

Why it exists: a VM's CONTEXT is readable by everyone who can read the VM through
OpenNebula's API, so it carries neither the munge key nor the 8.5 KB join script any more,
only a small bootstrap, this endpoint's URL and a one-time token (:mod:`.join_tokens`).
Standard library only (``http.server`` in a thread of the controller), two routes:

``GET /v1/join.sh``
    the join script (``contextualization/vcluster-join.sh``); no secret in it, served to
    anyone who asks;
``POST /v1/munge-key``
    the request body is the token; 200 with the key (base64, one line) when
    :func:`.join_tokens.redeem` grants it, 403 with a one-line reason when it refuses for
    good, 503 when the VM should ask again (its id or address not known yet).

Every grant and refusal becomes an event (``join.key_sent``, ``join.refused``) and a log
line; the key and the token never appear in either. The token travels in the body, not the
URL, so no access log or proxy records it. Plain HTTP: see the threat model in
deploy/INSTALL.md (the VM network must be private to the cluster).
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sqlalchemy.orm import Session, sessionmaker

from vcluster import db
from vcluster.controller.join_tokens import VmReader, redeem

log = logging.getLogger("vcluster.join")

JOIN_SCRIPT_PATH = "/v1/join.sh"
MUNGE_KEY_PATH = "/v1/munge-key"
MAX_BODY_BYTES = 256
REQUEST_TIMEOUT_S = 10.0
BIND_RETRY_S = 1.0


class JoinServer:
    """Serves :data:`JOIN_SCRIPT_PATH` and :data:`MUNGE_KEY_PATH` on ``host:port``."""

    def __init__(self, host: str, port: int, *, sessions: sessionmaker[Session], one: VmReader,
                 munge_key_b64: str, join_script: bytes, now: Callable[[], datetime] = db.utcnow,
                 bind_retry_s: float = BIND_RETRY_S) -> None:
        self.sessions = sessions
        self.one = one
        self._key = munge_key_b64.encode("ascii") + b"\n"
        self._script = join_script
        self.now = now
        self._one_lock = threading.Lock()  # one OpenNebula client, one call at a time
        self._host, self._port = host, port
        self._bind_retry_s = bind_retry_s
        self._httpd: ThreadingHTTPServer | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            self._httpd = self._bind()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise  # not an address of this host: the caller says what to fix

    def _bind(self) -> ThreadingHTTPServer:
        httpd = ThreadingHTTPServer((self._host, self._port), _handler_class(self))
        httpd.daemon_threads = True
        return httpd

    @property
    def address(self) -> tuple[str, int]:
        if self._httpd is None:
            return self._host, self._port
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Serve in a thread. A port another process holds (a second controller on this host,
        standing by) is tried again every ``bind_retry_s`` until it is free."""
        self._thread = threading.Thread(target=self._serve, name="join-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        if self._httpd is None:
            log.warning("join endpoint %s:%d: the port is in use (another controller on this "
                        "host?); trying again every %g s", self._host, self._port,
                        self._bind_retry_s)
        while self._httpd is None and not self._stopped.wait(self._bind_retry_s):
            try:
                self._httpd = self._bind()
            except OSError:
                continue
        if self._httpd is None:
            return
        log.info("join endpoint at http://%s:%d (VMs fetch %s and redeem their token at %s)",
                 *self.address, JOIN_SCRIPT_PATH, MUNGE_KEY_PATH)
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._stopped.set()
        if self._httpd is not None:
            if self._thread is not None and self._thread.is_alive():
                self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- the key -------------------------------------------------------------------------------

    def munge_key_answer(self, token: str, caller: str) -> tuple[int, bytes]:
        """(HTTP status, body) for a redeem request from ``caller``."""
        with self._one_lock:
            outcome = redeem(self.sessions, self.one, token, caller, now=self.now())
        node = outcome.node_name or None
        if outcome.granted:
            log.info("munge key sent to VM %s of node %s at %s", outcome.vm_id, node, caller,
                     extra={"node": node, "vm_id": outcome.vm_id})
            self._event("join.key_sent", f"munge key sent to VM {outcome.vm_id} at {caller}; "
                        "its token is used up", node, outcome.vm_id)
            return 200, self._key
        if outcome.retry:
            log.info("join token of node %s from %s: not yet (%s)", node, caller,
                     outcome.reason, extra={"node": node, "vm_id": outcome.vm_id})
            return 503, (outcome.reason + "; ask again\n").encode()
        log.warning("join token refused from %s (node %s): %s", caller, node or "?",
                    outcome.reason, extra={"node": node, "vm_id": outcome.vm_id})
        self._event("join.refused", f"a request from {caller} for the munge key was refused: "
                    f"{outcome.reason}", node, outcome.vm_id)
        return 403, (outcome.reason + "\n").encode()

    def _event(self, kind: str, message: str, node: str | None, vm_id: int | None) -> None:
        try:
            with db.transaction(self.sessions) as s:
                db.record_event(s, kind, message, node_name=node, vm_id=vm_id, at=self.now())
        except Exception:
            log.exception("cannot record event %s: %s", kind, message)


def _handler_class(server: JoinServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_S
        server_version = "vcluster-join"
        sys_version = ""

        def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == JOIN_SCRIPT_PATH:
                self._answer(200, server._script, "text/x-shellscript")
            else:
                self._answer(404, b"not found\n")

        def do_POST(self) -> None:  # noqa: N802
            if self.path != MUNGE_KEY_PATH:
                self._answer(404, b"not found\n")
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY_BYTES:
                self._answer(400, b"the body must be the join token\n")
                return
            token = self.rfile.read(length).decode("ascii", "replace").strip()
            try:
                status, body = server.munge_key_answer(token, self.client_address[0])
            except Exception:
                log.exception("join request from %s failed", self.client_address[0])
                status, body = 503, b"the controller could not check the token; ask again\n"
            self._answer(status, body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("join endpoint: %s %s", self.client_address[0], format % args)

    return Handler
