"""Drains in the plan: no new VM for a drained class or node, and Slurm's DRAIN kept in line.

Why it exists apart: ``vcluster drain`` records the admin's wish in the database (the
``drain`` table) and sets the nodes DRAIN in Slurm at once, so Slurm stops choosing them
while running jobs finish. The plan honours the record: it boots no VM for a drained node
that no job holds, and it sets DRAIN again on a drained node that lost it (a node returned
to service after a failure) and lifts a DRAIN vcluster set once the drain is gone (an
``undrain`` whose scontrol call failed). Pure: the picture in, actions out.
"""

from __future__ import annotations

from collections.abc import Mapping

from vcluster.config import Config, NodeClass
from vcluster.controller.actions import Action, SetDrain
from vcluster.controller.observe import DrainView, Observed
from vcluster.slurm_parse import Job

DRAIN_REASON_PREFIX = "vcluster drain: "
"""Starts every reason vcluster's drains give Slurm (not ``vcluster: ``: those are failures
that the plan returns to service)."""


def drain_reason(drain: DrainView) -> str:
    """The Slurm reason of a drain: ``vcluster drain: <reason> (by <admin>)``."""
    by = f" (by {drain.by})" if drain.by else ""
    return f"{DRAIN_REASON_PREFIX}{drain.reason or 'no reason given'}{by}"


def drain_of(obs: Observed, node_class: NodeClass, node_name: str) -> DrainView | None:
    """The drain covering the node: its own, else its class's."""
    return obs.drains.get(node_name) or obs.drains.get(node_class.name)


def holds_back(obs: Observed, node_class: NodeClass, node_name: str,
               jobs_by_node: Mapping[str, Job]) -> bool:
    """No VM for this powering-up node: it is drained and no job holds it."""
    return drain_of(obs, node_class, node_name) is not None and node_name not in jobs_by_node


def plan_drains(obs: Observed, config: Config) -> list[Action]:
    """DRAIN for drained nodes Slurm shows without it; RESUME for nodes whose vcluster drain
    was lifted. Nodes Slurm hides (powered down on 22.05) are left to ``vcluster drain``."""
    to_drain: dict[str, list[str]] = {}
    to_undrain: list[str] = []
    for name, node in sorted(obs.nodes.items()):
        nc = config.class_of_node(name)
        if nc is None:
            continue
        drain = drain_of(obs, nc, name)
        if drain is not None and not node.is_drained and not node.is_down:
            to_drain.setdefault(drain_reason(drain), []).append(name)
        elif (drain is None and node.is_drained and not node.is_down
              and node.reason.startswith(DRAIN_REASON_PREFIX)):
            to_undrain.append(name)
    actions: list[Action] = [SetDrain(tuple(names), True, reason)
                             for reason, names in sorted(to_drain.items())]
    if to_undrain:
        actions.append(SetDrain(tuple(to_undrain), False, "drain lifted"))
    return actions
