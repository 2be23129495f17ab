"""Configuration: one TOML file, validated at load.

The file is ``/etc/vcluster/vcluster.toml`` unless ``VCLUSTER_CONFIG`` names another. It
follows OpenNebula's and Slurm's own conventions: the endpoint is ``ONE_XMLRPC``, the
credentials live in the ``ONE_AUTH`` file (one line ``user:password``) and never in this
file, and Slurm is found through ``SLURM_CONF``. Environment variables of those names
override the file.

Every error names the key at fault and says what is wrong, in one line.

Example::

    [opennebula]
    xmlrpc = "http://one.example.org:2633/RPC2"
    auth_file = "/etc/vcluster/one_auth"

    [slurm]
    conf = "/etc/slurm/slurm.conf"
    partitions = ["vcluster"]

    [database]
    url = "sqlite:////var/lib/vcluster/vcluster.db"

    [[node_class]]
    name = "small"
    prefix = "vc-small-"
    count = 16
    cpus = 2
    memory_mb = 4096
    features = ["small"]
    template = "vcluster-worker"
    policy = "per-job"
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vcluster import devices
from vcluster.config_model import (
    DEFAULT_ONE_XMLRPC,
    HOST_VM_EVENTS,
    NODE_NAME_RE,
    RESUMABLE_VM_EVENTS,
    VM_EVENTS,
    Config,
    ControllerSettings,
    DatabaseSettings,
    NodeClass,
    OpenNebulaSettings,
    Policy,
    SlurmSettings,
)
from vcluster.errors import ConfigError
from vcluster.journal import LOG_TARGETS
from vcluster.paths import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_LOG_DIR,
    DEFAULT_STATE_DIR,
    DEFAULT_STATUS_FILE,
)

MAX_BOOT_CONCURRENCY = 32
"""Most allocations ``controller.boot_concurrency`` lets be in flight at once."""

__all__ = [  # the objects of vcluster.config_model, re-exported: import them from here
    "Config",
    "ControllerSettings",
    "DEFAULT_ONE_XMLRPC",
    "DatabaseSettings",
    "HOST_VM_EVENTS",
    "NODE_NAME_RE",
    "NodeClass",
    "OpenNebulaSettings",
    "Policy",
    "RESUMABLE_VM_EVENTS",
    "SlurmSettings",
    "VM_EVENTS",
    "config_path",
    "load_config",
    "parse_config",
    "read_one_auth",
]

_EVENTS_RE = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")


class _Reader:
    """Reads one TOML table, remembering which keys were used, with typed getters."""

    def __init__(self, table: Mapping[str, Any], where: str, path: str) -> None:
        if not isinstance(table, Mapping):
            raise ConfigError("must be a table", key=where, path=path)
        self.table = table
        self.where = where
        self.path = path
        self.used: set[str] = set()

    def _key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def err(self, name: str, message: str) -> ConfigError:
        return ConfigError(message, key=self._key(name), path=self.path)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self.used.add(name)
        if name not in self.table:
            if default is ...:
                raise self.err(name, "is required")
            return default
        value = self.table[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.err(name, f"must be {_kind_name(kinds)}, not a boolean")
        if not isinstance(value, kinds):
            raise self.err(name, f"must be {_kind_name(kinds)}, got {value!r}")
        return value

    def positive(self, name: str, kind: type, default: Any = ...) -> Any:
        value = self.get(name, (int, float) if kind is float else kind, default)
        if value <= 0:
            raise self.err(name, f"must be positive, got {value!r}")
        return kind(value)

    def str_list(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(name, list, list(default))
        if not all(isinstance(v, str) and v for v in value):
            raise self.err(name, "must be a list of non-empty strings")
        return tuple(value)

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            known = ", ".join(sorted(self.used))
            raise self.err(unknown[0], f"unknown key (known keys here: {known})")


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def config_path(path: str | os.PathLike[str] | None = None) -> str:
    """The config file to read: ``path``, else ``$VCLUSTER_CONFIG``, else the default."""
    if path:
        return os.fspath(path)
    return os.environ.get("VCLUSTER_CONFIG") or DEFAULT_CONFIG_PATH


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Read and validate the config file; raise :class:`ConfigError` naming the bad key."""
    env = os.environ if environ is None else environ
    p = config_path(path)
    try:
        text = Path(p).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "file not found; create it (see deploy/vcluster.toml.example) or set VCLUSTER_CONFIG",
            path=p,
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=p) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=p) from exc
    return parse_config(data, path=p, environ=env)


def _env_or(env: Mapping[str, str], name: str, value: str) -> str:
    return env.get(name) or value


def parse_config(
    data: Mapping[str, Any], *, path: str = "", environ: Mapping[str, str] | None = None
) -> Config:
    env = {} if environ is None else environ
    top = _Reader(data, "", path)

    one_r = _Reader(top.get("opennebula", dict, {}), "opennebula", path)
    one = OpenNebulaSettings(
        xmlrpc=_env_or(env, "ONE_XMLRPC", one_r.get("xmlrpc", str, DEFAULT_ONE_XMLRPC)),
        auth_file=_env_or(env, "ONE_AUTH", one_r.get("auth_file", str, "~/.one/one_auth")),
        timeout_s=one_r.positive("timeout_s", float, 30.0),
        retry_delays_s=tuple(float(x) for x in one_r.get("retry_delays_s", list, [1, 2, 5])),
        events=one_r.get("events", str, ""),
    )
    if one.events and not _EVENTS_RE.fullmatch(one.events):
        raise one_r.err("events", "must be oned's event publisher as tcp://HOST:PORT (HM_MAD's "
                        f"-b and -p in oned.conf, port 2101 by default), got {one.events!r}")
    if "onegate_endpoint" in one_r.table:
        raise one_r.err(
            "onegate_endpoint", "is not used: oned gives every VM the ONEGATE_ENDPOINT of "
            "oned.conf (and refuses a VM with TOKEN=YES when it has none); set it there and "
            "remove this key")
    if "password" in one_r.table or "secret" in one_r.table:
        raise one_r.err(
            "password", "secrets do not belong in this file; put user:password in auth_file"
        )
    one_r.finish()
    if not one.xmlrpc.startswith(("http://", "https://")):
        raise ConfigError(
            f"must be an http:// or https:// URL, got {one.xmlrpc!r}",
            key="opennebula.xmlrpc", path=path,
        )
    if any(d < 0 for d in one.retry_delays_s):
        raise one_r.err("retry_delays_s", "delays must be >= 0 seconds")

    s_r = _Reader(top.get("slurm", dict, {}), "slurm", path)
    slurm = SlurmSettings(
        conf=_env_or(env, "SLURM_CONF", s_r.get("conf", str, "/etc/slurm/slurm.conf")),
        partitions=s_r.str_list("partitions", ("vcluster",)),
        bin_dir=s_r.get("bin_dir", str, "/usr/bin"),
        command_timeout_s=s_r.positive("command_timeout_s", float, 30.0),
        controller_host=s_r.get("controller_host", str, ""),
        configless=s_r.get("configless", bool, True),
        handover_at_allocation=s_r.get("handover_at_allocation", bool, False),
        munge_key_file=s_r.get("munge_key_file", str, "/etc/munge/munge.key"),
        preempt_partition=s_r.get("preempt_partition", str, ""),
    )
    s_r.finish()
    if not slurm.partitions:
        raise s_r.err("partitions", "must name at least one partition")
    if slurm.preempt_partition in slurm.partitions:
        raise s_r.err("preempt_partition", f"{slurm.preempt_partition!r} is one of "
                      "slurm.partitions, whose jobs it preempts: name another partition")
    if slurm.preempt_partition and not re.fullmatch(r"[A-Za-z0-9_.-]+",
                                                    slurm.preempt_partition):
        raise s_r.err("preempt_partition", "may hold only letters, digits, '_', '.' and '-'")

    d_r = _Reader(top.get("database", dict, {}), "database", path)
    database = DatabaseSettings(url=d_r.get("url", str, DatabaseSettings.url))
    d_r.finish()
    if "://" not in database.url:
        raise d_r.err(
            "url", f"must be a SQLAlchemy URL such as sqlite:////path, got {database.url!r}"
        )

    c_r = _Reader(top.get("controller", dict, {}), "controller", path)
    controller = ControllerSettings(
        cluster_name=c_r.get("cluster_name", str, "vcluster"),
        interval_s=c_r.positive("interval_s", float, 5.0),
        heartbeat_stale_s=c_r.positive("heartbeat_stale_s", float, 60.0),
        resume_timeout_s=c_r.positive("resume_timeout_s", int, 600),
        suspend_timeout_s=c_r.positive("suspend_timeout_s", int, 30),
        prolog_wait_s=c_r.positive("prolog_wait_s", float, 300.0),
        state_dir=c_r.get("state_dir", str, DEFAULT_STATE_DIR),
        log_dir=c_r.get("log_dir", str, DEFAULT_LOG_DIR),
        status_file=c_r.get("status_file", str, DEFAULT_STATUS_FILE),
        history_days=c_r.positive("history_days", int, 90),
        metrics_port=c_r.get("metrics_port", int, None),
        metrics_address=c_r.get("metrics_address", str, "127.0.0.1"),
        boot_rate_per_s=c_r.positive("boot_rate_per_s", float, 10.0),
        boot_burst=c_r.positive("boot_burst", int, 20),
        boot_concurrency=c_r.get("boot_concurrency", int, 4),
        capacity_backoff_s=_delays(c_r, "capacity_backoff_s", (60, 120, 300, 600, 1800)),
        placement_wait_s=c_r.positive("placement_wait_s", float, 60.0),
        leader_poll_s=c_r.positive("leader_poll_s", float, 2.0),
        leader_lease_s=c_r.positive("leader_lease_s", float, 15.0),
        join_address=c_r.get("join_address", str, ""),
        log_to=c_r.get("log_to", str, "auto"),
    )
    c_r.finish()
    if controller.log_to not in LOG_TARGETS:
        raise c_r.err("log_to", f"must be one of {', '.join(LOG_TARGETS)}, got "
                                f"{controller.log_to!r}")
    if not 1 <= controller.boot_concurrency <= MAX_BOOT_CONCURRENCY:
        raise c_r.err("boot_concurrency", f"must be 1-{MAX_BOOT_CONCURRENCY}, got "
                                          f"{controller.boot_concurrency}")
    if controller.metrics_port is not None and not 0 <= controller.metrics_port <= 65535:
        raise c_r.err("metrics_port", f"must be a TCP port, 0-65535, got "
                                      f"{controller.metrics_port}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", controller.cluster_name):
        raise c_r.err("cluster_name", "may hold only letters, digits, '_', '.' and '-'")

    raw_classes = top.get("node_class", list, [])
    top.finish()
    classes = tuple(
        _parse_node_class(raw, i, path, slurm.partitions) for i, raw in enumerate(raw_classes)
    )
    _check_classes(classes, path)
    return Config(one, slurm, database, controller, classes, path=path)


def _delays(r: _Reader, name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    value = r.get(name, list, list(default))
    if not value or not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0
                            for v in value):
        raise r.err(name, f"must be a non-empty list of positive seconds, got {value!r}")
    return tuple(float(v) for v in value)


def _parse_node_class(
    raw: Any, index: int, path: str, partitions: tuple[str, ...]
) -> NodeClass:
    r = _Reader(raw, f"node_class[{index}]", path)
    name = r.get("name", str)
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", name):
        raise r.err("name", "must be 1-32 lower-case letters, digits, '-' or '_', starting "
                    f"with a letter, got {name!r}")
    prefix = r.get("prefix", str, f"vc-{name}-")
    if len(prefix) > 48:  # node names (prefix + index) must fit Slurm's and the database's
        raise r.err("prefix", f"must be at most 48 characters, got {len(prefix)}")
    if not NODE_NAME_RE.match(prefix + "1"):
        raise r.err(
            "prefix", f"must start with a letter and hold only a-z, 0-9, '-', got {prefix!r}"
        )
    policy = r.get("policy", str, "per-job")
    if policy not in ("per-job", "pool"):
        raise r.err("policy", f"must be 'per-job' or 'pool', got {policy!r}")
    template = r.get("template", (str, int))
    vm_options = r.get("vm_options", dict, {})
    templates = r.get("templates", list, [])
    if not all(isinstance(t, str | int) and not isinstance(t, bool) and str(t).strip()
               for t in templates):
        raise r.err("templates", "must be a list of template names or numeric ids")
    if not all(isinstance(v, str | int | float) for v in vm_options.values()):
        raise r.err("vm_options", "values must be strings or numbers")
    partition = r.get("partition", str, partitions[0])
    if partition not in partitions:
        raise r.err("partition", f"{partition!r} is not in slurm.partitions {list(partitions)}")
    features = r.str_list("features", (name,))
    for f in features:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", f):
            raise r.err("features", f"feature {f!r} may hold only letters, digits, '_', '.', '-'")
    nc = NodeClass(
        name=name,
        prefix=prefix,
        count=r.positive("count", int),
        cpus=r.positive("cpus", int),
        memory_mb=r.positive("memory_mb", int),
        template=str(template),
        policy=policy,
        features=features,
        partition=partition,
        suspend_time_s=r.positive("suspend_time_s", int, 300),
        first_index=r.get("first_index", int, 1),
        vm_options={str(k): str(v) for k, v in vm_options.items()},
        templates=tuple(str(t).strip() for t in templates),
        cost_per_hour=float(r.get("cost_per_hour", (int, float), 0.0)),
        boot_rate_per_s=r.positive("boot_rate_per_s", float) if "boot_rate_per_s" in r.table
        else None,
        boot_burst=r.positive("boot_burst", int) if "boot_burst" in r.table else None,
        fallback_templates=tuple(str(t).strip() for t in r.str_list("fallback_templates", ())),
        on_vm_event=_vm_event_rules(r),
        standby=r.get("standby", int, 0),
        standby_max_age_s=r.positive("standby_max_age_s", int, 3600),
        **_devices(r),
    )
    if not 0 <= nc.standby <= nc.count:
        raise r.err("standby", f"must be between 0 and count ({nc.count}), got {nc.standby}")
    if nc.first_index < 0:
        raise r.err("first_index", "must be >= 0")
    if nc.cost_per_hour < 0:
        raise r.err("cost_per_hour", f"must be >= 0, got {nc.cost_per_hour!r}")
    r.finish()
    return nc


def _devices(r: _Reader) -> dict[str, Any]:
    """``gres``, ``gres_conf`` and ``pci`` of a node class (see :mod:`vcluster.devices`)."""
    try:
        gres = devices.parse_class_gres(r.str_list("gres", ()))
    except ValueError as exc:
        raise r.err("gres", str(exc)) from None
    try:
        gres_conf = devices.check_gres_conf(r.get("gres_conf", str, ""))
    except ValueError as exc:
        raise r.err("gres_conf", str(exc)) from None
    if gres_conf and not gres:
        raise r.err("gres_conf", "is for the class's gres; set gres too")
    words = {w.split("=", 1)[0].lower() for w in gres_conf.split()}
    if any(g.name == "gpu" for g in gres) and not words & {"file", "autodetect"}:
        raise r.err("gres_conf", "a gpu GRES needs its device file (gres_conf = "
                    "\"File=/dev/nvidia0\") or \"AutoDetect=nvml\": slurmd drops a GPU without")
    pci = []
    for i, raw in enumerate(r.get("pci", list, [])):
        if not isinstance(raw, dict):
            raise r.err("pci", f"item {i} must be a table such as {{ vendor = \"10de\" }}")
        try:
            pci.append(devices.parse_pci(raw))
        except ValueError as exc:
            raise r.err("pci", f"item {i}: {exc}") from None
    return {"gres": gres, "gres_conf": gres_conf, "pci": tuple(pci)}


def _vm_event_rules(r: _Reader) -> dict[str, str]:
    rules = r.get("on_vm_event", dict, {})
    for event, rule in rules.items():
        if event not in VM_EVENTS:
            raise r.err("on_vm_event", f"unknown event {event!r}; events: "
                        f"{', '.join(VM_EVENTS)}")
        allowed = ("fail", "resume") if event in RESUMABLE_VM_EVENTS else (
            ("fail", "keep") if event in HOST_VM_EVENTS else ("fail",))
        if rule not in allowed:
            raise r.err("on_vm_event", f"{event} = {rule!r}: must be "
                        f"{' or '.join(repr(a) for a in allowed)}")
    return {str(k): str(v) for k, v in rules.items()}


def _check_classes(classes: tuple[NodeClass, ...], path: str) -> None:
    seen_names: set[str] = set()
    for i, nc in enumerate(classes):
        if nc.name in seen_names:
            raise ConfigError(f"duplicate class name {nc.name!r}", key=f"node_class[{i}].name",
                              path=path)
        seen_names.add(nc.name)
        for j, other in enumerate(classes[:i]):
            if nc.prefix.startswith(other.prefix) or other.prefix.startswith(nc.prefix):
                raise ConfigError(
                    f"prefix {nc.prefix!r} overlaps node_class[{j}] prefix {other.prefix!r}; "
                    "node names must tell their class",
                    key=f"node_class[{i}].prefix", path=path,
                )


def read_one_auth(auth_file: str) -> str:
    """Read ``user:password`` from the ONE_AUTH file; never log what it returns."""
    p = Path(os.path.expanduser(auth_file))
    try:
        text = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(
            f"ONE_AUTH file {str(p)!r} not found; write one line user:password to it (mode 600)",
            key="opennebula.auth_file",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read ONE_AUTH file {str(p)!r}: {exc.strerror}",
                          key="opennebula.auth_file") from exc
    line = text.splitlines()[0].strip() if text else ""
    if ":" not in line or line.startswith(":"):
        raise ConfigError(
            f"ONE_AUTH file {str(p)!r} must hold one line user:password",
            key="opennebula.auth_file",
        )
    return line
