"""A whole vcluster site on one machine: local Slurm + the embedded cloud + the controller.

``vcluster testbed up`` writes a site configuration (the same ``vcluster.toml`` a real site
writes, pointing at the local Slurm and the local cloud), brings up the local Slurm with the
config's node classes as CLOUD nodes, starts the OpenNebula-compatible server with the
``netns`` driver on the same bridge, creates the worker VM template through the XML-RPC API,
and starts ``vcluster controller run``. ``down`` undoes all of it, by PID and by this
instance's names only, and is safe to run twice.

Layout of the state directory (default ``/var/lib/vcluster-testbed/<name>``)::

    vcluster.toml  one_auth (0600)  vcluster.db
    slurm/         the local Slurm instance (slurm.conf, munge key, logs, spool)
    cloud/         the cloud server's state and VM directories
    run/           pid files of the cloud server and the controller
    log/           cloud.log, controller.log, hook logs
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from vcluster.config import load_config, read_one_auth
from vcluster.errors import OneError, VclusterError
from vcluster.one import OneClient
from vcluster.testbed import slurm_local
from vcluster.testbed.free_ports import choose_port
from vcluster.testbed.site_spec import (
    GPU_PCI_DEVICE,
    WORKER_TEMPLATE,
    SiteSpec,
    site_config_text,
    worker_template_text,
)
from vcluster.testbed.slurm_procs import is_ours, quiet, read_pid

__all__ = [  # the spec and texts of vcluster.testbed.site_spec (import them from here)
    "GPU_PCI_DEVICE",
    "WORKER_TEMPLATE",
    "SiteSpec",
    "site_config_text",
    "worker_template_text",
    # and its own
    "CLOUD_START_TIMEOUT_S",
    "CONTROLLER_START_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "Say",
    "SiteError",
    "SiteStatus",
    "choose_ports",
    "down",
    "format_status",
    "start_controller",
    "status",
    "stop_controller",
    "up",
]

Say = Callable[[str], None]

CLOUD_START_TIMEOUT_S = 20.0
CONTROLLER_START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


class SiteError(VclusterError):
    """The testbed site could not be brought up or down."""


# --- processes --------------------------------------------------------------------------------


def _spawn(argv: list[str], log: Path, pid_file: Path, env: dict[str, str]
           ) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    pid_file.write_text(f"{proc.pid}\n")
    return proc


def _stop(pid_file: Path, marker: str, what: str, say: Say) -> None:
    pid = read_pid(pid_file)
    if is_ours(pid, marker):
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while is_ours(pid, marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        if is_ours(pid, marker):
            os.kill(pid, signal.SIGKILL)
        say(f"stopped {what} (pid {pid})")
    pid_file.unlink(missing_ok=True)


def _wait(what: str, check: Callable[[], bool], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise SiteError(f"{what} not ready after {timeout_s:g} s; see {log}"
                            + (f" (last line: {tail[0]})" if tail else ""))
        time.sleep(0.2)


def _env(spec: SiteSpec) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "ONE_"))}
    env["VCLUSTER_CONFIG"] = str(spec.config_path)
    env["SLURM_CONF"] = str(spec.slurm.conf)
    return env


def _vcluster_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "vcluster", *args]


# --- up / down / status ------------------------------------------------------------------------


def choose_ports(spec: SiteSpec, fixed: Collection[str] = (), say: Say = quiet) -> SiteSpec:
    """The spec with free ports for the cloud's XML-RPC and OneGate (see :func:`choose_port`);
    ``fixed`` names the fields the user set (``one_port``, ``onegate_port``)."""
    one_port = choose_port(spec.one_port, what="OpenNebula XML-RPC", option="--one-port",
                           fixed="one_port" in fixed)
    onegate_port = choose_port(spec.onegate_port, what="OneGate", option="--onegate-port",
                               fixed="onegate_port" in fixed, avoid={one_port})
    events_port = choose_port(spec.events_port, what="OpenNebula events", option="",
                              fixed=False, avoid={one_port, onegate_port})
    for old, new, what, option in ((spec.one_port, one_port, "XML-RPC", "--one-port"),
                                   (spec.onegate_port, onegate_port, "OneGate",
                                    "--onegate-port")):
        if new != old:
            say(f"port {old} is in use (an oned?): the cloud's {what} uses port {new} "
                f"({option} to choose)")
    return dataclasses.replace(spec, one_port=one_port, onegate_port=onegate_port,
                               events_port=events_port)


def up(spec: SiteSpec, say: Say = quiet, *, fixed_ports: Collection[str] = ()) -> None:
    """Bring the whole site up; clears this instance's leftovers first.

    The cloud's ports move up to free ones when taken (an oned on this machine holds 2633),
    except those named in ``fixed_ports`` (``one_port``, ``onegate_port``: the user chose
    them), which are refused with the option to change them.
    """
    if os.geteuid() != 0:
        raise SiteError("the testbed needs root (namespaces, bridge, slurmd); run it as root")
    down(spec, say=quiet)
    spec = choose_ports(spec, fixed_ports, say)
    t0 = time.monotonic()
    for sub in ("run", "log", "controller", "cloud"):
        (spec.root / sub).mkdir(parents=True, exist_ok=True)
    if not spec.auth_file.exists():
        fd = os.open(spec.auth_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"oneadmin:{secrets.token_hex(16)}\n")
    spec.config_path.write_text(site_config_text(spec), encoding="utf-8")
    os.chmod(spec.config_path, 0o644)
    try:
        slurm_local.up(spec.slurm, say=say)
        _start_cloud(spec, say)
        _ensure_worker_template(spec, say)
        start_controller(spec, say)
    except BaseException:
        down(spec)
        raise
    say(f"testbed {spec.name} up in {time.monotonic() - t0:.1f} s")
    say(f"  export VCLUSTER_CONFIG={spec.config_path} SLURM_CONF={spec.slurm.conf}")
    if spec.slurm_root:
        say(f"  export PATH={spec.slurm.client_bin_dir}:$PATH   # Slurm "
            f"{spec.slurm.slurm_install.version()}'s commands (sinfo, squeue...)")


def _start_cloud(spec: SiteSpec, say: Say) -> None:
    argv = _vcluster_argv(
        "testbed", "cloud", "serve", "--driver", spec.driver,
        "--port", str(spec.one_port), "--state-dir", str(spec.root / "cloud"),
        "--auth-file", str(spec.auth_file), "--prefix", spec.name,
        "--bridge", spec.slurm.bridge, "--subnet", spec.subnet,
        "--onegate-host", spec.gateway, "--onegate-port", str(spec.onegate_port),
        "--events-port", str(spec.events_port),
        "--boot-s", str(spec.boot_s), "--hosts", str(spec.hosts),
    )
    if spec.driver == "dummy":  # VMs that cost nothing: room for one per node, and a few more
        vms = spec.per_job_nodes + spec.pool_nodes + spec.gpu_nodes + spec.standby + 8
        argv += ["--host-cpu", str(100 * vms), "--host-mem", str(512 * 1024 * vms)]
    for _ in range(spec.gpu_nodes):
        argv += ["--pci", f"host0={GPU_PCI_DEVICE}"]
    if spec.image_name:
        argv += ["--image", f"{spec.image_name}={spec.slurm_root}"]
        for shared in ("/home", "/tmp", str(spec.root)):
            argv += ["--share", shared]
    log = spec.log_file("cloud")
    proc = _spawn(argv, log, spec.pid_file("cloud"), _env(spec))
    pid = proc.pid
    settings = load_config(spec.config_path, environ={}).opennebula
    client = OneClient(dataclasses.replace(settings, retry_delays_s=(), timeout_s=2.0))

    def answers() -> bool:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:]
            raise SiteError(f"the cloud server exited at start ({proc.returncode}"
                            + (f": {tail[0]}" if tail else "") + f"); see {log}")
        try:  # a bare connect first: no retry warnings while the server is still starting
            socket.create_connection(("127.0.0.1", spec.one_port), timeout=1).close()
            client.version()
        except (OSError, OneError):
            return False
        return True

    _wait("the cloud server", answers, CLOUD_START_TIMEOUT_S, log)
    say(f"cloud pid {pid}: OpenNebula XML-RPC at {spec.xmlrpc}, "
        f"OneGate at http://{spec.gateway}:{spec.onegate_port}, {spec.driver} VMs on "
        f"{spec.slurm.bridge}")


def _ensure_worker_template(spec: SiteSpec, say: Say) -> None:
    import pyone  # the real client, as an admin registering a template would use it

    session = read_one_auth(str(spec.auth_file))
    server = pyone.OneServer(spec.xmlrpc, session=session)
    pool = server.templatepool.info(-2, -1, -1)
    for name in dict.fromkeys((WORKER_TEMPLATE, spec.pool_template or WORKER_TEMPLATE)):
        found = [tmpl.ID for tmpl in pool.VMTEMPLATE or [] if tmpl.NAME == name]
        if found:
            say(f"template {name} is id {found[0]}")
            continue
        tid = server.template.allocate(worker_template_text(spec, name))
        say(f"template {name} registered as id {tid}")


def start_controller(spec: SiteSpec, say: Say = quiet) -> None:
    """Start ``vcluster controller run`` in the background; wait for its first heartbeat."""
    argv = _vcluster_argv("--config", str(spec.config_path), "controller", "run")
    log = spec.log_file("controller")
    proc = _spawn(argv, log, spec.pid_file("controller"), _env(spec))
    pid = proc.pid
    from vcluster import db

    config = load_config(spec.config_path, environ={})
    factory = db.session_factory(db.make_engine(config.database))

    def beating() -> bool:
        if proc.poll() is not None:
            raise SiteError(f"the controller exited at start ({proc.returncode}); see {log}")
        with db.transaction(factory) as session:
            hb = db.heartbeat(session)
            return hb is not None and hb.pid == pid

    _wait("the controller", beating, CONTROLLER_START_TIMEOUT_S, log)
    say(f"controller pid {pid} (log {log})")


def stop_controller(spec: SiteSpec, say: Say = quiet) -> None:
    """Stop the controller (SIGTERM: it finishes its pass). VMs and Slurm carry on."""
    _stop(spec.pid_file("controller"), spec.controller_marker, "controller", say)


def down(spec: SiteSpec, say: Say = quiet) -> None:
    """Stop the controller, terminate every VM, stop the cloud and Slurm. Safe twice."""
    stop_controller(spec, say)
    if is_ours(read_pid(spec.pid_file("cloud")), spec.cloud_marker):
        _terminate_all_vms(spec, say)
    _stop(spec.pid_file("cloud"), spec.cloud_marker, "cloud server", say)
    from vcluster.testbed.cloud.drivers.netns import NetnsDriver

    # VMs the cloud could not terminate (it was not running): remove by this site's naming
    NetnsDriver(state_dir=spec.root / "cloud", prefix=spec.name).cleanup_stale(set())
    slurm_local.down(spec.slurm, say=say)


def _terminate_all_vms(spec: SiteSpec, say: Say) -> None:
    try:
        config = load_config(spec.config_path, environ={})
        client = OneClient(config.opennebula)
        vms = [vm for vm in client.vms() if not vm.is_gone]
        for vm in vms:
            client.terminate(vm.vm_id, hard=True)
        deadline = time.monotonic() + 20
        while vms and time.monotonic() < deadline:
            vms = [vm for vm in client.vms() if not vm.is_gone]
            time.sleep(0.3)
        say("terminated every VM" if not vms else f"{len(vms)} VMs still shutting down")
    except VclusterError as exc:
        say(f"could not terminate VMs through the API ({exc}); removing them by name")


@dataclass
class SiteStatus:
    slurm: str
    cloud_pid: int | None
    cloud_alive: bool
    controller_pid: int | None
    controller_alive: bool
    vms: list[str]


def status(spec: SiteSpec) -> SiteStatus:
    slurm_text = slurm_local.format_status(slurm_local.status(spec.slurm))
    cloud_pid = read_pid(spec.pid_file("cloud"))
    ctl_pid = read_pid(spec.pid_file("controller"))
    vms: list[str] = []
    cloud_alive = is_ours(cloud_pid, spec.cloud_marker)
    if cloud_alive:
        try:
            config = load_config(spec.config_path, environ={})
            for vm in OneClient(config.opennebula).vms():
                if not vm.is_gone:
                    node = vm.user_template.get("VCLUSTER_NODE", "-")
                    vms.append(f"{vm.vm_id:>5} {vm.name:<24} {vm.state_name:<14} "
                               f"{','.join(vm.ips) or '-':<15} node {node}")
        except VclusterError as exc:
            vms.append(f"(cannot list VMs: {exc})")
    return SiteStatus(slurm_text, cloud_pid, cloud_alive, ctl_pid,
                      is_ours(ctl_pid, spec.controller_marker), vms)


def format_status(spec: SiteSpec, st: SiteStatus) -> str:
    def proc(name: str, pid: int | None, alive: bool) -> str:
        return f"  {name:<20} pid {pid or '-':<8} {'running' if alive else 'not running'}"

    lines = [st.slurm, f"site {spec.name} (config {spec.config_path}):",
             proc("cloud server", st.cloud_pid, st.cloud_alive),
             proc("controller", st.controller_pid, st.controller_alive),
             f"  VMs: {len(st.vms) if st.vms else 'none'}"]
    lines += [f"    {line}" for line in st.vms]
    return "\n".join(lines)
