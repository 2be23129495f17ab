"""Node and VM states read exactly, as tables: every Slurm state and flag combination a CLOUD
node passes through, in the spellings of Slurm 22.05 (``sinfo --json``: a lower-case state
plus ``state_flags``) and 24.11 (``scontrol show node --json``: one list), and ``scontrol show
node -o`` (``IDLE+CLOUD+POWERED_DOWN``), parsed by :mod:`vcluster.slurm_parse` and planned;
every OpenNebula state a VM under a job can be in; a cancelled job's VMs in every state; a
node's reason from the moment it is set until it is cleared."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tests.unit.controller_fixtures import T0, ago, job, launch, node, vm
from tests.unit.test_plan import CONFIG, S1, jobs, picture
from vcluster.controller.actions import (
    Action,
    BootVM,
    ClearReason,
    CloseLaunch,
    FailNode,
    PowerDown,
    RequeueJob,
    ResetNode,
    TerminateVM,
)
from vcluster.controller.observe import Observed
from vcluster.controller.plan import plan, vm_event
from vcluster.one_vm import LcmState, VmState, state_name
from vcluster.slurm_parse import Node, node_from_record, parse_nodes_json, parse_sinfo_json

OFF = TerminateVM(7, S1, "Slurm powered the node down", 1)
BOOT_FOR_JOB = BootVM(S1, "small", 12, 1, 2048, "worker")
NO_VM = "vcluster: no VM backs this node (Slurm: {})"

# (base state, flags, the node's job state or None, reason) -> actions planned
#   bare: no launch and no VM for the node; up: an up launch with its RUNNING VM 7 (job 12)
NODE_STATES: list[tuple[str, str, str | None, str, list[Action], list[Action]]] = [
    # powered down, and what leads there
    ("IDLE", "CLOUD POWERED_DOWN", None, "", [], [OFF]),
    ("IDLE", "CLOUD POWERED_DOWN NOT_RESPONDING", None, "", [], [OFF]),
    ("IDLE", "CLOUD POWERED_DOWN PLANNED", None, "", [], [OFF]),  # 24.11: planned for a job
    ("IDLE", "CLOUD POWERING_DOWN", None, "", [], [OFF]),
    ("IDLE", "CLOUD DRAIN POWERING_DOWN", None, "", [], [OFF]),
    # the prolog's POWER_DOWN_ASAP once its job left; a repeated power-down request (a late
    # epilog) on a powered-down node: 22.05 shows this for about a second, 24.11 keeps
    # POWERED_DOWN
    ("IDLE", "CLOUD DRAIN POWER_DOWN", None, "", [], [OFF]),
    ("IDLE", "CLOUD DRAIN POWERED_DOWN POWER_DOWN", None, "", [], [OFF]),
    # a per-job reason left on a powered-down node is lifted
    ("IDLE", "CLOUD DRAIN POWERED_DOWN", None, "vcluster: per-job VM of job 11",
     [ClearReason(S1, "vcluster: per-job VM of job 11")], [OFF]),
    # given to a job: allocated while powered down, then powering up
    ("ALLOCATED", "CLOUD POWERED_DOWN", "CONFIGURING", "", [], [OFF]),
    ("ALLOCATED", "CLOUD POWERING_UP NOT_RESPONDING", "CONFIGURING", "", [BOOT_FOR_JOB], []),
    ("MIXED", "CLOUD POWERING_UP NOT_RESPONDING", "CONFIGURING", "", [BOOT_FOR_JOB], []),
    ("IDLE", "CLOUD POWERING_UP", None, "",  # `scontrol power_up`: no job to size the VM to
     [BootVM(S1, "small", None, 2, 2048, "worker")], []),
    # a job cancelled while its node powered up: no VM for it
    ("IDLE", "CLOUD DRAIN POWER_DOWN POWERING_UP", None, "", [], [OFF]),
    # up: running, reserved for its job (the prolog's POWER_DOWN_ASAP), completing
    ("ALLOCATED", "CLOUD", "RUNNING", "",
     [FailNode(S1, NO_VM.format("ALLOCATED+CLOUD"), job_id=12)], []),
    ("ALLOCATED", "CLOUD DRAIN POWER_DOWN", "RUNNING", "",
     [FailNode(S1, NO_VM.format("ALLOCATED+CLOUD+DRAIN+POWER_DOWN"), job_id=12)], []),
    ("ALLOCATED", "CLOUD COMPLETING", "COMPLETING", "",
     [FailNode(S1, NO_VM.format("ALLOCATED+CLOUD+COMPLETING"), job_id=12)], []),
    ("IDLE", "CLOUD DRAIN POWER_DOWN COMPLETING", "COMPLETING", "",
     [FailNode(S1, NO_VM.format("IDLE+CLOUD+COMPLETING+DRAIN+POWER_DOWN"), job_id=12)], []),
    # a late epilog's power-down cleared POWERED_DOWN of the next job's node before its
    # resume (22.05): Slurm waits for it as for an up node, so it gets a VM
    ("ALLOCATED", "CLOUD DRAIN POWER_DOWN", "CONFIGURING", "", [BOOT_FOR_JOB], []),
    # up and idle: a per-job node whose job ended is powered down through Slurm
    ("IDLE", "CLOUD", None, "", [FailNode(S1, NO_VM.format("IDLE+CLOUD"))],
     [PowerDown((S1,), "per-job node's job ended")]),
    # DOWN: vcluster's own (returned to service once its VM is gone), Slurm's ResumeTimeout
    # (22.05 leaves it down~ or still powering up), an admin's or Slurm's other DOWN (left)
    ("DOWN", "CLOUD", None, "vcluster: VM 7 died (gone)",
     [ResetNode(S1, "vcluster: VM 7 died (gone)")],
     [TerminateVM(7, S1, "Slurm set the node DOWN: vcluster: VM 7 died (gone)", 1,
                  close_as="failed")]),
    ("DOWN", "CLOUD POWERING_DOWN", None, "vcluster: x", [],
     [TerminateVM(7, S1, "vcluster: Slurm gave the node up (vcluster: x)", 1,
                  close_as="failed")]),
    ("DOWN", "CLOUD POWERED_DOWN", None, "ResumeTimeout reached",
     [ResetNode(S1, "ResumeTimeout reached", "RESUME")],
     [TerminateVM(7, S1, "vcluster: Slurm gave the node up (ResumeTimeout reached)", 1,
                  close_as="failed")]),
    ("DOWN", "CLOUD POWERING_UP NOT_RESPONDING", "CONFIGURING", "ResumeTimeout reached",
     [ResetNode(S1, "ResumeTimeout reached")],
     [TerminateVM(7, S1, "Slurm set the node DOWN: ResumeTimeout reached", 1,
                  close_as="failed")]),
    ("DOWN", "CLOUD NOT_RESPONDING", None, "Not responding", [],
     [TerminateVM(7, S1, "Slurm set the node DOWN: Not responding", 1, close_as="failed")]),
    ("FUTURE", "CLOUD", None, "", [], []),
]


def _spellings(base: str, flags: str, reason: str) -> dict[str, Node]:
    """The node as each Slurm prints it, parsed."""
    words = flags.split()
    sinfo_2205 = {"nodes": [{"name": S1, "state": base.lower(), "state_flags": words,
                             "reason": reason, "cpus": 2}]}
    scontrol_2411 = {"nodes": [{"name": S1, "state": [base, *words], "reason": reason,
                                "cpus": 2}]}
    record = {"NodeName": S1, "State": "+".join([base, *words]), "CPUTot": "2",
              "Reason": f"{reason} [slurm@2026-11-21T06:59:00]" if reason else "(null)"}
    return {"22.05 sinfo --json": parse_sinfo_json(json.dumps(sinfo_2205))[0],
            "24.11 scontrol --json": parse_nodes_json(json.dumps(scontrol_2411),
                                                      "scontrol show node --json")[0],
            "scontrol -o": node_from_record(record)}


@pytest.mark.parametrize(("base", "flags", "job_state", "reason", "bare", "up"), NODE_STATES,
                         ids=["+".join([r[0], *r[1].split()]) + (f"/{r[2]}" if r[2] else "")
                              for r in NODE_STATES])
def test_every_cloud_node_state_maps_to_one_decision_in_every_spelling(
        base: str, flags: str, job_state: str | None, reason: str, bare: list[Action],
        up: list[Action]) -> None:
    expected = node(S1, base, *flags.split(), reason=reason)
    on_job = jobs(job(12, S1, state=job_state)) if job_state else {}
    for spelling, parsed in _spellings(base, flags, reason).items():
        assert (parsed.state, parsed.flags, parsed.reason) == (
            expected.state, expected.flags, expected.reason), spelling
        seen = replace(expected, state=parsed.state, flags=parsed.flags, reason=parsed.reason)
        assert plan(picture(nodes={S1: seen}, jobs=on_job), CONFIG) == bare, spelling
        with_vm = picture(nodes={S1: seen}, jobs=on_job, vms={7: vm(7, S1)},
                          launches=(launch(1, S1, "up", vm_id=7, job_id=12, ip="10.9.0.10"),))
        assert plan(with_vm, CONFIG) == up, spelling


def test_the_table_holds_each_combination_once() -> None:
    keys = [(b, frozenset(f.split()), j) for b, f, j, _, _, _ in NODE_STATES]
    assert len(keys) == len(set(keys))


# --- every OpenNebula state of a VM under a running job --------------------------------------

_EVENT_OF_LCM = {
    "SHUTDOWN_POWEROFF": "POWEROFF", "SAVE_SUSPEND": "SUSPENDED", "SAVE_STOP": "STOPPED",
    "EPILOG_STOP": "STOPPED", "SHUTDOWN_UNDEPLOY": "UNDEPLOYED",
    "EPILOG_UNDEPLOY": "UNDEPLOYED", "SHUTDOWN": "DONE", "EPILOG": "DONE",
    "CLEANUP_DELETE": "DONE", "CLEANUP_RESUBMIT": "DONE", "UNKNOWN": "UNKNOWN",
}
"""ACTIVE's LCM states that are events (the rest, e.g. MIGRATE, HOTPLUG_*, BOOT_*, a snapshot
or a backup, pass and leave the guest running); every ``*_FAILURE`` is FAILURE."""
_EVENT_OF_STATE = {"POWEROFF": "POWEROFF", "SUSPENDED": "SUSPENDED", "STOPPED": "STOPPED",
                   "UNDEPLOYED": "UNDEPLOYED", "DONE": "DONE", "CLONING_FAILURE": "FAILURE"}
"""The other STATEs that are events; INIT, PENDING, HOLD and CLONING are a VM not yet placed
(no guest to lose: vcluster's ResumeTimeout covers it)."""

ALL_VM_STATES = [(s.value, 0) for s in VmState if s is not VmState.ACTIVE] + [
    (VmState.ACTIVE.value, lcm.value) for lcm in LcmState]


def _expected_event(state: int, lcm: int) -> str | None:
    name = state_name(state, lcm)
    if state == VmState.ACTIVE:
        return "FAILURE" if name.endswith("_FAILURE") else _EVENT_OF_LCM.get(name)
    return _EVENT_OF_STATE.get(name)


@pytest.mark.parametrize(("state", "lcm"), ALL_VM_STATES,
                         ids=[state_name(s, lcm) for s, lcm in ALL_VM_STATES])
def test_every_opennebula_state_maps_to_one_decision(state: int, lcm: int) -> None:
    seen = replace(vm(7, S1), state=state, lcm_state=lcm, state_name=state_name(state, lcm))
    event = _expected_event(state, lcm)
    assert vm_event(seen) == event
    observed = picture(nodes={S1: node(S1, "ALLOCATED")}, jobs=jobs(job(12, S1, state="RUNNING")),
                       vms={7: seen},
                       launches=(launch(1, S1, "up", vm_id=7, job_id=12, ip="10.9.0.10"),))
    actions = plan(observed, CONFIG)
    if event is None:
        assert actions == []
    else:
        (fail,) = actions
        assert isinstance(fail, FailNode) and (fail.event, fail.seen, fail.vm_id, fail.job_id) \
            == (event, seen.state_name, 7, 12)


# --- a cancelled job's VMs go, whatever their state ---------------------------------------------

CANCELLED_VM_STATES = ["PENDING", "BOOT", "RUNNING", "POWEROFF", "SUSPENDED", "STOPPED",
                       "UNDEPLOYED", "UNKNOWN", "EPILOG_FAILURE", "CLONING_FAILURE",
                       "SHUTDOWN_POWEROFF"]
# what Slurm shows of the node of a job cancelled while it powered up: still allocated (the
# cancel not yet seen), then drained for the power-down
CANCELLED_NODES = {"not yet seen": node(S1, "ALLOCATED", "POWERING_UP", "NOT_RESPONDING"),
                   "powering up, power-down pending": node(S1, "IDLE", "DRAIN", "POWER_DOWN",
                                                           "POWERING_UP"),
                   "idle, not responding": node(S1, "IDLE", "POWERING_UP", "NOT_RESPONDING")}


@pytest.mark.parametrize("vm_state", CANCELLED_VM_STATES)
@pytest.mark.parametrize("seen", list(CANCELLED_NODES), ids=list(CANCELLED_NODES))
def test_a_cancelled_jobs_vm_is_terminated_whatever_its_state(vm_state: str, seen: str) -> None:
    observed = picture(nodes={S1: CANCELLED_NODES[seen]}, vms={7: vm(7, S1, vm_state)},
                       jobs=jobs(job(12, state="CANCELLED")),
                       launches=(launch(1, S1, "booting", vm_id=7, job_id=12),))
    (action,) = plan(observed, CONFIG)
    assert isinstance(action, TerminateVM) and (action.vm_id, action.launch_id) == (7, 1)
    assert not action.close_as == "failed", "a cancelled job's VM is no failure"


def test_a_cancelled_jobs_vm_already_gone_closes_its_launch_without_failing_the_node() -> None:
    observed = picture(nodes={S1: CANCELLED_NODES["not yet seen"]},
                       jobs=jobs(job(12, state="CANCELLED")),
                       launches=(launch(1, S1, "booting", vm_id=7, job_id=12),))
    assert plan(observed, CONFIG) == [
        CloseLaunch(1, S1, "terminated", "job 12 ended before its VM was up (gone)")]


def test_a_cancelled_jobs_up_vm_lost_meanwhile_is_powered_down_not_failed() -> None:
    observed = picture(nodes={S1: node(S1, "IDLE")}, vms={7: vm(7, S1, "POWEROFF")},
                       jobs=jobs(job(12, state="CANCELLED")),
                       launches=(launch(1, S1, "up", vm_id=7, job_id=12, ip="10.9.0.10"),))
    assert plan(observed, CONFIG) == [PowerDown((S1,), "per-job node's job ended")]


# --- a reason is set once, and cleared once it stops being true --------------------------------


def test_a_failed_nodes_reason_is_set_once_then_cleared_as_it_comes_back() -> None:
    reason = "vcluster: VM 7 POWEROFF behind vcluster's back"
    running = jobs(job(12, S1, state="RUNNING"))
    lost = picture(nodes={S1: node(S1, "ALLOCATED")}, jobs=running,
                   vms={7: vm(7, S1, "POWEROFF")},
                   launches=(launch(1, S1, "up", vm_id=7, job_id=12, ip="10.9.0.10"),))
    assert plan(lost, CONFIG) == [FailNode(S1, reason, 1, 7, 12, "POWEROFF", "POWEROFF")]
    # the pass after: the node DOWN with that reason, its launch closed, the VM on its way
    requeued = jobs(job(12, state="PENDING"))
    steps = [
        (node(S1, "DOWN", "POWERING_DOWN", reason=reason), {7: vm(7, S1, "SHUTDOWN")}, []),
        (node(S1, "DOWN", "POWERED_DOWN", reason=reason), {},
         [ResetNode(S1, reason, "RESUME")]),
        (node(S1, "IDLE", "POWERED_DOWN"), {}, []),
    ]
    for seen, vms, expected in steps:
        assert plan(picture(nodes={S1: seen}, jobs=requeued, vms=vms), CONFIG) == expected



# --- never FAILED because of the VM: a run Slurm ended FAILED as its VM was lost ---------------

# (job state, run started / ended / VM lost: seconds before the pass) -> requeued
FAILED_RUNS: list[tuple[str, str, float, float, float, bool]] = [
    ("its guest killed it as the VM went", "FAILED", 60, 4, 5, True),
    ("Slurm saw the node fail before vcluster did", "NODE_FAIL", 200, 100, 5, True),
    ("Slurm ended it FAILED just before vcluster saw the VM go", "FAILED", 60, 30, 5, True),
    ("tried only in the half minute after the loss", "FAILED", 60, 4, 31, False),
    ("the rerun (started after the loss) failed on its own", "FAILED", 3, 1, 5, False),
    ("ended long before the loss", "FAILED", 600, 300, 5, False),
    ("completed", "COMPLETED", 60, 4, 5, False),
    ("cancelled", "CANCELLED", 60, 4, 5, False),
]


@pytest.mark.parametrize(("state", "started", "ended", "lost", "requeued"),
                         [r[1:] for r in FAILED_RUNS], ids=[r[0] for r in FAILED_RUNS])
def test_a_run_ended_failed_as_vcluster_gave_its_vm_up_is_requeued(
        state: str, started: float, ended: float, lost: float, requeued: bool) -> None:
    t0 = T0.timestamp()
    ended_job = job(12, S1, state=state, start_time=t0 - started, end_time=t0 - ended)
    observed = picture(jobs=jobs(ended_job), failed_jobs={12: ago(lost)})
    asked = [a for a in plan(observed, CONFIG) if isinstance(a, RequeueJob)]
    assert asked == ([RequeueJob(12, f"vcluster: it ended {state} when vcluster gave its VM "
                                     "up")] if requeued else [])


def test_a_failed_run_without_a_lost_vm_is_left_failed() -> None:
    t0 = T0.timestamp()
    observed = picture(jobs=jobs(job(12, S1, state="FAILED", start_time=t0 - 60,
                                     end_time=t0 - 4)))
    assert not [a for a in plan(observed, CONFIG) if isinstance(a, RequeueJob)]


def test_a_lost_pool_vm_names_the_job_its_node_serves_now() -> None:
    from tests.unit.test_plan import B1, RESUMING
    from vcluster.controller.actions import ResumeVM

    def lost(state_name: str) -> Observed:
        return picture(nodes={B1: node(B1, "ALLOCATED")},
                       jobs=jobs(job(13, B1, state="RUNNING")), vms={8: vm(8, B1, state_name)},
                       launches=(launch(2, B1, "up", vm_id=8, job_id=None, ip="10.9.0.11"),))

    assert plan(lost("SUSPENDED"), RESUMING) == [ResumeVM(8, B1, "SUSPENDED", "SUSPENDED", 2, 13)]
    assert plan(lost("STOPPED"), CONFIG) == [
        FailNode(B1, "vcluster: VM 8 STOPPED behind vcluster's back", 2, 8, 13, "STOPPED",
                 "STOPPED")]
