"""The testbed cloud with its ``netns`` driver, driven only through pyone, as a site would
drive oned: a VM gets its leased IP, is reachable from the host, runs its start script,
reports READY through OneGate, and after terminate leaves no process, namespace or veth.

Instance prefix ``vcn``, bridge ``vcnbr0``, 10.118.0.0/24, ports 3033 / 5430.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyone
import pytest

from tests.integration.site_fixtures import wait_for
from vcluster.testbed import netns, slurm_root

pytestmark = pytest.mark.integration

PREFIX, BRIDGE, GATEWAY = "vcn", "vcnbr0", "10.118.0.1"
AUTH = "oneadmin:netns-test"
PORT, GATE_PORT = 3033, 5430


@pytest.fixture()
def cloud() -> Iterator[tuple[pyone.OneServer, Path]]:
    if os.geteuid() != 0:
        pytest.skip("netns VMs need root")
    netns.cleanup_prefix(f"{PREFIX}-", bridge=BRIDGE)
    root = Path(tempfile.mkdtemp(prefix="vcn-cloud-", dir="/tmp"))
    os.chmod(root, 0o755)
    auth = root / "one_auth"
    auth.write_text(AUTH + "\n")
    auth.chmod(0o600)
    image = bare_image(slurm_root.build().path)
    netns.ensure_bridge(BRIDGE, f"{GATEWAY}/24")
    log = open(root / "cloud.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "vcluster", "testbed", "cloud", "serve", "--driver", "netns",
         "--port", str(PORT), "--state-dir", str(root / "state"), "--auth-file", str(auth),
         "--prefix", PREFIX, "--bridge", BRIDGE, "--subnet", "10.118.0.0/24",
         "--onegate-host", GATEWAY, "--onegate-port", str(GATE_PORT),
         "--image", f"other-debian={image}", "--share", str(root)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        one = pyone.OneServer(f"http://127.0.0.1:{PORT}/RPC2", session=AUTH)

        def answers() -> bool:
            assert proc.poll() is None, (root / "cloud.log").read_text()
            try:
                return bool(one.system.version())
            except Exception:
                return False

        wait_for("cloud server", answers, 20)
        yield one, root
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        netns.cleanup_prefix(f"{PREFIX}-", bridge=BRIDGE)
        subprocess.run(["rm", "-rf", "--", str(root), str(image)], check=False)


BOOT_FAILURE = 36  # LCM_STATE


def running_and_ready(one: pyone.OneServer, root: Path, vm_id: int) -> Any:
    """The VM once RUNNING with READY=YES (60 s at most); a boot failure fails at once, with
    the VM's console (vminit says why there)."""

    def ready() -> Any:
        vm = one.vm.info(vm_id)
        if vm.LCM_STATE == BOOT_FAILURE:
            console = root / "state" / f"vm{vm_id}" / "console.log"
            raise AssertionError(f"VM {vm_id} failed to boot: "
                                 f"{console.read_text() if console.exists() else 'no console'}")
        return vm.STATE == 3 and vm.LCM_STATE == 3 and \
            (vm.USER_TEMPLATE or {}).get("READY") == "YES" and vm

    return wait_for("VM RUNNING and READY", ready, 60)


BARE_PREFIX = ".vcn-bare-"


def bare_image(root: str) -> Path:
    """The other Debian release's root (built once, kept between runs) as a VM image the way
    a real one may come: no /etc/hosts (debootstrap writes none) and /etc/hostname a
    dangling symlink. A copy of hard links beside the root (seconds, no data copied), so the
    root itself is left as it is; stale copies of an interrupted run are removed first."""
    parent = Path(root).parent
    for stale in parent.glob(BARE_PREFIX + "*"):
        subprocess.run(["rm", "-rf", "--", str(stale)], check=False)
    copy = Path(tempfile.mkdtemp(prefix=BARE_PREFIX, dir=parent))
    subprocess.run(["cp", "-al", "--", f"{root}/.", str(copy)], check=True)
    (copy / "etc/hosts").unlink(missing_ok=True)
    (copy / "etc/hostname").unlink(missing_ok=True)
    (copy / "etc/hostname").symlink_to("/nonexistent/hostname")
    os.chmod(copy, 0o755)
    return copy


def test_netns_vm_boots_reports_ready_and_leaves_nothing(
        cloud: tuple[pyone.OneServer, Path]) -> None:
    one, root = cloud
    marker = root / "started"
    script = (
        "#!/bin/sh\n"
        "/usr/bin/python3 -m http.server 8000 --bind \"$ETH0_IP\" >/dev/null 2>&1 &\n"
        f"echo \"$(hostname) $ETH0_IP $!\" > {marker}\n"
    )
    template = (
        'NAME = "probe"\nCPU = "0.5"\nMEMORY = "128"\n'
        'NIC = [ NETWORK = "vcluster" ]\n'
        'CONTEXT = [ NETWORK = "YES", TOKEN = "YES", REPORT_READY = "YES", '
        'SET_HOSTNAME = "probe-$VMID", '
        f'START_SCRIPT_BASE64 = "{base64.b64encode(script.encode()).decode()}" ]\n'
    )
    vm_id = one.vm.allocate(template)
    vm = running_and_ready(one, root, vm_id)
    ip = vm.TEMPLATE["NIC"]["IP"]
    assert ip.startswith("10.118.0.")
    assert vm.TEMPLATE["NIC"]["MAC"] == "02:00:" + ":".join(f"{int(b):02x}" for b in ip.split("."))

    hostname, seen_ip, server_pid = marker.read_text().split()
    assert hostname == f"probe-{vm_id}"
    assert seen_ip == ip
    body = wait_for("HTTP from the VM", lambda: _get(f"http://{ip}:8000/"), 10)
    assert b"Directory listing" in body

    one.vm.action("terminate", vm_id)
    wait_for("VM DONE", lambda: one.vm.info(vm_id).STATE == 6, 30)
    assert not _alive(int(server_pid)), "a process of the VM outlived it"
    assert f"{PREFIX}-vm{vm_id}" not in netns.list_hosts(f"{PREFIX}-")
    assert not netns.list_links(f"{PREFIX}-v{vm_id}")
    assert not Path(f"/sys/fs/cgroup/freezer/{PREFIX}-vm{vm_id}").exists()


def test_netns_vm_of_an_image_runs_that_root_with_its_own_boot_time(
        cloud: tuple[pyone.OneServer, Path]) -> None:
    one, root = cloud
    out = root / "guest.out"
    script = (
        "#!/bin/sh\n"
        f"{{ cat /etc/os-release; cut -d' ' -f1 /proc/uptime; slurmd -V; ls /context; "
        'echo "HOSTNAME $(cat /etc/hostname)"; echo "HOSTS $(grep image-probe /etc/hosts)"; '
        f"touch /etc/written-in-the-vm; }} > {out} 2>&1\n"
    )
    template = (
        'NAME = "image-probe"\nCPU = "0.5"\nMEMORY = "128"\n'
        'NIC = [ NETWORK = "vcluster" ]\nDISK = [ IMAGE = "other-debian" ]\n'
        'CONTEXT = [ NETWORK = "YES", TOKEN = "YES", REPORT_READY = "YES", '
        f'START_SCRIPT_BASE64 = "{base64.b64encode(script.encode()).decode()}" ]\n'
    )
    vm_id = one.vm.allocate(template)
    running_and_ready(one, root, vm_id)
    lines = out.read_text().splitlines()
    image = slurm_root.build()  # the root the fixture's image is a copy of
    codename = slurm_root.other_suite()
    assert f"VERSION_CODENAME={codename}" in lines  # the image's release, not the host's
    uptime = float(next(line for line in lines if line.replace(".", "").isdigit()))
    assert uptime < 30, f"the VM sees the host's uptime ({uptime} s), not its own boot"
    assert f"slurm-wlm {image.version()}" in lines
    assert "context.sh" in lines and "token.txt" in lines
    assert not Path(image.path, "etc/written-in-the-vm").exists()  # copy-on-write
    # its own hostname and hosts, although the image has neither
    ip = one.vm.info(vm_id).TEMPLATE["NIC"]["IP"]
    assert "HOSTNAME image-probe" in lines
    assert next(line for line in lines if line.startswith("HOSTS ")).split() == [
        "HOSTS", ip, "image-probe"]
    one.vm.action("terminate-hard", vm_id)
    wait_for("VM DONE", lambda: one.vm.info(vm_id).STATE == 6, 30)
    assert f"{PREFIX}-vm{vm_id}" not in netns.list_hosts(f"{PREFIX}-")


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - our own VM
            return bytes(resp.read())
    except OSError:
        return None


def _alive(pid: int) -> bool:
    """A live process (a zombie waiting for this machine's init to reap it is dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
