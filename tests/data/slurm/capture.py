#!/usr/bin/env python3
"""Capture real Slurm outputs under tests/data/slurm/<major.minor>/ (and the throwaway cluster).

Run as root from the repository root:

    python3 tests/data/slurm/capture.py                 # the host's Slurm (22.05 on Debian 12)
    python3 tests/data/slurm/capture.py --root /var/cache/vcluster-testbed/roots/trixie  # 24.11

``--root DIR`` uses the Slurm of a Debian root built by ``vcluster.testbed.slurm_root.build``:
its client commands run on the host through their own loader and libraries (wrapper scripts
in /tmp/vca-slurm/bin, see ``SlurmRoot.client_argv``), slurmctld and slurmd run chrooted in
it (``SlurmRoot.daemon_argv``) with /tmp/vca-slurm shared, slurm.conf names the root's
PluginDir, and cgroup.conf says ``CgroupPlugin=disabled``.

It starts a private Slurm under /tmp/vca-slurm (own munged with its own key and socket,
slurmctld on port 7817, one slurmd per real node on the host with ``-N NAME`` and its own
port from 7818 up, CLOUD nodes whose ResumeProgram only copies its SLURM_RESUME_FILE so they
stay POWERING_UP, an Epilog that is slow while a marker file exists), puts jobs and nodes in
every state the parsers must read, saves each command's output verbatim, writes README.md (one
line per file), and stops every process it started by PID.

``ThrowawaySlurm`` is also what tests/integration/test_slurm_adapter.py runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from vcluster.config import SlurmSettings
from vcluster.slurm import Slurm
from vcluster.testbed.slurm_root import SlurmRoot, write_client_wrappers

ROOT = "/tmp/vca-slurm"
CTLD_PORT = 7817
FIRST_SLURMD_PORT = 7818


class ThrowawaySlurm:
    """munged + slurmctld + one slurmd per real node, all children of this process."""

    def __init__(
        self,
        root: str = ROOT,
        real_nodes: Sequence[str] = ("vca-r1", "vca-r2"),
        cloud_nodes: Sequence[str] = ("vca-c1", "vca-c2"),
        *,
        real_features: dict[str, str] | None = None,
        slurm_root: str = "/",
    ) -> None:
        self.root = Path(root)
        self.slurm_root = SlurmRoot(slurm_root)
        """The Slurm installation run: the host's (``/``) or a Debian root's."""
        self.real_nodes = list(real_nodes)
        self.cloud_nodes = list(cloud_nodes)
        self.real_features = real_features or {}
        self.conf = str(self.root / "slurm.conf")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "SLURM_CONF": self.conf,
            "LANG": "C.UTF-8",
        }
        bin_dir = "/usr/bin" if self.slurm_root.is_host else str(self.root / "bin")
        self.slurm = Slurm(SlurmSettings(conf=self.conf, bin_dir=bin_dir, command_timeout_s=20),
                           environ=self.env)

    # --- files -----------------------------------------------------------------------------

    def _write_files(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        for sub in ("munge", "state", "log", "run", "spool", "resume-files"):
            (self.root / sub).mkdir(parents=True)
        for name in self.real_nodes:  # slurmd 24.11 does not create its SlurmdSpoolDir
            (self.root / "spool" / f"slurmd-{name}").mkdir()
        os.chmod(self.root, 0o755)
        os.chmod(self.root / "munge", 0o755)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        for name in ("resume", "suspend"):
            script = self.root / f"{name}.sh"
            # Does nothing else: a resumed CLOUD node stays POWERING_UP until ResumeTimeout.
            # slurmctld holds SLURM_RESUME_FILE open only while ResumeProgram runs: copy it.
            copy = ('[ -n "$SLURM_RESUME_FILE" ] && /bin/cp "$SLURM_RESUME_FILE" '
                    f'{self.root}/resume-files/resume-$$.json\n') if name == "resume" else ""
            script.write_text(f"#!/bin/sh\n{copy}echo \"$(date +%s) {name} $1\" >> "
                              f"{self.root}/log/{name}.log\nexit 0\n")
            os.chmod(script, 0o755)
        epilog = self.root / "epilog.sh"
        # Keeps a job COMPLETING for a while, only while the marker file exists.
        epilog.write_text(f"#!/bin/sh\n[ -e {self.root}/slow-epilog ] && /bin/sleep 15\n"
                          "exit 0\n")
        os.chmod(epilog, 0o755)
        if not self.slurm_root.is_host:
            # slurmd 24.11 needs a cgroup plugin unless told there is none.
            (self.root / "cgroup.conf").write_text("CgroupPlugin=disabled\n")
            write_client_wrappers(self.slurm_root, self.root / "bin")
        lines = [
            "ClusterName=vca",
            # slurmctld only starts on the host SlurmctldHost names.
            f"SlurmctldHost={socket.gethostname().split('.')[0]}(127.0.0.1)",
            "MailProg=/bin/true",
            f"SlurmctldPort={CTLD_PORT}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.root}/munge/munge.socket",
            f"StateSaveLocation={self.root}/state",
            f"SlurmctldPidFile={self.root}/run/slurmctld.pid",
            f"SlurmctldLogFile={self.root}/log/slurmctld.log",
            f"SlurmdSpoolDir={self.root}/spool/slurmd-%n",
            f"SlurmdPidFile={self.root}/run/slurmd-%n.pid",
            f"SlurmdLogFile={self.root}/log/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerParameters=batch_sched_delay=0,sched_interval=5",
            "ReturnToService=2",
            "DefMemPerCPU=100",
            "PrivateData=cloud",
            "TreeWidth=65533",
            "SlurmdParameters=config_overrides",
            "SlurmctldParameters=power_save_interval=1",
            "MpiDefault=none",
            f"ResumeProgram={self.root}/resume.sh",
            f"SuspendProgram={self.root}/suspend.sh",
            "SuspendTime=3600",
            "SuspendTimeout=5",
            "ResumeTimeout=300",
            "SuspendRate=0",
            "ResumeRate=0",
            "MinJobAge=600",
            f"Epilog={self.root}/epilog.sh",
        ]
        if not self.slurm_root.is_host:
            lines.append(f"PluginDir={self.slurm_root.plugin_dir}")
        if self.real_nodes:
            lines.append("SuspendExcNodes=" + ",".join(self.real_nodes))
        port = FIRST_SLURMD_PORT
        for name in self.real_nodes:
            feature = self.real_features.get(name)
            lines.append(
                f"NodeName={name} NodeAddr=127.0.0.1 NodeHostname={name} Port={port} CPUs=2 "
                f"RealMemory=1000" + (f" Feature={feature}" if feature else "")
            )
            port += 1
        for name in self.cloud_nodes:
            lines.append(
                f"NodeName={name} NodeAddr=127.0.0.1 NodeHostname={name} Port={port} CPUs=2 "
                "RealMemory=2000 State=CLOUD Feature=cloud"
            )
            port += 1
        all_nodes = ",".join(self.real_nodes + self.cloud_nodes)
        lines.append(f"PartitionName=debug Nodes={all_nodes} Default=YES MaxTime=INFINITE "
                     "State=UP")
        Path(self.conf).write_text("\n".join(lines) + "\n")

    # --- processes ---------------------------------------------------------------------------

    def _spawn(self, key: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{key}.out", "ab")
        try:
            self.procs[key] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                               stderr=log, env=self.env)
        finally:
            log.close()

    def start(self) -> None:
        self._write_files()
        m = self.root / "munge"
        self._spawn("munged", [
            "/usr/sbin/munged", "-F", "--force", f"--socket={m}/munge.socket",
            f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid",
            f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed",
        ])
        wait_until(lambda: (m / "munge.socket").exists(), 10, "munged socket")
        self._spawn("slurmctld", self._daemon(["/usr/sbin/slurmctld", "-D", "-c", "-f",
                                               self.conf]))
        wait_until(self._ctld_up, 20, "slurmctld to answer")
        for name in self.real_nodes:
            self._spawn(f"slurmd-{name}", self._daemon(["/usr/sbin/slurmd", "-D", "-f", self.conf,
                                                        "-N", name]))
        wait_until(self._real_nodes_idle, 30, "slurmd nodes to register")

    def _daemon(self, argv: list[str]) -> list[str]:
        """The daemon's argv: as is for the host's Slurm, chrooted in a Debian root else."""
        return self.slurm_root.daemon_argv(argv, [str(self.root)])

    def _ctld_up(self) -> bool:
        self._check_alive()
        return self.slurm.run(["scontrol", "ping"], check=False).returncode == 0

    def _real_nodes_idle(self) -> bool:
        self._check_alive()
        states = {n.name: n.state for n in self.slurm.nodes()}
        return all(states.get(name) == "IDLE" for name in self.real_nodes)

    def _check_alive(self) -> None:
        for key, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{key} exited with {proc.returncode}; see {self.root}/log")

    def stop(self) -> None:
        """Cancel every job, then stop slurmds, slurmctld and munged by PID."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                self.slurm.run(["scancel", "--full", "--user=root"], check=False)
                wait_until(lambda: not [j for j in self.slurm.jobs() if not j.is_finished],
                           20, "jobs to end")
            except Exception as exc:
                print(f"warning: cancelling jobs: {exc}", file=sys.stderr)
        order = [k for k in self.procs if k.startswith("slurmd-")] + ["slurmctld", "munged"]
        for key in order:
            proc = self.procs.get(key)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        self._kill_job_leftovers()

    def _kill_job_leftovers(self) -> None:
        """slurmstepd and job processes re-parent to init: find ours by our SLURM_CONF."""
        marker = f"SLURM_CONF={self.conf}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environ:
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def __enter__(self) -> ThrowawaySlurm:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.3)


# --- the capture ---------------------------------------------------------------------------

REAL = ["vca-r1", "vca-r2", "vca-r3", "vca-r4", "vca-r5", "vca-r6"]
CLOUD = ["vca-c1", "vca-c2", "vca-c3", "vca-c4"]


def capture(base_dir: Path, slurm_root: str = "/") -> Path:
    """Capture into ``base_dir/<major.minor>/`` of the Slurm in ``slurm_root``; return it."""
    readme: list[str] = []
    with ThrowawaySlurm(real_nodes=REAL, cloud_nodes=CLOUD,
                        real_features={"vca-r1": "fast,big"}, slurm_root=slurm_root) as cluster:
        s = cluster.slurm
        version = s.version()
        out_dir = base_dir / version.release
        out_dir.mkdir(exist_ok=True)
        for old in out_dir.iterdir():
            if old.suffix in (".json", ".txt", ".stderr"):
                old.unlink()

        def save(name: str, argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
            result = s.run(argv, check=False)
            (out_dir / name).write_text(result.stdout)
            if result.stderr:
                (out_dir / (name + ".stderr")).write_text(result.stderr)
            line = f"- `{name}`: `{' '.join(argv)}` (exit {result.returncode}) - {what}"
            readme.append(line)
            print(line)
            return subprocess.CompletedProcess(argv, result.returncode, result.stdout,
                                               result.stderr)

        save("squeue-empty.json", ["squeue", "--json"], "no jobs at all")
        save("sinfo-start.json", ["sinfo", "--json"],
             "6 real nodes idle, 4 CLOUD nodes idle~ (powered down), before any job")
        if version.has_scontrol_json:
            save("scontrol-show-node-start.json", ["scontrol", "show", "node", "--json"],
                 "the same moment, as vcluster lists nodes on 23.02+")
        ids: dict[str, int] = {}
        work = cluster.root / "work"
        work.mkdir()

        def submit(key: str, *args: str) -> None:
            ids[key] = s.sbatch([f"--chdir={work}", "-J", key, *args])

        submit("completed", "-w", "vca-r4", "--wrap", "true")
        submit("failed", "-w", "vca-r4", "--wrap", "exit 3")
        submit("killed", "-w", "vca-r4", "--wrap", "kill -KILL $$")
        wait_until(lambda: all(j.is_finished for j in s.jobs()), 30, "short jobs to end")
        ids["big"] = s.sbatch([
            "-J", "bigjob", "-c", "2", "--mem=200", "--constraint=fast",
            "--comment=vcluster[template=big] my own words", f"--chdir={cluster.root}",
            "--wrap", "sleep 600",
        ])
        submit("array", "--array=1-4", "-c", "1", "-w", "vca-r2", "--wrap", "sleep 600")
        submit("mixed", "-c", "1", "--mem-per-cpu=150", "-w", "vca-r3", "--wrap", "sleep 600")
        submit("held", "-H", "--wrap", "true")
        submit("waits", "-w", "vca-r1", "--wrap", "true")
        submit("cancelled", "-H", "--wrap", "true")
        s.cancel(ids["cancelled"])
        submit("tasks2", "-H", "-N", "1", "-n", "2", "--ntasks-per-node=2", "-c", "1",
               "--wrap", "true")
        submit("c3n2", "-H", "-n", "2", "-c", "3", "--wrap", "true")
        submit("cloud", "--constraint=cloud", "-c", "1", "--wrap", "sleep 600")
        s.update_nodes("vca-r5", state="DRAIN", reason="maintenance window")
        s.update_nodes(["vca-r6"], state="DOWN", reason="disk failed")

        def settled() -> bool:
            jobs = {j.job_id: j for j in s.jobs()}
            nodes = {n.name: n for n in s.nodes()}
            return (jobs[ids["big"]].state == "RUNNING"
                    and jobs[ids["mixed"]].state == "RUNNING"
                    and sum(j.state == "RUNNING" for j in jobs.values()
                            if j.array_job_id == ids["array"]) == 2
                    and any(n.powering_up for n in nodes.values()))
        wait_until(settled, 30, "jobs to start and a CLOUD node to power up")
        readme.append(f"- job ids in these captures: {json.dumps(ids)}")
        save("squeue.json", ["squeue", "--json"],
             "completed, failed (exit 3), killed (SIGKILL), running (-c2 --mem=200 "
             "--constraint --comment --chdir), array 1-4 (2 running, 3-4 pending), "
             "mem-per-cpu, held, pending Resources, cancelled, held -n2 --ntasks-per-node=2, "
             "held -n2 -c3, CONFIGURING on a CLOUD node (23.02+: finished jobs left out)")
        save("squeue-all.json", ["squeue", "--json", "--states=all"],
             "the same moment with every state: what vcluster runs on 23.02+")
        save("sinfo.json", ["sinfo", "--json"],
             "allocated r1+r2, mixed r3, idle r4, drained r5, down r6 with reason, "
             "c1 powering up, c2-c4 powered down (23.02+: grouped, no `nodes` list)")
        save("scontrol-show-node.json", ["scontrol", "show", "node", "--json"],
             "the same nodes, one record each: what vcluster runs on 23.02+ (none in 22.05)")
        save("scontrol-show-job.json", ["scontrol", "show", "job", "--json"],
             "every job as JSON (none in 22.05)")
        wait_until(lambda: any((cluster.root / "resume-files").glob("*.json")), 10,
                   "ResumeProgram's copy of SLURM_RESUME_FILE")
        copies = sorted((cluster.root / "resume-files").glob("*.json"))
        if copies:
            shutil.copyfile(copies[0], out_dir / "resume-file.json")
            readme.append("- `resume-file.json`: a copy of `$SLURM_RESUME_FILE` made by "
                          "ResumeProgram when the CLOUD job was allocated vca-c1")
        save("scontrol-show-job.txt", ["scontrol", "show", "job", "-o"], "every job, one line each")
        save("scontrol-show-job-big.txt", ["scontrol", "show", "job", str(ids["big"]), "-o"],
             "the running job with a comment holding spaces")
        save("scontrol-show-job-array.txt", ["scontrol", "show", "job", str(ids["array"]), "-o"],
             "an array's master id: one record per task (pending 3-4 as one)")
        save("scontrol-show-job-missing.txt", ["scontrol", "show", "job", "999999", "-o"],
             "a job id Slurm does not know")
        save("scontrol-show-node.txt", ["scontrol", "show", "node", "-o"],
             "every node, one line each")
        save("scontrol-show-node-vca-c1.txt", ["scontrol", "show", "node", "vca-c1", "-o"],
             "a CLOUD node powering up")
        save("scontrol-show-node-vca-c3.txt", ["scontrol", "show", "node", "vca-c3", "-o"],
             "a CLOUD node powered down")
        save("scontrol-show-node-vca-r6.txt", ["scontrol", "show", "node", "vca-r6", "-o"],
             "a node down with a reason")
        save("scontrol-show-node-missing.txt", ["scontrol", "show", "node", "nosuch", "-o"],
             "a node Slurm does not know")
        save("sbatch-parsable.txt", ["sbatch", "--parsable", "-H", "--wrap", "true"],
             "what sbatch --parsable prints")
        save("sbatch-bad-feature.txt",
             ["sbatch", "--parsable", "--constraint=nosuch", "--wrap", "true"],
             "a feature no node has")
        save("scontrol-version.txt", ["scontrol", "--version"], "the Slurm version captured")
        s.update_nodes("vca-c1", state="POWER_DOWN_FORCE")
        wait_until(lambda: any(n.powering_down for n in s.nodes()), 10, "c1 to power down")
        save("sinfo-powering-down.json", ["sinfo", "--json"],
             "after `scontrol update nodename=vca-c1 state=POWER_DOWN_FORCE`: c1 powering down")
        if version.has_scontrol_json:
            save("scontrol-show-node-powering-down.json", ["scontrol", "show", "node", "--json"],
                 "the same moment, as vcluster lists nodes on 23.02+")
        save("squeue-requeued.json", ["squeue", "--json"],
             "the same moment: the CLOUD job requeued by the forced power down")
        (cluster.root / "slow-epilog").touch()
        ids["completing"] = s.sbatch([f"--chdir={work}", "-J", "completing", "-w", "vca-r4",
                                      "--wrap", "sleep 600"])
        wait_until(lambda: _state(s, ids["completing"]) == "RUNNING", 20, "a job on r4 to run")
        s.cancel(ids["completing"])
        wait_until(lambda: _state(s, ids["completing"]) == "COMPLETING", 10, "COMPLETING")
        save("squeue-completing.json", ["squeue", "--json"],
             f"job {ids['completing']} cancelled while running, its Epilog still running "
             "(15 s): COMPLETING")
        (cluster.root / "slow-epilog").unlink()
    header = [
        f"# Captured Slurm {version.release} outputs",
        "",
        "Written by `python3 tests/data/slurm/capture.py"
        + ("" if cluster.slurm_root.is_host else f" --root {slurm_root}")
        + "` (run as root from the",
        f"repository root) against Slurm {version}; each file is the verbatim stdout of the",
        "command (stderr, if any, in `NAME.stderr`). Re-capturing keeps the job ids but changes",
        "the times. The cluster: see `ThrowawaySlurm` in capture.py (nodes vca-r[1-6] with 2",
        "CPUs, 1000 MB, r1 Feature=fast,big; CLOUD nodes vca-c[1-4] 2 CPUs, 2000 MB,",
        "Feature=cloud).",
        "",
    ]
    (out_dir / "README.md").write_text("\n".join(header + readme) + "\n")
    return out_dir


def _state(s: Slurm, job_id: int) -> str:
    job = s.job(job_id)
    return job.state if job is not None else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="/", metavar="DIR",
                        help="a Debian root with another Slurm (default: the host's Slurm)")
    args = parser.parse_args()
    print(f"captured into {capture(Path(__file__).resolve().parent, args.root)}")


if __name__ == "__main__":
    main()
