"""The programs slurmctld runs (``vcluster-resume``, ``-suspend``, ``-resume-fail``,
``-prolog``, ``-epilog``, ``-job-finished``): hand the request to the controller, return.

Why it exists: these programs sit on every job's critical path, 5-6 of them per job, on the
controller host, and 50 jobs may start at once. So each must start and finish in tens of
milliseconds of CPU: it imports only the standard library and :mod:`vcluster.hook_wire`
(no SQLAlchemy, pyone, click or rich), reads from the config file only where the
controller's socket and the log are, copies what Slurm gave it (argv, the SLURM_JOB_*
variables, SLURM_RESUME_FILE) and sends it to the controller, which checks it, records it in
the database and answers (the prolog's answer comes when the job's nodes are up).

When no controller takes the request (no socket: it is not running, or this user may not
use it) the hook does the work itself (:mod:`vcluster.hooks`): the heartbeat decides, exactly
as before. A controller that took the connection but did not record the request within
:data:`~vcluster.hook_wire.RECORD_ANSWER_S` is treated as one whose heartbeat is stale: the
same one-line refusal, the same outcome on Slurm's side (resumed nodes failed so the jobs
are requeued at once, an ended job's nodes powered down, a starting job let start).

Exit codes: 0 done, 2 invalid input, 3 controller not running, 4 configuration error,
5 other failure. Every run is logged to journald or syslog under the program's name, with
the job and nodes as fields (:mod:`vcluster.journal`, ``controller.log_to``), else to
``<log_dir>/hooks.log``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence

from vcluster import hook_wire, journal
from vcluster.hook_wire import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from vcluster.paths import DEFAULT_LOG_DIR, DEFAULT_STATE_DIR, hook_config_path, hook_socket_path

TYPE_CHECKING = False  # typing costs the hook programs 2 ms of import; mypy reads it
if TYPE_CHECKING:
    from typing import Any

JOB_ENV = ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_JOB_EXIT_CODE")


def build_request(kind: str, argv: Sequence[str], environ: Mapping[str, str]
                  ) -> tuple[dict[str, Any], str]:
    """The request for the controller, and an error ("" if none). SLURM_RESUME_FILE is
    copied here, first: slurmctld holds it open only while the program runs."""
    request: dict[str, Any] = {"kind": kind, "arg": argv[1] if len(argv) > 1 else None,
                               "env": {k: environ[k] for k in JOB_ENV if k in environ},
                               "runs": ["strigger"]}
    path = environ.get("SLURM_RESUME_FILE", "") if kind == "resume" else ""
    if path:
        request["resume_path"] = path
        try:
            with open(path, encoding="utf-8") as handle:
                request["resume"] = handle.read()
        except OSError as exc:
            return request, f"cannot read SLURM_RESUME_FILE {path}: {exc.strerror}"
    return request, ""


_HOOK_KEYS = ("state_dir", "log_dir", "log_to")


def _plain_string(text: str) -> str | None:
    """The value of a one-line TOML string with nothing after it but a comment: a basic
    string without escapes or a literal string; None for anything else."""
    quote = text[:1]
    if quote not in ("'", '"'):
        return None
    end = text.find(quote, 1)
    if end < 0 or (quote == '"' and "\\" in text[1:end]):
        return None
    rest = text[end + 1:].strip()
    return text[1:end] if not rest or rest.startswith("#") else None


def scan_hook_keys(text: str) -> dict[str, str] | None:
    """The ``[controller]`` table's ``state_dir``, ``log_dir`` and ``log_to`` read line by
    line, without importing tomllib (11 of a hook's 15 ms of imports). Only the plainest
    TOML is read so: table headers, comments, one-line ``key = value`` pairs, the three keys
    as one-line strings without escapes. Anything else (a multi-line string or array, a
    dotted, quoted or repeated key that may set them, an inline ``controller`` table) gives
    None, and the caller parses the file with tomllib."""
    if '"""' in text or "\'\'\'" in text:
        return None
    table = ""
    found: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):  # a header: [name] or [[name]], then only a comment
            double = line.startswith("[[")
            close = line.find("]]" if double else "]")
            name = line[2 if double else 1:close].strip() if close > 0 else ""
            after = line[close + (2 if double else 1):].strip() if close > 0 else "?"
            if (not name or (after and not after.startswith("#"))
                    or not all(c.isalnum() or c in "_-." for c in name)
                    or (name.split(".")[0] == "controller" and (double or name != "controller"
                                                                and any(k in name for k in
                                                                        _HOOK_KEYS)))):
                return None
            table = "[]" if double else name
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            return None  # a line of a multi-line value
        if value[:1] in ("[", "{") and (value.count("[") != value.count("]")
                                        or value.count("{") != value.count("}")):
            return None  # a multi-line array or table
        if table == "controller" and key in _HOOK_KEYS:
            parsed = _plain_string(value)
            if parsed is None or key in found:
                return None
            found[key] = parsed
        elif (table == "" and "controller" in key) or (
                table == "controller" and any(k in key for k in _HOOK_KEYS)):
            return None  # controller.state_dir = ..., controller = {...}, "state_dir" = ...
    return found


def hook_dirs(config_path: str) -> tuple[str, str, str] | None:
    """``controller.state_dir``, ``controller.log_dir`` and ``controller.log_to`` from the
    config file; None if it cannot be read (the full check in :mod:`vcluster.hooks` then
    says why)."""
    try:
        with open(config_path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    try:
        controller: dict[str, Any] | None = scan_hook_keys(data.decode("utf-8"))
    except UnicodeDecodeError:
        return None
    if controller is None:
        import tomllib
        try:
            controller = tomllib.loads(data.decode("utf-8")).get("controller", {})
        except ValueError:
            return None
    assert controller is not None
    state_dir = controller.get("state_dir", DEFAULT_STATE_DIR)
    log_dir = controller.get("log_dir", DEFAULT_LOG_DIR)
    log_to = controller.get("log_to", "auto")
    if not all(isinstance(v, str) for v in (state_dir, log_dir, log_to)):
        return None
    return state_dir, log_dir, log_to


class HookLog:
    """Lines to journald or syslog (``sink``: identifier ``program``, with ``fields`` such as
    JOB and NODE), else in ``hooks.log`` in the format of the logging module's, without
    importing it."""

    def __init__(self, log_dir: str, program: str, sink: journal.Sink | None = None,
                 fields: Mapping[str, str] | None = None) -> None:
        self.path = os.path.join(log_dir, "hooks.log")
        self.program = program
        self.prefix = f"{program}[{os.getpid()}]"
        self.sink = sink
        self.fields = dict(fields or {})

    def write(self, level: str, message: str) -> None:
        if self.sink is not None and self.sink.send(self.program, level, message, self.fields):
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        line = f"{stamp},{int(now % 1 * 1000):03d} {self.prefix} {level} {message}\n"
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)
        except OSError:
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(line)
            except OSError:
                sys.stderr.write(line)


def log_fields(kind: str, argv: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """Journal fields of a hook's lines: the job (SLURM_JOB_ID) and its nodes (the job's
    node list, or the node list slurmctld gave resume/suspend as their argument)."""
    nodes = environ.get("SLURM_JOB_NODELIST", "")
    if not nodes and kind in ("resume", "suspend", "resume-fail") and len(argv) > 1:
        nodes = argv[1]
    return {"JOB": environ.get("SLURM_JOB_ID", ""), "NODE": nodes[:1000]}


def stale_message(exc: hook_wire.NoAnswer) -> str:
    return (f"the vcluster controller is not answering: {exc}; check its log, or restart it "
            "with `vcluster controller run` (request not recorded)")


def run(kind: str, argv: Sequence[str], environ: Mapping[str, str], *, argv0: str = "",
        record_answer_s: float = hook_wire.RECORD_ANSWER_S) -> int:
    """Run hook ``kind`` as slurmctld would; return its exit code."""
    started = time.monotonic()
    program = f"vcluster-{kind}"
    front = {k: environ[k] for k in (FRONT_FAULT, FRONT_MESSAGE) if k in environ}
    if front:  # the C front's word, for this process only
        environ = {k: v for k, v in environ.items() if k not in front}
    request, error = build_request(kind, argv, environ)
    config_path = hook_config_path(environ)
    if not os.path.exists(config_path):  # what load_config says, without its imports
        sys.stderr.write(f"{program}: error: {config_path}: file not found; create it (see "
                         "deploy/vcluster.toml.example) or set VCLUSTER_CONFIG\n")
        return hook_wire.EXIT_CONFIG
    dirs = hook_dirs(config_path)
    if dirs is None:
        return in_process(kind, argv, environ, argv0)
    state_dir, log_dir, log_to = dirs
    log = HookLog(log_dir, program, journal.open_sink(log_to), log_fields(kind, argv, environ))
    if error:
        return _finish(log, program, EXIT_BAD_INPUT, error, started)
    path = hook_socket_path(state_dir)
    try:
        answer = front_fault(front) or hook_wire.ask(
            path, request, record_answer_s=record_answer_s,
            on_run=lambda message: run_for_controller(log, message, environ))
    except hook_wire.NotListening as exc:
        log.write("INFO", f"{exc}: the hook records the request itself")
        return in_process(kind, argv, environ, argv0)
    except hook_wire.NoAnswer as exc:
        if exc.hung_up:  # the controller stopped: the heartbeat decides, as without one
            log.write("WARNING", f"{exc}: the hook records the request itself")
            return in_process(kind, argv, environ, argv0)
        log.write("ERROR", str(exc))
        return in_process(kind, argv, environ, argv0, refusal=stale_message(exc))
    except hook_wire.AnswerLost as exc:
        # recorded: the controller (restarted, or the standby taking over) acts on it. A
        # prolog does not wait for the nodes here: that wait would import the database
        # layer (about 40 MB) in every starting job's prolog on the host whose controller
        # just went away (1,000 jobs starting at once ran it out of memory). Slurm launches
        # the job when it sees the nodes up, at its periodic check (at most 30 s later).
        log.write("WARNING", f"{exc}" + (": the job starts once Slurm sees its nodes up"
                                         if kind == "prolog" else ""))
        return _finish(log, program, EXIT_OK, "", started)
    code, message = answer.get("code"), answer.get("message", "")
    if not isinstance(code, int):
        code, message = EXIT_FAILED, f"the controller answered {answer!r}"
    return _finish(log, program, code, str(message), started)


DUPLICATE_TRIGGER = "Duplicate event trigger"
"""strigger's refusal of a trigger slurmctld holds already: it stands (as
:data:`vcluster.slurm.DUPLICATE_TRIGGER`, which this program does not import)."""


def run_for_controller(log: HookLog, message: dict[str, Any],
                       environ: Mapping[str, str]) -> None:
    """Run the command the controller handed this hook (the prolog's ``strigger --set``,
    absolute path, argv list, bounded); a failure is a warning in the log, as when the
    controller ran it. Anything else is refused."""
    argv, extra = message.get("run"), message.get("env") or {}
    if not (isinstance(argv, list) and len(argv) > 1 and all(isinstance(a, str) for a in argv)
            and os.path.isabs(argv[0]) and os.path.basename(argv[0]) == "strigger"
            and argv[1] == "--set" and isinstance(extra, dict)
            and set(extra) <= {"SLURM_CONF"} and all(isinstance(v, str) for v in extra.values())):
        log.write("WARNING", f"not running what the controller asked: {message!r}")
        return
    import subprocess

    timeout_s = message.get("timeout_s", 20)
    try:
        done = subprocess.run(argv, env={**environ, **extra}, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, errors="replace",
                              timeout=float(timeout_s) if isinstance(timeout_s, (int, float))
                              else 20.0, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.write("WARNING", f"cannot register the job-end trigger: {exc}")
        return
    said = (done.stderr.strip() or done.stdout.strip()).splitlines()
    if done.returncode != 0 and DUPLICATE_TRIGGER not in done.stderr + done.stdout:
        log.write("WARNING", f"cannot register the job-end trigger: {argv[0]} exit "
                             f"{done.returncode}: {said[0] if said else 'no message'}")


FRONT_FAULT = "VCLUSTER_HOOK_FRONT_FAULT"
FRONT_MESSAGE = "VCLUSTER_HOOK_FRONT_MESSAGE"
"""Set by the C hook front (:mod:`vcluster.hook_front`) when it runs this hook after the
controller took its request and did not record it: ``stale`` (no answer in time) or
``hungup``, with the message. The request was sent: this hook does not send it again."""


def front_fault(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """Raise what :func:`hook_wire.ask` would have raised for the front's fault; None (ask
    the controller) without one."""
    fault = environ.get(FRONT_FAULT, "")
    if fault not in ("stale", "hungup"):
        return None
    message = environ.get(FRONT_MESSAGE, "") or "the controller did not record the request"
    raise hook_wire.NoAnswer(message, hung_up=fault == "hungup")


def _finish(log: HookLog, program: str, code: int, message: str, started: float) -> int:
    if code != EXIT_OK and message:
        log.write("ERROR", f"{program}: {message} (exit {code})")
        sys.stderr.write(f"{program}: error: {message}\n")
    log.write("INFO", f"{program} done in {time.monotonic() - started:.3f} s, "
                      f"cpu {cpu_ms():.1f} ms (exit {code})")
    return code


def cpu_ms() -> float:
    """CPU this process used so far (and its finished children: Slurm commands), in ms;
    the sh wrapper slurmctld may exec it through is counted too (exec keeps the process's
    CPU clock)."""
    children = os.times()  # clock ticks (10 ms): only Slurm commands of a hook's own
    return (time.process_time() + children.children_user + children.children_system) * 1000.0


def in_process(kind: str, argv: Sequence[str], environ: Mapping[str, str], argv0: str, *,
               refusal: str = "") -> int:
    """Do the hook's work in this process (its own database connection and Slurm calls)."""
    from functools import partial

    from vcluster import hooks

    action = hooks.hook_action(kind, argv, environ)
    return hooks.run_hook(f"vcluster-{kind}", action, environ=environ,
                          argv0=argv0 or (argv[0] if argv else ""),
                          env_factory=partial(hooks.make_env, refusal=refusal))


def _main(kind: str) -> None:
    sys.exit(run(kind, list(sys.argv), os.environ))


def resume_main() -> None:
    _main("resume")


def suspend_main() -> None:
    _main("suspend")


def resume_fail_main() -> None:
    _main("resume-fail")


def prolog_main() -> None:
    _main("prolog")


def epilog_main() -> None:
    _main("epilog")


def job_finished_main() -> None:
    _main("job-finished")
