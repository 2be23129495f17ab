"""The munge key stays out of what OpenNebula shows, end to end: a job runs on a VM that got
its key from the controller's join endpoint, and then every VM's and template's full XML, as
anyone with read access gets it through the API, is searched for the key.

Also: the VM's token, read from its CONTEXT, is worth nothing afterwards, neither from the
host nor from the VM's own address.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.integration.site_fixtures import E2E_NAME, Site, job_id_of, wait_clean, wait_for
from vcluster import db
from vcluster.config import read_one_auth
from vcluster.testbed import netns

pytestmark = [pytest.mark.integration, pytest.mark.one_slurm]

POST_PROGRAM = """
import sys, urllib.error, urllib.request
req = urllib.request.Request(sys.argv[1] + "/v1/munge-key", data=sys.argv[2].encode(),
                             method="POST")
try:
    with urllib.request.urlopen(req, timeout=10) as answer:
        print(answer.status, answer.read().decode().strip())
except urllib.error.HTTPError as err:
    print(err.code, err.read().decode().strip())
"""


@pytest.fixture()
def s(e2e_site: Site) -> Iterator[Site]:
    wait_clean(e2e_site)
    yield e2e_site
    wait_clean(e2e_site)


def _rpc(s: Site) -> tuple[xmlrpc.client.ServerProxy, str]:
    return (xmlrpc.client.ServerProxy(s.config.opennebula.xmlrpc),
            read_one_auth(s.config.opennebula.auth_file))


def _ok(answer: Any, what: str) -> str:
    assert answer[0] is True, f"{what}: {answer[1]}"
    return str(answer[1])


def everything_the_api_shows(s: Site) -> dict[str, str]:
    """{what: raw XML} of the VM pool (done VMs included), every VM and every template, as
    oned answers them (decrypted where the method lets oneadmin ask)."""
    server, session = _rpc(s)
    shown = {"one.vmpool.infoextended": _ok(
        server.one.vmpool.infoextended(session, -2, -1, -1, -2), "vmpool")}
    vm_ids = [int(x) for x in
              re.findall(r"<VM><ID>(\d+)</ID>", shown["one.vmpool.infoextended"])]
    assert vm_ids, "no VM in the pool"
    for vm_id in vm_ids:
        shown[f"one.vm.info {vm_id}"] = _ok(server.one.vm.info(session, vm_id, True), "vm")
    pool = _ok(server.one.templatepool.info(session, -2, -1, -1), "templatepool")
    shown["one.templatepool.info"] = pool
    for tmpl_id in [int(x) for x in re.findall(r"<VMTEMPLATE><ID>(\d+)</ID>",
                                                             pool)]:
        shown[f"one.template.info {tmpl_id}"] = _ok(
            server.one.template.info(session, tmpl_id, True, True), "template")
    return shown


def _redeem_from(url: str, token: str, ns_name: str | None) -> str:
    argv = [sys.executable, "-c", POST_PROGRAM, url, token]
    if ns_name:
        argv = ["nsenter", f"--net={netns.netns_path(ns_name)}", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_no_vm_or_template_shows_the_munge_key_and_a_token_works_once(s: Site) -> None:
    key = Path(s.config.slurm.munge_key_file).read_bytes()
    forms = {"raw": key.decode("latin-1"), "base64": base64.b64encode(key).decode(),
             "base64 without padding": base64.b64encode(key).decode().rstrip("="),
             "hex": key.hex()}
    out = s.work / "secrets.out"
    proc = s.fsub("-N1", f"--output={out}", "--wrap", "hostname; sleep 20")
    assert proc.returncode == 0, proc.stderr
    job_id = job_id_of(proc)
    wait_for(f"job {job_id} running", lambda: (j := s.job(job_id)) and j.state == "RUNNING",
             180)
    (vm,) = [v for v in s.live_vms() if v.user_template.get("VCLUSTER_JOB") == str(job_id)]
    shown = everything_the_api_shows(s)
    for what, xml in shown.items():
        for form, text in forms.items():
            assert text not in xml, f"{what} shows the munge key ({form})"
    vm_xml = shown[f"one.vm.info {vm.vm_id}"]
    assert "VCLUSTER_JOIN_TOKEN" in vm_xml and "MUNGE_KEY" not in vm_xml

    context = s.one.vm(vm.vm_id).context  # one.vm.info: the whole CONTEXT (a pool listing
    token, url = context["VCLUSTER_JOIN_TOKEN"], context["VCLUSTER_JOIN_URL"]  # keeps less)
    assert _redeem_from(url, token, f"{E2E_NAME}-vm{vm.vm_id}").startswith(
        "403 token already redeemed at ")  # from the VM's own address: used up
    assert _redeem_from(url, token, None).startswith("403 token already redeemed at ")
    assert _redeem_from(url, "made-up-token", None).startswith("403 unknown token")

    engine = db.make_engine(s.config.database)
    try:
        with db.session_factory(engine)() as session:
            kinds = list(session.scalars(select(db.Event.kind).where(
                db.Event.vm_id == vm.vm_id).order_by(db.Event.id)))
    finally:
        engine.dispose()
    assert kinds.count("join.key_sent") == 1
    assert kinds.count("join.refused") == 2
    wait_for(f"job {job_id} done", lambda: (j := s.job(job_id)) is None or j.state in (
        "COMPLETED", "FAILED"), 120)
    assert out.read_text().split()[0] == vm.name
