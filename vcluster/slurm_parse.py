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

The readers live by concept and are re-exported here (import them from here): hostlists in
:mod:`vcluster.slurm_hostlist`, the per-version value readers in :mod:`vcluster.slurm_values`,
jobs in :mod:`vcluster.slurm_jobs`, nodes in :mod:`vcluster.slurm_nodes`; this module keeps
the Slurm version, the resume file and ``scontrol ... -o`` records.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vcluster.errors import SlurmError
from vcluster.slurm_hostlist import compress_hostlist, expand_hostlist
from vcluster.slurm_jobs import (
    FINISHED_JOB_STATES,
    Job,
    job_from_json,
    job_state_name,
    parse_squeue_json,
)
from vcluster.slurm_nodes import (
    BASE_NODE_STATES,
    Node,
    node_from_json,
    node_from_record,
    parse_nodes_json,
    parse_sinfo_json,
    split_node_state,
    strip_reason_stamp,
)
from vcluster.slurm_values import _state_words, _str

__all__ = [  # the readers of slurm_hostlist, slurm_jobs and slurm_nodes: import them from here
    "BASE_NODE_STATES",
    "FINISHED_JOB_STATES",
    "Job",
    "Node",
    "compress_hostlist",
    "expand_hostlist",
    "job_from_json",
    "job_state_name",
    "node_from_json",
    "node_from_record",
    "parse_nodes_json",
    "parse_sinfo_json",
    "parse_squeue_json",
    "split_node_state",
    "strip_reason_stamp",
]

PER_JOB_REASON_PREFIX = "vcluster: per-job VM of job "
"""The reason the prolog gives a per-job job's nodes (followed by the job id); the controller
clears it once the node is powered down and no job holds it."""
_RECORD_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z][A-Za-z0-9_:/.()-]*)=")


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


def parse_node_states(text: str) -> list[Node]:
    """``scontrol show node -o`` read for each node's name and state only: name, base state
    and flags, and for a DOWN node its reason; the other fields are left empty.

    Why: the prologs waiting for their nodes read them every second; in a 1,000-job burst
    that is 1,000 records of about 60 fields each, and reading whole records (86 ms a read
    here) was a sixth of the controller's time; this takes 5 ms. Each field is read as
    :func:`parse_scontrol_record` reads it: its first occurrence after a space (scontrol
    separates fields with spaces; a state list has none).
    """
    nodes: list[Node] = []
    states: dict[str, tuple[str, frozenset[str]]] = {}  # a burst's nodes share a few
    for line in text.splitlines():
        if not line.startswith("NodeName="):
            continue
        end = line.find(" ")
        name = line[9:end] if end >= 0 else line[9:]
        at = line.find(" State=")
        value = "" if at < 0 else line[at + 7:].split(" ", 1)[0]
        if (state_flags := states.get(value)) is None:
            state_flags = states[value] = split_node_state(_state_words(value))
        state, flags = state_flags
        reason = strip_reason_stamp(parse_scontrol_record(line).get("Reason", "")) \
            if state == "DOWN" else ""
        nodes.append(Node(name, state, flags, "", "", 0, 0, (), (), reason))
    return nodes


def parse_scontrol_records(text: str) -> list[dict[str, str]]:
    """All records of ``scontrol show job|node ... -o`` output (one non-empty line each)."""
    return [parse_scontrol_record(line) for line in text.splitlines() if "=" in line]
