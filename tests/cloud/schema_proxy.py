"""A small HTTP proxy between the tests' XML-RPC clients and the cloud server.

It forwards every request unchanged and validates every XML body that comes back against the
official schema of its method (see :mod:`tests.cloud.schemas`), so that all the traffic of all
the tests is checked, not only the bodies a schema test asks for. Failures are collected and
the fixture that owns the proxy fails the test with them.
"""

from __future__ import annotations

import threading
import urllib.request
import xmlrpc.client
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.cloud.schemas import METHOD_SCHEMAS, validate


class _Handler(BaseHTTPRequestHandler):
    server: SchemaProxy

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request = urllib.request.Request(self.server.target, data=body, method="POST",
                                         headers={"Content-Type": "text/xml"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            answer = resp.read()
        self.server.check(body, answer)
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


class SchemaProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, target: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.target = target
        self.failures: list[str] = []
        self.validated = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/RPC2"

    def check(self, request: bytes, answer: bytes) -> None:
        _params, method = xmlrpc.client.loads(request)
        try:
            (result,), _ = xmlrpc.client.loads(answer)
        except xmlrpc.client.Fault:
            return
        if not (isinstance(result, list) and result and result[0] is True):
            return
        body = result[1]
        if not (isinstance(body, str) and body.startswith("<")):
            return
        try:
            xsd, full_vms = METHOD_SCHEMAS[method or ""]
            validate(body, xsd, full_vms=full_vms)
        except Exception as exc:  # collect every failure for the owning fixture
            with self._lock:
                self.failures.append(f"{method}: {exc}"[:2000])
        else:
            with self._lock:
                self.validated += 1

    def close(self) -> None:
        self.shutdown()
        self.server_close()
