"""The planner as a table: an observed picture -> the exact actions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import pytest

from tests.unit.controller_fixtures import (
    T0,
    ago,
    job,
    launch,
    make_config,
    node,
    powered_down,
    powering_up,
    request,
    vm,
)
from vcluster.controller.actions import (
    Action,
    AdoptVM,
    BootVM,
    ClearReason,
    CloseLaunch,
    FailNode,
    HoldJob,
    MarkHandled,
    MarkUp,
    NoteKept,
    PowerDown,
    ResetNode,
    ResumeVM,
    SetBackoff,
    SetNodeAddr,
    StartNow,
    TerminateVM,
    Unplaceable,
    UpsertJob,
)
from vcluster.controller.observe import JobRecord, Observed
from vcluster.controller.plan import job_wishes, plan
from vcluster.slurm_parse import compress_hostlist

CONFIG = make_config()
S1, S2, S3, B1 = "vc-small-001", "vc-small-002", "vc-small-003", "vc-big-001"
S4 = "vc-small-004"
ASKS = {"TOKEN": "YES", "REPORT_READY": "YES", "ONEGATE_ENDPOINT": "http://10.9.0.1:5030"}
"""The CONTEXT of a VM that reports READY through OneGate (as vcluster's workers do)."""


def picture(**kw: object) -> Observed:
    """A picture at T0; its jobs count as already recorded unless known_jobs is given."""
    if "known_jobs" not in kw:
        kw["known_jobs"] = {
            j.job_id: JobRecord(j.job_id, j.state, compress_hostlist(j.nodes), None)
            for j in kw.get("jobs", {}).values()  # type: ignore[attr-defined]
        }
    return Observed(now=T0, **kw)  # type: ignore[arg-type]


def jobs(*items: object) -> dict[int, object]:
    return {j.job_id: j for j in items}  # type: ignore[attr-defined]


CASES: list[tuple[str, Callable[[], Observed], list[Action]]] = [
    ("nothing to do", lambda: picture(nodes={S1: powered_down(S1)}), []),
    ("a resumed node gets a VM sized to its job, with the job's template",
     lambda: picture(
         nodes={S1: powering_up(S1)},
         jobs=jobs(job(12, S1, tasks=1, memory_per_node_mb=1024,
                       comment="vcluster[template=ubuntu] mine"))),
     [BootVM(S1, "small", 12, 1, 1024, "ubuntu")]),
    ("a template the class does not allow falls back to the class's",
     lambda: picture(nodes={S1: powering_up(S1)},
                     jobs=jobs(job(12, S1, comment="vcluster[template=evil]"))),
     [BootVM(S1, "small", 12, 1, 2048, "worker")]),
    ("a job asking more than the class gets the class size",
     lambda: picture(nodes={S1: powering_up(S1)},
                     jobs=jobs(job(12, S1, tasks=8, memory_per_cpu_mb=4096))),
     [BootVM(S1, "small", 12, 2, 2048, "worker")]),
    ("DefMemPerCPU alone gives at least MIN_VM_MEMORY_MB",
     lambda: picture(nodes={S1: powering_up(S1)},
                     jobs=jobs(job(12, S1, memory_per_cpu_mb=100))),
     [BootVM(S1, "small", 12, 1, 512, "worker")]),
    ("two nodes of one job share its tasks",
     lambda: picture(nodes={S1: powering_up(S1), S2: powering_up(S2)},
                     jobs=jobs(job(12, S1, S2, tasks=4, memory_per_node_mb=1500))),
     [BootVM(S1, "small", 12, 2, 1500, "worker"), BootVM(S2, "small", 12, 2, 1500, "worker")]),
    ("a manual power up (no job) gets the whole class, and the request is handled",
     lambda: picture(nodes={B1: powering_up(B1)},
                     requests=(request(3, "resume", (B1,), (), {"jobs": []}),)),
     [BootVM(B1, "big", None, 8, 8192, "bigworker"), MarkHandled((3,))]),
    ("a pool node gets the whole class: it will serve later jobs too",
     lambda: picture(nodes={B1: powering_up(B1)},
                     jobs=jobs(job(12, B1, features="big", memory_per_cpu_mb=100))),
     [BootVM(B1, "big", 12, 8, 8192, "bigworker")]),
    ("an array task is found through the resume file",
     lambda: picture(
         nodes={S1: powering_up(S1)},
         jobs=jobs(job(15, state="PENDING", array_job_id=14, array_task_id=1)),
         requests=(request(4, "resume", (S1,), (15,),
                           {"jobs": [{"job_id": 15, "nodes": S1}]}),)),
     [BootVM(S1, "small", 15, 1, 2048, "worker"), MarkHandled((4,))]),
    ("a retry waits for its backoff",
     lambda: picture(nodes={S1: powering_up(S1)},
                     launches=(launch(1, S1, "requested", attempts=2, updated_s_ago=3),)),
     []),
    ("a retry after its backoff re-uses the launch row",
     lambda: picture(nodes={S1: powering_up(S1)}, jobs=jobs(job(12, S1)),
                     launches=(launch(1, S1, "requested", job_id=12, attempts=1,
                                      updated_s_ago=2),)),
     [BootVM(S1, "small", 12, 1, 2048, "worker", launch_id=1)]),
    ("retries used up: the node is given up with the last error",
     lambda: picture(nodes={S1: powering_up(S1)},
                     launches=(launch(1, S1, "requested", job_id=12, attempts=3,
                                      updated_s_ago=30, reason="oned unreachable"),)),
     [FailNode(S1, "vcluster: no VM after 3 attempts: oned unreachable", 1, None, 12)]),
    ("an interrupted allocation adopts the VM its tags name",
     lambda: picture(nodes={S1: powering_up(S1)}, vms={7: vm(7, S1, "PENDING", job_id=12)},
                     launches=(launch(1, S1, "allocating", job_id=12, updated_s_ago=2),)),
     [AdoptVM(S1, "small", 7, 12, "booting", "10.9.0.10", 1)]),
    ("an allocation possibly in flight is left alone",
     lambda: picture(nodes={S1: powering_up(S1)},
                     launches=(launch(1, S1, "allocating", updated_s_ago=2),)),
     []),
    ("a booting VM's IP becomes the node's NodeAddr",
     lambda: picture(nodes={S1: powering_up(S1)}, vms={7: vm(7, S1, "BOOT")},
                     launches=(launch(1, S1, "booting", vm_id=7),)),
     [SetNodeAddr(1, S1, "10.9.0.10")]),
    ("a launch edited by hand into booting without a VM is closed",
     lambda: picture(nodes={S1: powering_up(S1)}, launches=(launch(1, S1, "booting"),)),
     [CloseLaunch(1, S1, "failed", "a booting launch without a VM id")]),
    ("slurmd registered: the launch is up",
     lambda: picture(nodes={S1: node(S1, "ALLOCATED")}, vms={7: vm(7, S1)},
                     launches=(launch(1, S1, "booting", vm_id=7, ip="10.9.0.10",
                                      created_s_ago=4),)),
     [MarkUp(1, S1, 7, 4.0)]),
    ("a VM in BOOT_FAILURE: node given up, VM terminated",
     lambda: picture(nodes={S1: powering_up(S1)}, vms={7: vm(7, S1, "BOOT_FAILURE")},
                     launches=(launch(1, S1, "booting", vm_id=7, job_id=12),)),
     [FailNode(S1, "vcluster: VM 7 failed to boot (BOOT_FAILURE)", 1, 7, 12, "FAILURE",
               "BOOT_FAILURE")]),
    ("not a node within ResumeTimeout: node given up",
     lambda: picture(nodes={S1: powering_up(S1)}, vms={7: vm(7, S1)},
                     launches=(launch(1, S1, "booting", vm_id=7, ip="10.9.0.10",
                                      created_s_ago=61),)),
     [FailNode(S1, "vcluster: VM 7 was not a working node within 60 s (ResumeTimeout; "
               "VM RUNNING)", 1, 7, None)]),
    ("RUNNING without READY at ResumeTimeout, READY asked for: contextualization/OneGate",
     lambda: picture(nodes={S1: powering_up(S1)}, vms={7: replace(vm(7, S1), context=ASKS)},
                     launches=(launch(1, S1, "booting", vm_id=7, ip="10.9.0.10", job_id=12,
                                      created_s_ago=61),)),
     [FailNode(S1, "vcluster: VM 7 was not a working node within 60 s (ResumeTimeout; VM "
               "RUNNING but it never reported READY: its contextualization failed or cannot "
               "reach OneGate at http://10.9.0.1:5030)", 1, 7, 12)]),
    ("RUNNING and READY at ResumeTimeout: it is slurmd that did not register",
     lambda: picture(nodes={S1: powering_up(S1)},
                     vms={7: replace(vm(7, S1), context=ASKS,
                                     user_template={**vm(7, S1).user_template, "READY": "YES"})},
                     launches=(launch(1, S1, "booting", vm_id=7, ip="10.9.0.10",
                                      created_s_ago=61),)),
     [FailNode(S1, "vcluster: VM 7 was not a working node within 60 s (ResumeTimeout; VM "
               "RUNNING and READY, but its slurmd did not register with slurmctld)", 1, 7,
               None)]),
    ("RUNNING without READY before ResumeTimeout: still contextualizing, wait",
     lambda: picture(nodes={S1: powering_up(S1)}, vms={7: replace(vm(7, S1), context=ASKS)},
                     launches=(launch(1, S1, "booting", vm_id=7, ip="10.9.0.10",
                                      created_s_ago=59),)),
     []),
    ("a registered node is up even if READY has not arrived yet",
     lambda: picture(nodes={S1: node(S1, "IDLE")}, vms={7: replace(vm(7, S1), context=ASKS)},
                     launches=(launch(1, S1, "booting", vm_id=7, ip="10.9.0.10",
                                      created_s_ago=4),)),
     [MarkUp(1, S1, 7, 4.0)]),
    ("READY not asked for: the reason names only the VM's state",
     lambda: picture(nodes={S1: powering_up(S1)},
                     vms={7: replace(vm(7, S1), context={"REPORT_READY": "NO"})},
                     launches=(launch(1, S1, "booting", vm_id=7, ip="10.9.0.10",
                                      created_s_ago=61),)),
     [FailNode(S1, "vcluster: VM 7 was not a working node within 60 s (ResumeTimeout; "
               "VM RUNNING)", 1, 7, None)]),
    ("PENDING with READY asked for: placement, not contextualization, is named",
     lambda: picture(nodes={S1: powering_up(S1)},
                     vms={7: replace(vm(7, S1, "PENDING"), context=ASKS)},
                     launches=(launch(1, S1, "booting", vm_id=7, created_s_ago=61),)),
     [FailNode(S1, "vcluster: VM 7 was not a working node within 60 s (ResumeTimeout; "
               "VM PENDING)", 1, 7, None)]),
    ("a VM OpenNebula could not place backs its class off, the node's reason saying why",
     lambda: picture(nodes={S1: powering_up(S1)},
                     vms={7: replace(vm(7, S1, "PENDING"), sched_message=(
                         "Cannot dispatch VM: No host with enough capacity"))},
                     launches=(launch(1, S1, "booting", vm_id=7, ip="10.9.0.10",
                                      created_s_ago=61),)),
     [SetBackoff("small", "worker", 1, "placement",
                 "Cannot dispatch VM: No host with enough capacity", T0 + timedelta(seconds=60)),
      Unplaceable(S1, "small", "vcluster: template worker of class small cannot be placed: "
                  "Cannot dispatch VM: No host with enough capacity", "placement", 1, 7)]),
    ("a VM that dies under a running job: node DOWN with a reason",
     lambda: picture(nodes={S1: node(S1, "ALLOCATED")}, jobs=jobs(job(12, S1, state="RUNNING")),
                     launches=(launch(1, S1, "up", vm_id=7, job_id=12, ip="10.9.0.10"),)),
     [FailNode(S1, "vcluster: VM 7 died (gone)", 1, None, 12, "DONE", "gone")]),
    ("a VM lost by monitoring (UNKNOWN) is a dead node too",
     lambda: picture(nodes={S1: node(S1, "IDLE")}, vms={7: vm(7, S1, "UNKNOWN")},
                     launches=(launch(1, S1, "up", vm_id=7),)),
     [FailNode(S1, "vcluster: VM 7 died (UNKNOWN)", 1, 7, None, "UNKNOWN", "UNKNOWN")]),
    ("Slurm powers a node down: its VM is terminated",
     lambda: picture(nodes={B1: node(B1, "IDLE", "POWERING_DOWN")}, vms={7: vm(7, B1)},
                     launches=(launch(1, B1, "up", vm_id=7),),
                     requests=(request(5, "suspend", (B1,)),)),
     [TerminateVM(7, B1, "Slurm powered the node down", 1), MarkHandled((5,))]),
    ("a terminated VM gone from the listing closes its launch",
     lambda: picture(nodes={B1: powered_down(B1)},
                     launches=(launch(1, B1, "terminating", vm_id=7,
                                      reason="Slurm powered the node down"),)),
     [CloseLaunch(1, B1, "terminated", "Slurm powered the node down")]),
    ("a VM that ignores its terminate is terminated hard",
     lambda: picture(nodes={B1: powered_down(B1)}, vms={7: vm(7, B1)},
                     launches=(launch(1, B1, "terminating", vm_id=7, updated_s_ago=121,
                                      reason="r"),)),
     [TerminateVM(7, B1, "r", 1, hard=True)]),
    ("Slurm gave a node up (ResumeFailProgram): VM terminated, launch failed",
     lambda: picture(nodes={S1: node(S1, "DOWN", "POWERED_DOWN")}, vms={7: vm(7, S1)},
                     launches=(launch(1, S1, "booting", vm_id=7),),
                     requests=(request(6, "resume-fail", (S1,)),)),
     [TerminateVM(7, S1, "vcluster: Slurm gave the node up (not a working node within "
                  "ResumeTimeout)", 1, close_as="failed"), MarkHandled((6,))]),
    ("an orphan VM (node powered down, no launch) is terminated",
     lambda: picture(nodes={S1: powered_down(S1)}, vms={9: vm(9, S1)}),
     [TerminateVM(9, S1, "orphan VM 9 (RUNNING) tagged for node vc-small-001",
                  close_as="terminated")]),
    ("a VM already shutting down is left to finish",
     lambda: picture(nodes={S1: powered_down(S1)}, vms={9: vm(9, S1, "SHUTDOWN")}), []),
    ("a lost map is rebuilt from the tags of an up node's VM",
     lambda: picture(nodes={S1: node(S1, "ALLOCATED")}, vms={9: vm(9, S1, job_id=12)}),
     [AdoptVM(S1, "small", 9, 12, "up", "10.9.0.10")]),
    ("a second VM for a node that already has one is an orphan",
     lambda: picture(nodes={S1: node(S1, "ALLOCATED")}, vms={7: vm(7, S1), 9: vm(9, S1)},
                     launches=(launch(1, S1, "up", vm_id=7),)),
     [TerminateVM(9, S1, "orphan VM 9 (RUNNING) tagged for node vc-small-001",
                  close_as="terminated")]),
    ("an up node without any VM is given up",
     lambda: picture(nodes={S1: node(S1, "IDLE")}),
     [FailNode(S1, "vcluster: no VM backs this node (Slurm: IDLE+CLOUD)")]),
    ("a per-job node whose job ended is powered down; a pool node stays",
     lambda: picture(nodes={S1: node(S1, "IDLE"), B1: node(B1, "IDLE")},
                     jobs=jobs(job(12, state="COMPLETED")),
                     vms={7: vm(7, S1), 8: vm(8, B1)},
                     launches=(launch(1, S1, "up", vm_id=7, job_id=12),
                               launch(2, B1, "up", vm_id=8, job_id=13))),
     [PowerDown((S1,), "per-job node's job ended")]),
    ("a per-job node whose job was requeued is powered down (the rerun gets a fresh VM)",
     lambda: picture(nodes={S1: node(S1, "IDLE")}, jobs=jobs(job(12, state="PENDING")),
                     vms={7: vm(7, S1)}, launches=(launch(1, S1, "up", vm_id=7, job_id=12),)),
     [PowerDown((S1,), "per-job node's job ended")]),
    ("a per-job node running its job stays",
     lambda: picture(nodes={S1: node(S1, "ALLOCATED")}, jobs=jobs(job(12, S1, state="RUNNING")),
                     vms={7: vm(7, S1)}, launches=(launch(1, S1, "up", vm_id=7, job_id=12),)),
     []),
    ("a per-job node told to power down (IDLE+DRAIN+POWER_DOWN) reads as off",
     lambda: picture(nodes={S1: node(S1, "IDLE", "DRAIN", "POWER_DOWN")}, vms={7: vm(7, S1)},
                     launches=(launch(1, S1, "up", vm_id=7, job_id=12),)),
     [TerminateVM(7, S1, "Slurm powered the node down", 1)]),
    ("a node still completing its job with POWER_DOWN (the epilog's) keeps its VM",
     lambda: picture(nodes={S1: node(S1, "IDLE", "DRAIN", "POWER_DOWN", "COMPLETING")},
                     vms={7: vm(7, S1)}, launches=(launch(1, S1, "up", vm_id=7, job_id=12),)),
     []),
    ("a repeated power-down request (IDLE+DRAIN+POWER_DOWN, no VM) is off, not a node "
     "without a VM",
     lambda: picture(nodes={S1: node(S1, "IDLE", "DRAIN", "POWER_DOWN")}), []),
    ("a powering-up node whose power-down is pending (job cancelled) gets no VM",
     lambda: picture(nodes={S1: node(S1, "IDLE", "DRAIN", "POWER_DOWN", "POWERING_UP")}),
     []),
    ("a job cancelled while its VM cannot be placed: the PENDING VM is terminated",
     lambda: picture(nodes={S1: node(S1, "IDLE", "DRAIN", "POWER_DOWN", "POWERING_UP")},
                     vms={7: vm(7, S1, "PENDING")}, jobs=jobs(job(12, state="CANCELLED")),
                     launches=(launch(1, S1, "booting", vm_id=7, job_id=12),)),
     [TerminateVM(7, S1, "Slurm powered the node down", 1)]),
    ("a per-job VM whose job ended before it was up is terminated, whatever its state",
     lambda: picture(nodes={S1: powering_up(S1), S2: powering_up(S2)},
                     vms={7: vm(7, S1, "PENDING"), 8: vm(8, S2, "BOOT")},
                     jobs=jobs(job(12, state="CANCELLED"), job(13, state="FAILED")),
                     launches=(launch(1, S1, "booting", vm_id=7, job_id=12),
                               launch(2, S2, "booting", vm_id=8, job_id=13))),
     [TerminateVM(7, S1, "job 12 ended before its VM was up (PENDING)", 1),
      TerminateVM(8, S2, "job 13 ended before its VM was up (BOOT)", 2)]),
    ("a stale per-job drain on a powered-down node is lifted; one of a held node stays; a "
     "reason without a drain waits for the node's next registration (24.11 keeps it)",
     lambda: picture(nodes={S1: node(S1, "IDLE", "POWERED_DOWN", "DRAIN",
                                     reason="vcluster: per-job VM of job 12"),
                            S3: node(S3, "IDLE", "POWERED_DOWN",
                                     reason="vcluster: per-job VM of job 11"),
                            S2: node(S2, "IDLE", "POWERED_DOWN", "POWERING_UP",
                                     reason="vcluster: per-job VM of job 13")},
                     jobs=jobs(job(13, S2))),
     [ClearReason(S1, "vcluster: per-job VM of job 12"),
      BootVM(S2, "small", 13, 1, 2048, "worker")]),
    ("a node vcluster set DOWN is powered down once its VM is gone; an admin's DOWN stays",
     lambda: picture(nodes={S1: node(S1, "DOWN", reason="vcluster: VM 7 died (gone)"),
                            S2: node(S2, "DOWN", reason="disk check")}),
     [ResetNode(S1, "vcluster: VM 7 died (gone)")]),
    ("once down~ (DOWN and powered down) it is resumed; while powering down it waits",
     lambda: picture(nodes={S1: node(S1, "DOWN", "POWERED_DOWN", reason="vcluster: x"),
                            S2: node(S2, "DOWN", "POWERING_DOWN", reason="vcluster: y")}),
     [ResetNode(S1, "vcluster: x", "RESUME")]),
    ("a node Slurm gave up at ResumeTimeout is returned to service once its VM is gone",
     lambda: picture(nodes={S1: node(S1, "DOWN", "POWERED_DOWN",
                                     reason="ResumeTimeout reached")}),
     [ResetNode(S1, "ResumeTimeout reached", "RESUME")]),
    ("Slurm 24.11 keeps the node's earlier reason before its ResumeTimeout (a job cancelled "
     "while its nodes powered up): returned to service too",
     lambda: picture(nodes={S1: node(S1, "DOWN", "POWERED_DOWN",
                                     reason="POWER_DOWN_ASAP : ResumeTimeout reached")}),
     [ResetNode(S1, "POWER_DOWN_ASAP : ResumeTimeout reached", "RESUME")]),
    ("no second boot right after a failed one, unless Slurm asks again",
     lambda: picture(nodes={S1: powering_up(S1), S2: powering_up(S2)},
                     last_failure_at={S1: ago(5), S2: ago(5)},
                     last_resume_at={S1: ago(30), S2: ago(2)}),
     [BootVM(S2, "small", None, 2, 2048, "worker")]),
    ("a node left powering up for nobody (its job cancelled while it powered up) gets no VM: "
     "it is drained, then powered down at once; once Slurm asks again, or a job holds it, it "
     "gets a VM",
     lambda: picture(nodes={S1: node(S1, "IDLE", "POWERING_UP"),
                            S2: node(S2, "IDLE", "POWERING_UP"), S3: powering_up(S3),
                            B1: node(B1, "IDLE", "DRAIN", "POWER_DOWN", "POWERING_UP"),
                            # a job squeue did not show yet holds it in Slurm's node read
                            S4: node(S4, "ALLOCATED", "POWERING_UP")},
                     jobs=jobs(job(40, S3)),
                     last_served_at={S1: ago(5), S2: ago(5), S3: ago(5), B1: ago(5),
                                     S4: ago(5)},
                     last_resume_at={S1: ago(30), S2: ago(2), S3: ago(30), B1: ago(30),
                                     S4: ago(30)}),
     [BootVM(S2, "small", None, 2, 2048, "worker"),
      BootVM(S3, "small", 40, 1, 2048, "worker"),
      BootVM(S4, "small", None, 2, 2048, "worker"),
      PowerDown((S1,), "its job ended while it powered up"),
      PowerDown((B1,), "its job ended while it powered up", "POWER_DOWN_FORCE")]),
    ("a job Slurm requeued after vcluster gave its node up is made eligible at once; "
     "a job merely held back by its own --begin is not",
     lambda: picture(jobs=jobs(job(30, state="PENDING", state_reason="BeginTime"),
                               job(31, state="PENDING", state_reason="BeginTime"),
                               job(32, state="PENDING", state_reason="Resources")),
                     failed_jobs={30: ago(3), 32: ago(3)}),
     [StartNow(30, "vcluster: requeued: its nodes were given back")]),
    ("a job whose VMs failed three times per node is held with the last reason, "
     "not requeued a fourth time",
     lambda: picture(jobs=jobs(job(33, state="PENDING", state_reason="BeginTime"),
                               job(34, "vc-small-001", "vc-small-002", state="PENDING",
                                   state_reason="BeginTime", node_count=2)),
                     failed_jobs={33: ago(3), 34: ago(3)},
                     job_failures={33: (3, "vcluster: cannot boot a VM: no template x"),
                                   34: (3, "vcluster: VM 9 failed to boot (BOOT_FAILURE)")}),
     [HoldJob(33, "vcluster: held after 3 failed VMs; last: cannot boot a VM: no template x"),
      StartNow(34, "vcluster: requeued after a VM failed (3 so far); last: VM 9 failed to "
                   "boot (BOOT_FAILURE)")]),
    ("jobs are recorded when new or changed, and closed when Slurm forgets them",
     lambda: picture(
         jobs=jobs(job(20, state="PENDING"), job(21, state="PENDING"),
                   job(22, state="PENDING", partition="other")),
         known_jobs={20: JobRecord(20, "PENDING", "", None),
                     21: JobRecord(21, "CONFIGURING", "", None),
                     19: JobRecord(19, "RUNNING", "vc-small-003", "worker")}),
     [UpsertJob(21, "small", "worker", "alice", "PENDING", "", None, None, None),
      UpsertJob(19, None, "worker", "", "RUNNING", "vc-small-003", None, None, None,
                gone=True)]),
]


@pytest.mark.parametrize(("observed", "expected"),
                         [pytest.param(build, expected, id=name)
                          for name, build, expected in CASES])
def test_plan(observed: Callable[[], Observed], expected: list[Action]) -> None:
    assert plan(observed(), CONFIG) == expected


@pytest.mark.parametrize("build", [b for _, b, _ in CASES])
def test_plan_is_deterministic(build: Callable[[], Observed]) -> None:
    assert plan(build(), CONFIG) == plan(build(), CONFIG)


# --- VMs acted on behind vcluster's back: every state, both rules ----------------------------

RESUMING = make_config()
RESUMING = replace(RESUMING, node_classes=tuple(
    replace(nc, on_vm_event={"SUSPENDED": "resume", "POWEROFF": "resume"})
    for nc in RESUMING.node_classes))
BACK = "behind vcluster's back"

# VM state seen under a running job -> (on_vm_event key, reason of the default rule "fail");
# None: not an event (vcluster leaves the VM alone)
SEEN_UNDER_A_JOB: list[tuple[str, tuple[str, str] | None]] = [
    ("RUNNING", None),
    ("MIGRATE", None),
    ("HOTPLUG_NIC", None),
    ("BOOT_SUSPENDED", None),
    ("BOOT_POWEROFF", None),
    ("SHUTDOWN_POWEROFF", ("POWEROFF", f"vcluster: VM 7 SHUTDOWN_POWEROFF {BACK}")),
    ("POWEROFF", ("POWEROFF", f"vcluster: VM 7 POWEROFF {BACK}")),
    ("SAVE_SUSPEND", ("SUSPENDED", f"vcluster: VM 7 SAVE_SUSPEND {BACK}")),
    ("SUSPENDED", ("SUSPENDED", f"vcluster: VM 7 SUSPENDED {BACK}")),
    ("SAVE_STOP", ("STOPPED", f"vcluster: VM 7 SAVE_STOP {BACK}")),
    ("STOPPED", ("STOPPED", f"vcluster: VM 7 STOPPED {BACK}")),
    ("SHUTDOWN_UNDEPLOY", ("UNDEPLOYED", f"vcluster: VM 7 SHUTDOWN_UNDEPLOY {BACK}")),
    ("UNDEPLOYED", ("UNDEPLOYED", f"vcluster: VM 7 UNDEPLOYED {BACK}")),
    ("UNKNOWN", ("UNKNOWN", "vcluster: VM 7 died (UNKNOWN)")),
    ("EPILOG_FAILURE", ("FAILURE", "vcluster: VM 7 died (EPILOG_FAILURE)")),
    ("CLONING_FAILURE", ("FAILURE", "vcluster: VM 7 died (CLONING_FAILURE)")),
    ("SHUTDOWN", ("DONE", "vcluster: VM 7 died (SHUTDOWN)")),
    ("EPILOG", ("DONE", "vcluster: VM 7 died (EPILOG)")),
]


def _under_a_job(state_name: str) -> Observed:
    return picture(nodes={S1: node(S1, "ALLOCATED")}, jobs=jobs(job(12, S1, state="RUNNING")),
                   vms={7: vm(7, S1, state_name)},
                   launches=(launch(1, S1, "up", vm_id=7, job_id=12, ip="10.9.0.10"),))


@pytest.mark.parametrize(("state_name", "expected"), SEEN_UNDER_A_JOB,
                         ids=[s for s, _ in SEEN_UNDER_A_JOB])
def test_a_vm_state_not_asked_for_fails_the_node_by_default(
        state_name: str, expected: tuple[str, str] | None) -> None:
    actions = plan(_under_a_job(state_name), CONFIG)
    if expected is None:
        assert actions == []
    else:
        event, reason = expected
        assert actions == [FailNode(S1, reason, 1, 7, 12, event, state_name)]


@pytest.mark.parametrize(("state_name", "expected"), [
    ("SUSPENDED", [ResumeVM(7, S1, "SUSPENDED", "SUSPENDED", 1, 12)]),
    ("POWEROFF", [ResumeVM(7, S1, "POWEROFF", "POWEROFF", 1, 12)]),
    ("SAVE_SUSPEND", []),  # resumed once it has settled
    ("SHUTDOWN_POWEROFF", []),
    ("STOPPED", [FailNode(S1, f"vcluster: VM 7 STOPPED {BACK}", 1, 7, 12, "STOPPED",
                          "STOPPED")]),
])
def test_a_class_may_resume_a_suspended_or_powered_off_vm(
        state_name: str, expected: list[Action]) -> None:
    assert plan(_under_a_job(state_name), RESUMING) == expected


# state of the host of a RUNNING VM under a job -> what the default rule does
HOST_SEEN_UNDER_A_JOB: list[tuple[str, list[Action]]] = [
    ("MONITORED", []),
    ("INIT", []),
    ("DISABLED", []),  # no new VMs there; the running ones are left alone
    ("OFFLINE", [FailNode(S1, "vcluster: VM 7's host h1 is OFFLINE", 1, 7, 12, "HOST_OFFLINE",
                          "on host h1 OFFLINE")]),
    ("ERROR", [FailNode(S1, "vcluster: VM 7's host h1 is ERROR", 1, 7, 12, "HOST_ERROR",
                        "on host h1 ERROR")]),
    ("MONITORING_ERROR", [FailNode(S1, "vcluster: VM 7's host h1 is MONITORING_ERROR", 1, 7,
                                   12, "HOST_ERROR", "on host h1 MONITORING_ERROR")]),
]


def _on_host(host_state: str | None) -> Observed:
    observed = _under_a_job("RUNNING")
    vms = {7: replace(observed.vms[7], host="h1")}
    hosts = {} if host_state is None else {"h1": host_state, "h2": "OFFLINE"}
    return replace(observed, vms=vms, host_states=hosts)


@pytest.mark.parametrize(("host_state", "expected"), HOST_SEEN_UNDER_A_JOB,
                         ids=[s for s, _ in HOST_SEEN_UNDER_A_JOB])
def test_a_host_offline_or_in_error_fails_its_vms_nodes_by_default(
        host_state: str, expected: list[Action]) -> None:
    assert plan(_on_host(host_state), CONFIG) == expected


def test_a_class_may_keep_its_vms_on_a_host_gone_offline() -> None:
    keeping = replace(CONFIG, node_classes=tuple(
        replace(nc, on_vm_event={"HOST_OFFLINE": "keep"}) for nc in CONFIG.node_classes))
    assert plan(_on_host("OFFLINE"), keeping) == [  # nothing done; the event says so
        NoteKept(7, S1, "HOST_OFFLINE", "on host h1 OFFLINE", 12)]
    assert plan(_on_host("ERROR"), keeping)[0].reason == "vcluster: VM 7's host h1 is ERROR"


def test_hosts_the_user_may_not_list_are_no_event() -> None:
    assert plan(_on_host(None), CONFIG) == []


def test_a_vm_deleted_while_it_boots_fails_the_node_naming_it() -> None:
    observed = picture(nodes={S1: powering_up(S1)}, jobs=jobs(job(12, S1)),
                       launches=(launch(1, S1, "booting", vm_id=7, job_id=12),))
    assert plan(observed, CONFIG) == [
        FailNode(S1, "vcluster: VM 7 failed to boot (gone)", 1, None, 12, "DONE", "gone")]


@pytest.mark.parametrize(("comment", "wishes"), [
    ("", {}),
    ("vcluster[template=ubuntu]", {"template": "ubuntu"}),
    ("vcluster[template=a b, x=1] my own comment", {"template": "a b", "x": "1"}),
    ("no wishes [template=x]", {}),
])
def test_job_wishes(comment: str, wishes: dict[str, str]) -> None:
    assert job_wishes(comment) == wishes
