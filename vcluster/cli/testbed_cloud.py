"""``vcluster testbed cloud``: run the OpenNebula-compatible testbed server in the foreground.

Thin over :class:`vcluster.testbed.cloud.server.CloudServer`: options become a
:class:`~vcluster.testbed.cloud.settings.CloudSettings`, SIGTERM/SIGINT stop it cleanly (VMs
stay as they are; the state directory keeps everything for the next start).
"""

from __future__ import annotations

import ipaddress
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from vcluster.errors import ConfigError, UserInputError
from vcluster.testbed.cloud.settings import CloudSettings, NetworkSettings

if TYPE_CHECKING:
    from vcluster.testbed.cloud.server import ListenError


@click.group("cloud")
def cloud_group() -> None:
    """The embedded OpenNebula-compatible cloud.

    \b
    Example:
      vcluster testbed cloud serve --port 2633 --driver dummy --state-dir /tmp/cloud
    """


def _read_auth(auth: str | None, auth_file: str | None) -> str:
    if auth and auth_file:
        raise UserInputError("give --auth or --auth-file, not both")
    if auth_file:
        try:
            text = Path(auth_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the auth file: {exc.strerror}; "
                              "write one line user:password into it", path=auth_file) from exc
        auth = text.splitlines()[0].strip() if text else ""
    auth = auth or "oneadmin:opennebula"
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise UserInputError(f"auth {auth!r} is not user:password; give e.g. "
                             "--auth oneadmin:opennebula")
    return auth


_LISTEN_OPTIONS = {"xmlrpc": ("--port", "--host"), "onegate": ("--onegate-port", "--onegate-host"),
                   "events": ("--events-port", "--host")}


def listen_error_text(exc: ListenError) -> str:
    """One line: which port or address is the trouble, and which option changes it."""
    from vcluster.testbed.cloud.server import WHAT

    port_option, host_option = _LISTEN_OPTIONS[exc.what]
    what = WHAT[exc.what]
    if exc.in_use:
        return (f"port {exc.port} on {exc.host} ({what}) is already in use (an oned, or another "
                f"testbed cloud?); choose another with {port_option} (0 picks a free one)")
    if exc.not_here:
        return (f"cannot listen on {exc.host}:{exc.port} ({what}): no such address on this "
                f"machine; bring it up (the bridge) first, or choose another with {host_option}")
    return (f"cannot listen on {exc.host}:{exc.port} ({what}): {exc.strerror}; "
            f"see {port_option} and {host_option}")


@cloud_group.command("serve")
@click.option("--port", type=int, default=2633, show_default=True, help="XML-RPC port.")
@click.option("--host", "bind_host", default="127.0.0.1", show_default=True,
              help="Address the XML-RPC server binds.")
@click.option("--driver", type=click.Choice(["dummy", "netns"]), default="dummy",
              show_default=True, help="How VMs run: timings only, or network namespaces.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for the SQLite state and driver files (created if missing).")
@click.option("--auth", default=None, help="Accepted session user:password "
              "[default: oneadmin:opennebula].")
@click.option("--auth-file", default=None, type=click.Path(dir_okay=False),
              help="File whose first line is the accepted user:password.")
@click.option("--hosts", type=click.IntRange(min=0), default=1, show_default=True,
              help="Hosts created at first start.")
@click.option("--host-cpu", type=click.IntRange(min=1), default=800, show_default=True,
              help="CPU of each host, percent (100 per core).")
@click.option("--host-mem", type=click.IntRange(min=1), default=16 * 1024 * 1024,
              show_default=True, help="Memory of each host, KB.")
@click.option("--onegate-port", type=int, default=5030, show_default=True,
              help="OneGate HTTP port.")
@click.option("--onegate-host", default="127.0.0.1", show_default=True,
              help="Address OneGate binds and VMs are told (use the bridge IP for netns).")
@click.option("--events-port", type=click.IntRange(min=0, max=65535), default=None,
              help="Publish every VM and host state change as oned's hook manager does "
                   "(ZeroMQ PUB on --host, oned's HM_MAD -p, 2101 there; 0 picks a free "
                   "port) [default: no events].")
@click.option("--bridge", default="vcbr0", show_default=True, help="Bridge of the vnet.")
@click.option("--subnet", default="10.111.0.0/24", show_default=True, help="Subnet of the vnet.")
@click.option("--lease-start", type=click.IntRange(min=1), default=100, show_default=True,
              help="Host part of the first leased address.")
@click.option("--network-name", default="vcluster", show_default=True,
              help="Name of the virtual network created at first start.")
@click.option("--prefix", default="vc", show_default=True,
              help="Name prefix for the driver's namespaces and interfaces.")
@click.option("--sched-window-s", type=float, default=1.0, show_default=True,
              help="SCHED_MAX_WND_TIME: place PENDING VMs when the window is this old.")
@click.option("--sched-window-length", type=int, default=7, show_default=True,
              help="SCHED_MAX_WND_LENGTH: place when the window holds this many VMs.")
@click.option("--boot-s", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Simulated seconds of BOOT (plus the driver's own time).")
@click.option("--step-s", type=click.FloatRange(min=0), default=0.2, show_default=True,
              help="Simulated seconds of every other step (PROLOG, SHUTDOWN, EPILOG...).")
@click.option("--monitor-s", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="How often running VMs are checked (dead ones go UNKNOWN).")
@click.option("--image", "images", multiple=True, metavar="NAME=SOURCE",
              help="An image of the datastore (repeatable; ids in this order). With the netns "
                   "driver a SOURCE that is a directory is the root filesystem of the VMs "
                   "whose DISK names the image.")
@click.option("--share", "shares", multiple=True, metavar="PATH",
              help="A host path that VMs booted from an image root see at the same place "
                   "(repeatable; default /home and /tmp).")
@click.option("--pci", "pci_devices", multiple=True, metavar="HOST=VENDOR:DEVICE:CLASS",
              help="A PCI device the host reports, e.g. host0=10de:20b5:0302 (repeatable); "
                   "VMs whose template asks PCI=[...] for it are placed there.")
def serve(port: int, bind_host: str, driver: str, state_dir: Path, auth: str | None,
          auth_file: str | None, hosts: int, host_cpu: int, host_mem: int, onegate_port: int,
          onegate_host: str, events_port: int | None, bridge: str, subnet: str,
          lease_start: int, network_name: str, prefix: str, sched_window_s: float,
          sched_window_length: int, boot_s: float, step_s: float, monitor_s: float,
          images: tuple[str, ...], shares: tuple[str, ...],
          pci_devices: tuple[str, ...]) -> None:
    """Serve OpenNebula's XML-RPC API (and OneGate) until SIGTERM or Ctrl-C.

    \b
    Example:
      vcluster testbed cloud serve --port 2633 --driver dummy --state-dir /tmp/cloud \\
          --hosts 2 --auth oneadmin:secret
    """
    from vcluster.cli.controller import GIL_SWITCH_S
    from vcluster.testbed.cloud.pci import parse_device_spec
    from vcluster.testbed.cloud.server import CloudServer, ListenError
    from vcluster.testbed.cloud.settings import SchedulerSettings, Timings

    # oned answers from many threads in C++; this stand-in's threads (a request's, the
    # scheduler's, the monitor's) take Python's lock in turns as the controller's do
    sys.setswitchinterval(GIL_SWITCH_S)

    try:
        network = ipaddress.ip_network(subnet, strict=False)
    except ValueError as exc:
        raise UserInputError(f"--subnet {subnet!r} is not a network such as 10.111.0.0/24")\
            from exc
    if lease_start >= network.num_addresses - 1:
        raise UserInputError(f"--lease-start {lease_start} is outside {network}")
    image_pairs = []
    for item in images:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise UserInputError(f"--image {item!r}: expected NAME=SOURCE")
        image_pairs.append((name, source))
    host_pci = []
    for item in pci_devices:
        host_name, sep, spec = item.partition("=")
        try:
            parse_device_spec(spec)
        except ValueError as exc:
            raise UserInputError(f"--pci {item!r}: {exc}") from None
        if not sep or not host_name:
            raise UserInputError(f"--pci {item!r}: expected HOST=VENDOR:DEVICE:CLASS")
        host_pci.append((host_name, spec.lower()))
    settings = CloudSettings(
        host_pci=tuple(host_pci), images=tuple(image_pairs), guest_shares=shares,
        state_dir=state_dir, driver=driver, prefix=prefix, auth=_read_auth(auth, auth_file),
        host=bind_host, port=port, onegate_host=onegate_host, onegate_port=onegate_port,
        events_port=events_port, hosts=hosts, host_cpu_pct=host_cpu, host_mem_kb=host_mem,
        network=NetworkSettings(name=network_name, bridge=bridge, subnet=str(network),
                                lease_start=lease_start),
        scheduler=SchedulerSettings(max_wnd_time_s=sched_window_s,
                                    max_wnd_length=sched_window_length),
        timings=Timings(prolog_s=step_s, boot_s=boot_s, shutdown_s=step_s, epilog_s=step_s,
                        save_s=step_s, migrate_s=step_s, monitor_interval_s=monitor_s))
    server = CloudServer(settings)
    try:
        server.start()
    except ListenError as exc:
        server.stop()
        raise UserInputError(listen_error_text(exc)) from exc
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    events = f", events {server.events.endpoint}" if server.events is not None else ""
    click.echo(f"testbed cloud: XML-RPC {server.endpoint}, OneGate "
               f"{server.settings.gate_endpoint}{events}, driver {driver}, state {state_dir}")
    while not stop.wait(1.0):
        pass
    server.stop()
    click.echo("testbed cloud: stopped")
