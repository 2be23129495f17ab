"""The C hook front (vcluster/hookfront/hook_front.c) does what the Python hook does on its
path: the same request to the controller, the same exit codes, lines on stderr and in the
log; and hands everything off that path to the Python hook of the same kind (without sending
the request twice). Built with the system's C compiler, run as real processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.unit.test_hook_server import Site, node, site  # noqa: F401  (fixture)
from vcluster import hook_client, hook_front, hook_wire, journal, paths

KINDS = ("resume", "suspend", "resume-fail", "prolog", "epilog", "job-finished")
Answer = Callable[[socket.socket, dict], None]


def recorded_then(code: int, message: str = "") -> Answer:
    def answer(conn: socket.socket, request: dict) -> None:
        conn.sendall(b'{"recorded":7,"wait_s":0.5}\n')
        conn.sendall(hook_wire.encode({"code": code, "message": message}))
    return answer


@dataclass
class FakeController:
    """hooks.sock served by a thread: records each request line, answers with ``answer``."""

    path: Path
    answer: Answer = field(default=recorded_then(0))
    requests: list[dict] = field(default_factory=list)
    reads: bool = True
    """False: answers at once and closes without reading the request (an impatient refusal)."""

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if not self.reads:
                    with contextlib.suppress(OSError):
                        self.answer(conn, {})
                    continue
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                try:
                    request = json.loads(data)
                except ValueError:  # nothing, or a request cut short (a front killed)
                    continue
                self.requests.append(request)
                try:
                    self.answer(conn, request)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


@dataclass
class Bed:
    tmp: Path
    config: Path
    front: Path
    python_dir: Path
    controller: FakeController

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "VCLUSTER_CONFIG": str(self.config), **extra}

    def log(self) -> str:
        path = self.tmp / "log" / "hooks.log"
        return path.read_text() if path.exists() else ""


PYTHON_HOOK = """#!{python}
# stands for the installed Python hook: says how it was run
import json, os, sys
with open({out!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "fault": os.environ.get("VCLUSTER_HOOK_FRONT_FAULT"),
                        "message": os.environ.get("VCLUSTER_HOOK_FRONT_MESSAGE"),
                        "job": os.environ.get("SLURM_JOB_ID")}}) + "\\n")
sys.exit(42)
"""


def write_config(path: Path, tmp: Path, extra: str = "") -> None:
    path.write_text(f"""# a site's config
[database]
url = "sqlite:///{tmp}/state.db"   # a comment

[controller]
state_dir = "{tmp}/state"
log_dir = '{tmp}/log'
log_to = "file"
heartbeat_stale_s = 60
{extra}
[[node_class]]
name = "small"
count = 4
""")


@pytest.fixture()
def bed(tmp_path: Path) -> Iterator[Bed]:
    python_dir = tmp_path / "python-hooks"
    python_dir.mkdir()
    for kind in KINDS:
        hook = python_dir / f"vcluster-{kind}"
        hook.write_text(PYTHON_HOOK.format(python=sys.executable, out=str(tmp_path / "ran")))
        hook.chmod(0o755)
    (tmp_path / "state").mkdir()
    config = tmp_path / "vcluster.toml"
    write_config(config, tmp_path)
    front = hook_front.build(tmp_path / "front", python_dir=str(python_dir),
                             record_answer_s=0.5, final_margin_s=0.5,
                             journal_socket=str(tmp_path / "journal.sock"),
                             syslog_socket=str(tmp_path / "syslog.sock"))
    controller = FakeController(tmp_path / "state" / "hooks.sock")
    try:
        yield Bed(tmp_path, config, front, python_dir, controller)
    finally:
        controller.close()


def run_front(bed: Bed, kind: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bed.front / f"vcluster-{kind}"), *args], env=bed.env(**env),
                          capture_output=True, text=True, timeout=30, check=False)


def python_ran(bed: Bed) -> list[dict]:
    path = bed.tmp / "ran"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


CASES = [
    ("prolog", [], {"SLURM_JOB_ID": "12", "SLURM_JOB_NODELIST": "vc-small-[001-002]"}),
    ("epilog", [], {"SLURM_JOB_ID": "12", "SLURM_JOB_NODELIST": "vc-small-001",
                    "SLURM_JOB_EXIT_CODE": "256"}),
    ("suspend", ["vc-small-[001-003]"], {}),
    ("resume-fail", ["vc-small-004"], {}),
    ("job-finished", ["12"], {"SLURM_JOB_ID": "12"}),
    ("resume", ["vc-small-001"], {}),
]


@pytest.mark.parametrize(("kind", "args", "env"), CASES, ids=[c[0] for c in CASES])
def test_the_front_sends_what_the_python_hook_sends(bed: Bed, kind: str, args: list[str],
                                                    env: dict[str, str]) -> None:
    if kind == "resume":  # a resume file with quotes, a backslash, a tab and newlines
        resume = bed.tmp / "resume.json"
        resume.write_text('{"jobs": [{"job_id": 12, "nodes": "vc-small-001",\n'
                          '  "extra": "a \\"quoted\\" \\\\ word\\t"}],\n"all_nodes": "x"}\n')
        env = {**env, "SLURM_RESUME_FILE": str(resume)}
    done = run_front(bed, kind, *args, **env)
    assert (done.returncode, done.stderr) == (0, "")
    assert hook_client.run(kind, [f"vcluster-{kind}", *args], bed.env(**env)) == 0
    front_request, python_request = bed.controller.requests
    assert front_request == python_request
    assert front_request["kind"] == kind and front_request["v"] == hook_wire.PROTOCOL_VERSION
    assert python_ran(bed) == []  # the front did it all
    lines = bed.log().splitlines()
    assert len(lines) == 2 and all(f"INFO vcluster-{kind} done in" in line and
                                   line.endswith("(exit 0)") for line in lines)
    assert re.search(r", cpu [0-9.]+ ms, [0-9.]+ ms of it before its main \(exit 0\)$",
                     lines[0])


@pytest.mark.parametrize("message", [
    "not vcluster nodes: gpu1 (classes: small vc-small-[001-004]); point only vcluster's "
    "nodes at vcluster's programs in slurm.conf",
    'a "quoted" word, a \\ backslash, caf\u00e9 and \u2603 and \U0001f600'])
def test_the_controllers_refusal_reaches_slurm_as_the_python_hook_gives_it(
        bed: Bed, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    bed.controller.answer = recorded_then(2, message)
    done = run_front(bed, "suspend", "gpu1")
    assert done.returncode == 2
    assert done.stderr == f"vcluster-suspend: error: {message}\n"
    assert hook_client.run("suspend", ["vcluster-suspend", "gpu1"], bed.env()) == 2
    assert capsys.readouterr().err == done.stderr
    errors = [line.split(" ", 3)[3] for line in bed.log().splitlines() if " ERROR " in line]
    assert errors == [f"ERROR vcluster-suspend: {message} (exit 2)"] * 2


def big_resume_file(bed: Bed) -> Path:
    """A resume file larger than a socket's buffer: a request that cannot be sent whole
    unless the controller reads it."""
    resume = bed.tmp / "resume.json"
    resume.write_text(json.dumps({"jobs": [{"job_id": 12, "nodes": "vc-small-001",
                                            "pad": "x" * 2_000_000}]}))
    return resume


def test_a_refusal_sent_before_the_request_was_read_reaches_slurm(
        bed: Bed, capsys: pytest.CaptureFixture[str]) -> None:
    """A controller that refuses and closes while the hook is still sending (a request
    larger than the socket's buffer makes it certain): the hook's send fails, and the
    refusal already in its buffer is what Slurm gets, not a hang-up."""
    message = "uid 0 may not use the socket"
    bed.controller.reads = False
    bed.controller.answer = lambda conn, request: conn.sendall(
        hook_wire.encode({"code": 2, "message": message}))
    resume = big_resume_file(bed)
    done = run_front(bed, "resume", "vc-small-001", SLURM_RESUME_FILE=str(resume))
    assert (done.returncode, done.stderr) == (2, f"vcluster-resume: error: {message}\n")
    assert hook_client.run("resume", ["vcluster-resume", "vc-small-001"],
                           bed.env(SLURM_RESUME_FILE=str(resume))) == 2
    assert capsys.readouterr().err == done.stderr
    assert python_ran(bed) == []  # neither did the work itself


def test_an_answer_without_a_code_is_a_failure(bed: Bed) -> None:
    bed.controller.answer = lambda conn, request: conn.sendall(b'{"what":"x"}\n')
    done = run_front(bed, "epilog", SLURM_JOB_ID="3")
    assert done.returncode == hook_wire.EXIT_FAILED
    assert done.stderr == 'vcluster-epilog: error: the controller answered {"what":"x"}\n'


@pytest.mark.parametrize(("why", "setup"), [
    ("no controller socket", lambda bed: bed.controller.close()),
    ("a multi-line string in the config", lambda bed: write_config(
        bed.config, bed.tmp, 'motd = """\nstate_dir = "/elsewhere"\n"""')),
    ("a dotted key", lambda bed: write_config(bed.config, bed.tmp, 'a.b = 1')),
    ("state_dir twice", lambda bed: write_config(bed.config, bed.tmp, 'state_dir = "/x"')),
    ("an escape in state_dir", lambda bed: bed.config.write_text(
        '[controller]\nstate_dir = "/tmp/\\u0041"\n')),
    ("a second [controller] table", lambda bed: write_config(
        bed.config, bed.tmp, "[controller]\nx = 1")),
    ("a [controller.sub] table", lambda bed: write_config(
        bed.config, bed.tmp, "[controller.sub]\nx = 1")),
    ("no config file", lambda bed: bed.config.unlink()),
    ("invalid UTF-8 in the config", lambda bed: bed.config.write_bytes(
        bed.config.read_bytes() + b"# \xff\n")),
])
def test_anything_unusual_goes_to_the_python_hook_before_any_request(
        bed: Bed, why: str, setup: Callable[[Bed], None]) -> None:
    setup(bed)
    done = run_front(bed, "prolog", SLURM_JOB_ID="12", SLURM_JOB_NODELIST="vc-small-001")
    assert done.returncode == 42, why  # the Python hook's exit code: it ran in our place
    assert python_ran(bed) == [{"argv": [], "fault": None, "message": None, "job": "12"}]
    assert bed.controller.requests == []


@pytest.mark.parametrize(("args", "env"), [
    (["vc-small-\u00e9"], {}),
    ([], {"SLURM_RESUME_FILE": "/nonexistent/resume.json"}),
])
def test_input_off_the_plain_path_goes_to_the_python_hook(bed: Bed, args: list[str],
                                                           env: dict[str, str]) -> None:
    done = run_front(bed, "resume", *args, **env)
    assert done.returncode == 42
    assert python_ran(bed)[0]["argv"] == args and bed.controller.requests == []


def test_a_utf8_comment_in_the_config_is_read_plainly(bed: Bed) -> None:
    write_config(bed.config, bed.tmp, "# l'équipe HPC ☃")
    assert run_front(bed, "suspend", "vc-small-001").returncode == 0
    assert len(bed.controller.requests) == 1 and python_ran(bed) == []


def test_the_example_config_is_read_plainly(bed: Bed) -> None:
    example = (Path(__file__).parents[2] / "deploy" / "vcluster.toml.example").read_text()
    assert "\n[controller]\n" in example
    bed.config.write_text(example.replace(
        "\n[controller]\n", f'\n[controller]\nstate_dir = "{bed.tmp}/state"\n'
                            f'log_dir = "{bed.tmp}/log"\nlog_to = "file"\n', 1))
    assert run_front(bed, "suspend", "vc-small-001").returncode == 0
    assert len(bed.controller.requests) == 1 and python_ran(bed) == []


def test_a_controller_that_does_not_record_in_time_is_stale(bed: Bed) -> None:
    bed.controller.answer = lambda conn, request: time.sleep(1.5)
    started = time.monotonic()
    done = run_front(bed, "prolog", SLURM_JOB_ID="12", SLURM_JOB_NODELIST="vc-small-001")
    assert time.monotonic() - started < 1.4  # the front's bound (0.5 s here), not the peer's
    assert done.returncode == 42 and len(bed.controller.requests) == 1
    socket_path = bed.tmp / "state" / "hooks.sock"
    assert python_ran(bed) == [{"argv": [], "fault": "stale", "job": "12",
                                "message": f"no answer within 0.5 s on {socket_path}"}]


def test_a_controller_that_does_not_take_the_request_in_time_is_stale(bed: Bed) -> None:
    """Connected, but the controller reads nothing: a request larger than the socket's
    buffer cannot be sent whole within the bound; that is "not answering" (stale), as no
    answer in time is, on both clients, not a hang-up."""
    bed.controller.reads = False
    bed.controller.answer = lambda conn, request: time.sleep(1.5)
    resume = big_resume_file(bed)
    done = run_front(bed, "resume", "vc-small-001", SLURM_RESUME_FILE=str(resume))
    socket_path = bed.tmp / "state" / "hooks.sock"
    assert done.returncode == 42
    assert python_ran(bed) == [{"argv": ["vc-small-001"], "fault": "stale", "job": None,
                                "message": f"no answer within 0.5 s on {socket_path}"}]
    request, _ = hook_client.build_request("resume", ["vcluster-resume", "vc-small-001"],
                                           bed.env(SLURM_RESUME_FILE=str(resume)))
    with pytest.raises(hook_wire.NoAnswer) as info:
        hook_wire.ask(str(socket_path), request, record_answer_s=0.5)
    assert (str(info.value), info.value.hung_up) == (
        f"no answer within 0.5 s on {socket_path}", False)


def test_a_controller_that_hangs_up_before_recording(bed: Bed) -> None:
    bed.controller.answer = lambda conn, request: None  # closes without a word
    done = run_front(bed, "epilog", SLURM_JOB_ID="12", SLURM_JOB_NODELIST="vc-small-001")
    assert done.returncode == 42
    socket_path = bed.tmp / "state" / "hooks.sock"
    assert python_ran(bed)[0]["fault"] == "hungup"
    assert python_ran(bed)[0]["message"] == (
        f"the controller hung up on {socket_path} before recording the request")


def test_a_recorded_request_whose_answer_is_lost_is_done(bed: Bed) -> None:
    bed.controller.answer = lambda conn, request: conn.sendall(b'{"recorded":9,"wait_s":0}\n')
    done = run_front(bed, "prolog", SLURM_JOB_ID="12", SLURM_JOB_NODELIST="vc-small-001")
    assert (done.returncode, done.stderr, python_ran(bed)) == (0, "", [])
    assert ("WARNING request 9 recorded, then the controller hung up: the job starts once "
            "Slurm sees its nodes up") in bed.log()


def test_the_python_hook_acts_on_the_fronts_fault_without_asking_again(
        bed: Bed, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []

    def in_process(kind: str, argv: list[str], environ: dict[str, str], argv0: str, *,
                   refusal: str = "") -> int:
        seen.append((refusal, ",".join(k for k in environ if "FRONT" in k)))
        return 3

    monkeypatch.setattr(hook_client, "in_process", in_process)
    environ = bed.env(SLURM_JOB_ID="12", VCLUSTER_HOOK_FRONT_FAULT="stale",
                      VCLUSTER_HOOK_FRONT_MESSAGE="no answer within 10 s on /x")
    assert hook_client.run("prolog", ["vcluster-prolog"], environ) == 3
    assert hook_client.run("prolog", ["vcluster-prolog"],
                           {**environ, "VCLUSTER_HOOK_FRONT_FAULT": "hungup"}) == 3
    assert bed.controller.requests == []  # sent once, by the front
    assert seen[0][0] == hook_client.stale_message(hook_wire.NoAnswer(
        "no answer within 10 s on /x"))
    assert seen[1][0] == ""  # hung up: the heartbeat decides
    assert [s[1] for s in seen] == ["", ""]  # the front's variables end here
    log = bed.log()
    assert "ERROR no answer within 10 s on /x" in log
    assert "WARNING no answer within 10 s on /x: the hook records the request itself" in log


@pytest.mark.parametrize("sink", ["journal", "syslog"])
def test_the_front_logs_to_journald_or_syslog_like_the_python_hook(bed: Bed, sink: str) -> None:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = bed.tmp / f"{sink}.sock"
    receiver.bind(str(path))
    receiver.settimeout(5)
    try:
        write_config(bed.config, bed.tmp, "")
        bed.config.write_text(bed.config.read_text().replace('log_to = "file"',
                                                             f'log_to = "{sink}"'))
        bed.controller.answer = recorded_then(2, "two\nlines")
        done = run_front(bed, "epilog", SLURM_JOB_ID="12", SLURM_JOB_NODELIST="vc-small-001")
        assert done.returncode == 2
        error, info = receiver.recv(65536), receiver.recv(65536)
    finally:
        receiver.close()
    fields = {"JOB": "12", "NODE": "vc-small-001"}
    message = "vcluster-epilog: two\nlines (exit 2)"
    if sink == "journal":
        expected = journal.journal_datagram({
            "MESSAGE": message, "PRIORITY": "3", "SYSLOG_IDENTIFIER": "vcluster-epilog",
            "SYSLOG_PID": str(error.split(b"SYSLOG_PID=")[1].split(b"\n")[0].decode()),
            **fields})
        assert error == expected
        assert b"PRIORITY=6\n" in info and b"MESSAGE=vcluster-epilog done in" in info
    else:
        pid = int(error.split(b"[")[1].split(b"]")[0])
        expected = journal.syslog_datagram("vcluster-epilog", pid, 3, message, fields)
        assert error[error.index(b" vcluster-epilog["):] == expected[expected.index(
            b" vcluster-epilog["):] and error.startswith(b"<27>")
        assert b" vcluster-epilog done in " in info and info.startswith(b"<30>")
    assert bed.log() == ""


def test_the_front_with_the_real_hook_server(site: Site, tmp_path: Path) -> None:  # noqa: F811
    front = hook_front.build(tmp_path / "front", python_dir=_python_hooks(tmp_path))
    site.slurm.script = {"vc-small-001": [node("vc-small-001")]}
    environ = {**site.environ, "PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "12",
               "SLURM_JOB_NODELIST": "vc-small-001"}
    done = subprocess.run([str(front / "vcluster-prolog")], env=environ, capture_output=True,
                          text=True, timeout=30, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert site.requests() == [("prolog", "vc-small-001", [12])]
    done = subprocess.run([str(front / "vcluster-suspend"), "gpu1"], env=environ,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2 and done.stderr.startswith(
        "vcluster-suspend: error: not vcluster nodes: gpu1")


def _python_hooks(tmp_path: Path) -> str:
    directory = tmp_path / "python-hooks"
    directory.mkdir()
    for kind in KINDS:
        hook = directory / f"vcluster-{kind}"
        hook.write_text("#!/bin/sh\nexit 99\n")
        hook.chmod(0o755)
    return str(directory)


def test_build_refuses_without_the_python_hooks(tmp_path: Path) -> None:
    from vcluster.errors import UserInputError

    with pytest.raises(UserInputError, match="has no vcluster-resume"):
        hook_front.build(tmp_path / "front", python_dir=str(tmp_path))
    with pytest.raises(UserInputError, match="printable ASCII"):
        hook_front.c_string("/tmp/\n")


def test_a_front_run_under_another_name_refuses(bed: Bed) -> None:
    done = subprocess.run([str(bed.front / hook_front.FRONT_NAME)], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == hook_wire.EXIT_CONFIG
    assert "run this program as vcluster-<hook>" in done.stderr


def test_the_controllers_job_end_trigger_runs_the_front_slurm_conf_runs(bed: Bed) -> None:
    conf = bed.tmp / "slurm.conf"
    wrapper = bed.tmp / "wrappers" / "vcluster-prolog"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\nexport A=1\nexec {bed.front}/vcluster-prolog \"$@\"\n")
    wrapper.chmod(0o755)
    installed = str(bed.python_dir)
    for prolog, expected in ((f"{bed.front}/vcluster-prolog", str(bed.front)),
                             (str(wrapper), str(bed.front)),
                             (f"{installed}/vcluster-prolog", installed)):
        conf.write_text(f"ClusterName=x\nPrologSlurmctld={prolog}\n")
        assert hook_front.job_finished_dir(str(conf), installed) == expected
    # a front built for another vcluster's Python hooks is not this one's
    assert hook_front.job_finished_dir(str(conf), str(bed.tmp)) == str(bed.tmp)
    conf.write_text(f"PrologSlurmctld={bed.front}/vcluster-prolog\n")
    assert hook_front.job_finished_dir(str(conf), str(bed.tmp)) == str(bed.tmp)
    assert hook_front.job_finished_dir(str(bed.tmp / "none.conf"), installed) == installed


def run_python_hook(bed: Bed, kind: str, *args: str, **env: str
                    ) -> subprocess.CompletedProcess[str]:
    code = ("import os, sys\nfrom vcluster import hook_client\n"
            f"sys.exit(hook_client.run({kind!r}, ['vcluster-{kind}', *sys.argv[1:]], os.environ))")
    return subprocess.run([sys.executable, "-c", code, *args], env=bed.env(**env),
                          capture_output=True, text=True, timeout=60, check=False)


def strigger_answer(argv: list[str], then: int = 0) -> Answer:
    def answer(conn: socket.socket, request: dict) -> None:
        assert request["runs"] == ["strigger"]
        conn.sendall(b'{"recorded":7,"wait_s":5}\n')
        conn.sendall(hook_wire.encode({"run": argv, "env": {"SLURM_CONF": "/etc/x/slurm.conf"},
                                       "timeout_s": 2}))
        conn.sendall(hook_wire.encode({"code": then, "message": ""}))
    return answer


def fake_strigger(bed: Bed, body: str) -> Path:
    path = bed.tmp / "slurm-bin" / "strigger"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\necho \"$SLURM_CONF $*\" >> {bed.tmp}/strigger.log\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("client", ["front", "python"])
@pytest.mark.parametrize(("body", "warning"), [
    ("exit 0", None),
    ("echo 'strigger: error: Duplicate event trigger' >&2; exit 1", None),
    ("echo 'strigger: error: Invalid job id' >&2; exit 1",
     "cannot register the job-end trigger: {path} exit 1: strigger: error: Invalid job id"),
    ("sleep 5", "timed out"),
], ids=["ok", "duplicate", "refused", "hung"])
def test_the_hook_runs_the_job_end_trigger_the_controller_hands_it(
        bed: Bed, client: str, body: str, warning: str | None) -> None:
    path = fake_strigger(bed, body)
    argv = [str(path), "--set", "--jobid=12", "--fini", "--program=/x/vcluster-job-finished"]
    bed.controller.answer = strigger_answer(argv)
    run = run_front if client == "front" else run_python_hook
    started = time.monotonic()
    done = run(bed, "prolog", SLURM_JOB_ID="12", SLURM_JOB_NODELIST="vc-small-001")
    assert time.monotonic() - started < 4.5  # bounded by the 2 s the controller gave
    assert (done.returncode, done.stderr) == (0, "")
    assert (bed.tmp / "strigger.log").read_text() == (
        "/etc/x/slurm.conf --set --jobid=12 --fini --program=/x/vcluster-job-finished\n")
    warnings = [line for line in bed.log().splitlines() if " WARNING " in line]
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warning.format(path=path) in warnings[0], warnings


@pytest.mark.parametrize("client", ["front", "python"])
@pytest.mark.parametrize("argv", [
    ["/bin/sh", "-c", "touch {tmp}/ran"],
    ["strigger", "--set"],                      # not an absolute path
    ["{tmp}/slurm-bin/strigger", "--clear"],    # not a --set
])
def test_the_hook_runs_nothing_else(bed: Bed, client: str, argv: list[str]) -> None:
    fake_strigger(bed, f"touch {bed.tmp}/ran")
    argv = [a.format(tmp=bed.tmp) for a in argv]
    bed.controller.answer = strigger_answer(argv)
    run = run_front if client == "front" else run_python_hook
    done = run(bed, "prolog", SLURM_JOB_ID="12", SLURM_JOB_NODELIST="vc-small-001")
    assert done.returncode == 0 and not (bed.tmp / "ran").exists()
    assert "WARNING not running what the controller asked: " in bed.log()


@pytest.mark.skipif(os.path.exists(paths.DEFAULT_CONFIG_PATH),
                    reason=f"{paths.DEFAULT_CONFIG_PATH} exists here: it would be read first")
@pytest.mark.parametrize("client", ["front", "python"])
def test_without_vcluster_config_the_config_beside_slurm_conf_is_read(bed: Bed,
                                                                       client: str) -> None:
    (bed.tmp / "etc").mkdir()
    bed.config.rename(bed.tmp / "etc" / "vcluster.toml")
    env = {"PATH": "/usr/bin:/bin", "SLURM_CONF": str(bed.tmp / "etc" / "slurm.conf")}
    if client == "front":
        argv = [str(bed.front / "vcluster-suspend"), "vc-small-001"]
    else:
        argv = [sys.executable, "-c", "import os, sys\nfrom vcluster import hook_client\n"
                "sys.exit(hook_client.run('suspend', ['vcluster-suspend', 'vc-small-001'], "
                "os.environ))"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30,
                          check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert [r["arg"] for r in bed.controller.requests] == ["vc-small-001"]


def test_the_duplicate_trigger_words_are_slurms() -> None:
    from vcluster import slurm

    assert hook_client.DUPLICATE_TRIGGER == slurm.DUPLICATE_TRIGGER
    assert f'"{slurm.DUPLICATE_TRIGGER}"' in hook_front.config_header("/x")
