"""What every worker VM is told about the cluster: slurmctld's address and the munge key.

Why it exists: a VM joins Slurm configless (``slurmd --conf-server HOST:PORT``) and must
authenticate with the cluster's munge key, so both go into its CONTEXT. They are read once,
when the controller starts, and a problem is a :class:`ConfigError` naming the key to fix.
The address is ``slurm.controller_host`` if set, else the first ``SlurmctldHost`` of
slurm.conf (its ``(address)`` if given) with ``SlurmctldPort`` (default 6817).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from vcluster.config import Config
from vcluster.errors import ConfigError
from vcluster.vmtemplate import GuestContext

DEFAULT_SLURMCTLD_PORT = 6817
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


def guest_context(config: Config) -> GuestContext:
    """The GuestContext of every worker VM of this cluster."""
    key = munge_key_b64(config)
    if config.slurm.configless:
        return GuestContext(slurm_conf_server=slurmctld_address(config), munge_key_b64=key)
    return GuestContext(slurm_conf_server="", munge_key_b64=key,
                        slurm_conf_path=config.slurm.conf)
