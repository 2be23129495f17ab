"""Standby VMs in the planner, as a table: a picture with the reserve -> the exact actions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from tests.unit.controller_fixtures import (
    T0,
    job,
    launch,
    make_config,
    node,
    powered_down,
    powering_up,
    request,
    vm,
)
from tests.unit.test_plan import ASKS, jobs, picture
from vcluster.controller.actions import (
    Action,
    BootEarly,
    BootStandby,
    BootVM,
    ClaimStandby,
    MarkHandled,
    MarkUp,
    SetDrain,
    TerminateVM,
)
from vcluster.controller.observe import DrainView, Observed
from vcluster.controller.plan import plan
from vcluster.controller.standby import AT_ALLOCATION_REASON
from vcluster.one_vm import VM

BASE = make_config()
CONFIG = replace(BASE, node_classes=tuple(
    replace(nc, standby=2, standby_max_age_s=600) if nc.name == "small" else nc
    for nc in BASE.node_classes))
S1, S2 = "vc-small-001", "vc-small-002"
NOW_S = int(T0.timestamp())
SMALL = BootStandby("small", "worker", 2, 2048)


def standby(vm_id: int, state_name: str = "RUNNING", *, age_s: float = 60, ready: bool = True,
            node_class: str = "small", ip: str = "10.9.0.50") -> VM:
    """A standby VM of ``node_class`` started ``age_s`` ago, READY through OneGate or not."""
    base = vm(vm_id, "", state_name, ip=ip)
    tags = {**base.user_template, "VCLUSTER_STANDBY": node_class}
    if ready:
        tags["READY"] = "YES"
    return replace(base, name=f"vc-standby-{node_class}", user_template=tags, context=ASKS,
                   start_time=int(NOW_S - age_s))


def named(v: VM, node_name: str, job_id: int | None = None) -> VM:
    """``v`` after the handover: its user template names the node."""
    return replace(v, user_template={**v.user_template, "VCLUSTER_NODE": node_name,
                                     "VCLUSTER_JOB": "" if job_id is None else str(job_id)})


CASES: list[tuple[str, Callable[[], Observed], list[Action]]] = [
    ("an empty reserve is filled",
     lambda: picture(nodes={S1: powered_down(S1)}),
     [SMALL, SMALL]),
    ("a full reserve: nothing to do, and its VMs are no orphans",
     lambda: picture(nodes={S1: powered_down(S1)},
                     vms={20: standby(20), 21: standby(21, "BOOT", ready=False)}),
     []),
    ("a resumed node is handed the oldest ready standby VM; a replacement boots",
     lambda: picture(nodes={S1: powering_up(S1)}, jobs=jobs(job(12, S1)),
                     vms={20: standby(20, age_s=30), 21: standby(21, age_s=90)}),
     [ClaimStandby(S1, "small", 21, 12, "10.9.0.50"), SMALL]),
    ("standby VMs still booting (or not READY yet) are not handed out: a fresh VM boots",
     lambda: picture(nodes={S1: powering_up(S1)}, jobs=jobs(job(12, S1)),
                     vms={20: standby(20, "BOOT", ready=False),
                          21: standby(21, ready=False)}),
     [BootVM(S1, "small", 12, 1, 2048, "worker")]),
    ("two nodes, one ready standby VM: one handover, one boot, one replacement",
     lambda: picture(nodes={S1: powering_up(S1), S2: powering_up(S2)},
                     jobs=jobs(job(12, S1, S2)),
                     vms={20: standby(20), 21: standby(21, "PENDING", ready=False)}),
     [ClaimStandby(S1, "small", 20, 12, "10.9.0.50"),
      BootVM(S2, "small", 12, 1, 2048, "worker"), SMALL]),
    ("a job asking for another template gets a fresh VM of that template",
     lambda: picture(nodes={S1: powering_up(S1)},
                     jobs=jobs(job(12, S1, comment="vcluster[template=ubuntu]")),
                     vms={20: standby(20), 21: standby(21)}),
     [BootVM(S1, "small", 12, 1, 2048, "ubuntu")]),
    ("a standby VM older than standby_max_age_s is terminated and replaced",
     lambda: picture(nodes={S1: powered_down(S1)},
                     vms={20: standby(20, age_s=601), 21: standby(21)}),
     [TerminateVM(20, "", "standby VM 20 of class small is older than standby_max_age_s "
                  "(600 s): replaced", close_as="terminated"), SMALL]),
    ("a failed standby VM is terminated hard and replaced, never handed out",
     lambda: picture(nodes={S1: powering_up(S1)}, jobs=jobs(job(12, S1)),
                     vms={20: standby(20, "BOOT_FAILURE"), 21: standby(21, "POWEROFF")}),
     [BootVM(S1, "small", 12, 1, 2048, "worker"),
      TerminateVM(20, "", "standby VM 20 of class small failed (BOOT_FAILURE)",
                  close_as="terminated", hard=True),
      TerminateVM(21, "", "standby VM 21 of class small failed (POWEROFF)",
                  close_as="terminated", hard=True),
      SMALL, SMALL]),
    ("more standby VMs than K: the oldest go",
     lambda: picture(nodes={S1: powered_down(S1)},
                     vms={20: standby(20, age_s=10), 21: standby(21, age_s=20),
                          22: standby(22, age_s=30)}),
     [TerminateVM(22, "", "standby VM 22 of class small is beyond the class's standby = 2",
                  close_as="terminated")]),
    ("a drained class keeps no standby VMs",
     lambda: picture(nodes={S1: powered_down(S1)}, vms={20: standby(20), 21: standby(21)},
                     drains={"small": DrainView("small", "class", "maintenance", "root")}),
     [TerminateVM(20, "", "standby VM 20 of class small is not kept: the class is drained",
                  close_as="terminated"),
      TerminateVM(21, "", "standby VM 21 of class small is not kept: the class is drained",
                  close_as="terminated"),
      SetDrain((S1,), True, "vcluster drain: maintenance (by root)")]),
    ("a class without standby (big) gets none; a standby VM of an unknown class goes",
     lambda: picture(nodes={S1: powered_down(S1)},
                     vms={20: standby(20), 21: standby(21), 22: standby(22, node_class="gpu"),
                          23: standby(23, node_class="big")}),
     [TerminateVM(22, "", "standby VM 22 of class gpu belongs to no configured class",
                  close_as="terminated"),
      TerminateVM(23, "", "standby VM 23 of class big is beyond the class's standby = 0",
                  close_as="terminated")]),
    ("an interrupted handover (VM still unnamed) is done again",
     lambda: picture(nodes={S1: powering_up(S1)}, jobs=jobs(job(12, S1)),
                     vms={20: standby(20), 21: standby(21), 22: standby(22)},
                     launches=(launch(1, S1, "booting", vm_id=22, job_id=12, ip="10.9.0.50"),)),
     [ClaimStandby(S1, "small", 22, 12, "10.9.0.50", 1)]),
    ("a handed-over VM is an ordinary launch: up once its slurmd registered",
     lambda: picture(nodes={S1: node(S1, "ALLOCATED")}, jobs=jobs(job(12, S1)),
                     vms={20: standby(20), 21: standby(21), 22: named(standby(22), S1, 12)},
                     launches=(launch(1, S1, "booting", vm_id=22, job_id=12, ip="10.9.0.50",
                                      created_s_ago=1),)),
     [MarkUp(1, S1, 22, 1.0)]),
    ("a handed-over VM whose node was powered down is terminated, not returned to reserve",
     lambda: picture(nodes={S1: powered_down(S1)},
                     vms={20: standby(20), 21: standby(21), 22: named(standby(22), S1, 12)},
                     launches=(launch(1, S1, "up", vm_id=22, job_id=12, ip="10.9.0.50"),)),
     [TerminateVM(22, S1, "Slurm powered the node down", 1)]),
]


@pytest.mark.parametrize(("observed", "expected"), [(b, e) for _, b, e in CASES],
                         ids=[name for name, _, _ in CASES])
def test_plan_standby(observed: Callable[[], Observed], expected: list[Action]) -> None:
    assert plan(observed(), CONFIG) == expected


def test_standby_config_is_bounded_by_the_class() -> None:
    from vcluster.config import parse_config
    from vcluster.errors import ConfigError

    raw = {"controller": {"cluster_name": "vc"}, "node_class": [
        {"name": "small", "count": 2, "cpus": 1, "memory_mb": 512, "template": "w",
         "standby": 3}]}
    with pytest.raises(ConfigError, match="standby.*between 0 and count \\(2\\), got 3"):
        parse_config(raw)


# --- boot at allocation ------------------------------------------------------------------------


def allocated(name: str) -> object:
    """A node Slurm allocated to a job but has not started powering up (``allocated~``)."""
    return node(name, "ALLOCATED", "POWERED_DOWN")


def early(vm_id: int, node_name: str, state_name: str = "BOOT", *, job_id: int = 12,
          ready: bool = False) -> VM:
    """A VM booted for ``node_name`` at its job's allocation, not yet handed to it."""
    base = standby(vm_id, state_name, ready=ready, ip="10.9.0.60")
    return replace(base, name=node_name, user_template={
        **base.user_template, "VCLUSTER_EARLY": node_name, "VCLUSTER_JOB": str(job_id)})


def joinerr(v: VM, line: str) -> VM:
    """``v`` after its guest reported through OneGate that its join failed."""
    return replace(v, user_template={**v.user_template, "VCLUSTER_JOIN_ERROR": line})


PROLOG = request(5, "prolog", (S1,), (12,))
NOT_READY = {20: standby(20, "BOOT", ready=False), 21: standby(21, "BOOT", ready=False)}

EARLY_CASES: list[tuple[str, Callable[[], Observed], list[Action]]] = [
    ("the prolog ran, Slurm has not powered the node up: its VM boots now, unnamed",
     lambda: picture(nodes={S1: allocated(S1)}, jobs=jobs(job(12, S1)), vms=dict(NOT_READY),
                     requests=(PROLOG,)),
     [BootEarly(S1, "small", 12, 1, 2048, "worker"), MarkHandled((5,))]),
    ("no prolog request (yet, or handled): nothing booted early",
     lambda: picture(nodes={S1: allocated(S1)}, jobs=jobs(job(12, S1)), vms=dict(NOT_READY)),
     []),
    ("a ready standby VM will serve the node: nothing booted early",
     lambda: picture(nodes={S1: allocated(S1)}, jobs=jobs(job(12, S1)),
                     vms={20: standby(20), 21: standby(21, "BOOT", ready=False)},
                     requests=(PROLOG,)),
     [MarkHandled((5,))]),
    ("a VM booted early already: not a second one",
     lambda: picture(nodes={S1: allocated(S1)}, jobs=jobs(job(12, S1)),
                     vms={**NOT_READY, 30: early(30, S1)}, requests=(PROLOG,)),
     [MarkHandled((5,))]),
    ("Slurm powers the node up: it is handed the VM booted for it, still booting",
     lambda: picture(nodes={S1: powering_up(S1)}, jobs=jobs(job(12, S1)),
                     vms={**NOT_READY, 30: early(30, S1)}),
     [ClaimStandby(S1, "small", 30, 12, "10.9.0.60", size=(1, 2048, "worker"))]),
    ("a ready standby VM beats an early VM still booting; that one goes next pass",
     lambda: picture(nodes={S1: powering_up(S1)}, jobs=jobs(job(12, S1)),
                     vms={20: standby(20), 21: standby(21), 30: early(30, S1)}),
     [ClaimStandby(S1, "small", 20, 12, "10.9.0.50"), SMALL]),
    ("an early VM whose node another VM serves is terminated",
     lambda: picture(nodes={S1: powering_up(S1)}, jobs=jobs(job(12, S1)),
                     vms={21: standby(21, "BOOT", ready=False),
                          22: named(standby(22), S1, 12), 30: early(30, S1)},
                     launches=(launch(1, S1, "booting", vm_id=22, job_id=12,
                                      ip="10.9.0.50"),)),
     [TerminateVM(30, "", "standby VM 30 of class small booted early for vc-small-001: its "
                  "node was served by another VM", close_as="terminated"), SMALL]),
    ("the job was cancelled before its node was powered up: its early VM goes",
     lambda: picture(nodes={S1: powered_down(S1)}, vms={**NOT_READY, 30: early(30, S1)}),
     [TerminateVM(30, "", "standby VM 30 of class small booted early for vc-small-001: its "
                  "node's job left it before it was powered up", close_as="terminated")]),
    ("an early VM that failed before its node was powered up goes, a failure of its job; "
     "Slurm's resume then boots the node's own VM",
     lambda: picture(nodes={S1: allocated(S1)}, jobs=jobs(job(12, S1)),
                     vms={**NOT_READY, 30: early(30, S1, "BOOT_FAILURE")}),
     [TerminateVM(30, S1, "vcluster: VM 30 booted early for vc-small-001 failed to boot "
                  "(BOOT_FAILURE)", close_as="terminated", hard=True, job_id=12,
                  event_kind="vm.early_failed")]),
    ("an early VM whose guest reported a join failure: the same",
     lambda: picture(nodes={S1: powering_up(S1)}, jobs=jobs(job(12, S1)),
                     vms={**NOT_READY, 30: joinerr(early(30, S1, "RUNNING"), "no munge key")}),
     [BootVM(S1, "small", 12, 1, 2048, "worker"),
      TerminateVM(30, S1, "vcluster: VM 30 booted early for vc-small-001 could not join: no "
                  "munge key", close_as="terminated", hard=True, job_id=12,
                  event_kind="vm.early_failed")]),
    ("a job one of whose VMs failed gets no VM at allocation: it waits for Slurm's resume",
     lambda: picture(nodes={S1: allocated(S1)}, jobs=jobs(job(12, S1)), vms=dict(NOT_READY),
                     requests=(PROLOG,),
                     job_failures={12: (1, "vcluster: VM 9 failed to boot (BOOT_FAILURE)")}),
     [MarkHandled((5,))]),
]


@pytest.mark.parametrize(("observed", "expected"), [(b, e) for _, b, e in EARLY_CASES],
                         ids=[name for name, _, _ in EARLY_CASES])
def test_plan_boot_at_allocation(observed: Callable[[], Observed],
                                 expected: list[Action]) -> None:
    assert plan(observed(), CONFIG) == expected


# --- handover at allocation (slurm.handover_at_allocation) --------------------------------------

AT_ALLOCATION = replace(CONFIG, slurm=replace(CONFIG.slurm, handover_at_allocation=True))
HANDED = named(standby(20), S1, 12)
RESERVE = {21: standby(21), 22: standby(22, "BOOT", ready=False)}


def handed_launch(reason: str = AT_ALLOCATION_REASON) -> object:
    return launch(1, S1, "booting", vm_id=20, job_id=12, ip="10.9.0.50", reason=reason)


AT_ALLOCATION_CASES: list[tuple[str, Callable[[], Observed], list[Action]]] = [
    ("the prolog ran, Slurm has not powered the node up: a ready standby VM is handed over "
     "at once; a replacement boots",
     lambda: picture(nodes={S1: allocated(S1)}, jobs=jobs(job(12, S1)),
                     vms={20: standby(20), 21: standby(21, "BOOT", ready=False)},
                     requests=(PROLOG,)),
     [ClaimStandby(S1, "small", 20, 12, "10.9.0.50", at_allocation=True), SMALL,
      MarkHandled((5,))]),
    ("no ready standby VM: a VM boots at allocation, handed over once Slurm powers up",
     lambda: picture(nodes={S1: allocated(S1)}, jobs=jobs(job(12, S1)), vms=dict(NOT_READY),
                     requests=(PROLOG,)),
     [BootEarly(S1, "small", 12, 1, 2048, "worker"), MarkHandled((5,))]),
    ("a job asking for another template is not handed a standby VM at allocation",
     lambda: picture(nodes={S1: allocated(S1)},
                     jobs=jobs(job(12, S1, comment="vcluster[template=ubuntu]")),
                     vms={20: standby(20), 21: standby(21)}, requests=(PROLOG,)),
     [BootEarly(S1, "small", 12, 1, 2048, "ubuntu"), MarkHandled((5,))]),
    ("handed over at allocation, Slurm still shows the node powered down: wait for Slurm",
     lambda: picture(nodes={S1: allocated(S1)}, jobs=jobs(job(12, S1)),
                     vms={20: HANDED, **RESERVE}, launches=(handed_launch(),)),
     []),
    ("handed over at allocation, Slurm powers the node up: still booting",
     lambda: picture(nodes={S1: powering_up(S1)}, jobs=jobs(job(12, S1)),
                     vms={20: HANDED, **RESERVE}, launches=(handed_launch(),)),
     []),
    ("its slurmd registered (before Slurm's power-save pass): up",
     lambda: picture(nodes={S1: node(S1, "ALLOCATED")}, jobs=jobs(job(12, S1)),
                     vms={20: HANDED, **RESERVE}, launches=(handed_launch(),)),
     [MarkUp(1, S1, 20, 5.0)]),
    ("a booting launch not handed over at allocation on an allocated, powered-down node is "
     "an earlier run's: its VM goes (no VM serves two runs)",
     lambda: picture(nodes={S1: allocated(S1)}, jobs=jobs(job(12, S1)),
                     vms={20: HANDED, **RESERVE}, launches=(handed_launch(""),)),
     [TerminateVM(20, S1, "Slurm powered the node down", 1)]),
]


@pytest.mark.parametrize(("observed", "expected"), [(b, e) for _, b, e in AT_ALLOCATION_CASES],
                         ids=[name for name, _, _ in AT_ALLOCATION_CASES])
def test_plan_handover_at_allocation(observed: Callable[[], Observed],
                                     expected: list[Action]) -> None:
    assert plan(observed(), AT_ALLOCATION) == expected


def test_handover_at_allocation_is_off_by_default() -> None:
    """Without the site saying ReturnToService=2 (the key), a ready standby VM waits for
    Slurm's power-up, as before."""
    assert CONFIG.slurm.handover_at_allocation is False
    observed = picture(nodes={S1: allocated(S1)}, jobs=jobs(job(12, S1)),
                       vms={20: standby(20), 21: standby(21)}, requests=(PROLOG,))
    assert plan(observed, CONFIG) == [MarkHandled((5,))]
