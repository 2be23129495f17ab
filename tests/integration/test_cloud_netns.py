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
    image = slurm_root.build()  # the other Debian release's root (kept between runs)
    netns.ensure_bridge(BRIDGE, f"{GATEWAY}/24")
    log = open(root / "cloud.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "vcluster", "testbed", "cloud", "serve", "--driver", "netns",
         "--port", str(PORT), "--state-dir", str(root / "state"), "--auth-file", str(auth),
         "--prefix", PREFIX, "--bridge", BRIDGE, "--subnet", "10.118.0.0/24",
         "--onegate-host", GATEWAY, "--onegate-port", str(GATE_PORT),
         "--image", f"other-debian={image.path}", "--share", str(root)],
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
        subprocess.run(["rm", "-rf", "--", str(root)], check=False)


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
    vm = wait_for("VM RUNNING and READY", lambda: (
        (v := one.vm.info(vm_id)).STATE == 3 and v.LCM_STATE == 3
        and (v.USER_TEMPLATE or {}).get("READY") == "YES" and v), 60)
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
        f"touch /etc/written-in-the-vm; }} > {out} 2>&1\n"
    )
    template = (
        'NAME = "image-probe"\nCPU = "0.5"\nMEMORY = "128"\n'
        'NIC = [ NETWORK = "vcluster" ]\nDISK = [ IMAGE = "other-debian" ]\n'
        'CONTEXT = [ NETWORK = "YES", TOKEN = "YES", REPORT_READY = "YES", '
        f'START_SCRIPT_BASE64 = "{base64.b64encode(script.encode()).decode()}" ]\n'
    )
    vm_id = one.vm.allocate(template)
    wait_for("VM RUNNING and READY", lambda: (
        (v := one.vm.info(vm_id)).STATE == 3 and v.LCM_STATE == 3
        and (v.USER_TEMPLATE or {}).get("READY") == "YES"), 60)
    lines = out.read_text().splitlines()
    image = slurm_root.build()
    codename = slurm_root.other_suite()
    assert f"VERSION_CODENAME={codename}" in lines  # the image's release, not the host's
    uptime = float(next(line for line in lines if line.replace(".", "").isdigit()))
    assert uptime < 30, f"the VM sees the host's uptime ({uptime} s), not its own boot"
    assert f"slurm-wlm {image.version()}" in lines
    assert "context.sh" in lines and "token.txt" in lines
    assert not Path(image.path, "etc/written-in-the-vm").exists()  # copy-on-write
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
