"""What each of Slurm's hooks does: validate, check the heartbeat, record, wake, (wait).

Why it exists apart from :mod:`vcluster.hooks`: that module is the process plumbing slurmctld
runs (config, log file, exit codes); this one is the logic, on a :class:`HookEnv` that tests
build with a fake Slurm and a temporary database. See :mod:`vcluster.hooks` for the rules.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vcluster import db, wake
from vcluster.config import Config
from vcluster.errors import ControllerStale, VclusterError
from vcluster.hook_input import (
    parse_job_id,
    parse_resume_json,
    parse_vcluster_nodes,
    read_resume_file,
)
from vcluster.hook_wire import EXIT_OK
from vcluster.slurm_parse import PER_JOB_REASON_PREFIX, Node, compress_hostlist, expand_hostlist

__all__ = [
    "JOB_FINISHED_PROGRAM",
    "PROLOG_POLL_S",
    "HookEnv",
    "HookSlurm",
    "check_heartbeat",
    "do_epilog",
    "do_job_finished",
    "do_prolog",
    "do_resume",
    "do_resume_fail",
    "do_suspend",
    "finish_prolog",
    "job_finished_wrapper_path",
    "node_wait_state",
    "parse_job_id",
    "parse_resume_json",
    "parse_vcluster_nodes",
    "read_resume_file",
    "record_request",
    "wait_for_nodes",
]

log = logging.getLogger("vcluster.hooks")

PROLOG_POLL_S = 0.25
"""How often the prolog asks Slurm whether the job's nodes are up: the job starts at most
this long after they are (one ``scontrol show node`` per pending node per poll)."""
JOB_FINISHED_PROGRAM = "vcluster-job-finished"


class HookSlurm(Protocol):
    """The part of :class:`vcluster.slurm.Slurm` the hooks use."""

    def node(self, name: str) -> Node | None: ...

    def update_nodes(self, nodes: str | Sequence[str], *, state: str | None = None,
                     reason: str | None = None, nodeaddr: str | None = None,
                     nodehostname: str | None = None) -> None: ...

    def trigger_on_job_end(self, job_id: int, program: str) -> None: ...

    def trigger_argv(self, job_id: int, program: str) -> list[str]: ...


@dataclass
class HookEnv:
    """Everything a hook acts on; tests build one with a fake Slurm and a temp database."""

    config: Config
    sessions: sessionmaker[Session]
    slurm: HookSlurm
    program_dir: str = ""
    """Where the sibling programs (``vcluster-job-finished``) are installed."""
    now: Callable[[], datetime] = db.utcnow
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    wake: Callable[[str], bool] = field(default=wake.send_wake)
    recorded: Callable[[int], None] = field(default=lambda _request_id: None)
    """Told the request's id once it is in the database (the controller answers the hook)."""
    wait_nodes: Callable[[HookEnv, int, Sequence[str]], tuple[float, list[str]]] | None = None
    """How the prolog waits for the job's nodes: :func:`wait_for_nodes` unless the
    controller gives its shared wait (one read of Slurm for every waiting job)."""
    refusal: str = ""
    """Set when the controller did not answer: every request is refused with this message,
    as if its heartbeat were stale."""
    hook_runs: Callable[[list[str]], None] | None = None
    """Hands a Slurm command to the hook program to run (the prolog's ``strigger``), when
    the hook offered to: a command the controller ran itself would stall its threads while
    the child starts (Python holds its lock through vfork), 1,000 times in a burst."""


# --- heartbeat -----------------------------------------------------------------------------


def check_heartbeat(session: Session, config: Config, now: datetime) -> None:
    """Raise ControllerStale unless the controller beat within ``heartbeat_stale_s``."""
    hb = db.heartbeat(session)
    if hb is None:
        raise ControllerStale(
            "the vcluster controller has never run on this database; start it with "
            "`vcluster controller run` (request not recorded)"
        )
    age_s = (now - hb.at).total_seconds()
    limit_s = config.controller.heartbeat_stale_s
    if age_s > limit_s:
        raise ControllerStale(
            f"the vcluster controller is not running: its last heartbeat was {age_s:.0f} s "
            f"ago (pid {hb.pid} on {hb.host}; limit {limit_s:g} s); start it with "
            "`vcluster controller run` (request not recorded)"
        )


def record_request(env: HookEnv, kind: str, nodes: Sequence[str], job_ids: Sequence[int],
                   message: str, payload: Mapping[str, Any] | None = None) -> int:
    """Check the heartbeat, store the request and its event in one transaction, wake."""
    if env.refusal:
        raise ControllerStale(env.refusal)
    now = env.now()
    with db.transaction(env.sessions) as s:
        check_heartbeat(s, env.config, now)
        req = db.HookRequest(kind=kind, nodes=compress_hostlist(nodes), job_ids=list(job_ids),
                             payload=dict(payload or {}), created_at=now)
        s.add(req)
        db.record_event(s, f"hook.{kind}", message, job_id=job_ids[0] if job_ids else None,
                        node_name=nodes[0] if len(nodes) == 1 else None, at=now)
        s.flush()
        request_id = req.id
        db.notify_wake(s, env.config.controller.cluster_name)  # the leader may be elsewhere
    env.recorded(request_id)
    env.wake(env.config.controller.state_dir)
    return request_id


# --- the hooks -------------------------------------------------------------------------------


def do_resume(env: HookEnv, hostlist: str | None, resume_data: Mapping[str, Any]) -> int:
    nodes = parse_vcluster_nodes(hostlist, env.config)
    job_ids = sorted({int(j["job_id"]) for j in resume_data.get("jobs", [])})
    jobs_txt = ("job " + ", ".join(map(str, job_ids))) if job_ids else "no job"
    try:
        record_request(env, "resume", nodes, job_ids,
                       f"Slurm asked to resume {compress_hostlist(nodes)} for {jobs_txt}",
                       payload=resume_data)
    except ControllerStale:
        # Nobody will boot these nodes: fail them now (the jobs are requeued at once, not
        # after ResumeTimeout). The "vcluster:" reason lets the controller, once back,
        # return them to service.
        reason = "vcluster: the vcluster controller is not running; nodes not resumed"
        try:
            env.slurm.update_nodes(nodes, state="DOWN", reason=reason)
            env.slurm.update_nodes(nodes, state="POWER_DOWN_FORCE", reason=reason)
        except VclusterError as exc:
            log.warning("cannot set %s down: %s", compress_hostlist(nodes), exc)
        _record_refusal(env, nodes, job_ids, reason)
        raise
    return EXIT_OK


def _record_refusal(env: HookEnv, nodes: Sequence[str], job_ids: Sequence[int],
                    reason: str) -> None:
    """Leave a trace for the controller's return: Slurm requeued these jobs because of us,
    so it makes them eligible at once instead of after Slurm's two-minute deferral."""
    try:
        with db.transaction(env.sessions) as s:
            targets: list[int | None] = list(job_ids) or [None]
            for job_id in targets:
                db.record_event(s, db.RESUME_REFUSED_EVENT, f"{compress_hostlist(nodes)}: {reason}",
                                job_id=job_id, at=env.now())
    except Exception as exc:  # the database may be what is wrong
        log.warning("cannot record the refused resume of %s: %s", compress_hostlist(nodes), exc)


def do_suspend(env: HookEnv, hostlist: str | None) -> int:
    nodes = parse_vcluster_nodes(hostlist, env.config)
    record_request(env, "suspend", nodes, [], f"Slurm asked to suspend {compress_hostlist(nodes)}")
    return EXIT_OK


def do_resume_fail(env: HookEnv, hostlist: str | None) -> int:
    nodes = parse_vcluster_nodes(hostlist, env.config)
    record_request(env, "resume-fail", nodes, [],
                   f"Slurm gave up resuming {compress_hostlist(nodes)} (ResumeTimeout)")
    return EXIT_OK


def do_job_finished(env: HookEnv, job_text: str | None) -> int:
    job_id = parse_job_id(job_text)
    record_request(env, "job-finished", [], [job_id], f"job {job_id} finished")
    return EXIT_OK


def do_epilog(env: HookEnv, job_text: str | None, nodelist: str | None,
              exit_code: str | None = None) -> int:
    """Power per-job nodes down at once, then record the request. Foreign nodes: ignored."""
    job_id = parse_job_id(job_text)
    nodes = parse_vcluster_nodes(nodelist, env.config, only_ours=False) if nodelist else []
    if not nodes:
        log.debug("job %d ran on no vcluster node; nothing to do", job_id)
        return EXIT_OK
    per_job = [n for n in nodes
               if (nc := env.config.class_of_node(n)) is not None and nc.policy == "per-job"]
    try:
        record_request(env, "epilog", nodes, [job_id], f"job {job_id} ended (exit "
                       f"{exit_code or '?'}) on {compress_hostlist(nodes)}",
                       payload={"exit_code": exit_code or ""})
    finally:
        # Done even if the request was refused: Slurm's side must not wait for a dead
        # controller. If Slurm refuses (a node still powering up), the controller powers it
        # down later.
        for name in list(per_job):
            if why := _not_this_jobs(env, job_id, name):
                log.info("job %d ended: node %s left alone (%s)", job_id, name, why)
                per_job.remove(name)
        if per_job:
            try:
                env.slurm.update_nodes(per_job, state="POWER_DOWN_ASAP")
                log.info("job %d ended: powering down per-job nodes %s", job_id,
                         compress_hostlist(per_job))
            except VclusterError as exc:
                log.warning("job %d ended: cannot power down %s now: %s", job_id,
                            compress_hostlist(per_job), exc)
    return EXIT_OK


_SLURM_HOLDS = frozenset({"ALLOCATED", "MIXED"})


def _not_this_jobs(env: HookEnv, job_id: int, name: str) -> str:
    """Why the ended job's epilog must leave node ``name`` alone ('' if it may power it
    down). A late epilog (slurmctld runs EpilogSlurmctld after the job's nodes were released)
    can find the node powered down by the prolog's POWER_DOWN_ASAP already, or given to the
    next job: a power-down then is at best a repeated request (22.05 leaves the node
    ``IDLE+DRAIN+POWER_DOWN``) and at worst drains the next job's node and clears its
    POWERED_DOWN before its resume (``ALLOCATED+DRAIN+POWER_DOWN``, never powered up)."""
    try:
        node = env.slurm.node(name)
    except VclusterError as exc:  # unknown: power it down, as before
        log.debug("job %d: reading node %s failed: %s", job_id, name, exc)
        return ""
    if node is None or node.powered_down or node.powering_down:
        return "powered down already"
    if node.powering_up:
        return "powering up for another job"
    if node.state in _SLURM_HOLDS and "COMPLETING" not in node.flags:
        return f"{node.state} to another job"
    with env.sessions() as s:  # what the hooks recorded: a later job's resume or prolog
        rows = s.execute(select(db.HookRequest.nodes, db.HookRequest.job_ids).where(
            db.HookRequest.kind.in_(("resume", "prolog")),
            db.HookRequest.created_at >= env.now() - timedelta(hours=1))
            .order_by(db.HookRequest.id.desc()).limit(_RECENT_REQUESTS)).all()
    for nodes, job_ids in rows:
        if name in expand_hostlist(nodes):
            return "" if job_id in (job_ids or []) else f"resumed for job {job_ids}"
    return ""


_RECENT_REQUESTS = 200
"""Resume and prolog requests the epilog reads for a later job on its nodes (newest first)."""


def do_prolog(env: HookEnv, job_text: str | None, nodelist: str | None) -> int:
    """Record, register the strigger backup, then wait (bounded) for the nodes to be up.

    A stale controller does not fail the job (a failing PrologSlurmctld requeues it): nodes
    already up can run it, and nodes being resumed were failed by the resume hook already.
    """
    job_id = parse_job_id(job_text)
    nodes = parse_vcluster_nodes(nodelist, env.config, only_ours=False) if nodelist else []
    if not nodes:
        log.debug("job %d runs on no vcluster node; nothing to do", job_id)
        return EXIT_OK
    try:
        record_request(env, "prolog", nodes, [job_id],
                       f"job {job_id} allocated {compress_hostlist(nodes)}")
    except ControllerStale as exc:
        log.warning("job %d: %s; letting Slurm start the job without waiting", job_id, exc)
        return EXIT_OK
    return finish_prolog(env, job_id, nodes)


def finish_prolog(env: HookEnv, job_id: int, nodes: Sequence[str]) -> int:
    """The prolog once its request is recorded: the strigger backup, the wait, the nodes
    reserved for the job. (A hook whose controller stopped while it waited does this.)"""
    program = job_finished_wrapper_path(env.config)
    if not os.access(program, os.X_OK):
        program = os.path.join(env.program_dir, JOB_FINISHED_PROGRAM)
    if os.path.isabs(program) and os.access(program, os.X_OK):
        try:
            if env.hook_runs is not None:
                env.hook_runs(env.slurm.trigger_argv(job_id, program))
            else:
                env.slurm.trigger_on_job_end(job_id, program)
        except VclusterError as exc:
            log.warning("job %d: cannot register the job-end trigger: %s", job_id, exc)
    else:
        log.warning("job %d: %s not found; no job-end trigger registered", job_id, program)
    waited_s, pending = (env.wait_nodes or wait_for_nodes)(env, job_id, nodes)
    if pending:
        log.warning("job %d: %s not up after %.1f s; leaving it to Slurm's ResumeTimeout",
                    job_id, compress_hostlist(pending), waited_s)
    else:
        log.info("job %d: nodes %s up after %.1f s", job_id, compress_hostlist(nodes), waited_s)
        _record_nodes_up(env, job_id, nodes, waited_s)
    # only nodes that came up: a failed one keeps the reason that says why (oned's
    # SCHED_MESSAGE, a boot failure), which POWER_DOWN_ASAP with our reason would overwrite
    _reserve_per_job_nodes(env, job_id, [n for n in nodes if n not in pending])
    return EXIT_OK


def _record_nodes_up(env: HookEnv, job_id: int, nodes: Sequence[str], waited_s: float) -> None:
    try:
        with db.transaction(env.sessions) as s:
            db.record_event(s, "job.nodes_up", f"nodes {compress_hostlist(nodes)} up; the "
                            f"prolog waited {waited_s:.2f} s", job_id=job_id, at=env.now())
            # a rerun after a lost VM may end before the controller sees its node up
            db.record_recovery(s, job_id, f"nodes {compress_hostlist(nodes)}", at=env.now())
    except Exception as exc:  # the event is for people; the job must start regardless
        log.warning("job %d: cannot record that its nodes are up: %s", job_id, exc)


def _reserve_per_job_nodes(env: HookEnv, job_id: int, nodes: Sequence[str]) -> None:
    """Give a per-job job's nodes to it alone: POWER_DOWN_ASAP drains them now (no later job
    can be scheduled onto this job's VMs in the moment between its end and the epilog's
    power-down) and powers them down as soon as the job leaves them."""
    per_job = [n for n in nodes
               if (nc := env.config.class_of_node(n)) is not None and nc.policy == "per-job"]
    if not per_job:
        return
    try:
        env.slurm.update_nodes(per_job, state="POWER_DOWN_ASAP",
                               reason=f"{PER_JOB_REASON_PREFIX}{job_id}")
    except VclusterError as exc:  # the epilog powers them down at the job's end anyway
        log.warning("job %d: cannot reserve per-job nodes %s: %s", job_id,
                    compress_hostlist(per_job), exc)


def wait_for_nodes(env: HookEnv, job_id: int, nodes: Sequence[str]) -> tuple[float, list[str]]:
    """Poll until no node is powering up, one failed, or ``prolog_wait_s`` passed."""
    start, started_at = env.monotonic(), env.now()
    limit_s = env.config.controller.prolog_wait_s
    pending = list(nodes)
    while True:
        still: list[str] = []
        for name in pending:
            try:
                node = env.slurm.node(name)
            except VclusterError as exc:
                log.debug("job %d: reading node %s failed: %s", job_id, name, exc)
                still.append(name)
                continue
            verdict = node_wait_state(node)
            if verdict == "pending":
                still.append(name)
            elif verdict == "down":
                log.warning("job %d: node %s is DOWN (%s)", job_id, name,
                            node.reason if node else "")
                return env.monotonic() - start, [name]
        pending = still
        waited_s = env.monotonic() - start
        if not pending or waited_s >= limit_s or _launch_failed(env, job_id, started_at):
            return waited_s, pending
        env.sleep(min(PROLOG_POLL_S, max(0.0, limit_s - waited_s)))


def node_wait_state(node: Node | None) -> str:
    """What the prolog makes of one node: ``pending`` (unknown, powering up, still powered
    down), ``down`` (it failed: stop waiting) or ``up``."""
    if node is None or node.powering_up or node.powered_down:
        return "pending"
    return "down" if node.is_down else "up"


def _launch_failed(env: HookEnv, job_id: int, since: datetime) -> bool:
    """True if the controller gave up a VM for this run of the job (it told Slurm why)."""
    with env.sessions() as s:
        failed = s.scalars(select(db.Launch.id).where(
            db.Launch.job_id == job_id, db.Launch.state == "failed",
            db.Launch.ended_at >= since)).first()
    return failed is not None


def job_finished_wrapper_path(config: Config) -> str:
    return os.path.join(config.controller.state_dir, "bin", JOB_FINISHED_PROGRAM)
