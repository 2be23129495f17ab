"""Helpers to run a local Slurm testbed instance in tests, always torn down afterwards."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vcluster.testbed import netns
from vcluster.testbed.slurm_files import TestbedSpec
from vcluster.testbed.slurm_local import down, run_slurm, up

# This suite's own instances, in its own 10.112.0.0/24: other helpers' testbeds use other
# names, subnets and ports. Two instances may run at once (a module's and a test's own).
INSTANCES = {"vcts": ("10.112.0.0/25", 7827), "vcts2": ("10.112.0.128/25", 7828)}


def make_spec(state_dir: Path, static_nodes: int = 2, name: str = "vcts") -> TestbedSpec:
    subnet, port = INSTANCES[name]
    return TestbedSpec(name=name, subnet=subnet, port=port,
                       state_dir=str(state_dir), static_nodes=static_nodes)


@contextmanager
def state_dir() -> Iterator[Path]:
    """A fresh state directory munged accepts (pytest's tmp dirs are mode 700)."""
    path = Path(tempfile.mkdtemp(prefix="vcts-"))
    try:
        os.chmod(path, 0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def running_testbed(spec: TestbedSpec) -> Iterator[TestbedSpec]:
    """``up`` the instance, yield it, and ``down`` it even if the test fails."""
    try:
        yield up(spec)
    finally:
        down(spec)


def leftovers(spec: TestbedSpec) -> list[str]:
    """Everything of this instance still present: processes, namespaces, veths, bridge."""
    found = [f"namespace {n}" for n in netns.list_hosts(f"{spec.name}-")]
    found += [f"link {n}" for n in netns.list_links(f"{spec.name}-")]
    if netns.link_exists(spec.bridge):
        found.append(f"bridge {spec.bridge}")
    marker = str(spec.root).encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and state != "Z":
            text = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"process {pid} {text[:80]}")
    return found


def wait_job_done(spec: TestbedSpec, job_id: int, timeout_s: float = 60.0) -> dict[str, str]:
    """Poll ``scontrol show job`` until the job has finished; return its fields."""
    deadline = time.monotonic() + timeout_s
    fields: dict[str, str] = {}
    while time.monotonic() < deadline:
        out = run_slurm(spec, ["scontrol", "show", "job", str(job_id), "-o"]).stdout
        fields = dict(w.split("=", 1) for w in out.split() if "=" in w)
        if fields.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                      "NODE_FAIL", "OUT_OF_MEMORY"):
            return fields
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not finished after {timeout_s} s: {fields}")
