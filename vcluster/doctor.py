"""``vcluster doctor``: the config checked against the live Slurm and OpenNebula, before a job.

Why it exists: every mistake a site can make in installing vcluster (a template that does not
exist, a NIC naming a network its user does not own, a network with no free lease, hook paths
in slurm.conf that SlurmUser cannot run, an unreadable munge key, a Slurm or OpenNebula
vcluster does not drive) otherwise shows up as a failed job. Each check says in one line what
it found and, if it failed, what to do. A check that cannot run (a side unreachable) fails
with that reason; one check's failure never stops the others.

The checks take the small protocols below, so unit tests run them against fakes.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vcluster.config import Config
from vcluster.errors import VclusterError
from vcluster.one_site import VNetInfo
from vcluster.slurm_parse import SlurmVersion
from vcluster.slurmconf import PROGRAM_NAMES, default_program_dir
from vcluster.versions import check_opennebula_version

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Check:
    status: str
    """``ok``, ``warn`` or ``FAIL``."""
    name: str
    message: str
    """What was found and, unless ok, what to do."""


class DoctorSlurm(Protocol):
    def version(self) -> SlurmVersion: ...


class DoctorOne(Protocol):
    @property
    def user(self) -> str: ...

    def version(self) -> str: ...

    def template_id(self, name_or_id: str) -> int: ...

    def template_nics(self, template_id: int) -> list[dict[str, str]]: ...

    def vnets(self) -> list[VNetInfo]: ...


def _guard(name: str, check: Callable[[], Iterator[Check]]) -> list[Check]:
    try:
        return list(check())
    except VclusterError as exc:
        return [Check(FAIL, name, str(exc))]


def run_checks(config: Config, slurm: DoctorSlurm, one: DoctorOne,
               database: Callable[[], str]) -> list[Check]:
    """Every check, in the order an install proceeds. ``database`` returns a description of
    the database at head or raises a VclusterError saying why not."""
    checks = _guard("database", lambda: iter([Check(OK, "database", database())]))
    checks += _guard("slurm", lambda: iter([Check(OK, "slurm", f"Slurm {slurm.version()} "
                                                  "(supported)")]))
    checks += _guard("opennebula", lambda: _opennebula(one))
    if checks[-1].status == OK:
        checks += _guard("templates", lambda: _templates(config, one))
    checks += _guard("hooks", lambda: _hooks(config))
    checks += _guard("munge", lambda: _munge_key(config.slurm.munge_key_file))
    return checks


def _opennebula(one: DoctorOne) -> Iterator[Check]:
    version = check_opennebula_version(one.version())
    yield Check(OK, "opennebula", f"OpenNebula {version} (supported), user {one.user}")


def _templates(config: Config, one: DoctorOne) -> Iterator[Check]:
    vnets = one.vnets()
    for i, nc in enumerate(config.node_classes):
        for template in nc.allowed_templates:
            name = f"template {template}"
            key = f"node_class[{i}].template" + ("s" if template != nc.template else "")
            try:
                template_id = one.template_id(template)
            except VclusterError as exc:
                yield Check(FAIL, name, f"{exc} (class {nc.name}, {key})")
                continue
            nics = one.template_nics(template_id)
            yield Check(OK, name, f"exists (id {template_id}, class {nc.name}, "
                        f"{len(nics)} NIC{'s' * (len(nics) != 1)})")
            for nic in nics:
                yield _network(template, nic, vnets, one.user)


def _network(template: str, nic: dict[str, str], vnets: list[VNetInfo], user: str) -> Check:
    name = f"network of {template}"
    if nic.get("NETWORK_ID", "").isdigit():
        found = [v for v in vnets if v.vnet_id == int(nic["NETWORK_ID"])]
        what = f"network {nic['NETWORK_ID']}"
    elif nic.get("NETWORK"):
        owner = nic.get("NETWORK_UNAME", "")
        named = [v for v in vnets if v.name == nic["NETWORK"]]
        found = [v for v in named if v.owner == (owner or user)]
        what = f"network {nic['NETWORK']!r}"
        if not found and named and not owner and not nic.get("NETWORK_UID"):
            owners = ", ".join(sorted({v.owner for v in named}))
            return Check(FAIL, name, f"its NIC names {what} without NETWORK_UNAME, and user "
                         f"{user!r} owns no network of that name ({owners} does); add "
                         f'NETWORK_UNAME="{named[0].owner}" to the NIC in the template')
    else:
        return Check(WARN, name, f"a NIC without NETWORK or NETWORK_ID: {nic}; the VM may "
                     "get no address Slurm can reach")
    if not found:
        return Check(FAIL, name, f"{what} does not exist or user {user!r} cannot use it; "
                     "create it, or fix the template's NIC")
    vnet = found[0]
    if vnet.free_leases == 0:
        return Check(FAIL, name, f"network {vnet.name!r} has no free lease ({vnet.used_leases} "
                     f"of {vnet.size} used); add an address range (onevnet addar)")
    return Check(OK, name, f"network {vnet.name!r} (id {vnet.vnet_id}): {vnet.free_leases} of "
                 f"{vnet.size} leases free")


# --- slurm.conf hooks ---------------------------------------------------------------------------


def read_slurm_conf(path: str) -> dict[str, str]:
    """``Key=Value`` settings of slurm.conf and the files it ``Include``s (keys lower-cased,
    the last one wins)."""
    settings: dict[str, str] = {}
    conf = Path(path)
    for raw in conf.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.lower().startswith("include "):
            included = Path(line.split(None, 1)[1].strip())
            included = included if included.is_absolute() else conf.parent / included
            if included.is_file():
                settings.update(read_slurm_conf(str(included)))
            continue
        key, sep, value = line.partition("=")
        if sep and " " not in key.strip():
            settings[key.strip().lower()] = value.strip()
    return settings


def _hooks(config: Config) -> Iterator[Check]:
    try:
        settings = read_slurm_conf(config.slurm.conf)
    except OSError as exc:
        yield Check(FAIL, "hooks", f"cannot read slurm.conf {config.slurm.conf}: "
                    f"{exc.strerror}; fix slurm.conf (SLURM_CONF)")
        return
    slurm_user = settings.get("slurmuser", "root")
    installed = default_program_dir()
    for key, program in PROGRAM_NAMES.items():
        name = f"hook {key}"
        path = settings.get(key.lower(), "")
        expected = os.path.join(installed, program)
        fix = f"run `vcluster slurm-conf` and merge its {key} line into slurm.conf"
        if not path:
            yield Check(FAIL, name, f"not set in slurm.conf; {fix}")
        elif os.path.basename(path) != program:
            yield Check(FAIL, name, f"slurm.conf runs {path}, not vcluster's {program}; {fix}")
        elif not os.path.isfile(path):
            yield Check(FAIL, name, f"{path} does not exist; {fix}")
        elif (why := cannot_run(path, slurm_user)):
            yield Check(FAIL, name, f"SlurmUser {slurm_user} cannot run {path}: {why}; install "
                        "vcluster where it can (e.g. a venv under /opt) and rerun "
                        "`vcluster slurm-conf`")
        elif os.path.realpath(path) == os.path.realpath(expected):
            yield Check(OK, name, path)
        elif _wraps(path, expected):
            yield Check(OK, name, f"{path} (a wrapper of {expected})")
        elif (front := front_of(path, installed)) and front.current:
            yield Check(OK, name, f"{path} ({front.how})")
        elif front:
            yield Check(WARN, name, f"{path} ({front.how}) was built from another vcluster "
                        "than this one: rebuild it with `vcluster hook-front --out "
                        f"{os.path.dirname(front.front)}`")
        else:
            yield Check(WARN, name, f"slurm.conf runs {path}, this vcluster's is {expected}; "
                        f"if that is not a wrapper of it, {fix}")


    if config.slurm.handover_at_allocation:
        have = settings.get("returntoservice", "")
        if have == "2":
            yield Check(OK, "handover at allocation", "ReturnToService=2 in slurm.conf")
        else:
            yield Check(FAIL, "handover at allocation", "[slurm] handover_at_allocation needs "
                        f"ReturnToService=2 in slurm.conf (it has {have or 'none: 1'}), else "
                        "Slurm marks a node handed over at allocation DOWN (\"Node unexpectedly "
                        "rebooted\"); set ReturnToService=2 or turn handover_at_allocation off")


def _wraps(path: str, program: str) -> bool:
    """``path`` is a small script that execs ``program`` (as the testbed's wrappers do)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"#!") and f"exec {program} ".encode() in head


@dataclass(frozen=True)
class FrontUse:
    """How a hook path runs the C hook front built for the Python hooks of a vcluster."""

    how: str
    """"the hook front of DIR", or "a wrapper of the hook front of DIR"."""
    front: str
    """The front's link (e.g. /opt/vcluster/libexec/vcluster-prolog)."""
    current: bool
    """Built from this vcluster's source and constants (not left from an earlier one)."""


def front_of(path: str, installed: str) -> FrontUse | None:
    """How ``path`` runs the C hook front built for the Python hooks in ``installed``
    (directly, or through a wrapper that execs it); None if it does not."""
    from vcluster.hook_front import built_from_this, find_front

    found = find_front(path, installed)
    if found is None:
        return None
    how = ("a wrapper of " if found != path else "") + f"the hook front of {installed}"
    return FrontUse(how, found, built_from_this(found, installed))


def cannot_run(path: str, user: str) -> str:
    """Why ``user`` cannot execute ``path`` (a directory above it closed, the file not
    executable for it), or "" if it can."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return f"no user {user!r} on this host"
    if entry.pw_uid == 0:
        return "" if os.access(path, os.X_OK) else "it is not executable"
    groups = {entry.pw_gid} | {g for g in _groups_of(user)}
    target = Path(path)
    for directory in [*reversed(target.parents)]:
        if not _allows(directory.stat(), entry.pw_uid, groups, stat.S_IXUSR):
            return f"{directory} is closed to it"
    if not _allows(target.stat(), entry.pw_uid, groups, stat.S_IXUSR | stat.S_IRUSR):
        return "it is not readable and executable for it"
    return ""


def _groups_of(user: str) -> set[int]:
    import grp

    return {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}


def _allows(st: os.stat_result, uid: int, gids: set[int], user_bits: int) -> bool:
    """The permission ``user_bits`` (given as the owner's bits) for ``uid``/``gids``."""
    if st.st_uid == uid:
        bits = user_bits
    elif st.st_gid in gids:
        bits = user_bits >> 3
    else:
        bits = user_bits >> 6
    return st.st_mode & bits == bits


def _munge_key(path: str) -> Iterator[Check]:
    try:
        key = Path(path).read_bytes()
    except OSError as exc:
        yield Check(FAIL, "munge key", f"cannot read {path}: {exc.strerror}; run vcluster as "
                    "a user that can (root or the controller's user), or fix "
                    "slurm.munge_key_file")
        return
    if len(key) < 32:
        yield Check(FAIL, "munge key", f"{path} holds {len(key)} bytes, munge needs at least "
                    "32; fix slurm.munge_key_file")
        return
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        yield Check(WARN, "munge key", f"{path} is mode {mode:o}: others can read it; "
                    f"chmod 600 {path}")
        return
    yield Check(OK, "munge key", f"{path} readable ({len(key)} bytes, mode {mode:o})")
