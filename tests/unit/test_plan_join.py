"""A guest that reports its join failed (VCLUSTER_JOIN_ERROR through OneGate), as a table:
its launch fails at once with the guest's line, not at ResumeTimeout."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from tests.unit.controller_fixtures import ago, job, launch, node, powering_up, vm
from tests.unit.test_plan import ASKS, CONFIG, jobs, picture
from tests.unit.test_plan_standby import CONFIG as STANDBY_CONFIG
from tests.unit.test_plan_standby import SMALL, named, standby
from vcluster.config import Config
from vcluster.controller.actions import Action, FailNode, StartNow, TerminateVM
from vcluster.controller.observe import Observed
from vcluster.controller.plan import plan
from vcluster.one_vm import VM

S1 = "vc-small-001"
REFUSED = ("the controller at http://10.9.0.1:8021 refused the munge key (HTTP 403): unknown "
           "token (never issued; replaced by a newer boot attempt; or expired and removed)")


def reported(v: VM, **tags: str) -> VM:
    """``v`` after its guest wrote ``tags`` into its user template through OneGate."""
    return replace(v, context=ASKS, user_template={**v.user_template, **tags})


CASES: list[tuple[str, Callable[[], Observed], Config, list[Action]]] = [
    ("the guest reports its join failed: the node is given up at once with its line",
     lambda: picture(nodes={S1: powering_up(S1)},
                     vms={7: reported(vm(7, S1), VCLUSTER_JOIN_STAGE="key",
                                      VCLUSTER_JOIN_ERROR=REFUSED)},
                     launches=(launch(1, S1, "booting", vm_id=7, ip="10.9.0.10", job_id=12,
                                      created_s_ago=3),)),
     CONFIG,
     [FailNode(S1, f"vcluster: VM 7 could not join: {REFUSED}", 1, 7, 12)]),
    ("a guest's text is made one printable line of at most 300 characters",
     lambda: picture(nodes={S1: powering_up(S1)},
                     vms={7: reported(vm(7, S1), VCLUSTER_JOIN_ERROR="slurmd\tdied\n\x1b[31m"
                                      + "x" * 400)},
                     launches=(launch(1, S1, "booting", vm_id=7, ip="10.9.0.10",
                                      created_s_ago=3),)),
     CONFIG,
     [FailNode(S1, "vcluster: VM 7 could not join: slurmd died [31m" + "x" * 284, 1, 7,
               None)]),
    ("an empty error is no error: a guest still joining is waited for",
     lambda: picture(nodes={S1: powering_up(S1)},
                     vms={7: reported(vm(7, S1), VCLUSTER_JOIN_STAGE="slurmd",
                                      VCLUSTER_JOIN_ERROR=" ")},
                     launches=(launch(1, S1, "booting", vm_id=7, ip="10.9.0.10",
                                      created_s_ago=3),)),
     CONFIG,
     []),
    ("at ResumeTimeout the reason says how far the guest's join got",
     lambda: picture(nodes={S1: powering_up(S1)},
                     vms={7: reported(vm(7, S1), VCLUSTER_JOIN_STAGE="munged")},
                     launches=(launch(1, S1, "booting", vm_id=7, ip="10.9.0.10",
                                      created_s_ago=61),)),
     CONFIG,
     [FailNode(S1, "vcluster: VM 7 was not a working node within 60 s (ResumeTimeout; VM "
               "RUNNING but it never reported READY, its join last reported at stage munged: "
               "its contextualization failed or cannot reach OneGate at "
               "http://10.9.0.1:5030)", 1, 7, None)]),
    ("a node already up is not failed by a stale report (Slurm decides about up nodes)",
     lambda: picture(nodes={S1: node(S1, "ALLOCATED")},
                     vms={7: reported(vm(7, S1), VCLUSTER_JOIN_ERROR="old")},
                     launches=(launch(1, S1, "up", vm_id=7, ip="10.9.0.10"),)),
     CONFIG,
     []),
    ("the job requeued after a join failure is made eligible with the guest's line, which "
     "its AdminComment shows",
     lambda: picture(jobs=jobs(job(30, state="PENDING", state_reason="BeginTime")),
                     failed_jobs={30: ago(1)},
                     job_failures={30: (1, f"vcluster: VM 7 could not join: {REFUSED}")}),
     CONFIG,
     [StartNow(30, f"vcluster: requeued after a VM failed (1 so far); last: VM 7 could not "
                   f"join: {REFUSED}")]),
    ("a standby VM that could not get ready is terminated hard and replaced",
     lambda: picture(vms={50: reported(standby(50), VCLUSTER_JOIN_ERROR=REFUSED),
                          51: standby(51, ip="10.9.0.51")}),
     STANDBY_CONFIG,
     [TerminateVM(50, "", f"standby VM 50 of class small could not join: {REFUSED}",
                  close_as="terminated", hard=True), SMALL]),
    ("a standby VM handed to a node that then fails to join fails its node at once",
     lambda: picture(nodes={S1: powering_up(S1)},
                     vms={50: reported(named(standby(50), S1, 12), VCLUSTER_JOIN_STAGE="slurmd",
                                       VCLUSTER_JOIN_ERROR="slurmd for vc-small-001 did not "
                                       "start (exit 1)")},
                     launches=(launch(1, S1, "booting", vm_id=50, ip="10.9.0.50", job_id=12,
                                      created_s_ago=2),)),
     STANDBY_CONFIG,
     [FailNode(S1, "vcluster: VM 50 could not join: slurmd for vc-small-001 did not start "
               "(exit 1)", 1, 50, 12), SMALL, SMALL]),
]


@pytest.mark.parametrize(("observed", "config", "expected"),
                         [pytest.param(o, c, e, id=d) for d, o, c, e in CASES])
def test_plan_join(observed: Callable[[], Observed], config: Config,
                   expected: list[Action]) -> None:
    assert plan(observed(), config) == expected
