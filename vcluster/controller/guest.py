"""What every worker VM is told about the cluster: slurmctld's address and where it gets
the munge key.

Why it exists: a VM joins Slurm configless (``slurmd --conf-server HOST:PORT``) and must
authenticate with the cluster's munge key. The address goes into its CONTEXT; the key does
not (anyone who can read the VM reads its CONTEXT): the CONTEXT names the controller's join
endpoint (:mod:`vcluster.controller.join_server`), where the VM redeems a one-time token for
it. Everything is read once, when the controller starts, and a problem is a
:class:`ConfigError` naming the key to fix. The slurmctld address is
``slurm.controller_host`` if set, else the first ``SlurmctldHost`` of slurm.conf (its
``(address)`` if given) with ``SlurmctldPort`` (default 6817). The join endpoint is
``controller.join_address``, else slurmctld's host with port :data:`DEFAULT_JOIN_PORT`.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from vcluster.config import Config
from vcluster.errors import ConfigError
from vcluster.vmtemplate import GuestContext

DEFAULT_SLURMCTLD_PORT = 6817
DEFAULT_JOIN_PORT = 6830
_HOST_RE = re.compile(r"^\s*([^\s(]+)(?:\(([^)]*)\))?\s*$")


def parse_slurmctld_address(conf_text: str) -> tuple[str, int] | None:
    """(host, port) of the primary slurmctld from slurm.conf text, or None if not named."""
    host: str | None = None
    legacy_machine = legacy_addr = None
    port = DEFAULT_SLURMCTLD_PORT
    for raw in conf_text.splitlines():
        line = raw.split("#", 1)[0].strip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "slurmctldhost" and host is None:
            match = _HOST_RE.match(value)
            if match:
                host = match.group(2) or match.group(1)
        elif key == "controlmachine" and legacy_machine is None:
            legacy_machine = value.split(",")[0]
        elif key == "controladdr" and legacy_addr is None:
            legacy_addr = value.split(",")[0]
        elif key == "slurmctldport":
            first = value.split("-", 1)[0]
            if first.isdigit():
                port = int(first)
    host = host or legacy_addr or legacy_machine
    return (host, port) if host else None


def slurmctld_address(config: Config) -> str:
    """``host:port`` worker VMs fetch their config from and register with."""
    configured = config.slurm.controller_host.strip()
    conf_port = DEFAULT_SLURMCTLD_PORT
    conf_host: str | None = None
    try:
        parsed = parse_slurmctld_address(Path(config.slurm.conf).read_text(encoding="utf-8"))
    except OSError as exc:
        if not configured:
            raise ConfigError(
                f"cannot read {config.slurm.conf} to find slurmctld ({exc.strerror}); "
                "set slurm.controller_host", key="slurm.conf") from exc
        parsed = None
    if parsed:
        conf_host, conf_port = parsed
    if configured:
        return configured if ":" in configured else f"{configured}:{conf_port}"
    if not conf_host:
        raise ConfigError(f"{config.slurm.conf} names no SlurmctldHost; set "
                          "slurm.controller_host", key="slurm.controller_host")
    return f"{conf_host}:{conf_port}"


def munge_key_b64(config: Config) -> str:
    path = config.slurm.munge_key_file
    try:
        key = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the munge key {path}: {exc.strerror}; the controller "
                          "must run as a user that can read it", key="slurm.munge_key_file"
                          ) from exc
    if len(key) < 32:
        raise ConfigError(f"the munge key {path} is only {len(key)} bytes; munged needs at "
                          "least 32", key="slurm.munge_key_file")
    return base64.b64encode(key).decode("ascii")


def join_endpoint(config: Config) -> tuple[str, int]:
    """(host, port) the join endpoint listens on and worker VMs reach it at."""
    configured = config.controller.join_address.strip()
    if configured:
        host, sep, port = configured.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ConfigError(f"join_address must be HOST:PORT (an address worker VMs reach "
                              f"the controller at), got {configured!r}",
                              key="controller.join_address")
        return host.strip("[]"), int(port)
    try:
        host = slurmctld_address(config).rpartition(":")[0]
    except ConfigError as exc:
        raise ConfigError(f"{exc}; or set controller.join_address",
                          key="controller.join_address") from exc
    return host, DEFAULT_JOIN_PORT


def guest_context(config: Config) -> GuestContext:
    """The GuestContext of every worker VM of this cluster (the munge key is checked to be
    readable here, but is not part of it: see :func:`munge_key_b64`)."""
    munge_key_b64(config)
    host, port = join_endpoint(config)
    join_url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    if config.slurm.configless:
        return GuestContext(slurm_conf_server=slurmctld_address(config), join_url=join_url)
    return GuestContext(slurm_conf_server="", join_url=join_url,
                        slurm_conf_path=config.slurm.conf)
