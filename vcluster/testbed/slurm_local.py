"""A real local Slurm on one machine: munged, slurmctld and namespace nodes, without systemd.

``up`` brings an instance up (after clearing what a previous run of the same instance left),
``down`` stops every process it started by PID and removes its namespaces and bridge, and
``status`` reports what runs. Facts this relies on are in ``slurm/TESTBED-NOTES.md``:
slurmctld starts with ``-c`` and daemons with stdin from /dev/null and output appended to
their log; nodes run ``slurmd -b`` in their own network, UTS and mount namespaces.

A PID is only signalled if its command line names this instance's slurm.conf or munge key,
so a recycled PID or another instance's daemon is never touched.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vcluster.errors import UserInputError
from vcluster.slurmconf import gres_conf, gres_types
from vcluster.testbed import netns, slurm_root
from vcluster.testbed.slurm_files import (
    STATIC_PARTITION,
    TestbedSpec,
    cgroup_conf,
    ensure_munge_key,
    instance_conf,
    load_cloud_config,
    make_dirs,
    make_spool_dirs,
    write_hook_wrappers,
)
from vcluster.testbed.slurm_procs import (
    STOP_TIMEOUT_S,
    Say,
    TestbedError,
    cmdline,
    ensure_packages,
    is_ours,
    pids_with,
    port_free,
    quiet,
    read_pid,
    read_text,
    spawn_daemon,
    wait_for,
)

CTLD_READY_TIMEOUT_S = 30.0
NODES_IDLE_TIMEOUT_S = 40.0
COMMAND_TIMEOUT_S = 15.0


@dataclass
class Daemon:
    """One process the instance started, as ``status`` reports it."""

    name: str
    pid: int | None
    alive: bool


@dataclass
class Status:
    spec: TestbedSpec
    daemons: list[Daemon] = field(default_factory=list)
    bridge_up: bool = False
    namespaces: list[str] = field(default_factory=list)
    sinfo: str = ""

    @property
    def running(self) -> bool:
        return bool(self.daemons) and all(d.alive for d in self.daemons) and self.bridge_up


# --- small helpers -----------------------------------------------------------------------


def slurm_env(spec: TestbedSpec) -> dict[str, str]:
    env = dict(os.environ)
    env["SLURM_CONF"] = str(spec.conf)
    return env


def run_slurm(spec: TestbedSpec, argv: Sequence[str], *, timeout_s: float = COMMAND_TIMEOUT_S,
              check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a Slurm client command against this instance (SLURM_CONF set)."""
    try:
        proc = subprocess.run(spec.slurm_install.client_argv(argv), capture_output=True,
                              text=True, timeout=timeout_s, env=slurm_env(spec),
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise TestbedError(f"`{' '.join(argv)}` timed out after {timeout_s:g} s; "
                           f"see {spec.log_dir}/slurmctld.log") from None
    except FileNotFoundError:
        raise TestbedError(f"`{argv[0]}` not found; run `vcluster testbed slurm up` "
                           "to install Slurm") from None
    if check and proc.returncode != 0:
        first = ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[0]
        raise TestbedError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {first}")
    return proc


# --- down ----------------------------------------------------------------------------------


def _stop_pidfile(path: Path, marker: str, what: str, say: Say) -> None:
    pid = read_pid(path)
    if is_ours(pid, marker):
        assert pid is not None
        killed = netns.terminate_pids([pid], STOP_TIMEOUT_S)
        say(f"stopped {what} (pid {pid}{', killed' if killed else ''})")
    path.unlink(missing_ok=True)


def down(spec: TestbedSpec, say: Say = quiet) -> None:
    """Stop everything the instance started and remove its kernel objects; safe to repeat."""
    conf = str(spec.conf)
    for ns in netns.list_hosts(f"{spec.name}-s"):
        if spec.static_node_re.match(ns):
            pids = netns.pids_in(ns)
            netns.delete_host(ns, ns, kill_timeout_s=STOP_TIMEOUT_S)
            say(f"removed namespace {ns}" + (f" (stopped pids {pids})" if pids else ""))
    # slurmd pid files of nodes whose namespace is already gone (their slurmd may live on)
    for pid_file in sorted((spec.root / "run").glob("slurmd-*.pid")):
        _stop_pidfile(pid_file, conf, f"slurmd {pid_file.stem[len('slurmd-'):]}", say)
    for link in netns.list_links(f"{spec.name}-s", "veth"):
        if spec.static_node_re.match(link):
            netns.delete_link(link)
            say(f"removed veth {link}")
    _stop_pidfile(spec.slurmctld_pid_file, conf, "slurmctld", say)
    _stop_pidfile(spec.munged_pid_file, str(spec.munge_key), "munged", say)
    # daemons whose pid file was lost: found by this instance's own file paths
    for marker in (conf, str(spec.munge_key)):
        for pid in pids_with(marker):
            program = os.path.basename(cmdline(pid).split(" ")[0])
            netns.terminate_pids([pid], STOP_TIMEOUT_S)
            say(f"stopped {program} (pid {pid}, its pid file was gone)")
    if netns.delete_bridge(spec.bridge):
        say(f"removed bridge {spec.bridge}")


# --- up --------------------------------------------------------------------------------------


def _start_munged(spec: TestbedSpec, env: dict[str, str]) -> int:
    m = spec.munge_key.parent
    spawn_daemon(["munged", f"--key-file={spec.munge_key}", f"--socket={spec.munge_socket}",
                   f"--pid-file={spec.munged_pid_file}", f"--log-file={m / 'munged.log'}",
                   f"--seed-file={m / 'munged.seed'}"], spec.log_dir / "munged.out", env)
    wait_for("munged", lambda: spec.munge_socket.exists(), 10.0, f"see {m / 'munged.log'}")
    pid = read_pid(spec.munged_pid_file)
    if not is_ours(pid, str(spec.munge_key)):
        raise TestbedError(f"munged exited after start; see {m / 'munged.log'}")
    assert pid is not None
    return pid


def _ctld_answers(spec: TestbedSpec) -> bool:
    proc = run_slurm(spec, ["scontrol", "ping"], timeout_s=10.0, check=False)
    return proc.returncode == 0 and " is UP" in proc.stdout


def _last_problem(log: Path) -> str:
    """The last error or fatal line of a Slurm log, without its timestamp."""
    lines = [ln for ln in read_text(log).splitlines() if "fatal" in ln or "error:" in ln]
    return lines[-1].split("] ", 1)[-1] if lines else "no error logged"


def _start_slurmctld(spec: TestbedSpec, env: dict[str, str]) -> int:
    log = spec.log_dir / "slurmctld.log"
    if not port_free(spec.port):
        raise TestbedError(f"port {spec.port} is in use (another slurmctld?); "
                           "choose another --port")
    argv = ["slurmctld", "-c", "-f", str(spec.conf)]
    spawn_daemon(spec.slurm_install.daemon_argv(argv, spec.shared_paths), log, env)
    started = time.monotonic()

    def ready() -> bool:
        if _ctld_answers(spec):
            return True
        if (time.monotonic() - started > 2.0
                and not is_ours(read_pid(spec.slurmctld_pid_file), str(spec.conf))):
            raise TestbedError(f"slurmctld exited: {_last_problem(log)}; see {log}")
        return False

    wait_for("slurmctld", ready, CTLD_READY_TIMEOUT_S, f"see {log}", interval_s=0.3)
    pid = read_pid(spec.slurmctld_pid_file)
    if not is_ours(pid, str(spec.conf)):
        raise TestbedError(f"slurmctld is not running after start; see {log}")
    assert pid is not None
    return pid


def _start_static_node(spec: TestbedSpec, index: int, env: dict[str, str]) -> None:
    node = f"{spec.name}-s{index}"
    netns.add_host(node, bridge=spec.bridge,
                   ip_cidr=f"{spec.static_node_ip(index)}/{spec.network.prefixlen}",
                   gateway=spec.gateway, veth_host=node)
    slurmd = ["slurmd", "-b", "-N", node, "-f", str(spec.conf)]
    argv = netns.host_argv(node, spec.slurm_install.daemon_argv(slurmd, spec.shared_paths),
                           hostname=node)
    spawn_daemon(argv, spec.log_dir / f"slurmd-{node}.out", env)


def static_node_states(spec: TestbedSpec) -> dict[str, str]:
    """``sinfo`` state of each static node (e.g. "idle", "down*")."""
    proc = run_slurm(spec, ["sinfo", "-h", "-N", "-p", STATIC_PARTITION, "-o", "%N %t"],
                     check=False)
    states: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def _running_as(spec: TestbedSpec) -> TestbedSpec | None:
    """The spec of the instance running now under this state dir, if it is fully up."""
    try:
        previous = TestbedSpec.from_json(spec.spec_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None
    st = status(previous, with_sinfo=False)
    return previous if st.running and _ctld_answers(previous) else None


def up(spec: TestbedSpec, say: Say = quiet) -> TestbedSpec:
    """Bring the instance up; if it already runs with the same spec, leave it as it is."""
    if os.geteuid() != 0:
        raise TestbedError("the local Slurm testbed needs root (namespaces, bridge, slurmd)")
    config = load_cloud_config(spec)
    if not spec.static_nodes and not config.node_classes:
        raise UserInputError("no nodes to run: give --static-nodes N, or --config with a "
                             "vcluster.toml that has node classes")
    programs = write_hook_wrappers(spec) if spec.config_path else None
    conf_text = instance_conf(spec, config, programs)
    if _running_as(spec) == spec and read_text(spec.conf) == conf_text:
        say(f"testbed {spec.name} already up: slurmctld at {spec.controller_address}")
        return spec
    ensure_packages(say)  # the host's munged serves either Slurm
    if not spec.slurm_install.is_host and not slurm_root.is_complete(Path(spec.slurm_root)):
        raise TestbedError(f"{spec.slurm_root} is not a complete Slurm root; build it with "
                           "`vcluster testbed slurm-root build`")
    down(spec, say)
    t0 = time.monotonic()
    make_dirs(spec)
    make_spool_dirs(spec, config)
    ensure_munge_key(spec)
    spec.conf.write_text(conf_text, encoding="utf-8")
    os.chmod(spec.conf, 0o644)
    cgroup_path = spec.conf.with_name("cgroup.conf")
    cgroup_text = cgroup_conf(spec)
    if cgroup_text is None:
        cgroup_path.unlink(missing_ok=True)
    else:
        cgroup_path.write_text(cgroup_text, encoding="utf-8")
        os.chmod(cgroup_path, 0o644)
    gres_path = spec.conf.with_name("gres.conf")  # configless slurmd fetches it too
    if gres_types(config):
        gres_path.write_text(gres_conf(config), encoding="utf-8")
        os.chmod(gres_path, 0o644)
    else:
        gres_path.unlink(missing_ok=True)
    if not spec.slurm_install.is_host:
        slurm_root.write_client_wrappers(spec.slurm_install, spec.client_bin_dir)
    spec.spec_file.write_text(spec.to_json(), encoding="utf-8")
    env = slurm_env(spec)
    netns.ensure_bridge(spec.bridge, spec.gateway_cidr)
    say(f"bridge {spec.bridge} {spec.gateway_cidr}")
    try:
        munged_pid = _start_munged(spec, env)
        say(f"munged pid {munged_pid} socket {spec.munge_socket} key {spec.munge_key}")
        ctld_pid = _start_slurmctld(spec, env)
        say(f"slurmctld pid {ctld_pid} at {spec.controller_address} (SLURM_CONF={spec.conf})")
        for i in range(1, spec.static_nodes + 1):
            _start_static_node(spec, i, env)
        if spec.static_nodes:
            names = spec.static_node_names()
            wait_for(
                "static nodes",
                lambda: all(static_node_states(spec).get(n) == "idle" for n in names),
                NODES_IDLE_TIMEOUT_S, f"see {spec.log_dir}/slurmd-*.log", interval_s=0.5)
            for i, n in enumerate(names, start=1):
                pid = read_pid(spec.slurmd_pid_file(n))
                say(f"node {n} {spec.static_node_ip(i)} idle (slurmd pid {pid})")
    except BaseException:
        down(spec)
        raise
    if config.node_classes:
        say(f"cloud nodes from {spec.config_path}: "
            + ", ".join(nc.hostlist for nc in config.node_classes)
            + f"; hook wrappers in {spec.hook_dir}")
    say(f"up in {time.monotonic() - t0:.1f} s; export SLURM_CONF={spec.conf}")
    return spec


# --- status ----------------------------------------------------------------------------------


def status(spec: TestbedSpec, *, with_sinfo: bool = True) -> Status:
    """What of this instance runs now."""
    conf = str(spec.conf)
    st = Status(spec)
    pid = read_pid(spec.munged_pid_file)
    st.daemons.append(Daemon("munged", pid, is_ours(pid, str(spec.munge_key))))
    pid = read_pid(spec.slurmctld_pid_file)
    st.daemons.append(Daemon("slurmctld", pid, is_ours(pid, conf)))
    nodes = spec.static_node_names()
    for pid_file in sorted((spec.root / "run").glob("slurmd-*.pid")):
        node = pid_file.stem[len("slurmd-"):]
        if node not in nodes:
            nodes.append(node)
    for node in nodes:
        pid = read_pid(spec.slurmd_pid_file(node))
        st.daemons.append(Daemon(f"slurmd {node}", pid, is_ours(pid, conf)))
    st.bridge_up = netns.link_exists(spec.bridge)
    st.namespaces = [n for n in netns.list_hosts(f"{spec.name}-s")
                     if spec.static_node_re.match(n)]
    if with_sinfo and st.daemons[1].alive:
        proc = run_slurm(spec, ["sinfo"], check=False, timeout_s=10.0)
        st.sinfo = (proc.stdout or proc.stderr).rstrip("\n")
    return st


def format_status(st: Status) -> str:
    spec = st.spec
    lines = [f"testbed {spec.name}: {'up' if st.running else 'not running'} "
             f"(state {spec.root}, SLURM_CONF={spec.conf})"]
    for d in st.daemons:
        state = "running" if d.alive else ("not running" if d.pid else "no pid file")
        lines.append(f"  {d.name:<20} pid {d.pid if d.pid else '-':<8} {state}")
    lines.append(f"  bridge {spec.bridge} {spec.gateway_cidr}: "
                 f"{'present' if st.bridge_up else 'absent'}")
    lines.append(f"  namespaces: {' '.join(st.namespaces) if st.namespaces else 'none'}")
    if st.sinfo:
        lines.append(st.sinfo)
    return "\n".join(lines)
