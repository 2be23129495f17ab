"""Slurm's hooks: exact refusals, the stale-heartbeat guard, resume-file copy, prolog wait."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from vcluster import db, hooks
from vcluster.config import Config, load_config
from vcluster.errors import ControllerStale, SlurmCommandError, UserInputError
from vcluster.slurm_parse import Node
from vcluster.wake import WakeListener

NOW = datetime(2026, 11, 21, 7, 0, tzinfo=UTC)

CONFIG = """
[database]
url = "sqlite:///{tmp}/state.db"

[controller]
state_dir = "{tmp}/state"
log_dir = "{tmp}/log"
heartbeat_stale_s = 60
prolog_wait_s = 10

[[node_class]]
name = "small"
count = 4
cpus = 2
memory_mb = 2048
template = "worker"

[[node_class]]
name = "big"
count = 2
cpus = 8
memory_mb = 8192
template = "worker"
policy = "pool"
"""


def node(name: str, state: str = "ALLOCATED", *flags: str, reason: str = "") -> Node:
    return Node(name=name, state=state, flags=frozenset({"CLOUD", *flags}), address=name,
                hostname=name, cpus=2, real_memory_mb=2048, features=("small",),
                partitions=("vcluster",), reason=reason)


@dataclass
class FakeSlurm:
    """Implements hooks.HookSlurm; node states come from a script, one entry per poll."""

    script: dict[str, list[Node | None]] = field(default_factory=dict)
    updates: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)
    triggers: list[tuple[int, str]] = field(default_factory=list)

    def node(self, name: str) -> Node | None:
        states = self.script[name]
        return states.pop(0) if len(states) > 1 else states[0]

    refuse_updates: bool = False

    def update_nodes(self, nodes: str | Sequence[str], *, state: str | None = None,
                     reason: str | None = None, nodeaddr: str | None = None,
                     nodehostname: str | None = None) -> None:
        names = nodes if isinstance(nodes, str) else ",".join(nodes)
        if self.refuse_updates:
            raise SlurmCommandError(["scontrol", "update", f"nodename={names}"], 1, "",
                                    "slurm_update error: Node is powering up")
        self.updates.append((names, {"state": state, "reason": reason}))

    def trigger_on_job_end(self, job_id: int, program: str) -> None:
        self.triggers.append((job_id, program))


class Clock:
    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


@pytest.fixture()
def config(tmp_path: Path) -> Config:
    path = tmp_path / "vcluster.toml"
    path.write_text(CONFIG.format(tmp=tmp_path))
    return load_config(path, environ={})


@pytest.fixture()
def env(config: Config, tmp_path: Path) -> Iterator[hooks.HookEnv]:
    engine = db.make_engine(config.database)
    sessions = db.session_factory(engine)
    with db.transaction(sessions) as s:
        db.beat(s, at=NOW - timedelta(seconds=5))
    programs = tmp_path / "bin"
    programs.mkdir()
    (programs / "vcluster-job-finished").write_text("#!/bin/sh\n")
    (programs / "vcluster-job-finished").chmod(0o755)
    clock = Clock()
    try:
        yield hooks.HookEnv(config=config, sessions=sessions, slurm=FakeSlurm(),
                            program_dir=str(programs), now=lambda: NOW, sleep=clock.sleep,
                            monotonic=clock.monotonic)
    finally:
        engine.dispose()


def requests(env: hooks.HookEnv) -> list[tuple[str, str, list[int]]]:
    with env.sessions() as s:
        return [(r.kind, r.nodes, r.job_ids) for r in s.scalars(select(db.HookRequest))]


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "message"), [
    ("", "no node list given; Slurm passes a hostlist such as vc-small-[001-002]"),
    ("vc-small-[001", "'vc-small-[001' is not a Slurm hostlist"),
    ("vc-small-[001-002],gpu[1-2],vc-small-009",
     "not vcluster nodes: gpu[1-2],vc-small-009 (classes: small vc-small-[001-004], "
     "big vc-big-[001-002]); point only vcluster's nodes at vcluster's programs in slurm.conf"),
])
def test_hostlist_validation_messages(config: Config, text: str, message: str) -> None:
    with pytest.raises(UserInputError) as info:
        hooks.parse_vcluster_nodes(text, config)
    assert str(info.value) == message


def test_hostlist_of_our_nodes_expands(config: Config) -> None:
    assert hooks.parse_vcluster_nodes("vc-small-[003-004],vc-big-001", config) == [
        "vc-small-003", "vc-small-004", "vc-big-001"]


@pytest.mark.parametrize("text", ["", "12a", "-3", "0", "1;rm -rf /", None])
def test_job_id_must_be_a_positive_number(text: str | None) -> None:
    with pytest.raises(UserInputError) as info:
        hooks.parse_job_id(text)
    assert str(info.value) == f"job id {(text or '').strip()!r} is not a positive number"


# --- heartbeat -----------------------------------------------------------------------------


def test_stale_heartbeat_refuses_and_records_nothing(env: hooks.HookEnv) -> None:
    with db.transaction(env.sessions) as s:
        db.beat(s, at=NOW - timedelta(seconds=125))
    with pytest.raises(ControllerStale) as info:
        hooks.do_suspend(env, "vc-small-001")
    assert str(info.value) == (
        "the vcluster controller is not running: its last heartbeat was 125 s ago "
        f"(pid {os.getpid()} on {socket.gethostname()}; limit 60 s); start it with "
        "`vcluster controller run` (request not recorded)"
    )
    assert requests(env) == []


def test_resume_with_a_stale_controller_fails_the_nodes_at_once(env: hooks.HookEnv) -> None:
    with db.transaction(env.sessions) as s:
        db.beat(s, at=NOW - timedelta(seconds=125))
    with pytest.raises(ControllerStale):
        hooks.do_resume(env, "vc-small-[001-002]", {"jobs": [{"job_id": 3,
                                                              "nodes": "vc-small-[001-002]"}]})
    reason = "vcluster: the vcluster controller is not running; nodes not resumed"
    assert env.slurm.updates == [  # type: ignore[attr-defined]
        ("vc-small-001,vc-small-002", {"state": "DOWN", "reason": reason}),
        ("vc-small-001,vc-small-002", {"state": "POWER_DOWN_FORCE", "reason": reason})]
    assert requests(env) == []
    with env.sessions() as session:  # the returning controller makes job 3 eligible at once
        refused = [(e.job_id, e.message) for e in session.query(db.Event).filter_by(
            kind=db.RESUME_REFUSED_EVENT)]
    assert refused == [(3, f"vc-small-[001-002]: {reason}")]


def test_missing_heartbeat_says_the_controller_never_ran(env: hooks.HookEnv) -> None:
    with db.transaction(env.sessions) as s:
        s.delete(db.heartbeat(s))
    with pytest.raises(ControllerStale) as info:
        hooks.do_resume_fail(env, "vc-small-001")
    assert str(info.value) == (
        "the vcluster controller has never run on this database; start it with "
        "`vcluster controller run` (request not recorded)"
    )


# --- the hooks --------------------------------------------------------------------------


def test_resume_copies_the_resume_file_at_once_records_and_wakes(
        env: hooks.HookEnv, tmp_path: Path) -> None:
    resume_file = tmp_path / "resume.json"
    payload = {"jobs": [{"job_id": 12, "nodes": "vc-small-[001-002]"}],
               "all_nodes": "vc-small-[001-002]"}
    resume_file.write_text(json.dumps(payload))
    listener = WakeListener(env.config.controller.state_dir)
    try:
        action = hooks.hook_action("resume", ["vcluster-resume", "vc-small-[001-002]"],
                                   {"SLURM_RESUME_FILE": str(resume_file)})
        resume_file.unlink()  # slurmctld closes it once we return; the copy was taken
        assert action(env) == hooks.EXIT_OK
        assert listener.wait(1.0) is True
    finally:
        listener.close()
    assert requests(env) == [("resume", "vc-small-[001-002]", [12])]
    with env.sessions() as s:
        req = s.scalars(select(db.HookRequest)).one()
        assert req.payload == payload
        event = s.scalars(select(db.Event)).one()
        assert (event.kind, event.message, event.job_id) == (
            "hook.resume", "Slurm asked to resume vc-small-[001-002] for job 12", 12)


def test_resume_refuses_a_broken_resume_file(env: hooks.HookEnv, tmp_path: Path) -> None:
    bad = tmp_path / "resume.json"
    bad.write_text('{"jobs": [{"job_id": "x"}]}')
    action = hooks.hook_action("resume", ["r", "vc-small-001"], {"SLURM_RESUME_FILE": str(bad)})
    with pytest.raises(UserInputError) as info:
        action(env)
    assert str(info.value) == (
        f"{bad} does not hold a jobs list of {{job_id, nodes or nodes_resume}}")


@pytest.mark.parametrize("version", ["22.05", "24.11"])
def test_resume_reads_the_real_resume_file_of_each_slurm(
        env: hooks.HookEnv, tmp_path: Path, version: str) -> None:
    capture = Path(__file__).resolve().parents[1] / "data" / "slurm" / version / "resume-file.json"
    raw = json.loads(capture.read_text())
    names = {"vca-c1": "vc-small-001"}  # the capture's node, as this config names it
    text = capture.read_text().replace("vca-c1", names["vca-c1"])
    resume_file = tmp_path / "resume.json"
    resume_file.write_text(text)
    action = hooks.hook_action("resume", ["vcluster-resume", "vc-small-001"],
                               {"SLURM_RESUME_FILE": str(resume_file)})
    assert action(env) == hooks.EXIT_OK
    assert requests(env) == [("resume", "vc-small-001", [12])]
    with env.sessions() as s:
        payload = s.scalars(select(db.HookRequest)).one().payload
    # what the controller reads (plan: jobs[].nodes), whichever names Slurm used
    assert [(j["job_id"], j["nodes"]) for j in payload["jobs"]] == [(12, "vc-small-001")]
    assert payload["all_nodes"] == "vc-small-001"
    assert ("nodes_resume" in payload["jobs"][0]) == ("nodes_resume" in raw["jobs"][0])


def completing(*names: str) -> dict[str, list[Node | None]]:
    """The nodes of a job whose epilog runs on time: still COMPLETING it."""
    return {n: [node(n, "IDLE", "COMPLETING")] for n in names}


def test_epilog_powers_down_per_job_nodes_only(env: hooks.HookEnv) -> None:
    env.slurm.script = completing("vc-small-001", "vc-small-002")  # type: ignore[attr-defined]
    code = hooks.do_epilog(env, "12", "vc-small-[001-002],vc-big-001,login1", "0")
    assert code == hooks.EXIT_OK
    assert env.slurm.updates == [  # type: ignore[attr-defined]
        ("vc-small-001,vc-small-002", {"state": "POWER_DOWN_ASAP", "reason": None})]
    assert requests(env) == [("epilog", "vc-big-001,vc-small-[001-002]", [12])]


def test_epilog_powers_down_even_when_the_controller_is_stale(env: hooks.HookEnv) -> None:
    with db.transaction(env.sessions) as s:
        db.beat(s, at=NOW - timedelta(hours=1))
    env.slurm.script = completing("vc-small-001")  # type: ignore[attr-defined]
    with pytest.raises(ControllerStale):
        hooks.do_epilog(env, "12", "vc-small-001", "0")
    assert env.slurm.updates == [  # type: ignore[attr-defined]
        ("vc-small-001", {"state": "POWER_DOWN_ASAP", "reason": None})]


def test_epilog_still_records_when_slurm_refuses_the_power_down(env: hooks.HookEnv) -> None:
    env.slurm.refuse_updates = True  # type: ignore[attr-defined]
    env.slurm.script = completing("vc-small-001")  # type: ignore[attr-defined]
    assert hooks.do_epilog(env, "12", "vc-small-001", "0") == hooks.EXIT_OK
    assert requests(env) == [("epilog", "vc-small-001", [12])]


# what a late epilog (job 12's, run after Slurm released its node) finds -> powers it down?
LATE_EPILOG: list[tuple[str, Node | None, bool]] = [
    ("on time: still completing job 12", node("vc-small-001", "IDLE", "COMPLETING"), True),
    ("on time, 24.11: ALLOCATED+COMPLETING",
     node("vc-small-001", "ALLOCATED", "COMPLETING"), True),
    ("job 12's VM still up, idle (the prolog's drain refused)", node("vc-small-001", "IDLE"),
     True),
    ("powered down already (22.05 would repeat the request)",
     node("vc-small-001", "IDLE", "POWERED_DOWN", "DRAIN"), False),
    ("hidden: powered down, 22.05 without PrivateData=cloud", None, False),
    ("powering down", node("vc-small-001", "IDLE", "POWERING_DOWN", "DRAIN"), False),
    ("given to the next job, powering up", node("vc-small-001", "ALLOCATED", "POWERED_DOWN",
                                                 "POWERING_UP"), False),
    ("given to the next job, 24.11 spelling", node("vc-small-001", "ALLOCATED", "POWERING_UP",
                                                    "POWER_UP_NODE"), False),
    ("the next job runs on it", node("vc-small-001", "ALLOCATED"), False),
    ("the next job runs on it (MIXED)", node("vc-small-001", "MIXED", "DRAIN", "POWER_DOWN"),
     False),
]


@pytest.mark.parametrize(("seen", "powers_down"), [(n, p) for _, n, p in LATE_EPILOG],
                         ids=[i for i, _, _ in LATE_EPILOG])
def test_a_late_epilog_powers_down_only_a_node_its_job_still_holds(
        env: hooks.HookEnv, seen: Node | None, powers_down: bool) -> None:
    env.slurm.script = {"vc-small-001": [seen]}  # type: ignore[attr-defined]
    assert hooks.do_epilog(env, "12", "vc-small-001", "0") == hooks.EXIT_OK
    assert env.slurm.updates == ([  # type: ignore[attr-defined]
        ("vc-small-001", {"state": "POWER_DOWN_ASAP", "reason": None})] if powers_down else [])
    assert requests(env)[-1] == ("epilog", "vc-small-001", [12])


def test_a_late_epilog_leaves_a_node_the_hooks_saw_resumed_for_a_later_job(
        env: hooks.HookEnv) -> None:
    env.slurm.script = {"vc-small-001": [node("vc-small-001", "IDLE")],  # type: ignore
                        "vc-small-002": [node("vc-small-002", "IDLE")]}
    hooks.do_prolog(env, "12", "vc-small-[001-002]")
    hooks.do_resume(env, "vc-small-001", {"jobs": [{"job_id": 13, "nodes": "vc-small-001"}]})
    env.slurm.updates.clear()  # type: ignore[attr-defined]
    hooks.do_epilog(env, "12", "vc-small-[001-002]", "0")
    assert env.slurm.updates == [  # type: ignore[attr-defined]
        ("vc-small-002", {"state": "POWER_DOWN_ASAP", "reason": None})]


def test_prolog_and_epilog_ignore_jobs_on_other_nodes(env: hooks.HookEnv) -> None:
    with db.transaction(env.sessions) as s:
        db.beat(s, at=NOW - timedelta(hours=1))  # even a dead controller is no reason to fail
    assert hooks.do_prolog(env, "7", "login[1-2]") == hooks.EXIT_OK
    assert hooks.do_epilog(env, "7", "login[1-2]", "0") == hooks.EXIT_OK
    assert requests(env) == []


def test_prolog_waits_until_nodes_are_up_and_registers_the_trigger(env: hooks.HookEnv) -> None:
    slurm: FakeSlurm = env.slurm  # type: ignore[assignment]
    slurm.script = {
        "vc-small-001": [node("vc-small-001", "ALLOCATED", "POWERING_UP")] * 3
        + [node("vc-small-001")],
        "vc-small-002": [node("vc-small-002", "ALLOCATED", "POWERING_UP"),
                         node("vc-small-002")],
    }
    assert hooks.do_prolog(env, "12", "vc-small-[001-002]") == hooks.EXIT_OK
    assert slurm.triggers == [(12, f"{env.program_dir}/vcluster-job-finished")]
    assert env.sleep.__self__.sleeps == [0.25, 0.25, 0.25]  # type: ignore[attr-defined]
    assert requests(env) == [("prolog", "vc-small-[001-002]", [12])]
    with env.sessions() as session:
        ups = [(e.job_id, e.message) for e in session.query(db.Event).filter_by(
            kind="job.nodes_up")]
    assert ups == [(12, "nodes vc-small-[001-002] up; the prolog waited 0.75 s")]
    # per-job nodes are the job's alone: drained now, powered down when it leaves them
    assert slurm.updates == [("vc-small-001,vc-small-002", {
        "state": "POWER_DOWN_ASAP", "reason": "vcluster: per-job VM of job 12"})]


def test_prolog_of_a_rerun_after_a_lost_vm_records_the_recovery(env: hooks.HookEnv) -> None:
    # the rerun may end before the controller's next pass sees its node up: the prolog's
    # wait is then the only sign that the job has a working node again
    with db.transaction(env.sessions) as s:
        db.record_event(s, "vm.lost", "VM 40 seen STOPPED (not asked by vcluster)",
                        job_id=12, vm_id=40, at=NOW - timedelta(seconds=8))
    slurm: FakeSlurm = env.slurm  # type: ignore[assignment]
    slurm.script = {"vc-small-002": [node("vc-small-002")]}
    assert hooks.do_prolog(env, "12", "vc-small-002") == hooks.EXIT_OK
    assert hooks.do_prolog(env, "12", "vc-small-002") == hooks.EXIT_OK  # once per loss
    with env.sessions() as session:
        recovered = [(e.job_id, e.message) for e in session.query(db.Event).filter_by(
            kind="vm.recovered")]
    assert recovered == [(12, "job 12 has a working node again on nodes vc-small-002, 8.0 s "
                              "after VM 40 was lost (recovery 8.0 s)")]


def test_prolog_never_fails_a_job_for_a_stale_controller(env: hooks.HookEnv,
                                                         tmp_path: Path) -> None:
    with db.transaction(env.sessions) as s:
        db.beat(s, at=NOW - timedelta(hours=1))
    assert hooks.do_prolog(env, "12", "vc-small-001") == hooks.EXIT_OK
    assert env.slurm.triggers == []  # type: ignore[attr-defined]
    assert requests(env) == []


def test_prolog_gives_up_waiting_after_prolog_wait_s(env: hooks.HookEnv) -> None:
    slurm: FakeSlurm = env.slurm  # type: ignore[assignment]
    slurm.script = {"vc-small-001": [node("vc-small-001", "ALLOCATED", "POWERING_UP")]}
    waited_s, pending = hooks.wait_for_nodes(env, 12, ["vc-small-001"])
    assert (waited_s, pending) == (10.0, ["vc-small-001"])


def test_a_failed_prolog_wait_keeps_the_reason_that_says_why(env: hooks.HookEnv) -> None:
    slurm: FakeSlurm = env.slurm  # type: ignore[assignment]
    oned_said = ("vcluster: VM 7 was not a working node within 60 s (ResumeTimeout; VM "
                 "PENDING; Cannot dispatch VM: No host meets SCHED_REQUIREMENTS)")
    slurm.script = {
        "vc-small-001": [node("vc-small-001", "ALLOCATED")],
        "vc-small-002": [node("vc-small-002", "ALLOCATED", "POWERING_UP")] * 2
        + [node("vc-small-002", "DOWN", reason=oned_said)],
    }
    assert hooks.do_prolog(env, "12", "vc-small-[001-002]") == hooks.EXIT_OK
    # only the node that came up is reserved: the DOWN one keeps oned's SCHED_MESSAGE
    assert slurm.updates == [("vc-small-001", {
        "state": "POWER_DOWN_ASAP", "reason": "vcluster: per-job VM of job 12"})]


def test_prolog_stops_waiting_when_the_controller_gave_up_the_vm(env: hooks.HookEnv) -> None:
    slurm: FakeSlurm = env.slurm  # type: ignore[assignment]
    slurm.script = {"vc-small-001": [node("vc-small-001", "ALLOCATED", "POWERING_UP")]}
    with db.transaction(env.sessions) as s:
        s.add(db.Launch(node_name="vc-small-001", node_class="small", job_id=12,
                        state="failed", reason="before a requeue", ended_at=NOW - timedelta(
                            minutes=3)))
    assert hooks.wait_for_nodes(env, 12, ["vc-small-001"]) == (10.0, ["vc-small-001"])
    with db.transaction(env.sessions) as s:
        s.add(db.Launch(node_name="vc-small-002", node_class="small", job_id=12,
                        state="failed", reason="boot failure", ended_at=NOW))
    assert hooks.wait_for_nodes(env, 12, ["vc-small-001"]) == (0.0, ["vc-small-001"])


# --- the process wrapper -------------------------------------------------------------------


def test_run_hook_maps_errors_to_exit_codes_and_logs(
        env: hooks.HookEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    environ = {"VCLUSTER_CONFIG": str(tmp_path / "vcluster.toml")}
    action = hooks.hook_action("suspend", ["vcluster-suspend", "gpu1"], environ)
    code = hooks.run_hook("vcluster-suspend", action, environ=environ,
                          env_factory=lambda cfg, argv0: env)
    assert code == hooks.EXIT_BAD_INPUT
    message = ("not vcluster nodes: gpu1 (classes: small vc-small-[001-004], "
               "big vc-big-[001-002]); point only vcluster's nodes at vcluster's programs "
               "in slurm.conf")
    assert capsys.readouterr().err == f"vcluster-suspend: error: {message}\n"
    log_text = (tmp_path / "log" / "hooks.log").read_text()
    assert f"ERROR vcluster-suspend: {message} (exit 2)" in log_text


def test_run_hook_without_config_exits_4(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    environ = {"VCLUSTER_CONFIG": str(tmp_path / "missing.toml")}
    code = hooks.run_hook("vcluster-suspend", lambda env: 0, environ=environ)
    assert code == hooks.EXIT_CONFIG
    assert capsys.readouterr().err == (
        f"vcluster-suspend: error: {tmp_path}/missing.toml: file not found; create it "
        "(see deploy/vcluster.toml.example) or set VCLUSTER_CONFIG\n")


def test_config_is_found_beside_slurm_conf(tmp_path: Path) -> None:
    (tmp_path / "vcluster.toml").write_text("")
    environ = {"SLURM_CONF": str(tmp_path / "slurm.conf")}
    assert hooks.hook_config_path(environ) == str(tmp_path / "vcluster.toml")
    assert hooks.hook_config_path({"VCLUSTER_CONFIG": "/x.toml", **environ}) == "/x.toml"


def test_prolog_prefers_the_wrapper_the_controller_wrote(env: hooks.HookEnv,
                                                         tmp_path: Path) -> None:
    wrapper = hooks.write_job_finished_wrapper(env.config, "/opt/vc/bin")
    assert wrapper == f"{tmp_path}/state/bin/vcluster-job-finished"
    assert Path(wrapper).read_text() == (
        "#!/bin/sh\n# Written by `vcluster controller run`: strigger runs this with no "
        f"environment.\nexport VCLUSTER_CONFIG={tmp_path}/vcluster.toml\n"
        "export SLURM_CONF=/etc/slurm/slurm.conf\n"
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        'exec /opt/vc/bin/vcluster-job-finished "$@"\n')
    slurm: FakeSlurm = env.slurm  # type: ignore[assignment]
    slurm.script = {"vc-small-001": [node("vc-small-001")]}
    assert hooks.do_prolog(env, "12", "vc-small-001") == hooks.EXIT_OK
    assert slurm.triggers == [(12, wrapper)]
