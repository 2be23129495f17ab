"""A VM's CONTEXT as oned builds it at allocate time.

Why this exists: the guest's contextualization reads only CONTEXT, and oned rewrites it before
the VM ever boots: ``$VAR`` references are expanded from the VM's template (``$NAME``,
``$NIC[IP]``, ``$NIC[IP, NETWORK="x"]``, ``$UNAME``...; an unknown one becomes empty),
``NETWORK=YES`` adds ``ETHn_IP/MAC/MASK/GATEWAY/DNS/NETWORK`` for every NIC, and
``TOKEN=YES`` adds ``ONEGATE_ENDPOINT`` and ``VMID`` (the token itself goes to the guest as
token.txt, and CREATED_BY to the VM's TEMPLATE).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from vcluster.testbed.cloud.template_parse import Template

_VAR_RE = re.compile(
    r"\$([A-Za-z0-9_]+)(?:\[\s*([A-Za-z0-9_]+)\s*(?:,\s*([A-Za-z0-9_]+)\s*=\s*"
    r"(?:\"([^\"]*)\"|([^\]\s]*))\s*)?\])?")


def expand_vars(text: str, lookup: Callable[[str, str, str, str], str]) -> str:
    """Replace every ``$VAR``, ``$VAR[ATTR]`` and ``$VAR[ATTR, KEY=VALUE]`` in ``text``."""

    def repl(m: re.Match[str]) -> str:
        name, attr = m.group(1).upper(), (m.group(2) or "").upper()
        key = (m.group(3) or "").upper()
        value = m.group(4) if m.group(4) is not None else (m.group(5) or "")
        return lookup(name, attr, key, value)

    return _VAR_RE.sub(repl, text)


def template_lookup(templates: list[Template], specials: dict[str, str]
                    ) -> Callable[[str, str, str, str], str]:
    """A ``$VAR`` resolver over the VM's templates (TEMPLATE first, then USER_TEMPLATE)."""

    def lookup(name: str, attr: str, key: str, value: str) -> str:
        if not attr and name in specials:
            return specials[name]
        for tmpl in templates:
            for found in tmpl.get_all(name):
                if isinstance(found, str):
                    if not attr:
                        return found
                    continue
                if key and found.get(key) != value:
                    continue
                if attr:
                    return found.get(attr, "")
        return ""

    return lookup


def build_context(context: dict[str, str], *, templates: list[Template],
                  specials: dict[str, str], nics: list[dict[str, str]], vm_id: int,
                  onegate_endpoint: str) -> dict[str, str]:
    """The CONTEXT vector after oned's additions and ``$VAR`` expansion."""
    lookup = template_lookup(templates, specials)
    out = {key: expand_vars(val, lookup) for key, val in context.items()}
    # the context CD-ROM is the VM's next disk (no other disks here): DISK_ID 0, hda
    out.setdefault("DISK_ID", "0")
    out.setdefault("TARGET", "hda")
    if out.get("NETWORK", "").upper() == "YES":
        for nic in nics:
            prefix = f"ETH{nic.get('NIC_ID', '0')}_"
            out[prefix + "IP"] = nic.get("IP", "")
            out[prefix + "MAC"] = nic.get("MAC", "")
            out[prefix + "MASK"] = nic.get("NETWORK_MASK", "")
            out[prefix + "GATEWAY"] = nic.get("GATEWAY", "")
            out[prefix + "DNS"] = nic.get("DNS", "")
            out[prefix + "NETWORK"] = nic.get("NETWORK_ADDRESS", "")
    if out.get("TOKEN", "").upper() == "YES":
        out["ONEGATE_ENDPOINT"] = onegate_endpoint
        out["VMID"] = str(vm_id)
    return out
