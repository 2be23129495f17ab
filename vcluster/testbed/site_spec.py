"""What a testbed site is and the texts it registers: its spec, vcluster.toml, worker template.

Why it exists apart from :mod:`vcluster.testbed.site`: that module starts and stops the
site's processes; this is the pure description they share (names, ports, paths, the site
configuration a real site would write), which the CLI and tests build without starting
anything.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from vcluster.testbed.slurm_files import STATE_ROOT, TestbedSpec
from vcluster.testbed.slurm_root import SlurmRoot

WORKER_TEMPLATE = "vcluster-worker"


@dataclass(frozen=True)
class SiteSpec:
    """What ``vcluster testbed up`` runs."""

    __test__ = False  # not a pytest class

    name: str = "vc"
    subnet: str = "10.111.0.0/24"
    state_dir: str = ""
    slurm_port: int = 6817
    one_port: int = 2633
    onegate_port: int = 5030
    events_port: int = 2101
    """The cloud's state-change publisher (oned's HM_MAD ``-p``); the controller subscribes."""
    per_job_nodes: int = 8
    pool_nodes: int = 2
    pool_idle_s: int = 30
    resume_timeout_s: int = 90
    heartbeat_stale_s: int = 30
    extra_templates: tuple[str, ...] = ()
    """Other OpenNebula templates jobs of the per-job class may pick (fsub --vm-template)."""
    pool_template: str = ""
    """The pool class's own OpenNebula template (registered like the worker's, same body), so
    that a test can make it unplaceable alone; "": the pool boots from the worker's."""
    pool_on_vm_event: tuple[tuple[str, str], ...] = ()
    """The pool class's ``on_vm_event`` rules as (event, rule) pairs, e.g.
    ``(("SUSPENDED", "resume"),)``; none: every event fails the node (the default)."""
    driver: str = "netns"
    """The cloud's VM driver: ``netns`` (VMs that join Slurm) or ``dummy`` (VMs that only
    go through their states: for bursts of thousands, whose nodes never register)."""
    standby: int = 0
    """Standby VMs the per-job class keeps booted (its ``standby``)."""
    boot_s: float = 0.5
    """Seconds a VM spends in BOOT (the cloud's ``--boot-s``): 30 to look like a real VM."""
    boot_rate_per_s: float = 10.0
    """The controller's ``boot_rate_per_s`` (allocations per second, all classes)."""
    boot_burst: int = 20
    """The controller's ``boot_burst``."""
    boot_concurrency: int = 4
    """The controller's ``boot_concurrency`` (allocations in flight at once)."""
    preempt_partition: str = ""
    """The site's ``slurm.preempt_partition`` ("" for none)."""
    gpu_nodes: int = 0
    """Nodes of a "gpu" class (partition gpu, ``gres = ["gpu:tesla:1"]``, one PCI GPU each);
    the cloud's host0 reports that many GPUs, and each VM gets a stand-in device file for
    the one assigned to it (gres.conf ``File=``, see vminit.make_pci_devices). 0: none."""
    hosts: int = 1
    """The cloud's hosts (``--hosts``): 2 or more to move VMs between them."""
    slurm_root: str = ""
    """A Debian root with another Slurm (:mod:`vcluster.testbed.slurm_root`): slurmctld runs
    from it, and the worker template boots VMs from it as their image. "" for the host's."""

    @property
    def image_name(self) -> str:
        """The worker image in the cloud's datastore ("" when VMs share the host's root)."""
        if not self.slurm_root:
            return ""
        return "debian-slurm-" + (SlurmRoot(self.slurm_root).version() or "root")

    @property
    def root(self) -> Path:
        return Path(self.state_dir or f"{STATE_ROOT}/{self.name}")

    @property
    def config_path(self) -> Path:
        return self.root / "vcluster.toml"

    @property
    def auth_file(self) -> Path:
        return self.root / "one_auth"

    @property
    def gateway(self) -> str:
        return str(next(ipaddress.ip_network(self.subnet).hosts()))

    @property
    def xmlrpc(self) -> str:
        return f"http://127.0.0.1:{self.one_port}/RPC2"

    @property
    def slurm(self) -> TestbedSpec:
        return TestbedSpec(name=self.name, subnet=self.subnet, port=self.slurm_port,
                           state_dir=str(self.root / "slurm"),
                           config_path=str(self.config_path), slurm_root=self.slurm_root)

    def pid_file(self, what: str) -> Path:
        return self.root / "run" / f"{what}.pid"

    def log_file(self, what: str) -> Path:
        return self.root / "log" / f"{what}.log"

    @property
    def cloud_marker(self) -> str:
        """On the cloud server's command line (its --state-dir), and on no other's."""
        return str(self.root / "cloud")

    @property
    def controller_marker(self) -> str:
        """On the controller's command line (its --config), and on no other's."""
        return str(self.config_path)


def site_config_text(spec: SiteSpec) -> str:
    """The site's vcluster.toml: what a real site writes, pointed at the local parts."""
    slurm = spec.slurm
    return f"""# vcluster testbed site {spec.name!r}: written by `vcluster testbed up`.
[opennebula]
xmlrpc = "{spec.xmlrpc}"
auth_file = "{spec.auth_file}"
events = "tcp://127.0.0.1:{spec.events_port}"
timeout_s = 15
retry_delays_s = [0.5, 1, 2]

[slurm]
conf = "{slurm.conf}"
bin_dir = "{slurm.client_bin_dir}"
partitions = ["vcluster", "pool"{', "gpu"' if spec.gpu_nodes else ''}]
command_timeout_s = 20
controller_host = "{spec.gateway}:{spec.slurm_port}"
configless = true
handover_at_allocation = true
munge_key_file = "{slurm.munge_key}"
preempt_partition = "{spec.preempt_partition}"

[database]
url = "sqlite:///{spec.root / 'vcluster.db'}"

[controller]
cluster_name = "{spec.name}"
interval_s = 2
heartbeat_stale_s = {spec.heartbeat_stale_s}
resume_timeout_s = {spec.resume_timeout_s}
suspend_timeout_s = 5
boot_rate_per_s = {spec.boot_rate_per_s}
boot_burst = {spec.boot_burst}
boot_concurrency = {spec.boot_concurrency}
prolog_wait_s = {spec.resume_timeout_s}
state_dir = "{spec.root / 'controller'}"
log_dir = "{spec.root / 'log'}"
status_file = "{spec.root / 'run' / 'status.json'}"

[[node_class]]
name = "small"
prefix = "{spec.name}-small-"
count = {spec.per_job_nodes}
cpus = 2
memory_mb = 1024
features = ["small"]
template = "{WORKER_TEMPLATE}"
templates = [{", ".join(f'"{t}"' for t in spec.extra_templates)}]
policy = "per-job"
standby = {spec.standby}

[[node_class]]
name = "pool"
prefix = "{spec.name}-pool-"
count = {spec.pool_nodes}
cpus = 1
memory_mb = 512
features = ["pool"]
template = "{spec.pool_template or WORKER_TEMPLATE}"
policy = "pool"
partition = "pool"
suspend_time_s = {spec.pool_idle_s}
{_vm_event_rules_line(spec.pool_on_vm_event)}{_gpu_class(spec)}"""


GPU_PCI_DEVICE = "10de:1eb8:0302"
"""What the GPU nodes' host reports (vendor NVIDIA, class 3D controller: a Tesla T4's ids)."""


def _gpu_class(spec: SiteSpec) -> str:
    if not spec.gpu_nodes:
        return ""
    return f"""
[[node_class]]
name = "gpu"
prefix = "{spec.name}-gpu-"
count = {spec.gpu_nodes}
cpus = 2
memory_mb = 1024
template = "{WORKER_TEMPLATE}"
policy = "per-job"
partition = "gpu"
gres = ["gpu:tesla:1"]
gres_conf = "File=/run/testbed-pci/pci0"
pci = [{{ vendor = "10de", class = "0302" }}]
"""


def _vm_event_rules_line(rules: tuple[tuple[str, str], ...]) -> str:
    if not rules:
        return ""
    pairs = ", ".join(f'{event} = "{rule}"' for event, rule in rules)
    return f"on_vm_event = {{ {pairs} }}\n"


def worker_template_text(spec: SiteSpec, name: str = WORKER_TEMPLATE) -> str:
    """The OpenNebula VM template a site would register for its worker image."""
    return (
        f'NAME = "{name}"\n'
        'CPU = "1"\nVCPU = "1"\nMEMORY = "512"\n'
        'NIC = [ NETWORK = "vcluster" ]\n'
        + (f'DISK = [ IMAGE = "{spec.image_name}" ]\n' if spec.image_name else "")
        + 'CONTEXT = [ NETWORK = "YES" ]\n'
        'DESCRIPTION = "vcluster worker: an image with one-context, slurmd and munge"\n'
    )
