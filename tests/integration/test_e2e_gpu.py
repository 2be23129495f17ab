"""A GPU job end to end: ``fsub --gres=gpu:1`` -> the gpu class's CLOUD node (Gres=gpu:tesla:1)
-> a VM whose template asks OpenNebula for a PCI GPU -> placed on the host that reports one,
which is assigned to it -> slurmd registers the GPU (count-only gres.conf from slurmctld,
configless) -> the job runs with its GPU allocated -> VM terminated, the device free again.

What is simulated: the testbed cloud's host0 reports a GPU (``--pci``) that does not exist,
and the netns VM gets a stand-in device file for it (/run/testbed-pci/pci0, what a driver in a
real image creates as /dev/nvidia0), named by the class's gres.conf ``File=``; Slurm's side is
real (slurmd registers the GPU from gres.conf fetched configless, binds it to the job).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pyone
import pytest

from tests.integration.site_fixtures import E2E_NAME, Site, job_id_of, wait_clean
from vcluster.config import read_one_auth

pytestmark = pytest.mark.integration


@pytest.fixture()
def s(e2e_site: Site) -> Iterator[Site]:
    wait_clean(e2e_site)
    yield e2e_site
    wait_clean(e2e_site)


def _server(s: Site) -> pyone.OneServer:
    return pyone.OneServer(s.config.opennebula.xmlrpc,
                           session=read_one_auth(s.config.opennebula.auth_file))


def _job_vms(s: Site, job_id: int) -> list[pyone.bindings.VMType]:
    vms = _server(s).vmpool.infoextended(-2, -1, -1, -2).VM or []
    return [vm for vm in vms
            if str((vm.USER_TEMPLATE or {}).get("VCLUSTER_JOB", "")) == str(job_id)]


def _host_gpus(s: Site) -> dict[str, int]:
    """host0's PCI devices: short address -> VMID (-1: free), as `onehost show` lists them."""
    share = _server(s).host.info(0).HOST_SHARE
    devices = share.PCI_DEVICES.PCI or []
    return {str(d["SHORT_ADDRESS"]) if isinstance(d, dict) else str(d.SHORT_ADDRESS):
            int(d["VMID"] if isinstance(d, dict) else d.VMID) for d in devices}


def test_gres_gpu_job_runs_on_a_gpu_class_vm_with_the_device_assigned(s: Site) -> None:
    assert _host_gpus(s) == {"41:00.0": -1}
    out = s.work / "gpu.out"
    proc = s.fsub("--gres=gpu:1", "--wait", f"--output={out}", "--wrap",
                  'echo "node=$(hostname)"; '
                  'scontrol show job -d "$SLURM_JOB_ID" | grep -o "GRES=[^ ]*"; '
                  'scontrol show node "$(hostname)" | grep -o "Gres=[^ ]*"; '
                  'echo "cuda=$CUDA_VISIBLE_DEVICES"')
    assert proc.returncode == 0, proc.stderr
    job_id = job_id_of(proc)
    text = out.read_text()
    node = re.search(r"node=(\S+)", text)
    assert node and node.group(1) == f"{E2E_NAME}-gpu-001", text
    assert "Gres=gpu:tesla:1" in text, text
    assert re.search(r"GRES=gpu:tesla:1\(IDX:0\)", text), text
    assert "cuda=0" in text, text  # Slurm bound the VM's (stand-in) device file

    (vm,) = _job_vms(s, job_id)
    assert vm.USER_TEMPLATE["VCLUSTER_NODE"] == f"{E2E_NAME}-gpu-001"
    assert vm.HISTORY_RECORDS.HISTORY[-1].HOSTNAME == "host0"
    pci = vm.TEMPLATE["PCI"]
    assert (pci["VENDOR"], pci["CLASS"], pci["PCI_ID"]) == ("10de", "0302", "0")
    assert pci["VM_ADDRESS"] == "01:01.0"
    wait_clean(s)
    assert _host_gpus(s) == {"41:00.0": -1}  # freed when the VM was terminated


def test_gres_no_class_has_is_refused_before_slurm(s: Site) -> None:
    proc = s.fsub("--gres=gpu:2", "--wrap", "true")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "fsub: error: --gres=gpu:2: no node class has gpu:2 per node "
        "(small: none; pool: none; gpu: gpu:tesla:1)")
