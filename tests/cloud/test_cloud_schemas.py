"""Every XML body the testbed cloud sends, validated against OpenNebula's official schemas.

The schemas (tests/data/opennebula_xsd, from OpenNebula/one share/doc/xsd) validate oned's XML
once the root gets ``xmlns="http://opennebula.org/XMLSchema"``. The only differences allowed
are oned's own, listed in API-NOTES: oned writes a VM's TEMPLATE in alphabetical order (the
XSD has its own sequence), a VM with TOKEN=YES has CREATED_BY, a VM never deployed lacks
TM_MAD_SYSTEM. Those three are normalized here, and nothing else.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path

import pytest
import xmlschema

from tests.cloud.conftest import AUTH, VM_TEXT, Running

XSD_DIR = Path(__file__).resolve().parents[1] / "data" / "opennebula_xsd"
NS = "http://opennebula.org/XMLSchema"


@cache
def schema(name: str) -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(XSD_DIR / name))


@cache
def vm_template_order() -> list[str]:
    """The sequence of VM/TEMPLATE children in vm.xsd."""
    tree = ET.parse(XSD_DIR / "vm.xsd")
    xs = "{http://www.w3.org/2001/XMLSchema}"
    for element in tree.iter(f"{xs}element"):
        if element.get("name") == "TEMPLATE":
            seq = element.find(f"{xs}complexType/{xs}sequence")
            assert seq is not None
            return [e.get("name", "") for e in seq.findall(f"{xs}element")]
    raise AssertionError("no TEMPLATE in vm.xsd")


def normalize_full_vm(vm: ET.Element) -> None:
    """Undo the three known oned-vs-XSD differences of a full VM, checking each is real."""
    template = vm.find("TEMPLATE")
    assert template is not None
    names = [child.tag for child in template]
    assert names == sorted(names), f"oned writes TEMPLATE sorted, got {names}"
    created_by = template.find("CREATED_BY")
    if created_by is not None:
        context = template.find("CONTEXT")
        assert context is not None and context.findtext("TOKEN") == "YES"
        template.remove(created_by)
    if template.find("TM_MAD_SYSTEM") is None:
        assert vm.find("HISTORY_RECORDS/HISTORY") is None, "a deployed VM has TM_MAD_SYSTEM"
        extra = ET.SubElement(template, "TM_MAD_SYSTEM")
        extra.text = "ssh"
    order = {name: i for i, name in enumerate(vm_template_order())}
    children = list(template)
    for child in children:
        assert child.tag in order, f"{child.tag} is not a TEMPLATE element of vm.xsd"
        template.remove(child)
    for child in sorted(children, key=lambda c: order[c.tag]):
        template.append(child)


def validate(body: str, xsd: str, *, full_vms: bool = False) -> None:
    root = ET.fromstring(body)
    if full_vms:
        for vm in [root] if root.tag == "VM" else root.findall("VM"):
            normalize_full_vm(vm)
    text = ET.tostring(root, encoding="unicode")
    text = re.sub(r"^<([A-Z_]+)", rf'<\1 xmlns="{NS}"', text, count=1)
    schema(xsd).validate(text)


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
