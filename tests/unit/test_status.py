"""vcluster status / events on a real SQLite database filled through the real models."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console
from sqlalchemy.orm import Session, sessionmaker

from tests.unit.fake_oned import FakeOned
from vcluster import db
from vcluster.cli import cli
from vcluster.config import Config, load_config
from vcluster.report import build_status
from vcluster.report_tables import format_age, render_status
from vcluster.slurm import Node, parse_sinfo_json

DATA = Path(__file__).resolve().parent.parent / "data" / "slurm" / "22.05"
NOW = datetime(2026, 11, 21, 8, 0, 0, tzinfo=UTC)

CONFIG = """
[opennebula]
xmlrpc = "{one_url}"
auth_file = "{tmp}/one_auth"

[slurm]
bin_dir = "{tmp}/bin"
conf = "{tmp}/slurm.conf"
partitions = ["vcluster", "vcpool"]

[database]
url = "sqlite:///{tmp}/state.db"

[[node_class]]
name = "small"
count = 3
cpus = 2
memory_mb = 2000
template = "worker"
templates = ["ubuntu"]

[[node_class]]
name = "pool"
policy = "pool"
partition = "vcpool"
count = 2
cpus = 2
memory_mb = 2000
template = "worker"
"""

# Real sinfo --json records (22.05 capture) renamed to this config's nodes.
RENAMES = {"vca-r1": "vc-small-001", "vca-c1": "vc-small-002", "vca-r4": "vc-pool-001",
           "vca-c3": "vc-pool-002"}


def sinfo_json() -> str:
    nodes = json.loads((DATA / "sinfo.json").read_text())["nodes"]
    return json.dumps({"nodes": [dict(n, name=RENAMES[n["name"]]) for n in nodes
                                 if n["name"] in RENAMES]})


class Oned(FakeOned):
    """The test's oned: reports ``version`` from one.system.version."""

    def __init__(self, version: str) -> None:
        self.version = version
        super().__init__()

    def _system_version(self) -> Any:
        return [True, self.version, 0]


@contextmanager
def serving(oned: FakeOned) -> Iterator[FakeOned]:
    thread = threading.Thread(target=oned.server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield oned
    finally:
        oned.server.shutdown()
        oned.server.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def oned() -> Iterator[FakeOned]:
    with serving(Oned("7.4.0")) as fake:
        yield fake


def install_scontrol(tmp_path: Path, version_text: str) -> None:
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho '{version_text}'\n")
    scontrol.chmod(0o755)


@pytest.fixture()
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, oned: FakeOned) -> Config:
    (tmp_path / "bin").mkdir()
    (tmp_path / "slurm.conf").write_text("ClusterName=test\n")
    (tmp_path / "one_auth").write_text("oneadmin:opensesame\n")
    install_scontrol(tmp_path, (DATA / "scontrol-version.txt").read_text().strip())
    path = tmp_path / "vcluster.toml"
    path.write_text(CONFIG.format(tmp=tmp_path, one_url=oned.url))
    monkeypatch.setenv("VCLUSTER_CONFIG", str(path))
    monkeypatch.setenv("COLUMNS", "160")
    (tmp_path / "sinfo.json").write_text(sinfo_json())
    sinfo = tmp_path / "bin" / "sinfo"
    sinfo.write_text(f"#!{sys.executable}\nimport pathlib\n"
                     f"print(pathlib.Path({str(tmp_path / 'sinfo.json')!r}).read_text())\n")
    sinfo.chmod(0o755)
    return load_config(path, environ={})


def fill(config: Config, now: datetime, *, heartbeat_age_s: float) -> None:
    """A running per-job job on two VMs (one still booting), a pool VM, an old job."""
    engine = db.make_engine(config.database)
    try:
        with db.transaction(db.session_factory(engine)) as s:
            db.beat(s, at=now - timedelta(seconds=heartbeat_age_s))
            hb = db.heartbeat(s)
            assert hb is not None
            hb.pid, hb.host, hb.version = 4242, "ctl1", "0.1.0"
            ago = lambda seconds: now - timedelta(seconds=seconds)  # noqa: E731
            s.add_all([
                db.Job(job_id=11, node_class="small", user="bob", state="COMPLETED",
                       nodes="vc-small-003", exit_code=0, first_seen=ago(7300),
                       started_at=ago(7290), ended_at=ago(7200)),
                db.Job(job_id=12, node_class="small", template="ubuntu", user="alice",
                       state="RUNNING", nodes="vc-small-[001-002]", first_seen=ago(125),
                       started_at=ago(60)),
                db.Launch(node_name="vc-small-003", node_class="small", job_id=11, vm_id=9,
                          state="terminated", ip="10.111.0.99", created_at=ago(7300),
                          ended_at=ago(7190)),
                db.Launch(node_name="vc-small-001", node_class="small", job_id=12, vm_id=17,
                          state="up", ip="10.111.0.100", created_at=ago(120)),
                db.Launch(node_name="vc-small-002", node_class="small", job_id=12, vm_id=18,
                          state="booting", created_at=ago(119),
                          reason="waiting for READY=YES"),
                db.Launch(node_name="vc-pool-001", node_class="pool", vm_id=19, state="up",
                          ip="10.111.0.101", created_at=ago(10800)),
            ])
            db.record_event(s, "resume", "resume requested for vc-small-[001-002]",
                            job_id=12, at=ago(121))
            db.record_event(s, "vm-allocated", "VM 17 allocated from template ubuntu",
                            node_name="vc-small-001", job_id=12, vm_id=17, at=ago(120))
            db.record_event(s, "vm-allocated", "VM 18 allocated from template ubuntu",
                            node_name="vc-small-002", job_id=12, vm_id=18, at=ago(119))
            db.record_event(s, "node-up", "vc-small-001 registered with Slurm",
                            node_name="vc-small-001", job_id=12, vm_id=17, at=ago(70))
    finally:
        engine.dispose()


def session(config: Config) -> Session:
    engine = db.make_engine(config.database, migrate=False)
    factory: sessionmaker[Session] = db.session_factory(engine)
    return factory()


def nodes() -> list[Node]:
    return parse_sinfo_json(sinfo_json())


def rendered(config: Config, **kwargs: Any) -> str:
    with session(config) as s:
        report = build_status(s, config, kwargs.pop("nodes", nodes()), NOW, **kwargs)
    out = StringIO()
    render_status(report, Console(file=out, width=160, color_system=None, highlight=False))
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"


def test_status_tables(site: Config) -> None:
    fill(site, NOW, heartbeat_age_s=3)
    assert rendered(site) == TABLES


TABLES = "".join(f"{line}\n" for line in [  # what an admin sees, exactly
    'controller: running (ctl1, pid 4242, version 0.1.0), heartbeat 3s ago',
    '',
    'Node classes',
    'CLASS  POLICY   PARTITION  TEMPLATE        NODES                   VMS  SLURM STATES',
    'small  per-job  vcluster   worker, ubuntu  vc-small-[001-003] (3)  2    '
    'allocated 1, hidden 1, powering_up 1',
    'pool   pool     vcpool     worker          vc-pool-[001-002] (2)   1    '
    'idle 1, powered_down 1',
    '',
    'Jobs',
    'JOB  USER   STATE    CLASS  TEMPLATE  NODES               AGE    EXIT',
    '12   alice  RUNNING  small  ubuntu    vc-small-[001-002]  2m05s  -',
    '',
    'VMs',
    'NODE          CLASS  JOB  VM  LAUNCH   SLURM        IP            AGE    REASON',
    'vc-small-001  small  12   17  up       allocated    10.111.0.100  2m00s',
    'vc-small-002  small  12   18  booting  powering_up  -             1m59s  '
    'waiting for READY=YES',
    'vc-pool-001   pool   -    19  up       idle         10.111.0.101  3h00m',
    '',
    'Last events',
    'TIME (UTC)           KIND          NODE          JOB  VM  MESSAGE',
    '2026-11-21 07:57:59  resume        -             12   -   '
    'resume requested for vc-small-[001-002]',
    '2026-11-21 07:58:00  vm-allocated  vc-small-001  12   17  '
    'VM 17 allocated from template ubuntu',
    '2026-11-21 07:58:01  vm-allocated  vc-small-002  12   18  '
    'VM 18 allocated from template ubuntu',
    '2026-11-21 07:58:50  node-up       vc-small-001  12   17  '
    'vc-small-001 registered with Slurm',
])


@pytest.mark.parametrize(("age_s", "text"), [
    (None, "-"), (0.4, "0s"), (59, "59s"), (60, "1m00s"), (185, "3m05s"), (7620, "2h07m"),
    (356400, "4d03h"),
])
def test_ages_read_at_a_glance(age_s: float | None, text: str) -> None:
    assert format_age(age_s) == text


def test_stale_or_missing_controller_and_unreadable_slurm_are_said(site: Config) -> None:
    fill(site, NOW, heartbeat_age_s=7620)
    text = rendered(site, nodes=None, slurm_error="`sinfo --json` timed out after 30 s")
    assert text.splitlines()[:2] == [
        "controller: STALE (ctl1, pid 4242, version 0.1.0), last heartbeat 2h07m ago "
        "(limit 1m00s); hooks refuse until it runs",
        "slurm: node states unavailable: `sinfo --json` timed out after 30 s",
    ]
    assert "small  per-job  vcluster   worker, ubuntu  vc-small-[001-003] (3)  2    -" in text
    with session(site) as s:
        s.delete(db.heartbeat(s))
        s.commit()
    assert rendered(site).splitlines()[0] == (
        "controller: never ran (no heartbeat); start `vcluster controller run`")


def test_all_adds_jobs_that_ended_long_ago_with_their_vms(site: Config) -> None:
    fill(site, NOW, heartbeat_age_s=3)
    text = rendered(site, all_jobs=True)
    assert "11   bob    COMPLETED  small  -         vc-small-003        2h01m  0" in text
    assert ("vc-small-003  small  11   9   terminated  hidden       10.111.0.99   2h01m"
            in text)


def ages_within(data: Any, expected: dict[str, float], tolerance_s: float = 30) -> Any:
    """Check and drop the ``*age_s`` fields (they depend on the clock of the test run)."""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            if key.endswith("age_s") and value is not None:
                label = f"{data.get('node_name') or data.get('job_id') or 'heartbeat'}"
                assert abs(value - expected[label]) < tolerance_s, (label, value)
            elif key not in ("generated_at", "heartbeat_at", "at"):
                out[key] = ages_within(value, expected, tolerance_s)
        return out
    if isinstance(data, list):
        return [ages_within(v, expected, tolerance_s) for v in data]
    return data


def test_status_json_for_scripts(site: Config) -> None:
    fill(site, db.utcnow(), heartbeat_age_s=5)
    result = CliRunner().invoke(cli, ["status", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert datetime.fromisoformat(data["generated_at"]).tzinfo is not None
    expected_ages = {"heartbeat": 5, "12": 125, "vc-small-001": 120, "vc-small-002": 119,
                     "vc-pool-001": 10800}
    vm = {"node_class": "small", "job_id": 12, "ended": False}
    assert ages_within(data, expected_ages) == {
        "controller": {"running": True, "pid": 4242, "host": "ctl1", "version": "0.1.0",
                       "stale_after_s": 60.0, "instances": []},
        "classes": [
            {"name": "small", "policy": "per-job", "partition": "vcluster",
             "template": "worker", "templates": ["ubuntu"], "nodes": "vc-small-[001-003]",
             "count": 3, "node_states": {"allocated": 1, "hidden": 1, "powering_up": 1},
             "open_launches": 2},
            {"name": "pool", "policy": "pool", "partition": "vcpool", "template": "worker",
             "templates": [], "nodes": "vc-pool-[001-002]", "count": 2,
             "node_states": {"idle": 1, "powered_down": 1}, "open_launches": 1},
        ],
        "jobs": [{
            "job_id": 12, "user": "alice", "state": "RUNNING", "node_class": "small",
            "template": "ubuntu", "nodes": "vc-small-[001-002]", "exit_code": None,
            "vms": [
                dict(vm, node_name="vc-small-001", vm_id=17, launch_state="up",
                     slurm_state="allocated", ip="10.111.0.100", reason=""),
                dict(vm, node_name="vc-small-002", vm_id=18, launch_state="booting",
                     slurm_state="powering_up", ip="", reason="waiting for READY=YES"),
            ],
        }],
        "pool_vms": [{"node_name": "vc-pool-001", "node_class": "pool", "job_id": None,
                      "vm_id": 19, "launch_state": "up", "slurm_state": "idle",
                      "ip": "10.111.0.101", "reason": "", "ended": False}],
        "events": [
            {"kind": "resume", "node_name": None, "job_id": 12, "vm_id": None,
             "message": "resume requested for vc-small-[001-002]"},
            {"kind": "vm-allocated", "node_name": "vc-small-001", "job_id": 12, "vm_id": 17,
             "message": "VM 17 allocated from template ubuntu"},
            {"kind": "vm-allocated", "node_name": "vc-small-002", "job_id": 12, "vm_id": 18,
             "message": "VM 18 allocated from template ubuntu"},
            {"kind": "node-up", "node_name": "vc-small-001", "job_id": 12, "vm_id": 17,
             "message": "vc-small-001 registered with Slurm"},
        ],
        "slurm_error": "",
        "slurm_version": "22.05.8",
        "opennebula_version": "7.4.0",
        "opennebula_error": "",
        "backoffs": [],
        "unscheduled": [],
        "suspended_jobs": [],
        "reservations": [],
        "vm_error": "",
    }


def test_status_shows_the_versions_it_talks_to(site: Config) -> None:
    fill(site, db.utcnow(), heartbeat_age_s=3)
    result = CliRunner().invoke(cli, ["status"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == "versions: Slurm 22.05.8, OpenNebula 7.4.0"


def test_status_says_why_the_opennebula_version_is_missing(site: Config,
                                                             tmp_path: Path) -> None:
    fill(site, db.utcnow(), heartbeat_age_s=3)
    (tmp_path / "one_auth").write_text("oneadmin:wrong\n")
    result = CliRunner().invoke(cli, ["status"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1] == "versions: Slurm 22.05.8, OpenNebula unknown"
    assert lines[2].startswith("opennebula: version unavailable: ")
    assert "one_auth" in lines[2]


@pytest.mark.parametrize(("slurm", "one", "message"), [
    ("slurm-wlm 21.08.5", "7.4.0", "Slurm 21.08.5 is not supported: vcluster supports Slurm "
                                   "22.05 and later (tested with 22.05 and 24.11)"),
    ("slurm 24.11.5", "6.8.2", "OpenNebula 6.8.2 is not supported: vcluster supports "
                               "OpenNebula 6.10 and later (6.10 LTS and 7.x)"),
])
def test_status_refuses_a_version_it_does_not_drive(site: Config, tmp_path: Path,
                                                    oned: FakeOned, slurm: str, one: str,
                                                    message: str) -> None:
    fill(site, db.utcnow(), heartbeat_age_s=3)
    install_scontrol(tmp_path, slurm)
    assert isinstance(oned, Oned)
    oned.version = one
    result = CliRunner().invoke(cli, ["status"], prog_name="vcluster")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"vcluster: error: {message}\n"


def test_status_without_a_database_says_how_to_get_one(site: Config) -> None:
    result = CliRunner().invoke(cli, ["status"], prog_name="vcluster")
    db_path = site.database.url.removeprefix("sqlite:///")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        f"vcluster: error: no database at {db_path}; start the controller "
        "(`vcluster controller run`) to create it, or fix database.url\n")
    assert not Path(db_path).exists()


def test_events_filtered_by_job_and_node(site: Config) -> None:
    fill(site, NOW, heartbeat_age_s=3)
    result = CliRunner().invoke(cli, ["events", "--node", "vc-small-001"])
    assert result.exit_code == 0, result.output
    assert [line.rstrip() for line in result.stdout.splitlines()] == [
        "Events",
        "TIME (UTC)           KIND          NODE          JOB  VM  MESSAGE",
        "2026-11-21 07:58:00  vm-allocated  vc-small-001  12   17  "
        "VM 17 allocated from template ubuntu",
        "2026-11-21 07:58:50  node-up       vc-small-001  12   17  "
        "vc-small-001 registered with Slurm",
    ]
    result = CliRunner().invoke(cli, ["events", "--job", "12", "-n", "1", "--json"])
    assert json.loads(result.stdout) == [{
        "at": "2026-11-21T07:58:50+00:00", "kind": "node-up", "node_name": "vc-small-001",
        "job_id": 12, "vm_id": 17, "message": "vc-small-001 registered with Slurm"}]
    result = CliRunner().invoke(cli, ["events", "--job", "99"])
    assert (result.exit_code, result.stdout) == (0, "no events for job 99\n")


def invoke_as_nobody(args: list[str]) -> tuple[int, str, str]:
    """Run the CLI in a child process that dropped root for ``nobody`` (what an ordinary
    user gets); what it needs is imported before, as /root is closed to nobody."""
    import vcluster.cli.status  # noqa: F401 (imported while still root)
    import vcluster.report  # noqa: F401

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.setgid(65534)
            os.setuid(65534)
            result = CliRunner().invoke(cli, args, prog_name="vcluster")
            os.write(write_end, json.dumps([result.exit_code, result.stdout,
                                            result.stderr]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    code, out, err = json.loads(data)
    return code, out, err


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to nobody needs root")
@pytest.mark.parametrize("command", ["status", "events"])
def test_an_ordinary_user_is_told_in_one_line_who_may_read_the_database(
        site: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    fill(site, NOW, heartbeat_age_s=3)
    root = Path(tempfile.mkdtemp(prefix="vcluster-perm-"))  # pytest's own are closed to nobody
    try:
        root.chmod(0o755)
        state = root / "state"
        state.mkdir(mode=0o700)
        (tmp_path / "state.db").rename(state / "state.db")
        config = (tmp_path / "vcluster.toml").read_text()
        (root / "vcluster.toml").write_text(config.replace(f"{tmp_path}/state.db",
                                                           f"{state}/state.db"))
        (root / "vcluster.toml").chmod(0o644)
        monkeypatch.setenv("VCLUSTER_CONFIG", str(root / "vcluster.toml"))
        code, out, err = invoke_as_nobody([command])
    finally:
        shutil.rmtree(root)
    assert (code, out) == (1, "")
    assert err == (f"vcluster: error: permission denied: {state / 'state.db'} can be read "
                   "only by the controller's user; run this command as root or as that user "
                   "(e.g. with sudo)\n")


def test_brackets_in_messages_and_reasons_are_shown_as_written(site: Config) -> None:
    refusal = ("vcluster: cannot boot a VM: [one.template.instantiate] User 2 does not own a "
               "network with name: vcnet . Set NETWORK_UNAME or NETWORK_UID")
    engine = db.make_engine(site.database)
    try:
        with db.transaction(db.session_factory(engine)) as s:
            db.record_event(s, "node.failed", refusal, node_name="vc-small-001", at=NOW)
            s.add(db.Launch(node_name="vc-small-001", node_class="small", state="booting",
                            vm_id=5, reason="[bold]not bold[/bold]", created_at=NOW))
    finally:
        engine.dispose()
    result = CliRunner().invoke(cli, ["events"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[2].rstrip() == (
        f"2026-11-21 08:00:00  node.failed  vc-small-001  -    -   {refusal}")
    assert "[bold]not bold[/bold]" in rendered(site)


def test_a_backed_off_class_is_shown_with_its_reason_and_next_probe(site: Config) -> None:
    fill(site, NOW, heartbeat_age_s=3)
    engine = db.make_engine(site.database)
    try:
        with db.transaction(db.session_factory(engine)) as s:
            s.add(db.ClassBackoff(
                node_class="pool", template="worker", level=2, cause="placement",
                reason='No host meets capacity and SCHED_REQUIREMENTS: HOSTNAME = "nowhere"',
                since=NOW - timedelta(seconds=200), until=NOW + timedelta(seconds=95)))
    finally:
        engine.dispose()
    text = rendered(site)
    block = text.split("Backed off (OpenNebula cannot place these templates)\n", 1)[1]
    row = next(line for line in block.splitlines() if line.startswith("pool "))
    assert row.split() == [
        "pool", "worker", "placement", "#2", "2026-11-21", "07:56:40", "in", "1m35s",
        "(2026-11-21", "08:01:35)", "No", "host", "meets", "capacity", "and",
        "SCHED_REQUIREMENTS:", "HOSTNAME", "=", '"nowhere"']
    with session(site) as s:
        report = build_status(s, site, nodes(), NOW)
    (b,) = report.backoffs
    assert (b.node_class, b.level, b.next_probe_in_s) == ("pool", 2, 95.0)
