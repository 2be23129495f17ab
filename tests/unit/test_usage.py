"""vcluster usage: VM-hours, core-hours and cost on a real SQLite database of known launches."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from vcluster import db
from vcluster.cli import cli
from vcluster.config import Config, load_config
from vcluster.usage import (
    BadTime,
    build_usage,
    parse_since,
    render_usage,
    usage_to_csv,
    usage_to_json,
)

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

CONFIG = """
[database]
url = "sqlite:///{tmp}/state.db"

[[node_class]]
name = "small"
count = 4
cpus = 2
memory_mb = 2048
template = "worker"
cost_per_hour = 0.10

[[node_class]]
name = "big"
policy = "pool"
count = 2
cpus = 8
memory_mb = 8192
template = "bigworker"
cost_per_hour = 0.50
"""


def at(hour: int, minute: int = 0) -> datetime:
    return NOW.replace(hour=hour, minute=minute)


@pytest.fixture()
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    path = tmp_path / "vcluster.toml"
    path.write_text(CONFIG.format(tmp=tmp_path))
    monkeypatch.setenv("VCLUSTER_CONFIG", str(path))
    monkeypatch.setenv("COLUMNS", "160")
    config = load_config(path, environ={})
    fill(config)
    return config


def fill(config: Config) -> None:
    """Job 11 (alice, physics): two small VMs, 1 h at 2 CPUs and 30 min at 1 CPU; job 12
    (bob, chemistry): a small VM running for 1 h; job 13 (alice, chemistry): a big VM for
    15 min; a pool VM booted without a job for 2 h; a launch that never got a VM."""
    engine = db.make_engine(config.database)
    try:
        with db.transaction(db.session_factory(engine)) as s:
            s.add_all([
                db.Job(job_id=11, user="alice", account="physics", state="COMPLETED",
                       first_seen=at(7, 59)),
                db.Job(job_id=12, user="bob", account="chemistry", state="RUNNING",
                       first_seen=at(10, 59)),
                db.Job(job_id=13, user="alice", account="chemistry", state="COMPLETED",
                       first_seen=at(9, 59)),
            ])
            for vm_id, node, job_id, cpus, start, end in (
                    (1, "vc-small-001", 11, 2, at(8), at(9)),
                    (2, "vc-small-002", 11, 1, at(8), at(8, 30)),
                    (3, "vc-small-003", 12, 2, at(11), None),
                    (4, "vc-big-001", 13, 8, at(10), at(10, 15)),
                    (5, "vc-big-002", None, 8, at(9), at(11))):
                s.add(db.Launch(node_name=node, node_class=node.split("-")[1], job_id=job_id,
                                vm_id=vm_id, state="up" if end is None else "terminated",
                                cpus=cpus, memory_mb=1024 * cpus, template="worker",
                                host="kvm-1", created_at=start, vm_started_at=start,
                                vm_ended_at=end, ended_at=end))
            s.add(db.Launch(node_name="vc-small-004", node_class="small", job_id=12,
                            state="failed", cpus=2, memory_mb=2048, created_at=at(10),
                            ended_at=at(10, 1)))
    finally:
        engine.dispose()


def report(config: Config, **filters: object):  # type: ignore[no-untyped-def]
    engine = db.make_engine(config.database, migrate=False)
    try:
        with db.session_factory(engine)() as s:
            return build_usage(s, config, NOW, **filters)  # type: ignore[arg-type]
    finally:
        engine.dispose()


def rendered(config: Config, **filters: object) -> str:
    out = StringIO()
    render_usage(report(config, **filters),
                 Console(file=out, width=160, color_system=None, highlight=False))
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"


def test_usage_sums_per_job_user_account_and_class(config: Config) -> None:
    r = report(config)
    assert [(j.job_id, j.user, j.account, j.node_class, j.vms, j.vm_hours, j.core_hours)
            for j in r.jobs] == [
        (11, "alice", "physics", "small", 2, 1.5, 2.5),
        (12, "bob", "chemistry", "small", 1, 1.0, 2.0),
        (13, "alice", "chemistry", "big", 1, 0.25, 2.0),
        (None, "", "", "big", 1, 2.0, 16.0),
    ]
    assert [j.cost for j in r.jobs] == pytest.approx([0.15, 0.10, 0.125, 1.0])
    assert [(u.key, u.vms, u.vm_hours, u.core_hours) for u in r.users] == [
        ("", 1, 2.0, 16.0), ("alice", 3, 1.75, 4.5), ("bob", 1, 1.0, 2.0)]
    assert [(a.key, a.vms, a.vm_hours, a.core_hours) for a in r.accounts] == [
        ("", 1, 2.0, 16.0), ("chemistry", 2, 1.25, 4.0), ("physics", 2, 1.5, 2.5)]
    assert [(c.key, c.vms, c.vm_hours, c.core_hours) for c in r.classes] == [
        ("big", 2, 2.25, 18.0), ("small", 3, 2.5, 4.5)]
    assert (r.total.vms, r.total.vm_hours, r.total.core_hours) == (5, 4.75, 22.5)
    assert r.total.cost == pytest.approx(1.375)


def test_usage_tables(config: Config) -> None:
    assert rendered(config) == TABLES


TABLES = "".join(f"{line}\n" for line in [  # what an admin sees, exactly (cents halves up)
    "usage: all recorded VMs until 2026-11-21 12:00:00 UTC: 5 VMs, 4.750 VM-hours, "
    "22.500 core-hours, cost 1.38",
    "",
    "Jobs",
    "JOB  USER   ACCOUNT    CLASS  VMS  VM-HOURS  CORE-HOURS  COST",
    "11   alice  physics    small    2     1.500       2.500  0.15",
    "12   bob    chemistry  small    1     1.000       2.000  0.10",
    "13   alice  chemistry  big      1     0.250       2.000  0.13",
    "-    -      -          big      1     2.000      16.000  1.00",
    "",
    "Users",
    "USER   VMS  VM-HOURS  CORE-HOURS  COST",
    "-        1     2.000      16.000  1.00",
    "alice    3     1.750       4.500  0.28",
    "bob      1     1.000       2.000  0.10",
    "",
    "Accounts",
    "ACCOUNT    VMS  VM-HOURS  CORE-HOURS  COST",
    "-            1     2.000      16.000  1.00",
    "chemistry    2     1.250       4.000  0.23",
    "physics      2     1.500       2.500  0.15",
    "",
    "Classes",
    "CLASS  VMS  VM-HOURS  CORE-HOURS  COST",
    "big      2     2.250      18.000  1.13",
    "small    3     2.500       4.500  0.25",
])


def test_since_counts_only_the_part_of_each_life_after_it(config: Config) -> None:
    r = report(config, since=at(10, 30))
    assert [(j.job_id, j.vm_hours, j.core_hours) for j in r.jobs] == [
        (12, 1.0, 2.0), (None, 0.5, 4.0)]


def test_filters_by_user_and_account(config: Config) -> None:
    assert [j.job_id for j in report(config, user="alice").jobs] == [11, 13]
    assert [j.job_id for j in report(config, account="chemistry").jobs] == [12, 13]
    assert [j.job_id for j in report(config, user="alice", account="chemistry").jobs] == [13]
    assert rendered(config, user="nobody") == (
        "usage: all recorded VMs until 2026-11-21 12:00:00 UTC: 0 VMs, 0.000 VM-hours, "
        "0.000 core-hours, cost 0.00\n")


def test_json_and_csv_for_scripts(config: Config) -> None:
    r = report(config, account="physics")
    assert usage_to_json(r) == {
        "since": None, "until": "2026-11-21T12:00:00+00:00",
        "jobs": [{"job_id": 11, "user": "alice", "account": "physics", "node_class": "small",
                  "vms": 2, "vm_hours": 1.5, "core_hours": 2.5, "cost": 0.15}],
        "users": [{"key": "alice", "vms": 2, "vm_hours": 1.5, "core_hours": 2.5,
                   "cost": 0.15}],
        "accounts": [{"key": "physics", "vms": 2, "vm_hours": 1.5, "core_hours": 2.5,
                      "cost": 0.15}],
        "classes": [{"key": "small", "vms": 2, "vm_hours": 1.5, "core_hours": 2.5,
                     "cost": 0.15}],
        "total": {"key": "total", "vms": 2, "vm_hours": 1.5, "core_hours": 2.5,
                  "cost": 0.15},
    }
    assert usage_to_csv(r) == (
        "by,key,vms,vm_hours,core_hours,cost\n"
        "job,11,2,1.500000,2.500000,0.150000\n"
        "user,alice,2,1.500000,2.500000,0.150000\n"
        "account,physics,2,1.500000,2.500000,0.150000\n"
        "class,small,2,1.500000,2.500000,0.150000\n"
        "total,total,2,1.500000,2.500000,0.150000\n")


def test_no_cost_column_without_a_cost_per_hour(config: Config, tmp_path: Path) -> None:
    path = tmp_path / "vcluster.toml"
    path.write_text(path.read_text().replace("cost_per_hour", "# cost_per_hour"))
    text = rendered(load_config(path, environ={}), user="bob")
    assert text.splitlines()[0] == ("usage: all recorded VMs until 2026-11-21 12:00:00 UTC: "
                                    "1 VMs, 1.000 VM-hours, 2.000 core-hours")
    assert text.splitlines()[3] == "JOB  USER  ACCOUNT    CLASS  VMS  VM-HOURS  CORE-HOURS"


@pytest.mark.parametrize(("text", "expected"), [
    ("7d", NOW - timedelta(days=7)), ("12h", NOW - timedelta(hours=12)),
    ("30m", NOW - timedelta(minutes=30)), ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
    ("2026-11-01T08:00", datetime(2026, 11, 1, 8, tzinfo=UTC)),
    ("2026-11-01T09:00+01:00", datetime(2026, 11, 1, 8, tzinfo=UTC)),
])
def test_since_reads_dates_times_and_spans(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == expected


def test_the_command(config: Config) -> None:
    result = CliRunner().invoke(cli, ["usage", "--user", "bob", "--csv"], prog_name="vcluster")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "by,key,vms,vm_hours,core_hours,cost"
    assert lines[1].startswith("job,12,1,")  # still running: counts up to the real now
    result = CliRunner().invoke(cli, ["usage", "--since", "2026-11-21T11:00", "--json",
                                      "--account", "chemistry"], prog_name="vcluster")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["since"] == "2026-11-21T11:00:00+00:00"
    assert [j["job_id"] for j in data["jobs"]] == [12]
    result = CliRunner().invoke(cli, ["usage", "--since", "last week"], prog_name="vcluster")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        "vcluster: error: --since 'last week' is not a time: give a date (2026-11-01), a time "
        "(2026-11-01T08:00, UTC) or a span back from now (7d, 12h, 30m)\n")
    with pytest.raises(BadTime):
        parse_since("yesterday", NOW)


def test_a_negative_cost_is_refused() -> None:
    from vcluster.config import parse_config
    from vcluster.errors import ConfigError

    with pytest.raises(ConfigError, match=r"node_class\[0\]\.cost_per_hour: must be >= 0"):
        parse_config({"node_class": [{"name": "small", "count": 1, "cpus": 1,
                                      "memory_mb": 512, "template": "w",
                                      "cost_per_hour": -1}]})
