"""Slurm's command runner against real small programs standing in for Slurm's CLI.

``bin_dir`` points at a temporary directory of executable shell scripts named squeue,
sinfo, scontrol, sbatch... that log their argv and print captured output of Slurm 22.05 and
of 24.11 (every test runs on both), fail like Slurm does, or hang: real processes, real
pipes, real timeouts.
"""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path

import pytest

from vcluster.config import SlurmSettings
from vcluster.errors import SlurmCommandError, SlurmParseError
from vcluster.slurm import CommandResult, Slurm, UnsupportedSlurm

DATA_ROOT = Path(__file__).resolve().parents[1] / "data" / "slurm"
VERSIONS = ("22.05", "24.11")

# Each fake logs "name arg1 arg2..." (shell-quoted) and its SLURM_CONF / PATH, then acts.
PROLOGUE = """#!/bin/sh
{{ printf '%s' "$(basename "$0")"; for a in "$@"; do printf ' %s' "'$a'"; done; echo; }} >> {log}
echo "SLURM_CONF=$SLURM_CONF PATH=$PATH" >> {log}.env
"""

SCONTROL = """
case "$*" in
  "--version") cat {data}/scontrol-version.txt ;;
  "show node --json") cat {data}/scontrol-show-node.json ;;
  "show node nosuch -o") echo "Node nosuch not found"; exit 1 ;;
  "show node broken -o")
     echo "slurm_load_node error: Unable to contact slurm controller (connect failure)" >&2
     exit 1 ;;
  "show node vca-r6 -o") cat {data}/scontrol-show-node-vca-r6.txt ;;
  "show job 999999 -o") cat {data}/scontrol-show-job-missing.txt.stderr >&2; exit 1 ;;
  "show job 4 -o") cat {data}/scontrol-show-job-big.txt ;;
  "show job 5 -o") cat {data}/scontrol-show-job-array.txt ;;
  "show job 13 -o") cat {data}/scontrol-show-job-array.txt ;;
  *) exit 0 ;;
esac
"""


class FakeSlurm:
    def __init__(self, root: Path, version: str) -> None:
        self.version = version
        self.data = DATA_ROOT / version
        self.bin_dir = root / "bin"
        self.bin_dir.mkdir()
        self.log = root / "calls.log"
        self.conf = str(root / "etc" / "slurm.conf")
        Path(self.conf).parent.mkdir()
        Path(self.conf).write_text("ClusterName=fake\n")

    def script(self, name: str, body: str) -> None:
        path = self.bin_dir / name
        path.write_text(PROLOGUE.format(log=self.log) + body.format(data=self.data))
        path.chmod(0o755)

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [shlex.split(line) for line in self.log.read_text().splitlines()]

    def env_lines(self) -> list[str]:
        return Path(f"{self.log}.env").read_text().splitlines()

    def slurm(self, timeout_s: float = 5.0, environ: dict[str, str] | None = None) -> Slurm:
        settings = SlurmSettings(conf=self.conf, bin_dir=str(self.bin_dir),
                                 command_timeout_s=timeout_s)
        return Slurm(settings, environ={} if environ is None else environ)


@pytest.fixture(params=VERSIONS)
def fake(tmp_path: Path, request: pytest.FixtureRequest) -> FakeSlurm:
    f = FakeSlurm(tmp_path, str(request.param))
    f.script("squeue", "cat {data}/squeue-all.json\n")
    f.script("sinfo", "cat {data}/sinfo.json\n")
    f.script("scontrol", SCONTROL)
    f.script("sbatch", 'cat > "$(dirname "$0")/../stdin.txt"\necho "42;vca"\n')
    f.script("scancel", "exit 0\n")
    f.script("strigger", "exit 0\n")
    return f


# --- run() ------------------------------------------------------------------------------------


def test_run_sets_slurm_conf_and_a_path_when_the_caller_has_none(fake: FakeSlurm) -> None:
    result = fake.slurm(environ={}).run(["squeue", "--json"])
    assert isinstance(result, CommandResult)
    assert result.argv == (str(fake.bin_dir / "squeue"), "--json")
    assert result.returncode == 0
    assert result.stdout == (fake.data / "squeue-all.json").read_text()
    assert result.stderr == ""
    assert 0 < result.duration_s < 5
    assert fake.env_lines() == [
        f"SLURM_CONF={fake.conf} PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    ]


def test_run_keeps_the_callers_path_and_overrides_slurm_conf(fake: FakeSlurm) -> None:
    fake.slurm(environ={"PATH": "/usr/bin:/bin", "SLURM_CONF": "/elsewhere"}).run(["sinfo"])
    assert fake.env_lines() == [f"SLURM_CONF={fake.conf} PATH=/usr/bin:/bin"]


def test_failure_carries_command_exit_code_and_output(fake: FakeSlurm) -> None:
    fake.script("squeue", 'echo "partial"\necho "squeue: error: Invalid user: nobody9" >&2\n'
                          "exit 1\n")
    with pytest.raises(SlurmCommandError) as caught:
        fake.slurm().run(["squeue", "--json", "--user=nobody9"])
    err = caught.value
    squeue = str(fake.bin_dir / "squeue")
    assert err.argv == [squeue, "--json", "--user=nobody9"]
    assert (err.returncode, err.stdout, err.stderr) == (
        1, "partial\n", "squeue: error: Invalid user: nobody9\n")
    assert not err.timed_out and not err.temporary
    assert str(err) == (f"`{squeue} --json --user=nobody9` failed (exit 1): "
                        "squeue: error: Invalid user: nobody9")


def test_check_false_returns_the_failure(fake: FakeSlurm) -> None:
    result = fake.slurm().run(["scontrol", "show", "node", "nosuch", "-o"], check=False)
    assert (result.returncode, result.stdout) == (1, "Node nosuch not found\n")


def test_timeout_kills_the_command_and_its_children(fake: FakeSlurm) -> None:
    # The shell's child sleep keeps the pipes open: only killing the session ends it.
    fake.script("squeue", "sleep 30\necho never\n")
    started = time.monotonic()
    with pytest.raises(SlurmCommandError) as caught:
        fake.slurm().run(["squeue", "--json"], timeout_s=0.5)
    assert time.monotonic() - started < 5
    err = caught.value
    assert err.timed_out and err.temporary
    assert (err.returncode, err.timeout_s, err.stdout) == (None, 0.5, "")
    assert str(err) == (f"`{fake.bin_dir / 'squeue'} --json` timed out after 0.5 s; "
                        "is slurmctld responding?")


def test_timeout_defaults_to_settings_command_timeout(fake: FakeSlurm) -> None:
    fake.script("squeue", "exec sleep 30\n")
    with pytest.raises(SlurmCommandError) as caught:
        fake.slurm(timeout_s=0.3).jobs()
    assert caught.value.timed_out
    assert caught.value.timeout_s == 0.3


def test_missing_program_names_the_setting(fake: FakeSlurm) -> None:
    with pytest.raises(SlurmCommandError) as caught:
        fake.slurm().run(["sacct"])
    assert caught.value.returncode is None
    assert str(caught.value) == (f"cannot run `{fake.bin_dir / 'sacct'}`: No such file or "
                                 "directory; check slurm.bin_dir in the vcluster config")


def test_run_logs_command_and_duration(fake: FakeSlurm, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="vcluster.slurm"):
        fake.slurm().run(["sinfo", "--json"])
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG
    assert record.getMessage().startswith(f"ran ['{fake.bin_dir / 'sinfo'}', '--json'] in ")
    assert record.getMessage().endswith(" s: exit 0")


# --- reads ------------------------------------------------------------------------------------


def test_jobs_and_job(fake: FakeSlurm) -> None:
    slurm = fake.slurm()
    assert len(slurm.jobs()) == 14
    task = slurm.job(13)
    assert task is not None
    assert (task.array_job_id, task.array_task_id, task.nodes) == (5, 1, ("vca-r2",))
    assert slurm.job(999) is None
    # finished jobs too: 23.02+ leave them out of plain `squeue --json`; 22.05 accepts the flag
    assert [j.job_id for j in slurm.jobs() if j.is_finished] == [1, 2, 3, 9]
    assert fake.calls() == [["squeue", "--json", "--states=all"]] * 4


def test_nodes_from_the_listing_of_each_version_and_the_version_read_once(
        fake: FakeSlurm) -> None:
    slurm = fake.slurm()
    names = [n.name for n in slurm.nodes()]
    assert names[:2] == ["vca-c1", "vca-c2"] and len(names) == 10
    assert slurm.nodes() == slurm.nodes()
    listing = (["sinfo", "--json"] if fake.version == "22.05"
               else ["scontrol", "show", "node", "--json"])
    assert fake.calls() == [["scontrol", "--version"], listing, listing, listing]
    assert str(slurm.version()) == {"22.05": "22.05.8", "24.11": "24.11.5"}[fake.version]


def test_an_unsupported_slurm_is_refused_in_one_line(fake: FakeSlurm) -> None:
    fake.script("scontrol", 'echo "slurm 21.08.8-2"\n')
    with pytest.raises(UnsupportedSlurm) as caught:
        fake.slurm().nodes()
    assert str(caught.value) == ("Slurm 21.08.8 is not supported: vcluster supports Slurm "
                                 "22.05 and later (tested with 22.05 and 24.11)")
    assert fake.calls() == [["scontrol", "--version"]]


def test_version_without_a_slurm_conf_yet_uses_a_probe_config(fake: FakeSlurm) -> None:
    Path(fake.conf).unlink()  # a site generating its first slurm.conf
    fake.script("scontrol", 'cat "$SLURM_CONF" > "$(dirname "$0")/../probe.conf"\n'
                            "cat {data}/scontrol-version.txt\n")
    assert fake.slurm().version().release == fake.version
    (env,) = fake.env_lines()
    assert env.startswith("SLURM_CONF=/") and fake.conf not in env
    assert (fake.bin_dir.parent / "probe.conf").read_text() == (
        "ClusterName=probe\nSlurmctldHost=localhost\n")


def test_node_found_missing_and_failing(fake: FakeSlurm) -> None:
    slurm = fake.slurm()
    r6 = slurm.node("vca-r6")
    assert r6 is not None
    assert (r6.name, r6.state, r6.reason) == ("vca-r6", "DOWN", "disk failed")
    assert slurm.node("nosuch") is None
    with pytest.raises(SlurmCommandError, match=r"failed \(exit 1\): slurm_load_node error: "
                                                r"Unable to contact slurm controller"):
        slurm.node("broken")
    assert fake.calls()[0] == ["scontrol", "show", "node", "vca-r6", "-o"]


def test_show_job(fake: FakeSlurm) -> None:
    slurm = fake.slurm()
    big = slurm.show_job(4)
    assert big is not None
    assert (big["JobId"], big["Comment"], big["NodeList"]) == (
        "4", "vcluster[template=big] my own words", "vca-r1")
    assert slurm.show_job(999999) is None
    remainder = slurm.show_job(5)
    assert remainder is not None and remainder["ArrayTaskId"] == "3-4"
    task = slurm.show_job(13)
    assert task is not None and (task["JobId"], task["ArrayTaskId"]) == ("13", "1")
    assert slurm.show_job(77) is None  # scontrol printed nothing


# --- writes -----------------------------------------------------------------------------------


def test_sbatch_returns_the_id_and_feeds_the_script(fake: FakeSlurm, tmp_path: Path) -> None:
    job_id = fake.slurm().sbatch(["-J", "my job", "--constraint=small"], "#!/bin/sh\nhostname\n")
    assert job_id == 42
    assert fake.calls() == [["sbatch", "--parsable", "-J", "my job", "--constraint=small"]]
    assert (tmp_path / "stdin.txt").read_text() == "#!/bin/sh\nhostname\n"


def test_sbatch_plain_id_and_refusals(fake: FakeSlurm) -> None:
    fake.script("sbatch", "cat {data}/sbatch-parsable.txt\n")
    assert fake.slurm().sbatch(["--wrap", "true"]) == 15
    fake.script("sbatch", "cat {data}/sbatch-bad-feature.txt.stderr >&2\nexit 1\n")
    with pytest.raises(SlurmCommandError, match=r"failed \(exit 1\): sbatch: error: Batch job "
                                                r"submission failed: Invalid feature spec"):
        fake.slurm().sbatch(["--constraint=nosuch", "--wrap", "true"])
    fake.script("sbatch", 'echo "Submitted batch job 7"\n')
    with pytest.raises(SlurmParseError, match=r"sbatch --parsable printed 'Submitted batch "
                                              r"job 7' instead of a job id"):
        fake.slurm().sbatch(["--wrap", "true"])


def test_update_nodes_compresses_a_list(fake: FakeSlurm) -> None:
    slurm = fake.slurm()
    slurm.update_nodes(["vc-s-003", "vc-s-001", "vc-s-002"], state="DOWN", reason="disk failed")
    slurm.update_nodes("vc-s-[001-002]", nodeaddr="10.114.0.5", nodehostname="vc-s-001")
    assert fake.calls() == [
        ["scontrol", "update", "nodename=vc-s-[001-003]", "state=DOWN", "reason=disk failed"],
        ["scontrol", "update", "nodename=vc-s-[001-002]", "nodeaddr=10.114.0.5",
         "nodehostname=vc-s-001"],
    ]


def test_update_nodes_needs_nodes_and_a_field(fake: FakeSlurm) -> None:
    with pytest.raises(ValueError, match="at least one node"):
        fake.slurm().update_nodes([], state="IDLE")
    with pytest.raises(ValueError, match="at least one field"):
        fake.slurm().update_nodes("a1")
    assert fake.calls() == []


def test_a_job_end_trigger_slurmctld_holds_already_is_no_error(fake: FakeSlurm) -> None:
    """A requeued job's prolog sets its trigger again: slurmctld says it has it (it stands);
    any other refusal is an error."""
    fake.script("strigger", 'echo "slurm_set_trigger: Duplicate event trigger" >&2; exit 1\n')
    fake.slurm().trigger_on_job_end(7, "/usr/bin/vcluster-job-finished")
    fake.script("strigger", 'echo "slurm_set_trigger: Access/permission denied" >&2; exit 1\n')
    with pytest.raises(SlurmCommandError, match="permission denied"):
        fake.slurm().trigger_on_job_end(7, "/usr/bin/vcluster-job-finished")


def test_job_writes(fake: FakeSlurm) -> None:
    slurm = fake.slurm()
    slurm.update_job(7, ReqNodeList="vc-s-[001-002]", StartTime="now")
    slurm.hold(7)
    slurm.release(7)
    slurm.requeue(7)
    slurm.cancel(7)
    slurm.trigger_on_job_end(7, "/usr/bin/vcluster-job-finished")
    assert fake.calls() == [
        ["scontrol", "update", "jobid=7", "ReqNodeList=vc-s-[001-002]", "StartTime=now"],
        ["scontrol", "hold", "7"],
        ["scontrol", "release", "7"],
        ["scontrol", "requeue", "7"],
        ["scancel", "7"],
        ["strigger", "--set", "--jobid=7", "--fini", "--program=/usr/bin/vcluster-job-finished"],
    ]
