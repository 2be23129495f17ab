"""Drains in the plan: which powering-up nodes get no VM, and Slurm's DRAIN kept in line."""

from __future__ import annotations

from tests.unit.controller_fixtures import (
    T0,
    job,
    make_config,
    node,
    powered_down,
    powering_up,
)
from vcluster.controller.actions import BootVM, SetDrain
from vcluster.controller.observe import DrainView, Observed
from vcluster.controller.plan import plan

CONFIG = make_config()
S1, S2, B1 = "vc-small-001", "vc-small-002", "vc-big-001"
SMALL = DrainView("small", "class", "kernel update", "alice")
REASON = "vcluster drain: kernel update (by alice)"


def drain_actions(obs: Observed) -> list[object]:
    return [a for a in plan(obs, CONFIG) if isinstance(a, BootVM | SetDrain)]


def test_a_drained_class_gets_no_vm_unless_a_job_holds_the_node() -> None:
    obs = Observed(now=T0, nodes={S1: powering_up(S1), S2: powering_up(S2)},
                   jobs={12: job(12, S2)}, drains={"small": SMALL})
    assert drain_actions(obs) == [BootVM(S2, "small", 12, 1, 2048, "worker"),
                                  SetDrain((S1, S2), True, REASON)]  # the job still runs


def test_a_drained_node_gets_no_vm_but_its_class_does() -> None:
    obs = Observed(now=T0, nodes={S1: powering_up(S1), S2: powering_up(S2)},
                   drains={S1: DrainView(S1, "node", "bad disk", "")})
    assert drain_actions(obs) == [BootVM(S2, "small", None, 2, 2048, "worker"),
                                  SetDrain((S1,), True, "vcluster drain: bad disk")]


def test_drained_nodes_that_lost_their_drain_get_it_back_in_one_call() -> None:
    obs = Observed(now=T0, nodes={S1: powered_down(S1), S2: node(S2, "IDLE"),
                                  B1: powered_down(B1)}, drains={"small": SMALL})
    assert drain_actions(obs) == [SetDrain((S1, S2), True, REASON)]


def test_a_drained_node_that_is_down_or_drained_already_is_left_alone() -> None:
    obs = Observed(now=T0, nodes={S1: node(S1, "IDLE", "DRAIN", "POWERED_DOWN", reason=REASON),
                                  S2: node(S2, "DOWN", reason="vcluster: VM 7 died")},
                   drains={"small": SMALL})
    assert drain_actions(obs) == []


def test_a_lifted_drain_clears_only_vclusters_own_drain() -> None:
    obs = Observed(now=T0, nodes={
        S1: node(S1, "IDLE", "DRAIN", "POWERED_DOWN", reason=REASON),
        S2: node(S2, "IDLE", "DRAIN", reason="admin: swapping the switch"),
    })
    assert drain_actions(obs) == [SetDrain((S1,), False, "drain lifted")]
