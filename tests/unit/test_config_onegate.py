"""``opennebula.onegate_endpoint`` is refused: oned, not vcluster, tells VMs where OneGate is."""

from __future__ import annotations

import pytest

from vcluster.config import parse_config
from vcluster.errors import ConfigError

MINIMAL = {"node_class": [{"name": "small", "prefix": "vc-small-", "count": 2, "cpus": 1,
                           "memory_mb": 512, "template": "worker"}]}


def test_onegate_endpoint_is_refused_with_what_to_do() -> None:
    data = {"opennebula": {"onegate_endpoint": "http://gate:5030"}, **MINIMAL}
    with pytest.raises(ConfigError) as raised:
        parse_config(data, path="/etc/vcluster/vcluster.toml")
    assert str(raised.value) == (
        "/etc/vcluster/vcluster.toml: opennebula.onegate_endpoint: is not used: oned gives "
        "every VM the ONEGATE_ENDPOINT of oned.conf (and refuses a VM with TOKEN=YES when it "
        "has none); set it there and remove this key")


def test_a_config_without_it_loads() -> None:
    config = parse_config({"opennebula": {"timeout_s": 5}, **MINIMAL})
    assert config.opennebula.timeout_s == 5
    assert not hasattr(config.opennebula, "onegate_endpoint")
