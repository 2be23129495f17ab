"""Hosts as Linux namespaces on a bridge: the testbed's one way to make a "machine".

Both the local Slurm (static compute nodes) and the netns VM driver (cloud VMs) need the
same thing: a network namespace with its own IP on a bridge, and a way to run a program in
it with its own hostname and a private mount namespace. This module is that primitive.

Facts it builds on (see ``slurm/TESTBED-NOTES.md``):

- Programs are entered with ``nsenter --net=/run/netns/NS unshare --uts --mount
  --propagation private ...``, never ``ip netns exec``: the latter remounts /sys, which hides
  /sys/fs/cgroup, and slurmd 22.05 then dies.
- Interface names are at most 15 characters.
- Only names the caller owns are touched: every cleanup takes an exact prefix.

Every command runs from an argv list with a timeout; a failure raises :class:`NetnsError`
whose message is one line naming the command and the kernel's answer.

``python -m vcluster.testbed.netns --hostname NAME -- ARGV...`` sets the hostname of the
current UTS namespace and execs ARGV; :func:`host_argv` uses it, since ``unshare`` has no
option to name the new UTS namespace. ``python -m vcluster.testbed.netns --announce IFACE``
sends a gratuitous ARP from IFACE of the current network namespace; :func:`announce` uses it.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vcluster.errors import VclusterError

NETNS_DIR = "/run/netns"
IFNAME_MAX = 15
COMMAND_TIMEOUT_S = 10.0
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class NetnsError(VclusterError):
    """A namespace, bridge or veth operation failed; the message names the command."""


# --- running commands ---------------------------------------------------------------------


def _run(
    argv: Sequence[str], *, timeout_s: float = COMMAND_TIMEOUT_S, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, check=False,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise NetnsError(
            f"`{argv[0]}` not found; install iproute2 and util-linux (deploy/install-deps.sh)"
        ) from None
    except subprocess.TimeoutExpired:
        raise NetnsError(
            f"`{' '.join(argv)}` timed out after {timeout_s:g} s"
        ) from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        first = detail[0] if detail else "no output"
        raise NetnsError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {first}")
    return proc


def _ip_json(argv: Sequence[str]) -> list[dict[str, Any]]:
    proc = _run(["ip", "-j", *argv], check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise NetnsError(f"`ip -j {' '.join(argv)}` printed unreadable JSON: {exc}") from exc
    return [d for d in data if isinstance(d, dict)]


def check_name(name: str, what: str = "interface") -> str:
    """Return ``name`` if it is a valid kernel object name (<= 15 chars), else raise."""
    if not _NAME_RE.match(name) or len(name) > IFNAME_MAX:
        raise NetnsError(
            f"{what} name {name!r} must be 1-{IFNAME_MAX} characters of letters, digits, "
            "'_', '.', '-'; choose a shorter instance name"
        )
    return name


# --- links and bridges -------------------------------------------------------------------


def link_exists(name: str) -> bool:
    """True if a network interface of that name exists in the host namespace."""
    return bool(_ip_json(["link", "show", "dev", name]))


def list_links(prefix: str, kind: str | None = None) -> list[str]:
    """Host interfaces whose name starts with ``prefix`` (``kind``: e.g. "veth", "bridge")."""
    argv = ["link", "show"] + (["type", kind] if kind else [])
    names = [str(d.get("ifname", "")) for d in _ip_json(argv)]
    return sorted(n for n in names if n.startswith(prefix))


def ensure_bridge(name: str, gateway_cidr: str) -> None:
    """Create bridge ``name`` with address ``gateway_cidr`` (e.g. 10.111.0.1/24), up.

    Idempotent: an existing bridge keeps its other addresses and gets this one added.
    """
    check_name(name, "bridge")
    iface = ipaddress.ip_interface(gateway_cidr)
    if not link_exists(name):
        _run(["ip", "link", "add", "name", name, "type", "bridge"])
        # A bridge whose address was never set takes the lowest address of its ports, so
        # it changes as VMs' veths come and go, and every VM's ARP entry for the gateway
        # (slurmctld, OneGate) goes stale: their packets are lost for up to ~30 s. Setting
        # its own address once pins it.
        mac = Path(f"/sys/class/net/{name}/address").read_text(encoding="ascii").strip()
        _run(["ip", "link", "set", "dev", name, "address", mac])
    have = {
        f"{a.get('local')}/{a.get('prefixlen')}"
        for d in _ip_json(["addr", "show", "dev", name])
        for a in d.get("addr_info", [])
    }
    if str(iface) not in have:
        _run(["ip", "addr", "add", str(iface), "dev", name])
    _run(["ip", "link", "set", "dev", name, "up"])


def delete_bridge(name: str) -> bool:
    """Delete bridge ``name`` if it exists; return whether it existed."""
    check_name(name, "bridge")
    if not link_exists(name):
        return False
    _run(["ip", "link", "del", "dev", name])
    return True


def set_link_up(name: str, up: bool) -> None:
    """Bring host interface ``name`` up or down (a veth down cuts its namespace off the bridge)."""
    _run(["ip", "link", "set", "dev", name, "up" if up else "down"])


def delete_link(name: str) -> bool:
    """Delete interface ``name`` (a veth takes its peer with it); return whether it existed."""
    if not link_exists(name):
        return False
    _run(["ip", "link", "del", "dev", name])
    return True


# --- hosts (network namespaces) -------------------------------------------------------------


def netns_path(ns_name: str) -> str:
    return os.path.join(NETNS_DIR, ns_name)


def host_exists(ns_name: str) -> bool:
    return os.path.exists(netns_path(ns_name))


def list_hosts(prefix: str) -> list[str]:
    """Named network namespaces whose name starts with ``prefix``, sorted."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def add_host(
    ns_name: str,
    *,
    bridge: str,
    ip_cidr: str,
    gateway: str,
    veth_host: str,
    veth_peer: str = "eth0",
    mac: str | None = None,
) -> None:
    """Create namespace ``ns_name`` wired to ``bridge`` with address ``ip_cidr``.

    The veth pair is ``veth_host`` (host side, enslaved to the bridge) and ``veth_peer``
    (created directly inside the namespace, so it never clashes with a host interface).
    Loopback is brought up and the default route points at ``gateway``. On any failure the
    half-built namespace and veth are removed before the error is raised.
    """
    check_name(ns_name, "namespace")
    check_name(veth_host, "veth")
    check_name(veth_peer, "veth peer")
    iface = ipaddress.ip_interface(ip_cidr)
    ipaddress.ip_address(gateway)
    if host_exists(ns_name):
        raise NetnsError(
            f"namespace {ns_name!r} already exists; remove it first (delete_host or `down`)"
        )
    if not link_exists(bridge):
        raise NetnsError(f"bridge {bridge!r} does not exist; create it first (ensure_bridge)")
    _run(["ip", "netns", "add", ns_name])
    try:
        _run(["ip", "link", "add", veth_host, "type", "veth",
              "peer", "name", veth_peer, "netns", ns_name])
        _run(["ip", "link", "set", "dev", veth_host, "master", bridge, "up"])
        inside = ["ip", "-n", ns_name]
        if mac:
            _run([*inside, "link", "set", "dev", veth_peer, "address", mac])
        _run([*inside, "addr", "add", str(iface), "dev", veth_peer])
        _run([*inside, "link", "set", "dev", "lo", "up"])
        _run([*inside, "link", "set", "dev", veth_peer, "up"])
        _run([*inside, "route", "add", "default", "via", gateway])
    except NetnsError:
        delete_link(veth_host)
        _run(["ip", "netns", "del", ns_name], check=False)
        raise


def host_argv(ns_name: str, argv: Sequence[str], *, hostname: str | None = None) -> list[str]:
    """The argv that runs ``argv`` inside ``ns_name`` with its own UTS and mount namespace.

    With ``hostname``, the new UTS namespace is given that name before ``argv`` is exec'd.
    """
    check_name(ns_name, "namespace")
    out = ["nsenter", f"--net={netns_path(ns_name)}",
           "unshare", "--uts", "--mount", "--propagation", "private"]
    if hostname:
        out += [sys.executable, "-m", "vcluster.testbed.netns", "--hostname", hostname, "--"]
    return out + list(argv)


def pids_in(ns_name: str) -> list[int]:
    """PIDs of the processes running in namespace ``ns_name`` (``ip netns pids``)."""
    if not host_exists(ns_name):
        return []
    proc = _run(["ip", "netns", "pids", ns_name], check=False)
    return sorted(int(w) for w in proc.stdout.split() if w.isdigit())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (e.g. an unreaped child of the caller) has exited: it counts as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def terminate_pids(pids: Sequence[int], timeout_s: float) -> list[int]:
    """SIGTERM each PID, wait up to ``timeout_s``, SIGKILL the rest; return PIDs killed hard."""
    live = [p for p in pids if p > 1 and p != os.getpid()]
    for pid in live:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while live and time.monotonic() < deadline:
        time.sleep(0.1)
        live = [p for p in live if _alive(p)]
    for pid in live:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 2.0
    rest = list(live)
    while rest and time.monotonic() < deadline:
        time.sleep(0.05)
        rest = [p for p in rest if _alive(p)]
    return live


def kill_host(ns_name: str, timeout_s: float = 5.0) -> list[int]:
    """TERM then KILL every process in ``ns_name``; return the PIDs that were signalled."""
    pids = pids_in(ns_name)
    terminate_pids(pids, timeout_s)
    return pids


def delete_host(ns_name: str, veth_host: str | None = None, *, kill_timeout_s: float = 5.0
                ) -> bool:
    """Stop what runs in ``ns_name``, remove its veth and the namespace; idempotent.

    Returns whether the namespace existed.
    """
    existed = host_exists(ns_name)
    if existed:
        kill_host(ns_name, kill_timeout_s)
    if veth_host:
        delete_link(veth_host)
    if existed:
        _run(["ip", "netns", "del", ns_name])
    return existed


def cleanup_prefix(prefix: str, *, bridge: str | None = None, kill_timeout_s: float = 5.0
                   ) -> list[str]:
    """Remove leftovers of one naming: namespaces and veths starting with ``prefix``, and
    ``bridge`` if given. Return a description of each object removed.

    ``prefix`` must be specific (e.g. ``"vcts-"``), so other instances' objects survive.
    """
    if len(prefix) < 2:
        raise NetnsError(f"cleanup prefix {prefix!r} is too broad; use the instance's own prefix")
    removed: list[str] = []
    for ns in list_hosts(prefix):
        if delete_host(ns, kill_timeout_s=kill_timeout_s):
            removed.append(f"namespace {ns}")
    for link in list_links(prefix, "veth"):
        if delete_link(link):
            removed.append(f"veth {link}")
    if bridge and delete_bridge(bridge):
        removed.append(f"bridge {bridge}")
    return removed


# --- a host back on the network (a resumed VM) --------------------------------------------

ANNOUNCE_TIMEOUT_S = 5.0
_BRPORT_FORWARDING = "3"
_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_SIOCGIFHWADDR = 0x8927
_IFF_UP = 0x1
_IFF_RUNNING = 0x40
_ETH_P_ARP = 0x0806


def wait_forwarding(name: str, timeout_s: float = ANNOUNCE_TIMEOUT_S) -> None:
    """Wait until host interface ``name`` carries frames: its carrier is up and, when it is a
    bridge port, the port forwards and the bridge has its carrier back (a bridge whose every
    port went down lost it). The kernel applies carrier changes asynchronously (its link
    watch, at most once a second and later when busy), so ``ip link set up`` returning is
    not enough: until then the host drops what it sends there, ARP probes included."""
    link = Path("/sys/class/net") / check_name(name)
    deadline = time.monotonic() + timeout_s
    while True:
        states = {name: _read_sys(link / "operstate")}
        if (link / "brport").exists():
            states["bridge port"] = (
                "forwarding" if _read_sys(link / "brport" / "state") == _BRPORT_FORWARDING
                else "not forwarding"
            )
            states["bridge"] = _read_sys(link / "master" / "operstate")
        if all(state in ("up", "forwarding") for state in states.values()):
            return
        if time.monotonic() >= deadline:
            detail = ", ".join(f"{what} {state}" for what, state in states.items())
            raise NetnsError(f"{name} does not carry frames after {timeout_s:g} s ({detail})")
        time.sleep(0.02)


def _read_sys(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return "absent"


def announce(ns_name: str, iface: str = "eth0", timeout_s: float = ANNOUNCE_TIMEOUT_S) -> None:
    """Send a gratuitous ARP from ``iface`` of namespace ``ns_name``, as a hypervisor announces
    a guest it restored: hosts that tried to reach it while it was off the network (their
    neighbour entry failed, a connection waits on it) learn at once that it is back."""
    check_name(iface, "interface")
    _run(["nsenter", f"--net={netns_path(check_name(ns_name, 'namespace'))}",
          sys.executable, "-m", "vcluster.testbed.netns", "--announce", iface, f"{timeout_s:g}"],
         timeout_s=timeout_s + COMMAND_TIMEOUT_S)


def _ifreq(sock: socket.socket, request: int, iface: str) -> bytes:
    return fcntl.ioctl(sock.fileno(), request, struct.pack("16s24x", iface.encode()))


def send_gratuitous_arp(iface: str, timeout_s: float) -> None:
    """From this network namespace: wait until ``iface`` is up with its carrier, then broadcast
    an ARP request for its own address (sender = target = its IP, the form Linux's neighbour
    code takes as an update of an entry it holds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        deadline = time.monotonic() + timeout_s
        while True:
            (flags,) = struct.unpack_from("H", _ifreq(probe, _SIOCGIFFLAGS, iface), 16)
            if flags & (_IFF_UP | _IFF_RUNNING) == _IFF_UP | _IFF_RUNNING:
                break
            if time.monotonic() >= deadline:
                raise NetnsError(f"{iface} has no carrier after {timeout_s:g} s")
            time.sleep(0.02)
        mac = _ifreq(probe, _SIOCGIFHWADDR, iface)[18:24]
        ip = _ifreq(probe, _SIOCGIFADDR, iface)[20:24]
    frame = (b"\xff" * 6 + mac + struct.pack("!H", _ETH_P_ARP)
             + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\x00" * 6 + ip)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
        raw.bind((iface, _ETH_P_ARP))
        raw.send(frame)


def _main(args: list[str]) -> int:
    """``--hostname NAME -- ARGV...``: name this UTS namespace, then exec ARGV.
    ``--announce IFACE TIMEOUT_S``: send a gratuitous ARP from IFACE (:func:`announce`)."""
    if len(args) == 3 and args[0] == "--announce":
        try:
            send_gratuitous_arp(args[1], float(args[2]))
        except (OSError, ValueError, NetnsError) as err:
            print(f"cannot announce {args[1]}: {err}", file=sys.stderr)
            return 1
        return 0
    if len(args) < 4 or args[0] != "--hostname" or args[2] != "--":
        print("usage: python -m vcluster.testbed.netns --hostname NAME -- ARGV...",
              file=sys.stderr)
        return 2
    socket.sethostname(args[1])
    os.execvp(args[3], args[3:])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
