"""fsub: refusals before submission, the sbatch argv it builds, and a real submission."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from vcluster import public_status
from vcluster.cli.fsub import Progress, follow_job, fsub
from vcluster.config import load_config
from vcluster.errors import ConfigError, SlurmError
from vcluster.slurm import (
    Job,
    Node,
    parse_scontrol_records,
    parse_sinfo_json,
    parse_squeue_json,
)
from vcluster.submit import (
    Submission,
    SubmitRequest,
    parse_memory_mb,
    parse_options,
    plan_submission,
    script_directives,
)

CONFIG = """
[controller]
status_file = "{bin_dir}/run/status.json"

[slurm]
partitions = ["vcluster", "vcpool"]
bin_dir = "{bin_dir}"
conf = "{bin_dir}/slurm.conf"

[[node_class]]
name = "small"
count = 4
cpus = 2
memory_mb = 4096
template = "worker"
templates = ["ubuntu", 7]

[[node_class]]
name = "pool"
count = 8
cpus = 4
memory_mb = 8192
template = "worker"
policy = "pool"
partition = "vcpool"
"""


def write_config(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "vcluster.toml"
    path.write_text(text.format(bin_dir=tmp_path / "bin"))
    return path


# --- config: the templates a class allows ----------------------------------------------------


def test_class_templates_are_allowed_alternatives(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path), environ={})
    assert cfg.node_class("small").templates == ("ubuntu", "7")
    assert cfg.node_class("small").allowed_templates == ("worker", "ubuntu", "7")
    assert cfg.node_class("pool").allowed_templates == ("worker",)


@pytest.mark.parametrize("bad", ['templates = "ubuntu"', 'templates = ["ubuntu", ""]',
                                 "templates = [true]"])
def test_class_templates_must_be_a_list_of_names(tmp_path: Path, bad: str) -> None:
    path = write_config(tmp_path, CONFIG.replace('templates = ["ubuntu", 7]', bad))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    expected = ("must be a list, got 'ubuntu'" if bad.endswith('"ubuntu"')
                else "must be a list of template names or numeric ids")
    assert str(info.value) == f"{path}: node_class[0].templates: {expected}"


# --- reading options as sbatch does ------------------------------------------------------------


def test_options_are_read_with_sbatchs_rules() -> None:
    options, operands = parse_options(
        ["-HN2", "--mem", "4G", "--part=vcluster", "-k", "--exclusive", "-c2",
         "--container-image=x", "-J", "-odd-name", "job.sh", "--nodes=9", "arg"])
    assert [(o.name, o.value, o.tokens) for o in options] == [
        ("hold", None, ("-H",)),
        ("nodes", "2", ("-N2",)),
        ("mem", "4G", ("--mem", "4G")),
        ("partition", "vcluster", ("--part=vcluster",)),
        ("no-kill", None, ("-k",)),
        ("exclusive", None, ("--exclusive",)),
        ("cpus-per-task", "2", ("-c2",)),
        ("container-image", "x", ("--container-image=x",)),
        ("job-name", "-odd-name", ("-J", "-odd-name")),
    ]
    assert operands == ["job.sh", "--nodes=9", "arg"]


def test_sbatch_directives_stop_at_the_first_command() -> None:
    script = ("#!/bin/bash\n#SBATCH -N 2 --mem=1G  # two nodes\n\n# a comment\n"
              " #SBATCH --nodes=7\n#SBATCH --comment='my words'\n#SBATCHX -N 5\n"
              "echo hi\n#SBATCH --nodes=9\n")
    assert [(o.name, o.value, o.where) for o in script_directives(script)] == [
        ("nodes", "2", "#SBATCH line 2"),
        ("mem", "1G", "#SBATCH line 2"),
        ("comment", "my words", "#SBATCH line 6"),
    ]


@pytest.mark.parametrize(("text", "memory_mb"), [
    ("4096", 4096), ("4G", 4096), ("4g", 4096), ("512M", 512), ("1T", 1048576),
    ("100K", 1), ("2GB", 2048), ("4.5G", None), ("G", None), ("-1", None), ("4X", None),
])
def test_memory_sizes_read_as_slurm_does(text: str, memory_mb: int | None) -> None:
    assert parse_memory_mb(text) == memory_mb


# --- the sbatch arguments built ------------------------------------------------------------------


def plan(tmp_path: Path, argv: list[str], script: str = "#!/bin/sh\ntrue\n") -> Submission:
    cfg = load_config(write_config(tmp_path), environ={})
    return plan_submission(SubmitRequest.from_argv(argv, script), cfg)


def test_per_job_class_gets_partition_feature_exclusive_and_template(tmp_path: Path) -> None:
    script = "#!/bin/sh\n#SBATCH --comment='from script'\n#SBATCH -C fast\nhostname\n"
    submission = plan(tmp_path, ["-N", "2", "--vm-template", "ubuntu", "--exclusive=user",
                                 "-p", "vcluster", "--parsable", "-W", "-J", "x", "job.sh", "a"],
                      script)
    assert submission.sbatch_args == (
        "--parsable", "-N", "2", "-J", "x",
        "--partition=vcluster", "--constraint=(fast)&small", "--exclusive",
        "--comment=vcluster[template=ubuntu] from script", "job.sh", "a")
    assert (submission.node_class.name, submission.template) == ("small", "ubuntu")
    assert submission.parsable and submission.follow


def test_pool_class_keeps_the_users_own_options(tmp_path: Path) -> None:
    submission = plan(tmp_path, ["--vm-class=pool", "--exclusive=user", "--comment", "mine",
                                 "--constraint=a|b", "--mem-per-cpu=1G", "job.sh"])
    assert submission.sbatch_args == (
        "--parsable", "--exclusive=user", "--comment", "mine", "--mem-per-cpu=1G",
        "--partition=vcpool", "--constraint=(a|b)&pool", "job.sh")
    assert submission.template is None and not submission.follow


def test_partition_without_class_picks_the_first_class_there(tmp_path: Path) -> None:
    submission = plan(tmp_path, ["-p", "vcpool", "job.sh"])
    assert submission.node_class.name == "pool"
    assert submission.sbatch_args == (
        "--parsable", "--partition=vcpool", "--constraint=pool", "job.sh")


def test_script_on_stdin_is_passed_on_stdin(tmp_path: Path) -> None:
    submission = plan(tmp_path, ["-N1"], "#!/bin/sh\n#SBATCH --mem=1G\ntrue\n")
    assert submission.sbatch_args == (
        "--parsable", "-N1", "--partition=vcluster", "--constraint=small", "--exclusive")
    assert submission.script_text == "#!/bin/sh\n#SBATCH --mem=1G\ntrue\n"


# --- the command, end to end against a real (tiny) sbatch ---------------------------------------

FAKE_SBATCH = """#!/bin/sh
printf '%s\\n' "$@" > "{record}/argv"
printf '%s\\n' "$SLURM_CONF" > "{record}/slurm_conf"
cat > "{record}/stdin"
{behaviour}
"""


@pytest.fixture()
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config whose bin_dir holds an sbatch that records its argv and prints job id 42."""
    (tmp_path / "bin").mkdir()
    install_sbatch(tmp_path, "echo 42")
    monkeypatch.setenv("VCLUSTER_CONFIG", str(write_config(tmp_path)))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.sh").write_text("#!/bin/sh\n#SBATCH --mem=2G\nhostname\n")
    return tmp_path


def install_sbatch(tmp_path: Path, behaviour: str) -> None:
    sbatch = tmp_path / "bin" / "sbatch"
    sbatch.write_text(FAKE_SBATCH.format(record=tmp_path, behaviour=behaviour))
    sbatch.chmod(0o755)


def run_fsub(argv: list[str], stdin: str | None = None) -> Result:
    return CliRunner().invoke(fsub, argv, input=stdin, prog_name="fsub")


@pytest.mark.parametrize(("argv", "message"), [
    (["-N0", "job.sh"], "--nodes=0: a job needs at least 1 node"),
    (["--nodes=0-2", "job.sh"], "--nodes=0-2: a job needs at least 1 node"),
    (["--mem=4X", "job.sh"],
     "--mem=4X: not a memory size; use a whole number with an optional K, M, G or T suffix "
     "(e.g. --mem=4G)"),
    (["--mem-per-cpu", "lots", "job.sh"],
     "--mem-per-cpu=lots: not a memory size; use a whole number with an optional K, M, G or T "
     "suffix (e.g. --mem-per-cpu=4G)"),
    (["--vm-class", "huge", "job.sh"], "--vm-class=huge: unknown node class (known: small, pool)"),
    (["--vm-template=centos", "job.sh"],
     "--vm-template=centos: not allowed for node class small (allowed: worker, ubuntu, 7)"),
    (["--vm-class=pool", "--vm-template=ubuntu", "job.sh"],
     "--vm-template=ubuntu: not allowed for node class pool (allowed: worker)"),
    (["-N", "5", "job.sh"], "--nodes=5: node class small has only 4 nodes"),
    (["-n", "9", "job.sh"],
     "--ntasks=9: needs 5 nodes of node class small (2 CPUs each) but it has only 4"),
    (["-c", "3", "job.sh"], "--cpus-per-task=3: node class small has 2 CPUs per node"),
    (["--mem=5G", "job.sh"], "--mem=5G: node class small has 4096 MB of memory per node"),
    (["-p", "debug", "job.sh"],
     "--partition=debug: node class small runs in partition vcluster; leave --partition out"),
    (["--vm-class"], "option --vm-class needs a value"),
    (["-N", "1", "no-such.sh"], "cannot read batch script no-such.sh: No such file or directory"),
])
def test_bad_input_is_refused_before_submitting(site: Path, argv: list[str], message: str) -> None:
    result = run_fsub(argv)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"fsub: error: {message}\n")
    assert not (site / "argv").exists()


@pytest.mark.parametrize(("script", "message"), [
    ("#!/bin/sh\n#SBATCH --nodes=0\ntrue\n",
     "--nodes=0 (#SBATCH line 2): a job needs at least 1 node"),
    ("#!/bin/sh\n#SBATCH -N1\n#SBATCH -W\ntrue\n",
     "--wait (#SBATCH line 3): remove it from the script and use fsub --wait"),
])
def test_refusal_names_the_sbatch_line_at_fault(site: Path, script: str, message: str) -> None:
    result = run_fsub([], stdin=script)
    assert result.stderr == f"fsub: error: {message}\n"
    assert result.exit_code == 1 and not (site / "argv").exists()


def test_submits_through_sbatch_with_sbatchs_output(site: Path) -> None:
    result = run_fsub(["-N", "2", "--vm-template", "ubuntu", "--comment=mine", "job.sh", "x"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, "Submitted batch job 42\n", "")
    assert (site / "argv").read_text().splitlines() == [
        "--parsable", "-N", "2", "--partition=vcluster", "--constraint=small", "--exclusive",
        "--comment=vcluster[template=ubuntu] mine", "job.sh", "x"]
    assert (site / "slurm_conf").read_text() == f"{site / 'bin' / 'slurm.conf'}\n"


def test_parsable_prints_the_id_only_and_stdin_script_goes_to_sbatch(site: Path) -> None:
    script = "#!/bin/sh\n#SBATCH -N 1\necho from stdin\n"
    result = run_fsub(["--parsable", "--vm-class=pool"], stdin=script)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "42\n", "")
    assert (site / "argv").read_text().splitlines() == [
        "--parsable", "--partition=vcpool", "--constraint=pool"]
    assert (site / "stdin").read_text() == script


def _status(site: Path, running: bool, seconds_ago: float) -> None:
    at = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    public_status.write(str(site / "bin" / "run" / "status.json"),
                        public_status.ControllerStatus(running, at, "ctl1", 4242, "0.1"))


@pytest.mark.parametrize(("running", "ago_s", "said"), [
    (True, 5, ""),
    (True, 600, "fsub: the vcluster controller is not running (its last heartbeat was 10 min "
                "ago on ctl1 (pid 4242)): the job waits in the queue until it is back; tell "
                "your admin\n"),
    (False, 30, "fsub: the vcluster controller is not running (it was stopped 30 s ago on "
                "ctl1): the job waits in the queue until it is back; tell your admin\n"),
])
def test_fsub_says_when_the_controller_is_down_and_submits(
        site: Path, running: bool, ago_s: float, said: str) -> None:
    _status(site, running, ago_s)
    result = run_fsub(["job.sh"])
    assert (result.exit_code, result.stdout, result.stderr) == (
        0, "Submitted batch job 42\n", said)
    assert (site / "argv").exists()


def test_a_status_file_fsub_cannot_read_says_nothing(site: Path) -> None:
    """Not knowing is not "down": no status directory, or a file that is not a status."""
    assert run_fsub(["job.sh"]).stderr == ""  # the directory does not even exist
    (site / "bin" / "run").mkdir()
    assert run_fsub(["job.sh"]).stderr == ("fsub: the vcluster controller is not running (it "
                                           "has never run here (no status file)): the job "
                                           "waits in the queue until it is back; tell your "
                                           "admin\n")
    (site / "bin" / "run" / "status.json").write_text("not json")
    assert run_fsub(["job.sh"]).stderr == ""


def test_sbatch_refusal_is_relayed_with_its_exit_code(site: Path) -> None:
    install_sbatch(site, "echo 'sbatch: error: Batch job submission failed: Invalid feature "
                         "specification' >&2\nexit 1")
    result = run_fsub(["-C", "nosuch", "job.sh"])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        "sbatch: error: Batch job submission failed: Invalid feature specification\n")
    assert "--constraint=(nosuch)&small" in (site / "argv").read_text().splitlines()


# --- --wait: following the job ------------------------------------------------------------------

DATA = Path(__file__).resolve().parent.parent / "data" / "slurm" / "22.05"


def captured(kind: str, key: str, value: object) -> dict[str, Any]:
    """One record of a real 22.05 capture (a CLOUD job CONFIGURING / its powering-up node)."""
    records = json.loads((DATA / f"{kind}.json").read_text())["jobs" if kind == "squeue" else
                                                                   "nodes"]
    return next(r for r in records if r[key] == value)


def job_json(state: str, reason: str = "None", nodes: str = "", exit_status: int = 0) -> str:
    job = dict(captured("squeue", "job_id", 12), job_id=42, job_state=state,
               state_reason=reason, nodes=nodes, exit_code=exit_status)
    return json.dumps({"jobs": [job]})


def nodes_json(*powering_up: bool) -> str:
    base = captured("sinfo", "name", "vca-c1")
    nodes = [dict(base, name=f"vc-small-00{i}", state="mixed",
                  state_flags=["CLOUD", "POWERING_UP"] if up else ["CLOUD"])
             for i, up in enumerate(powering_up, start=1)]
    return json.dumps({"nodes": nodes})


STEPS = [  # (squeue --json, sinfo --json) as Slurm prints them while a job boots and fails
    (job_json("PENDING", "Resources"), nodes_json()),
    (job_json("CONFIGURING", nodes="vc-small-[001-002]"), nodes_json(True, True)),
    (job_json("CONFIGURING", nodes="vc-small-[001-002]"), nodes_json(False, True)),
    (job_json("CONFIGURING", nodes="vc-small-[001-002]"), nodes_json(False, True)),
    (job_json("RUNNING", nodes="vc-small-[001-002]"), nodes_json(False, False)),
    (job_json("FAILED", "NonZeroExitCode", "vc-small-[001-002]", 3 << 8), nodes_json()),
]
def test_a_requeued_job_says_why_from_its_admin_comment() -> None:
    why = "vcluster: requeued after a VM failed (1 so far); last: VM 7 failed (BOOT_FAILURE)"
    requeued = json.loads(job_json("PENDING", "BeginTime"))
    requeued["jobs"][0]["admin_comment"] = why
    lines, _ = follow(ScriptedSlurm([(json.dumps(requeued), nodes_json()),
                                     (job_json("COMPLETED", nodes="vc-small-001"),
                                      nodes_json())]))
    assert lines == [f"job 42: queued (BeginTime): {why}", "job 42: completed, exit code 0"]


EXPECTED_LINES = [
    "job 42: queued (Resources)",
    "job 42: booting VMs (0/2 ready)",
    "job 42: booting VMs (1/2 ready)",
    "job 42: running on vc-small-[001-002]",
    "job 42: failed, exit code 3",
]


class ScriptedSlurm:
    """A JobReader replaying real-format outputs through the real parsers, one step a read."""

    def __init__(self, steps: list[tuple[str, str]], show_job: str = "") -> None:
        self.steps = steps
        self.step = -1
        self.record = show_job

    def jobs(self) -> list[Job]:
        self.step = min(self.step + 1, len(self.steps) - 1)
        return parse_squeue_json(self.steps[self.step][0])

    def nodes(self) -> list[Node]:
        return parse_sinfo_json(self.steps[self.step][1])

    def show_job(self, job_id: int) -> dict[str, str] | None:
        records = parse_scontrol_records(self.record)
        return records[0] if records else None


def follow(reader: ScriptedSlurm, job_id: int = 42) -> tuple[list[str], Progress]:
    lines: list[str] = []
    last = follow_job(reader, job_id, lambda p: lines.append(p.text), sleep=lambda s: None)
    return lines, last


def test_wait_shows_each_phase_once_and_returns_the_exit_code() -> None:
    lines, last = follow(ScriptedSlurm(STEPS))
    assert lines == EXPECTED_LINES
    assert (last.phase, last.exit_code) == ("finished", 3)


def test_cancelled_job_gives_a_reason_and_a_non_zero_code() -> None:
    lines, last = follow(ScriptedSlurm([(job_json("PENDING", "Resources"), nodes_json()),
                                        (job_json("CANCELLED", "JobHeldUser"), nodes_json())]))
    assert lines == ["job 42: queued (Resources)", "job 42: ended CANCELLED (JobHeldUser)"]
    assert last.exit_code == 1


def test_job_gone_from_squeue_is_read_from_scontrol() -> None:
    record = (DATA / "scontrol-show-job.txt").read_text().splitlines()[1]  # job 2, exit 3
    assert record.startswith("JobId=2 ")
    reader = ScriptedSlurm([(json.dumps({"jobs": []}), nodes_json())], show_job=record)
    lines, last = follow(reader, 2)
    assert lines == ["job 2: failed, exit code 3"] and last.exit_code == 3


def test_job_unknown_to_slurm_is_an_error() -> None:
    with pytest.raises(SlurmError) as info:
        follow(ScriptedSlurm([(json.dumps({"jobs": []}), nodes_json())]), 7)
    assert str(info.value) == ("job 7 is no longer known to Slurm; its exit code is unknown "
                               "(see the job's output file)")


def test_array_is_followed_until_every_task_is_done() -> None:
    squeue = json.loads((DATA / "squeue.json").read_text())
    array = [j for j in squeue["jobs"] if j["array_job_id"] == 5]
    done = [dict(j, job_state="COMPLETED", exit_code=0) for j in array if j["array_task_id"]]
    done.append(dict(array[-1], job_id=15, array_task_id=3, job_state="FAILED",
                     exit_code=2 << 8))
    reader = ScriptedSlurm([(json.dumps({"jobs": array}), nodes_json()),
                            (json.dumps({"jobs": done}), nodes_json())])
    lines, last = follow(reader, 5)
    assert lines == ["job 5: array tasks 2 running, more queued, 0 finished",
                     "job 5: array finished, 2 completed, 1 not, highest exit code 2"]
    assert last.exit_code == 2


def test_wait_end_to_end_exits_with_the_jobs_code(site: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Real sbatch/squeue/sinfo processes (tiny scripts replaying real-format output)."""
    for i, (squeue, sinfo) in enumerate(STEPS):
        (site / f"squeue.{i}").write_text(squeue)
        (site / f"sinfo.{i}").write_text(sinfo)
    (site / "step").write_text("-1")
    for command, advance in (("squeue", 1), ("sinfo", 0)):
        program = site / "bin" / command
        program.write_text(
            f"#!{sys.executable}\nimport pathlib\nd = pathlib.Path({str(site)!r})\n"
            f"step = min(int((d / 'step').read_text()) + {advance}, {len(STEPS) - 1})\n"
            f"(d / 'step').write_text(str(step))\n"
            f"print((d / ('{command}.%d' % step)).read_text())\n")
        program.chmod(0o755)
    scontrol = site / "bin" / "scontrol"  # vcluster reads the Slurm version once
    scontrol.write_text(f"#!/bin/sh\ncat {DATA / 'scontrol-version.txt'}\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("FSUB_WAIT_INTERVAL_S", "0.05")
    result = run_fsub(["--wait", "-N2", "job.sh"])
    assert result.stdout == "Submitted batch job 42\n"
    assert result.stderr == "".join(f"{line}\n" for line in EXPECTED_LINES)
    assert result.exit_code == 3
    assert "--wait" not in (site / "argv").read_text().splitlines()
