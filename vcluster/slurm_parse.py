"""Pure readers of Slurm 22.05 command output: no I/O, tested on captured real output.

Kept apart from :mod:`vcluster.slurm` (which runs the commands) so that every parser is a
function of text alone and can be tested against the files in ``tests/data/slurm/``.

Formats read here:

* ``squeue --json`` and ``sinfo --json`` (openapi v0.0.38 in 22.05). They ignore filters
  such as ``-j``: the caller always gets every job/node and filters in Python.
* ``scontrol show job|node X -o``: one line per record of ``Key=Value`` pairs.
* Slurm hostlists (``vc-small-[001-004],gpu1``) through python-hostlist.

Units: memory in MB (Slurm's own unit), times as epoch seconds (float).
Missing keys are tolerated: a field Slurm did not print gets its "unknown" value
(``0``, ``""``, ``None``) rather than an exception.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import hostlist

from vcluster.errors import SlurmParseError

# Job states after which the job will not run again (unless requeued by hand).
FINISHED_JOB_STATES = frozenset({
    "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
    "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED",
})
# Base node states (slurm.h ``node_states``); anything else in a state list is a flag.
BASE_NODE_STATES = frozenset({
    "UNKNOWN", "DOWN", "IDLE", "ALLOCATED", "ERROR", "MIXED", "FUTURE", "END",
})
# Slurm's NO_VAL / NO_VAL64 / INFINITE sentinels as they appear in JSON numbers.
_SENTINELS = frozenset({0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFE, 0xFFFFFFFFFFFFFFFF})
_REASON_STAMP = re.compile(r"\s*\[[^\]@\s]+@[^\]]+\]\s*$")
_RECORD_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z][A-Za-z0-9_:/.()-]*)=")


@dataclass(frozen=True)
class Job:
    """One Slurm job (or one array task) as ``squeue --json`` reports it."""

    job_id: int
    array_job_id: int | None
    """The array's master job id for an array task, else None."""
    array_task_id: int | None
    name: str
    user: str
    user_id: int
    state: str
    """``PENDING``, ``CONFIGURING``, ``RUNNING``, ``COMPLETING``, ``COMPLETED``, ``FAILED``..."""
    state_reason: str
    partition: str
    nodes: tuple[str, ...]
    """Allocated nodes, expanded; empty while pending."""
    node_count: int
    cpus: int
    cpus_per_task: int
    tasks: int
    memory_per_node_mb: int | None
    memory_per_cpu_mb: int | None
    features: str
    """The ``--constraint`` expression as given (``small``, ``a&b``)."""
    comment: str
    exit_code: int | None
    """Exit status of the batch script (128+N if killed by signal N); None until finished."""
    submit_time: float
    start_time: float | None
    """Epoch seconds the job started; None while pending (no estimate is reported)."""
    end_time: float | None
    """Epoch seconds the job ended; None until finished (no time-limit projection)."""
    work_dir: str
    array_task_string: str = ""
    """Pending array tasks still folded into the master record, e.g. ``"3-4"``; else ``""``."""

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED_JOB_STATES


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


# --- hostlists ------------------------------------------------------------------------------


def expand_hostlist(text: str) -> list[str]:
    """``"n[1-3],x"`` -> ``["n1", "n2", "n3", "x"]``; ``""`` and ``"(null)"`` -> ``[]``."""
    text = text.strip()
    if not text or text in ("(null)", "None"):
        return []
    try:
        return list(hostlist.expand_hostlist(text))
    except hostlist.BadHostlist as exc:
        raise SlurmParseError(f"not a valid Slurm hostlist: {text!r} ({exc})") from exc


def compress_hostlist(names: Iterable[str]) -> str:
    """``["n1", "n2", "n3", "x"]`` -> ``"n[1-3],x"`` (duplicates removed)."""
    items = [n for n in names if n]
    try:
        return str(hostlist.collect_hostlist(items))
    except hostlist.BadHostlist as exc:
        raise SlurmParseError(f"cannot make a Slurm hostlist of {items!r} ({exc})") from exc


# --- JSON helpers -----------------------------------------------------------------------------


def _load_json(text: str, command: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SlurmParseError(
            f"`{command}` printed something that is not JSON ({exc.msg} at line {exc.lineno}); "
            "is this Slurm 22.05 or newer?"
        ) from exc
    if not isinstance(data, dict):
        raise SlurmParseError(f"`{command}` printed JSON that is not an object")
    return data


def _number(value: Any) -> int | None:
    """An integer field: plain number, ``{"set":..,"number":..}`` (23.x), or None if unset."""
    if isinstance(value, Mapping):
        if value.get("infinite") or not value.get("set", True):
            return None
        value = value.get("number")
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return None if number in _SENTINELS else number


def _int(value: Any, default: int = 0) -> int:
    number = _number(value)
    return default if number is None else number


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _time(value: Any) -> float | None:
    number = _number(value)
    return float(number) if number else None


def _exit_status(value: Any) -> int | None:
    """Decode Slurm's exit code: a raw wait status (22.05) or ``{"return_code":..}`` (23.x)."""
    if isinstance(value, Mapping):
        signal = _number(value.get("signal", {}).get("id")) if isinstance(
            value.get("signal"), Mapping) else None
        if signal:
            return 128 + signal
        return _number(value.get("return_code"))
    status = _number(value)
    if status is None:
        return None
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _state_words(value: Any) -> list[str]:
    if isinstance(value, list):
        words = [str(v) for v in value]
    else:
        words = re.split(r"[+,\s]+", _str(value))
    return [w.strip().upper() for w in words if w.strip()]


# --- squeue --json ------------------------------------------------------------------------------


def job_from_json(raw: Mapping[str, Any]) -> Job:
    """One entry of ``squeue --json``'s ``jobs`` list."""
    states = _state_words(raw.get("job_state"))
    state = states[0] if states else "UNKNOWN"
    finished = state in FINISHED_JOB_STATES
    array_job_id = _number(raw.get("array_job_id")) or None
    array_task_id = _number(raw.get("array_task_id")) if array_job_id else None
    return Job(
        job_id=_int(raw.get("job_id")),
        array_job_id=array_job_id,
        array_task_id=array_task_id,
        name=_str(raw.get("name")),
        user=_str(raw.get("user_name")),
        user_id=_int(raw.get("user_id")),
        state=state,
        state_reason=_str(raw.get("state_reason")),
        partition=_str(raw.get("partition")),
        nodes=tuple(expand_hostlist(_str(raw.get("nodes")))),
        node_count=_int(raw.get("node_count")),
        cpus=_int(raw.get("cpus")),
        cpus_per_task=_cpus_per_task(raw),
        tasks=_int(raw.get("tasks"), 1),
        memory_per_node_mb=_number(raw.get("memory_per_node")) or None,
        memory_per_cpu_mb=_number(raw.get("memory_per_cpu")) or None,
        features=_str(raw.get("features")),
        comment=_str(raw.get("comment")),
        exit_code=_exit_status(raw.get("exit_code")) if finished else None,
        submit_time=_time(raw.get("submit_time")) or 0.0,
        start_time=_time(raw.get("start_time")) if state != "PENDING" else None,
        end_time=_time(raw.get("end_time")) if finished else None,
        work_dir=_str(raw.get("current_working_directory")),
        array_task_string=_str(raw.get("array_task_string")),
    )


def _cpus_per_task(raw: Mapping[str, Any]) -> int:
    """``-c``: 22.05.8 always prints ``cpus_per_task: null``, so derive it when needed.

    Slurm sets the per-node minimum (``minimum_cpus_per_node``) to cpus_per_task times
    ``--ntasks-per-node`` (``tasks_per_node``, 0 when not given); ``--mincpus`` would
    inflate it, which vcluster does not use.
    """
    given = _number(raw.get("cpus_per_task"))
    if given:
        return given
    per_node = _int(raw.get("minimum_cpus_per_node"), 1)
    return max(1, per_node // max(1, _int(raw.get("tasks_per_node"))))


def parse_squeue_json(text: str) -> list[Job]:
    """All jobs in ``squeue --json`` output, in Slurm's order."""
    data = _load_json(text, "squeue --json")
    raw_jobs = data.get("jobs")
    if raw_jobs is None:
        errors = data.get("errors") or []
        raise SlurmParseError(f"`squeue --json` gave no job list; errors: {errors!r}")
    return [job_from_json(raw) for raw in raw_jobs if isinstance(raw, Mapping)]


# --- sinfo --json / scontrol show node -------------------------------------------------------


def split_node_state(words: Iterable[str]) -> tuple[str, frozenset[str]]:
    """``["IDLE", "CLOUD", "POWERED_DOWN"]`` -> ``("IDLE", {"CLOUD", "POWERED_DOWN"})``."""
    items = [w.upper() for w in words if w]
    base = next((w for w in items if w in BASE_NODE_STATES), "UNKNOWN")
    return base, frozenset(w for w in items if w != base)


def strip_reason_stamp(reason: str) -> str:
    """``"maint [root@2026-11-21T06:00:00]"`` -> ``"maint"``; ``"none"``/``"(null)"`` -> ``""``."""
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
    """One entry of ``sinfo --json``'s ``nodes`` list."""
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


def parse_sinfo_json(text: str) -> list[Node]:
    """All nodes in ``sinfo --json`` output, one per name (first seen wins), sorted by name."""
    data = _load_json(text, "sinfo --json")
    raw_nodes = data.get("nodes")
    if raw_nodes is None:
        errors = data.get("errors") or []
        raise SlurmParseError(f"`sinfo --json` gave no node list; errors: {errors!r}")
    by_name: dict[str, Node] = {}
    for raw in raw_nodes:
        if isinstance(raw, Mapping):
            node = node_from_json(raw)
            if node.name and node.name not in by_name:
                by_name[node.name] = node
    return [by_name[name] for name in sorted(by_name)]


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


# --- scontrol show ... -o ----------------------------------------------------------------------


def parse_scontrol_record(line: str) -> dict[str, str]:
    """One ``Key=Value Key=Value`` line; a value runs until the next `` Key=``.

    Values may hold spaces (``Reason=disk failed [root@...]``) and ``=``
    (``TRES=cpu=1,mem=100M``). A free-text value that itself holds `` Word=`` cannot be
    told apart from a new key; read such fields (Comment) from ``squeue --json`` instead.
    """
    record: dict[str, str] = {}
    matches = list(_RECORD_KEY.finditer(line))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        record.setdefault(match.group(1), line[match.end():end].strip())
    return record


def parse_scontrol_records(text: str) -> list[dict[str, str]]:
    """All records of ``scontrol show job|node ... -o`` output (one non-empty line each)."""
    return [parse_scontrol_record(line) for line in text.splitlines() if "=" in line]
