"""``vcluster controller run`` and ``vcluster hook`` as a user runs them (CliRunner)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from tests.unit.fake_oned import running_fake_oned
from vcluster import db
from vcluster.cli import cli
from vcluster.config import load_config

CONFIG = """
[opennebula]
xmlrpc = "http://127.0.0.1:9/RPC2"
auth_file = "{tmp}/one_auth"
retry_delays_s = []

[slurm]
conf = "{tmp}/slurm.conf"
bin_dir = "{tmp}/no-slurm-here"
munge_key_file = "{tmp}/munge.key"

[database]
url = "sqlite:///{tmp}/state.db"

[controller]
state_dir = "{tmp}/state"
log_dir = "{tmp}/log"
join_address = "127.0.0.1:{join_port}"

[[node_class]]
name = "small"
count = 2
cpus = 2
memory_mb = 2048
template = "worker"
"""


def write_site(tmp_path: Path, munge_key: bool = True) -> Path:
    (tmp_path / "slurm.conf").write_text("SlurmctldHost=ctl(10.1.0.1)\n")
    (tmp_path / "one_auth").write_text("oneadmin:x\n")
    if munge_key:
        (tmp_path / "munge.key").write_bytes(b"k" * 64)
    path = tmp_path / "vcluster.toml"
    with socket.socket() as probe:  # a free port for the join endpoint
        probe.bind(("127.0.0.1", 0))
        join_port = probe.getsockname()[1]
    path.write_text(CONFIG.format(tmp=tmp_path, join_port=join_port))
    return path


def test_run_once_without_slurm_skips_the_pass_and_beats(tmp_path: Path) -> None:
    config_path = write_site(tmp_path)
    result = CliRunner().invoke(cli, ["--config", str(config_path), "controller", "run",
                                      "--once"], prog_name="vcluster")
    assert result.exit_code == 0, result.output
    log_text = (tmp_path / "log" / "controller.log").read_text()
    assert (f"skipping this pass: cannot read Slurm: cannot run `{tmp_path}/no-slurm-here/"
            "scontrol`: No such file or directory; check slurm.bin_dir in the vcluster config"
            ) in log_text
    assert "controller stopped after 1 passes" in log_text
    assert (tmp_path / "state" / "bin" / "vcluster-job-finished").exists()
    engine = db.make_engine(load_config(config_path).database, migrate=False)
    try:
        with db.session_factory(engine)() as s:
            assert db.heartbeat(s) is not None
    finally:
        engine.dispose()


def test_run_refuses_an_unreadable_munge_key_in_one_line(tmp_path: Path) -> None:
    config_path = write_site(tmp_path, munge_key=False)
    result = CliRunner().invoke(cli, ["--config", str(config_path), "controller", "run",
                                      "--once"], prog_name="vcluster")
    assert result.exit_code == 1
    assert result.output == (
        f"vcluster: error: config: slurm.munge_key_file: cannot read the munge key "
        f"{tmp_path}/munge.key: No such file or directory; the controller must run as a "
        "user that can read it\n")


def test_hook_command_refuses_when_the_controller_never_ran(tmp_path: Path) -> None:
    config_path = write_site(tmp_path)
    db.upgrade(f"sqlite:///{tmp_path}/state.db")
    result = CliRunner().invoke(cli, ["--config", str(config_path), "hook", "suspend",
                                      "vc-small-001"], prog_name="vcluster")
    assert result.exit_code == 3
    assert result.output == (
        "vcluster-suspend: error: the vcluster controller has never run on this database; "
        "start it with `vcluster controller run` (request not recorded)\n")


def test_hook_command_records_once_the_controller_beats(tmp_path: Path) -> None:
    config_path = write_site(tmp_path)
    assert CliRunner().invoke(cli, ["--config", str(config_path), "controller", "run",
                                    "--once"]).exit_code == 0
    result = CliRunner().invoke(cli, ["--config", str(config_path), "hook", "job-finished",
                                      "42"])
    assert (result.exit_code, result.output) == (0, "")
    engine = db.make_engine(load_config(config_path).database, migrate=False)
    try:
        with db.session_factory(engine)() as s:
            rows = s.scalars(db.select(db.HookRequest)).all()
            assert [(r.kind, r.job_ids) for r in rows] == [("job-finished", [42])]
    finally:
        engine.dispose()


def _site_with_versions(tmp_path: Path, url: str, slurm_version: str) -> Path:
    config_path = write_site(tmp_path)
    (tmp_path / "one_auth").write_text("oneadmin:opensesame\n")
    bin_dir = tmp_path / "no-slurm-here"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho '{slurm_version}'\n")
    (bin_dir / "scontrol").chmod(0o755)
    config_path.write_text(config_path.read_text().replace("http://127.0.0.1:9/RPC2", url))
    return config_path


def test_run_logs_the_slurm_and_opennebula_versions_at_start(tmp_path: Path) -> None:
    with running_fake_oned() as oned:
        config_path = _site_with_versions(tmp_path, oned.url, "slurm 24.11.5")
        result = CliRunner().invoke(cli, ["--config", str(config_path), "controller", "run",
                                          "--once"], prog_name="vcluster")
    assert result.exit_code == 0, result.output
    log_text = (tmp_path / "log" / "controller.log").read_text()
    assert f"OpenNebula 7.4.0 at {oned.url}, Slurm 24.11.5 with slurm.conf" in log_text


def test_run_without_oned_logs_why_and_runs(tmp_path: Path) -> None:
    config_path = write_site(tmp_path)
    result = CliRunner().invoke(cli, ["--config", str(config_path), "controller", "run",
                                      "--once"], prog_name="vcluster")
    assert result.exit_code == 0, result.output
    log_text = (tmp_path / "log" / "controller.log").read_text()
    assert "cannot read the Slurm version at start (passes wait for it): cannot run" in log_text
    assert "cannot read the OpenNebula version at start (passes wait for it): " in log_text
    assert "OpenNebula (version unknown) at http://127.0.0.1:9/RPC2" in log_text


def test_run_refuses_a_slurm_too_old_in_one_line(tmp_path: Path) -> None:
    with running_fake_oned() as oned:
        config_path = _site_with_versions(tmp_path, oned.url, "slurm 21.08.8")
        result = CliRunner().invoke(cli, ["--config", str(config_path), "controller", "run",
                                          "--once"], prog_name="vcluster")
    assert (result.exit_code, result.output) == (1, (
        "vcluster: error: Slurm 21.08.8 is not supported: vcluster supports Slurm 22.05 and "
        "later (tested with 22.05 and 24.11)\n"))



def test_controller_log_holds_each_line_once_when_stderr_is_that_file(tmp_path: Path) -> None:
    # the testbed (and an admin's `>> controller.log 2>&1`) sends stderr to controller.log
    config_path = write_site(tmp_path)
    log_path = tmp_path / "log" / "controller.log"
    log_path.parent.mkdir()
    with open(log_path, "ab") as out:
        subprocess.run([sys.executable, "-m", "vcluster", "--config", str(config_path),
                        "controller", "run", "--once"], stdin=subprocess.DEVNULL, stdout=out,
                       stderr=subprocess.STDOUT, check=True, timeout=60)
    messages = [line.split(" INFO ", 1)[-1].split(" WARNING ", 1)[-1]
                for line in log_path.read_text().splitlines()]
    assert any("controller stopped after 1 passes" in m for m in messages)
    assert [m for m in messages if messages.count(m) > 1] == []
