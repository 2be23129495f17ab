"""deploy/INSTALL.md followed as written, on this machine, with the testbed cloud as oned.

The ```sh blocks of sections 2-8 run in order, literally, with bash as root inside a private
mount namespace (tmpfs over /etc/vcluster, /opt/vcluster, /var/lib/vcluster,
/var/log/vcluster, /run/vcluster, /etc/systemd/system, /usr/local/bin, /etc/slurm: the host is
untouched and all of it is gone with the namespace). What cannot run here is replaced by its
documented equivalent, each in EQUIVALENTS below with its reason: OpenNebula's Ruby CLI
(the exact XML-RPC calls of each command form, through pyone), systemctl (the unit's
ExecStart= as its User=), and the two edits the guide leaves to the admin.

Not covered yet (see the report of branch ``install``): a real slurmctld in the namespace
(so the doctor's ``slurm`` line and ``fsub --wait`` at the end are not run here), sections 9
and 10 (upgrade, removal).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyone
import pytest

from vcluster.testbed.cloud.server import CloudServer
from vcluster.testbed.cloud.settings import CloudSettings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "deploy" / "INSTALL.md"
PRIVATE_DIRS = ("/etc/vcluster", "/opt/vcluster", "/var/lib/vcluster", "/var/log/vcluster",
                "/run/vcluster", "/etc/systemd/system", "/usr/local/bin", "/etc/slurm")
ADMIN_AUTH = f"oneadmin:{uuid.uuid4().hex}"
HOOKS = ("ResumeProgram", "SuspendProgram", "ResumeFailProgram", "PrologSlurmctld",
         "EpilogSlurmctld")


# --- the guide's commands ----------------------------------------------------------------

def sh_blocks(text: str, first: int, last: int) -> list[str]:
    """The ```sh blocks of sections ``first``..``last`` (## N.), in order, dedented."""
    blocks: list[str] = []
    section = 0
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        heading = re.match(r"## (\d+)\. ", lines[i])
        if heading:
            section = int(heading.group(1))
        fence = re.match(r"^( *)```sh\s*$", lines[i])
        if fence:
            indent = len(fence.group(1))
            body = []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i][indent:])
                i += 1
            if first <= section <= last:
                blocks.append("\n".join(body) + "\n")
        i += 1
    return blocks


def commands(block: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, a heredoc kept whole; comment
    and empty lines dropped."""
    out: list[str] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\") or line.rstrip().endswith("||"):
            line = line + "\n" + lines[i]
            i += 1
        here = re.search(r"<<'?(\w+)'?", line)
        if here:
            while lines[i] != here.group(1):
                line += "\n" + lines[i]
                i += 1
            line += "\n" + lines[i]
            i += 1
        out.append(line)
    return out


# --- the namespace's shell -------------------------------------------------------------------

class NamespaceShell:
    """One bash in a private mount namespace; commands run one at a time, as root."""

    def __init__(self, cwd: Path, created: list[str]) -> None:
        setup = []
        for d in PRIVATE_DIRS:
            if not os.path.isdir(d):
                os.makedirs(d)  # a mount point; removed again when the test ends
                created.append(d)
            setup.append(f"mount -t tmpfs -o mode=755 vcluster-install {shlex.quote(d)}")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "bash", "--noprofile",
             "--norc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, cwd=cwd,
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "HOME": "/root", "LANG": "C.UTF-8"})
        self.transcript: list[str] = []
        for line in setup + ["set -o pipefail"]:
            self.run(line)

    def run(self, command: str, *, check: bool = True) -> str:
        marker = f"__rc_{uuid.uuid4().hex}__"
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{{\n{command}\n}} </dev/null\necho \"{marker}$?\"\n")
        self.proc.stdin.flush()
        out = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"the namespace's bash ended running {command!r}: "
                                     + "".join(out))
            if line.startswith(marker):
                rc = int(line[len(marker):])
                break
            out.append(line)
        text = "".join(out)
        self.transcript.append(f"$ {command}\n{text}[exit {rc}]")
        if check and rc != 0:
            raise AssertionError(f"INSTALL.md command failed ({rc}): {command}\n{text}")
        return text

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- equivalents of what cannot run here ----------------------------------------------------

@dataclass
class Run:
    shell: NamespaceShell
    endpoint: str
    pids: list[int] = field(default_factory=list)
    output: dict[str, str] = field(default_factory=dict)

    def session(self, env: dict[str, str]) -> str:
        """ONE_AUTH=FILE: that file's user:password (read in the namespace); none: the
        admin's ~/.one/one_auth, oneadmin's."""
        if "ONE_AUTH" in env:
            return self.shell.run(f"cat {shlex.quote(env['ONE_AUTH'])}").strip()
        return ADMIN_AUTH

    def one(self, env: dict[str, str]) -> pyone.OneServer:
        return pyone.OneServer(self.endpoint, session=self.session(env))


def _id(server: pyone.OneServer, pool: Callable[[], object], element: str, name: str) -> int:
    """How the CLI turns a NAME argument into an id: the pool, by NAME (OpenNebulaHelper
    #rname_to_id over a pool info)."""
    if name.isdigit():
        return int(name)
    found = [int(o.ID) for o in (getattr(pool(), element) or []) if o.NAME == name]
    assert len(found) == 1, f"{name!r}: {len(found)} {element} of that name"
    return found[0]


def _mode_bits(octal: str) -> list[int]:
    """OpenNebulaHelper's octet to the nine chmod parameters (u, m, a per digit)."""
    return [int(bool(int(d) & b)) for d in octal for b in (4, 2, 1)]


def _options(argv: list[str]) -> dict[str, str]:
    return {argv[i].lstrip("-"): argv[i + 1] for i in range(len(argv) - 1)
            if argv[i].startswith("--")}


def onegroup_create(r: Run, env: dict[str, str], argv: list[str]) -> None:
    r.one(env).group.allocate(argv[0])  # onegroup.rb create: Group#allocate(name)


def oneuser_create(r: Run, env: dict[str, str], argv: list[str]) -> None:
    r.one(env).user.allocate(argv[0], argv[1], "", [])  # User#allocate(u, p, driver, [])


def oneuser_chgrp(r: Run, env: dict[str, str], argv: list[str]) -> None:
    s = r.one(env)
    uid = _id(s, s.userpool.info, "USER", argv[0])
    gid = _id(s, s.grouppool.info, "GROUP", argv[1])
    s.user.chgrp(uid, gid)


def onevnet_chgrp(r: Run, env: dict[str, str], argv: list[str]) -> None:
    s = r.one(env)
    vid = _id(s, lambda: s.vnpool.info(-2, -1, -1), "VNET", argv[0])
    s.vn.chown(vid, -1, _id(s, s.grouppool.info, "GROUP", argv[1]))


def onevnet_chmod(r: Run, env: dict[str, str], argv: list[str]) -> None:
    s = r.one(env)
    s.vn.chmod(_id(s, lambda: s.vnpool.info(-2, -1, -1), "VNET", argv[0]),
               *_mode_bits(argv[1]))


def oneimage_create(r: Run, env: dict[str, str], argv: list[str]) -> None:
    opts = _options(argv)
    # oneimage create builds the template from --name/--path and looks the datastore up by
    # name (one.datastorepool.info); the testbed's one datastore is "default", id 1
    assert opts["datastore"] == "default", opts
    text = f'NAME = "{opts["name"]}"\nPATH = "{opts["path"]}"\n'
    r.one(env).image.allocate(text, 1, False)


def onetemplate_create(r: Run, env: dict[str, str], argv: list[str]) -> None:
    text = r.shell.run(f"cat {shlex.quote(argv[0])}")  # the file, read in the namespace
    r.one(env).template.allocate(text)


def onetemplate_chmod(r: Run, env: dict[str, str], argv: list[str]) -> None:
    s = r.one(env)
    tid = _id(s, lambda: s.templatepool.info(-2, -1, -1), "VMTEMPLATE", argv[0])
    s.template.chmod(tid, *_mode_bits(argv[1]))


def systemctl(r: Run, env: dict[str, str], argv: list[str]) -> None:
    if argv == ["daemon-reload"]:
        return  # no systemd here: the unit file is read directly by enable --now below
    assert argv[:2] == ["enable", "--now"], argv
    unit = r.shell.run(f"cat /etc/systemd/system/{argv[2]}.service")
    keys: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys.setdefault(key.strip(), []).append(value.strip())
    user = keys["User"][0]
    for key in ("StateDirectory", "LogsDirectory", "RuntimeDirectory"):
        base = {"StateDirectory": "/var/lib", "LogsDirectory": "/var/log",
                "RuntimeDirectory": "/run"}[key]
        mode = keys.get(f"{key}Mode", ["0755"])[0]
        r.shell.run(f"install -d -m {mode} -o {user} -g {keys['Group'][0]} "
                    f"{base}/{keys[key][0]}")
    environment = " ".join(shlex.quote(e) for e in keys.get("Environment", []))
    pid = r.shell.run(
        f"setsid runuser -u {user} -- env {environment} {keys['ExecStart'][0]} "
        f">/var/log/vcluster/unit-stdout.log 2>&1 & echo $!").strip()
    r.pids.append(int(pid))
    # Type=simple: systemctl returns at once; the admin then reads the journal (the next
    # lines of the guide). Here: wait for the controller's first heartbeat, or its end.
    r.shell.run(f"for i in $(seq 150); do test -s /run/vcluster/status.json && break; "
                f"kill -0 {pid} || break; sleep 0.2; done", check=False)


EQUIVALENTS: dict[str, tuple[Callable[[Run, dict[str, str], list[str]], None], str]] = {
    "onegroup create": (onegroup_create, "OpenNebula's Ruby CLI is not installable here"),
    "oneuser create": (oneuser_create, "the same"),
    "oneuser chgrp": (oneuser_chgrp, "the same"),
    "onevnet chgrp": (onevnet_chgrp, "the same (onevnet chgrp = one.vn.chown(id, -1, gid))"),
    "onevnet chmod": (onevnet_chmod, "the same"),
    "oneimage create": (oneimage_create, "the same"),
    "onetemplate create": (onetemplate_create, "the same"),
    "onetemplate chmod": (onetemplate_chmod, "the same"),
    "systemctl daemon-reload": (systemctl, "no systemd here: nothing to reload"),
    "systemctl enable": (systemctl, "no systemd here: the unit's ExecStart= as its User="),
}


def site_config(endpoint: str) -> str:
    """Step 5's edit of /etc/vcluster/vcluster.toml for this site (the guide says what to
    set, not a command): the cloud's endpoint, one class on the guide's template."""
    return (f'[opennebula]\nxmlrpc = "{endpoint}"\nauth_file = "/etc/vcluster/one_auth"\n'
            '[slurm]\npartitions = ["vcluster"]\nmunge_key_file = "/etc/vcluster/munge.key"\n'
            '[controller]\ncluster_name = "vcinstall"\n'
            '[[node_class]]\nname = "small"\ncount = 2\ncpus = 1\nmemory_mb = 512\n'
            'template = "vcluster-worker"\n')


EXISTING_SLURM_CONF = "ClusterName=site\nSlurmctldHost=localhost\nSlurmUser=slurm\n"
"""The site's slurm.conf before vcluster (no slurmctld runs in this test, see the top)."""


def dispatch(r: Run, command: str) -> None:
    words = shlex.split(command.split("#", 1)[0]) if not command.startswith("cat ") else []
    env: dict[str, str] = {}
    while words and re.match(r"^[A-Z_]+=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    form = " ".join(words[:2])
    if words and (words[0].startswith("one") or words[0] == "systemctl"):
        if form not in EQUIVALENTS:
            raise AssertionError(f"INSTALL.md uses {form!r}, which this test has no "
                                 "equivalent for: add its XML-RPC calls to EQUIVALENTS")
        handler, _reason = EQUIVALENTS[form]
        handler(r, env, words[2:] if words[0] != "systemctl" else words[1:])
        return
    command = command.replace("/path/to/vcluster", str(REPO))  # the checkout under test
    r.output[command] = r.shell.run(command)
    if command.startswith("install -m 644 deploy/vcluster.toml.example"):
        write(r, "/etc/vcluster/vcluster.toml", site_config(r.endpoint))  # "then edit it"


def write(r: Run, path: str, text: str) -> None:
    r.shell.run(f"cat > {path} <<'VCLUSTER_EOF'\n{text}VCLUSTER_EOF")


# --- the test ------------------------------------------------------------------------------

@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[CloudServer]:
    server = CloudServer(CloudSettings(state_dir=tmp_path / "cloud", port=0, onegate_port=0,
                                       auth=ADMIN_AUTH, hosts=1))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_install_md_as_written(cloud: CloudServer) -> None:
    if os.geteuid() != 0:
        pytest.skip("INSTALL.md runs as root")
    created: list[str] = []
    shell = NamespaceShell(REPO, created)
    r = Run(shell, cloud.endpoint)
    try:
        write(r, "/etc/slurm/slurm.conf", EXISTING_SLURM_CONF)
        for block in sh_blocks(GUIDE.read_text(encoding="utf-8"), 2, 8):
            for command in commands(block):
                if command.startswith("runuser -u slurm -- vcluster status") or \
                        command.startswith("fsub "):
                    continue  # need slurmctld: not in this test yet (see the top)
                if "vcluster doctor" in command:
                    r.output["doctor"] = shell.run(command, check=False)
                    continue
                dispatch(r, command)
        try:
            _check(r)
            _check_old_template(r)
        except AssertionError:
            print(shell.run("tail -n 30 /var/log/vcluster/*.log", check=False))
            raise
    finally:
        for pid in r.pids:  # the controller: its session (setsid), by PID
            try:
                os.killpg(pid, 15)
                for _ in range(100):
                    os.killpg(pid, 0)
                    time.sleep(0.1)
                os.killpg(pid, 9)
            except ProcessLookupError:
                pass
        shell.close()  # the namespace, and its tmpfs mounts, end with its bash
        for d in created:
            os.rmdir(d)  # the empty mount points this test made on the host


def _check(r: Run) -> None:
    transcript = "\n".join(r.shell.transcript)
    assert "600 slurm /etc/vcluster/one_auth" in transcript
    assert "600 slurm /etc/vcluster/munge.key" in transcript
    hooks = next(v for k, v in r.output.items() if k.startswith("grep -E '^(Resume"))
    assert sorted(line.split("=")[0] for line in hooks.split()) == sorted(HOOKS)
    for line in hooks.split():  # the hooks of the Python that ran slurm-conf: the guide's
        assert line.split("=")[1].startswith("/opt/vcluster/bin/vcluster-"), hooks
    doctor = r.output["doctor"]
    bad = [line for line in doctor.splitlines()
           if not line.startswith("ok") and not line.startswith("FAIL  slurm:")]
    assert not bad, doctor
    assert "ok    network of vcluster-worker: network 'vcluster'" in doctor, doctor
    assert "ok    vcluster-worker: exists" in doctor or "exists (id" in doctor, doctor


def _check_old_template(r: Run) -> None:
    """The old guide's template: NIC NETWORK without NETWORK_UNAME, network oneadmin's."""
    old = r.shell.run("sed -e 's/vcluster-worker\"/vcluster-old\"/' -e "
                      "'s/, NETWORK_UNAME = \"oneadmin\"//' /etc/vcluster/vcluster-worker.tpl")
    me = r.one({"ONE_AUTH": "/etc/vcluster/one_auth"})
    tid = me.template.allocate(old)
    r.shell.run("sed -i 's/template = \"vcluster-worker\"/template = \"vcluster-old\"/' "
                "/etc/vcluster/vcluster.toml")
    doctor = r.shell.run("runuser -u slurm -- env VCLUSTER_CONFIG=/etc/vcluster/vcluster.toml"
                         " /opt/vcluster/bin/vcluster doctor", check=False)
    assert ("FAIL  network of vcluster-old: its NIC names network 'vcluster' without "
            "NETWORK_UNAME, and user 'vcluster' owns no network of that name (oneadmin "
            "does); add NETWORK_UNAME=\"oneadmin\" to the NIC in the template") in doctor, doctor
    with pytest.raises(pyone.OneException) as refused:
        me.template.instantiate(tid, "", False, "", False)
    assert str(refused.value) == (
        "[one.template.instantiate] Error allocating a new virtual machine template. User 2 "
        "does not own a network with name: vcluster . Set NETWORK_UNAME or NETWORK_UID of "
        "owner in NIC.")
