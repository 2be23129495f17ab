"""Slurm nodes as vcluster reads them: the :class:`Node` record and the node listings' readers.

Why it exists: the nodes' part of :mod:`vcluster.slurm_parse` (which re-exports it), apart
from the jobs' (:mod:`vcluster.slurm_jobs`): the node record, a state list split into a base
state and flags, the admin reason without its stamp, and the node listings (``sinfo --json``
of 22.05, ``scontrol show node --json`` of 23.02+, ``scontrol show node -o``), pure and
tested on the captures of each Slurm version.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vcluster.errors import SlurmParseError
from vcluster.slurm_values import _errors, _int, _load_json_list, _state_words, _str

# Base node states (slurm.h ``node_states``); anything else in a state list is a flag.
BASE_NODE_STATES = frozenset({
    "UNKNOWN", "DOWN", "IDLE", "ALLOCATED", "ERROR", "MIXED", "FUTURE", "END",
})
_REASON_STAMP = re.compile(r"\s*\[[^\]@\s]+@[^\]]+\]\s*$")


@dataclass(frozen=True)
class Node:
    """One Slurm node: base state plus flags, as ``sinfo --json`` or ``scontrol`` report it."""

    name: str
    state: str
    """Base state: ``IDLE``, ``ALLOCATED``, ``MIXED``, ``DOWN``, ``FUTURE``, ``UNKNOWN``..."""
    flags: frozenset[str]
    """``CLOUD``, ``POWERED_DOWN``, ``POWERING_UP``, ``DRAIN``, ``NOT_RESPONDING``..."""
    address: str
    hostname: str
    cpus: int
    real_memory_mb: int
    features: tuple[str, ...]
    partitions: tuple[str, ...]
    reason: str
    """The admin reason without Slurm's ``[user@time]`` stamp; ``""`` if none."""

    @property
    def powered_down(self) -> bool:
        return "POWERED_DOWN" in self.flags

    @property
    def powering_up(self) -> bool:
        return "POWERING_UP" in self.flags

    @property
    def powering_down(self) -> bool:
        return "POWERING_DOWN" in self.flags

    @property
    def is_down(self) -> bool:
        return self.state == "DOWN"

    @property
    def is_drained(self) -> bool:
        """Drained or draining: Slurm will start no new job on it."""
        return "DRAIN" in self.flags


# --- sinfo --json / scontrol show node -------------------------------------------------------


def split_node_state(words: Iterable[str]) -> tuple[str, frozenset[str]]:
    """``["IDLE", "CLOUD", "POWERED_DOWN"]`` -> ``("IDLE", {"CLOUD", "POWERED_DOWN"})``."""
    items = [w.upper() for w in words if w]
    base = next((w for w in items if w in BASE_NODE_STATES), "UNKNOWN")
    return base, frozenset(w for w in items if w != base)


def strip_reason_stamp(reason: str) -> str:
    """``"maint [root@2026-11-21T06:00:00]"`` -> ``"maint"``; ``"none"``/``"(null)"`` -> ``""``."""
    if not reason:
        return ""
    reason = _REASON_STAMP.sub("", reason).strip()
    return "" if reason in ("(null)", "none", "None") else reason


def _csv(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        items = [str(v) for v in value]
    else:
        text = _str(value)
        items = [] if text in ("", "(null)") else text.split(",")
    return tuple(i.strip() for i in items if i.strip())


def node_from_json(raw: Mapping[str, Any]) -> Node:
    """One entry of the ``nodes`` list (``sinfo --json`` 22.05, ``scontrol show node
    --json`` 23.02+): ``state`` a word plus ``state_flags`` (22.05) or a list (23.02+)."""
    words = _state_words(raw.get("state")) + _state_words(raw.get("state_flags"))
    state, flags = split_node_state(words)
    return Node(
        name=_str(raw.get("name")),
        state=state,
        flags=flags,
        address=_str(raw.get("address")),
        hostname=_str(raw.get("hostname")),
        cpus=_int(raw.get("cpus")),
        real_memory_mb=_int(raw.get("real_memory")),
        features=_csv(raw.get("features")),
        partitions=_csv(raw.get("partitions")),
        reason=strip_reason_stamp(_str(raw.get("reason"))),
    )


def parse_nodes_json(text: str | bytes | memoryview | Iterable[str],
                     command: str) -> list[Node]:
    """All nodes of a JSON node listing, one per name (first seen wins), sorted by name.

    ``command`` is what printed it: ``sinfo --json`` (22.05) or ``scontrol show node
    --json`` (23.02+). 23.02+'s ``sinfo --json`` has no ``nodes`` list (records grouped by
    partition and state, without addresses) and is refused with the command to use instead.
    """
    data, nodes = _load_json_list(text, command, "nodes", node_from_json)
    if data.get("nodes") is None:
        hint = ("; Slurm 23.02 and later list nodes with `scontrol show node --json`"
                if "sinfo" in data else "")
        raise SlurmParseError(f"`{command}` gave no node list; errors: {_errors(data)}{hint}")
    by_name: dict[str, Node] = {}
    for node in nodes:
        if node.name and node.name not in by_name:
            by_name[node.name] = node
    return [by_name[name] for name in sorted(by_name)]


def parse_sinfo_json(text: str) -> list[Node]:
    """``sinfo --json`` of Slurm 22.05 (see :func:`parse_nodes_json`)."""
    return parse_nodes_json(text, "sinfo --json")


def node_from_record(record: Mapping[str, str]) -> Node:
    """A node from one ``scontrol show node -o`` record (see :func:`parse_scontrol_records`)."""
    state, flags = split_node_state(_state_words(record.get("State", "")))
    return Node(
        name=record.get("NodeName", ""),
        state=state,
        flags=flags,
        address=record.get("NodeAddr", ""),
        hostname=record.get("NodeHostName", ""),
        cpus=_int(record.get("CPUTot")),
        real_memory_mb=_int(record.get("RealMemory")),
        features=_csv(record.get("AvailableFeatures", "")),
        partitions=_csv(record.get("Partitions", "")),
        reason=strip_reason_stamp(record.get("Reason", "")),
    )
