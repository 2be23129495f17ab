"""The one door to Slurm: every Slurm command vcluster runs goes through :meth:`Slurm.run`.

Slurm has no usable Python binding here (pyslurm needs a matching major.minor), so
vcluster drives Slurm's own CLI, as ParallelCluster and slurm-gcp do. Slurm 22.05 and every
later version are read: the version is read once per :class:`Slurm` (``scontrol --version``,
cached; older than 22.05 is refused) and chooses the commands (:meth:`Slurm.jobs`,
:meth:`Slurm.nodes`); the parsers read every version's JSON. ``run()`` takes an argv
list (never a shell string), resolves the command in ``settings.bin_dir`` (hooks run with no
PATH), sets ``SLURM_CONF``, applies a timeout, logs the command and its duration, and turns
every failure into :class:`~vcluster.errors.SlurmCommandError` carrying argv, exit code,
stdout and stderr. The parsers live in :mod:`vcluster.slurm_parse` and are re-exported here.
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from vcluster.config import SlurmSettings
from vcluster.errors import SlurmCommandError, SlurmParseError
from vcluster.slurm_parse import (
    FINISHED_JOB_STATES,
    Job,
    Node,
    SlurmVersion,
    UnsupportedSlurm,
    check_supported,
    compress_hostlist,
    expand_hostlist,
    node_from_record,
    parse_node_states,
    parse_nodes_json,
    parse_scontrol_record,
    parse_scontrol_records,
    parse_sinfo_json,
    parse_slurm_version,
    parse_squeue_json,
)

__all__ = [
    "FINISHED_JOB_STATES",
    "CommandResult",
    "Job",
    "Node",
    "Slurm",
    "SlurmVersion",
    "UnsupportedSlurm",
    "compress_hostlist",
    "expand_hostlist",
    "parse_nodes_json",
    "parse_scontrol_record",
    "parse_scontrol_records",
    "parse_sinfo_json",
    "parse_squeue_json",
]

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What scontrol prints (exit 1) for a node / job it does not know.
_NODE_NOT_FOUND = "not found"
_JOB_NOT_FOUND = "Invalid job id specified"
DUPLICATE_TRIGGER = "Duplicate event trigger"
"""strigger's words for a trigger slurmctld holds already (seen on 24.11 for a requeued job)."""
PROBE_CONF = "ClusterName=probe\nSlurmctldHost=localhost\n"
"""The least slurm.conf with which ``scontrol --version`` starts (it reads a config first)."""


@dataclass(frozen=True)
class CommandResult:
    """A finished Slurm command."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float


class Slurm:
    """Runs Slurm commands for one cluster (the one ``settings.conf`` describes)."""

    def __init__(self, settings: SlurmSettings, *, environ: Mapping[str, str] | None = None,
                 on_command: Callable[[str, float, bool], None] | None = None):
        self.settings = settings
        self.on_command = on_command
        """Told of every command run: (command name, seconds, failed); the controller's
        metrics. Failed: could not start, timed out, or exited non-zero."""
        env = dict(os.environ if environ is None else environ)
        env["SLURM_CONF"] = settings.conf
        if not env.get("PATH"):
            env["PATH"] = DEFAULT_PATH
        self.env = env
        self._version: SlurmVersion | None = None

    # --- the one helper -------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float | None = None,
        input_text: str | None = None,
        check: bool = True,
        stdout_file: IO[bytes] | None = None,
    ) -> CommandResult:
        """Run one Slurm command and return what it printed.

        ``argv[0]`` is a command name looked up in ``settings.bin_dir`` (or an absolute
        path). Raises :class:`SlurmCommandError` when the command cannot be started, runs
        longer than ``timeout_s`` (default ``settings.command_timeout_s``; the command and
        anything it forked are killed; ``timed_out=True``), or exits non-zero while
        ``check`` is true. With ``stdout_file``, what it prints goes to that file (the
        result's ``stdout`` is then empty, or the file's first 64 KB in an error).
        """
        if not argv:
            raise ValueError("run() needs a command")
        command = argv[0] if os.path.isabs(argv[0]) else os.path.join(
            self.settings.bin_dir, argv[0])
        full = [command, *argv[1:]]
        limit_s = self.settings.command_timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        try:
            # A session of its own, so that a timeout kills whatever the command forked too.
            proc = subprocess.Popen(
                full, stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_file is None else stdout_file,
                stderr=subprocess.PIPE, env=self.env,
                start_new_session=True,
            )
        except OSError as exc:
            self._tell(full, time.monotonic() - started, True)
            raise SlurmCommandError(
                full, None, "", str(exc),
                message=f"cannot run `{command}`: {exc.strerror}; "
                        "check slurm.bin_dir in the vcluster config",
            ) from exc
        try:
            out_b, err_b = proc.communicate(
                None if input_text is None else input_text.encode(), timeout=limit_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended just now
                pass
            out_b, err_b = proc.communicate()
            duration_s = time.monotonic() - started
            log.warning("slurm command timed out after %.3f s: %s", duration_s, full)
            self._tell(full, duration_s, True)
            raise SlurmCommandError(
                full, None, _text(out_b) or _head(stdout_file), _text(err_b), timed_out=True,
                timeout_s=limit_s,
            ) from None
        duration_s = time.monotonic() - started
        stdout = _text(out_b) if stdout_file is None or proc.returncode == 0 or not check \
            else _head(stdout_file)
        result = CommandResult(tuple(full), proc.returncode, stdout, _text(err_b), duration_s)
        log.debug("ran %s in %.3f s: exit %d", full, duration_s, proc.returncode)
        self._tell(full, duration_s, proc.returncode != 0)
        if check and proc.returncode != 0:
            raise SlurmCommandError(full, proc.returncode, result.stdout, result.stderr)
        return result

    def _tell(self, argv: Sequence[str], duration_s: float, failed: bool) -> None:
        if self.on_command is not None:
            self.on_command(os.path.basename(argv[0]), duration_s, failed)

    # --- reading ---------------------------------------------------------------------------

    def version(self) -> SlurmVersion:
        """The Slurm version (``scontrol --version``), read at first use and kept.

        Raises :class:`UnsupportedSlurm` (one line naming the version and the supported
        range) for a Slurm older than 22.05 or a version text vcluster cannot read, and
        :class:`SlurmCommandError` if scontrol cannot be run (not kept: tried again).
        """
        if self._version is None:
            if os.path.exists(self.settings.conf):
                text = self.run(["scontrol", "--version"]).stdout
            else:  # no slurm.conf yet (a site generating it): scontrol refuses to start
                with tempfile.TemporaryDirectory(prefix="vcluster-slurm-") as tmp:
                    probe = os.path.join(tmp, "slurm.conf")
                    Path(probe).write_text(PROBE_CONF, encoding="utf-8")
                    prober = Slurm(replace(self.settings, conf=probe), environ=self.env)
                    text = prober.run(["scontrol", "--version"]).stdout
            self._version = check_supported(parse_slurm_version(text))
            log.info("Slurm %s at %s", self._version, self.settings.bin_dir)
        return self._version

    def jobs(self) -> list[Job]:
        """Every job slurmctld knows, finished ones included until MinJobAge (one
        ``squeue --json --states=all``; filter in Python).

        ``--states=all``: 23.02+ apply squeue's default filter to JSON too and leave
        finished jobs out; 22.05 accepts the flag and lists the same jobs with or without it.
        """
        argv = ["squeue", "--json", "--states=all"]
        with tempfile.TemporaryFile() as out:  # no pipe buffer held in memory meanwhile
            self.run(argv, stdout_file=out)
            with _mapped(out) as text:  # mapped, not copied: see _mapped
                return parse_squeue_json(text, " ".join(argv))

    def job(self, job_id: int) -> Job | None:
        """The job (or array task) whose own job id is ``job_id``; None if Slurm forgot it.

        An array's master id names the record of its still-pending tasks while there are
        any (``array_task_string`` like ``"3-4"``), later the task that was given that id.
        """
        return next((j for j in self.jobs() if j.job_id == job_id), None)

    def nodes(self) -> list[Node]:
        """Every node, one entry per node name, sorted by name: ``sinfo --json`` on 22.05,
        ``scontrol show node --json`` on 23.02+ (whose sinfo JSON lacks addresses).

        Powered-down CLOUD nodes are listed only if slurm.conf has ``PrivateData=cloud``.
        """
        argv = (["scontrol", "show", "node", "--json"] if self.version().has_scontrol_json
                else ["sinfo", "--json"])
        with tempfile.TemporaryFile() as out:  # no pipe buffer held in memory meanwhile
            self.run(argv, stdout_file=out)
            with _mapped(out) as text:  # mapped, not copied: see _mapped
                return parse_nodes_json(text, " ".join(argv))

    def node(self, name: str) -> Node | None:
        """One node (``scontrol show node NAME -o``); None if Slurm does not know it."""
        result = self.run(["scontrol", "show", "node", name, "-o"], check=False)
        if result.returncode != 0:
            if _NODE_NOT_FOUND in result.stdout + result.stderr:
                return None
            raise SlurmCommandError(list(result.argv), result.returncode, result.stdout,
                                    result.stderr)
        for record in parse_scontrol_records(result.stdout):
            if record.get("NodeName") == name:
                return node_from_record(record)
        return None

    def show_nodes(self, names: Sequence[str]) -> list[Node]:
        """The named nodes Slurm knows, in one ``scontrol show node HOSTLIST -o`` (nodes it
        does not know are left out: scontrol prints the others and exits 1), read for their
        names and states only (:func:`~vcluster.slurm_parse.parse_node_states`: what the
        prologs' wait needs)."""
        if not names:
            return []
        result = self.run(["scontrol", "show", "node", compress_hostlist(names), "-o"],
                          check=False)
        nodes = parse_node_states(result.stdout)
        if result.returncode != 0 and not nodes and \
                _NODE_NOT_FOUND not in result.stdout + result.stderr:
            raise SlurmCommandError(list(result.argv), result.returncode, result.stdout,
                                    result.stderr)
        wanted = set(names)
        return [node for node in nodes if node.name in wanted]

    def show_job(self, job_id: int) -> dict[str, str] | None:
        """``scontrol show job J -o`` as Key=Value pairs; None if Slurm does not know J.

        For an array's master id Slurm prints one record per task; this returns the
        record whose JobId is ``job_id``, else the first.
        """
        result = self.run(["scontrol", "show", "job", str(job_id), "-o"], check=False)
        if result.returncode != 0:
            if _JOB_NOT_FOUND in result.stdout + result.stderr:
                return None
            raise SlurmCommandError(list(result.argv), result.returncode, result.stdout,
                                    result.stderr)
        records = parse_scontrol_records(result.stdout)
        if not records:
            return None
        return next((r for r in records if r.get("JobId") == str(job_id)), records[0])

    # --- writing ---------------------------------------------------------------------------

    def sbatch(self, args: Sequence[str], script_text: str | None = None) -> int:
        """Submit a batch job; return its id. ``script_text`` goes to sbatch's stdin."""
        result = self.run(["sbatch", "--parsable", *args], input_text=script_text)
        first = result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""
        job_id = first.split(";", 1)[0].strip()
        if not job_id.isdigit():
            raise SlurmParseError(
                f"sbatch --parsable printed {first!r} instead of a job id; "
                "check the sbatch arguments and slurmctld's log"
            )
        return int(job_id)

    def update_nodes(
        self,
        nodes: str | Sequence[str],
        *,
        state: str | None = None,
        reason: str | None = None,
        nodeaddr: str | None = None,
        nodehostname: str | None = None,
    ) -> None:
        """``scontrol update nodename=...``: a hostlist string or a list of node names.

        Slurm refuses ``state=DOWN``/``DRAIN`` without a reason.
        """
        names = nodes if isinstance(nodes, str) else compress_hostlist(nodes)
        if not names:
            raise ValueError("update_nodes() needs at least one node")
        fields = {"state": state, "reason": reason, "nodeaddr": nodeaddr,
                  "nodehostname": nodehostname}
        argv = ["scontrol", "update", f"nodename={names}"]
        argv += [f"{key}={value}" for key, value in fields.items() if value is not None]
        if len(argv) == 3:
            raise ValueError("update_nodes() needs at least one field to change")
        self.run(argv)

    def update_job(self, job_id: int, **fields: str) -> None:
        """``scontrol update jobid=J Key=Value ...`` (e.g. ``ReqNodeList="vc-a-[001-002]"``)."""
        if not fields:
            raise ValueError("update_job() needs at least one field to change")
        self.run(["scontrol", "update", f"jobid={job_id}",
                  *(f"{key}={value}" for key, value in fields.items())])

    def update_reservation(self, name: str, **fields: str) -> None:
        """``scontrol update ReservationName=NAME Key=Value ...`` (slurmctld runs a
        scheduling pass after any successful update)."""
        if not fields:
            raise ValueError("update_reservation() needs at least one field to change")
        self.run(["scontrol", "update", f"ReservationName={name}",
                  *(f"{key}={value}" for key, value in fields.items())])

    def hold(self, job_id: int) -> None:
        self.run(["scontrol", "hold", str(job_id)])

    def release(self, job_id: int) -> None:
        self.run(["scontrol", "release", str(job_id)])

    def suspend(self, job_id: int) -> None:
        """``scontrol suspend J``: Slurm stops the job's processes and frees its CPUs."""
        self.run(["scontrol", "suspend", str(job_id)])

    def resume(self, job_id: int) -> None:
        """``scontrol resume J``: the job's processes continue."""
        self.run(["scontrol", "resume", str(job_id)])

    def requeue(self, job_id: int) -> None:
        self.run(["scontrol", "requeue", str(job_id)])

    def cancel(self, job_id: int) -> None:
        self.run(["scancel", str(job_id)])

    def trigger_argv(self, job_id: int, program: str) -> list[str]:
        """The ``strigger`` command line of :meth:`trigger_on_job_end` (absolute path), for a
        hook program to run in its own process."""
        return [os.path.join(self.settings.bin_dir, "strigger"), "--set", f"--jobid={job_id}",
                "--fini", f"--program={program}"]

    def trigger_on_job_end(self, job_id: int, program: str) -> None:
        """Have slurmctld run ``program JOB_ID`` once the job ends (checked every 15 s).
        Idempotent: a requeued job's earlier run set the trigger already, and slurmctld
        refuses the same one again ("Duplicate event trigger"): it stands, which is the aim."""
        try:
            self.run(self.trigger_argv(job_id, program))
        except SlurmCommandError as exc:
            if DUPLICATE_TRIGGER not in f"{exc.stderr}\n{exc.stdout}":
                raise


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")


def _head(file: IO[bytes] | None) -> str:
    """The first 64 KB a command wrote to ``file`` (for an error's message)."""
    if file is None:
        return ""
    file.seek(0)
    return _text(file.read(1 << 16))


@contextmanager
def _mapped(file: IO[bytes]) -> Iterator[memoryview]:
    """The bytes of ``file`` (a command's output), mapped into
    memory for the listing readers, which take a listing whole (:mod:`vcluster.slurm_fast`
    keeps only the fields they read). Mapped rather than read: the pages are the file's and
    leave the process's memory when the map is closed, where a read copy's heap would stay
    (a 23 MB ``squeue --json`` at 10,000 nodes)."""
    file.flush()
    if os.fstat(file.fileno()).st_size == 0:
        yield memoryview(b"")
        return
    with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as pages, \
            memoryview(pages) as view:
        yield view
