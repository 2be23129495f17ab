"""Pure readers of Slurm command output (22.05 to 24.11 and later): no I/O, tested on
captured real output.

Kept apart from :mod:`vcluster.slurm` (which runs the commands) so that every parser is a
function of text alone and can be tested against the captures of each Slurm version in
``tests/data/slurm/<version>/``. One reader per concept serves every version:

* ``squeue --json`` (openapi v0.0.38 in 22.05; data_parser v0.0.40-v0.0.42 in 23.x-25.x)
  and the node listing: ``sinfo --json`` in 22.05, ``scontrol show node --json`` from 23.02
  (whose ``sinfo --json`` groups nodes by partition and state, without addresses). Both
  listings have a ``nodes`` list of the same records.
* Numbers are plain (22.05) or ``{"set", "infinite", "number"}`` objects (23.02+); job and
  node states are strings (22.05: ``"CONFIGURING"``, ``"idle"`` plus ``state_flags``) or
  lists of a base state and flags (23.02+: ``["RUNNING", "CONFIGURING", "POWER_UP_NODE"]``);
  features are a comma string or a list; ``exit_code`` is a raw wait status or
  ``{"status", "return_code", "signal"}``.
* ``scontrol show job|node X -o``: one line per record of ``Key=Value`` pairs (unchanged).
* ``scontrol --version`` (``slurm-wlm 22.05.8``, ``slurm 24.11.5``).
* Slurm hostlists (``vc-small-[001-004],gpu1``) through python-hostlist.

Units: memory in MB (Slurm's own unit), times as epoch seconds (float).
Missing keys are tolerated: a field Slurm did not print gets its "unknown" value
(``0``, ``""``, ``None``) rather than an exception.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import hostlist

from vcluster.errors import SlurmError, SlurmParseError
from vcluster.json_stream import NotAnObject, read_listing, text_chunks
from vcluster.slurm_fast import asdict, read_fields

T = TypeVar("T")

# Job states after which the job will not run again (unless requeued by hand).
FINISHED_JOB_STATES = frozenset({
    "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
    "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED",
})
# Job state flags in the order Slurm's job_state_string() lets them stand for the whole state
# (slurm_protocol_defs.c, 22.05 and 24.11 alike): a job RUNNING+CONFIGURING reads CONFIGURING,
# CANCELLED+COMPLETING reads COMPLETING. POWER_UP_NODE (24.11: the job's nodes are powering
# up; CONFIGURING is normally set too) reads as CONFIGURING, as 22.05 shows such a job.
_JOB_FLAG_PRECEDENCE = (
    ("COMPLETING", "COMPLETING"), ("STAGE_OUT", "STAGE_OUT"), ("CONFIGURING", "CONFIGURING"),
    ("POWER_UP_NODE", "CONFIGURING"), ("RESIZING", "RESIZING"), ("REQUEUED", "REQUEUED"),
    ("REQUEUE_FED", "REQUEUE_FED"), ("REQUEUE_HOLD", "REQUEUE_HOLD"),
    ("SPECIAL_EXIT", "SPECIAL_EXIT"), ("STOPPED", "STOPPED"), ("REVOKED", "REVOKED"),
    ("RESV_DEL_HOLD", "RESV_DEL_HOLD"), ("SIGNALING", "SIGNALING"),
)
# Base node states (slurm.h ``node_states``); anything else in a state list is a flag.
PER_JOB_REASON_PREFIX = "vcluster: per-job VM of job "
"""The reason the prolog gives a per-job job's nodes (followed by the job id); the controller
clears it once the node is powered down and no job holds it."""

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
    """``PENDING``, ``CONFIGURING``, ``RUNNING``, ``COMPLETING``, ``COMPLETED``, ``FAILED``...

    One word as Slurm's ``scontrol show job`` prints it: a flag that stands for the whole
    state wins over the base state (``["CANCELLED", "COMPLETING"]`` -> ``COMPLETING``,
    ``["RUNNING", "CONFIGURING", "POWER_UP_NODE"]`` -> ``CONFIGURING``)."""
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
    state_words: tuple[str, ...] = ()
    """Every word Slurm gave: base state then flags (``RUNNING, CONFIGURING, POWER_UP_NODE``)
    on 23.02+; the one word on 22.05."""
    account: str = ""
    """The job's Slurm account; ``""`` where Slurm keeps no accounts."""
    admin_comment: str = ""
    """Set by admins (vcluster: why it requeued or held the job); users can read it."""
    suspend_time: float | None = None
    """Epoch seconds Slurm suspended the job (``scontrol suspend``, preemption); None unless
    it is SUSPENDED now."""

    @property
    def is_finished(self) -> bool:
        """Ended for good: a final state, and not still COMPLETING (epilogs running)."""
        return self.state in FINISHED_JOB_STATES

    @property
    def is_booting(self) -> bool:
        """Allocated nodes that are still being powered up (or configured)."""
        return self.state == "CONFIGURING"


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


# --- versions -------------------------------------------------------------------------------


class UnsupportedSlurm(SlurmError):
    """The Slurm installed is older than vcluster supports, or prints an unknown format."""


@dataclass(frozen=True, order=True)
class SlurmVersion:
    """A Slurm release: ``24.11.5`` is ``SlurmVersion(24, 11, 5)``."""

    major: int
    minor: int
    micro: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor:02d}.{self.micro}"

    @property
    def release(self) -> str:
        """``24.11``: what slurm.conf's parameters depend on."""
        return f"{self.major}.{self.minor:02d}"

    @property
    def has_scontrol_json(self) -> bool:
        """``scontrol show node|job --json`` exists (23.02+), and ``sinfo --json`` has no
        ``nodes`` list any more."""
        return self >= SLURM_23_02


MIN_SLURM = SlurmVersion(22, 5, 0)
"""The oldest Slurm vcluster reads and drives."""
SLURM_23_02 = SlurmVersion(23, 2, 0)
SUPPORTED_SLURM = "Slurm 22.05 and later (tested with 22.05 and 24.11)"
_VERSION_TEXT = re.compile(r"^\s*slurm(?:-wlm)?\s+(\d+)\.(\d+)(?:\.(\d+))?", re.I)


def parse_slurm_version(text: str) -> SlurmVersion:
    """``scontrol --version`` output (``slurm-wlm 22.05.8``, ``slurm 24.11.5``) -> version.

    Raises :class:`UnsupportedSlurm` for text that is not a Slurm version.
    """
    match = _VERSION_TEXT.match(text)
    if match is None:
        first = (text.strip().splitlines() or ["nothing"])[0][:80]
        raise UnsupportedSlurm(f"cannot read a Slurm version from {first!r}; vcluster "
                               f"supports {SUPPORTED_SLURM}")
    major, minor, micro = match.groups()
    return SlurmVersion(int(major), int(minor), int(micro or 0))


def check_supported(version: SlurmVersion) -> SlurmVersion:
    """``version`` if vcluster supports it, else :class:`UnsupportedSlurm` (one line)."""
    if version < MIN_SLURM:
        raise UnsupportedSlurm(f"Slurm {version} is not supported: vcluster supports "
                               f"{SUPPORTED_SLURM}")
    return version


# --- the resume file --------------------------------------------------------------------------


def canonical_resume_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """SLURM_RESUME_FILE's JSON with the 22.05 names filled in from 23.02+'s, so one reader
    serves both: per job ``nodes`` (23.02+: ``nodes_resume``, the job's nodes resumed now;
    ``nodes_alloc`` is all its nodes) and top-level ``all_nodes`` (``all_nodes_resume``).

    Every field Slurm gave is kept; a missing hostlist becomes ``""``.
    """
    result = dict(data)
    jobs = []
    for raw in data.get("jobs") or []:
        job = dict(raw)
        if job.get("nodes") is None:
            job["nodes"] = _str(job.get("nodes_resume"))
        jobs.append(job)
    result["jobs"] = jobs
    if result.get("all_nodes") is None:
        result["all_nodes"] = _str(data.get("all_nodes_resume"))
    return result


# --- hostlists ------------------------------------------------------------------------------


def expand_hostlist(text: str) -> list[str]:
    """``"n[1-3],x"`` -> ``["n1", "n2", "n3", "x"]``; ``""`` and ``"(null)"`` -> ``[]``."""
    text = text.strip()
    if not text or text in ("(null)", "None"):
        return []
    if "[" not in text and "," not in text:
        return [text]  # one plain name, as most jobs' nodes are
    try:
        return list(hostlist.expand_hostlist(text))
    except hostlist.BadHostlist as exc:
        raise SlurmParseError(f"not a valid Slurm hostlist: {text!r} ({exc})") from exc


def compress_hostlist(names: Iterable[str]) -> str:
    """``["n1", "n2", "n3", "x"]`` -> ``"n[1-3],x"`` (duplicates removed)."""
    items = [n for n in names if n]
    if len(items) == 1 and "[" not in items[0] and "," not in items[0]:
        return items[0]  # one plain name, as most jobs' nodes are
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


def _load_json_list(text: str | bytes | memoryview | Iterable[str], command: str, key: str,
                    convert: Callable[[Mapping[str, Any]], T]) -> tuple[dict[str, Any], list[T]]:
    """The ``key`` list's records converted, and the other top-level fields (``data[key]``
    True when the list was read), with :func:`_load_json`'s errors; the text given whole
    (str, or UTF-8 bytes as a command's mapped output: :mod:`vcluster.slurm_fast` reads only
    the fields the converters read, each record made a dict as it is converted) or in
    pieces (:func:`vcluster.json_stream.read_listing`). A text the fast reader refuses (not
    JSON, not the expected shape) is read again the standard way, which keeps what is
    readable and words the error."""
    if isinstance(text, str | bytes | memoryview):
        fast = read_fields(text, key)
        if fast is not None:
            data, records = fast
            return data, [convert(asdict(record)) for record in records]
        if not isinstance(text, str):
            text = bytes(text).decode("utf-8", errors="replace")
    try:
        return read_listing(text_chunks(text) if isinstance(text, str) else text, key, convert)
    except NotAnObject:
        raise SlurmParseError(f"`{command}` printed JSON that is not an object") from None
    except json.JSONDecodeError as exc:
        raise SlurmParseError(
            f"`{command}` printed something that is not JSON ({exc.msg} at line {exc.lineno}); "
            "is this Slurm 22.05 or newer?"
        ) from exc


def _number(value: Any) -> int | None:
    """An integer field: plain number, ``{"set":..,"number":..}`` (23.x), or None if unset."""
    if type(value) is int:
        return None if value in _SENTINELS else value
    if type(value) is dict or isinstance(value, Mapping):
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
    if type(value) is str:
        return value
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
    if type(value) is str and value.isalpha():  # one word (22.05's "idle")
        return [value.upper()]
    if value is None:  # 23.02+'s nodes have no state_flags
        return []
    if isinstance(value, list):
        words = [str(v) for v in value]
    else:
        words = re.split(r"[+,\s]+", _str(value))
    return [w.strip().upper() for w in words if w.strip()]


def job_state_name(words: Iterable[str]) -> str:
    """The one word Slurm's job_state_string() prints for a base state and its flags.

    ``["RUNNING", "CONFIGURING", "POWER_UP_NODE"]`` -> ``CONFIGURING``; ``["CANCELLED",
    "COMPLETING"]`` -> ``COMPLETING``; ``["PENDING"]`` or 22.05's ``"PENDING"`` -> itself.
    """
    items = [w.upper() for w in words if w]
    for flag, name in _JOB_FLAG_PRECEDENCE:
        if flag in items:
            return name
    return items[0] if items else "UNKNOWN"


# --- squeue --json ------------------------------------------------------------------------------


def job_from_json(raw: Mapping[str, Any]) -> Job:
    """One entry of ``squeue --json``'s ``jobs`` list."""
    states = _state_words(raw.get("job_state"))
    state = job_state_name(states)
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
        state_words=tuple(states),
        account=_str(raw.get("account")),
        admin_comment=_str(raw.get("admin_comment")),
        suspend_time=_time(raw.get("suspend_time")) if state == "SUSPENDED" else None,
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


def parse_squeue_json(text: str | bytes | memoryview | Iterable[str],
                      command: str = "squeue --json") -> list[Job]:
    """All jobs in ``squeue --json`` (or ``scontrol show job --json``) output, in order."""
    data, jobs = _load_json_list(text, command, "jobs", job_from_json)
    if data.get("jobs") is None:
        raise SlurmParseError(f"`{command}` gave no job list; errors: {_errors(data)}")
    return jobs


def _errors(data: Mapping[str, Any]) -> str:
    """The ``errors`` of a JSON reply, one line (22.05: ``error``; 23.02+: ``description``)."""
    texts = []
    for item in data.get("errors") or []:
        if isinstance(item, Mapping):
            texts.append(_str(item.get("description") or item.get("error") or dict(item)))
        else:
            texts.append(_str(item))
    return "; ".join(texts) or "none"


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
