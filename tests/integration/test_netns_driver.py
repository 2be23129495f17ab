"""The netns VM driver against the real kernel: namespaces, bridge, freezer cgroup, OneGate.

Instance "vctv": bridge vctvbr0, subnet 10.113.0.0/24 (gateway 10.113.0.1), kernel objects
named vctv-*. The driver is used directly (no XML-RPC server); OneGate is a small real HTTP
server on the bridge's gateway address that records what the VMs send.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vcluster.testbed import netns
from vcluster.testbed.cloud.drivers.base import DriverError, Fault, Nic, VMSpec
from vcluster.testbed.cloud.drivers.netns import FREEZER_ROOT, NetnsDriver

pytestmark = pytest.mark.integration

PREFIX = "vctv"
BRIDGE = "vctvbr0"
GATEWAY = "10.113.0.1"
HTTP_PORT = 8113


def wipe_instance() -> None:
    """Remove every vctv kernel object, whatever state an earlier run left."""
    for cgroup in FREEZER_ROOT.glob(f"{PREFIX}-*"):
        (cgroup / "freezer.state").write_text("THAWED")
        pids = [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
        netns.terminate_pids(pids, 2.0)
    netns.cleanup_prefix(f"{PREFIX}-", bridge=BRIDGE, kill_timeout_s=2.0)
    for cgroup in FREEZER_ROOT.glob(f"{PREFIX}-*"):
        cgroup.rmdir()


def leftovers() -> list[str]:
    found = [f"namespace {n}" for n in netns.list_hosts(f"{PREFIX}-")]
    found += [f"link {n}" for n in netns.list_links(f"{PREFIX}-")]
    found += [f"cgroup {p.name}" for p in FREEZER_ROOT.glob(f"{PREFIX}-*")]
    return found


def running(pid: int) -> bool:
    """True if the process exists and has not exited (a zombie waiting to be reaped has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class OneGateRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class OneGate:
    endpoint: str
    requests: list[OneGateRequest] = field(default_factory=list)


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[NetnsDriver]:
    wipe_instance()
    netns.ensure_bridge(BRIDGE, f"{GATEWAY}/24")
    try:
        yield NetnsDriver(tmp_path / "state", PREFIX, stop_timeout_s=3.0)
    finally:
        wipe_instance()


@pytest.fixture
def onegate(driver: NetnsDriver) -> Iterator[OneGate]:
    gate = OneGate(endpoint="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            gate.requests.append(
                OneGateRequest("PUT", self.path, dict(self.headers.items()), body)
            )
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((GATEWAY, 0), Handler)
    gate.endpoint = f"http://{GATEWAY}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield gate
    finally:
        server.shutdown()
        server.server_close()


def make_spec(
    vm_id: int, ip: str, script: str, *, extra: dict[str, str] | None = None,
    token: str = "", fault: Fault | None = None,
) -> VMSpec:
    context = {
        "SET_HOSTNAME": f"vctv-node{vm_id}",
        "NETWORK": "YES",
        "ETH0_IP": ip,
        "VMID": str(vm_id),
        "START_SCRIPT_BASE64": base64.b64encode(script.encode()).decode(),
        **(extra or {}),
    }
    mac = "02:00:" + ":".join(f"{int(o):02x}" for o in ip.split("."))
    nic = Nic(0, "vctv-net", BRIDGE, ip, mac, "255.255.255.0", GATEWAY)
    return VMSpec(vm_id, f"one-{vm_id}", 1.0, 256, (nic,), context, token, fault or Fault())


def http_get(url: str, timeout_s: float) -> int:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return int(response.status)


LISTENER_SCRIPT = f"""#!/bin/sh
mkdir -p "$OUT/www"
echo "page of $(hostname)" > "$OUT/www/index.html"
cd "$OUT/www"
python3 -m http.server {HTTP_PORT} --bind "$ETH0_IP" </dev/null >/dev/null 2>&1 &
echo $! > "$OUT/listener.pid"
{{
  echo "hostname=$(hostname)"
  echo "uid=$(id -u)"
  echo "quote=$QUOTE"
  echo "context_first_line=$(head -n 1 /context/context.sh)"
  echo "one_env_vmid=$(. /var/run/one-context/one_env; echo "$VMID")"
}} > "$OUT/marker.tmp"
mv "$OUT/marker.tmp" "$OUT/marker"
"""


def test_vm_boots_joins_bridge_runs_start_script_and_reports_ready(
    driver: NetnsDriver, onegate: OneGate, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    ip = "10.113.0.11"
    spec = make_spec(
        11, ip, LISTENER_SCRIPT, token="tok-en/11==",
        extra={"OUT": str(out), "QUOTE": "it's", "REPORT_READY": "YES", "TOKEN": "YES",
               "ONEGATE_ENDPOINT": onegate.endpoint},
    )
    driver.boot(spec)

    context_sh = (driver.vm_dir(11) / "context" / "context.sh").read_text()
    assert context_sh == (
        "# Context variables generated by OpenNebula\n"
        f"ETH0_IP='{ip}'\n"
        "NETWORK='YES'\n"
        f"ONEGATE_ENDPOINT='{onegate.endpoint}'\n"
        f"OUT='{out}'\n"
        "QUOTE='it'\\''s'\n"
        "REPORT_READY='YES'\n"
        "SET_HOSTNAME='vctv-node11'\n"
        f"START_SCRIPT_BASE64='{spec.context['START_SCRIPT_BASE64']}'\n"
        "TOKEN='YES'\n"
        "VMID='11'\n"
    )
    assert (driver.vm_dir(11) / "context" / "token.txt").read_text() == "tok-en/11==\n"

    wait_for((out / "marker").exists, 10, "the start script's marker")
    assert (out / "marker").read_text() == (
        "hostname=vctv-node11\nuid=0\nquote=it's\n"
        "context_first_line=# Context variables generated by OpenNebula\n"
        "one_env_vmid=11\n"
    )
    assert socket.gethostname() != "vctv-node11"

    wait_for(lambda: onegate.requests, 10, "the READY report")
    (ready,) = onegate.requests
    assert (ready.method, ready.path, ready.body) == ("PUT", "/vm", b"data=READY%3DYES")
    assert ready.headers["X-ONEGATE-TOKEN"] == "tok-en/11=="
    assert ready.headers["X-ONEGATE-VMID"] == "11"

    url = f"http://{ip}:{HTTP_PORT}/index.html"
    wait_for(lambda: _answers(url), 10, "the VM's HTTP listener")
    with urllib.request.urlopen(url, timeout=2) as response:
        assert response.read() == b"page of vctv-node11\n"
    assert driver.alive(11)

    driver.suspend(11)
    assert (FREEZER_ROOT / "vctv-vm11" / "freezer.state").read_text().strip() == "FROZEN"
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        http_get(url, timeout_s=1.5)
    # as a paused or saved guest: not even its kernel accepts a connection (none is queued
    # for the thaw)
    with pytest.raises(OSError):
        socket.create_connection((ip, HTTP_PORT), timeout=1.5).close()
    assert driver.alive(11)
    # what the host knows of the VM's address while it is away: here a wrong link address,
    # which only the VM announcing itself on resume corrects at once (as a failed entry)
    subprocess.run(["ip", "neigh", "replace", ip, "lladdr", "02:00:00:00:00:01",
                    "dev", BRIDGE, "nud", "stale"], check=True)
    driver.resume(11)
    # back on the network when resume returns: carrier, bridge port and bridge up, the host's
    # neighbour entry holds the VM's own address; the first connection succeeds
    veth = Path("/sys/class/net") / driver.veth_name(11)
    assert (veth / "operstate").read_text().strip() == "up"
    assert (veth / "brport" / "state").read_text().strip() == "3"
    assert (veth / "master" / "operstate").read_text().strip() == "up"
    assert _host_neighbour(ip) == _vm_mac(driver.netns_name(11))
    assert http_get(url, timeout_s=5) == 200

    listener_pid = int((out / "listener.pid").read_text())
    driver.shutdown(11)
    assert not driver.alive(11)
    assert not running(listener_pid)
    assert leftovers() == []
    assert not driver.vm_dir(11).exists()
    assert "start script exited with 0" in (
        driver.state_dir / "logs" / "vm11.console.log"
    ).read_text()
    driver.shutdown(11)  # idempotent


def _host_neighbour(ip: str) -> str:
    out = subprocess.run(["ip", "-j", "neigh", "show", ip, "dev", BRIDGE],
                         capture_output=True, text=True, check=True).stdout
    return str(json.loads(out)[0]["lladdr"])


def _vm_mac(ns_name: str) -> str:
    out = subprocess.run(["ip", "-n", ns_name, "-j", "link", "show", "dev", "eth0"],
                         capture_output=True, text=True, check=True).stdout
    return str(json.loads(out)[0]["address"])


def _answers(url: str) -> bool:
    try:
        return http_get(url, timeout_s=1) == 200
    except OSError:
        return False


PRIVATE_SCRIPT = """#!/bin/sh
echo "vm secret" > /etc/munge/vctv-private-test
mkdir -p /run/munge
{
  echo "run=$(ls /run | tr '\\n' ' ')"
  echo "munge_owner=$(stat -c %U /etc/munge)"
  echo "munge_files=$(ls /etc/munge | tr '\\n' ' ')"
  echo "hosts=$(grep -c . /etc/hosts)"
  echo "context_writable=$(touch /context/x 2>/dev/null && echo yes || echo no)"
} > "$OUT/marker.tmp"
mv "$OUT/marker.tmp" "$OUT/marker"
"""


def test_vm_has_private_run_state_dirs_and_read_only_context(
    driver: NetnsDriver, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    driver.boot(make_spec(12, "10.113.0.12", PRIVATE_SCRIPT, extra={"OUT": str(out)}))
    wait_for((out / "marker").exists, 10, "the start script's marker")
    assert (out / "marker").read_text() == (
        "run=lock munge one-context \n"
        "munge_owner=munge\n"
        "munge_files=vctv-private-test \n"
        "hosts=3\n"
        "context_writable=no\n"
    )
    assert not Path("/etc/munge/vctv-private-test").exists()
    assert not Path("/run/one-context").exists()
    driver.shutdown(12)
    assert leftovers() == []


def test_crash_after_kills_the_vm_and_shutdown_cleans_up(driver: NetnsDriver) -> None:
    spec = make_spec(13, "10.113.0.13", "#!/bin/sh\nsleep 600 </dev/null >/dev/null 2>&1 &\n",
                     fault=Fault(crash_after_s=1.0))
    started = time.monotonic()
    driver.boot(spec)
    assert driver.alive(13)
    wait_for(lambda: not driver.alive(13), 6, "the injected crash")
    assert 1.0 <= time.monotonic() - started < 4.0
    assert netns.host_exists("vctv-vm13")  # a crashed VM keeps its identity until terminated
    driver.shutdown(13)
    assert leftovers() == []


def test_a_suspended_vm_can_crash_and_be_terminated(driver: NetnsDriver) -> None:
    keep = "#!/bin/sh\nsleep 600 </dev/null >/dev/null 2>&1 &\n"
    driver.boot(make_spec(19, "10.113.0.19", keep, fault=Fault(crash_after_s=1.0)))
    driver.boot(make_spec(20, "10.113.0.20", keep))
    driver.suspend(19)
    driver.suspend(20)
    wait_for(lambda: not driver.alive(19), 6, "the crash of the frozen VM 19")
    assert driver.alive(20)
    started = time.monotonic()
    driver.shutdown(20)  # frozen: thawed first, or its processes could not die
    assert time.monotonic() - started < 3.5
    driver.shutdown(19)
    assert leftovers() == []


def test_boot_fail_raises_and_leaves_nothing(driver: NetnsDriver) -> None:
    spec = make_spec(14, "10.113.0.14", "#!/bin/sh\n", fault=Fault(boot_fail=True))
    with pytest.raises(DriverError, match=r"^VM 14 failed to boot \(injected fault"):
        driver.boot(spec)
    assert not driver.alive(14)
    assert leftovers() == []


def test_poweroff_keeps_the_directory_and_the_vm_boots_again(
    driver: NetnsDriver, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    script = '#!/bin/sh\necho boot >> "$OUT/boots"\nsleep 600 </dev/null >/dev/null 2>&1 &\n'
    spec = make_spec(15, "10.113.0.15", script, extra={"OUT": str(out)})
    driver.boot(spec)
    wait_for(lambda: (out / "boots").exists(), 10, "the first boot")
    driver.poweroff(15)
    assert not driver.alive(15)
    assert driver.vm_dir(15).is_dir()
    assert not netns.host_exists("vctv-vm15")
    assert not (FREEZER_ROOT / "vctv-vm15").exists()
    driver.boot(spec)
    wait_for(lambda: (out / "boots").read_text() == "boot\nboot\n", 10, "the second boot")
    assert driver.alive(15)
    driver.shutdown(15)
    assert leftovers() == []


def test_cleanup_stale_removes_only_unknown_vms(driver: NetnsDriver) -> None:
    keep = "#!/bin/sh\nsleep 600 </dev/null >/dev/null 2>&1 &\n"
    driver.boot(make_spec(16, "10.113.0.16", keep))
    driver.boot(make_spec(17, "10.113.0.17", keep))
    restarted = NetnsDriver(driver.state_dir, PREFIX, stop_timeout_s=3.0)
    restarted.cleanup_stale({16})
    assert restarted.alive(16)
    assert not restarted.alive(17)
    assert not netns.host_exists("vctv-vm17")
    assert not driver.vm_dir(17).exists()
    restarted.shutdown(16)
    assert leftovers() == []


def test_a_missing_gateway_is_refused_with_a_clear_message(driver: NetnsDriver) -> None:
    spec = make_spec(18, "10.113.0.18", "#!/bin/sh\n")
    spec = VMSpec(18, "one-18", 1.0, 256, (Nic(0, "lan", BRIDGE, "10.113.0.18", "", "", ""),),
                  spec.context)
    with pytest.raises(DriverError) as err:
        driver.boot(spec)
    assert str(err.value) == (
        "network 'lan' has no GATEWAY: the netns driver puts it on bridge 'vctvbr0'; "
        "add GATEWAY to the network's address range"
    )
    assert os.path.exists(f"/sys/class/net/{BRIDGE}")


# --- the guest script, inside a netns VM --------------------------------------------------

JOIN_SCRIPT = Path(__file__).resolve().parents[2] / "contextualization" / "vcluster-join.sh"
CTLD_PORT = 7113
SLURMD_PORT = 7114


def join_spec(vm_id: int, ip: str, context: dict[str, str]) -> VMSpec:
    return make_spec(vm_id, ip, JOIN_SCRIPT.read_text(), extra=context)


def test_join_script_refuses_a_context_without_the_munge_key(driver: NetnsDriver) -> None:
    driver.boot(join_spec(22, "10.113.0.22", {
        "VCLUSTER_NODE": "vctv-node2", "SLURM_CONF_SERVER": f"{GATEWAY}:{CTLD_PORT}",
    }))
    console = driver.console_log(22)
    wait_for(lambda: "start script exited" in console.read_text(), 10, "the join script")
    text = console.read_text()
    assert "start script exited with 1" in text
    assert (
        " vcluster-join[" in text and "]: ERROR: neither VCLUSTER_JOIN_URL with "
        "VCLUSTER_JOIN_TOKEN nor MUNGE_KEY_BASE64 is set: this VM cannot get the cluster's "
        "munge key (vcluster sets the first two; was the VM booted by vcluster?)\n" in text
    )
    join_log = driver.vm_dir(22) / "private" / "var" / "log" / "vcluster-join.log"
    assert join_log.read_text().splitlines()[-1].endswith(
        "ERROR: neither VCLUSTER_JOIN_URL with VCLUSTER_JOIN_TOKEN nor MUNGE_KEY_BASE64 is "
        "set: this VM cannot get the cluster's munge key (vcluster sets the first two; was "
        "the VM booted by vcluster?)"
    )
    driver.shutdown(22)


def test_join_script_reads_context_sh_sets_the_hostname_and_reports_slurmd_failure(
    driver: NetnsDriver,
) -> None:
    # The wrapper clears the environment, so the join script must source /context/context.sh.
    wrapper = (
        "#!/bin/sh\n"
        'printf "%s" "$JOIN_B64" | base64 -d > /run/join.sh\n'
        "exec env -i VCLUSTER_JOIN_WAIT_S=5 /bin/sh /run/join.sh\n"
    )
    spec = make_spec(23, "10.113.0.23", wrapper, extra={
        "JOIN_B64": base64.b64encode(JOIN_SCRIPT.read_bytes()).decode(),
        "VCLUSTER_NODE": "vctv-node3", "MUNGE_KEY_BASE64": base64.b64encode(b"k" * 64).decode(),
        "SLURM_CONF_SERVER": f"{GATEWAY}:7199",  # nothing listens there
    })
    del spec.context["SET_HOSTNAME"]
    driver.boot(spec)
    console = driver.console_log(23)
    wait_for(lambda: "start script exited" in console.read_text(), 30, "the join script")
    text = console.read_text()
    assert "start script exited with 1" in text
    assert "]: context from /context/context.sh\n" in text
    assert "]: hostname set to vctv-node3\n" in text
    assert (
        "]: ERROR: slurmd for vctv-node3 did not start (exit 1): _fetch_child: failed to fetch "
        "remote configs: Unable to contact slurm controller (connect failure); check "
        "SLURM_CONF_SERVER=10.113.0.1:7199 and that slurmctld runs there with "
        "SlurmctldParameters=enable_configless\n" in text
    )
    hosts = (driver.vm_dir(23) / "private" / "etc" / "hosts").read_text()
    assert hosts.endswith("10.113.0.23\tone-23\n10.113.0.23\tvctv-node3\n")
    driver.shutdown(23)
    assert leftovers() == []


@dataclass
class LocalCtld:
    root: Path
    conf: Path
    key: bytes
    env: dict[str, str]

    def run(self, *argv: str) -> str:
        proc = subprocess.run(list(argv), capture_output=True, text=True, env=self.env,
                              timeout=20, check=True)
        return proc.stdout


def _stop_daemon(pid_file: Path, marker: str) -> None:
    try:
        pid = int(pid_file.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError, IndexError):
        return
    if marker in cmdline:
        netns.terminate_pids([pid], 5.0)


@pytest.fixture
def slurmctld(driver: NetnsDriver) -> Iterator[LocalCtld]:
    for program in ("slurmctld", "slurmd", "munged", "sbatch"):
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed (deploy/install-deps.sh)")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("0.0.0.0", CTLD_PORT))  # fails loudly if another instance holds the port
    root = Path(tempfile.mkdtemp(prefix="vctv-slurm-", dir="/tmp"))
    os.chmod(root, 0o755)  # munged wants every directory above its socket world-executable
    munge_dir = root / "munge"
    munge_dir.mkdir(mode=0o755)
    key = os.urandom(1024)
    key_file = munge_dir / "munge.key"
    key_file.write_bytes(key)
    os.chmod(key_file, 0o600)
    (root / "state").mkdir()
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=vctv
SlurmctldHost={socket.gethostname()}({GATEWAY})
SlurmctldPort={CTLD_PORT}
SlurmdPort={SLURMD_PORT}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={munge_dir}/munge.sock
StateSaveLocation={root}/state
SlurmctldPidFile={root}/slurmctld.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerParameters=batch_sched_delay=0,sched_interval=5
SlurmctldParameters=enable_configless
SlurmdParameters=config_overrides
ReturnToService=2
TreeWidth=65533
DefMemPerCPU=50
NodeName=vctv-node1 NodeAddr=10.113.0.21 CPUs=1 RealMemory=100
PartitionName=vctv Nodes=vctv-node1 Default=YES MaxTime=5 State=UP
""")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SLURM_CONF": str(conf)}
    ctld = LocalCtld(root, conf, key, env)
    try:
        subprocess.run(
            ["munged", f"--key-file={key_file}", f"--socket={munge_dir}/munge.sock",
             f"--pid-file={munge_dir}/munged.pid", f"--log-file={munge_dir}/munged.log",
             f"--seed-file={munge_dir}/munged.seed"],
            stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=20, check=True,
        )
        with open(root / "slurmctld.out", "ab") as out:
            subprocess.run(["slurmctld", "-c", "-f", str(conf)], stdin=subprocess.DEVNULL,
                           stdout=out, stderr=subprocess.STDOUT, env=env, timeout=20, check=True)
        wait_for(lambda: _ctld_up(ctld), 30, "slurmctld to answer")
        yield ctld
    except BaseException:
        for log_file in (root / "slurmctld.out", root / "slurmctld.log"):
            if log_file.exists():
                print(f"--- {log_file}\n{log_file.read_text()[-3000:]}")
        raise
    finally:
        _stop_daemon(root / "slurmctld.pid", str(conf))
        _stop_daemon(munge_dir / "munged.pid", str(key_file))
        shutil.rmtree(root, ignore_errors=True)


def _ctld_up(ctld: LocalCtld) -> bool:
    proc = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, env=ctld.env,
                          timeout=10, check=False)
    return " is UP" in proc.stdout


def test_join_script_makes_the_vm_a_configless_slurm_node(
    driver: NetnsDriver, slurmctld: LocalCtld
) -> None:
    started = time.monotonic()
    driver.boot(join_spec(21, "10.113.0.21", {
        "SET_HOSTNAME": "vctv-node1", "VCLUSTER_NODE": "vctv-node1",
        "VCLUSTER_CLUSTER": "vctv", "VCLUSTER_JOB": "",
        "MUNGE_KEY_BASE64": base64.b64encode(slurmctld.key).decode(),
        "SLURM_CONF_SERVER": f"{GATEWAY}:{CTLD_PORT}",
    }))

    def registered_idle() -> bool:
        node = slurmctld.run("scontrol", "show", "node", "vctv-node1", "-o")
        return " State=IDLE " in node and " Arch=" in node  # Arch: known after registration

    wait_for(registered_idle, 40, "vctv-node1 to register idle")
    joined_s = time.monotonic() - started
    join_log_file = driver.vm_dir(21) / "private" / "var" / "log" / "vcluster-join.log"
    wait_for(lambda: "done:" in join_log_file.read_text(), 10, "the join script to finish")
    join_log = join_log_file.read_text()
    assert "munged runs at /run/munge/munge.socket.2" in join_log
    assert "starting: slurmd -b --conf-server 10.113.0.1:7113 -N vctv-node1" in join_log
    assert "done: node vctv-node1 joined" in join_log
    key_file = driver.vm_dir(21) / "private" / "etc" / "munge" / "munge.key"
    assert key_file.read_bytes() == slurmctld.key
    assert oct(key_file.stat().st_mode & 0o777) == "0o400"
    assert key_file.stat().st_uid == pwd.getpwnam("munge").pw_uid

    out = slurmctld.root / "job.out"
    slurmctld.run("sbatch", "-w", "vctv-node1", "-o", str(out), "--wrap",
                  "hostname; cat /etc/hostname")
    wait_for(lambda: out.exists() and out.read_text().count("\n") == 2, 30, "the job's output")
    assert out.read_text() == "vctv-node1\nvctv-node1\n"
    print(f"VM boot to idle Slurm node: {joined_s:.1f} s")
    driver.shutdown(21)
    assert leftovers() == []
