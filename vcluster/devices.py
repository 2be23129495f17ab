"""Devices of a node class: Slurm GRES (``gpu:a100:1``) and OpenNebula PCI passthrough.

A GPU node class says two things that must agree: what Slurm schedules (the node's
``Gres=``, with ``GresTypes`` and a gres.conf line) and what OpenNebula attaches to the VM
(``PCI = [ VENDOR = "10de", CLASS = "0302" ]`` in its template: oned's scheduler places the
VM only on a host whose monitored ``PCI_DEVICES`` hold a free matching device, and assigns
it). This module reads both from the config and writes the lines; it is pure.

- GRES in slurm.conf's node syntax, ``name[:type][:count]`` (count 1 if left out).
- PCI as oned checks it (``VirtualMachine::check_pci_attributes``): VENDOR, DEVICE and CLASS
  are hexadecimal; either SHORT_ADDRESS alone or at least one of the three.
- A job's ``--gres`` (``[gres/]name[:type][:count]``, comma separated, ``none``) and
  ``--gpus-per-node`` / ``--gpus`` (``[type:]count``), to route it to a class that has them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

GRES_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
GRES_TYPE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
PCI_KEYS = ("VENDOR", "DEVICE", "CLASS", "SHORT_ADDRESS")
"""The PCI request attributes vcluster writes (oned knows more: ROOT, VM_BUS...)."""
SHORT_ADDRESS_RE = re.compile(r"^[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
GRES_CONF_WORD_RE = re.compile(r"^[A-Za-z]+=[^\s=]+$")
_COUNT_RE = re.compile(r"^(\d+)([kKmMgG]?)$")
_COUNT_FACTOR = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


@dataclass(frozen=True)
class Gres:
    """One generic resource: ``gpu:a100:2`` is name gpu, type a100, count 2."""

    name: str
    type: str | None
    count: int

    def __str__(self) -> str:
        return ":".join([self.name, *([self.type] if self.type else []), str(self.count)])


def _count(text: str) -> int | None:
    match = _COUNT_RE.match(text)
    if not match:
        return None
    return int(match.group(1)) * _COUNT_FACTOR[match.group(2).upper()]


def parse_gres_item(text: str, *, job: bool = False) -> Gres:
    """``gpu``, ``gpu:2``, ``gpu:a100:2`` (and for a job ``gres/gpu:1``); ValueError if bad.

    As Slurm reads it: a last part that is a number is the count, otherwise the type.
    """
    item = text.strip()
    if job and item.startswith("gres/"):
        item = item[len("gres/"):]
    parts = item.split(":")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise ValueError(f"{text!r} is not name[:type][:count] (e.g. gpu:a100:1)")
    name, rest = parts[0], parts[1:]
    count = 1
    if rest and _count(rest[-1]) is not None:
        count = _count(rest[-1]) or 0
        rest = rest[:-1]
    elif len(rest) == 2:
        raise ValueError(f"{text!r}: the count {rest[-1]!r} is not a whole number")
    gres_type = rest[0] if rest else None
    if not GRES_NAME_RE.match(name):
        raise ValueError(f"{text!r}: the name {name!r} may hold only letters, digits and '_', "
                         "starting with a letter")
    if gres_type is not None and not GRES_TYPE_RE.match(gres_type):
        raise ValueError(f"{text!r}: the type {gres_type!r} may hold only letters, digits, "
                         "'_', '.' and '-'")
    if count < 1 and not job:
        raise ValueError(f"{text!r}: the count must be at least 1")
    return Gres(name, gres_type, count)


def parse_class_gres(items: Iterable[str]) -> tuple[Gres, ...]:
    """A node class's ``gres`` list; ValueError naming the bad item or a repeated one."""
    found: list[Gres] = []
    for item in items:
        for part in item.split(","):
            gres = parse_gres_item(part)
            if any(g.name == gres.name and g.type == gres.type for g in found):
                raise ValueError(f"{part.strip()!r} is given twice")
            found.append(gres)
    return tuple(found)


def parse_pci(raw: Mapping[str, object]) -> dict[str, str]:
    """One PCI request (keys case-insensitive) as oned accepts it; ValueError if not.

    Values are kept as written (oned compares them as hexadecimal numbers).
    """
    pci: dict[str, str] = {}
    for key, value in raw.items():
        upper = str(key).upper()
        if upper not in PCI_KEYS:
            raise ValueError(f"unknown PCI key {key!r}; use vendor, device, class or "
                             "short_address")
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"PCI {key} must be a non-empty string, got {value!r}")
        pci[upper] = value.strip()
    for key in ("VENDOR", "DEVICE", "CLASS"):
        if key in pci and not re.fullmatch(r"(0[xX])?[0-9a-fA-F]{1,4}", pci[key]):
            raise ValueError(f"PCI {key.lower()} {pci[key]!r} is not a hexadecimal id "
                             "such as 10de (oned: Wrong Hex value)")
    by_id = any(k in pci for k in ("VENDOR", "DEVICE", "CLASS"))
    if "SHORT_ADDRESS" in pci:
        if by_id:
            raise ValueError("PCI short_address cannot be set with vendor, device or class")
        if not SHORT_ADDRESS_RE.match(pci["SHORT_ADDRESS"]):
            raise ValueError(f"PCI short_address {pci['SHORT_ADDRESS']!r} is not BUS:SLOT.F "
                             "such as 41:00.0")
    elif not by_id:
        raise ValueError("a PCI request needs vendor, device or class (or short_address)")
    return {k: pci[k] for k in PCI_KEYS if k in pci}


def check_gres_conf(text: str) -> str:
    """The extra gres.conf words of a class (``File=/dev/nvidia0``, ``AutoDetect=nvml``)."""
    words = text.split()
    for word in words:
        if not GRES_CONF_WORD_RE.match(word):
            raise ValueError(f"{word!r} is not a gres.conf Key=Value word")
        if word.split("=", 1)[0].lower() in ("nodename", "name", "type", "count"):
            raise ValueError(f"{word!r}: vcluster writes NodeName, Name, Type and Count itself")
    return " ".join(words)


# --- what a job asks for ------------------------------------------------------------------


def job_gres(gres: str | None, gpus_per_node: str | None = None,
             gpus: str | None = None) -> tuple[Gres, ...]:
    """The GRES one node of the job needs, from ``--gres``, ``--gpus-per-node``, ``--gpus``.

    ``--gpus=N`` is a total over the job's nodes: each node needs at least one GPU of the
    type. Raises ValueError naming the text at fault.
    """
    wanted: list[Gres] = []
    if gres and gres.strip().lower() != "none":
        wanted += [parse_gres_item(part, job=True) for part in gres.split(",")]
    for text, per_node in ((gpus_per_node, True), (gpus, False)):
        if not text:
            continue
        for part in text.split(","):
            kind, _, number = part.strip().rpartition(":")
            count = _count(number)
            if count is None or (kind and not GRES_TYPE_RE.match(kind)):
                raise ValueError(f"{part.strip()!r} is not [type:]count (e.g. 1 or a100:1)")
            wanted.append(Gres("gpu", kind or None, count if per_node else min(count, 1)))
    return tuple(g for g in wanted if g.count > 0)


def available(have: Iterable[Gres], want: Gres) -> int:
    """How many of ``want`` (its name, and its type if it names one) a node of ``have`` has."""
    return sum(g.count for g in have
               if g.name == want.name and (want.type is None or g.type == want.type))


def missing(have: Iterable[Gres], wanted: Iterable[Gres]) -> Gres | None:
    """The first wanted GRES a node with ``have`` lacks (or has too few of), or None."""
    have = tuple(have)
    return next((w for w in wanted if available(have, w) < w.count), None)
