"""OpenNebula's official schemas, and the three known oned-vs-XSD differences undone.

The schemas (tests/data/opennebula_xsd, from OpenNebula/one share/doc/xsd) validate oned's XML
once the root gets ``xmlns="http://opennebula.org/XMLSchema"``. The only differences allowed
are oned's own, listed in API-NOTES: oned writes a VM's TEMPLATE in alphabetical order (the
XSD has its own sequence), a VM with TOKEN=YES has CREATED_BY, a VM never deployed lacks
TM_MAD_SYSTEM. Those three are normalized here, and nothing else.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path

import xmlschema

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


# The schema of each XML-returning method, and whether its VMs are full VMs.
METHOD_SCHEMAS: dict[str, tuple[str, bool]] = {
    "one.vm.info": ("vm.xsd", True),
    "one.vmpool.info": ("vm_pool.xsd", False),
    "one.vmpool.infoextended": ("vm_pool_extended.xsd", True),
    "one.host.info": ("host.xsd", False),
    "one.hostpool.info": ("host_pool.xsd", False),
    "one.vn.info": ("vnet.xsd", False),
    "one.vnpool.info": ("vnet_pool.xsd", False),
    "one.template.info": ("vmtemplate.xsd", False),
    "one.templatepool.info": ("vmtemplate_pool.xsd", False),
    "one.system.config": ("opennebula_configuration.xsd", False),
    "one.user.info": ("user.xsd", False),
    "one.userpool.info": ("user_pool.xsd", False),
    "one.group.info": ("group.xsd", False),
    "one.grouppool.info": ("group_pool.xsd", False),
    "one.acl.info": ("acl_pool.xsd", False),
}
