"""Admin commands as an admin sees them: vcluster nodes, drain, undrain, terminate, cleanup.

A real SQLite database, a fake oned over real XML-RPC (tests/unit/fake_oned.py), and Slurm
commands that are small scripts: sinfo prints a real 22.05 capture renamed to this config's
nodes, scontrol prints its version and writes down every update it is asked for.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tests.unit.fake_oned import FakeOned, vm_xml
from tests.unit.test_status import serving, sinfo_json
from vcluster import db
from vcluster.cli import cli
from vcluster.config import Config, load_config

CONFIG = """
[opennebula]
xmlrpc = "{one_url}"
auth_file = "{tmp}/one_auth"
retry_delays_s = []

[slurm]
bin_dir = "{tmp}/bin"
conf = "{tmp}/slurm.conf"
partitions = ["vcluster", "vcpool"]

[database]
url = "sqlite:///{tmp}/state.db"

[controller]
cluster_name = "vc"
state_dir = "{tmp}/state"
resume_timeout_s = 300

[[node_class]]
name = "small"
count = 3
cpus = 2
memory_mb = 2000
template = "worker"

[[node_class]]
name = "pool"
policy = "pool"
partition = "vcpool"
count = 2
cpus = 2
memory_mb = 2000
template = "worker"
"""


class Oned(FakeOned):
    """Terminates what it is asked to (and remembers it)."""

    def __init__(self) -> None:
        super().__init__()
        self.actions: list[tuple[str, int]] = []

    def _vm_action(self, action: str, vm_id: int) -> list[Any]:
        if vm_id not in self.vms:
            return super()._vm_action(action, vm_id)
        self.actions.append((action, vm_id))
        return [True, vm_id, 0]


def tags(node: str, job: str = "") -> str:
    return (f"<VCLUSTER_NODE><![CDATA[{node}]]></VCLUSTER_NODE>"
            f"<VCLUSTER_JOB><![CDATA[{job}]]></VCLUSTER_JOB>"
            "<VCLUSTER_CLUSTER><![CDATA[vc]]></VCLUSTER_CLUSTER>")


@pytest.fixture()
def oned() -> Iterator[Oned]:
    with serving(Oned()) as fake:
        assert isinstance(fake, Oned)
        yield fake


@pytest.fixture()
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, oned: Oned) -> Config:
    (tmp_path / "bin").mkdir()
    (tmp_path / "slurm.conf").write_text("ClusterName=test\n")
    (tmp_path / "one_auth").write_text("oneadmin:opensesame\n")
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.write_text(f"#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'slurm-wlm 22.05.8'; "
                        f"else echo \"$@\" >> {tmp_path}/scontrol.log; fi\n")
    scontrol.chmod(0o755)
    (tmp_path / "sinfo.json").write_text(sinfo_json())
    sinfo = tmp_path / "bin" / "sinfo"
    sinfo.write_text(f"#!{sys.executable}\nimport pathlib\n"
                     f"print(pathlib.Path({str(tmp_path / 'sinfo.json')!r}).read_text())\n")
    sinfo.chmod(0o755)
    path = tmp_path / "vcluster.toml"
    path.write_text(CONFIG.format(tmp=tmp_path, one_url=oned.url))
    monkeypatch.setenv("VCLUSTER_CONFIG", str(path))
    monkeypatch.setenv("SUDO_USER", "alice")
    config = load_config(path, environ={})
    fill(config, oned, db.utcnow())
    return config


def fill(config: Config, oned: Oned, now: datetime) -> None:
    """Job 12 on vc-small-001 (up) and vc-small-002 (booting), pool VM 19 on vc-pool-001,
    orphan VM 30 tagged vc-small-003, and VM 21's launch on vc-pool-002 whose VM is gone."""
    def ago(seconds: float) -> datetime:
        return now - timedelta(seconds=seconds)

    stime = int(ago(7200).timestamp())
    oned.vms = {
        17: vm_xml(17, "vc-small-001", user_template=tags("vc-small-001", "12"),
                   hosts=("kvm-1",), stime=stime),
        18: vm_xml(18, "vc-small-002", lcm_state=2, user_template=tags("vc-small-002", "12"),
                   hosts=("kvm-2",), stime=stime),
        19: vm_xml(19, "vc-pool-001", user_template=tags("vc-pool-001"), hosts=("kvm-1",),
                   stime=stime),
        30: vm_xml(30, "vc-small-003", user_template=tags("vc-small-003", "9"),
                   hosts=("kvm-3",), stime=stime),
    }
    engine = db.make_engine(config.database)
    try:
        with db.transaction(db.session_factory(engine)) as s:
            s.add_all([
                db.Launch(node_name="vc-small-001", node_class="small", job_id=12, vm_id=17,
                          state="up", ip="10.111.0.100", created_at=ago(7200),
                          updated_at=ago(7100), vm_started_at=ago(7200)),
                db.Launch(node_name="vc-small-002", node_class="small", job_id=12, vm_id=18,
                          state="booting", reason="waiting for READY=YES",
                          created_at=ago(7200), updated_at=ago(7200)),
                db.Launch(node_name="vc-pool-001", node_class="pool", vm_id=19, state="up",
                          created_at=ago(10800), updated_at=ago(10800)),
                db.Launch(node_name="vc-pool-002", node_class="pool", vm_id=21, state="up",
                          created_at=ago(10800), updated_at=ago(10800),
                          vm_started_at=ago(10800)),
                db.HookRequest(kind="resume", nodes="vc-small-003", job_ids=[9],
                               created_at=ago(3600)),
            ])
    finally:
        engine.dispose()


def run(*args: str, input: str | None = None) -> Result:  # noqa: A002 (click's name)
    return CliRunner().invoke(cli, list(args), prog_name="vcluster", input=input)


def lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def scontrol_log(tmp_path: Path) -> list[str]:
    log = tmp_path / "scontrol.log"
    return log.read_text().splitlines() if log.exists() else []


def rows(config: Config, model: type[Any]) -> list[Any]:
    engine = db.make_engine(config.database, migrate=False)
    try:
        with db.session_factory(engine)() as s:
            return list(s.scalars(db.select(model)))
    finally:
        engine.dispose()


# --- nodes -------------------------------------------------------------------------------------


def test_nodes_shows_every_node_with_slurm_vm_host_age_job_and_reason(site: Config) -> None:
    run("drain", "vc-pool-002", "--reason", "bad disk")
    result = run("nodes")
    assert result.exit_code == 0, result.output
    assert lines(result.stdout) == [
        "Nodes",
        "NODE          CLASS  SLURM         VM  STATE    HOST   AGE    JOB  REASON",
        "vc-small-001  small  allocated     17  RUNNING  kvm-1  2h00m  12",
        "vc-small-002  small  powering_up   18  BOOT     kvm-2  2h00m  12   "
        "waiting for READY=YES",
        "vc-small-003  small  hidden        30  RUNNING  kvm-3  -      -",
        "vc-pool-001   pool   idle          19  RUNNING  kvm-1  3h00m  -",
        "vc-pool-002   pool   powered_down  21  -        -      3h00m  -    "
        "vcluster drain: bad disk (by alice)",
    ]


def test_nodes_json_and_a_side_that_cannot_be_read(site: Config, tmp_path: Path) -> None:
    (tmp_path / "one_auth").write_text("oneadmin:wrong\n")
    result = run("nodes", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert "one_auth" in data["opennebula_error"] and data["slurm_error"] == ""
    first = data["nodes"][0]
    assert 7190 < first.pop("age_s") < 7300
    assert first == {"name": "vc-small-001", "node_class": "small", "slurm_state": "allocated",
                     "vm_id": 17, "vm_state": "", "host": "", "job_id": 12, "reason": "",
                     "drained": False}
    result = run("nodes")
    assert lines(result.stdout)[0].startswith("opennebula: unavailable: ")


# --- drain / undrain ---------------------------------------------------------------------------


def test_drain_and_undrain_a_class(site: Config, tmp_path: Path) -> None:
    result = run("drain", "pool", "--reason", "template update")
    assert (result.exit_code, result.stdout) == (
        0, "class pool drained: vc-pool-[001-002] (vcluster drain: template update (by alice))\n")
    assert scontrol_log(tmp_path) == [
        "update nodename=vc-pool-[001-002] state=DRAIN "
        "reason=vcluster drain: template update (by alice)"]
    (drain,) = rows(site, db.Drain)
    assert (drain.target, drain.kind, drain.reason, drain.by) == (
        "pool", "class", "template update", "alice")
    result = run("undrain", "pool", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"target": "pool", "kind": "class",
                                         "nodes": "vc-pool-[001-002]", "reason": "",
                                         "slurm_error": ""}
    assert scontrol_log(tmp_path)[1] == "update nodename=vc-pool-[001-002] state=RESUME"
    assert rows(site, db.Drain) == []
    assert [(e.kind, e.message) for e in rows(site, db.Event)] == [
        ("admin.drain", "class pool drained by alice: template update"),
        ("admin.undrain", "class pool undrained by alice")]


def test_drain_says_what_it_cannot_drain(site: Config, tmp_path: Path) -> None:
    result = run("drain", "gpu")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == ("vcluster: error: 'gpu' is neither a node class (small, pool) nor "
                             "a node of one; see `vcluster nodes`\n")
    result = run("undrain", "vc-small-002")
    assert result.stderr == ("vcluster: error: node vc-small-002 is not drained "
                             "(drained: none)\n")


def test_drain_is_recorded_when_slurm_cannot_be_told(site: Config, tmp_path: Path) -> None:
    (tmp_path / "bin" / "scontrol").write_text(
        "#!/bin/sh\necho 'slurm_update error: Invalid node name specified' >&2; exit 1\n")
    result = run("drain", "vc-small-003")
    assert result.exit_code == 0, result.output
    out = lines(result.stdout)
    assert out[0] == ("node vc-small-003 drained: vc-small-003 "
                      "(vcluster drain: no reason given (by alice))")
    assert out[1].startswith("Slurm not told yet (")
    assert out[1].endswith("); the controller will tell it")
    assert [d.target for d in rows(site, db.Drain)] == ["vc-small-003"]


# --- terminate ---------------------------------------------------------------------------------


def test_terminate_asks_then_sets_the_node_down_and_terminates(site: Config, oned: Oned,
                                                                tmp_path: Path) -> None:
    result = run("terminate", "vc-small-001", input="n\n")
    assert result.exit_code == 1
    assert lines(result.stdout) == [
        "Terminate VM 17 (vc-small-001, job 12, RUNNING on kvm-1)? [y/N]: n"]
    assert result.stderr == "Aborted!\n"
    assert (oned.actions, scontrol_log(tmp_path)) == ([], [])
    result = run("terminate", "vc-small-001", input="y\n")
    assert result.exit_code == 0, result.output
    assert lines(result.stdout)[1] == (
        "VM 17 terminated; node vc-small-001 set DOWN, so Slurm requeues its job")
    assert oned.actions == [("terminate", 17)]
    assert scontrol_log(tmp_path) == [
        "update nodename=vc-small-001 state=DOWN reason=vcluster: VM 17 terminated by alice"]
    launch = next(la for la in rows(site, db.Launch) if la.vm_id == 17)
    assert (launch.state, launch.reason) == ("terminating", "vcluster: VM 17 terminated by alice")


def test_terminate_a_vm_by_id_without_asking(site: Config, oned: Oned) -> None:
    result = run("terminate", "30", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "vm_id": 30, "node_name": "vc-small-003", "launch_id": None, "job_id": None,
        "vm_state": "RUNNING", "host": "kvm-3",
        "message": "VM 30 terminated; node vc-small-003 set DOWN, so Slurm requeues its job"}
    assert oned.actions == [("terminate", 30)]


@pytest.mark.parametrize(("args", "error"), [
    (["vc-pool-002", "-y"], "vcluster: error: node vc-pool-002 has no live VM; nothing to "
                            "terminate\n"),
    (["77", "-y"], "vcluster: error: no live VM 77 of cluster vc; see `vcluster nodes`\n"),
    (["node7", "-y"], "vcluster: error: 'node7' is neither a VM id nor a node of a node "
                      "class; see `vcluster nodes`\n"),
])
def test_terminate_says_what_it_cannot_find(site: Config, oned: Oned, args: list[str],
                                            error: str) -> None:
    result = run("terminate", *args)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", error)
    assert oned.actions == []


# --- cleanup -----------------------------------------------------------------------------------


CLEANUP = [
    "VM 30 (RUNNING, tagged vc-small-003): no launch of vcluster's claims it",
    "launch 4 of vc-pool-002 (up, VM 21): its VM is gone from OpenNebula",
    "resume request 1 (vc-small-003): unhandled for longer than twice ResumeTimeout",
]


def test_cleanup_dry_run_then_for_real(site: Config, oned: Oned) -> None:
    result = run("cleanup", "--dry-run")
    assert result.exit_code == 0, result.output
    assert lines(result.stdout) == [
        f"would {verb} {line}" for verb, line in zip(
            ("terminate", "close", "mark handled"), CLEANUP, strict=True)]
    assert oned.actions == []
    result = run("cleanup")
    assert result.exit_code == 0, result.output
    assert lines(result.stdout) == [
        f"{verb} {line}" for verb, line in zip(
            ("terminated", "closed", "marked handled"), CLEANUP, strict=True)]
    assert oned.actions == [("terminate", 30)]
    launch = next(la for la in rows(site, db.Launch) if la.vm_id == 21)
    assert (launch.state, launch.reason, launch.is_open) == (
        "terminated", "vcluster cleanup: its VM is gone from OpenNebula", False)
    assert launch.vm_ended_at == launch.ended_at
    assert all(r.handled_at is not None for r in rows(site, db.HookRequest))
    oned.vms.pop(30)
    result = run("cleanup", "--json")
    assert json.loads(result.stdout) == {"dry_run": False, "leftovers": []}
    assert run("cleanup").stdout == "nothing to clean up\n"


def test_cleanup_leaves_a_vm_whose_allocation_is_in_flight(site: Config, oned: Oned) -> None:
    engine = db.make_engine(site.database, migrate=False)
    try:
        with db.transaction(db.session_factory(engine)) as s:
            s.add(db.Launch(node_name="vc-small-003", node_class="small", state="allocating",
                            created_at=db.utcnow(), updated_at=db.utcnow()))
    finally:
        engine.dispose()
    result = run("cleanup", "--dry-run", "--json")
    assert [item["what"] for item in json.loads(result.stdout)["leftovers"]] == [
        "launch 4 of vc-pool-002 (up, VM 21)", "resume request 1 (vc-small-003)"]


def test_cleanup_leaves_the_controllers_standby_vms(site: Config, oned: Oned) -> None:
    stime = int(db.utcnow().timestamp()) - 7200
    standby = tags("") + "<VCLUSTER_STANDBY><![CDATA[small]]></VCLUSTER_STANDBY>"
    oned.vms[31] = vm_xml(31, "vc-standby-small", user_template=standby, stime=stime)
    oned.vms[32] = vm_xml(32, "vc-standby-gpu", stime=stime, user_template=(
        tags("") + "<VCLUSTER_STANDBY><![CDATA[gpu]]></VCLUSTER_STANDBY>"))
    result = run("cleanup", "--dry-run", "--json")
    assert [item["what"] for item in json.loads(result.stdout)["leftovers"]][:2] == [
        "VM 30 (RUNNING, tagged vc-small-003)", "VM 32 (RUNNING, tagged ?)"]
