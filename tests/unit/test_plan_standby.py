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
    vm,
)
from tests.unit.test_plan import ASKS, jobs, picture
from vcluster.controller.actions import (
    Action,
    BootStandby,
    BootVM,
    ClaimStandby,
    MarkUp,
    SetDrain,
    TerminateVM,
)
from vcluster.controller.observe import DrainView, Observed
from vcluster.controller.plan import plan
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
