"""The ``netns`` VM driver: each testbed VM is a network + UTS + mount namespace on a bridge.

A real OpenNebula host runs a hypervisor; this machine cannot, so a "VM" here is a set of
namespaces with the VM's leased IP on the virtual network's bridge, its CONTEXT written as
oned writes it (``context.sh`` + ``token.txt``) into a directory mounted read-only at
/context, and :mod:`vcluster.testbed.cloud.vminit` as its first process, which sets the VM up
and then runs the contextualization (START_SCRIPT, READY report) as one-context would. The
guest therefore runs the real ``contextualization/vcluster-join.sh``, a real munged and a
real slurmd that joins the real slurmctld.

Kernel objects of VM ``ID`` (all named with the driver's ``prefix``, so instances never touch
each other): network namespace ``<prefix>-vm<ID>``, host veth ``<prefix>-v<ID>`` (the VM side
is ``eth0``), cgroup-v1 freezer ``/sys/fs/cgroup/freezer/<prefix>-vm<ID>`` (every VM process
is in it: suspend/resume freeze/thaw it), and the directory ``<state_dir>/vm<ID>``. The mounts
live in the VM's own mount namespace and vanish with its last process.

Stopping is what a hypervisor does: a ``hard`` shutdown or poweroff is a power cut (every
process SIGKILLed while still frozen if it was, then thawed so the kill lands: the guest gets
no signal it could act on, so slurmstepd cannot report "killed by SIGTERM"); a soft one is an
ACPI shutdown (SIGTERM, then SIGKILL). Either way nothing of the VM survives: its processes
are found by freezer cgroup, network namespace and mount namespace (``mntns`` in its
directory records which), so a frozen or escaped slurmd never holds the paths of the next
VM of the same node.

Faults (``spec.fault``): boot-fail raises :class:`DriverError`; crash-after:N SIGKILLs the
VM's processes N s after ``boot`` returned (a timer in this process); slow-boot is left to
the server's state machine (this driver does not sleep); join-refused writes a join token no
controller issued into the VM's context.sh.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import vcluster
from vcluster.testbed import netns
from vcluster.testbed.cloud import vminit
from vcluster.testbed.cloud.drivers.base import DriverError, Nic, VMSpec
from vcluster.testbed.cloud.drivers.netns_procs import FREEZER_ROOT, VmObjects, _running

__all__ = [
    "DEFAULT_GUEST_SHARES",
    "DEFAULT_NETMASK",
    "FREEZER_ROOT",
    "REFUSED_JOIN_TOKEN",
    "NetnsDriver",
    "guest_hostname",
    "own_boot_time_argv",
    "prefix_length",
]

log = logging.getLogger(__name__)

DEFAULT_GUEST_SHARES = ("/home", "/tmp")
"""Host paths a VM booted from an image root sees at the same place (NFS of a cluster);
the host's ordinary users are added to the image's accounts (vminit.add_host_users). VMs
without an image share the host's whole tree."""
REFUSED_JOIN_TOKEN = "testbed-fault-join-refused"
"""The join token a VM with ``TESTBED_FAULT=join-refused`` is given: no controller issued it."""
DEFAULT_NETMASK = "255.255.255.0"
"""one-context's default when a network has no mask."""
_HOSTNAME_BAD = re.compile(r"[^A-Za-z0-9-]+")


def guest_hostname(spec: VMSpec) -> str:
    """SET_HOSTNAME if given, else the VM's name, as a valid host name; ``one-<ID>`` last."""
    wanted = spec.context.get("SET_HOSTNAME") or spec.name
    name = _HOSTNAME_BAD.sub("-", wanted).strip("-")[:63]
    return name or f"one-{spec.vm_id}"


def prefix_length(netmask: str) -> int:
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{netmask or DEFAULT_NETMASK}").prefixlen
    except ValueError as err:
        raise DriverError(f"netmask {netmask!r} is not valid: fix the virtual network") from err


class NetnsDriver(VmObjects):
    """Runs testbed VMs as namespaces; see the module docstring for the objects it owns."""

    name = "netns"

    def __init__(
        self,
        state_dir: Path,
        prefix: str,
        *,
        stop_timeout_s: float = 5.0,
        init_timeout_s: float = 60.0,  # vminit's set-up; 50 VMs starting at once on 2
        # busy cores took it past 20 s once (a BOOT_FAILURE the job did not deserve)
        freeze_timeout_s: float = 5.0,
        guest_shares: tuple[str, ...] = DEFAULT_GUEST_SHARES,
    ) -> None:
        netns.check_name(f"{prefix}-vm0", "namespace")
        self.state_dir = Path(state_dir)
        self.prefix = prefix
        self.stop_timeout_s = stop_timeout_s
        self.init_timeout_s = init_timeout_s
        self.freeze_timeout_s = freeze_timeout_s
        self.guest_shares = guest_shares
        self._bridge_lock = threading.Lock()
        self._timers: dict[int, threading.Timer] = {}
        self._timers_lock = threading.Lock()
        self._id_patterns = {
            "netns": re.compile(rf"^{re.escape(prefix)}-vm(\d+)$"),
            "veth": re.compile(rf"^{re.escape(prefix)}-v(\d+)$"),
            "dir": re.compile(r"^vm(\d+)$"),
        }

    # --- VMDriver ------------------------------------------------------------------------

    def boot(self, spec: VMSpec) -> None:
        vm_id = spec.vm_id
        if spec.fault.boot_fail:
            raise DriverError(f"VM {vm_id} failed to boot (injected fault TESTBED_FAULT=boot-fail)")
        if not spec.nics:
            raise DriverError(
                f"VM {vm_id} has no NIC: the netns driver needs NIC=[NETWORK=...] on a bridge"
            )
        nic = spec.nics[0]
        if not nic.gateway:
            raise DriverError(
                f"network {nic.network!r} has no GATEWAY: the netns driver puts it on bridge "
                f"{nic.bridge!r}; add GATEWAY to the network's address range"
            )
        if not FREEZER_ROOT.is_dir():
            raise DriverError(
                f"no cgroup-v1 freezer at {FREEZER_ROOT}: mount it "
                f"(mount -t cgroup -o freezer freezer {FREEZER_ROOT}) to run netns VMs"
            )
        try:
            netns.check_name(self.veth_name(vm_id), "veth")
            self._teardown(vm_id, keep_dir=True, hard=True)  # leftovers of an earlier boot
            vm_dir = self._prepare_dir(spec)
            self._wire(vm_id, nic)
            self.cgroup_dir(vm_id).mkdir(exist_ok=True)
            self._start_init(vm_id, vm_dir)
        except (netns.NetnsError, OSError, DriverError) as err:
            self._teardown(vm_id, keep_dir=True, hard=True)
            if isinstance(err, DriverError):
                raise
            raise DriverError(f"VM {vm_id} could not boot: {err}") from err
        if spec.fault.crash_after_s is not None:
            self._arm_crash(vm_id, spec.fault.crash_after_s)
        log.info("VM %d booted: %s on %s (%s)", vm_id, nic.ip, nic.bridge, self.netns_name(vm_id))

    def shutdown(self, vm_id: int, *, hard: bool = False) -> None:
        self._teardown(vm_id, keep_dir=False, hard=hard)

    def poweroff(self, vm_id: int, *, hard: bool = False) -> None:
        self._teardown(vm_id, keep_dir=True, hard=hard)

    def suspend(self, vm_id: int) -> None:
        # Off the network as well: a paused or saved hypervisor guest answers nothing, but a
        # frozen namespace's kernel still accepts connections and queues what they send, so
        # a message sent meanwhile (Slurm's resume of a job) would arrive at thaw.
        self._set_link(vm_id, False)
        self._set_freezer(vm_id, "FROZEN")

    def resume(self, vm_id: int) -> None:
        self._set_link(vm_id, True)
        self._set_freezer(vm_id, "THAWED")
        # Back on the network as a restored guest is: its link carries frames when resume
        # returns, and it announces itself (a host that tried it meanwhile holds a failed
        # neighbour entry, and its next connection would fail with "No route to host").
        try:
            netns.wait_forwarding(self.veth_name(vm_id))
            netns.announce(self.netns_name(vm_id))
        except netns.NetnsError as err:
            log.warning("VM %d resumed, but not announced on its network: %s", vm_id, err)

    def _set_link(self, vm_id: int, up: bool) -> None:
        try:
            netns.set_link_up(self.veth_name(vm_id), up)
        except netns.NetnsError as err:
            raise DriverError(f"VM {vm_id}: {err}") from None

    def alive(self, vm_id: int) -> bool:
        # The cgroup is enough while it holds a live process (cheap, called at every monitoring
        # pass); otherwise scan the namespace too, for a process that escaped the cgroup.
        return any(_running(pid) for pid in self._cgroup_pids(vm_id)) or bool(self._pids(vm_id))

    def cleanup_stale(self, known_vm_ids: set[int]) -> None:
        found: set[int] = set()
        for ns_name in netns.list_hosts(f"{self.prefix}-vm"):
            found |= self._ids("netns", [ns_name])
        found |= self._ids("veth", netns.list_links(f"{self.prefix}-v", "veth"))
        if FREEZER_ROOT.is_dir():
            found |= self._ids("netns", [p.name for p in FREEZER_ROOT.iterdir() if p.is_dir()])
        if self.state_dir.is_dir():
            found |= self._ids("dir", [p.name for p in self.state_dir.iterdir() if p.is_dir()])
        for vm_id in sorted(found - known_vm_ids):
            log.info("removing leftovers of unknown VM %d (prefix %s)", vm_id, self.prefix)
            self.shutdown(vm_id, hard=True)

    # --- boot steps ------------------------------------------------------------------------

    def _prepare_dir(self, spec: VMSpec) -> Path:
        vm_dir = self.vm_dir(spec.vm_id)
        if spec.image_source and not Path(spec.image_source, "usr").is_dir():
            raise DriverError(
                f"VM {spec.vm_id}: image source {spec.image_source} is not a root directory: "
                "the netns driver boots images that are Debian roots "
                "(vcluster testbed slurm-root build)")
        vminit.prepare_vm_dir(
            vm_dir,
            vm_id=spec.vm_id,
            hostname=guest_hostname(spec),
            ip=spec.nics[0].ip,
            context=({**spec.context, "VCLUSTER_JOIN_TOKEN": REFUSED_JOIN_TOKEN}
                     if spec.fault.join_refused and "VCLUSTER_JOIN_TOKEN" in spec.context
                     else spec.context),
            token=spec.token,
            cgroup_procs=self.cgroup_dir(spec.vm_id) / "cgroup.procs",
            image_root=spec.image_source,
            shares=self.guest_shares,
            nameserver=(spec.nics[0].dns.split() or [spec.nics[0].gateway])[0],
        )
        return vm_dir

    def _wire(self, vm_id: int, nic: Nic) -> None:
        length = prefix_length(nic.netmask)
        with self._bridge_lock:
            netns.ensure_bridge(nic.bridge, f"{nic.gateway}/{length}")
        netns.add_host(
            self.netns_name(vm_id),
            bridge=nic.bridge,
            ip_cidr=f"{nic.ip}/{length}",
            gateway=nic.gateway,
            veth_host=self.veth_name(vm_id),
            mac=nic.mac or None,
        )

    def _start_init(self, vm_id: int, vm_dir: Path) -> None:
        """Start vminit in the namespaces; wait until it says the VM is set up."""
        read_fd, write_fd = os.pipe()
        argv = netns.host_argv(
            self.netns_name(vm_id),
            [*own_boot_time_argv(),
             sys.executable, "-m", "vcluster.testbed.cloud.vminit", str(vm_dir), str(write_fd)],
        )
        package_root = str(Path(vcluster.__file__).resolve().parent.parent)
        env = {"PATH": vminit.GUEST_PATH, "PYTHONPATH": package_root, "LANG": "C.UTF-8"}
        try:
            with open(vm_dir / "console.log", "ab") as console:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    pass_fds=(write_fd,),
                    start_new_session=True,
                    cwd="/",
                    env=env,
                )
        finally:
            os.close(write_fd)
        # Reap vminit whenever it ends, so it never lingers as a zombie of the server.
        threading.Thread(target=proc.wait, name=f"netns-vm{vm_id}-wait", daemon=True).start()
        try:
            status = _read_line(read_fd, self.init_timeout_s)
        finally:
            os.close(read_fd)
        if status != "ok":
            reason = status.removeprefix("error: ") if status else (
                f"no answer within {self.init_timeout_s:g} s"
            )
            raise DriverError(
                f"VM {vm_id} could not start its init: {reason} (see {vm_dir / 'console.log'})"
            )
        vminit.write_file(vm_dir / "init.pid", f"{proc.pid}\n", 0o644)
        self._record_mount_ns(vm_id)

    def _record_mount_ns(self, vm_id: int) -> None:
        """Write which mount namespace the VM's processes share (``mnt:[inode]``)."""
        host_ns = os.readlink("/proc/self/ns/mnt")
        for pid in self._cgroup_pids(vm_id):
            try:
                ns = os.readlink(f"/proc/{pid}/ns/mnt")
            except OSError:
                continue
            if ns != host_ns:
                vminit.write_file(self.vm_dir(vm_id) / "mntns", f"{ns}\n", 0o644)
                return

    def _arm_crash(self, vm_id: int, after_s: float) -> None:
        timer = threading.Timer(after_s, self._crash, args=(vm_id,))
        timer.daemon = True
        timer.name = f"netns-vm{vm_id}-crash"
        with self._timers_lock:
            self._timers[vm_id] = timer
        timer.start()

    def _crash(self, vm_id: int) -> None:
        with self._timers_lock:
            self._timers.pop(vm_id, None)
        log.info("VM %d crashes now (injected fault crash-after)", vm_id)
        try:
            self._cut_power(vm_id)
        except DriverError as err:
            log.warning("crash of VM %d: %s", vm_id, err)

    # --- stopping --------------------------------------------------------------------------

    def _teardown(self, vm_id: int, *, keep_dir: bool, hard: bool) -> None:
        """Stop every process of the VM and remove its kernel objects (and dir). Idempotent.

        ``hard``: a power cut; else SIGTERM first (an ACPI shutdown), then the cut."""
        with self._timers_lock:
            timer = self._timers.pop(vm_id, None)
        if timer is not None:
            timer.cancel()
        if not hard:
            self._write_freezer(vm_id, "THAWED")  # frozen processes cannot act on signals
            for _ in range(3):
                pids = self._pids(vm_id)
                if not pids:
                    break
                netns.terminate_pids(pids, self.stop_timeout_s)
        self._cut_power(vm_id)
        try:
            netns.delete_host(self.netns_name(vm_id), self.veth_name(vm_id), kill_timeout_s=1.0)
        except netns.NetnsError as err:
            raise DriverError(f"VM {vm_id}: could not remove its namespace: {err}") from err
        self._remove_cgroup(vm_id)
        (self.vm_dir(vm_id) / "mntns").unlink(missing_ok=True)  # its inode may be reused
        if not keep_dir:
            self._archive_logs(vm_id)
            shutil.rmtree(self.vm_dir(vm_id), ignore_errors=True)

    def _archive_logs(self, vm_id: int) -> None:
        """Keep the console and join logs of a terminated VM in ``<state_dir>/logs``."""
        vm_dir = self.vm_dir(vm_id)
        join_log = vminit.private_source(vm_dir, "/var/log/vcluster-join.log")
        if not join_log.is_file() or join_log.stat().st_size == 0:
            join_log = vm_dir / "upper" / "var/log/vcluster-join.log"  # an image VM's disk
        logs = {"console.log": vm_dir / "console.log", "join.log": join_log}
        for suffix, source in logs.items():
            if source.is_file() and source.stat().st_size > 0:
                (self.state_dir / "logs").mkdir(exist_ok=True)
                shutil.copyfile(source, self.state_dir / "logs" / f"vm{vm_id}.{suffix}")

    def _ids(self, kind: str, names: list[str]) -> set[int]:
        pattern = self._id_patterns[kind]
        return {int(m.group(1)) for m in map(pattern.match, names) if m}


# --- small helpers ---------------------------------------------------------------------------


def own_boot_time_argv() -> list[str]:
    """``unshare --time --boottime -N``: the VM's processes see it booted now, as a real
    VM's do. slurmctld 24.11 accepts a powering-up node's registration only if the node
    booted after the power-up request; a namespace would otherwise show the host's uptime."""
    try:
        with open("/proc/uptime", encoding="ascii") as uptime:
            seconds = int(float(uptime.read().split()[0]))
    except (OSError, ValueError, IndexError):
        return []
    return ["unshare", "--time", "--boottime", str(-seconds)] if seconds > 0 else []


def _read_line(fd: int, timeout_s: float) -> str:
    """One line from a pipe, or what came before EOF/timeout."""
    data = b""
    deadline = time.monotonic() + timeout_s
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()
