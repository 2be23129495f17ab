"""Slurm's hook programs hand their requests to the controller over hooks.sock: the same
answers as before (exit codes, one-line messages), recorded before the answer, the prolog
answered when the job's nodes are up, and a hook that imports nothing heavy."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from vcluster import db, hook_client
from vcluster.config import Config, load_config
from vcluster.controller.hook_server import HookServer, NodeWaits
from vcluster.hook_steps import HookEnv, do_resume
from vcluster.paths import hook_socket_path
from vcluster.slurm_parse import Node

CONFIG = """
[database]
url = "sqlite:///{tmp}/state.db"

[controller]
state_dir = "{tmp}/state"
log_dir = "{tmp}/log"
heartbeat_stale_s = 60
prolog_wait_s = 5

[[node_class]]
name = "small"
count = 4
cpus = 2
memory_mb = 2048
template = "worker"
"""


def node(name: str, state: str = "ALLOCATED", *flags: str, reason: str = "") -> Node:
    return Node(name=name, state=state, flags=frozenset({"CLOUD", *flags}), address=name,
                hostname=name, cpus=2, real_memory_mb=2048, features=("small",),
                partitions=("vcluster",), reason=reason)


@dataclass
class FakeSlurm:
    """What the server's hooks use of Slurm; node states come one list entry per read."""

    script: dict[str, list[Node]] = field(default_factory=dict)
    reads: list[list[str]] = field(default_factory=list)
    updates: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    triggers: list[tuple[int, str]] = field(default_factory=list)

    def node(self, name: str) -> Node | None:
        raise AssertionError("the server reads nodes with show_nodes, all at once")

    def show_nodes(self, names: Sequence[str]) -> list[Node]:
        self.reads.append(list(names))
        found = []
        for name in names:
            states = self.script.get(name, [])
            if states:
                found.append(states.pop(0) if len(states) > 1 else states[0])
        return found

    def update_nodes(self, nodes: str | Sequence[str], *, state: str | None = None,
                     reason: str | None = None, nodeaddr: str | None = None,
                     nodehostname: str | None = None) -> None:
        names = nodes if isinstance(nodes, str) else ",".join(nodes)
        self.updates.append((names, state, reason))

    def trigger_on_job_end(self, job_id: int, program: str) -> None:
        self.triggers.append((job_id, program))

    strigger: str = "/nonexistent/strigger"

    def trigger_argv(self, job_id: int, program: str) -> list[str]:
        return [self.strigger, "--set", f"--jobid={job_id}", "--fini", f"--program={program}"]


@dataclass
class Site:
    config: Config
    server: HookServer
    slurm: FakeSlurm
    environ: dict[str, str]
    tmp: Path

    def requests(self) -> list[tuple[str, str, list[int]]]:
        with self.server.sessions() as s:
            return [(r.kind, r.nodes, r.job_ids) for r in s.scalars(select(db.HookRequest))]

    def beat(self, age_s: float) -> None:
        with db.transaction(self.server.sessions) as s:
            db.beat(s, at=db.utcnow() - timedelta(seconds=age_s))


@pytest.fixture()
def site(tmp_path: Path) -> Iterator[Site]:
    path = tmp_path / "vcluster.toml"
    path.write_text(CONFIG.format(tmp=tmp_path))
    config = load_config(path, environ={})
    engine = db.make_engine(config.database)
    sessions = db.session_factory(engine)
    with db.transaction(sessions) as s:
        db.beat(s)
    programs = tmp_path / "bin"
    programs.mkdir()
    strigger = programs / "strigger"  # what a hook runs for the controller: records its run
    strigger.write_text(f'#!/bin/sh\necho "$SLURM_CONF $*" >> {tmp_path}/strigger.log\n')
    strigger.chmod(0o755)
    slurm = FakeSlurm(strigger=str(strigger))
    (programs / "vcluster-job-finished").write_text("#!/bin/sh\n")
    (programs / "vcluster-job-finished").chmod(0o755)
    server = HookServer(config, sessions, slurm, program_dir=str(programs),
                        waits=NodeWaits(slurm, sessions, poll_s=0.02, min_gap_s=0.0))
    server.start()
    try:
        yield Site(config, server, slurm, {"VCLUSTER_CONFIG": str(path)}, tmp_path)
    finally:
        server.stop()
        engine.dispose()


def test_the_socket_is_root_only(site: Site) -> None:
    mode = os.stat(site.server.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_suspend_is_recorded_by_the_controller_before_it_answers(site: Site) -> None:
    assert hook_client.run("suspend", ["vcluster-suspend", "vc-small-[001-002]"],
                           site.environ) == 0
    assert site.requests() == [("suspend", "vc-small-[001-002]", [])]
    log_text = (site.tmp / "log" / "hooks.log").read_text()
    assert "vcluster-suspend done in" in log_text and "(exit 0)" in log_text


def test_resume_sends_the_copied_resume_file(site: Site, tmp_path: Path) -> None:
    resume = tmp_path / "resume.json"
    resume.write_text('{"jobs": [{"job_id": 12, "nodes": "vc-small-001"}], '
                      '"all_nodes": "vc-small-001"}')
    environ = {**site.environ, "SLURM_RESUME_FILE": str(resume)}
    assert hook_client.run("resume", ["vcluster-resume", "vc-small-001"], environ) == 0
    assert site.requests() == [("resume", "vc-small-001", [12])]


def test_bad_input_gets_the_same_exit_code_and_line(site: Site,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = hook_client.run("suspend", ["vcluster-suspend", "gpu1"], site.environ)
    assert code == 2
    message = ("not vcluster nodes: gpu1 (classes: small vc-small-[001-004]); point only "
               "vcluster's nodes at vcluster's programs in slurm.conf")
    assert capsys.readouterr().err == f"vcluster-suspend: error: {message}\n"
    assert f"ERROR vcluster-suspend: {message} (exit 2)" in (
        site.tmp / "log" / "hooks.log").read_text()
    assert site.requests() == []


def test_an_unreadable_resume_file_is_refused_by_the_hook(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    environ = {**site.environ, "SLURM_RESUME_FILE": str(tmp_path / "gone.json")}
    assert hook_client.run("resume", ["vcluster-resume", "vc-small-001"], environ) == 2
    assert capsys.readouterr().err == (
        f"vcluster-resume: error: cannot read SLURM_RESUME_FILE {tmp_path}/gone.json: "
        "No such file or directory\n")


def test_a_stale_heartbeat_is_refused_by_the_controller_too(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.beat(125)
    assert hook_client.run("job-finished", ["vcluster-job-finished", "12"], site.environ) == 3
    err = capsys.readouterr().err
    assert err.startswith("vcluster-job-finished: error: the vcluster controller is not "
                          "running: its last heartbeat was 125 s ago")
    assert site.requests() == []


def test_prolog_is_answered_when_the_nodes_are_up(site: Site) -> None:
    site.slurm.script = {
        "vc-small-001": [node("vc-small-001", "ALLOCATED", "POWERING_UP")] * 3
        + [node("vc-small-001")],
        "vc-small-002": [node("vc-small-002")],
    }
    environ = {**site.environ, "SLURM_JOB_ID": "12", "SLURM_JOB_NODELIST": "vc-small-[001-002]"}
    assert hook_client.run("prolog", ["vcluster-prolog"], environ) == 0
    assert site.requests() == [("prolog", "vc-small-[001-002]", [12])]
    # the hook ran the job-end trigger in its own process, with the controller's SLURM_CONF
    assert site.slurm.triggers == []
    assert (site.tmp / "strigger.log").read_text() == (
        f"{site.config.slurm.conf} --set --jobid=12 --fini "
        f"--program={site.tmp}/bin/vcluster-job-finished\n")
    # one read per poll for every waiting node; the node seen up is not read again
    assert site.slurm.reads[:2] == [["vc-small-001", "vc-small-002"], ["vc-small-001"]]
    assert site.slurm.updates == [("vc-small-001,vc-small-002", "POWER_DOWN_ASAP",
                                   "vcluster: per-job VM of job 12")]
    with site.server.sessions() as s:
        ups = [e.message for e in s.scalars(select(db.Event).filter_by(kind="job.nodes_up"))]
    assert len(ups) == 1 and ups[0].startswith("nodes vc-small-[001-002] up; the prolog waited")


def test_fifty_prologs_share_the_reads_of_slurm(site: Site) -> None:
    names = [f"vc-small-00{i}" for i in range(1, 5)]
    site.slurm.script = {n: [node(n, "ALLOCATED", "POWERING_UP")] * 5 + [node(n)]
                         for n in names}
    codes: list[int] = []

    def prolog(job_id: int) -> None:
        environ = {**site.environ, "SLURM_JOB_ID": str(job_id),
                   "SLURM_JOB_NODELIST": names[job_id % 4]}
        codes.append(hook_client.run("prolog", ["vcluster-prolog"], environ))

    threads = [threading.Thread(target=prolog, args=(j,)) for j in range(1, 51)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert codes == [0] * 50
    assert len(site.requests()) == 50
    assert len(site.slurm.reads) < 50, "one read serves every waiting prolog"


def test_a_down_node_ends_the_wait_and_keeps_its_reason(site: Site) -> None:
    why = "vcluster: VM 7 failed to boot (BOOT_FAILURE)"
    site.slurm.script = {"vc-small-001": [node("vc-small-001")],
                         "vc-small-002": [node("vc-small-002", "ALLOCATED", "POWERING_UP"),
                                          node("vc-small-002", "DOWN", reason=why)]}
    environ = {**site.environ, "SLURM_JOB_ID": "12", "SLURM_JOB_NODELIST": "vc-small-[001-002]"}
    assert hook_client.run("prolog", ["vcluster-prolog"], environ) == 0
    assert site.slurm.updates == [("vc-small-001", "POWER_DOWN_ASAP",
                                   "vcluster: per-job VM of job 12")]


def test_a_vm_given_up_ends_the_wait(site: Site) -> None:
    site.slurm.script = {"vc-small-001": [node("vc-small-001", "ALLOCATED", "POWERING_UP")]}
    with db.transaction(site.server.sessions) as s:
        s.add(db.Launch(node_name="vc-small-001", node_class="small", job_id=12,
                        state="failed", reason="boot failure",
                        ended_at=db.utcnow() + timedelta(seconds=1)))
    env = HookEnv(config=site.config, sessions=site.server.sessions, slurm=site.slurm)
    waited_s, pending = site.server.waits.wait(env, 12, ["vc-small-001"])
    assert pending == ["vc-small-001"] and waited_s < 2


def test_no_controller_the_hook_records_itself(site: Site) -> None:
    site.server.stop()
    assert not os.path.exists(site.server.path)
    assert hook_client.run("suspend", ["vcluster-suspend", "vc-small-003"], site.environ) == 0
    assert site.requests() == [("suspend", "vc-small-003", [])]
    assert "the hook records the request itself" in (site.tmp / "log" / "hooks.log").read_text()


def test_no_controller_and_a_stale_heartbeat_is_todays_refusal(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.server.stop()
    site.beat(125)
    assert hook_client.run("suspend", ["vcluster-suspend", "vc-small-003"], site.environ) == 3
    assert "the vcluster controller is not running: its last heartbeat was 125 s ago" in (
        capsys.readouterr().err)
    assert site.requests() == []


def test_a_controller_that_does_not_answer_is_refused_like_a_stale_one(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.server.stop()
    path = hook_socket_path(site.config.controller.state_dir)
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(path)
    hung.listen(8)  # takes connections (the kernel does), never answers
    try:
        code = hook_client.run("suspend", ["vcluster-suspend", "vc-small-003"], site.environ,
                               record_answer_s=0.2)
    finally:
        hung.close()
    assert code == 3
    assert capsys.readouterr().err == (
        "vcluster-suspend: error: the vcluster controller is not answering: no answer within "
        f"0.2 s on {path}; check its log, or restart it with `vcluster controller run` "
        "(request not recorded)\n")
    assert site.requests() == []


def test_a_refused_resume_fails_the_nodes_and_leaves_a_trace(site: Site) -> None:
    env = HookEnv(config=site.config, sessions=site.server.sessions, slurm=site.slurm,
                  refusal="the vcluster controller is not answering: no answer")
    with pytest.raises(Exception, match="not answering"):
        do_resume(env, "vc-small-001", {"jobs": [{"job_id": 3, "nodes": "vc-small-001"}]})
    reason = "vcluster: the vcluster controller is not running; nodes not resumed"
    assert site.slurm.updates == [("vc-small-001", "DOWN", reason),
                                  ("vc-small-001", "POWER_DOWN_FORCE", reason)]
    with site.server.sessions() as s:
        assert [e.job_id for e in s.scalars(select(db.Event).filter_by(
            kind=db.RESUME_REFUSED_EVENT))] == [3]


@pytest.mark.parametrize("pad", [0, 2_000_000], ids=["small", "larger-than-the-buffer"])
def test_another_user_may_not_use_the_socket(site: Site, capsys: pytest.CaptureFixture[str],
                                             pad: int) -> None:
    site.server.allowed_uids = {12345}
    resume = site.tmp / "resume.json"
    resume.write_text(json.dumps({"jobs": [{"job_id": 3, "nodes": "vc-small-001",
                                            "pad": "x" * pad}]}))
    environ = {**site.environ, "SLURM_RESUME_FILE": str(resume)}
    assert hook_client.run("resume", ["vcluster-resume", "vc-small-001"], environ) == 2
    assert f"may not use {site.server.path}" in capsys.readouterr().err
    assert site.requests() == []


def test_a_malformed_request_is_refused(site: Site) -> None:
    answers: list[dict[str, object]] = []
    code, message = site.server.handle({"v": 1, "kind": "suspend", "arg": ["x"]},
                                       answers.append)
    assert (code, message, answers) == (2, "malformed request: arg is not a string", [])
    code, message = site.server.handle({"v": 1, "kind": "rm -rf"}, answers.append)
    assert (code, message) == (2, "malformed request: version 1, kind 'rm -rf'")


def test_the_hook_programs_import_nothing_heavy() -> None:
    probe = ("import sys, vcluster.hook_client; print(sorted({m.split('.')[0] for m in "
             "sys.modules} & {'sqlalchemy', 'pyone', 'rich', 'click', 'alembic', 'lxml', "
             "'logging', 'dataclasses'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_a_hook_without_its_config_says_so_without_importing_vcluster(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "nowhere.toml"
    probe = ("import sys, vcluster.hook_client as h; code = h.run('prolog', ['vcluster-prolog'], "
             f"{{'VCLUSTER_CONFIG': {str(missing)!r}}}); "
             "print(code, 'sqlalchemy' in sys.modules, 'vcluster.hooks' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    assert proc.stdout.split() == ["4", "False", "False"]
    assert proc.stderr == (f"vcluster-prolog: error: {missing}: file not found; create it "
                           "(see deploy/vcluster.toml.example) or set VCLUSTER_CONFIG\n")


def test_young_waits_are_read_more_often(site: Site) -> None:
    """A prolog that began waiting less than fast_wait_s ago (standby VMs: nodes up a second
    or two after the allocation) is read every fast_poll_s; older waits every poll_s."""
    clock = [100.0]
    waits = NodeWaits(site.slurm, site.server.sessions, poll_s=0.25, fast_poll_s=0.1,
                      fast_wait_s=3.0, monotonic=lambda: clock[0])
    env = HookEnv(site.config, site.server.sessions, site.slurm)
    assert waits.gap_s() == 0.25  # nobody waits
    waits.register(env, 12, ["vc-small-001"])
    assert waits.gap_s() == 0.1
    clock[0] += 3.5
    assert waits.gap_s() == 0.25
    waits.register(env, 13, ["vc-small-002"])
    assert waits.gap_s() == 0.1


def test_reads_that_cost_more_come_less_often(site: Site) -> None:
    """A read of many nodes (a burst's 1,000 waiting prologs: 0.6 MB of scontrol output)
    is followed by a gap of at least cost_factor times its duration, even for young waits,
    up to max_cost_gap_s (a read slow because slurmctld was: 7 s); a cheap read keeps the
    fast gap."""
    clock = [100.0]
    waits = NodeWaits(site.slurm, site.server.sessions, poll_s=0.25, fast_poll_s=0.1,
                      min_gap_s=0.05, fast_wait_s=3.0, cost_factor=10.0,
                      max_cost_gap_s=1.0, monotonic=lambda: clock[0])
    env = HookEnv(site.config, site.server.sessions, site.slurm)
    waits.register(env, 12, ["vc-small-001"])
    inner = site.slurm.show_nodes

    took = [0.06]

    def slow_read(names):  # type: ignore[no-untyped-def]
        clock[0] += took[0]
        return inner(names)

    site.slurm.show_nodes = slow_read  # type: ignore[method-assign]
    waits.poll_once()
    assert waits.next_gap_s(new_wait=False) == pytest.approx(0.6)
    assert waits.next_gap_s(new_wait=True) == pytest.approx(0.6)
    took[0] = 7.0  # slurmctld busy: the gap stays bounded
    waits.poll_once()
    assert waits.next_gap_s(new_wait=False) == pytest.approx(1.0)
    site.slurm.show_nodes = inner  # type: ignore[method-assign]
    waits.register(env, 13, ["vc-small-002"])  # a young wait again
    waits.poll_once()
    assert waits.next_gap_s(new_wait=False) == pytest.approx(0.1)
    assert waits.next_gap_s(new_wait=True) == pytest.approx(0.05)


class CountingCondition(threading.Condition):
    """A Condition that counts the wake-ups of whoever waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.wakeups = 0

    def wait(self, timeout: float | None = None) -> bool:
        woken = super().wait(timeout)
        self.wakeups += 1
        return woken


def test_many_waiting_prologs_wake_only_when_theirs_is_settled(site: Site) -> None:
    """300 prologs at once (a burst of one-node jobs): each hook thread sleeps until its own
    wait is settled; nobody is woken by the others arriving or being settled (a shared
    condition made that 300 x 300 wake-ups, and at 1,000 jobs starved the controller)."""
    names = [f"vc-small-{i:03d}" for i in range(1, 301)]
    site.slurm.script = {n: [node(n, "ALLOCATED", "POWERING_UP")] * 3 + [node(n)]
                         for n in names}
    cond = CountingCondition()
    waits = NodeWaits(site.slurm, site.server.sessions, poll_s=0.02, min_gap_s=0.0, cond=cond)
    env = HookEnv(config=site.config, sessions=site.server.sessions, slurm=site.slurm)
    results: dict[int, tuple[float, list[str]]] = {}

    def prolog(job_id: int) -> None:
        results[job_id] = waits.wait(env, job_id, [names[job_id - 1]])

    threads = [threading.Thread(target=prolog, args=(j,)) for j in range(1, 301)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == list(range(1, 301))
    assert all(pending == [] for _, pending in results.values())
    # the poller's own sleeps between reads, and one wake-up per arrival at most
    assert cond.wakeups <= len(site.slurm.reads) * 2 + 300, (cond.wakeups, len(site.slurm.reads))


def test_a_prolog_whose_controller_went_away_after_recording_ends_without_waiting(
        site: Site) -> None:
    """The controller recorded the prolog's request, then died: the prolog exits 0 at once
    (Slurm launches the job when it sees the nodes up) rather than waiting itself with the
    database layer imported, once per starting job, on the host that just lost its
    controller."""
    path = site.server.path
    site.server.stop()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def record_then_die() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b'{"recorded": 7, "wait_s": 30}\n')
        conn.close()

    dying = threading.Thread(target=record_then_die)
    dying.start()
    site.slurm.script = {"vc-small-001": [node("vc-small-001", "ALLOCATED", "POWERING_UP")]}
    environ = {**site.environ, "SLURM_JOB_ID": "12", "SLURM_JOB_NODELIST": "vc-small-001"}
    try:
        assert hook_client.run("prolog", ["vcluster-prolog"], environ) == 0
    finally:
        dying.join(timeout=5)
        listener.close()
    assert site.slurm.reads == []  # no wait of its own
    assert ("request 7 recorded, then the controller hung up: the job starts once Slurm sees "
            "its nodes up") in (site.tmp / "log" / "hooks.log").read_text()


def test_a_hook_that_does_not_offer_to_run_the_trigger_has_the_controller_run_it(
        site: Site) -> None:
    site.slurm.script = {"vc-small-001": [node("vc-small-001")]}
    sent: list[dict] = []
    code, _ = site.server.handle(
        {"v": 1, "kind": "prolog", "arg": None,
         "env": {"SLURM_JOB_ID": "12", "SLURM_JOB_NODELIST": "vc-small-001"}}, sent.append)
    assert code == 0 and [m for m in sent if "run" in m] == []
    assert site.slurm.triggers == [(12, f"{site.tmp}/bin/vcluster-job-finished")]

