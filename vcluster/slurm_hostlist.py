"""Slurm hostlist expressions (``vc-small-[001-004],gpu1``), both ways.

Why it exists: every part of vcluster that names nodes to Slurm or reads Slurm's node lists
(the hooks' resume file, the plan, the act's scontrol calls, the reports) goes through these
two functions, which wrap python-hostlist and word its errors as a
:class:`~vcluster.errors.SlurmParseError`; a module of their own keeps them free of the JSON
readers of :mod:`vcluster.slurm_parse`.
"""

from __future__ import annotations

from collections.abc import Iterable

import hostlist

from vcluster.errors import SlurmParseError


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
