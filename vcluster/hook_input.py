"""Checking what Slurm hands a hook: job ids, hostlists of vcluster's nodes, the resume file.

Why it exists apart from :mod:`vcluster.hook_steps`: these are pure readers of untrusted input
(Slurm runs the hooks as root) that need no database and no Slurm; the steps act on what they
return. Import them from :mod:`vcluster.hook_steps` or :mod:`vcluster.hooks`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vcluster.config import Config
from vcluster.errors import UserInputError, VclusterError
from vcluster.slurm_parse import canonical_resume_data, compress_hostlist, expand_hostlist

MAX_HOSTLIST_CHARS = 65536


def parse_job_id(text: str | None) -> int:
    value = (text or "").strip()
    if not value.isdigit() or int(value) <= 0:
        raise UserInputError(f"job id {value!r} is not a positive number")
    return int(value)


def parse_vcluster_nodes(text: str | None, config: Config, *, only_ours: bool = True
                         ) -> list[str]:
    """Expand a Slurm hostlist; with ``only_ours`` every name must be a node of a class."""
    value = (text or "").strip()
    if not value:
        raise UserInputError("no node list given; Slurm passes a hostlist such as "
                             "vc-small-[001-002]")
    if len(value) > MAX_HOSTLIST_CHARS:
        raise UserInputError(f"node list is {len(value)} characters long; refusing it")
    try:
        names = expand_hostlist(value)
    except VclusterError:
        raise UserInputError(f"{value!r} is not a Slurm hostlist") from None
    ours = [n for n in names if config.class_of_node(n) is not None]
    foreign = [n for n in names if config.class_of_node(n) is None]
    if foreign and only_ours:
        classes = ", ".join(f"{nc.name} {nc.hostlist}" for nc in config.node_classes) or "none"
        raise UserInputError(
            f"not vcluster nodes: {compress_hostlist(foreign)} (classes: {classes}); "
            "point only vcluster's nodes at vcluster's programs in slurm.conf"
        )
    return ours


def read_resume_file(path: str) -> dict[str, Any]:
    """Read and check SLURM_RESUME_FILE's JSON (see :func:`parse_resume_json`)."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserInputError(f"cannot read SLURM_RESUME_FILE {path}: {exc.strerror}") from exc
    return parse_resume_json(raw, path)


def parse_resume_json(raw: str, path: str = "SLURM_RESUME_FILE") -> dict[str, Any]:
    """Check SLURM_RESUME_FILE's JSON and give it 22.05's field names whatever the version.

    22.05: ``{"jobs": [{"job_id", "nodes"}], "all_nodes"}``; 23.02+: ``{"jobs": [{"job_id",
    "nodes_alloc", "nodes_resume", "features", "partition", ...}], "all_nodes_resume"}``.
    The result keeps every field and has ``nodes`` / ``all_nodes`` (see
    :func:`~vcluster.slurm_parse.canonical_resume_data`).
    """
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from exc
    jobs = data.get("jobs", []) if isinstance(data, dict) else None
    if not isinstance(jobs, list) or not all(
        isinstance(j, dict) and isinstance(j.get("job_id"), int) and j["job_id"] > 0
        and all(isinstance(j.get(key) or "", str)
                for key in ("nodes", "nodes_resume", "nodes_alloc"))
        for j in jobs
    ):
        raise UserInputError(
            f"{path} does not hold a jobs list of {{job_id, nodes or nodes_resume}}")
    return canonical_resume_data(data)
