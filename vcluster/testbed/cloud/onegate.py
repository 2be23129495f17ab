"""OneGate: the HTTP endpoint through which a VM reports about itself (READY=YES).

Why this exists: with CONTEXT ``TOKEN=YES`` and ``REPORT_READY=YES`` the guest sends
``PUT /vm`` to ONEGATE_ENDPOINT with body ``data=READY%3DYES`` and headers
``X-ONEGATE-TOKEN`` / ``X-ONEGATE-VMID``; OneGate checks the token against the VM and merges
the attributes into its USER_TEMPLATE, where vcluster's controller sees READY=YES. ``GET /vm``
returns the VM as OneGate's JSON (``{"VM": {...}}``). It runs in the cloud server's process.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from vcluster.testbed.cloud.cloud import Cloud
from vcluster.testbed.cloud.model import VM
from vcluster.testbed.cloud.template_parse import Template

log = logging.getLogger(__name__)


def parse_attributes(body: str) -> Template:
    """``data=KEY%3DVALUE`` form bodies, or plain ``KEY=VALUE`` lines."""
    text = body
    form = urllib.parse.parse_qs(body, keep_blank_values=True)
    if "data" in form:
        text = "\n".join(form["data"])
    tmpl = Template()
    for line in text.splitlines():
        if "=" not in line:
            continue
        key, value = line.split("=", 1)
        key, value = key.strip().upper(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if key:
            tmpl.replace(key, value)
    return tmpl


def vm_json(vm: VM) -> dict[str, Any]:
    """The VM as OneGate shows it to the VM itself."""
    user: dict[str, Any] = {}
    for name, value in vm.user_template.attrs:
        user[name] = value
    nics = [{k: v for k, v in nic.items() if k in ("IP", "MAC", "NAME", "NETWORK", "NIC_ID")}
            for nic in vm.template.vectors("NIC")]
    return {"VM": {"NAME": vm.name, "ID": str(vm.vm_id), "STATE": str(vm.state),
                   "LCM_STATE": str(vm.lcm_state), "USER_TEMPLATE": user,
                   "TEMPLATE": {"NIC": nics}}}


class _Handler(BaseHTTPRequestHandler):
    server: OneGateServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("onegate %s", format % args)

    def _reply(self, status: int, body: str, content_type: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized_vm(self) -> VM | None:
        token = self.headers.get("X-ONEGATE-TOKEN", "")
        vmid = self.headers.get("X-ONEGATE-VMID", "")
        cloud = self.server.cloud
        try:
            vm_id = int(vmid)
        except ValueError:
            return None
        vm = cloud.vms.get(vm_id)
        if vm is None or not vm.token or token != vm.token:
            return None
        return vm

    def do_GET(self) -> None:  # noqa: N802
        if urllib.parse.urlsplit(self.path).path != "/vm":
            self._reply(404, "Not found")
            return
        with self.server.cloud.lock:
            vm = self._authorized_vm()
            if vm is None:
                self._reply(401, "Not authorized")
                return
            body = json.dumps(vm_json(vm))
        self._reply(200, body, "application/json")

    def do_PUT(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        if urllib.parse.urlsplit(self.path).path != "/vm":
            self._reply(404, "Not found")
            return
        cloud = self.server.cloud
        with cloud.lock:
            vm = self._authorized_vm()
            if vm is None:
                self._reply(401, "Not authorized")
                return
            cloud.update_vm(vm.vm_id, parse_attributes(body), 1)
        self._reply(200, "")

    do_POST = do_PUT  # noqa: N815 - OneGate clients sometimes POST


class OneGateServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, cloud: Cloud, host: str, port: int) -> None:
        super().__init__((host, port), _Handler)
        self.cloud = cloud
