"""fsub: refusals before submission, the sbatch argv it builds, and a real submission."""

from __future__ import annotations

from pathlib import Path

import pytest

from vcluster.config import load_config
from vcluster.errors import ConfigError

CONFIG = """
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
