"""Build the hook front: Slurm's hook programs as one small C program (``hookfront/``).

Why it exists: in a burst of 1,000 jobs slurmctld runs 1,000 ``vcluster-prolog`` programs on
the controller host within seconds, and each Python hook spends about 25 ms of CPU starting
the interpreter and importing before it sends its one line; the C front does the same in
about 1 ms and hands anything unusual to the Python hook of the same kind (see the comment
at the top of ``hookfront/hook_front.c``). The front is built on the controller host (a C
compiler is all it needs) into a directory that slurm.conf then names::

    vcluster hook-front --out /usr/local/libexec/vcluster
    vcluster slurm-conf --program-dir /usr/local/libexec/vcluster

This module writes the header that gives the C program the Python side's constants (paths,
protocol version, bounds, exit codes, where the Python hooks are), compiles it with an argv
list (no shell) and links one name per hook to it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from vcluster import hook_client, hook_wire, journal, paths
from vcluster.errors import UserInputError
from vcluster.slurmconf import default_program_dir

FRONT_NAME = "vcluster-hook-front"
HOOK_NAMES = ("vcluster-resume", "vcluster-suspend", "vcluster-resume-fail", "vcluster-prolog",
              "vcluster-epilog", "vcluster-job-finished")
CFLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra")
BUILD_ID_PREFIX = "vcluster hook front build "
"""Before the build id in the program (its ``vc_build_id``), where :func:`built_from_this`
finds it."""


def c_string(text: str) -> str:
    """``text`` as a C string literal (printable ASCII only: paths are refused otherwise)."""
    if not text.isascii() or not text.isprintable():
        raise UserInputError(f"{text!r}: the hook front takes printable ASCII paths only")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_header(python_dir: str, *, record_answer_s: float = hook_wire.RECORD_ANSWER_S,
                  final_margin_s: float = hook_wire.FINAL_ANSWER_MARGIN_S,
                  journal_socket: str = journal.JOURNAL_SOCKET,
                  syslog_socket: str = journal.SYSLOG_SOCKET) -> str:
    """``hook_front_config.h``: the constants the C program shares with the Python hooks
    (the bounds and log sockets are parameters for tests only)."""
    defines = {
        "VC_PYTHON_DIR": c_string(python_dir),
        "VC_DEFAULT_CONFIG": c_string(paths.DEFAULT_CONFIG_PATH),
        "VC_DEFAULT_STATE_DIR": c_string(paths.DEFAULT_STATE_DIR),
        "VC_DEFAULT_LOG_DIR": c_string(paths.DEFAULT_LOG_DIR),
        "VC_SOCKET_NAME": c_string(paths.HOOK_SOCKET_NAME),
        "VC_PROTOCOL_VERSION": str(hook_wire.PROTOCOL_VERSION),
        "VC_MAX_LINE_BYTES": str(hook_wire.MAX_LINE_BYTES),
        "VC_RECORD_ANSWER_S": repr(float(record_answer_s)),
        "VC_FINAL_ANSWER_MARGIN_S": repr(float(final_margin_s)),
        "VC_AFTER_FAILED_SEND_S": repr(float(hook_wire.AFTER_FAILED_SEND_S)),
        "VC_DUPLICATE_TRIGGER": c_string(hook_client.DUPLICATE_TRIGGER),
        "VC_JOURNAL_SOCKET": c_string(journal_socket),
        "VC_SYSLOG_SOCKET": c_string(syslog_socket),
        "VC_EXIT_OK": str(hook_wire.EXIT_OK),
        "VC_EXIT_CONFIG": str(hook_wire.EXIT_CONFIG),
        "VC_EXIT_FAILED": str(hook_wire.EXIT_FAILED),
    }
    lines = ["/* Written by vcluster.hook_front: the Python side's constants. */"]
    lines += [f"#define {name} {value}" for name, value in defines.items()]
    return "\n".join(lines) + "\n"


def find_compiler(cc: str | None = None) -> str:
    """The C compiler: ``cc``, else $CC, else cc or gcc on PATH; refuses in one line."""
    for candidate in (cc, os.environ.get("CC"), "cc", "gcc"):
        if candidate and (found := shutil.which(candidate)):
            return found
    raise UserInputError("no C compiler found (cc or gcc): install one (Debian: apt-get "
                         "install gcc) or keep slurm.conf on the Python hooks")


def build(out_dir: str | os.PathLike[str], *, python_dir: str | None = None,
          cc: str | None = None, record_answer_s: float = hook_wire.RECORD_ANSWER_S,
          final_margin_s: float = hook_wire.FINAL_ANSWER_MARGIN_S,
          journal_socket: str = journal.JOURNAL_SOCKET,
          syslog_socket: str = journal.SYSLOG_SOCKET) -> Path:
    """Compile the front into ``out_dir`` and link each hook's name to it; return the dir.

    ``python_dir`` holds the Python hooks the front hands unusual cases to (default: where
    pip installed vcluster's programs). The program is built beside its final name and moved
    there, so a slurmctld running hooks meanwhile never sees half a file.
    """
    python_dir = os.path.abspath(python_dir or default_program_dir())
    missing = [n for n in HOOK_NAMES if not os.access(os.path.join(python_dir, n), os.X_OK)]
    if missing:
        raise UserInputError(f"{python_dir} has no {missing[0]}: give the directory of the "
                             "installed vcluster programs with --python-dir")
    compiler = find_compiler(cc)
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    header = config_header(python_dir, record_answer_s=record_answer_s,
                           final_margin_s=final_margin_s, journal_socket=journal_socket,
                           syslog_socket=syslog_socket)
    source = _source()
    header += f'#define VC_BUILD_ID "{BUILD_ID_PREFIX}{build_id(header, source)}"\n'
    stamp = out / f".{FRONT_NAME}.sha256"
    digest = hashlib.sha256("\0".join((header, compiler, *CFLAGS)).encode() + source).hexdigest()
    if not ((out / FRONT_NAME).is_file() and stamp.is_file() and stamp.read_text() == digest):
        _compile(compiler, header, source, out)
        stamp.write_text(digest)
    for name in HOOK_NAMES:
        link = out / name
        if link.is_symlink() and os.readlink(link) == FRONT_NAME:
            continue
        staged = out / f".{name}.{os.getpid()}"
        staged.unlink(missing_ok=True)
        staged.symlink_to(FRONT_NAME)
        os.replace(staged, link)
    return out


def _source() -> bytes:
    return (resources.files("vcluster") / "hookfront" / "hook_front.c").read_bytes()


def build_id(header: str, source: bytes) -> str:
    """What a front is built from: its C source and the Python side's constants (the
    compiler and its flags aside, which change no behaviour)."""
    return hashlib.sha256(header.encode() + b"\0" + source).hexdigest()[:20]


def built_from_this(front: str, python_dir: str) -> bool:
    """Whether the front at ``front`` was built from this vcluster's source and constants
    for the Python hooks in ``python_dir``: one built by an earlier vcluster (not rebuilt
    after an upgrade, as deploy/INSTALL.md says to) speaks an older version of the hooks."""
    expected = BUILD_ID_PREFIX + build_id(config_header(os.path.abspath(python_dir)),
                                          _source())
    try:
        with open(os.path.realpath(front), "rb") as f:
            binary = f.read(4 * 1024 * 1024)
    except OSError:
        return False
    return expected.encode() + b"\0" in binary


def _compile(compiler: str, header: str, source: bytes, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="vcluster-hook-front.") as tmp:
        (Path(tmp) / "hook_front_config.h").write_text(header, encoding="ascii")
        (Path(tmp) / "hook_front.c").write_bytes(source)
        built = out / f".{FRONT_NAME}.{os.getpid()}"
        argv = [compiler, *CFLAGS, "-I", tmp, "-o", str(built), str(Path(tmp) / "hook_front.c")]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            built.unlink(missing_ok=True)
            first = (done.stderr.strip().splitlines() or ["no output"])[0]
            raise UserInputError(f"{compiler} could not build the hook front: {first}")
        os.chmod(built, 0o755)
        os.replace(built, out / FRONT_NAME)


def find_front(path: str, installed: str) -> str | None:
    """The hook front link that ``path`` runs (``path`` itself, or the program a wrapper
    script at ``path`` execs) if it is a front built for the Python hooks in
    ``installed``; else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    wrapped = re.search(rb"\nexec (\S+) ", head) if head.startswith(b"#!") else None
    target = wrapped.group(1).decode(errors="replace").strip("'\"") if wrapped else path
    real = os.path.realpath(target)
    if (os.path.basename(real) != FRONT_NAME
            or os.path.basename(target) != os.path.basename(path)):
        return None
    try:
        with open(real, "rb") as f:
            binary = f.read(4 * 1024 * 1024)
    except OSError:
        return None
    return target if os.path.abspath(installed).encode() + b"\0" in binary else None


def job_finished_dir(slurm_conf: str, installed: str) -> str:
    """Where the controller's strigger backup finds ``vcluster-job-finished``: beside the
    hook front slurm.conf's PrologSlurmctld runs, if it is this vcluster's; else the Python
    hooks in ``installed``."""
    from vcluster.doctor import read_slurm_conf

    try:
        prolog = read_slurm_conf(slurm_conf).get("prologslurmctld", "")
    except (OSError, UnicodeDecodeError):
        return installed
    found = find_front(prolog, installed) if prolog else None
    return os.path.dirname(found) if found else installed
