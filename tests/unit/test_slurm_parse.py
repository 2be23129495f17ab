"""The Slurm parsers against real Slurm 22.05.8 output captured in tests/data/slurm/."""

from __future__ import annotations

from pathlib import Path

import pytest

from vcluster.errors import SlurmParseError
from vcluster.slurm import (
    Job,
    Node,
    compress_hostlist,
    expand_hostlist,
    parse_scontrol_record,
    parse_scontrol_records,
    parse_sinfo_json,
    parse_squeue_json,
)
from vcluster.slurm_parse import node_from_record, split_node_state, strip_reason_stamp

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"


def read(name: str) -> str:
    return (DATA / name).read_text()


@pytest.fixture(scope="module")
def jobs() -> dict[int, Job]:
    return {j.job_id: j for j in parse_squeue_json(read("squeue.json"))}


@pytest.fixture(scope="module")
def nodes() -> dict[str, Node]:
    return {n.name: n for n in parse_sinfo_json(read("sinfo.json"))}


# --- squeue --json -------------------------------------------------------------------------


def test_squeue_lists_every_job_in_slurms_order() -> None:
    ids = [j.job_id for j in parse_squeue_json(read("squeue.json"))]
    assert ids == [1, 2, 3, 4, 13, 6, 7, 8, 9, 10, 11, 12, 14, 5]


def test_squeue_with_no_jobs_is_an_empty_list() -> None:
    assert parse_squeue_json(read("squeue-empty.json")) == []


def test_running_job_with_constraint_comment_memory_and_cpus(jobs: dict[int, Job]) -> None:
    big = jobs[4]
    assert big.name == "bigjob"
    assert (big.user, big.user_id) == ("root", 0)
    assert big.state == "RUNNING"
    assert big.state_reason == "None"
    assert big.partition == "debug"
    assert big.nodes == ("vca-r1",)
    assert (big.node_count, big.cpus, big.cpus_per_task, big.tasks) == (1, 2, 2, 1)
    assert big.memory_per_node_mb == 200
    assert big.memory_per_cpu_mb is None
    assert big.features == "fast"
    assert big.comment == "vcluster[template=big] my own words"
    assert big.work_dir == "/tmp/vca-slurm"
    assert big.submit_time == 1795242243.0
    assert big.start_time == 1795242244.0
    # squeue projects a running job's end from its time limit: not an end time yet.
    assert big.end_time is None
    assert big.exit_code is None
    assert not big.is_finished
    assert (big.array_job_id, big.array_task_id) == (None, None)


def test_finished_jobs_decode_exit_status_and_signal(jobs: dict[int, Job]) -> None:
    completed, failed, killed = jobs[1], jobs[2], jobs[3]
    assert (completed.state, completed.exit_code) == ("COMPLETED", 0)
    assert (failed.state, failed.state_reason, failed.exit_code) == ("FAILED", "NonZeroExitCode", 3)
    # kill -KILL $$ in the batch script: raw status 9, reported as 128 + 9 like a shell.
    assert (killed.state, killed.exit_code) == ("FAILED", 137)
    assert completed.end_time == 1795242242.0
    assert all(j.is_finished for j in (completed, failed, killed))
    assert completed.memory_per_cpu_mb == 100  # DefMemPerCPU=100
    assert completed.memory_per_node_mb is None


def test_pending_jobs_have_no_nodes_and_no_start(jobs: dict[int, Job]) -> None:
    held, waits = jobs[7], jobs[8]
    assert (held.state, held.state_reason) == ("PENDING", "JobHeldUser")
    assert (waits.state, waits.state_reason) == ("PENDING", "Resources")
    for job in (held, waits):
        assert job.nodes == ()
        assert job.start_time is None
        assert job.end_time is None
        assert job.exit_code is None


def test_cancelled_pending_job_is_finished(jobs: dict[int, Job]) -> None:
    cancelled = jobs[9]
    assert cancelled.state == "CANCELLED"
    assert cancelled.is_finished
    assert cancelled.nodes == ()
    # Slurm prints null cpus/tasks for it: the defaults, not an exception.
    assert (cancelled.cpus, cancelled.tasks) == (0, 1)


def test_cpus_per_task_is_derived_because_2205_prints_null(jobs: dict[int, Job]) -> None:
    # -n2 --ntasks-per-node=2 -c1, then -n2 -c3
    assert (jobs[10].tasks, jobs[10].cpus, jobs[10].cpus_per_task) == (2, 2, 1)
    assert (jobs[11].tasks, jobs[11].cpus, jobs[11].cpus_per_task) == (2, 6, 3)
    assert jobs[6].memory_per_cpu_mb == 150  # --mem-per-cpu=150


def test_array_tasks_and_the_pending_remainder(jobs: dict[int, Job]) -> None:
    tasks = sorted((j.array_task_id, j.job_id, j.state) for j in jobs.values()
                   if j.array_job_id == 5 and j.array_task_id is not None)
    assert tasks == [(1, 13, "RUNNING"), (2, 14, "RUNNING")]
    rest = jobs[5]
    assert (rest.array_job_id, rest.array_task_id, rest.array_task_string) == (5, None, "3-4")
    assert (rest.state, rest.state_reason) == ("PENDING", "Resources")


def test_job_on_powering_up_cloud_node_is_configuring(jobs: dict[int, Job]) -> None:
    cloud = jobs[12]
    assert (cloud.state, cloud.nodes, cloud.features) == ("CONFIGURING", ("vca-c1",), "cloud")
    assert not cloud.is_finished


def test_job_requeued_by_forced_power_down_is_pending_begintime() -> None:
    after = {j.job_id: j for j in parse_squeue_json(read("squeue-requeued.json"))}
    assert (after[12].state, after[12].state_reason, after[12].nodes) == (
        "PENDING", "BeginTime", ())


def test_squeue_not_json_says_so() -> None:
    with pytest.raises(SlurmParseError, match=r"`squeue --json` printed something that is not"):
        parse_squeue_json("squeue: error: Invalid user\n")


def test_squeue_errors_without_jobs() -> None:
    with pytest.raises(SlurmParseError, match="gave no job list; errors: .*boom"):
        parse_squeue_json('{"errors": [{"error": "boom"}]}')


def test_job_tolerates_missing_keys() -> None:
    (job,) = parse_squeue_json('{"jobs": [{"job_id": 7, "job_state": "PENDING"}]}')
    assert (job.job_id, job.state, job.nodes, job.cpus_per_task, job.tasks) == (
        7, "PENDING", (), 1, 1)
    assert (job.memory_per_node_mb, job.submit_time, job.name) == (None, 0.0, "")


def test_job_reads_the_2302_structured_numbers() -> None:
    text = ('{"jobs": [{"job_id": 3, "job_state": ["FAILED"], "exit_code": {"status": ["EXIT"],'
            ' "return_code": {"set": true, "number": 2}}, "memory_per_node": {"set": true,'
            ' "infinite": false, "number": 512}, "cpus_per_task": {"set": true, "number": 4}}]}')
    (job,) = parse_squeue_json(text)
    assert (job.state, job.exit_code, job.memory_per_node_mb, job.cpus_per_task) == (
        "FAILED", 2, 512, 4)


# --- sinfo --json ---------------------------------------------------------------------------


def test_sinfo_nodes_sorted_one_per_name(nodes: dict[str, Node]) -> None:
    assert list(nodes) == ["vca-c1", "vca-c2", "vca-c3", "vca-c4", "vca-r1", "vca-r2",
                           "vca-r3", "vca-r4", "vca-r5", "vca-r6"]


def test_sinfo_node_states_and_flags(nodes: dict[str, Node]) -> None:
    seen = {name: (n.state, n.flags) for name, n in nodes.items()}
    assert seen["vca-r1"] == ("ALLOCATED", frozenset())
    assert seen["vca-r3"] == ("MIXED", frozenset())
    assert seen["vca-r4"] == ("IDLE", frozenset())
    assert seen["vca-r5"] == ("IDLE", frozenset({"DRAIN"}))
    assert seen["vca-r6"] == ("DOWN", frozenset())
    assert seen["vca-c1"] == ("MIXED", frozenset({"CLOUD", "NOT_RESPONDING", "POWERING_UP"}))
    assert seen["vca-c3"] == ("IDLE", frozenset({"CLOUD", "POWERED_DOWN"}))


def test_node_properties(nodes: dict[str, Node]) -> None:
    assert nodes["vca-c1"].powering_up and not nodes["vca-c1"].powered_down
    assert nodes["vca-c2"].powered_down and not nodes["vca-c2"].powering_up
    assert nodes["vca-r6"].is_down and not nodes["vca-r5"].is_down
    assert nodes["vca-r5"].is_drained and not nodes["vca-r4"].is_drained
    down = parse_sinfo_json(read("sinfo-powering-down.json"))[0]
    assert (down.name, down.state, down.powering_down) == ("vca-c1", "IDLE", True)


def test_sinfo_node_details(nodes: dict[str, Node]) -> None:
    r1 = nodes["vca-r1"]
    assert (r1.address, r1.hostname, r1.cpus, r1.real_memory_mb) == (
        "127.0.0.1", "vca-r1", 2, 1000)
    assert r1.features == ("fast", "big")
    assert r1.partitions == ("debug",)
    assert nodes["vca-c2"].real_memory_mb == 2000
    assert nodes["vca-r2"].features == ()
    assert nodes["vca-r5"].reason == "maintenance window"
    assert nodes["vca-r6"].reason == "disk failed"
    assert nodes["vca-r4"].reason == ""


def test_sinfo_start_all_cloud_nodes_powered_down() -> None:
    start = parse_sinfo_json(read("sinfo-start.json"))
    assert sorted(n.name for n in start if n.powered_down) == [
        "vca-c1", "vca-c2", "vca-c3", "vca-c4"]
    assert all(n.state == "IDLE" for n in start)


def test_sinfo_deduplicates_a_node_in_two_partitions() -> None:
    text = ('{"nodes": [{"name": "b", "state": "idle", "partitions": ["p1"]},'
            ' {"name": "a", "state": ["DOWN", "DRAIN"]}, {"name": "b", "state": "down"}]}')
    got = parse_sinfo_json(text)
    assert [(n.name, n.state, n.flags) for n in got] == [
        ("a", "DOWN", frozenset({"DRAIN"})), ("b", "IDLE", frozenset())]


# --- scontrol show ... -o --------------------------------------------------------------------


def test_scontrol_show_job_records() -> None:
    records = parse_scontrol_records(read("scontrol-show-job.txt"))
    assert [r["JobId"] for r in records] == [
        "1", "2", "3", "4", "13", "6", "7", "8", "9", "10", "11", "12", "14", "5"]
    failed = records[1]
    assert (failed["JobState"], failed["ExitCode"], failed["Reason"]) == (
        "FAILED", "3:0", "NonZeroExitCode")


def test_scontrol_values_with_spaces_and_equals() -> None:
    (big,) = parse_scontrol_records(read("scontrol-show-job-big.txt"))
    assert big["Comment"] == "vcluster[template=big] my own words"
    assert big["TRES"] == "cpu=2,mem=200M,node=1,billing=2"
    assert big["CPUs/Task"] == "2"
    assert big["AllocNode:Sid"].startswith("localhost:")
    assert big["Power"] == ""


def test_scontrol_array_master_prints_every_task() -> None:
    records = parse_scontrol_records(read("scontrol-show-job-array.txt"))
    assert [(r["JobId"], r["ArrayTaskId"], r["JobState"]) for r in records] == [
        ("5", "3-4", "PENDING"), ("14", "2", "RUNNING"), ("13", "1", "RUNNING")]


def test_scontrol_show_node_records_make_the_same_nodes_as_sinfo(
    nodes: dict[str, Node],
) -> None:
    from_scontrol = {r["NodeName"]: node_from_record(r)
                     for r in parse_scontrol_records(read("scontrol-show-node.txt"))}
    assert from_scontrol == nodes


def test_scontrol_node_reason_stamp_is_stripped() -> None:
    (record,) = parse_scontrol_records(read("scontrol-show-node-vca-r6.txt"))
    assert record["Reason"].startswith("disk failed [root@")
    node = node_from_record(record)
    assert (node.state, node.reason) == ("DOWN", "disk failed")
    (c3,) = parse_scontrol_records(read("scontrol-show-node-vca-c3.txt"))
    assert c3["State"] == "IDLE+CLOUD+POWERED_DOWN"
    assert node_from_record(c3).powered_down


def test_scontrol_record_oddities() -> None:
    assert parse_scontrol_record("") == {}
    assert parse_scontrol_record("A=1 B= C=x y") == {"A": "1", "B": "", "C": "x y"}
    assert parse_scontrol_records("Node nosuch not found\n") == []


def test_node_state_helpers() -> None:
    assert split_node_state(["CLOUD", "IDLE", "POWERED_DOWN"]) == (
        "IDLE", frozenset({"CLOUD", "POWERED_DOWN"}))
    assert split_node_state(["CLOUD"]) == ("UNKNOWN", frozenset({"CLOUD"}))
    assert strip_reason_stamp("(null)") == ""
    assert strip_reason_stamp("a [b] c [slurm@2026-01-01T00:00:00]") == "a [b] c"


# --- hostlists ----------------------------------------------------------------------------------


def test_hostlist_round_trip() -> None:
    names = expand_hostlist("vc-small-[001-003,007],gpu1")
    assert names == ["vc-small-001", "vc-small-002", "vc-small-003", "vc-small-007", "gpu1"]
    assert compress_hostlist(names) == "gpu1,vc-small-[001-003,007]"
    assert compress_hostlist(["b2", "b1", "b1", ""]) == "b[1-2]"


def test_hostlist_empty_values() -> None:
    assert expand_hostlist("") == []
    assert expand_hostlist("(null)") == []
    assert compress_hostlist([]) == ""


def test_bad_hostlist_says_what() -> None:
    with pytest.raises(SlurmParseError, match=r"not a valid Slurm hostlist: 'n\[1-'"):
        expand_hostlist("n[1-")
