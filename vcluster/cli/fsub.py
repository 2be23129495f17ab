"""``fsub``: sbatch that runs the job on VMs booted for it.

The command line is sbatch's (same options, same output: ``Submitted batch job N`` or the bare
id with ``--parsable``) plus ``--vm-class`` and ``--vm-template``; the checks and the routing
live in :mod:`vcluster.submit`. This module adds what only a terminal command needs:
``--wait``, which follows the job (queued -> booting VMs k/N ready -> running -> finished)
with a live display on a terminal and plain lines otherwise, and exits with the job's exit code.

fsub runs as an ordinary user: it reads the config (world-readable, no secrets) and asks Slurm;
it never opens the database or the ONE_AUTH file. Progress goes to stderr, so
``jobid=$(fsub --parsable --wait job.sh)`` still captures only the id. ``--wait`` asks Slurm
every second, or every ``$FSUB_WAIT_INTERVAL_S`` seconds.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import click

from vcluster import __version__
from vcluster.config import load_config
from vcluster.errors import SlurmError, UserInputError, VclusterError
from vcluster.public_status import down_reason
from vcluster.slurm import Job, Node, Slurm, compress_hostlist
from vcluster.submit import SubmitRequest, parse_options, plan_submission, submitted_message

log = logging.getLogger(__name__)

FOLLOW_INTERVAL_S = 1.0
"""How often ``--wait`` asks Slurm (one squeue, plus one sinfo while VMs boot), seconds."""
MAX_READ_FAILURES = 5
"""Consecutive failed reads of Slurm after which ``--wait`` gives up."""


class JobReader(Protocol):
    """What following a job needs from Slurm (:class:`vcluster.slurm.Slurm` has it)."""

    def jobs(self) -> list[Job]: ...

    def nodes(self) -> list[Node]: ...

    def show_job(self, job_id: int) -> dict[str, str] | None: ...


@dataclass(frozen=True)
class Progress:
    """Where a job is, as one line of text; ``exit_code`` is fsub's status once finished."""

    job_id: int
    phase: str
    """``queued``, ``booting``, ``running``, ``completing``, ``finished`` or a Slurm state."""
    text: str
    exit_code: int | None = None

    @property
    def finished(self) -> bool:
        return self.phase == "finished"


def _reason(text: str) -> str:
    return "" if text in ("", "None", "(null)") else text


def _finished(job_id: int, state: str, exit_code: int | None, reason: str) -> Progress:
    if state == "COMPLETED":
        code = exit_code or 0
        return Progress(job_id, "finished", f"job {job_id}: completed, exit code {code}", code)
    code = exit_code or 1
    if state == "FAILED":
        return Progress(job_id, "finished", f"job {job_id}: failed, exit code {code}", code)
    why = f" ({_reason(reason)})" if _reason(reason) else ""
    return Progress(job_id, "finished", f"job {job_id}: ended {state}{why}", code)


def _exit_code_field(text: str) -> int | None:
    """scontrol's ``ExitCode=3:0`` (status:signal) as a shell exit code."""
    status, _, signal = text.partition(":")
    if signal.isdigit() and int(signal):
        return 128 + int(signal)
    return int(status) if status.isdigit() else None


@dataclass
class Follower:
    """Turns what Slurm reports about one job (or array) into :class:`Progress`."""

    job_id: int
    task_results: dict[int, tuple[str, int | None]] = field(default_factory=dict)
    """Finished array tasks seen so far (Slurm forgets them after MinJobAge)."""

    def observe(self, reader: JobReader) -> Progress:
        jobs = [j for j in reader.jobs() if self.job_id in (j.job_id, j.array_job_id)]
        if not jobs:
            return self._from_scontrol(reader)
        ready = total = 0
        booting = [j for j in jobs if j.state == "CONFIGURING"]
        if booting:
            by_name = {n.name: n for n in reader.nodes()}
            for job in booting:
                for name in job.nodes:
                    total += 1
                    node = by_name.get(name)
                    if node is not None and not node.powering_up and not node.powered_down:
                        ready += 1
        if len(jobs) == 1 and jobs[0].array_job_id is None:
            return self._single(jobs[0], ready, total)
        return self._array(jobs, ready, total)

    def _single(self, job: Job, ready: int, total: int) -> Progress:
        jid = job.job_id
        if job.is_finished:
            return _finished(jid, job.state, job.exit_code, job.state_reason)
        if job.state == "PENDING":
            why = f" ({_reason(job.state_reason)})" if _reason(job.state_reason) else ""
            if job.admin_comment.startswith("vcluster:"):
                why += f": {job.admin_comment}"
            return Progress(jid, "queued", f"job {jid}: queued{why}")
        if job.state == "CONFIGURING":
            return Progress(jid, "booting", f"job {jid}: booting VMs ({ready}/{total} ready)")
        if job.state == "RUNNING":
            where = compress_hostlist(job.nodes)
            return Progress(jid, "running", f"job {jid}: running on {where}")
        if job.state == "COMPLETING":
            return Progress(jid, "completing", f"job {jid}: completing")
        return Progress(jid, job.state.lower(), f"job {jid}: {job.state.lower()}")

    def _array(self, jobs: list[Job], ready: int, total: int) -> Progress:
        counts = {"running": 0, "booting": 0, "queued": 0}
        more_queued = False
        for job in jobs:
            if job.is_finished:
                self.task_results[job.job_id] = (job.state, job.exit_code)
            elif job.state == "PENDING" and job.array_task_id is None:
                more_queued = True
            elif job.state == "PENDING":
                counts["queued"] += 1
            elif job.state == "CONFIGURING":
                counts["booting"] += 1
            else:
                counts["running"] += 1
        done = len(self.task_results)
        if not more_queued and not any(counts.values()):
            states = [state for state, _ in self.task_results.values()]
            codes = [(code or 0) if state == "COMPLETED" else (code or 1)
                     for state, code in self.task_results.values()]
            failed = sum(1 for s in states if s != "COMPLETED")
            code = max(codes, default=0)
            text = (f"job {self.job_id}: array finished, {done - failed} completed, "
                    f"{failed} not, highest exit code {code}")
            return Progress(self.job_id, "finished", text, code)
        parts = [f"{counts['running']} running"] if counts["running"] else []
        if counts["booting"]:
            parts.append(f"{counts['booting']} booting ({ready}/{total} VMs ready)")
        if counts["queued"]:
            parts.append(f"{counts['queued']} queued")
        if more_queued:
            parts.append("more queued")
        parts.append(f"{done} finished")
        phase = "running" if counts["running"] else "booting" if counts["booting"] else "queued"
        return Progress(self.job_id, phase, f"job {self.job_id}: array tasks " + ", ".join(parts))

    def _from_scontrol(self, reader: JobReader) -> Progress:
        record = reader.show_job(self.job_id)
        if record is None:
            raise SlurmError(
                f"job {self.job_id} is no longer known to Slurm; its exit code is unknown "
                "(see the job's output file)")
        state = record.get("JobState", "UNKNOWN")
        if state in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            return Progress(self.job_id, state.lower(), f"job {self.job_id}: {state.lower()}")
        return _finished(self.job_id, state, _exit_code_field(record.get("ExitCode", "")),
                         record.get("Reason", ""))


def follow_job(
    reader: JobReader,
    job_id: int,
    show: Callable[[Progress], None],
    *,
    interval_s: float = FOLLOW_INTERVAL_S,
    sleep: Callable[[float], None] = time.sleep,
) -> Progress:
    """Report each change of the job's progress until it is finished; return the last."""
    follower = Follower(job_id)
    last_text = ""
    failures = 0
    while True:
        try:
            progress = follower.observe(reader)
        except SlurmError as exc:
            failures += 1
            if failures >= MAX_READ_FAILURES or "no longer known" in str(exc):
                raise
            log.warning("reading job %s failed (attempt %d): %s", job_id, failures, exc)
            sleep(interval_s)
            continue
        failures = 0
        if progress.text != last_text:
            show(progress)
            last_text = progress.text
        if progress.finished:
            return progress
        sleep(interval_s)


def _follow_on_terminal(reader: JobReader, job_id: int, interval_s: float) -> Progress:
    from rich.console import Console
    from rich.text import Text

    console = Console(stderr=True)
    started = time.monotonic()
    if not console.is_terminal:
        return follow_job(reader, job_id, lambda p: click.echo(p.text, err=True),
                          interval_s=interval_s)
    with console.status(Text(f"job {job_id}: submitted")) as status:
        def show(progress: Progress) -> None:
            elapsed_s = time.monotonic() - started
            console.print(Text.assemble((f"{elapsed_s:6.1f}s ", "dim"), progress.text))
            status.update(Text(progress.text))

        return follow_job(reader, job_id, show, interval_s=interval_s)


# --- the command -------------------------------------------------------------------------------


@click.command(
    "fsub",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
    options_metavar="[SBATCH OPTIONS] [--vm-class NAME] [--vm-template NAME] [--wait]",
)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED, metavar="[SCRIPT [ARGS]...]")
@click.pass_context
def fsub(ctx: click.Context, argv: tuple[str, ...]) -> None:
    """Submit a batch job that runs on VMs booted for it (sbatch + VM options).

    Every sbatch option works as with sbatch; the job goes to the node class's
    partition, on fresh exclusive VMs for per-job classes. Bad input is refused
    before anything is submitted. Give a site's plugin options as --opt=value.

    \b
    VM options:
      --vm-class NAME     node class to run on [default: the first in the config,
                          or the first in the partition -p names]
      --vm-template NAME  VM template: the class's own or one it allows
      -W, --wait          follow the job (queued, booting VMs k/N ready, running)
                          on stderr and exit with its exit code
      -h, --help          show this message

    \b
    Example:
      fsub -N2 --mem=4G --vm-template ubuntu --wait job.sh
    """
    try:
        code = _run(ctx, list(argv))
    except KeyboardInterrupt:
        ctx.exit(130)
    except VclusterError as exc:
        click.echo(f"fsub: error: {exc}", err=True)
        ctx.exit(1)
    ctx.exit(code)


def _run(ctx: click.Context, argv: list[str]) -> int:
    options, operands = parse_options(argv)
    names = {o.name for o in options}
    if names & {"help", "usage"}:
        click.echo(ctx.get_help())
        return 0
    if "version" in names:
        click.echo(f"fsub (vcluster) {__version__}")
        return 0
    script_text: str | None = None
    if operands and operands[0] != ":":
        try:
            script_text = Path(operands[0]).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise UserInputError(
                f"cannot read batch script {operands[0]}: {exc.strerror}") from exc
    elif not operands and "wrap" not in names:
        script_text = _read_stdin_script()
    request = SubmitRequest.from_argv(argv, script_text)
    config = load_config()
    plan = plan_submission(request, config)
    interval_s = _interval_s() if plan.follow else FOLLOW_INTERVAL_S
    down = down_reason(config.controller.status_file, config.controller.heartbeat_stale_s)
    if down:
        click.echo(f"fsub: the vcluster controller is not running ({down}): the job waits "
                   "in the queue until it is back; tell your admin", err=True)
    slurm = Slurm(config.slurm)
    result = slurm.run(["sbatch", *plan.sbatch_args], input_text=plan.script_text, check=False)
    if result.stderr:
        click.echo(result.stderr, err=True, nl=False)
    if result.returncode != 0:
        if result.stdout:
            click.echo(result.stdout, nl=False)
        return result.returncode
    job_id, message = submitted_message(result.stdout, plan.parsable)
    click.echo(message, nl=False)
    sys.stdout.flush()
    if not plan.follow or job_id is None:
        return 0
    try:
        return _follow_on_terminal(slurm, job_id, interval_s).exit_code or 0
    except KeyboardInterrupt:
        click.echo(f"fsub: stopped following job {job_id}; it goes on "
                   f"(scancel {job_id} cancels it)", err=True)
        return 130


def _read_stdin_script() -> str:
    """The batch script on standard input, decoded as a script file is (UTF-8, bad bytes
    replaced). Reads sys.stdin's bytes directly: click 8.5 deprecated get_text_stream and
    click 9 removes it."""
    if sys.stdin is None:  # started with file descriptor 0 closed
        return ""
    return sys.stdin.buffer.read().decode("utf-8", errors="replace")


def _interval_s() -> float:
    text = os.environ.get("FSUB_WAIT_INTERVAL_S", "")
    try:
        interval_s = float(text) if text else FOLLOW_INTERVAL_S
    except ValueError:
        raise UserInputError(
            f"FSUB_WAIT_INTERVAL_S={text!r} is not a number of seconds") from None
    return max(interval_s, 0.05)


def main() -> None:
    fsub(prog_name="fsub")
