"""vcluster.slurm against real, private Slurms (munged, slurmctld, two slurmd): the host's
(22.05 on Debian 12) and, if its Debian root has been built (``vcluster.testbed.slurm_root.
build``), the other Debian release's (24.11 from trixie): every test runs on both.

The cluster is ``ThrowawaySlurm`` from tests/data/slurm/capture.py (the same setup that
captured the parser test data): /tmp/vca-slurm, slurmctld port 7817, slurmd ports 7818+.
Every process it starts is stopped by PID when each Slurm's tests end, pass or fail.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from vcluster.errors import SlurmCommandError
from vcluster.slurm import Job, Slurm
from vcluster.testbed.slurm_root import SlurmRoot, default_root_dir, is_complete, other_suite

pytestmark = pytest.mark.integration

CAPTURE = Path(__file__).resolve().parents[1] / "data" / "slurm" / "capture.py"


def _capture_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vca_slurm_capture", CAPTURE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OTHER_ROOT = default_root_dir(other_suite())


@pytest.fixture(scope="module", params=[
    "/", pytest.param(str(OTHER_ROOT), marks=pytest.mark.skipif(
        not is_complete(OTHER_ROOT), reason=f"no Slurm root at {OTHER_ROOT} (build it with "
        "vcluster.testbed.slurm_root.build)"))], ids=["host-slurm", "other-slurm"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    throwaway = _capture_module().ThrowawaySlurm(
        real_nodes=("vca-r1", "vca-r2"), cloud_nodes=("vca-c1",), slurm_root=request.param)
    try:
        with throwaway:
            (throwaway.root / "work").mkdir()
            yield throwaway
    finally:  # its daemons are stopped by PID; its directory (munge key, logs) goes too
        shutil.rmtree(throwaway.root, ignore_errors=True)


@pytest.fixture()
def slurm(cluster: Any) -> Slurm:
    return cluster.slurm


def wait_for(get: Callable[[], Any], ok: Callable[[Any], bool], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = get()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.3)


def finished(slurm: Slurm, job_id: int, timeout_s: float = 20) -> Job:
    job = wait_for(lambda: slurm.job(job_id), lambda j: j is not None and j.is_finished,
                   timeout_s)
    assert job is not None
    return job


def test_the_version_is_the_installed_one(slurm: Slurm, cluster: Any) -> None:
    root: SlurmRoot = cluster.slurm_root
    assert str(slurm.version()) == root.version()


def test_sbatch_then_read_the_job_back(slurm: Slurm, cluster: Any) -> None:
    work = str(cluster.root / "work")
    job_id = slurm.sbatch(["-J", "it-job", "-c", "2", "--mem=150", "--constraint=",
                           "--comment=hello world", f"--chdir={work}", "--wrap", "sleep 1"])
    job = slurm.job(job_id)
    assert job is not None
    assert (job.name, job.user, job.comment, job.partition) == (
        "it-job", "root", "hello world", "debug")
    assert (job.cpus_per_task, job.memory_per_node_mb, job.work_dir) == (2, 150, work)
    assert job.state in ("PENDING", "CONFIGURING", "RUNNING")
    assert job_id in [j.job_id for j in slurm.jobs()]
    done = finished(slurm, job_id)
    assert (done.state, done.exit_code) == ("COMPLETED", 0)
    assert len(done.nodes) == 1 and done.nodes[0] in ("vca-r1", "vca-r2")
    assert done.start_time is not None and done.end_time is not None
    assert done.end_time >= done.start_time >= done.submit_time


def test_script_on_stdin_and_its_exit_code(slurm: Slurm, cluster: Any) -> None:
    job_id = slurm.sbatch([f"--chdir={cluster.root / 'work'}", "-J", "exits4"],
                          "#!/bin/sh\nexit 4\n")
    done = finished(slurm, job_id)
    assert (done.state, done.state_reason, done.exit_code) == ("FAILED", "NonZeroExitCode", 4)
    record = slurm.show_job(job_id)
    assert record is not None and record["ExitCode"] == "4:0"


def test_refused_submission_says_why(slurm: Slurm) -> None:
    with pytest.raises(SlurmCommandError) as caught:
        slurm.sbatch(["--constraint=nosuch", "--wrap", "true"])
    assert caught.value.returncode == 1
    assert str(caught.value).endswith(
        "failed (exit 1): sbatch: error: Batch job submission failed: "
        "Invalid feature specification")


def test_update_node_state_and_reason(slurm: Slurm) -> None:
    # measured: 22.05's state=RESUME clears the Reason, 24.11's keeps it
    old_reason_kept = slurm.version().release != "22.05"
    slurm.update_nodes(["vca-r2"], state="DRAIN", reason="vcluster test: disk check")
    node = slurm.node("vca-r2")
    assert node is not None
    assert (node.state, node.is_drained, node.reason) == (
        "IDLE", True, "vcluster test: disk check")
    from_sinfo = {n.name: n for n in slurm.nodes()}["vca-r2"]
    assert from_sinfo == node
    slurm.update_nodes("vca-r2", state="RESUME")
    node = slurm.node("vca-r2")
    assert node is not None
    # vcluster reads a reason only while the node is DOWN or drained (plan's reset rule).
    assert (node.state, node.is_drained, node.is_down) == ("IDLE", False, False)
    assert node.reason == ("vcluster test: disk check" if old_reason_kept else "")
    # RESUME makes slurmctld ping the node: NOT_RESPONDING until slurmd answers.
    node = wait_for(lambda: slurm.node("vca-r2"), lambda n: not n.flags, 15)
    assert (node.state, node.flags) == ("IDLE", frozenset())


def test_cloud_node_address_update_and_unknown_names(slurm: Slurm) -> None:
    c1 = slurm.node("vca-c1")
    assert c1 is not None
    assert c1.powered_down and "CLOUD" in c1.flags
    slurm.update_nodes("vca-c1", nodeaddr="127.0.0.1", nodehostname="vca-c1-host")
    c1 = slurm.node("vca-c1")
    assert c1 is not None and (c1.address, c1.hostname) == ("127.0.0.1", "vca-c1-host")
    assert slurm.node("vca-nosuch") is None
    assert slurm.show_job(999999) is None
    assert slurm.job(999999) is None


def test_hold_update_release(slurm: Slurm, cluster: Any) -> None:
    job_id = slurm.sbatch(["-H", "-J", "held", f"--chdir={cluster.root / 'work'}",
                           "--wrap", "true"])
    job = slurm.job(job_id)
    assert job is not None and (job.state, job.state_reason) == ("PENDING", "JobHeldUser")
    slurm.update_job(job_id, Comment="vcluster[template=x] mine", ReqNodeList="vca-r1")
    record = slurm.show_job(job_id)
    assert record is not None
    assert (record["Comment"], record["ReqNodeList"]) == ("vcluster[template=x] mine", "vca-r1")
    slurm.release(job_id)
    done = finished(slurm, job_id)
    assert (done.state, done.nodes, done.comment) == (
        "COMPLETED", ("vca-r1",), "vcluster[template=x] mine")


def test_requeue_and_cancel(slurm: Slurm, cluster: Any) -> None:
    job_id = slurm.sbatch(["-J", "long", f"--chdir={cluster.root / 'work'}",
                           "--wrap", "sleep 60"])
    running = wait_for(lambda: slurm.job(job_id), lambda j: j.state == "RUNNING", 15)
    assert running.state == "RUNNING"
    slurm.requeue(job_id)
    requeued = wait_for(lambda: slurm.job(job_id), lambda j: j.state == "PENDING", 15)
    assert (requeued.state, requeued.state_reason) == ("PENDING", "BeginTime")
    slurm.cancel(job_id)
    assert finished(slurm, job_id).state == "CANCELLED"


def test_trigger_runs_program_when_the_job_ends(slurm: Slurm, cluster: Any) -> None:
    marker = cluster.root / "trigger.out"
    program = cluster.root / "on-end.sh"
    program.write_text(f"#!/bin/sh\necho \"ended $1\" > {marker}\n")
    program.chmod(0o755)
    job_id = slurm.sbatch(["-H", "-J", "trig", f"--chdir={cluster.root / 'work'}",
                           "--wrap", "true"])
    slurm.trigger_on_job_end(job_id, str(program))
    listed = slurm.run(["strigger", "--get", f"--jobid={job_id}"]).stdout
    assert str(program) in listed
    slurm.release(job_id)
    finished(slurm, job_id)
    # slurmctld checks triggers every 15 s.
    text = wait_for(lambda: marker.read_text() if marker.exists() else "", bool, 20)
    assert text == f"ended {job_id}\n"
