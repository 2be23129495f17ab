"""Another Slurm beside the host's: a Debian root (debootstrap) with that release's Slurm.

Sites run Slurm 22.05 (Debian 12) up to 24.11 (Debian 13) and later, and one Slurm generation
cannot talk to the other (slurmd 22.05 is refused by slurmctld 24.11). To test both on one
machine, the testbed runs the host's own Slurm, or the Slurm of the *other* Debian release
installed in a root directory:

* ``build`` makes the root once (``debootstrap --variant=minbase SUITE``, then ``apt-get
  install slurmctld slurmd slurm-client munge`` inside it, from the mirror the host's apt
  uses) and keeps it: a later call with the root complete returns at once.
* Client commands (squeue, scontrol, sbatch...) run on the host through the root's own dynamic
  loader and libraries (:meth:`SlurmRoot.client_argv`, written as wrapper scripts by
  :func:`write_client_wrappers`), so that any user may run them, as on a login node.
* Daemons (slurmctld; slurmd inside a netns VM whose image is the root) run chrooted in it,
  in a private mount namespace (:meth:`SlurmRoot.daemon_argv`, ``in_root.sh``).
* Both read the plugins of the root: slurm.conf names them with ``PluginDir`` at the root's
  host path (:attr:`SlurmRoot.plugin_dir`), and the root holds a symlink from that same path
  to its own ``/``, so that the path is right inside the chroot too.

``SlurmRoot("/")`` is the host's own Slurm: every method then returns the plain commands.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vcluster.errors import VclusterError

ROOTS_DIR = "/var/cache/vcluster-testbed/roots"
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
SUITE_SLURM = {"bookworm": "22.05", "trixie": "24.11"}
"""Debian release -> the Slurm major.minor it ships."""
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CLIENT_COMMANDS = ("squeue", "sinfo", "scontrol", "sbatch", "scancel", "strigger", "srun",
                   "salloc", "sacct", "sprio", "sstat", "sshare")
LIB_DIRS = ("usr/lib/x86_64-linux-gnu/slurm-wlm", "usr/lib/x86_64-linux-gnu",
            "lib/x86_64-linux-gnu")
LOADER = "lib64/ld-linux-x86-64.so.2"
PLUGIN_SUBDIR = "usr/lib/x86_64-linux-gnu/slurm-wlm"
DONE_MARKER = ".vcluster-root"
"""Written last by :func:`build`; a root without it is incomplete and is built again."""
BUILD_TIMEOUT_S = 900.0
IN_ROOT_SCRIPT = Path(__file__).with_name("in_root.sh")

Say = Callable[[str], None]


class SlurmRootError(VclusterError):
    """The other Slurm's root could not be built or used."""


@dataclass(frozen=True)
class SlurmRoot:
    """A Slurm installation: ``/`` (the host's) or a Debian root made by :func:`build`."""

    path: str = "/"

    @property
    def is_host(self) -> bool:
        return os.path.realpath(self.path) == "/"

    @property
    def plugin_dir(self) -> str:
        """What slurm.conf's ``PluginDir`` must say for this root ("" for the host)."""
        return "" if self.is_host else os.path.join(self.path, PLUGIN_SUBDIR)

    def version(self) -> str:
        """The installed Slurm version (``24.11.5``), read from the root's dpkg database."""
        return package_version(Path(self.path), "slurm-client")

    def client_argv(self, argv: Sequence[str]) -> list[str]:
        """``squeue --json`` -> the argv that runs the root's squeue on the host."""
        if self.is_host:
            return list(argv)
        root = self.path
        program = argv[0] if os.path.isabs(argv[0]) else f"/usr/bin/{argv[0]}"
        libs = ":".join(os.path.join(root, d) for d in LIB_DIRS)
        return [os.path.join(root, LOADER), "--library-path", libs,
                "--argv0", os.path.basename(program), root + program, *argv[1:]]

    def daemon_argv(self, argv: Sequence[str], shared: Sequence[str] = ()) -> list[str]:
        """The argv that runs ``argv`` chrooted in the root (private mounts; see in_root.sh).

        ``shared``: host paths visible at the same path inside the root (the state
        directory, /etc/passwd...). For the host's own Slurm, ``argv`` unchanged.
        """
        if self.is_host:
            return list(argv)
        return ["unshare", "--mount", "--propagation", "private", "sh", str(IN_ROOT_SCRIPT),
                self.path, *shared, "--", *argv]


def package_version(root: Path, package: str) -> str:
    """Upstream version of an installed Debian package (``24.11.5-4`` -> ``24.11.5``)."""
    try:
        status = (root / "var/lib/dpkg/status").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    for block in status.split("\n\n"):
        if re.search(rf"^Package: {re.escape(package)}$", block, re.M) and re.search(
                r"^Status: install ok installed$", block, re.M):
            match = re.search(r"^Version: (?:\d+:)?([^-\s]+)", block, re.M)
            if match:
                return match.group(1)
    return ""


def host_suite() -> str:
    """The host's Debian codename (``bookworm``), from /etc/os-release."""
    try:
        text = Path("/etc/os-release").read_text(encoding="utf-8")
    except OSError:
        return ""
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.M)
    return match.group(1) if match else ""


def other_suite(host: str | None = None) -> str:
    """The Debian release whose Slurm is the *other* one: trixie beside bookworm and back.

    ``VCLUSTER_OTHER_SUITE`` overrides it (to try the root of the host's own release)."""
    if host is None and os.environ.get("VCLUSTER_OTHER_SUITE"):
        return os.environ["VCLUSTER_OTHER_SUITE"]
    host = host_suite() if host is None else host
    return "bookworm" if host == "trixie" else "trixie"


def host_mirror() -> str:
    """The Debian mirror the host's apt uses (the testbed reaches no other)."""
    texts = []
    for path in [Path("/etc/apt/sources.list"),
                 *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
    for text in texts:
        for match in re.finditer(r"(?:^URIs:\s*|^deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.M):
            uri = match.group(1).rstrip("/")
            if uri.endswith("/debian"):
                return uri
    return DEFAULT_MIRROR


def default_root_dir(suite: str) -> Path:
    return Path(ROOTS_DIR) / suite


def is_complete(path: Path) -> bool:
    return (path / DONE_MARKER).is_file() and bool(package_version(path, "slurmctld"))


def build(suite: str | None = None, path: Path | None = None, *, mirror: str | None = None,
          say: Say | None = None) -> SlurmRoot:
    """Make (or reuse) the Debian root of ``suite`` with Slurm and munge; return it."""
    suite = suite or other_suite()
    if suite not in SUITE_SLURM:
        raise SlurmRootError(f"unknown Debian release {suite!r}: choose one of "
                             + ", ".join(sorted(SUITE_SLURM)))
    path = Path(path or default_root_dir(suite)).absolute()
    if is_complete(path):
        return SlurmRoot(str(path))
    if os.geteuid() != 0:
        raise SlurmRootError(f"building the Slurm root {path} needs root (debootstrap)")
    if shutil.which("debootstrap") is None:
        raise SlurmRootError("debootstrap is not installed: apt-get install debootstrap "
                             "(deploy/install-deps.sh installs it)")
    mirror = mirror or host_mirror()
    if path.exists():
        shutil.rmtree(path)  # an interrupted build: start over
    path.parent.mkdir(parents=True, exist_ok=True)
    if say:
        say(f"building a Debian {suite} root with Slurm {SUITE_SLURM[suite]} in {path} "
            f"(debootstrap from {mirror}; about a minute, once)")
    _run(["debootstrap", "--variant=minbase", suite, str(path), mirror], "debootstrap")
    policy = path / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# no service starts inside this root\nexit 101\n")
    os.chmod(policy, 0o755)
    install = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
               "--no-install-recommends", *PACKAGES]
    _run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
          'mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && exec chroot "$0" "$@"',
          str(path), *install], "apt-get install in the root")
    _link_to_itself(path)
    (path / DONE_MARKER).write_text(f"{suite} slurm {package_version(path, 'slurmctld')}\n")
    root = SlurmRoot(str(path))
    if say:
        say(f"Slurm {root.version()} ready in {path}")
    return root


def _link_to_itself(path: Path) -> None:
    """Inside the root, its own host path leads to its ``/`` (PluginDir works both ways)."""
    link = path / str(path).lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to("/")


def _run(argv: Sequence[str], what: str) -> None:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, check=False,
                              timeout=BUILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmRootError(f"{what} failed: {exc}") from exc
    if proc.returncode != 0:
        last = ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]
        raise SlurmRootError(f"{what} failed (exit {proc.returncode}): {last}")


def write_client_wrappers(root: SlurmRoot, bin_dir: Path) -> Path:
    """One executable per Slurm client command in ``bin_dir`` that runs the root's own.

    This is what ``slurm.bin_dir`` of the site's vcluster.toml names for this Slurm.
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(bin_dir, 0o755)
    for command in CLIENT_COMMANDS:
        argv = root.client_argv([command])
        text = ("#!/bin/sh\n"
                f"# Slurm {root.version()} of {root.path}, run with its own loader and libraries\n"
                "exec " + " ".join(_sh_quote(a) for a in argv) + ' "$@"\n')
        path = bin_dir / command
        path.write_text(text, encoding="utf-8")
        os.chmod(path, 0o755)
    return bin_dir


def _sh_quote(word: str) -> str:
    return word if re.fullmatch(r"[A-Za-z0-9_./:=+-]+", word) else (
        "'" + word.replace("'", "'\\''") + "'")
