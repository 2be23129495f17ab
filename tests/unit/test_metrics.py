"""The controller's Prometheus metrics, read as a scrape reads them (the exposition text).

Passes run against the same fakes of Slurm and OpenNebula as the loop's tests; OpenNebula and
Slurm calls go through the real OneClient (fake oned) and the real Slurm.run (scripts).
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.unit.controller_fixtures import job, node, powering_up, vm
from tests.unit.fake_oned import running_fake_oned
from tests.unit.test_controller_loop import Clock, FakeOne, FakeSlurm
from vcluster import db
from vcluster.cli.controller import _serve_metrics
from vcluster.config import Config, OpenNebulaSettings, SlurmSettings, parse_config
from vcluster.controller.act import Actor
from vcluster.controller.hook_server import HookServer
from vcluster.controller.loop import Controller
from vcluster.errors import (
    ConfigError,
    OneAuthError,
    OneAuthorizationError,
    OneNotFound,
    SlurmCommandError,
)
from vcluster.hook_wire import PROTOCOL_VERSION
from vcluster.metrics import Metrics
from vcluster.one import OneClient
from vcluster.slurm import Slurm
from vcluster.vmtemplate import GuestContext

S1 = "vc-small-001"


def samples(metrics: Metrics, prefix: str = "vcluster_") -> dict[str, float]:
    """Every sample line of the exposition text whose name starts with ``prefix``."""
    found = {}
    for line in metrics.text().splitlines():
        if line.startswith(prefix):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


@dataclass
class World:
    config: Config
    sessions: db.sessionmaker[db.Session]
    slurm: FakeSlurm
    one: FakeOne
    clock: Clock
    metrics: Metrics
    controller: Controller


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    config = parse_config({
        "database": {"url": f"sqlite:///{tmp_path}/state.db"},
        "opennebula": {"retry_delays_s": [1]},
        "controller": {"cluster_name": "vc", "resume_timeout_s": 60,
                       "state_dir": str(tmp_path / "state"), "log_dir": str(tmp_path / "log")},
        "node_class": [{"name": "small", "count": 4, "cpus": 2, "memory_mb": 2048,
                        "template": "worker"}],
    })
    engine = db.make_engine(config.database)
    sessions = db.session_factory(engine)
    slurm, one, clock, metrics = FakeSlurm(), FakeOne(), Clock(), Metrics()
    guest = GuestContext(slurm_conf_server="10.111.0.1:6817", join_url="http://10.111.0.1:6830")
    actor = Actor(config, sessions, slurm, one, guest, guest_script=b"#!/bin/sh\n", now=clock,
                  metrics=metrics)
    try:
        yield World(config, sessions, slurm, one, clock, metrics,
                    Controller(config, sessions, slurm, one, actor, now=clock, metrics=metrics))
    finally:
        engine.dispose()


def test_a_boot_counts_the_launch_the_vm_and_its_boot_times(world: World) -> None:
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.slurm.jobs_by_id = {12: job(12, S1)}
    w.controller.run_pass()
    w.one.run(40)
    w.slurm.nodes_by_name = {S1: node(S1, "ALLOCATED")}  # slurmd registered
    w.clock.advance(3)
    w.controller.run_pass()
    got = samples(w.metrics)
    assert got['vcluster_launches_total{class="small"}'] == 1.0
    assert got['vcluster_vms{class="small",state="running"}'] == 1.0
    assert got['vcluster_node_ready_seconds_count{class="small"}'] == 1.0
    assert got['vcluster_node_ready_seconds_sum{class="small"}'] == 3.0
    assert got['vcluster_node_ready_seconds_bucket{class="small",le="5.0"}'] == 1.0
    assert got['vcluster_boot_seconds_sum{class="small"}'] == 3.0
    assert got["vcluster_pass_seconds_count"] == 2.0
    assert got["vcluster_passes_skipped_total"] == 0.0
    assert 0.0 <= got["vcluster_heartbeat_age_seconds"] < 5.0
    assert not any("boot_failures_total{" in name for name in got)


def test_vms_by_state_follow_the_last_picture(world: World) -> None:
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.slurm.jobs_by_id = {12: job(12, S1)}
    w.controller.run_pass()
    w.controller.run_pass()  # the picture now holds the VM allocated in the first pass
    assert samples(w.metrics, "vcluster_vms{") == {
        'vcluster_vms{class="small",state="pending"}': 1.0}
    w.one.run(40)
    w.one.vms_by_id[7] = vm(7, "vc-small-004")  # an orphan: no launch, its name's class
    w.one.vms_by_id[8] = vm(8, "someone-else")
    w.controller.run_pass()
    assert samples(w.metrics, "vcluster_vms{") == {
        'vcluster_vms{class="small",state="running"}': 2.0,
        'vcluster_vms{class="unknown",state="running"}': 1.0}


def test_a_template_oned_refuses_is_a_boot_failure_at_allocation(world: World) -> None:
    w = world
    w.one.errors = [OneNotFound("OpenNebula has no VM template named 'worker'")]
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.slurm.jobs_by_id = {12: job(12, S1)}
    w.controller.run_pass()
    got = samples(w.metrics)
    assert got['vcluster_boot_failures_total{cause="allocate",class="small"}'] == 1.0
    assert not any(name.startswith("vcluster_launches_total{") for name in got)


def test_a_failed_read_counts_a_skipped_pass(world: World) -> None:
    world.slurm.broken = True
    world.controller.run_pass()
    got = samples(world.metrics)
    assert (got["vcluster_passes_skipped_total"], got["vcluster_pass_seconds_count"]) == (1, 1)


def test_heartbeat_age_is_nan_before_the_first_beat_then_grows() -> None:
    metrics = Metrics()
    assert samples(metrics)["vcluster_heartbeat_age_seconds"] != \
        samples(metrics)["vcluster_heartbeat_age_seconds"]  # NaN
    metrics.beat(at_monotonic=0.0)
    assert samples(metrics)["vcluster_heartbeat_age_seconds"] > 0.0


def test_opennebula_calls_by_method_with_their_errors() -> None:
    metrics = Metrics()
    with running_fake_oned() as fake:
        def client(session: str) -> OneClient:
            return OneClient(OpenNebulaSettings(xmlrpc=fake.url, timeout_s=2.0,
                                                retry_delays_s=()),
                             session=session, on_call=metrics.one_call)
        client("oneadmin:opensesame").version()
        with pytest.raises(OneAuthError):
            client("bob:nope").version()
    got = samples(metrics)
    assert got['vcluster_opennebula_call_seconds_count{method="system.version"}'] == 2.0
    assert got['vcluster_opennebula_errors_total{method="system.version"}'] == 1.0


def test_slurm_commands_by_command_with_their_errors(tmp_path: Path) -> None:
    for name, code in (("sinfo", 0), ("scontrol", 1)):
        script = tmp_path / name
        script.write_text(f"#!/bin/sh\nexit {code}\n")
        script.chmod(0o755)
    metrics = Metrics()
    slurm = Slurm(SlurmSettings(conf=str(tmp_path / "slurm.conf"), bin_dir=str(tmp_path)),
                  environ={}, on_command=metrics.slurm_command)
    slurm.run(["sinfo"])
    slurm.run(["scontrol", "ping"], check=False)
    with pytest.raises(SlurmCommandError):
        slurm.run(["scontrol", "ping"])
    with pytest.raises(SlurmCommandError):
        slurm.run(["squeue"])  # not installed
    got = samples(metrics)
    assert got['vcluster_slurm_command_seconds_count{command="sinfo"}'] == 1.0
    assert got['vcluster_slurm_command_seconds_count{command="scontrol"}'] == 2.0
    assert got['vcluster_slurm_errors_total{command="scontrol"}'] == 2.0
    assert got['vcluster_slurm_errors_total{command="squeue"}'] == 1.0
    assert 'vcluster_slurm_errors_total{command="sinfo"}' not in got


def test_hook_requests_by_kind(world: World) -> None:
    with db.transaction(world.sessions) as s:
        db.beat(s)
    server = HookServer(world.config, world.sessions, world.slurm,  # type: ignore[arg-type]
                        wake_controller=lambda _state_dir: True, metrics=world.metrics)
    request = {"v": PROTOCOL_VERSION, "kind": "suspend", "arg": S1, "env": {}}
    assert server.handle(request, lambda _answer: None)[0] == 0
    server.handle({"v": PROTOCOL_VERSION, "kind": "job 12"}, lambda _answer: None)
    got = samples(world.metrics, "vcluster_hook_requests_total")
    assert got == {'vcluster_hook_requests_total{kind="suspend"}': 1.0,
                   'vcluster_hook_requests_total{kind="malformed"}': 1.0}


def test_no_label_carries_a_job_id_or_a_node(world: World) -> None:
    test_a_boot_counts_the_launch_the_vm_and_its_boot_times(world)
    labels = set(re.findall(r'(\w+)="', world.metrics.text()))
    assert labels <= {"class", "state", "cause", "method", "command", "kind", "le"}


# --- the endpoint -------------------------------------------------------------------------------


def config_with(**controller: object) -> Config:
    return parse_config({"controller": dict(controller), "node_class": [
        {"name": "small", "count": 1, "cpus": 1, "memory_mb": 512, "template": "worker"}]})


def test_the_endpoint_serves_the_metrics_when_the_port_is_set() -> None:
    metrics = Metrics()
    metrics.launched("small")
    server = _serve_metrics(config_with(metrics_port=0), metrics)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'vcluster_launches_total{class="small"} 1.0' in text.splitlines()
    assert "# TYPE vcluster_pass_seconds histogram" in text


def test_no_endpoint_when_the_port_is_unset() -> None:
    config = config_with()
    assert (config.controller.metrics_port, config.controller.metrics_address) == (
        None, "127.0.0.1")
    assert _serve_metrics(config, None) is None


def test_a_port_in_use_is_a_config_error_that_says_what_to_do() -> None:
    metrics = Metrics()
    first = _serve_metrics(config_with(metrics_port=0), metrics)
    try:
        port = first.server_address[1]
        with pytest.raises(ConfigError) as err:
            _serve_metrics(config_with(metrics_port=port), Metrics())
    finally:
        first.shutdown()
        first.server_close()
    assert str(err.value) == (f"config: controller.metrics_port: cannot serve metrics on "
                              f"127.0.0.1:{port}: Address already in use; free that port or "
                              "choose another")


def test_a_port_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        config_with(metrics_port=70000)
    assert str(err.value) == ("config: controller.metrics_port: must be a TCP port, 0-65535, "
                              "got 70000")


def test_a_quota_refusal_backs_the_class_off_and_tells_slurm_and_the_metrics(
        world: World) -> None:
    w = world
    quota = "[one.template.instantiate] User [2] limit of 4 reached for VMS quota in VM"
    w.one.errors = [OneAuthorizationError(quota)]
    w.slurm.nodes_by_name = {S1: powering_up(S1), "vc-small-002": node(
        "vc-small-002", "IDLE", "POWERED_DOWN")}
    w.slurm.jobs_by_id = {12: job(12, S1)}
    w.controller.run_pass()  # the allocation is refused: the launch waits for the plan
    w.controller.run_pass()  # the plan backs the class off
    w.controller.run_pass()  # the picture holds the back-off
    got = samples(w.metrics)
    assert got['vcluster_boot_failures_total{cause="quota",class="small"}'] == 1.0
    assert got['vcluster_class_backoff{cause="quota",class="small"}'] == 1.0
    assert got['vcluster_class_backoff_level{class="small"}'] == 1.0
    assert f"nodename={S1} state=DOWN reason=vcluster: template worker of class small " \
           f"cannot be placed: {quota}" in w.slurm.updates
    assert any(u.startswith("nodename=vc-small-002 state=DRAIN reason=vcluster backoff: "
                            "template worker cannot be placed (quota): ") for u in w.slurm.updates)
    with w.sessions() as s:
        (row,) = s.scalars(select(db.Launch)).all()
        assert (row.state, row.job_id) == ("terminated", 12)  # not a failed VM of the job
        (b,) = s.scalars(select(db.ClassBackoff)).all()
        assert (b.node_class, b.template, b.level, b.cause) == ("small", "worker", 1, "quota")
