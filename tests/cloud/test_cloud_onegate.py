"""OneGate: PUT /vm and GET /vm with good and bad tokens."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

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
    assert _request("PUT", endpoint + "/vm", good, b"STATUS=booted\nNOTE = \"two words\"\n")[0] \
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
