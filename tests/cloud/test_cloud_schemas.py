"""Every kind of XML body the testbed cloud sends, validated against the official schemas.

(All tests also pass their pyone traffic through the validating proxy of conftest.py; this
module makes sure each kind of body, in each interesting VM state, is actually seen.)
"""

from __future__ import annotations

import time

import pytest

from tests.cloud.conftest import AUTH, VM_TEXT, Running
from tests.cloud.schemas import validate


def ok(answer: list[object]) -> str:
    assert answer[0] is True and answer[2] == 0, answer
    assert isinstance(answer[1], str)
    return answer[1]


@pytest.fixture
def populated(cloud: Running) -> Running:
    one = cloud.one
    tid = one.template.allocate('NAME = "t"\nCPU = 1\nMEMORY = 64\n')
    one.template.instantiate(tid, "", True, "")
    one.vm.allocate(VM_TEXT + 'NIC = [ NETWORK = "vcluster" ]\nLABEL = "x"\n'
                    'CONTEXT = [ NETWORK = "YES", TOKEN = "YES", REPORT_READY = "YES" ]\n')
    one.vm.allocate(VM_TEXT + 'TESTBED_FAULT = "boot-fail"\n')
    done = one.vm.allocate(VM_TEXT, True)
    one.vm.action("terminate", done)
    one.vm.allocate(VM_TEXT + 'SCHED_REQUIREMENTS = "FREE_CPU > 1000000"\n')
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = {(vm.STATE, vm.LCM_STATE) for vm in one.vmpool.info(-2, -1, -1, -2).VM}
        if {(3, 3), (3, 36)} <= states:
            break
        time.sleep(0.05)
    return cloud


def test_vm_bodies(populated: Running) -> None:
    raw = populated.raw
    for vm_id in range(5):
        validate(ok(raw.one.vm.info(AUTH, vm_id)), "vm.xsd", full_vms=True)
    validate(ok(raw.one.vmpool.info(AUTH, -2, -1, -1, -2)), "vm_pool.xsd")
    validate(ok(raw.one.vmpool.infoextended(AUTH, -2, -1, -1, -2)), "vm_pool_extended.xsd",
             full_vms=True)


def test_host_network_template_and_config_bodies(populated: Running) -> None:
    raw = populated.raw
    validate(ok(raw.one.hostpool.info(AUTH)), "host_pool.xsd")
    validate(ok(raw.one.host.info(AUTH, 0)), "host.xsd")
    validate(ok(raw.one.vnpool.info(AUTH, -2, -1, -1)), "vnet_pool.xsd")
    validate(ok(raw.one.vn.info(AUTH, 0)), "vnet.xsd")
    validate(ok(raw.one.templatepool.info(AUTH, -2, -1, -1)), "vmtemplate_pool.xsd")
    validate(ok(raw.one.template.info(AUTH, 0)), "vmtemplate.xsd")
    validate(ok(raw.one.system.config(AUTH)), "opennebula_configuration.xsd")


def test_values_are_cdata_and_vms_have_no_namespace(populated: Running) -> None:
    body = ok(populated.raw.one.vm.info(AUTH, 1))
    assert body.startswith("<VM><ID>1</ID><UID>0</UID><GID>0</GID><UNAME>oneadmin</UNAME>")
    assert "<CPU><![CDATA[0.1]]></CPU>" in body
    assert "<LABEL><![CDATA[x]]></LABEL>" in body


def test_short_vm_template_is_plain_and_extended_pool_has_the_last_history(
        populated: Running) -> None:
    short = ok(populated.raw.one.vmpool.info(AUTH, -2, 1, 1, -2))
    assert "<TEMPLATE><CPU>0.1</CPU><MEMORY>64</MEMORY><NIC>" in short
    full = ok(populated.raw.one.vmpool.infoextended(AUTH, -2, 1, 1, -2))
    assert full.count("<HISTORY>") == 1
