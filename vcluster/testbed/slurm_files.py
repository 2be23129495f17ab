"""What a local Slurm testbed instance is made of: names, addresses, paths and files.

One instance (default ``vc``) owns a bridge, a subnet, a slurmctld port and a state directory;
every kernel object it creates starts with its name, so several instances (one per developer
or test suite) share a machine without touching each other. This module derives all of those
names and writes the instance's files: slurm.conf (the testbed's own settings, measured in
``slurm/TESTBED-NOTES.md``, plus the cloud lines from :mod:`vcluster.slurmconf`, the generator
a real site uses), the munge key, and the hook wrappers slurmctld runs.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import secrets
import shlex
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from vcluster.config import Config, load_config, parse_config
from vcluster.errors import UserInputError
from vcluster.slurm_parse import expand_hostlist
from vcluster.slurmconf import PROGRAM_NAMES, HookPrograms, default_program_dir, generate
from vcluster.testbed.slurm_root import DONE_MARKER, SlurmRoot

log = logging.getLogger(__name__)

DEFAULT_NAME = "vc"
DEFAULT_SUBNET = "10.111.0.0/24"
DEFAULT_PORT = 6817
STATE_ROOT = "/var/lib/vcluster-testbed"
STATIC_PARTITION = "static"
STATIC_FIRST_HOST = 11
"""Static node i gets host number 10 + i; the cloud's leases start at .100."""
STATIC_CPUS = 2
STATIC_MEMORY_MB = 2048
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")


@dataclass(frozen=True)
class TestbedSpec:
    """What ``vcluster testbed slurm up`` was asked to run."""

    __test__ = False  # not a pytest class

    name: str = DEFAULT_NAME
    subnet: str = DEFAULT_SUBNET
    port: int = DEFAULT_PORT
    state_dir: str = ""
    """Default: ``/var/lib/vcluster-testbed/<name>``."""
    static_nodes: int = 0
    config_path: str = ""
    """A vcluster.toml whose node classes become CLOUD nodes; "" for none."""
    program_dir: str = ""
    """Where the hook wrappers are written; default ``<state_dir>/bin``."""
    slurm_root: str = ""
    """A Debian root with another Slurm (:mod:`vcluster.testbed.slurm_root`); "" for the
    host's own Slurm."""

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise UserInputError(
                f"instance name {self.name!r} must be 1-10 lower-case letters or digits, "
                "starting with a letter (it prefixes kernel objects of at most 15 characters)"
            )
        try:
            net = ipaddress.ip_network(self.subnet)
        except ValueError:
            raise UserInputError(
                f"subnet {self.subnet!r} is not a network such as 10.111.0.0/24"
            ) from None
        if net.version != 4 or net.prefixlen > 25:
            raise UserInputError(f"subnet {self.subnet!r} must be IPv4, /25 or larger")
        if not 0 <= self.static_nodes <= 89:
            raise UserInputError("--static-nodes must be between 0 and 89")
        if not 1024 <= self.port <= 65535:
            raise UserInputError(f"port {self.port} must be between 1024 and 65535")

    # --- names and addresses --------------------------------------------------------------

    @property
    def bridge(self) -> str:
        return f"{self.name}br0"

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        """The bridge's address, where slurmctld listens."""
        return str(self.network.network_address + 1)

    @property
    def gateway_cidr(self) -> str:
        return f"{self.gateway}/{self.network.prefixlen}"

    @property
    def static_node_re(self) -> re.Pattern[str]:
        return re.compile(rf"^{re.escape(self.name)}-s\d+$")

    def static_node_names(self) -> list[str]:
        return [f"{self.name}-s{i}" for i in range(1, self.static_nodes + 1)]

    def static_node_ip(self, index: int) -> str:
        return str(self.network.network_address + STATIC_FIRST_HOST - 1 + index)

    @property
    def static_hostlist(self) -> str:
        if self.static_nodes == 1:
            return f"{self.name}-s1"
        return f"{self.name}-s[1-{self.static_nodes}]"

    @property
    def controller_address(self) -> str:
        """``host:port`` of slurmctld, for configless slurmd and vcluster.toml."""
        return f"{self.gateway}:{self.port}"

    # --- paths -------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return Path(self.state_dir or os.path.join(STATE_ROOT, self.name)).absolute()

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def munge_key(self) -> Path:
        return self.root / "munge" / "munge.key"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "run" / "munge.socket"

    @property
    def munged_pid_file(self) -> Path:
        return self.root / "munge" / "munged.pid"

    @property
    def slurmctld_pid_file(self) -> Path:
        return self.root / "run" / "slurmctld.pid"

    def slurmd_pid_file(self, node: str) -> Path:
        return self.root / "run" / f"slurmd-{node}.pid"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def spec_file(self) -> Path:
        return self.root / "testbed.json"

    @property
    def slurm_install(self) -> SlurmRoot:
        return SlurmRoot(self.slurm_root or "/")

    @property
    def client_bin_dir(self) -> Path:
        """Where the Slurm client commands of this instance's Slurm are (``slurm.bin_dir``)."""
        if self.slurm_install.is_host:
            return Path("/usr/bin")
        return self.root / "slurm-bin"

    @property
    def shared_paths(self) -> list[str]:
        """Host paths a chrooted Slurm daemon sees at the same place (NFS and accounts)."""
        paths = [str(self.root), "/etc/passwd", "/etc/group", "/etc/hosts"]
        if self.hook_dir != self.root / "bin":
            paths.append(str(self.hook_dir))
        if self.config_path:  # the site's directory: strigger programs of the controller
            paths.append(os.path.dirname(os.path.abspath(self.config_path)))
        return paths

    @property
    def hook_dir(self) -> Path:
        return Path(self.program_dir).absolute() if self.program_dir else self.root / "bin"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> TestbedSpec:
        return cls(**json.loads(text))


def load_cloud_config(spec: TestbedSpec) -> Config:
    """The vcluster config whose node classes become CLOUD nodes (none without --config)."""
    if spec.config_path:
        config = load_config(spec.config_path)
        if STATIC_PARTITION in config.slurm.partitions:
            raise UserInputError(
                f"partition {STATIC_PARTITION!r} is the testbed's static partition; "
                "rename it in slurm.partitions"
            )
        return config
    return parse_config({"slurm": {"configless": True}})


def cgroup_conf(spec: TestbedSpec) -> str | None:
    """cgroup.conf beside slurm.conf (configless slurmd fetches it too), or None.

    slurmd 23.02 and later initialise a cgroup plugin even with proctrack/linuxproc and
    fail where no cgroup filesystem is mounted for them (a namespace VM): ``disabled``
    (a value 22.05 does not know) turns that off.
    """
    version = spec.slurm_install.version() or "0"
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    if major < 23:
        return None
    return ("# Written by `vcluster testbed slurm up`: namespace nodes have no cgroup of "
            "their own\nCgroupPlugin=disabled\n")


def make_dirs(spec: TestbedSpec) -> None:
    """Create the state directory tree with the modes munged and slurmd want."""
    for sub in ("", "run", "log", "spool", "ctld", "munge"):
        (spec.root / sub).mkdir(parents=True, exist_ok=True)
    run_dir = spec.munge_socket.parent
    run_dir.mkdir(exist_ok=True)
    os.chmod(spec.root / "munge", 0o755)
    os.chmod(run_dir, 0o755)  # munged wants its socket directory world-executable
    for parent in spec.root.parents:
        mode = parent.stat().st_mode
        if mode & 0o001 == 0:
            raise UserInputError(
                f"munged needs every directory above its socket world-executable, and "
                f"{parent} is mode {mode & 0o777:o}; choose another --state-dir"
            )


def make_spool_dirs(spec: TestbedSpec, config: Config) -> None:
    """Each node's SlurmdSpoolDir (``spool/slurmd-%n``): slurmd 24.11 does not create it."""
    names = spec.static_node_names()
    for node_class in config.node_classes:
        names += expand_hostlist(node_class.hostlist)
    for name in names:
        (spec.root / "spool" / f"slurmd-{name}").mkdir(parents=True, exist_ok=True)


def ensure_munge_key(spec: TestbedSpec) -> None:
    """A 1024-byte random key, mode 600 (kept across runs: VMs may hold it)."""
    key = spec.munge_key
    if not key.exists() or key.stat().st_size < 32:
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(1024))
    os.chmod(key, 0o600)


def front_or_python(spec: TestbedSpec, python_dir: str) -> str:
    """Where the hooks the wrappers run are: the C hook front built for this instance (as a
    site builds it with `vcluster hook-front`), or the Python hooks where no C compiler is."""
    from vcluster import hook_front

    try:
        return str(hook_front.build(spec.root / "hookfront", python_dir=python_dir))
    except UserInputError as exc:
        log.warning("testbed %s: Slurm runs the Python hooks: %s", spec.name, exc)
        return python_dir


def write_hook_wrappers(spec: TestbedSpec, installed_dir: str | None = None) -> HookPrograms:
    """Write one executable per hook in ``spec.hook_dir`` that execs the installed program.

    slurmctld runs them with only SLURM_CONF (and SLURM_RESUME_FILE): the wrapper adds
    VCLUSTER_CONFIG and a PATH.
    """
    target_dir = front_or_python(spec, installed_dir or default_program_dir())
    spec.hook_dir.mkdir(parents=True, exist_ok=True)
    config = os.path.abspath(spec.config_path) if spec.config_path else ""
    for name in PROGRAM_NAMES.values():
        text = (
            "#!/bin/sh\n"
            f"# Written by `vcluster testbed slurm up` for instance {spec.name}:\n"
            "# slurmctld runs hook programs with an almost empty environment.\n"
            "# A slurmctld chrooted in another Slurm's root runs the host's program.\n"
            f"[ -e /{DONE_MARKER} ] && [ -d /.host/proc ] && exec chroot /.host \"$0\" \"$@\"\n"
            f"export VCLUSTER_CONFIG={shlex.quote(config)}\n"
            f"export SLURM_CONF=\"${{SLURM_CONF:-{spec.conf}}}\"\n"
            "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
            f"exec {shlex.quote(os.path.join(target_dir, name))} \"$@\"\n"
        )
        path = spec.hook_dir / name
        path.write_text(text, encoding="utf-8")
        os.chmod(path, 0o755)
    return HookPrograms.in_dir(str(spec.hook_dir))


def instance_conf(spec: TestbedSpec, config: Config, programs: HookPrograms | None) -> str:
    """The whole slurm.conf of the instance."""
    r = spec.root
    host = socket.gethostname().split(".")[0]
    lines = [
        f"# Local Slurm testbed {spec.name!r}: written by `vcluster testbed slurm up`,",
        "# rewritten on every `up` (edit the options or vcluster.toml, not this file).",
        f"ClusterName={spec.name}",
        f"SlurmctldHost={host}({spec.gateway})",
        f"SlurmctldPort={spec.port}",
        "SlurmdPort=6818",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        f"AuthInfo=socket={spec.munge_socket}",
        "CredType=cred/munge",
        f"StateSaveLocation={r / 'ctld'}",
        f"SlurmctldPidFile={spec.slurmctld_pid_file}",
        f"SlurmctldLogFile={spec.log_dir / 'slurmctld.log'}",
        f"SlurmdSpoolDir={r / 'spool' / 'slurmd-%n'}",
        f"SlurmdPidFile={r / 'run' / 'slurmd-%n.pid'}",
        f"SlurmdLogFile={spec.log_dir / 'slurmd-%n.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SchedulerParameters=batch_sched_delay=0,sched_interval=5",
        "ReturnToService=2",
        "DefMemPerCPU=100",
        "TreeWidth=65533",
        "SlurmdParameters=config_overrides",
    ]
    if spec.slurm_install.plugin_dir:
        lines.append(f"PluginDir={spec.slurm_install.plugin_dir}")
    if spec.static_nodes:
        lines.append(f"SuspendExcNodes={spec.static_hostlist}")
        lines.append(f"SuspendExcParts={STATIC_PARTITION}")
    lines.append(generate(config, programs).rstrip("\n"))
    if spec.static_nodes:
        lines.append("# static nodes: network namespaces on the bridge")
        for i, node in enumerate(spec.static_node_names(), start=1):
            lines.append(
                f"NodeName={node} NodeAddr={spec.static_node_ip(i)} NodeHostname={node} "
                f"CPUs={STATIC_CPUS} RealMemory={STATIC_MEMORY_MB} State=UNKNOWN"
            )
        lines.append(
            f"PartitionName={STATIC_PARTITION} Nodes={spec.static_hostlist} Default=YES "
            "State=UP MaxTime=INFINITE"
        )
    return "\n".join(lines) + "\n"
