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
from vcluster.testbed.cloud.template_parse import TemplateParseError, parse_text

log = logging.getLogger(__name__)


RESTRICTED_ATTRS = ("SCHED_REQUIREMENTS", "SERVICE_ID", "ROLE_NAME")
"""onegate-server.conf's default ``:restricted_attrs:``: a guest may not set or delete them."""


class PutError(Exception):
    """A PUT /vm OneGate refuses: the HTTP status and OneGate's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def put_params(query: str, body: str, content_type: str) -> tuple[str, int]:
    """The attribute text and the update type of a ``PUT /vm``, as OneGate reads them: the
    ``data`` and ``type`` parameters (query string or form body), else the raw body; type 1
    (merge, the default) or 2 (delete the attribute ``data`` names)."""
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    if content_type.split(";")[0].strip().lower() in ("", "application/x-www-form-urlencoded"):
        for key, values in urllib.parse.parse_qs(body, keep_blank_values=True).items():
            params.setdefault(key, values)
    text = params["data"][0] if "data" in params else body
    try:
        update_type = int(params["type"][0]) if "type" in params else 1
    except ValueError:
        update_type = 0
    return text, update_type


def quote_values(text: str) -> str:
    """OneGate's quoting of what a guest sends before oned parses it: each bare value
    (``KEY=two words``) is put in double quotes; a comma, a bracket, a backslash or a line end
    closes the quote, as in a vector ``KEY=[A=x,B=y]``. So a value with those characters does
    not survive (oned then refuses the text or keeps only its start); guests leave them out."""
    out: list[str] = []
    quoting = False
    for i, ch in enumerate(text):
        before = text[i - 1] if i else ""
        after = text[i + 1] if i + 1 < len(text) else ""
        if ch == "=" and quoting:
            out.append(ch)
        elif ch == "=" and after not in ("[", '"'):
            out.append('="')
            quoting = True
        elif ch == "," and before != '"':
            out.append('",')
        elif ch == "[" and before not in ("=", '"'):
            out.append('"[')
        elif ch == "]" and before not in ("=", '"'):
            out.append('"]')
            quoting = False
        elif ch in ("\\", "\n") and before != '"':
            out.append('"' + ch)
            quoting = False
        else:
            out.append(ch)
    quoted = "".join(out).replace("\\n", "\n")
    if quoting and quoted and quoted[-1] not in ("]", '"'):
        quoted += '"'
    return quoted


def put_vm(cloud: Cloud, vm: VM, text: str, update_type: int) -> None:
    """Apply a PUT /vm to the VM's USER_TEMPLATE as OneGate does (one.vm.update, append),
    or raise PutError with OneGate's status and message. Callers hold the cloud's lock."""
    quoted = quote_values(text)
    action = "modified" if update_type == 1 else "deleted"
    for line in quoted.split("\n"):
        name = line.split("=")[0]
        if name and name.upper() in RESTRICTED_ATTRS:
            raise PutError(403, f"Attribute ({name}) cannot be {action}")
    if update_type != 1:
        name = quoted.strip().upper()
        if not vm.user_template.has(name):
            raise PutError(500, "attribute not found")
        kept = vm.user_template.copy()
        kept.remove(name)
        cloud.update_vm(vm.vm_id, kept, 0)
        return
    try:
        attributes = parse_text(quoted)
    except TemplateParseError as exc:
        raise PutError(500, f"[one.vm.update] {exc}") from None
    cloud.update_vm(vm.vm_id, attributes, 1)


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
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/vm":
            self._reply(404, "Not found")
            return
        text, update_type = put_params(url.query, body, self.headers.get("Content-Type", ""))
        cloud = self.server.cloud
        with cloud.lock:
            vm = self._authorized_vm()
            if vm is None:
                self._reply(401, "Not authorized")
                return
            try:
                put_vm(cloud, vm, text, update_type)
            except PutError as exc:
                self._reply(exc.status, str(exc))
                return
        self._reply(200, "")

    do_POST = do_PUT  # noqa: N815 - OneGate clients sometimes POST


class OneGateServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, cloud: Cloud, host: str, port: int) -> None:
        super().__init__((host, port), _Handler)
        self.cloud = cloud
