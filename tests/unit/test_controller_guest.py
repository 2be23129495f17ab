"""What worker VMs are told: slurmctld's address (config or slurm.conf) and the munge key."""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path

import pytest

from vcluster.config import parse_config
from vcluster.controller.guest import (
    guest_context,
    join_endpoint,
    munge_key_b64,
    parse_slurmctld_address,
    slurmctld_address,
)
from vcluster.errors import ConfigError


@pytest.mark.parametrize(("text", "expected"), [
    ("SlurmctldHost=vcctl(10.111.0.1)\n", ("10.111.0.1", 6817)),
    ("slurmctldhost = head\nSlurmctldHost=backup\nSlurmctldPort=7817-7818\n", ("head", 7817)),
    ("# SlurmctldHost=old\nControlMachine=legacy\nControlAddr=10.0.0.5\n", ("10.0.0.5", 6817)),
    ("ClusterName=x\n", None),
])
def test_parse_slurmctld_address(text: str, expected: tuple[str, int] | None) -> None:
    assert parse_slurmctld_address(text) == expected


def _config(tmp_path: Path, controller_host: str = "", key: bytes = b"k" * 64):
    conf = tmp_path / "slurm.conf"
    conf.write_text("SlurmctldHost=vcctl(10.111.0.1)\nSlurmctldPort=7817\n")
    (tmp_path / "munge.key").write_bytes(key)
    return parse_config({"slurm": {"conf": str(conf), "controller_host": controller_host,
                                   "munge_key_file": str(tmp_path / "munge.key")}})


def test_address_from_slurm_conf_or_config(tmp_path: Path) -> None:
    assert slurmctld_address(_config(tmp_path)) == "10.111.0.1:7817"
    assert slurmctld_address(_config(tmp_path, "ctl.example")) == "ctl.example:7817"
    assert slurmctld_address(_config(tmp_path, "ctl.example:6999")) == "ctl.example:6999"


def test_guest_context_names_the_join_endpoint_not_the_key(tmp_path: Path) -> None:
    ctx = guest_context(_config(tmp_path))
    assert ctx.slurm_conf_server == "10.111.0.1:7817"
    assert ctx.join_url == "http://10.111.0.1:6830"  # slurmctld's host, the default port
    assert base64.b64encode(b"k" * 64).decode() not in repr(ctx)
    assert base64.b64decode(munge_key_b64(_config(tmp_path))) == b"k" * 64


def test_join_address_from_the_config_or_refused(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert join_endpoint(replace(config, controller=replace(
        config.controller, join_address="192.0.2.7:7000"))) == ("192.0.2.7", 7000)
    with pytest.raises(ConfigError) as info:
        join_endpoint(replace(config, controller=replace(config.controller,
                                                         join_address="192.0.2.7")))
    assert str(info.value) == ("config: controller.join_address: join_address must be "
                               "HOST:PORT (an address worker VMs reach the controller at), "
                               "got '192.0.2.7'")


def test_a_short_munge_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        guest_context(_config(tmp_path, key=b"short"))
    assert str(info.value) == (f"config: slurm.munge_key_file: the munge key {tmp_path}/munge.key "
                               "is only 5 bytes; munged needs at least 32")
