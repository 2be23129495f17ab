"""Preemption that the job survives, as plan cases: a suspended job's VMs stopped (not an
on_vm_event), brought back when it runs again, and jobs suspended for a preemptor's VM that
the cloud cannot place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from tests.unit.controller_fixtures import T0, ago, job, launch, make_config, node, vm
from vcluster.config import parse_config
from vcluster.controller.actions import (
    Action,
    DropSuspension,
    FailNode,
    FinishResume,
    MarkStopped,
    MoveSuspendedVM,
    RestoreVM,
    SetDrain,
    StopVM,
    SuspendJob,
)
from vcluster.controller.observe import JobRecord, Observed, SuspensionView
from vcluster.controller.plan import plan
from vcluster.controller.preempt import PREEMPT_SETTLE_S, REDELIVER_GAP_S, suspend_reason
from vcluster.errors import ConfigError
from vcluster.slurm_parse import compress_hostlist

S1, S2 = "vc-small-001", "vc-small-002"
CONFIG = make_config()
PREEMPT = parse_config({
    "slurm": {"partitions": ["vcluster"], "preempt_partition": "urgent"},
    "controller": {"cluster_name": "vc", "resume_timeout_s": 60},
    "node_class": [{"name": "small", "count": 4, "cpus": 2, "memory_mb": 2048,
                    "template": "worker"}],
})
FULL = "Not enough capacity"


def picture(**kw: object) -> Observed:
    kw.setdefault("known_jobs", {
        j.job_id: JobRecord(j.job_id, j.state, compress_hostlist(j.nodes), None)
        for j in kw.get("jobs", {}).values()})  # type: ignore[attr-defined]
    return Observed(now=T0, **kw)  # type: ignore[arg-type]


def row(name: str, job_id: int, vm_id: int, state: str, by_job: int | None = None,
        s_ago: float = 5) -> SuspensionView:
    return SuspensionView(name, job_id, vm_id, by_job, state, ago(s_ago), ago(s_ago))


def suspended(state: str = "SUSPENDED", vm_state: str = "RUNNING", rows: tuple[str, ...] = (),
              by_job: int | None = None) -> Observed:
    return picture(
        nodes={S1: node(S1, "ALLOCATED")},
        jobs={12: job(12, S1, state=state)},
        vms={40: vm(40, S1, vm_state)},
        launches=(launch(1, S1, "up", vm_id=40, job_id=12),),
        suspensions={S1: row(S1, 12, 40, rows[0], by_job)} if rows else {})


def on_host(obs: Observed, host_state: str, host: str = "host0") -> Observed:
    """VM 40 placed on ``host``, whose state is ``host_state``."""
    vms = {i: replace(v, host=host) if i == 40 else v
           for i, v in obs.vms.items()}
    return replace(obs, vms=vms, host_states={"host0": host_state, "host1": "MONITORED"})


CASES: list[tuple[str, Callable[[], Observed], list[Action]]] = [
    ("Slurm suspended a job: its VM is stopped",
     lambda: suspended(), [StopVM(40, S1, 12)]),
    ("a suspended job's node, IDLE with the prolog's POWER_DOWN_ASAP, is not powered down",
     lambda: replace(suspended(), nodes={S1: node(S1, "IDLE", "DRAIN", "POWER_DOWN")}),
     [StopVM(40, S1, 12)]),
    ("a VM vcluster is stopping is no event",
     lambda: suspended(vm_state="SAVE_STOP", rows=("stopping",)), []),
    ("the VM is STOPPED: noted once",
     lambda: suspended(vm_state="STOPPED", rows=("stopping",)),
     [MarkStopped(40, S1, 12, 5.0)]),
    ("a STOPPED VM vcluster stopped stays so while the job is suspended",
     lambda: suspended(vm_state="STOPPED", rows=("stopped",)), []),
    ("Slurm resumed the job: its VM is resumed",
     lambda: suspended("RUNNING", "STOPPED", rows=("stopped",)),
     [RestoreVM(40, S1, 12)]),
    ("on its way back (PENDING for a host): wait",
     lambda: suspended("RUNNING", "PENDING", rows=("resuming",)), []),
    ("back: the drain lifted and Slurm's resume said again (slurmd never got it)",
     lambda: suspended("RUNNING", "RUNNING", rows=("resuming",)),
          [FinishResume(12, (S1,), slurm_resume=False, redeliver=True, seconds=5.0,
                   stopped_vms=((S1, 40),))]),
    ("said again: vcluster's suspend sent, its resume not in the same breath",
     lambda: replace(suspended("SUSPENDED", "RUNNING"), suspensions={
         S1: row(S1, 12, 40, "resuming", 12, REDELIVER_GAP_S - 1)}), []),
    ("said again: the resume once slurmd has surely taken the suspend",
     lambda: replace(suspended("SUSPENDED", "RUNNING"), suspensions={
         S1: row(S1, 12, 40, "resuming", 12, REDELIVER_GAP_S)}),
     [FinishResume(12, (S1,), slurm_resume=True, redeliver=False, seconds=REDELIVER_GAP_S,
                   stopped_vms=((S1, 40),))]),
    ("an admin's suspend while the VM comes back is not resumed by vcluster",
     lambda: suspended("SUSPENDED", "RUNNING", rows=("resuming",)), []),
    ("a job suspended on a node a preemptor shares keeps its VM (the preemptor runs there)",
     lambda: picture(nodes={S1: node(S1, "ALLOCATED")},
                     jobs={12: job(12, S1, state="SUSPENDED"), 13: job(13, S1, state="RUNNING")},
                     vms={40: vm(40, S1)}, launches=(launch(1, S1, "up", vm_id=40, job_id=12),)),
     []),
    ("a job cancelled while suspended: its VM is not brought back",
     lambda: suspended("CANCELLED", "STOPPED", rows=("stopped",)), []),
    ("a suspended job's VM gone: the row is dropped (and the node failed as for any VM)",
     lambda: replace(suspended(vm_state="STOPPED", rows=("stopped",)), vms={}),
     [FailNode(S1, "vcluster: VM 40 died (gone)", 1, None, 12, "DONE", "gone"),
      DropSuspension((S1,), 12, "its VM or launch is gone")]),
    ("resumed by Slurm, its VM SUSPENDED on a host now DISABLED: moved cold first",
     lambda: on_host(suspended("RUNNING", "SUSPENDED", rows=("stopped",)), "DISABLED"),
     [MoveSuspendedVM(40, S1, 12, "host0")]),
    ("... or POWEROFF on a host OFFLINE",
     lambda: on_host(suspended("RUNNING", "POWEROFF", rows=("stopped",)), "OFFLINE"),
     [MoveSuspendedVM(40, S1, 12, "host0")]),
    ("SUSPENDED on an enabled host: resumed where it is",
     lambda: on_host(suspended("RUNNING", "SUSPENDED", rows=("stopped",)), "MONITORED"),
     [RestoreVM(40, S1, 12)]),
    ("a STOPPED VM has no host: resumed, and OpenNebula places it (no migrate)",
     lambda: on_host(suspended("RUNNING", "STOPPED", rows=("stopped",)), "DISABLED"),
     [RestoreVM(40, S1, 12)]),
    ("vcluster's drain of a suspended job's node whose row is gone is lifted",
     lambda: picture(nodes={S1: node(S1, "IDLE", "DRAIN", "POWERED_DOWN",
                                            reason=suspend_reason(12))}),
     [SetDrain((S1,), False, "suspension over")]),
]


@pytest.mark.parametrize(("observed", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_plan(observed: Callable[[], Observed], expected: list[Action]) -> None:
    assert plan(observed(), CONFIG) == expected


def test_a_stopped_vm_vcluster_did_not_ask_for_is_still_an_event() -> None:
    obs = replace(suspended(vm_state="STOPPED"), jobs={12: job(12, S1, state="RUNNING")})
    assert [a.reason for a in plan(obs, CONFIG) if isinstance(a, FailNode)] == [
        "vcluster: VM 40 STOPPED behind vcluster's back"]


def preemption(*, victim_rows: str = "", rows_s_ago: float = 5,
               urgent_state: str = "CONFIGURING", urgent_vm: str = "PENDING",
               victim_state: str = "RUNNING") -> Observed:
    waiting = replace(vm(41, S2, urgent_vm), sched_message=FULL)
    launches = [launch(1, S1, "up", vm_id=40, job_id=12)]
    if urgent_state != "COMPLETED":
        launches.append(launch(2, S2, "booting", vm_id=41, job_id=20))
    return picture(
        nodes={S1: node(S1, "ALLOCATED"), S2: node(S2, "ALLOCATED", "POWERING_UP")},
        jobs={12: job(12, S1, state=victim_state, start_time=100.0),
              20: job(20, S2, state=urgent_state, partition="urgent")},
        vms={40: vm(40, S1, "STOPPED" if victim_rows else "RUNNING"), 41: waiting},
        launches=tuple(launches),
        suspensions={S1: row(S1, 12, 40, victim_rows, 20, rows_s_ago)} if victim_rows else {})


def test_a_preemptor_whose_vm_cannot_be_placed_suspends_a_running_job() -> None:
    actions = [a for a in plan(preemption(), PREEMPT) if isinstance(a, SuspendJob)]
    assert actions == [SuspendJob(12, 20, (S1,), (40,), "job 20 (urgent) needs room: its VM "
                                  f"41 cannot be placed ({FULL})")]


def test_no_preemption_without_a_preempt_partition() -> None:
    assert not [a for a in plan(preemption(), CONFIG) if isinstance(a, SuspendJob)]


def test_one_job_at_a_time_and_time_for_the_scheduler() -> None:
    soon = preemption(victim_rows="stopped", rows_s_ago=PREEMPT_SETTLE_S - 1,
                      victim_state="SUSPENDED")
    assert not [a for a in plan(soon, PREEMPT) if isinstance(a, SuspendJob)]


def test_the_preempted_job_comes_back_once_the_preemptor_is_gone() -> None:
    obs = preemption(victim_rows="stopped", urgent_state="COMPLETED", victim_state="SUSPENDED")
    assert [a for a in plan(obs, PREEMPT) if isinstance(a, RestoreVM)] == [
        RestoreVM(40, S1, 12)]
    back = replace(obs, vms={40: vm(40, S1, "RUNNING")},
                   suspensions={S1: row(S1, 12, 40, "resuming", 20, 3)})
    assert [a for a in plan(back, PREEMPT) if isinstance(a, FinishResume)] == [
        FinishResume(12, (S1,), slurm_resume=True, redeliver=False, seconds=3.0,
                     stopped_vms=((S1, 40),))]


def test_not_back_while_the_preemptor_still_holds_a_vm() -> None:
    obs = preemption(victim_rows="stopped", urgent_state="RUNNING", urgent_vm="RUNNING",
                     victim_state="SUSPENDED")
    assert not [a for a in plan(obs, PREEMPT) if isinstance(a, RestoreVM | SuspendJob)]


def test_the_preempt_partition_is_not_one_it_preempts() -> None:
    with pytest.raises(ConfigError, match="preempt_partition"):
        parse_config({"slurm": {"partitions": ["a", "b"], "preempt_partition": "b"}})
