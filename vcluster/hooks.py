"""Slurm's hooks run in one process: record what Slurm asked, wake the controller, return.

The programs slurmctld runs (:mod:`vcluster.hook_client`) hand their request to the
controller, which runs it through :mod:`vcluster.hook_steps` and records it; this module is
how a hook does the same work itself, with its own database connection, when no controller
takes its request (then the heartbeat decides, as below), and what ``vcluster hook`` replays.

Why it exists: ResumeProgram, SuspendProgram, ResumeFailProgram, PrologSlurmctld,
EpilogSlurmctld and the ``strigger --fini`` program are run by slurmctld with a bare
environment (no PATH, often no VCLUSTER_CONFIG), as SlurmUser, and slurmctld waits for some
of them. So each is short and bounded: validate the input (hostlists of this config's nodes
only, numeric job ids), refuse if the controller's heartbeat is stale (nothing would act on
the request), record the request in the database, wake the controller, exit with a defined
code. Slow work (booting and terminating VMs) is the controller's.

Two hooks do a little more, bounded by settings: the prolog waits until the job's nodes are
up (so the job starts at once, not at slurmctld's next 30 s check) and registers a
``strigger --fini`` backup for the epilog; the epilog powers ``per-job`` nodes down at once.

Exit codes: 0 done, 2 invalid input, 3 controller not running, 4 configuration error,
5 other failure (database, Slurm). Every run is logged to ``<log_dir>/hooks.log``.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from vcluster import db
from vcluster.config import Config, load_config
from vcluster.errors import ConfigError, ControllerStale, UserInputError, VclusterError
from vcluster.hook_steps import (
    JOB_FINISHED_PROGRAM,
    HookEnv,
    HookSlurm,
    check_heartbeat,
    do_epilog,
    do_job_finished,
    do_prolog,
    do_resume,
    do_resume_fail,
    do_suspend,
    job_finished_wrapper_path,
    parse_job_id,
    parse_resume_json,
    parse_vcluster_nodes,
    read_resume_file,
    record_request,
    wait_for_nodes,
)
from vcluster.hook_wire import EXIT_BAD_INPUT, EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_STALE
from vcluster.journal import logging_handler, open_sink
from vcluster.paths import hook_config_path

__all__ = [
    "EXIT_BAD_INPUT", "EXIT_CONFIG", "EXIT_FAILED", "EXIT_OK", "EXIT_STALE", "HookEnv",
    "HookSlurm", "check_heartbeat", "do_epilog", "do_job_finished", "do_prolog", "do_resume",
    "do_resume_fail", "do_suspend", "exit_code_of", "hook_action", "hook_config_path",
    "parse_job_id",
    "parse_resume_json", "parse_vcluster_nodes", "read_resume_file", "record_request",
    "run_hook", "wait_for_nodes", "write_job_finished_wrapper",
]

log = logging.getLogger("vcluster.hooks")


def write_job_finished_wrapper(config: Config, program_dir: str) -> str:
    """Write the program ``strigger --fini`` runs: it gets no environment, so the wrapper
    names the config. The controller writes it at start; the prolog registers it."""
    path = job_finished_wrapper_path(config)
    lines = ["#!/bin/sh", "# Written by `vcluster controller run`: strigger runs this with "
             "no environment.", f"export VCLUSTER_CONFIG={shlex.quote(config.path)}",
             f"export SLURM_CONF={shlex.quote(config.slurm.conf)}",
             "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             f'exec {shlex.quote(os.path.join(program_dir, JOB_FINISHED_PROGRAM))} "$@"', ""]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    Path(tmp).write_text("\n".join(lines), encoding="utf-8")
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


# --- process entry points ----------------------------------------------------------------------


def _setup_logging(config: Config, program: str) -> None:
    root = logging.getLogger("vcluster")
    root.setLevel(logging.INFO)
    fmt = logging.Formatter(f"%(asctime)s {program}[{os.getpid()}] %(levelname)s %(message)s")
    sink = open_sink(config.controller.log_to)
    if sink is not None:  # journald or syslog (controller.log_to)
        root.addHandler(logging_handler(sink, program))
        return
    try:
        Path(config.controller.log_dir).mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(
            os.path.join(config.controller.log_dir, "hooks.log"), encoding="utf-8")
    except OSError:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(fmt)
    root.addHandler(handler)


def make_env(config: Config, argv0: str, *, refusal: str = "") -> HookEnv:
    """The hook's own database and Slurm; with ``refusal`` every request is refused with
    that message, as if the heartbeat were stale (the controller did not answer)."""
    from vcluster.slurm import Slurm

    engine = db.make_engine(config.database, migrate=False)
    return HookEnv(config=config, sessions=db.session_factory(engine),
                   slurm=Slurm(config.slurm),
                   program_dir=os.path.dirname(os.path.abspath(argv0)), refusal=refusal)


def exit_code_of(exc: Exception) -> tuple[int, str]:
    """The exit code and the one-line message a hook gives for ``exc``."""
    if isinstance(exc, UserInputError):
        return EXIT_BAD_INPUT, str(exc)
    if isinstance(exc, ControllerStale):
        return EXIT_STALE, str(exc)
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG, str(exc)
    if isinstance(exc, VclusterError):
        return EXIT_FAILED, str(exc)
    return EXIT_FAILED, f"unexpected {type(exc).__name__}: {exc}"


def run_hook(program: str, action: Callable[[HookEnv], int], *,
             environ: Mapping[str, str] | None = None, argv0: str = "",
             env_factory: Callable[[Config, str], HookEnv] = make_env) -> int:
    """Load the config, log, run ``action``, and map every failure to a defined exit code."""
    environ = os.environ if environ is None else environ
    started = time.monotonic()
    try:
        config = load_config(hook_config_path(environ), environ=environ)
    except ConfigError as exc:
        print(f"{program}: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _setup_logging(config, program)
    code, message = EXIT_FAILED, ""
    try:
        code = action(env_factory(config, argv0 or program))
    except Exception as exc:  # a hook must always exit with a defined code and a log line
        if not isinstance(exc, VclusterError):
            log.exception("%s failed unexpectedly", program)
        code, message = exit_code_of(exc)
    if code != EXIT_OK and message:
        log.error("%s: %s (exit %d)", program, message, code)
        print(f"{program}: error: {message}", file=sys.stderr)
    children = os.times()
    log.info("%s done in %.3f s, cpu %.1f ms (exit %d)", program, time.monotonic() - started,
             (time.process_time() + children.children_user + children.children_system) * 1000,
             code)
    return code


def _resume_action(argv: Sequence[str], environ: Mapping[str, str]) -> Callable[[HookEnv], int]:
    # Copy SLURM_RESUME_FILE first: slurmctld holds it open only while we run.
    path = environ.get("SLURM_RESUME_FILE", "")
    raw: str | None = None
    read_error: str | None = None
    if path:
        try:
            raw = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            read_error = f"cannot read SLURM_RESUME_FILE {path}: {exc.strerror}"

    def action(env: HookEnv) -> int:
        if read_error:
            raise UserInputError(read_error)
        data = parse_resume_json(raw, path) if raw is not None else {}
        do_resume(env, argv[1] if len(argv) > 1 else None, data)
        return EXIT_OK

    return action


def _arg1(argv: Sequence[str]) -> str | None:
    return argv[1] if len(argv) > 1 else None


def hook_action(kind: str, argv: Sequence[str], environ: Mapping[str, str]
                ) -> Callable[[HookEnv], int]:
    """The action of hook ``kind`` given its argv and environment as slurmctld passes them."""
    if kind == "resume":
        return _resume_action(argv, environ)
    if kind == "suspend":
        return lambda env: do_suspend(env, _arg1(argv))
    if kind == "resume-fail":
        return lambda env: do_resume_fail(env, _arg1(argv))
    if kind == "job-finished":
        return lambda env: do_job_finished(env, _arg1(argv))
    if kind == "prolog":
        return lambda env: do_prolog(env, environ.get("SLURM_JOB_ID"),
                                     environ.get("SLURM_JOB_NODELIST"))
    if kind == "epilog":
        return lambda env: do_epilog(env, environ.get("SLURM_JOB_ID"),
                                     environ.get("SLURM_JOB_NODELIST"),
                                     environ.get("SLURM_JOB_EXIT_CODE"))
    raise ValueError(f"unknown hook {kind!r}")


def _main(kind: str) -> None:
    argv, environ = list(sys.argv), dict(os.environ)
    action = hook_action(kind, argv, environ)  # resume copies its file here, first
    sys.exit(run_hook(f"vcluster-{kind}", action, environ=environ, argv0=argv[0]))


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
