"""Slurm's JSON listings read for the few fields vcluster uses, in C.

Why: at 10,000 nodes ``squeue --json`` and ``scontrol show node --json`` of Slurm 24.11 are
23 MB and 16 MB (6 KB per job with over 120 fields, 1.6 KB per node); the standard library's
decoder builds every field of every record as Python objects, most of the CPU time of
reading them (0.4 s of a controller pass). msgspec's decoder, given the fields the
converters of :mod:`vcluster.slurm_parse` read, skips the others without building them:
only the records' wanted values become Python objects. The fields are the union of what
every Slurm version names (22.05's and 23.02+'s); a field a version lacks stays None, as a
missing key does for ``dict.get``.

:func:`read_fields` gives None for a text it refuses (not JSON, JSON of another shape, a
list item that is not an object): the caller then reads it the standard way, which keeps
what is readable and words the error as before.
"""

from __future__ import annotations

from typing import Any

import msgspec

JOB_FIELDS = (
    "job_id", "array_job_id", "array_task_id", "array_task_string", "name", "user_name",
    "user_id", "job_state", "state_reason", "partition", "nodes", "node_count", "cpus",
    "cpus_per_task", "minimum_cpus_per_node", "tasks_per_node", "tasks", "memory_per_node",
    "memory_per_cpu", "features", "comment", "admin_comment", "account", "exit_code",
    "submit_time", "start_time", "end_time", "suspend_time", "current_working_directory",
)
"""What :func:`vcluster.slurm_parse.job_from_json` reads of a job record."""
NODE_FIELDS = (
    "name", "state", "state_flags", "address", "hostname", "cpus", "real_memory", "features",
    "partitions", "reason",
)
"""What :func:`vcluster.slurm_parse.node_from_json` reads of a node record."""


NUMBER_FIELDS = frozenset({
    "job_id", "array_job_id", "array_task_id", "user_id", "node_count", "cpus",
    "cpus_per_task", "minimum_cpus_per_node", "tasks_per_node", "tasks", "memory_per_node",
    "memory_per_cpu", "submit_time", "start_time", "end_time", "suspend_time", "real_memory",
})
"""Fields the converters read as numbers: a plain number (22.05) or 23.02+'s object."""


class _Number(msgspec.Struct):
    """23.02+'s ``{"set", "infinite", "number"}``, held as a small struct, not a dict: a
    24.11 job has a dozen (17 MB of dicts for 4,000 jobs)."""

    set: bool = True
    infinite: bool = False
    number: Any = None


def _record_type(name: str, fields: tuple[str, ...]) -> Any:
    return msgspec.defstruct(name, [
        (f, int | _Number | None if f in NUMBER_FIELDS else Any, None) for f in fields])


def asdict(record: Any) -> dict[str, Any]:
    """The dict a converter of :mod:`vcluster.slurm_parse` takes, of one record: a number
    object is what ``_number`` makes of it (None when unset or infinite, else its number)."""
    fields = msgspec.structs.asdict(record)
    for key, value in fields.items():
        if type(value) is _Number:
            fields[key] = None if value.infinite or not value.set else value.number
    return fields


_JobRecord = _record_type("_JobRecord", JOB_FIELDS)
_NodeRecord = _record_type("_NodeRecord", NODE_FIELDS)
_DECODERS = {
    key: msgspec.json.Decoder(msgspec.defstruct(f"_{key}_listing", [
        (key, list[record] | None, None),  # type: ignore[valid-type]
        ("errors", Any, None),
        ("sinfo", msgspec.Raw, msgspec.Raw()),  # present: 23.02+'s sinfo --json (a hint)
    ]))
    for key, record in (("jobs", _JobRecord), ("nodes", _NodeRecord))
}


def read_fields(text: str | bytes | memoryview, key: str
                ) -> tuple[dict[str, Any], list[Any]] | None:
    """The ``key`` (``jobs`` or ``nodes``) list of a Slurm JSON listing, each record holding
    the fields its converter reads (None where Slurm gave none; :func:`asdict` makes it the
    dict the converter takes), and the listing's
    ``errors`` (and ``sinfo``, if present, as its raw text), ``data[key]`` True when the
    list was there; None if the text is not such a listing (see the module doc)."""
    try:
        listing: Any = _DECODERS[key].decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    records = getattr(listing, key)
    data: dict[str, Any] = {key: True if records is not None else None,
                            "errors": listing.errors}
    if listing.sinfo:
        data["sinfo"] = bytes(listing.sinfo)
    return data, records or []
