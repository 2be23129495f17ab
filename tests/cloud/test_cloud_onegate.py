"""OneGate: PUT /vm and GET /vm with good and bad tokens."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import contextualization
from tests.cloud.conftest import VM_TEXT, Running, check_proxies, connect, make_settings
from tests.cloud.schema_proxy import SchemaProxy
from vcluster.testbed.cloud.drivers.base import VMSpec
from vcluster.testbed.cloud.drivers.dummy import DummyDriver
from vcluster.testbed.cloud.server import CloudServer


class RecordingDriver(DummyDriver):
    """The dummy driver, remembering the specs it booted (as a guest would see them)."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.specs: dict[int, VMSpec] = {}

    def boot(self, spec: VMSpec) -> None:
        super().boot(spec)
        self.specs[spec.vm_id] = spec


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[tuple[Running, RecordingDriver]]:
    settings = make_settings(tmp_path)
    tmp_path.mkdir(exist_ok=True)
    driver = RecordingDriver(tmp_path)
    server = CloudServer(settings, driver=driver)
    proxies: list[SchemaProxy] = []
    try:
        server.start()
        yield connect(server, proxies), driver
    finally:
        server.stop()
    check_proxies(proxies)


def _request(method: str, url: str, headers: dict[str, str], body: bytes | None = None
             ) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_put_and_get_with_good_and_bad_tokens(gate: tuple[Running, RecordingDriver]) -> None:
    cloud, driver = gate
    vm_id = cloud.one.vm.allocate(
        VM_TEXT + 'NAME = "w1"\nNIC = [ NETWORK = "vcluster" ]\n'
        'CONTEXT = [ TOKEN = "YES", REPORT_READY = "YES" ]\n')
    cloud.wait_state(vm_id, 3, 3)
    spec = driver.specs[vm_id]
    endpoint = spec.context["ONEGATE_ENDPOINT"]
    assert spec.token and spec.context["VMID"] == str(vm_id)
    good = {"X-ONEGATE-TOKEN": spec.token, "X-ONEGATE-VMID": str(vm_id),
            "Content-Type": "application/x-www-form-urlencoded"}
    bad = dict(good, **{"X-ONEGATE-TOKEN": "0" * 32})

    assert _request("PUT", endpoint + "/vm", bad, b"data=READY%3DYES") == (401, "Not authorized")
    assert "READY" not in cloud.one.vm.info(vm_id).USER_TEMPLATE
    assert _request("PUT", endpoint + "/vm", dict(good, **{"X-ONEGATE-VMID": "99"}),
                    b"data=READY%3DYES")[0] == 401
    assert _request("PUT", endpoint + "/vm", good, b"data=READY%3DYES") == (200, "")
    assert cloud.one.vm.info(vm_id).USER_TEMPLATE["READY"] == "YES"
    assert _request("PUT", endpoint + "/vm", good, b"STATUS=booted\nNOTE=\"two words\"\n")[0] \
        == 200

    status, body = _request("GET", endpoint + "/vm", good)
    assert status == 200
    doc = json.loads(body)
    assert doc["VM"]["ID"] == str(vm_id) and doc["VM"]["NAME"] == "w1"
    assert doc["VM"]["STATE"] == "3" and doc["VM"]["LCM_STATE"] == "3"
    assert doc["VM"]["USER_TEMPLATE"] == {"READY": "YES", "STATUS": "booted",
                                          "NOTE": "two words"}
    assert doc["VM"]["TEMPLATE"]["NIC"][0]["IP"] == "10.111.0.100"
    assert _request("GET", endpoint + "/vm", bad)[0] == 401


def test_vm_without_token_cannot_report(gate: tuple[Running, RecordingDriver]) -> None:
    cloud, driver = gate
    vm_id = cloud.one.vm.allocate(VM_TEXT)
    cloud.wait_state(vm_id, 3, 3)
    assert driver.specs[vm_id].token == ""
    url = f"http://127.0.0.1:{cloud.server.onegate_port}/vm"
    assert _request("PUT", url, {"X-ONEGATE-TOKEN": "", "X-ONEGATE-VMID": str(vm_id)},
                    b"data=READY%3DYES")[0] == 401


def _reporting_vm(gate: tuple[Running, RecordingDriver]) -> tuple[Running, int, str,
                                                                  dict[str, str]]:
    cloud, driver = gate
    vm_id = cloud.one.vm.allocate(
        VM_TEXT + 'NAME = "w2"\nNIC = [ NETWORK = "vcluster" ]\n'
        'CONTEXT = [ TOKEN = "YES", REPORT_READY = "YES" ]\n')
    cloud.wait_state(vm_id, 3, 3)
    spec = driver.specs[vm_id]
    return cloud, vm_id, spec.context["ONEGATE_ENDPOINT"], {
        "X-ONEGATE-TOKEN": spec.token, "X-ONEGATE-VMID": str(vm_id),
        "Content-Type": "application/x-www-form-urlencoded"}


def test_put_quotes_values_deletes_and_refuses_as_onegate(
        gate: tuple[Running, RecordingDriver]) -> None:
    """OneGate's PUT /vm: bare values quoted (words, ``=`` and ``;`` kept), attributes merged;
    a comma ends the quoting (oned then refuses the text: nothing changes); type=2 deletes
    one attribute (500 if absent); restricted attributes are refused with 403."""
    cloud, vm_id, endpoint, good = _reporting_vm(gate)
    url = endpoint + "/vm"
    line = ("data=VCLUSTER_JOIN_ERROR%3Dslurmd%20died%3B%20see%20x%3Dy%20(z)"
            "%0AVCLUSTER_JOIN_STAGE%3Dslurmd")
    assert _request("PUT", url, good, line.encode()) == (200, "")
    user = cloud.one.vm.info(vm_id).USER_TEMPLATE
    assert user["VCLUSTER_JOIN_ERROR"] == "slurmd died; see x=y (z)"
    assert user["VCLUSTER_JOIN_STAGE"] == "slurmd"
    status, body = _request("PUT", url, good, b"data=VCLUSTER_JOIN_ERROR%3Da%2C%20b")
    assert status == 500 and body.startswith("[one.vm.update] Parse error: syntax error")
    assert cloud.one.vm.info(vm_id).USER_TEMPLATE["VCLUSTER_JOIN_ERROR"] == \
        "slurmd died; see x=y (z)"
    assert _request("PUT", url + "?type=2", good, b"data=VCLUSTER_JOIN_STAGE") == (200, "")
    user = cloud.one.vm.info(vm_id).USER_TEMPLATE
    assert "VCLUSTER_JOIN_STAGE" not in user and "VCLUSTER_JOIN_ERROR" in user
    assert _request("PUT", url, good, b"data=VCLUSTER_JOIN_STAGE&type=2") == \
        (500, "attribute not found")
    assert _request("PUT", url, good, b"data=SERVICE_ID%3D4") == \
        (403, "Attribute (SERVICE_ID) cannot be modified")
    assert "SERVICE_ID" not in cloud.one.vm.info(vm_id).USER_TEMPLATE


@pytest.mark.parametrize("client", ["curl", "bash"])
def test_join_script_reports_its_failure_through_onegate(
        gate: tuple[Running, RecordingDriver], tmp_path: Path, client: str) -> None:
    """The guest's join script, failing, writes its one-line error (OneGate's separators
    replaced, no token) into the VM's USER_TEMPLATE, with curl and with bash's /dev/tcp."""
    if client == "curl" and shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    cloud, vm_id, endpoint, good = _reporting_vm(gate)
    script = Path(contextualization.__file__).parent / "vcluster-join.sh"
    env = {"VCLUSTER_NODE": "vc-small-001", "SET_HOSTNAME": socket.gethostname(),
           "MUNGE_KEY_BASE64": "unused", "SLURM_CONF_PATH": "/nonexistent/slurm,[x].conf",
           "ONEGATE_ENDPOINT": endpoint, "VMID": str(vm_id),
           "TOKENTXT": good["X-ONEGATE-TOKEN"], "VCLUSTER_JOIN_TOKEN": "secret-join-token",
           "VCLUSTER_HTTP_CLIENT": client, "VCLUSTER_RUN_DIR": str(tmp_path),
           "VCLUSTER_JOIN_LOG": str(tmp_path / "join.log"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 1, proc.stderr
    user = cloud.one.vm.info(vm_id).USER_TEMPLATE
    assert user["VCLUSTER_JOIN_ERROR"] == (
        "SLURM_CONF_PATH /nonexistent/slurm;(x).conf is not readable in this VM: fix the "
        "image or use SLURM_CONF_SERVER (configless)")
    assert good["X-ONEGATE-TOKEN"] not in json.dumps(user) and "secret" not in json.dumps(user)
    assert list(tmp_path.glob("vcluster-onegate-put.*")) == []  # the header file is gone
