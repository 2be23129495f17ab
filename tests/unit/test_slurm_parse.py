"""The Slurm parsers against real output of Slurm 22.05.8 and 24.11.5, captured by
tests/data/slurm/capture.py into tests/data/slurm/<version>/: every test that reads a capture
runs on both versions and asserts what vcluster (and so a user) sees, which must not depend on
the version."""

from __future__ import annotations

from pathlib import Path

import pytest

from vcluster.cli.fsub import Follower
from vcluster.errors import SlurmParseError
from vcluster.hook_steps import node_wait_state
from vcluster.slurm import (
    Job,
    Node,
    compress_hostlist,
    expand_hostlist,
    parse_nodes_json,
    parse_scontrol_record,
    parse_scontrol_records,
    parse_sinfo_json,
    parse_squeue_json,
)
from vcluster.slurm_parse import (
    SlurmVersion,
    UnsupportedSlurm,
    canonical_resume_data,
    check_supported,
    job_state_name,
    node_from_record,
    parse_node_states,
    parse_slurm_version,
    split_node_state,
    strip_reason_stamp,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"
VERSIONS = ("22.05", "24.11")
NODE_LISTING = {"22.05": ("sinfo", "sinfo --json"),
                "24.11": ("scontrol-show-node", "scontrol show node --json")}
"""What vcluster runs to list nodes on each version: the capture's file stem and command."""


def read(version: str, name: str) -> str:
    return (DATA / version / name).read_text()


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def jobs_of(version: str, name: str = "squeue-all.json") -> dict[int, Job]:
    return {j.job_id: j for j in parse_squeue_json(read(version, name))}


def nodes_of(version: str, moment: str = "") -> dict[str, Node]:
    stem, command = NODE_LISTING[version]
    return {n.name: n for n in parse_nodes_json(read(version, f"{stem}{moment}.json"), command)}


@pytest.fixture()
def jobs(version: str) -> dict[int, Job]:
    """``squeue --json --states=all``: what vcluster runs on every version."""
    return jobs_of(version)


@pytest.fixture()
def nodes(version: str) -> dict[str, Node]:
    return nodes_of(version)


# --- versions -------------------------------------------------------------------------------


def test_scontrol_version_of_each_capture(version: str) -> None:
    parsed = parse_slurm_version(read(version, "scontrol-version.txt"))
    assert parsed.release == version
    assert str(parsed) == {"22.05": "22.05.8", "24.11": "24.11.5"}[version]
    assert check_supported(parsed) is parsed
    assert parsed.has_scontrol_json == (version != "22.05")


def test_version_text_forms_and_refusals() -> None:
    assert parse_slurm_version("slurm 25.05.1\n") == SlurmVersion(25, 5, 1)
    assert parse_slurm_version("slurm 23.02.0-0rc1") == SlurmVersion(23, 2, 0)
    assert SlurmVersion(23, 2) < SlurmVersion(23, 11) < SlurmVersion(24, 11, 5)
    with pytest.raises(UnsupportedSlurm) as old:
        check_supported(parse_slurm_version("slurm-wlm 21.08.5"))
    assert str(old.value) == ("Slurm 21.08.5 is not supported: vcluster supports Slurm 22.05 "
                              "and later (tested with 22.05 and 24.11)")
    with pytest.raises(UnsupportedSlurm) as odd:
        parse_slurm_version("scontrol: fatal: Could not establish a configuration source")
    assert str(odd.value) == (
        "cannot read a Slurm version from 'scontrol: fatal: Could not establish a "
        "configuration source'; vcluster supports Slurm 22.05 and later (tested with 22.05 "
        "and 24.11)")


# --- squeue --json ------------------------------------------------------------------------


def test_squeue_all_lists_every_job_in_slurms_order(jobs: dict[int, Job]) -> None:
    assert list(jobs) == [1, 2, 3, 4, 13, 6, 7, 8, 9, 10, 11, 12, 14, 5]


def test_plain_squeue_leaves_finished_jobs_out_from_2302(version: str) -> None:
    plain = jobs_of(version, "squeue.json")
    finished = [i for i in (1, 2, 3, 9) if i in plain]
    assert finished == ([1, 2, 3, 9] if version == "22.05" else [])
    assert {i: j for i, j in plain.items() if not j.is_finished} == {
        i: j for i, j in jobs_of(version).items() if not j.is_finished}


def test_squeue_with_no_jobs_is_an_empty_list(version: str) -> None:
    assert parse_squeue_json(read(version, "squeue-empty.json")) == []


def test_running_job_with_constraint_comment_memory_and_cpus(jobs: dict[int, Job]) -> None:
    big = jobs[4]
    assert big.name == "bigjob"
    assert (big.user, big.user_id) == ("root", 0)
    assert (big.state, big.state_reason, big.partition) == ("RUNNING", "None", "debug")
    assert big.nodes == ("vca-r1",)
    assert (big.node_count, big.cpus, big.cpus_per_task, big.tasks) == (1, 2, 2, 1)
    assert (big.memory_per_node_mb, big.memory_per_cpu_mb) == (200, None)
    assert big.features == "fast"
    assert big.comment == "vcluster[template=big] my own words"
    assert big.work_dir == "/tmp/vca-slurm"
    assert big.submit_time > 1.7e9
    assert big.start_time is not None and 0 <= big.start_time - big.submit_time <= 5
    # squeue projects a running job's end from its time limit: not an end time yet.
    assert (big.end_time, big.exit_code, big.is_finished) == (None, None, False)
    assert (big.array_job_id, big.array_task_id) == (None, None)


def test_finished_jobs_with_final_state_exit_code_and_end(jobs: dict[int, Job]) -> None:
    completed, failed, killed = jobs[1], jobs[2], jobs[3]
    assert (completed.state, completed.exit_code) == ("COMPLETED", 0)
    assert (failed.state, failed.state_reason, failed.exit_code) == ("FAILED", "NonZeroExitCode", 3)
    # kill -KILL $$ in the batch script: reported as 128 + 9 like a shell (22.05: raw wait
    # status 9; 24.11: {"status": ["SIGNALED"], "signal": {"id": 9}}).
    assert (killed.state, killed.exit_code) == ("FAILED", 137)
    for job in (completed, failed, killed):
        assert job.is_finished
        assert job.end_time is not None and 0 <= job.end_time - job.submit_time <= 10
    assert (completed.memory_per_cpu_mb, completed.memory_per_node_mb) == (100, None)


def test_pending_jobs_have_no_nodes_and_no_start(jobs: dict[int, Job]) -> None:
    held, waits = jobs[7], jobs[8]
    assert (held.state, held.state_reason) == ("PENDING", "JobHeldUser")
    assert (waits.state, waits.state_reason) == ("PENDING", "Resources")
    for job in (held, waits):
        assert (job.nodes, job.start_time, job.end_time, job.exit_code) == ((), None, None, None)


def test_cancelled_pending_job_is_finished(jobs: dict[int, Job]) -> None:
    cancelled = jobs[9]
    assert (cancelled.state, cancelled.is_finished, cancelled.nodes) == ("CANCELLED", True, ())
    assert cancelled.tasks == 1


def test_cpus_per_task_of_every_version(jobs: dict[int, Job]) -> None:
    # -n2 --ntasks-per-node=2 -c1, then -n2 -c3 (22.05 prints null: derived)
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


def test_job_on_powering_up_cloud_node_is_booting(version: str, jobs: dict[int, Job]) -> None:
    cloud = jobs[12]
    assert (cloud.state, cloud.nodes, cloud.features) == ("CONFIGURING", ("vca-c1",), "cloud")
    assert cloud.state_words == {"22.05": ("CONFIGURING",),
                                 "24.11": ("RUNNING", "CONFIGURING", "POWER_UP_NODE")}[version]
    assert cloud.is_booting and not cloud.is_finished


class CapturedReader:
    """fsub's JobReader over one capture: the moment job 12 waits for vca-c1 to boot."""

    def __init__(self, version: str) -> None:
        self.version = version

    def jobs(self) -> list[Job]:
        return list(jobs_of(self.version).values())

    def nodes(self) -> list[Node]:
        return list(nodes_of(self.version).values())

    def show_job(self, job_id: int) -> dict[str, str] | None:
        raise AssertionError("the job is in squeue's list")


def test_fsub_shows_booting_vms_on_every_version(version: str) -> None:
    progress = Follower(12).observe(CapturedReader(version))
    assert (progress.phase, progress.text) == ("booting", "job 12: booting VMs (0/1 ready)")


def test_completing_job_is_not_finished_yet(version: str) -> None:
    (job,) = [j for j in parse_squeue_json(read(version, "squeue-completing.json"))
              if j.name == "completing"]
    assert job.state_words == {"22.05": ("COMPLETING",),
                               "24.11": ("CANCELLED", "COMPLETING")}[version]
    assert (job.state, job.is_finished, job.exit_code, job.end_time) == (
        "COMPLETING", False, None, None)


def test_job_requeued_by_forced_power_down_is_pending_begintime(version: str) -> None:
    after = jobs_of(version, "squeue-requeued.json")
    assert (after[12].state, after[12].state_reason, after[12].nodes) == (
        "PENDING", "BeginTime", ())


@pytest.mark.parametrize(("words", "state"), [
    (["RUNNING", "CONFIGURING", "POWER_UP_NODE"], "CONFIGURING"),
    (["RUNNING", "POWER_UP_NODE"], "CONFIGURING"),
    (["CANCELLED", "COMPLETING"], "COMPLETING"),
    (["PENDING", "REQUEUED"], "REQUEUED"),
    (["FAILED"], "FAILED"),
    (["COMPLETING"], "COMPLETING"),
    ([], "UNKNOWN"),
])
def test_job_state_name_follows_slurms_precedence(words: list[str], state: str) -> None:
    assert job_state_name(words) == state


def test_squeue_not_json_says_so() -> None:
    with pytest.raises(SlurmParseError, match=r"`squeue --json` printed something that is not"):
        parse_squeue_json("squeue: error: Invalid user\n")


def test_squeue_errors_without_jobs() -> None:
    with pytest.raises(SlurmParseError) as info:
        parse_squeue_json('{"errors": [{"error": "boom"}, {"description": "bang"}]}')
    assert str(info.value) == "`squeue --json` gave no job list; errors: boom; bang"


def test_job_tolerates_missing_keys() -> None:
    (job,) = parse_squeue_json('{"jobs": [{"job_id": 7, "job_state": "PENDING"}]}')
    assert (job.job_id, job.state, job.nodes, job.cpus_per_task, job.tasks) == (
        7, "PENDING", (), 1, 1)
    assert (job.memory_per_node_mb, job.submit_time, job.name) == (None, 0.0, "")


def test_scontrol_show_job_json_reads_like_squeue(version: str) -> None:
    if version == "22.05":
        assert "unrecognized option '--json'" in read(version, "scontrol-show-job.json.stderr")
        return
    shown = {j.job_id: j for j in parse_squeue_json(read(version, "scontrol-show-job.json"),
                                                    "scontrol show job --json")}
    assert shown == jobs_of(version)


# --- node listings: sinfo --json (22.05), scontrol show node --json (23.02+) ----------------


def test_nodes_sorted_one_per_name(nodes: dict[str, Node]) -> None:
    assert list(nodes) == ["vca-c1", "vca-c2", "vca-c3", "vca-c4", "vca-r1", "vca-r2",
                           "vca-r3", "vca-r4", "vca-r5", "vca-r6"]


def test_node_states_and_flags(nodes: dict[str, Node]) -> None:
    seen = {name: (n.state, n.flags) for name, n in nodes.items()}
    assert seen["vca-r1"] == ("ALLOCATED", frozenset())
    assert seen["vca-r3"] == ("MIXED", frozenset())
    assert seen["vca-r4"] == ("IDLE", frozenset())
    assert seen["vca-r5"] == ("IDLE", frozenset({"DRAIN"}))
    assert seen["vca-r6"] == ("DOWN", frozenset())
    assert seen["vca-c1"] == ("MIXED", frozenset({"CLOUD", "NOT_RESPONDING", "POWERING_UP"}))
    assert seen["vca-c3"] == ("IDLE", frozenset({"CLOUD", "POWERED_DOWN"}))


def test_node_properties(version: str, nodes: dict[str, Node]) -> None:
    assert nodes["vca-c1"].powering_up and not nodes["vca-c1"].powered_down
    assert nodes["vca-c2"].powered_down and not nodes["vca-c2"].powering_up
    assert nodes["vca-r6"].is_down and not nodes["vca-r5"].is_down
    assert nodes["vca-r5"].is_drained and not nodes["vca-r4"].is_drained
    down = nodes_of(version, "-powering-down")["vca-c1"]
    assert (down.state, down.powering_down) == ("IDLE", True)


def test_node_details(nodes: dict[str, Node]) -> None:
    r1 = nodes["vca-r1"]
    assert (r1.address, r1.hostname, r1.cpus, r1.real_memory_mb) == (
        "127.0.0.1", "vca-r1", 2, 1000)
    assert r1.features == ("fast", "big")
    assert r1.partitions == ("debug",)
    assert (nodes["vca-c2"].real_memory_mb, nodes["vca-c2"].features) == (2000, ("cloud",))
    assert nodes["vca-r2"].features == ()
    assert nodes["vca-r5"].reason == "maintenance window"
    assert nodes["vca-r6"].reason == "disk failed"
    assert nodes["vca-r4"].reason == ""


def test_start_all_cloud_nodes_powered_down(version: str) -> None:
    start = nodes_of(version, "-start")
    assert sorted(n for n, node in start.items() if node.powered_down) == [
        "vca-c1", "vca-c2", "vca-c3", "vca-c4"]
    assert all(n.state == "IDLE" for n in start.values())


def test_sinfo_json_of_2302_is_refused_with_the_command_to_use() -> None:
    with pytest.raises(SlurmParseError) as info:
        parse_sinfo_json(read("24.11", "sinfo.json"))
    assert str(info.value) == (
        "`sinfo --json` gave no node list; errors: none; Slurm 23.02 and later list nodes "
        "with `scontrol show node --json`")


def test_scontrol_json_of_2205_does_not_exist() -> None:
    assert read("22.05", "scontrol-show-node.json") == ""
    assert "unrecognized option '--json'" in read("22.05", "scontrol-show-node.json.stderr")


def test_sinfo_deduplicates_a_node_in_two_partitions() -> None:
    text = ('{"nodes": [{"name": "b", "state": "idle", "partitions": ["p1"]},'
            ' {"name": "a", "state": ["DOWN", "DRAIN"]}, {"name": "b", "state": "down"}]}')
    got = parse_sinfo_json(text)
    assert [(n.name, n.state, n.flags) for n in got] == [
        ("a", "DOWN", frozenset({"DRAIN"})), ("b", "IDLE", frozenset())]


# --- the resume file ------------------------------------------------------------------------


def test_resume_file_of_every_version_reads_the_same(version: str) -> None:
    import json

    raw = json.loads(read(version, "resume-file.json"))
    data = canonical_resume_data(raw)
    assert [(j["job_id"], j["nodes"]) for j in data["jobs"]] == [(12, "vca-c1")]
    assert data["all_nodes"] == "vca-c1"
    if version == "24.11":  # 23.02+ names, kept as given
        assert (raw["jobs"][0]["nodes_alloc"], raw["all_nodes_resume"]) == ("vca-c1", "vca-c1")
        assert data["jobs"][0]["partition"] == "debug"
    else:
        assert data == raw


# --- scontrol show ... -o --------------------------------------------------------------------


def test_scontrol_show_job_records(version: str) -> None:
    records = parse_scontrol_records(read(version, "scontrol-show-job.txt"))
    assert [r["JobId"] for r in records] == [
        "1", "2", "3", "4", "13", "6", "7", "8", "9", "10", "11", "12", "14", "5"]
    failed = records[1]
    assert (failed["JobState"], failed["ExitCode"], failed["Reason"]) == (
        "FAILED", "3:0", "NonZeroExitCode")


def test_scontrol_values_with_spaces_and_equals(version: str) -> None:
    (big,) = parse_scontrol_records(read(version, "scontrol-show-job-big.txt"))
    assert big["Comment"] == "vcluster[template=big] my own words"
    # 24.11 prints ReqTRES= and AllocTRES= where 22.05 printed TRES= (vcluster reads neither)
    tres = "TRES" if version == "22.05" else "AllocTRES"
    assert big[tres] == "cpu=2,mem=200M,node=1,billing=2"
    assert big["CPUs/Task"] == "2"
    assert big["AllocNode:Sid"].split(":")[0] in ("localhost", "127.0.0.1")


def test_scontrol_array_master_prints_every_task(version: str) -> None:
    records = parse_scontrol_records(read(version, "scontrol-show-job-array.txt"))
    assert [(r["JobId"], r["ArrayTaskId"], r["JobState"]) for r in records] == [
        ("5", "3-4", "PENDING"), ("14", "2", "RUNNING"), ("13", "1", "RUNNING")]


def test_scontrol_show_node_records_make_the_same_nodes_as_the_listing(
    version: str, nodes: dict[str, Node],
) -> None:
    from_scontrol = {r["NodeName"]: node_from_record(r)
                     for r in parse_scontrol_records(read(version, "scontrol-show-node.txt"))}
    assert from_scontrol == nodes


def test_scontrol_node_reason_stamp_is_stripped(version: str) -> None:
    (record,) = parse_scontrol_records(read(version, "scontrol-show-node-vca-r6.txt"))
    assert record["Reason"].startswith("disk failed [root@")
    node = node_from_record(record)
    assert (node.state, node.reason) == ("DOWN", "disk failed")
    (c3,) = parse_scontrol_records(read(version, "scontrol-show-node-vca-c3.txt"))
    assert c3["State"] == "IDLE+CLOUD+POWERED_DOWN"
    assert node_from_record(c3).powered_down


@pytest.mark.parametrize("capture", ["scontrol-show-node.txt", "scontrol-show-node-vca-r6.txt",
                                     "scontrol-show-node-vca-c1.txt",
                                     "scontrol-show-node-vca-c3.txt",
                                     "scontrol-show-node-missing.txt"])
def test_node_states_read_as_the_whole_records_read_them(version: str, capture: str) -> None:
    """The prologs' wait reads only names and states (and a DOWN node's reason): what it
    reads is what the whole record gives, on both versions, and what a waiting prolog makes
    of each node is the same."""
    text = read(version, capture)
    whole = [node_from_record(r) for r in parse_scontrol_records(text)]
    lean = parse_node_states(text)
    assert [(n.name, n.state, n.flags, n.reason if n.is_down else "") for n in whole] == \
        [(n.name, n.state, n.flags, n.reason) for n in lean]
    assert [node_wait_state(n) for n in whole] == [node_wait_state(n) for n in lean]
    if capture == "scontrol-show-node-vca-r6.txt":
        assert [(n.state, n.reason) for n in lean] == [("DOWN", "disk failed")]


def test_node_states_of_odd_lines() -> None:
    assert parse_node_states("Node nosuch not found\n") == []
    (node,) = parse_node_states("NodeName=a OS=Linux 6.1 #1 SMP State=DOWN+CLOUD Reason=x y "
                                "[root@2026-12-02T08:19:08]\nnot a record\n")
    assert (node.name, node.state, node.flags, node.reason) == (
        "a", "DOWN", frozenset({"CLOUD"}), "x y")
    (node,) = parse_node_states("NodeName=b CPUTot=2 ThreadsPerCore=1")  # as the record's
    assert node.state == node_from_record(parse_scontrol_record(
        "NodeName=b CPUTot=2 ThreadsPerCore=1")).state == "UNKNOWN"


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


@pytest.mark.parametrize("version", VERSIONS)
def test_job_account_is_read_for_usage_accounting(version: str) -> None:
    import json

    data = json.loads((DATA / version / "squeue.json").read_text())
    assert {j.account for j in parse_squeue_json(json.dumps(data))} == {""}  # no accounts kept
    data["jobs"][0]["account"] = "physics"
    assert parse_squeue_json(json.dumps(data))[0].account == "physics"


def test_a_suspended_job_says_since_when_on_every_version(version: str) -> None:
    """The capture's running job reshaped as Slurm prints a SUSPENDED one (22.05: a number,
    24.11: ``{"set", "infinite", "number"}``); a running job has no suspend time."""
    import json

    raw = json.loads(read(version, "squeue-all.json"))["jobs"]
    running = next(j for j in raw if "RUNNING" in str(j["job_state"]))
    at = 1764690000
    shaped = {"job_state": ["SUSPENDED"] if version != "22.05" else "SUSPENDED",
              "suspend_time": at if version == "22.05" else
              {"set": True, "infinite": False, "number": at}}
    (suspended, still) = parse_squeue_json(json.dumps({"jobs": [dict(running, **shaped),
                                                                 running]}))
    assert (suspended.state, suspended.suspend_time) == ("SUSPENDED", float(at))
    assert (still.state, still.suspend_time) == ("RUNNING", None)


@pytest.mark.parametrize("version", VERSIONS)
def test_listings_read_record_by_record_read_as_the_whole_json(version: str) -> None:
    """The listings are converted one record at a time (never the whole JSON tree at once):
    compact or indented, keys before or after the list, the same jobs and nodes."""
    import json

    for name, parse in (("squeue", parse_squeue_json),
                        (NODE_LISTING[version][0],
                         lambda t: parse_nodes_json(t, NODE_LISTING[version][1]))):
        text = (DATA / version / f"{name}.json").read_text()
        data = json.loads(text)
        key = "jobs" if name == "squeue" else "nodes"
        listed = {key: data.pop(key)}
        expected = parse(text)
        assert expected  # the captures are not empty
        assert parse(json.dumps({**listed, **data})) == expected  # list first
        assert parse(json.dumps({**data, **listed}, indent=1)) == expected  # list last
        for size in (1, 7, 4096):  # read from pieces (a file, a pipe), cut anywhere
            assert parse(text[at:at + size] for at in range(0, len(text), size)) == expected


@pytest.mark.parametrize("text", ["", "[1]", "{", '{"jobs": [1,', '{"jobs": []} x',
                                  '{"jobs": [{"job_id": 1}]', '{"a": 1 "jobs": []}',
                                  '{"jobs": [{"job_id": 1} {"job_id": 2}]}'])
def test_broken_squeue_json_is_one_clear_error(text: str) -> None:
    for given in (text, iter(text)):  # whole, or one character at a time
        with pytest.raises(SlurmParseError, match="squeue --json` printed (something that is"
                                                   " not JSON|JSON that is not an object)"):
            parse_squeue_json(given, "squeue --json")


def test_null_job_list_is_no_job_list() -> None:
    with pytest.raises(SlurmParseError, match="gave no job list"):
        parse_squeue_json('{"jobs": null, "errors": []}')


@pytest.mark.parametrize("version", VERSIONS)
def test_listings_read_for_their_fields_read_as_every_field(version: str) -> None:
    """Slurm's listings are read as bytes for the fields vcluster uses only (msgspec skips
    the others): every capture's jobs and nodes come out as when every field is read."""
    import json

    from vcluster.slurm_fast import JOB_FIELDS, NODE_FIELDS, asdict, read_fields
    from vcluster.slurm_parse import job_from_json, node_from_json

    checked = 0
    for path in sorted((DATA / version).glob("*.json")):
        if not path.read_text().strip():
            continue  # a command that printed nothing (22.05's scontrol --json)
        data = json.loads(path.read_text())
        for key, fields, convert in (("jobs", JOB_FIELDS, job_from_json),
                                     ("nodes", NODE_FIELDS, node_from_json)):
            if not isinstance(data.get(key), list):
                continue
            _data, structs = read_fields(path.read_bytes(), key)  # type: ignore[misc]
            records = [asdict(r) for r in structs]
            assert [convert(r) for r in records] == [convert(r) for r in data[key]], path
            assert all(set(r) == set(fields) for r in records)
            checked += len(records)
    assert checked > 10


def test_listing_the_fast_reader_refuses_is_read_the_standard_way() -> None:
    """A list item that is not an object is skipped, as before; text that is not JSON is
    the same one-line error as bytes or text."""
    (job,) = parse_squeue_json(b'{"jobs": [7, {"job_id": 8, "job_state": "PENDING"}]}')
    assert (job.job_id, job.state) == (8, "PENDING")
    with pytest.raises(SlurmParseError, match="printed something that is not JSON"):
        parse_squeue_json(b'{"jobs": [\xff', "squeue --json")
    with pytest.raises(SlurmParseError, match="scontrol show node --json"):
        parse_nodes_json(b'{"sinfo": [], "errors": []}', "sinfo --json")
