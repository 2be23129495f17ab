"""A whole testbed site for end-to-end tests: real slurmctld, the cloud with netns VMs, the
controller. Instance ``vce`` on 10.115.0.0/24, its own ports, state under a temp dir; torn
down by PID and by name even when a test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vcluster.config import Config, load_config
from vcluster.one import VM, OneClient
from vcluster.slurm import Job, Node, Slurm
from vcluster.testbed import netns, site, slurm_root

# VCLUSTER_TEST_SLOT=N (1-9) gives a second suite run on the same machine its own site:
# name vceN, subnet 10.(115+10N).0.0/24, ports +10N. Default: vce, 10.115.0.0/24.
_SLOT = int(os.environ.get("VCLUSTER_TEST_SLOT", "0") or "0")
E2E_NAME = f"vce{_SLOT}" if _SLOT else "vce"
E2E_SUBNET = f"10.{115 + 10 * _SLOT}.0.0/24"
E2E_PORTS = {"slurm_port": 6917 + 10 * _SLOT, "one_port": 2733 + 10 * _SLOT,
             "onegate_port": 5130 + 10 * _SLOT, "events_port": 2201 + 10 * _SLOT}


POOL_TEMPLATE = "vcluster-worker-pool"
"""The pool class's own template (the worker's body), which a test makes unplaceable."""


@dataclass
class Site:
    spec: site.SiteSpec
    config: Config
    work: Path

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "ONE_"))}
        env["VCLUSTER_CONFIG"] = str(self.spec.config_path)
        env["SLURM_CONF"] = str(self.spec.slurm.conf)
        env["FSUB_WAIT_INTERVAL_S"] = "0.5"
        # the site's Slurm client commands first (the other Slurm's, from its root), then
        # the fsub installed with the Python under test (a venv's is not on root's PATH)
        env["PATH"] = (f"{self.config.slurm.bin_dir}:{sysconfig.get_path('scripts')}:"
                       f"{env.get('PATH', '/usr/bin:/bin')}")
        return env

    @property
    def slurm(self) -> Slurm:
        return Slurm(self.config.slurm)

    @property
    def one(self) -> OneClient:
        return OneClient(self.config.opennebula)

    def fsub(self, *args: str, user: str | None = None, fsub: str = "fsub",
             timeout_s: float = 300, cwd: Path | None = None
             ) -> subprocess.CompletedProcess[str]:
        argv = [fsub, *args]
        if user:
            env_args = [f"{k}={v}" for k, v in self.env.items()
                        if k in ("VCLUSTER_CONFIG", "SLURM_CONF", "FSUB_WAIT_INTERVAL_S")]
            argv = ["runuser", "-u", user, "--", "env", "PATH=/usr/local/bin:/usr/bin:/bin",
                    *env_args, *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              env=self.env, cwd=cwd or self.work, check=False)

    def vms(self) -> list[VM]:
        return self.one.vms(cluster=self.config.controller.cluster_name)

    def live_vms(self) -> list[VM]:
        return [vm for vm in self.vms() if not vm.is_gone]

    def job(self, job_id: int) -> Job | None:
        return self.slurm.job(job_id)

    def cloud_nodes(self) -> list[Node]:
        return [n for n in self.slurm.nodes() if self.config.class_of_node(n.name)]

    def vm_namespaces(self) -> list[str]:
        return netns.list_hosts(f"{E2E_NAME}-vm")


def wait_for(what: str, check: Callable[[], object], timeout_s: float,
             interval_s: float = 0.5) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        time.sleep(interval_s)


def job_id_of(proc: subprocess.CompletedProcess[str]) -> int:
    m = re.search(r"Submitted batch job (\d+)", proc.stdout) or re.match(r"(\d+)", proc.stdout)
    assert m, f"no job id in fsub output: {proc.stdout!r} {proc.stderr!r}"
    return int(m.group(1))


def site_is_clean(s: Site) -> str:
    """'' when no VM runs, no VM namespace is left and every cloud node is powered down."""
    live = s.live_vms()
    if live:
        return "VMs still alive: " + ", ".join(f"{vm.vm_id}:{vm.state_name}" for vm in live)
    left = s.vm_namespaces()
    if left:
        return "namespaces left: " + ", ".join(left)
    up_nodes = [f"{n.name}:{n.state}+{'+'.join(sorted(n.flags))}" for n in s.cloud_nodes()
                if not n.powered_down or n.powering_down]
    if up_nodes:
        return "nodes not powered down: " + ", ".join(up_nodes)
    return ""


def wait_clean(s: Site, timeout_s: float = 90) -> None:
    problem = ""

    def clean() -> bool:
        nonlocal problem
        problem = site_is_clean(s)
        return not problem

    try:
        wait_for("site clean", clean, timeout_s, interval_s=1)
    except AssertionError:
        raise AssertionError(f"site not clean after {timeout_s:g} s: {problem}") from None


@pytest.fixture(scope="session")
def slurm_flavor(request: pytest.FixtureRequest) -> str:
    """The Slurm root the site runs from: "" for the host's Slurm, else the other Debian
    release's root (built once with debootstrap, then reused). Parametrized by ``--slurm``."""
    if request.param == "host":
        return ""
    if os.geteuid() != 0:
        pytest.skip("building the other Slurm's root needs root")
    return slurm_root.build().path


@pytest.fixture(scope="session")
def e2e_site(slurm_flavor: str) -> Iterator[Site]:
    if os.geteuid() != 0:
        pytest.skip("the testbed needs root")
    # munged wants every directory above its socket world-executable, and job output is
    # written by the job's user: pytest's 0700 temp dirs will not do.
    root = Path(tempfile.mkdtemp(prefix="vce-site-", dir="/tmp"))
    os.chmod(root, 0o755)
    work = root / "work"
    work.mkdir()
    os.chmod(work, 0o1777)
    spec = site.SiteSpec(name=E2E_NAME, subnet=E2E_SUBNET, state_dir=str(root / "state"),
                         **E2E_PORTS,
                         per_job_nodes=6, pool_nodes=2, pool_idle_s=15, resume_timeout_s=60,
                         gpu_nodes=1,
                         heartbeat_stale_s=10, extra_templates=("vcluster-broken",),
                         pool_on_vm_event=(("SUSPENDED", "resume"),),
                         pool_template=POOL_TEMPLATE,
                         slurm_root=slurm_flavor)
    site.down(spec)
    try:
        site.up(spec)
        yield Site(spec, load_config(spec.config_path, environ={}), work)
    finally:
        site.down(spec)
        left = netns.list_hosts(f"{E2E_NAME}-")
        if not left:
            shutil.rmtree(root, ignore_errors=True)
        assert not left, f"namespaces left after down: {left}"


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def system_fsub() -> Iterator[str]:
    """fsub installed the way a site installs it for its users: a virtual environment of the
    system's Python outside /root (which ordinary users cannot enter), built from this tree."""
    venv = Path(tempfile.mkdtemp(prefix="vce-venv-", dir="/tmp"))
    os.chmod(venv, 0o755)
    try:
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)],
                       check=True, timeout=120)
        subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                        "install", "-q", "--disable-pip-version-check",
                        "-c", str(REPO / "requirements" / "constraints.txt"), str(REPO)],
                       check=True, timeout=900)
        yield str(venv / "bin" / "fsub")
    finally:
        shutil.rmtree(venv, ignore_errors=True)
