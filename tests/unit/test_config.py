"""Config loading: good files load; bad ones give one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from vcluster.config import load_config, read_one_auth
from vcluster.errors import ConfigError

GOOD = """
[opennebula]
xmlrpc = "http://127.0.0.1:2633/RPC2"
auth_file = "/etc/vcluster/one_auth"

[slurm]
partitions = ["vcluster"]

[database]
url = "sqlite:////tmp/x.db"

[[node_class]]
name = "small"
count = 4
cpus = 2
memory_mb = 2048
template = "worker"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "vcluster.toml"
    p.write_text(text)
    return p


def test_good_config_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), environ={})
    nc = cfg.node_class("small")
    assert nc.prefix == "vc-small-"
    assert nc.hostlist == "vc-small-[001-004]"
    assert nc.node_names() == ["vc-small-001", "vc-small-002", "vc-small-003", "vc-small-004"]
    assert nc.features == ("small",)
    assert nc.policy == "per-job"
    assert cfg.class_of_node("vc-small-003") is nc
    assert cfg.class_of_node("vc-small-005") is None


def test_boot_rates_and_back_off_settings(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), environ={})
    c, nc = cfg.controller, cfg.node_class("small")
    assert (c.boot_rate_per_s, c.boot_burst, c.placement_wait_s) == (10.0, 20, 60.0)
    assert c.capacity_backoff_s == (60.0, 120.0, 300.0, 600.0, 1800.0)
    assert (nc.boot_rate_per_s, nc.boot_burst, nc.fallback_templates) == (None, None, ())
    text = GOOD.replace("[database]", "[controller]\nboot_rate_per_s = 2.5\nboot_burst = 5\n"
                        "capacity_backoff_s = [30, 90]\n[database]").replace(
        "count = 4", 'count = 4\nboot_rate_per_s = 1\nfallback_templates = ["b", "c"]')
    cfg = load_config(write(tmp_path, text), environ={})
    assert (cfg.controller.boot_rate_per_s, cfg.controller.boot_burst) == (2.5, 5)
    assert cfg.controller.capacity_backoff_s == (30.0, 90.0)
    nc = cfg.node_class("small")
    assert (nc.boot_rate_per_s, nc.boot_burst, nc.fallback_templates) == (1.0, None, ("b", "c"))


def test_environment_overrides_endpoint(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), environ={"ONE_XMLRPC": "http://one:2633/RPC2",
                                                      "ONE_AUTH": "/root/auth"})
    assert cfg.opennebula.xmlrpc == "http://one:2633/RPC2"
    assert cfg.opennebula.auth_file == "/root/auth"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("cpus = 2", "cpus = 0"), "node_class[0].cpus: must be positive, got 0"),
        (("cpus = 2", 'cpus = "two"'), "node_class[0].cpus: must be an integer, got 'two'"),
        (("count = 4", "count = 4\npolicy = \"spot\""),
         "node_class[0].policy: must be 'per-job' or 'pool', got 'spot'"),
        (('template = "worker"', ""), "node_class[0].template: is required"),
        (('name = "small"', 'name = "' + "s" * 33 + '"'),
         "node_class[0].name: must be 1-32 lower-case letters, digits, '-' or '_', starting "
         f"with a letter, got '{'s' * 33}'"),
        (("[database]", "[controller]\nhistory_days = 0\n[database]"),
         "controller.history_days: must be positive, got 0"),
        (("[database]", "[database]\nurll = 1"),
         "database.urll: unknown key (known keys here: url)"),
        (('xmlrpc = "http://127.0.0.1:2633/RPC2"', 'xmlrpc = "127.0.0.1:2633"'),
         "opennebula.xmlrpc: must be an http:// or https:// URL, got '127.0.0.1:2633'"),
        (("count = 4", 'count = 4\non_vm_event = { PAUSED = "fail" }'),
         "node_class[0].on_vm_event: unknown event 'PAUSED'; events: POWEROFF, SUSPENDED, "
         "STOPPED, UNDEPLOYED, UNKNOWN, FAILURE, DONE, HOST_OFFLINE, HOST_ERROR"),
        (("count = 4", 'count = 4\non_vm_event = { STOPPED = "resume" }'),
         "node_class[0].on_vm_event: STOPPED = 'resume': must be 'fail'"),
        (("count = 4", 'count = 4\non_vm_event = { SUSPENDED = "ignore" }'),
         "node_class[0].on_vm_event: SUSPENDED = 'ignore': must be 'fail' or 'resume'"),
        (("count = 4", 'count = 4\non_vm_event = { HOST_OFFLINE = "resume" }'),
         "node_class[0].on_vm_event: HOST_OFFLINE = 'resume': must be 'fail' or 'keep'"),
        (("[database]", "[controller]\ncapacity_backoff_s = []\n[database]"),
         "controller.capacity_backoff_s: must be a non-empty list of positive seconds, got []"),
        (("[database]", "[controller]\ncapacity_backoff_s = [60, 0]\n[database]"),
         "controller.capacity_backoff_s: must be a non-empty list of positive seconds, "
         "got [60, 0]"),
        (("[database]", "[controller]\nboot_rate_per_s = 0\n[database]"),
         "controller.boot_rate_per_s: must be positive, got 0"),
        (("count = 4", "count = 4\nboot_burst = -1"),
         "node_class[0].boot_burst: must be positive, got -1"),
        (("count = 4", "count = 4\nfallback_templates = [\"\"]"),
         "node_class[0].fallback_templates: must be a list of non-empty strings"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    p = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ConfigError) as info:
        load_config(p, environ={})
    assert str(info.value) == f"{p}: {message}"


def test_not_toml(tmp_path: Path) -> None:
    p = write(tmp_path, "[opennebula\n")
    with pytest.raises(ConfigError, match=r"not valid TOML"):
        load_config(p, environ={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "none.toml", environ={})
    assert "file not found; create it" in str(info.value)


def test_one_auth_file(tmp_path: Path) -> None:
    auth = tmp_path / "one_auth"
    auth.write_text("oneadmin:secret\n")
    assert read_one_auth(str(auth)) == "oneadmin:secret"
    auth.write_text("justauser\n")
    with pytest.raises(ConfigError, match="must hold one line user:password") as info:
        read_one_auth(str(auth))
    assert "secret" not in str(info.value)


def test_slurm_errors_classified_temporary_or_permanent() -> None:
    from vcluster.errors import SlurmCommandError

    down = SlurmCommandError(
        ["squeue", "--json"], 1, "",
        "slurm_load_jobs error: Unable to contact slurm controller (connect failure)",
    )
    assert down.temporary
    assert str(down) == ("`squeue --json` failed (exit 1): slurm_load_jobs error: "
                         "Unable to contact slurm controller (connect failure)")
    refused = SlurmCommandError(["sbatch"], 1, "", "sbatch: error: Invalid feature specification")
    assert not refused.temporary
    slow = SlurmCommandError(["scontrol", "ping"], None, timed_out=True, timeout_s=5)
    assert slow.temporary
    assert str(slow) == "`scontrol ping` timed out after 5 s; is slurmctld responding?"
