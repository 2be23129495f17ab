"""GPU node classes: the config keys, the slurm.conf and gres.conf lines, the VM's PCI
request, and fsub's routing of --gres / --gpus* jobs."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from vcluster.cli import cli
from vcluster.config import Config, parse_config
from vcluster.devices import Gres, job_gres, parse_gres_item
from vcluster.errors import ConfigError, UserInputError
from vcluster.slurmconf import HookPrograms, generate, gres_conf
from vcluster.submit import SubmitRequest, plan_submission
from vcluster.vmtemplate import GuestContext, worker_vm_extra

TOML = """
[slurm]
partitions = ["vcluster", "gpu"]

[[node_class]]
name = "small"
count = 4
cpus = 2
memory_mb = 4096
template = "worker"

[[node_class]]
name = "t4"
count = 2
cpus = 8
memory_mb = 32768
template = "worker-cuda"
partition = "gpu"
gres = ["gpu:t4:1"]
gres_conf = "File=/dev/nvidia0"
pci = [{ vendor = "10de", device = "1eb8", class = "0302" }]

[[node_class]]
name = "a100"
prefix = "vc-a100-"
count = 2
cpus = 16
memory_mb = 65536
template = "worker-cuda"
partition = "gpu"
gres = ["gpu:a100:2"]
gres_conf = "AutoDetect=nvml"
pci = [{ short_address = "41:00.0" }, { short_address = "42:00.0" }]
"""


def _config(text: str = TOML, path: str = "/etc/vcluster/vcluster.toml") -> Config:
    return parse_config(tomllib.loads(text), path=path)


def test_class_devices_are_read() -> None:
    config = _config()
    t4 = config.node_class("t4")
    assert t4.gres == (Gres("gpu", "t4", 1),)
    assert t4.gres_conf == "File=/dev/nvidia0"
    assert t4.pci == ({"VENDOR": "10de", "DEVICE": "1eb8", "CLASS": "0302"},)
    assert config.node_class("small").gres == () and config.node_class("small").pci == ()


@pytest.mark.parametrize(("key", "value", "message"), [
    ("gres", '["gpu:t4:0"]', "node_class[0].gres: 'gpu:t4:0': the count must be at least 1"),
    ("gres", '["gpu:t4:x"]', "node_class[0].gres: 'gpu:t4:x': the count 'x' is not a whole "
                             "number"),
    ("gres", '["9gpu"]', "node_class[0].gres: '9gpu': the name '9gpu' may hold only letters"),
    ("gres", '["gpu:1", "gpu:2"]', "node_class[0].gres: 'gpu:2' is given twice"),
    ("gres", '["gpu:1"]', "node_class[0].gres_conf: a gpu GRES needs its device file "
                          "(gres_conf = \"File=/dev/nvidia0\") or \"AutoDetect=nvml\""),
    ("gres_conf", '"Count=2"', "node_class[0].gres_conf: 'Count=2': vcluster writes NodeName"),
    ("gres_conf", '"File=/dev/nvidia0"', "node_class[0].gres_conf: is for the class's gres; "
                                         "set gres too"),
    ("pci", '[{ vendor = "nvidia" }]', "node_class[0].pci: item 0: PCI vendor 'nvidia' is not "
                                       "a hexadecimal id such as 10de"),
    ("pci", '[{ short_address = "41:00.0", vendor = "10de" }]',
     "node_class[0].pci: item 0: PCI short_address cannot be set with vendor, device or class"),
    ("pci", '[{ bus = "41" }]', "node_class[0].pci: item 0: unknown PCI key 'bus'"),
    ("pci", '[{}]', "node_class[0].pci: item 0: a PCI request needs vendor, device or class"),
    ("pci", '["10de"]', "node_class[0].pci: item 0 must be a table"),
])
def test_bad_device_keys_are_one_line_errors(key: str, value: str, message: str) -> None:
    text = ('[[node_class]]\nname = "g"\ncount = 1\ncpus = 1\nmemory_mb = 1\n'
            f'template = "w"\n{key} = {value}\n')
    with pytest.raises(ConfigError) as err:
        _config(text, path="site.toml")
    assert str(err.value).startswith(f"site.toml: {message}")
    assert "\n" not in str(err.value)


def test_slurm_conf_declares_gres_and_gres_types() -> None:
    text = generate(_config(), HookPrograms.in_dir("/opt/bin"), slurm_version="24.11")
    assert "GresTypes=gpu\n" in text
    assert ("NodeName=vc-t4-[001-002] State=CLOUD CPUs=8 RealMemory=32768 Features=t4 "
            "Weight=2 Gres=gpu:t4:1\n") in text
    assert "Features=a100 Weight=3 Gres=gpu:a100:2\n" in text
    assert "NodeName=vc-small-[001-004] State=CLOUD CPUs=2 RealMemory=4096 Features=small " \
           "Weight=1\n" in text
    assert "GresTypes" not in generate(_config(TOML.split("[[node_class]]\nname = \"t4\"")[0]),
                                       None)


def test_gres_conf_lines_per_class() -> None:
    assert gres_conf(_config()).splitlines()[1:] == [
        "NodeName=vc-t4-[001-002] Name=gpu Type=t4 Count=1 File=/dev/nvidia0",
        "NodeName=vc-a100-[001-002] Name=gpu Type=a100 Count=2 AutoDetect=nvml",
        "# --- end of vcluster ---"]


def test_cli_prints_gres_conf(tmp_path: Path) -> None:
    conf = tmp_path / "vcluster.toml"
    conf.write_text(TOML)
    result = CliRunner().invoke(cli, ["--config", str(conf), "slurm-conf", "--gres-conf"])
    assert result.exit_code == 0, result.output
    assert result.output == gres_conf(_config(path=str(conf)))


def test_vm_template_asks_oned_for_the_pci_devices() -> None:
    config = _config()
    extra = worker_vm_extra(node_class=config.node_class("a100"), node_name="vc-a100-001",
                            job_id=7, cluster="c", cpus=16, memory_mb=65536,
                            context=GuestContext("ctl:6817", "http://ctl:6830"),
                            join_token="t0k", guest_script=b"")
    assert ('PCI = [\n  SHORT_ADDRESS = "41:00.0" ]\n'
            'PCI = [\n  SHORT_ADDRESS = "42:00.0" ]\n') in extra
    small = worker_vm_extra(node_class=config.node_class("small"), node_name="vc-small-001",
                            job_id=7, cluster="c", cpus=2, memory_mb=4096,
                            context=GuestContext("ctl:6817", "http://ctl:6830"),
                            join_token="t0k", guest_script=b"")
    assert "PCI" not in small


@pytest.mark.parametrize(("text", "wanted"), [
    ("gpu", (Gres("gpu", None, 1),)),
    ("gpu:2", (Gres("gpu", None, 2),)),
    ("gres/gpu:a100:1,nic:1", (Gres("gpu", "a100", 1), Gres("nic", None, 1))),
    ("none", ()),
])
def test_job_gres_is_read_as_slurm_reads_it(text: str, wanted: tuple[Gres, ...]) -> None:
    assert job_gres(text) == wanted


def test_job_gpus_options() -> None:
    assert job_gres(None, "a100:2") == (Gres("gpu", "a100", 2),)
    assert job_gres(None, None, "4") == (Gres("gpu", None, 1),)  # a total: >= 1 per node
    with pytest.raises(ValueError, match="is not"):
        parse_gres_item("gpu:a:b:c", job=True)


def _plan(argv: list[str]) -> tuple[str, tuple[str, ...]]:
    submission = plan_submission(SubmitRequest.from_argv(argv), _config())
    return submission.node_class.name, submission.sbatch_args


def test_fsub_routes_a_gres_job_to_a_class_that_has_it() -> None:
    assert _plan(["--gres=gpu:1", "job.sh"]) == ("t4", (
        "--parsable", "--gres=gpu:1", "--partition=gpu", "--constraint=t4", "--exclusive",
        "job.sh"))
    assert _plan(["--gres=gpu:a100:2", "job.sh"])[0] == "a100"
    assert _plan(["--gres=gpu:2", "job.sh"])[0] == "a100"
    assert _plan(["--gpus-per-node=a100:1", "job.sh"])[0] == "a100"
    assert _plan(["-G", "1", "job.sh"])[0] == "t4"
    assert _plan(["job.sh"])[0] == "small"


@pytest.mark.parametrize(("argv", "message"), [
    (["--gres=gpu:4", "job.sh"],
     "--gres=gpu:4: no node class has gpu:4 per node (small: none; t4: gpu:t4:1; "
     "a100: gpu:a100:2)"),
    (["-p", "vcluster", "--gres=gpu:1", "job.sh"],
     "--gres=gpu:1: no node class has gpu:1 per node (small: none)"),
    (["--vm-class=small", "--gres=gpu:1", "job.sh"],
     "--gres=gpu:1: node class small has none per node, not gpu:1"),
    (["--vm-class=t4", "--gres=gpu:a100:1", "job.sh"],
     "--gres=gpu:a100:1: node class t4 has gpu:t4:1 per node, not gpu:a100:1"),
    (["--gres=gpu:x:y:z", "job.sh"], "--gres=gpu:x:y:z: 'gpu:x:y:z' is not name[:type][:count]"),
    (["--gpus-per-node=lots", "job.sh"], "--gpus-per-node=lots: 'lots' is not [type:]count"),
])
def test_fsub_refuses_gres_no_class_has(argv: list[str], message: str) -> None:
    with pytest.raises(UserInputError) as err:
        plan_submission(SubmitRequest.from_argv(argv), _config())
    assert str(err.value).startswith(message), str(err.value)
