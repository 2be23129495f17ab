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

Everything it logs goes to stderr, which the driver points at the VM's console.log.
"""

from __future__ import annotations

import base64
import ctypes
import http.client
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("vminit")

PRIVATE_DIRS = (
    "/etc/munge",
    "/var/lib/munge",
    "/var/log/munge",
    "/var/spool/slurmd",
    "/var/log/slurm",
)
"""Host directories each VM gets its own writable copy of (bind mounts from the VM's dir)."""

PRIVATE_FILES = ("/etc/hosts", "/etc/hostname", "/var/log/vcluster-join.log")
"""Host files each VM gets its own copy of (bind mounts of files from the VM's dir)."""

CONTEXT_MOUNT = "/context"
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


@dataclass(frozen=True)
class InitConfig:
    """What the driver tells the init (``init.json`` in the VM's directory)."""

    vm_id: int
    hostname: str
    cgroup_procs: str
    context: dict[str, str]
    token: str

    @classmethod
    def load(cls, path: Path) -> InitConfig:
        data = json.loads(path.read_text())
        return cls(
            vm_id=int(data["vm_id"]),
            hostname=str(data["hostname"]),
            cgroup_procs=str(data["cgroup_procs"]),
            context={str(k): str(v) for k, v in data["context"].items()},
            token=str(data["token"]),
        )


def private_source(vm_dir: Path, target: str) -> Path:
    """Where the VM's own copy of host path ``target`` lives in its directory."""
    return vm_dir / "private" / target.lstrip("/")


def context_dir(vm_dir: Path) -> Path:
    return vm_dir / "context"


def shell_quote(value: str) -> str:
    """Single-quote ``value`` for sh the way oned writes context.sh (``'`` as ``'\\''``)."""
    return "'" + value.replace("'", "'\\''") + "'"


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


def write_one_env(config: InitConfig) -> None:
    """one-context's env file: the context plus TOKENTXT, readable by root only."""
    values = dict(config.context)
    values["TOKENTXT"] = config.token
    lines = [
        f"export {k}={shell_quote(v)}\n" for k, v in sorted(values.items()) if _ENV_NAME.match(k)
    ]
    fd = os.open(ONE_ENV_PATH, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
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


def run_start_script(config: InitConfig) -> int | None:
    """Run the start script as root like one-context's net-97-start-script; its exit code."""
    script = start_script_text(config.context)
    if script is None:
        log.info("no START_SCRIPT in the context")
        return None
    fd = os.open(START_SCRIPT_PATH, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
    with os.fdopen(fd, "wb") as script_file:
        script_file.write(script)
    argv = [START_SCRIPT_PATH] if script.startswith(b"#!") else ["/bin/sh", START_SCRIPT_PATH]
    log.info("running the start script (%d bytes)", len(script))
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd="/", env=guest_environment(config.context), stdin=subprocess.DEVNULL
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


def boot(vm_dir: Path, status_fd: int) -> InitConfig:
    """Set the VM up; tell the driver 'ok' or the error on ``status_fd``."""
    try:
        config = InitConfig.load(vm_dir / "init.json")
        _join_cgroup(config.cgroup_procs)
        setup_filesystem(vm_dir)
        socket.sethostname(config.hostname)
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
        write_one_env(config)
        run_start_script(config)
    except (InitError, OSError) as err:
        log.error("contextualization failed: %s", err)
    report_ready(config)
    reap_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
