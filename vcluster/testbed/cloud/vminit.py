"""The first process of a netns testbed VM: what a VM's boot and OpenNebula's guest agent do.

The netns driver starts ``python -m vcluster.testbed.cloud.vminit VM_DIR STATUS_FD`` inside a
fresh network + UTS + mount namespace (``nsenter --net=... unshare --uts --mount
--propagation private``). This module makes that namespace look like a small VM that shares
the host's filesystem the way compute nodes share NFS: a private tmpfs on /run (so the VM runs
its own munged at munge's default socket, which configless slurmd needs), private state
directories for munge and slurmd, its own /etc/hosts and hostname, and the CONTEXT directory
read-only at /context. It then does what one-context does on a real VM: write
/var/run/one-context/one_env, run START_SCRIPT_BASE64 (or START_SCRIPT) as root with the
context variables in its environment, and with REPORT_READY=YES send ``PUT /vm`` to OneGate.
Afterwards it stays as the VM's init: a child subreaper that reaps the VM's daemons.

Everything it logs goes to stderr, which the driver points at the VM's console.log. The
layout of the VM's directory (what gets mounted where) is in
:mod:`vcluster.testbed.cloud.vm_dir`, re-exported here: :func:`prepare_vm_dir` is what the
driver calls on the host before starting the VM.
"""

from __future__ import annotations

import base64
import ctypes
import http.client
import logging
import os
import re
import socket
import stat
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

from vcluster.testbed.cloud.vm_dir import (
    CONTEXT_HEADER,
    CONTEXT_MOUNT,
    PRIVATE_DIRS,
    PRIVATE_FILES,
    InitConfig,
    context_dir,
    in_guest,
    prepare_vm_dir,
    private_source,
    render_context_sh,
    rootfs_dir,
    shell_quote,
    write_file,
)
from vcluster.testbed.cloud.vm_dir import _ensure_mountpoint as _ensure_mountpoint

__all__ = [  # the VM directory's layout of vcluster.testbed.cloud.vm_dir (the driver's)
    "CONTEXT_HEADER",
    "CONTEXT_MOUNT",
    "PRIVATE_DIRS",
    "PRIVATE_FILES",
    "InitConfig",
    "context_dir",
    "in_guest",
    "prepare_vm_dir",
    "private_source",
    "render_context_sh",
    "rootfs_dir",
    "shell_quote",
    "write_file",
    # and its own
    "GUEST_PATH",
    "ONE_ENV_PATH",
    "PCI_DEVICE_DIR",
    "READY_ATTEMPTS",
    "READY_RETRY_DELAY_S",
    "READY_TIMEOUT_S",
    "START_SCRIPT_PATH",
    "InitError",
    "add_host_users",
    "boot",
    "guest_environment",
    "main",
    "make_pci_devices",
    "reap_forever",
    "report_ready",
    "run_start_script",
    "setup_filesystem",
    "setup_image_filesystem",
    "start_script_text",
    "write_one_env",
]

log = logging.getLogger("vminit")

ONE_ENV_PATH = "/run/one-context/one_env"
START_SCRIPT_PATH = "/run/one-context/start-script"
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READY_ATTEMPTS = 10
READY_RETRY_DELAY_S = 1.0
READY_TIMEOUT_S = 5.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PR_SET_CHILD_SUBREAPER = 36


class InitError(Exception):
    """The VM could not be set up; the message goes back to the driver as the boot error."""


# --- inside the VM ---------------------------------------------------------------------------


def _mount(*args: str) -> None:
    argv = ["mount", *args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise InitError(f"{' '.join(argv)} failed: {result.stderr.strip() or result.returncode}")


def _join_cgroup(cgroup_procs: str) -> None:
    with open(cgroup_procs, "w") as procs:
        procs.write(f"{os.getpid()}\n")


def setup_filesystem(vm_dir: Path) -> None:
    """Private /run, private state directories and files, read-only /context."""
    _mount("--make-rprivate", "/")
    for target in PRIVATE_DIRS:
        _mount("--bind", str(private_source(vm_dir, target)), target)
    for target in PRIVATE_FILES:
        _mount("--bind", str(private_source(vm_dir, target)), target)
    _mount("--bind", str(context_dir(vm_dir)), CONTEXT_MOUNT)
    _mount("-o", "remount,bind,ro", CONTEXT_MOUNT)
    # Last, because the VM's directory may itself live under /run on the host.
    _mount("-t", "tmpfs", "-o", "mode=0755,nosuid,nodev,size=64m", "tmpfs", "/run")
    os.makedirs("/run/lock", exist_ok=True)
    os.chmod("/run/lock", 0o1777)
    os.makedirs("/run/one-context", mode=0o700, exist_ok=True)
    if not os.path.islink("/var/run"):
        _mount("--bind", "/run", "/var/run")


def setup_image_filesystem(vm_dir: Path, config: InitConfig) -> None:
    """An image VM's own root: the image under a copy-on-write layer kept in the VM's dir
    (its disk: it survives a power cycle), /proc, /dev and /sys, the shared host paths, its
    own /etc/hosts and /etc/hostname, read-only /context and a private /run."""
    root = rootfs_dir(vm_dir)
    if not Path(config.image_root, "usr").is_dir():
        raise InitError(f"image {config.image_root} is not a root filesystem (no /usr)")
    _mount("--make-rprivate", "/")
    _mount("-t", "overlay", "overlay", "-o",
           f"lowerdir={config.image_root},upperdir={vm_dir / 'upper'},workdir={vm_dir / 'work'}",
           str(root))
    _mount("-t", "proc", "proc", str(root / "proc"))
    _mount("--rbind", "/dev", str(root / "dev"))
    _mount("--rbind", "/sys", str(root / "sys"))
    for shared in config.shares:
        host_path = Path(shared)
        target = root / shared.lstrip("/")
        if host_path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif host_path.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
        else:
            continue
        _mount("--rbind", shared, str(target))
    add_host_users(root)
    if config.nameserver:
        # the image's resolv.conf names the build host's resolver, which a VM on the bridge
        # cannot reach: every lookup would wait for its timeout (Slurm 24.11 makes several)
        resolv = root / "etc/resolv.conf"
        if resolv.is_symlink():
            resolv.unlink()
        resolv.write_text(f"nameserver {config.nameserver}\n", encoding="ascii")
    for own_file in ("/etc/hosts", "/etc/hostname"):
        # an image need not have them (debootstrap writes no /etc/hosts): the
        # mountpoint is made in the VM's own layer, as contextualization writes the file
        target = root / own_file.lstrip("/")
        if target.is_symlink():
            target.unlink()
        _ensure_mountpoint(target, is_dir=False)
        _mount("--bind", str(private_source(vm_dir, own_file)), str(target))
    (root / "context").mkdir(exist_ok=True)
    _mount("--bind", str(context_dir(vm_dir)), str(root / "context"))
    _mount("-o", "remount,bind,ro", str(root / "context"))
    _mount("-t", "tmpfs", "-o", "mode=0755,nosuid,nodev,size=64m", "tmpfs", str(root / "run"))
    os.makedirs(root / "run/lock", exist_ok=True)
    os.chmod(root / "run/lock", 0o1777)
    os.makedirs(root / "run/one-context", mode=0o700, exist_ok=True)


def add_host_users(root: Path) -> None:
    """The host's ordinary users and groups (ids 1000-65533) added to the image's own files,
    as a cluster's directory service adds them: jobs run as their users in the VM, while the
    image's system accounts (munge, slurm) keep the ids its files are owned by."""
    for name in ("passwd", "group"):
        try:
            host_lines = Path("/etc", name).read_text(encoding="utf-8").splitlines()
            image_file = root / "etc" / name
            image_lines = image_file.read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise InitError(f"cannot merge /etc/{name} into the image: {err}") from err
        known = {line.split(":", 1)[0] for line in image_lines}
        extra = [line for line in host_lines
                 if len(fields := line.split(":")) > 3 and fields[0] not in known
                 and fields[2].isdigit() and 1000 <= int(fields[2]) < 65534]
        if extra:
            with open(image_file, "a", encoding="utf-8") as out:
                out.write("".join(f"{line}\n" for line in extra))


def write_one_env(config: InitConfig, vm_dir: Path) -> None:
    """one-context's env file: the context plus TOKENTXT, readable by root only."""
    values = dict(config.context)
    values["TOKENTXT"] = config.token
    lines = [
        f"export {k}={shell_quote(v)}\n" for k, v in sorted(values.items()) if _ENV_NAME.match(k)
    ]
    fd = os.open(in_guest(config, vm_dir, ONE_ENV_PATH), os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                 0o400)
    with os.fdopen(fd, "w") as env_file:
        env_file.writelines(lines)


def start_script_text(context: dict[str, str]) -> bytes | None:
    """START_SCRIPT_BASE64 decoded, else START_SCRIPT, else None."""
    if context.get("START_SCRIPT_BASE64"):
        try:
            return base64.b64decode(context["START_SCRIPT_BASE64"], validate=True)
        except ValueError as err:
            raise InitError(f"START_SCRIPT_BASE64 is not valid base64: {err}") from err
    if context.get("START_SCRIPT"):
        return context["START_SCRIPT"].encode()
    return None


def guest_environment(context: dict[str, str]) -> dict[str, str]:
    env = {"PATH": GUEST_PATH, "HOME": "/root", "LANG": "C.UTF-8", "USER": "root"}
    env.update({k: v for k, v in context.items() if _ENV_NAME.match(k)})
    return env


def run_start_script(config: InitConfig, vm_dir: Path) -> int | None:
    """Run the start script as root like one-context's net-97-start-script; its exit code.

    In an image VM it runs chrooted in the VM's root, as everything the guest starts."""
    script = start_script_text(config.context)
    if script is None:
        log.info("no START_SCRIPT in the context")
        return None
    fd = os.open(in_guest(config, vm_dir, START_SCRIPT_PATH),
                 os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
    with os.fdopen(fd, "wb") as script_file:
        script_file.write(script)
    argv = [START_SCRIPT_PATH] if script.startswith(b"#!") else ["/bin/sh", START_SCRIPT_PATH]
    log.info("running the start script (%d bytes)", len(script))
    started = time.monotonic()
    guest_root = str(rootfs_dir(vm_dir)) if config.image_root else "/"

    def enter_guest_root() -> None:
        if guest_root != "/":
            os.chroot(guest_root)
            os.chdir("/")

    proc = subprocess.Popen(
        argv, cwd="/", env=guest_environment(config.context), stdin=subprocess.DEVNULL,
        preexec_fn=enter_guest_root,  # the init runs no threads: a preexec chroot is safe
    )
    returncode = proc.wait()
    log.info("start script exited with %d after %.1f s", returncode, time.monotonic() - started)
    return returncode


def report_ready(config: InitConfig) -> bool:
    """``PUT $ONEGATE_ENDPOINT/vm`` with ``READY=YES``, as one-context's net-99 stage does.

    http.client keeps the header names exactly as curl sends them (urllib would rewrite
    them as ``X-onegate-token``).
    """
    context = config.context
    if context.get("REPORT_READY", "").upper() != "YES":
        return False
    endpoint = context.get("ONEGATE_ENDPOINT", "")
    if not endpoint or not config.token:
        log.warning("REPORT_READY=YES but no ONEGATE_ENDPOINT or token (TOKEN=YES missing)")
        return False
    url = urllib.parse.urlsplit(endpoint)
    connection_class = (
        http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    )
    headers = {
        "X-ONEGATE-TOKEN": config.token,
        "X-ONEGATE-VMID": context.get("VMID", str(config.vm_id)),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    for attempt in range(1, READY_ATTEMPTS + 1):
        connection = connection_class(url.netloc, timeout=READY_TIMEOUT_S)
        try:
            connection.request("PUT", url.path.rstrip("/") + "/vm", b"data=READY%3DYES", headers)
            status = connection.getresponse().status
            if 200 <= status < 300:
                log.info("reported READY=YES to %s: HTTP %d", endpoint, status)
                return True
            log.warning("READY report attempt %d/%d: HTTP %d", attempt, READY_ATTEMPTS, status)
        except (OSError, http.client.HTTPException) as err:
            log.warning("READY report attempt %d/%d failed: %s", attempt, READY_ATTEMPTS, err)
        finally:
            connection.close()
        time.sleep(READY_RETRY_DELAY_S)
    log.error("could not report READY=YES to %s", endpoint)
    return False


def reap_forever() -> None:
    """Stay alive as the VM's init, reaping the daemons reparented to us."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
            log.info("process %d exited (wait status %d)", pid, status)
        except ChildProcessError:
            time.sleep(1.0)


PCI_DEVICE_DIR = "/run/testbed-pci"
"""Where a VM finds a device file per PCI device passed to it (``pci<PCI_ID>``)."""


def make_pci_devices(config: InitConfig, vm_dir: Path) -> None:
    """A stand-in device file for each PCI device oned gave the VM (``PCI<n>_ADDRESS`` in its
    context): what a device driver in a real image would create (/dev/nvidia0), so that
    slurmd's gres.conf ``File=`` finds it. Nothing is passed through: the file is a character
    device with /dev/null's numbers, on the VM's private /run (mounted nodev: stat only)."""
    ids = sorted(int(m.group(1)) for key in config.context
                 if (m := re.fullmatch(r"PCI(\d+)_ADDRESS", key)))
    if not ids:
        return
    directory = in_guest(config, vm_dir, PCI_DEVICE_DIR)
    directory.mkdir(mode=0o755, exist_ok=True)
    for pci_id in ids:
        os.mknod(directory / f"pci{pci_id}", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        log.info("PCI device %d at %s: %s", pci_id, config.context[f"PCI{pci_id}_ADDRESS"],
                 directory / f"pci{pci_id}")


def boot(vm_dir: Path, status_fd: int) -> InitConfig:
    """Set the VM up; tell the driver 'ok' or the error on ``status_fd``."""
    try:
        config = InitConfig.load(vm_dir / "init.json")
        _join_cgroup(config.cgroup_procs)
        if config.image_root:
            setup_image_filesystem(vm_dir, config)
        else:
            setup_filesystem(vm_dir)
        socket.sethostname(config.hostname)
        make_pci_devices(config, vm_dir)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise InitError(f"prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}")
    except (InitError, OSError, ValueError, KeyError) as err:
        os.write(status_fd, f"error: {err}\n".encode())
        os.close(status_fd)
        raise
    os.write(status_fd, b"ok\n")
    os.close(status_fd)
    log.info("VM %d up: hostname %s, pid %d", config.vm_id, config.hostname, os.getpid())
    return config


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m vcluster.testbed.cloud.vminit VM_DIR STATUS_FD", file=sys.stderr)
        return 2
    vm_dir, status_fd = Path(args[0]), int(args[1])
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s vminit: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = boot(vm_dir, status_fd)
    except (InitError, OSError, ValueError, KeyError) as err:
        log.error("boot failed: %s", err)
        return 1
    try:
        write_one_env(config, vm_dir)
        run_start_script(config, vm_dir)
    except (InitError, OSError) as err:
        log.error("contextualization failed: %s", err)
    report_ready(config)
    reap_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
