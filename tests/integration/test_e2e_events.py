"""OpenNebula's state-change events end to end: the controller reacts within a second.

The real slurmctld, the testbed cloud's netns VMs and its event publisher (the same keys and
payloads as oned's hook manager), the controller subscribed through ``opennebula.events``.
The controller's periodic pass is set to 30 s for these tests, so a reaction within a second
is the event's doing, not polling's. The latency is printed (``pytest -s``) and appended to
``$VCLUSTER_RECOVERY_LOG`` when that is set.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import zmq
from sqlalchemy import select

from tests.integration.site_fixtures import E2E_NAME, Site, job_id_of, wait_clean, wait_for
from vcluster import db
from vcluster.controller.loop import BUSY_INTERVAL_S
from vcluster.testbed import site

pytestmark = [pytest.mark.integration, pytest.mark.one_slurm]

JOB_TIMEOUT_S = 240
SLOW_PASS_S = 30
REACTION_S = 10.0
"""Far below SLOW_PASS_S: the event, not a pass, woke the controller (it takes well under a
second on an idle machine: printed, and recorded with VCLUSTER_RECOVERY_LOG)."""


@pytest.fixture()
def s(e2e_site: Site) -> Iterator[Site]:
    """The site with its controller's pass every SLOW_PASS_S seconds (restored after)."""
    wait_clean(e2e_site)
    path = e2e_site.spec.config_path
    original = path.read_text()
    slow = re.sub(r"^interval_s = .*$", f"interval_s = {SLOW_PASS_S}", original, flags=re.M)
    assert slow != original and e2e_site.config.opennebula.events
    site.stop_controller(e2e_site.spec)
    path.write_text(slow)
    try:
        site.start_controller(e2e_site.spec)
        yield e2e_site
        wait_clean(e2e_site, 120)
    finally:
        site.stop_controller(e2e_site.spec)
        path.write_text(original)
        site.start_controller(e2e_site.spec)


def report(what: str, seconds: float) -> None:
    line = f"{what}: {seconds:.3f} s"
    print(line)
    path = os.environ.get("VCLUSTER_RECOVERY_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"{line}\n")


def lost_event_at(s: Site, vm_id: int) -> datetime | None:
    """When the controller recorded acting on the VM's loss (its ``vm.lost`` event)."""
    engine = db.make_engine(s.config.database)
    try:
        with db.transaction(db.session_factory(engine)) as session:
            return session.scalar(select(db.Event.at).where(
                db.Event.kind == db.VM_LOST_EVENT, db.Event.vm_id == vm_id))
    finally:
        engine.dispose()


def launch_state(s: Site, vm_id: int) -> str:
    engine = db.make_engine(s.config.database)
    try:
        with db.transaction(db.session_factory(engine)) as session:
            return session.scalar(select(db.Launch.state).where(db.Launch.vm_id == vm_id)) or ""
    finally:
        engine.dispose()


def slow_controllers_log(s: Site) -> str:
    """The lines of controller.log the running controller (the one with the slow pass)
    wrote."""
    pid = s.spec.pid_file("controller").read_text().strip()
    text = s.spec.log_file("controller").read_text(errors="replace")
    return "".join(line for line in text.splitlines(keepends=True)
                   if f" controller[{pid}] " in line)


@pytest.mark.parametrize("action", ["poweroff-hard", "suspend", "terminate-hard"])
def test_a_vm_acted_on_behind_vclusters_back_is_handled_within_a_second_of_its_event(
        s: Site, action: str) -> None:
    wait_for("the controller subscribed", lambda: "receiving events from OpenNebula's event "
             "publisher" in slow_controllers_log(s), 10, 0.2)
    assert f"pass every {SLOW_PASS_S} s and on OpenNebula's events from " \
        f"{s.config.opennebula.events}" in slow_controllers_log(s)
    out = s.work / f"events-{action}.out"
    marker = s.work / f"events-{action}.marker"
    marker.unlink(missing_ok=True)
    script = f"if [ -e {marker} ]; then hostname; else touch {marker}; sleep 300; fi"
    job_id = job_id_of(s.fsub("-N1", f"--output={out}", "--wrap", script))
    wait_for("job running", marker.exists, JOB_TIMEOUT_S, 0.2)
    job = s.job(job_id)
    assert job is not None
    (node_name,) = job.nodes
    (vm_id,) = [vm.vm_id for vm in s.live_vms()
                if vm.user_template.get("VCLUSTER_NODE") == node_name]
    # the controller knows the VM as up (a running job's VM, not one still booting)
    wait_for("the VM's launch up", lambda: launch_state(s, vm_id) == "up", 30, 0.2)
    # the pass that saw it come up was a busy one: one more follows BUSY_INTERVAL_S later;
    # after that the next is SLOW_PASS_S away, and only an event can wake the controller
    time.sleep(BUSY_INTERVAL_S + 1.5)

    # our own subscriber times the event's publication, as any oned client would see it
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, f"EVENT VM {vm_id}/".encode())
    monitor = sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    sub.connect(s.config.opennebula.events)
    try:
        assert monitor.poll(5000), "cannot connect to the cloud's event publisher"
        time.sleep(0.3)  # the subscription reaches the publisher after the handshake
        acted_at = datetime.now(UTC)
        s.one.action(action, vm_id)
        assert sub.poll(2000), f"no event published for VM {vm_id}"
        key = sub.recv_multipart()[0].decode()
        published_at = datetime.now(UTC)
    finally:
        sub.disable_monitor()
        monitor.close(linger=0)
        sub.close(linger=0)
        ctx.term()
    first_state = {"poweroff-hard": "SHUTDOWN_POWEROFF", "suspend": "SAVE_SUSPEND",
                   "terminate-hard": "SHUTDOWN"}[action]
    assert key == f"EVENT VM {vm_id}/ACTIVE/{first_state} "

    handled = wait_for("the controller's reaction (vm.lost event)",
                       lambda: lost_event_at(s, vm_id), 10 + SLOW_PASS_S, 0.05)
    assert isinstance(handled, datetime)
    reaction_s = (handled - published_at).total_seconds()
    from_action_s = (handled - acted_at).total_seconds()
    report(f"{action}: event published -> controller acted (vm.lost recorded)", reaction_s)
    report(f"{action}: API call -> controller acted", from_action_s)
    node = next(n for n in s.slurm.nodes() if n.name == node_name)
    report(f"{action}: node {node_name} then {node.state}+{'+'.join(sorted(node.flags))}, "
           f"reason {node.reason!r} (seconds after the call)",
           (datetime.now(UTC) - acted_at).total_seconds())
    assert from_action_s < REACTION_S, (
        f"the controller acted {from_action_s:.2f} s after the action (passes every "
        f"{SLOW_PASS_S} s: the event did not wake it)")
    assert f"VM {vm_id} seen" in slow_controllers_log(s)

    states: list[str] = []

    def completed() -> bool:
        job = s.job(job_id)
        if job is not None and (not states or states[-1] != job.state):
            states.append(job.state)
        return job is not None and job.state == "COMPLETED"

    wait_for("job completed on a fresh VM", completed, JOB_TIMEOUT_S, 0.5)
    assert "FAILED" not in states, f"the job went through {states}"
    assert out.read_text().strip().splitlines()[-1].startswith(f"{E2E_NAME}-small-")
