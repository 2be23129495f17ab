"""The local Slurm testbed for real: slurmctld, munged and slurmd in namespace nodes."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.integration.slurm_fixtures import (
    leftovers,
    make_spec,
    running_testbed,
    state_dir,
    wait_job_done,
)
from vcluster.cli import cli
from vcluster.testbed import netns
from vcluster.testbed.slurm_files import TestbedSpec
from vcluster.testbed.slurm_local import down, run_slurm, up

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def testbed() -> Iterator[TestbedSpec]:
    with state_dir() as root:
        spec = make_spec(root, static_nodes=2)
        with running_testbed(spec) as running:
            yield running
        assert leftovers(spec) == []


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), prog_name="vcluster")
    return result.exit_code, result.output


def test_jobs_run_on_namespace_nodes(testbed: TestbedSpec, tmp_path: Path) -> None:
    jobs = {}
    for node in testbed.static_node_names():
        out = tmp_path / f"{node}.out"
        proc = run_slurm(testbed, ["sbatch", "--parsable", "-p", "static", "-w", node,
                                   "-o", str(out), "--wrap", "hostname; srun hostname"])
        jobs[node] = (int(proc.stdout.strip().split(";")[0]), out)
    for node, (job_id, out) in jobs.items():
        fields = wait_job_done(testbed, job_id)
        assert (fields["JobState"], fields["NodeList"], fields["ExitCode"]) == (
            "COMPLETED", node, "0:0")
        assert out.read_text().splitlines() == [node, node]


def test_status_shows_daemons_bridge_namespaces_and_sinfo(testbed: TestbedSpec) -> None:
    code, output = _cli("testbed", "slurm", "status", "--name", "vcts",
                        "--state-dir", str(testbed.root))
    lines = output.splitlines()
    assert code == 0, output
    assert lines[0] == (f"testbed vcts: up (state {testbed.root}, "
                        f"SLURM_CONF={testbed.root}/slurm.conf)")
    assert [ln.split()[0:2] + ln.split()[-1:] for ln in lines[1:5]] == [
        ["munged", "pid", "running"], ["slurmctld", "pid", "running"],
        ["slurmd", "vcts-s1", "running"], ["slurmd", "vcts-s2", "running"]]
    assert lines[5] == "  bridge vctsbr0 10.112.0.1/25: present"
    assert lines[6] == "  namespaces: vcts-s1 vcts-s2"
    assert lines[7].split() == ["PARTITION", "AVAIL", "TIMELIMIT", "NODES", "STATE",
                                "NODELIST"]
    assert "static* up infinite 2 idle vcts-s[1-2]" in [" ".join(ln.split())
                                                         for ln in lines[8:]]


def test_up_again_leaves_a_running_instance_alone(testbed: TestbedSpec) -> None:
    pid_before = testbed.slurmctld_pid_file.read_text()
    said: list[str] = []
    up(testbed, say=said.append)
    assert said == ["testbed vcts already up: slurmctld at 10.112.0.1:7827"]
    assert testbed.slurmctld_pid_file.read_text() == pid_before


def test_down_twice_leaves_nothing() -> None:
    with state_dir() as root, running_testbed(make_spec(root, 1, name="vcts2")) as spec:
        assert leftovers(spec) != []
        code, output = _cli("testbed", "slurm", "down", "--name", "vcts2",
                            "--state-dir", str(spec.root))
        assert code == 0, output
        lines = output.splitlines()
        assert lines[0].startswith("removed namespace vcts2-s1 (stopped pids [")
        assert [ln.split(" (")[0] for ln in lines[1:]] == [
            "stopped slurmctld", "stopped munged", "removed bridge vcts2br0"]
        assert leftovers(spec) == []
        assert _cli("testbed", "slurm", "down", "--name", "vcts2",
                    "--state-dir", str(spec.root)) == (0, "testbed vcts2: nothing to stop\n")
        code, output = _cli("testbed", "slurm", "status", "--name", "vcts2",
                            "--state-dir", str(spec.root))
        assert code == 3
        assert output.splitlines()[0] == (
            f"testbed vcts2: not running (state {spec.root}, SLURM_CONF={spec.root}/slurm.conf)")


CLOUD_TOML = """\
[slurm]
partitions = ["vcluster", "burst"]
[database]
url = "sqlite:///{root}/vcluster.db"
[controller]
resume_timeout_s = 60
suspend_timeout_s = 5
state_dir = "{root}/controller"
log_dir = "{root}/log"
[[node_class]]
name = "small"
prefix = "vcts2-small-"
count = 3
cpus = 2
memory_mb = 1024
template = "vcluster-worker"
[[node_class]]
name = "big"
prefix = "vcts2-big-"
count = 2
cpus = 4
memory_mb = 2048
template = "big"
policy = "pool"
partition = "burst"
suspend_time_s = 30
"""


def test_config_classes_become_cloud_nodes_that_slurm_resumes() -> None:
    with state_dir() as root:
        toml = root / "vcluster.toml"
        toml.write_text(CLOUD_TOML.format(root=root))
        spec = TestbedSpec(name="vcts2", subnet="10.112.0.128/25", port=7828,
                           state_dir=str(root / "state"), config_path=str(toml))
        with running_testbed(spec):
            sinfo = run_slurm(spec, ["sinfo", "-h", "-o", "%P %t %D %N %f"]).stdout
            assert sorted(sinfo.splitlines()) == [
                "burst idle~ 2 vcts2-big-[001-002] big",
                "vcluster idle~ 3 vcts2-small-[001-003] small",
            ]
            wrapper = (spec.hook_dir / "vcluster-resume").read_text()
            assert f"export VCLUSTER_CONFIG={toml}\n" in wrapper
            assert os.access(spec.hook_dir / "vcluster-resume", os.X_OK)
            target = wrapper.splitlines()[-1].split()[1]  # exec /path/vcluster-resume "$@"
            assert target.endswith("/vcluster-resume") and os.access(target, os.X_OK)

            bad = run_slurm(spec, ["sbatch", "-p", "vcluster", "--constraint=huge",
                                   "--wrap", "true"], check=False)
            assert bad.returncode == 1
            assert bad.stderr.strip() == ("sbatch: error: Batch job submission failed: "
                                          "Invalid feature specification")

            job = run_slurm(spec, ["sbatch", "--parsable", "-p", "vcluster",
                                   "--constraint=small", "--wrap", "hostname"]).stdout.strip()
            ctld_log = spec.log_dir / "slurmctld.log"
            allocated = f"sched: Allocate JobId={job} NodeList=vcts2-small-001 "
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and allocated not in ctld_log.read_text():
                time.sleep(0.2)
            # allocated to a powered-down node of class "small": slurmctld powers it up
            assert allocated in ctld_log.read_text()
            node = run_slurm(spec, ["scontrol", "show", "node", "vcts2-small-001", "-o"]).stdout
            assert "AvailableFeatures=small " in node and "CLOUD" in node
            run_slurm(spec, ["scancel", job])


def test_down_finds_daemons_whose_pid_files_were_lost() -> None:
    with state_dir() as root, running_testbed(make_spec(root, 1, name="vcts2")) as spec:
        spec.slurmctld_pid_file.unlink()
        spec.munged_pid_file.unlink()
        said: list[str] = []
        down(spec, say=said.append)
        assert [line.split(" (")[0] for line in said] == [
            "removed namespace vcts2-s1", "stopped slurmctld", "stopped munged",
            "removed bridge vcts2br0"]
        assert said[1].endswith(", its pid file was gone)")
        assert leftovers(spec) == []


def test_netns_hosts_have_their_own_address_hostname_and_processes() -> None:
    bridge, ns = "vcts3br0", "vcts3-h1"
    try:
        netns.ensure_bridge(bridge, "10.112.0.129/25")
        netns.ensure_bridge(bridge, "10.112.0.129/25")  # idempotent
        netns.add_host(ns, bridge=bridge, ip_cidr="10.112.0.140/25", gateway="10.112.0.129",
                       veth_host=ns, mac="02:00:0a:70:00:8c")
        with pytest.raises(netns.NetnsError) as err:
            netns.add_host(ns, bridge=bridge, ip_cidr="10.112.0.141/25",
                           gateway="10.112.0.129", veth_host="vcts3-h2")
        assert str(err.value) == ("namespace 'vcts3-h1' already exists; remove it first "
                                  "(delete_host or `down`)")
        out = subprocess.run(
            netns.host_argv(ns, ["sh", "-c", "hostname; ip -o link show dev eth0; "
                                 "ip -o -4 addr show dev eth0; ip route show default; "
                                 "test -d /sys/fs/cgroup/cpu && echo cgroups"],
                            hostname="vcts3-h1"),
            capture_output=True, text=True, timeout=10, check=True).stdout.splitlines()
        assert out[0] == "vcts3-h1"
        assert "link/ether 02:00:0a:70:00:8c " in out[1]
        assert "inet 10.112.0.140/25" in out[2]
        assert out[3].startswith("default via 10.112.0.129 dev eth0")
        assert out[4] == "cgroups"  # /sys/fs/cgroup stays visible (slurmd needs it)
        sleeper = subprocess.Popen(netns.host_argv(ns, ["sleep", "60"]))
        deadline = time.monotonic() + 5
        while sleeper.pid not in netns.pids_in(ns) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert netns.pids_in(ns) == [sleeper.pid]
        assert netns.kill_host(ns, timeout_s=5) == [sleeper.pid]
        assert sleeper.wait(timeout=5) == -15  # SIGTERM first
        assert netns.cleanup_prefix("vcts3-", bridge=bridge) == [
            "namespace vcts3-h1", f"bridge {bridge}"]
        assert netns.cleanup_prefix("vcts3-", bridge=bridge) == []
    finally:
        netns.cleanup_prefix("vcts3-", bridge=bridge)


def test_up_without_any_node_is_refused(tmp_path: Path) -> None:
    code, output = _cli("testbed", "slurm", "up", "--name", "vcts2",
                        "--state-dir", str(tmp_path))
    assert (code, output) == (1, "vcluster: error: no nodes to run: give --static-nodes N, "
                                 "or --config with a vcluster.toml that has node classes\n")


def test_netns_refuses_names_the_kernel_would_refuse() -> None:
    with pytest.raises(netns.NetnsError) as err:
        netns.ensure_bridge("vcts-bridge-too-long", "10.112.0.1/25")
    assert str(err.value) == (
        "bridge name 'vcts-bridge-too-long' must be 1-15 characters of letters, digits, "
        "'_', '.', '-'; choose a shorter instance name")
    with pytest.raises(netns.NetnsError, match="too broad"):
        netns.cleanup_prefix("v")
