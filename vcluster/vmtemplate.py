"""OpenNebula template text, and the extra template every worker VM is booted with.

oned takes templates as text (``KEY = "value"`` lines and ``KEY = [ A = "x", B = "y" ]``
vectors). pyone would render a dict for us, but without escaping, so a quote in a value
breaks the template; this module renders it with the escaping oned's own parser undoes.

oned's template lexer (``src/parsers/template_parser.l`` and ``template_syntax.y``) reads a
double-quoted value up to the first ``"`` not preceded by a backslash and then turns every
``\\"`` back into ``"``; it does *not* unescape ``\\\\``. So a quote is written ``\\"`` and a
backslash is written as itself: doubling it would store two backslashes. Two values cannot be
written at all and are refused: one ending in a backslash (its closing quote would read as
escaped) and one holding ``]]>`` (oned aborts on it: it stores templates as XML CDATA).

:func:`worker_vm_extra` builds what ``one.template.instantiate`` appends to a node class's
template: size, the ``VCLUSTER_*`` tags vcluster finds its VMs by, and the CONTEXT the VM
reads to join Slurm. The CONTEXT is readable by everyone who can read the VM, so it carries
no secret: a small bootstrap (``contextualization/vcluster-boot.sh``) as the START_SCRIPT,
the controller's join URL and a one-time token; the bootstrap fetches the join script
(``contextualization/vcluster-join.sh``) from that URL, and the join script trades the token
for the munge key (see :mod:`vcluster.controller.join_tokens`).
"""

from __future__ import annotations

import base64
import importlib.resources
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from vcluster.config import NodeClass
from vcluster.errors import ConfigError

ATTRIBUTE_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
GUEST_SCRIPT_PACKAGE = "contextualization"
GUEST_SCRIPT_NAME = "vcluster-join.sh"
BOOTSTRAP_SCRIPT_NAME = "vcluster-boot.sh"

TemplateValue = str | Mapping[str, str] | Sequence[Mapping[str, str]]
"""A value, a vector attribute, or several vector attributes of one name (``PCI``)."""


def escape_value(value: str) -> str:
    """``value`` as a double-quoted OpenNebula template value.

    Raises ``ValueError`` for the two values oned cannot read back (see the module doc).
    """
    if value.endswith("\\"):
        raise ValueError(f"template value {value!r} ends with a backslash, which oned cannot read")
    if "]]>" in value:
        raise ValueError(f"template value {value!r} holds ']]>', which oned refuses")
    return '"' + value.replace('"', '\\"') + '"'


def _check_name(name: str) -> None:
    if not ATTRIBUTE_NAME_RE.match(name):
        raise ValueError(
            f"template attribute name {name!r} may hold only letters, digits and '_'"
        )


def render_template(attrs: Mapping[str, TemplateValue]) -> str:
    """OpenNebula template text for ``attrs``, in their order, one attribute a line.

    A string value becomes ``KEY = "value"``; a mapping becomes a vector attribute
    ``KEY = [ A = "x", B = "y" ]`` (written over several lines, as ``onetemplate`` does);
    a sequence of mappings becomes one vector attribute of that name each.
    """
    lines: list[str] = []
    for name, value in attrs.items():
        _check_name(name)
        if isinstance(value, str):
            lines.append(f"{name} = {escape_value(value)}")
            continue
        if not isinstance(value, Mapping):
            lines += [render_template({name: vector}).rstrip("\n") for vector in value]
            continue
        if not value:
            lines.append(f"{name} = [ ]")
            continue
        parts: list[str] = []
        for sub_name, sub_value in value.items():
            _check_name(sub_name)
            if not isinstance(sub_value, str):
                raise ValueError(
                    f"template attribute {name}/{sub_name} must be a string, got {sub_value!r}"
                )
            parts.append(f"  {sub_name} = {escape_value(sub_value)}")
        lines.append(f"{name} = [\n" + ",\n".join(parts) + " ]")
    return "\n".join(lines) + ("\n" if lines else "")


# --- worker VMs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GuestContext:
    """What a worker VM needs to join Slurm, handed to it through its CONTEXT."""

    slurm_conf_server: str
    """slurmctld ``host:port`` the VM's slurmd fetches its config from (configless), or ""."""
    join_url: str
    """The controller's join endpoint (``http://HOST:PORT``): join script and munge key."""
    slurm_conf_path: str = ""
    """slurm.conf path inside the image, when not configless."""
    extra: Mapping[str, str] = field(default_factory=dict)
    """More CONTEXT variables (e.g. ``SSH_PUBLIC_KEY``); ``$VAR`` in them is expanded by oned."""


def guest_script_bytes(name: str = GUEST_SCRIPT_NAME) -> bytes:
    """A guest script shipped as package data: ``contextualization/vcluster-join.sh`` (served
    by the join endpoint) or, by name, ``vcluster-boot.sh`` (the CONTEXT's START_SCRIPT)."""
    try:
        resource = importlib.resources.files(GUEST_SCRIPT_PACKAGE) / name
        return resource.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise ConfigError(
            f"the guest script {GUEST_SCRIPT_PACKAGE}/{name} is missing from this "
            "vcluster installation; reinstall vcluster"
        ) from exc


def bootstrap_script_bytes() -> bytes:
    return guest_script_bytes(BOOTSTRAP_SCRIPT_NAME)


# Attributes vcluster sets itself; a node class's vm_options may not replace them.
_OWN_TEMPLATE_KEYS = ("CPU", "VCPU", "MEMORY", "VCLUSTER_NODE", "VCLUSTER_JOB",
                      "VCLUSTER_CLUSTER", "VCLUSTER_STANDBY", "VCLUSTER_EARLY", "CONTEXT")


def worker_context(
    *, node_name: str, job_id: int | None, cluster: str, context: GuestContext,
    guest_script: bytes, join_token: str, standby_class: str = "",
) -> dict[str, str]:
    """The CONTEXT variables of a worker VM (consumed by vcluster-boot.sh and
    vcluster-join.sh); ``guest_script`` is the bootstrap run as START_SCRIPT.

    A standby VM (``standby_class`` set, ``node_name`` "") has no node name yet: its guest
    script learns it through OneGate when the controller hands the VM to a node."""
    if not context.slurm_conf_server and not context.slurm_conf_path:
        raise ConfigError(
            "a worker VM needs either the slurmctld address (configless) or a slurm.conf "
            "path in its image; set slurm.controller_host or turn slurm.configless off",
            key="slurm.configless",
        )
    variables: dict[str, str] = {
        "SET_HOSTNAME": node_name,
        "NETWORK": "YES",
        "TOKEN": "YES",
        "REPORT_READY": "YES",
        "START_SCRIPT_BASE64": base64.b64encode(guest_script).decode("ascii"),
        "VCLUSTER_NODE": node_name,
        "VCLUSTER_JOB": "" if job_id is None else str(job_id),
        "VCLUSTER_CLUSTER": cluster,
    }
    if standby_class:
        del variables["SET_HOSTNAME"]
        variables["VCLUSTER_STANDBY"] = standby_class
    if context.slurm_conf_server:
        variables["SLURM_CONF_SERVER"] = context.slurm_conf_server
    if context.slurm_conf_path:
        variables["SLURM_CONF_PATH"] = context.slurm_conf_path
    variables["VCLUSTER_JOIN_URL"] = context.join_url
    variables["VCLUSTER_JOIN_TOKEN"] = join_token
    for name, value in context.extra.items():
        key = name.upper()
        if key in variables:
            raise ConfigError(f"extra CONTEXT variable {key} would replace the one vcluster sets")
        variables[key] = value
    return variables


def worker_vm_extra(
    *,
    node_class: NodeClass,
    node_name: str,
    job_id: int | None,
    cluster: str,
    cpus: int,
    memory_mb: int,
    context: GuestContext,
    join_token: str,
    guest_script: bytes | None = None,
    standby_class: str = "",
    early_node: str = "",
) -> str:
    """The extra template text ``one.template.instantiate`` merges into a worker VM.

    ``join_token`` is the boot attempt's one-time token. ``guest_script`` defaults to the
    packaged ``vcluster-boot.sh``; it is sent base64 in ``START_SCRIPT_BASE64`` because oned
    would expand the ``$VAR`` of a plain START_SCRIPT.
    """
    if cpus <= 0 or memory_mb <= 0:
        raise ValueError(f"a VM needs cpus > 0 and memory_mb > 0, got {cpus} and {memory_mb}")
    script = bootstrap_script_bytes() if guest_script is None else guest_script
    attrs: dict[str, TemplateValue] = {
        "CPU": str(cpus),
        "VCPU": str(cpus),
        "MEMORY": str(memory_mb),
        "VCLUSTER_NODE": node_name,
        "VCLUSTER_JOB": "" if job_id is None else str(job_id),
        "VCLUSTER_CLUSTER": cluster,
    }
    if standby_class:
        attrs["VCLUSTER_STANDBY"] = standby_class
    if early_node:
        attrs["VCLUSTER_EARLY"] = early_node
    for name, value in node_class.vm_options.items():
        if name.upper() in _OWN_TEMPLATE_KEYS:
            raise ConfigError(
                f"may not set {name.upper()}: vcluster sets it for every VM",
                key=f"node_class[{node_class.name}].vm_options",
            )
        attrs[name] = value
    if node_class.pci:  # replaces the template's own PCI (instantiate's extra does)
        attrs["PCI"] = tuple(node_class.pci)
    attrs["CONTEXT"] = worker_context(
        node_name=node_name, job_id=job_id, cluster=cluster, context=context,
        guest_script=script, join_token=join_token, standby_class=standby_class,
    )
    return render_template(attrs)
