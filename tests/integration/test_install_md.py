"""deploy/INSTALL.md followed as written, on this machine, with the testbed cloud as oned.

The ```sh blocks of sections 2-8 run in order, literally, with bash as root inside a private
mount namespace (tmpfs over /etc/vcluster, /opt/vcluster, /var/lib/vcluster,
/var/log/vcluster, /run/vcluster, /etc/systemd/system, /usr/local/bin, /etc/slurm: the host is
untouched and all of it is gone with the namespace). What cannot run here is replaced by its
documented equivalent, each in EQUIVALENTS below with its reason: OpenNebula's Ruby CLI
(the exact XML-RPC calls of each command form, through pyone), systemctl (the unit's
ExecStart= as its User=), the two edits the guide leaves to the admin, and its one
placeholder, ``<vcluster group id>`` in ``oneacl create`` (the id ``onegroup create`` printed).

The site exists before the guide, as its section 1 assumes: a real munged with Debian's key
(/etc/munge/munge.key, munge's, mode 600) and this machine's slurmctld (SlurmUser=slurm)
reading the site's /etc/slurm/slurm.conf, both started in the namespace (so slurmctld sees
/opt/vcluster/bin and the Include the guide adds) as their Debian units would (munged as
munge, slurmctld as root dropping to SlurmUser); the guide's "restart slurmctld" (section 6,
prose) is a stop and start by PID. The testbed cloud is oned, with netns VMs on a bridge of
this test's own (slot-dependent name and subnet). The one stand-in in the data: the guide's
image is a qcow2 file, which netns VMs cannot boot; the image is registered (by the same
XML-RPC call) with this machine's root directory as its PATH, a Debian with this Slurm,
munge, curl and the ordinary users (see IMAGE_STAND_IN). Section 8 ends with an ordinary
user's ``fsub -N1 --wait --wrap hostname`` (run as that user, in a directory of theirs under
/tmp, which the VMs share) and ``runuser -u slurm -- vcluster status``: the job boots its VM,
completes with exit code 0, fsub prints the guide's lines in the guide's order, its output is
the worker's hostname, ``vcluster events --job N`` tells the story the guide names, and the
VM is DONE after the job (``_check_job``).

On a failure the test prints the logs of vcluster and slurmctld and every VM's console and
join log (a handed-over VM's join runs in the background: its errors are only in
/var/log/vcluster-join.log). Everything it started ends by PID (the controller's session,
slurmctld, munged), the namespace with its bash, the VMs with the cloud fixture.

Not covered: sections 9 and 10 (upgrade, removal); another Slurm than this machine's (the
guide's site is this host's Debian Slurm, not the 24.11 of ``--slurm=other``).
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyone
import pytest

from vcluster.testbed import netns
from vcluster.testbed.cloud.server import CloudServer
from vcluster.testbed.cloud.settings import CloudSettings, NetworkSettings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "deploy" / "INSTALL.md"
PRIVATE_DIRS = ("/etc/vcluster", "/opt/vcluster", "/var/lib/vcluster", "/var/log/vcluster",
                "/run/vcluster", "/etc/systemd/system", "/usr/local/bin", "/etc/slurm",
                "/etc/munge", "/run/munge", "/var/lib/munge", "/var/log/munge",
                "/var/spool/slurmctld", "/var/log/slurm")
_SLOT = int(os.environ.get("VCLUSTER_TEST_SLOT", "0") or "0")
PREFIX = f"vci{_SLOT}"
"""The cloud's netns objects (VM namespaces, veths) and, with ``br``, the bridge."""
BRIDGE = f"{PREFIX}br"
SUBNET_BASE = f"10.{116 + 10 * _SLOT}.0"
"""Apart from the e2e sites' 10.(115+10N).0.0/24."""
GATEWAY = f"{SUBNET_BASE}.1"
SLURMCTLD_PORT = 6918 + 10 * _SLOT
ONEGATE_PORT = 5135 + 10 * _SLOT
JOB_USER = "vcuser"
"""An ordinary user of this machine (uid >= 1000), the one the e2e tests submit as."""
IMAGE_STAND_IN = "/"
"""The image's PATH: netns VMs boot a root directory (an overlay on it), not a qcow2 file;
this machine's root has the Slurm slurmctld runs, munge, curl and the ordinary users."""
ADMIN_AUTH = f"oneadmin:{uuid.uuid4().hex}"
WORKER = "vc-small-001"
"""The node of the guide's one class that the job gets, and the VM's hostname."""
JOB_TIMEOUT_S = 240
"""fsub --wait's bound here: a VM boot, slurmd's registration and the job take seconds."""
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
        out: list[str] = []
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
    # onegroup create: Group#create = Group#allocate(name), then create_default_acls:
    # "@<id> VM+IMAGE+TEMPLATE+DOCUMENT+SECGROUP+VROUTER+VMGROUP+BACKUPJOB/* CREATE *"
    s = r.one(env)
    gid = s.group.allocate(argv[0])
    s.acl.addrule(*acl_parse_rule(f"@{gid} VM+IMAGE+TEMPLATE+DOCUMENT+SECGROUP+VROUTER+"
                                  "VMGROUP+BACKUPJOB/* CREATE *"))


ACL_USERS = {"#": 0x100000000, "@": 0x200000000, "*": 0x400000000, "%": 0x800000000}
ACL_RESOURCES = {name: 0x1000000000 << i for i, name in enumerate(
    ("VM", "HOST", "NET", "IMAGE", "USER", "TEMPLATE", "GROUP"))}
ACL_RESOURCES.update({name: 0x100000000000 << i for i, name in enumerate(
    ("DATASTORE", "CLUSTER", "DOCUMENT", "ZONE", "SECGROUP", "VDC", "VROUTER", "MARKETPLACE",
     "MARKETPLACEAPP", "VMGROUP", "VNTEMPLATE"))})
ACL_RESOURCES["BACKUPJOB"] = 0x100000000000000
ACL_RIGHTS = {"USE": 1, "MANAGE": 2, "ADMIN": 4, "CREATE": 8}


def _acl_ids(text: str) -> int:
    """acl.rb's calculate_ids: #<id>, @<id>, %<id> or *, else "ID string ... malformed"."""
    if not re.fullmatch(r"[#@%]\d+|\*", text):
        raise ValueError(f"ID string '{text}' malformed")
    return ACL_USERS[text[0]] + (int(text[1:]) if text != "*" else 0)


def _acl_resources(text: str) -> int:
    types, sep, ids = text.partition("/")
    if not sep or "/" in ids:
        parts = ", ".join(f'"{p}"' for p in text.split("/"))
        raise ValueError(f"Resource '[{parts}]' malformed")  # a Ruby Array in the text
    total = 0
    for name in types.split("+"):
        if name.upper() not in ACL_RESOURCES:
            raise ValueError(f"Resource '{name}' does not exist")
        total += ACL_RESOURCES[name.upper()]
    return total + _acl_ids(ids)


def _acl_rights(text: str) -> int:
    total = 0
    for name in text.split("+"):
        if name.upper() not in ACL_RIGHTS:
            raise ValueError(f"Right '{name}' does not exist")
        total += ACL_RIGHTS[name.upper()]
    return total


def acl_parse_rule(rule: str) -> list[str]:
    """OpenNebula::Acl.parse_rule (src/oca/ruby/opennebula/acl.rb): "USER RESOURCES RIGHTS
    [ZONE]" to the hex strings of one.acl.addrule; no zone: Acl#allocate sends ""."""
    words = rule.split()
    assert len(words) in (3, 4), "String needs three components: User, Resource, Rights"
    parsers = (_acl_ids, _acl_resources, _acl_rights, _acl_ids)
    values, errors = [], []
    for parse, word in zip(parsers, words, strict=False):
        try:
            values.append(format(parse(word), "x"))
        except ValueError as exc:
            errors.append(str(exc))
    assert not errors, ", ".join(errors)
    return values + [""] * (4 - len(values))


def oneacl_create(r: Run, env: dict[str, str], argv: list[str]) -> None:
    """oneacl create "RULE": Acl.parse_rule, then one.acl.addrule. The guide's
    ``<vcluster group id>``: the id ``onegroup create vcluster`` printed (ID: N), which
    ``onegroup show vcluster`` shows too (the rule takes ids only, not names)."""
    assert len(argv) == 1, argv
    s = r.one(env)
    gid = _id(s, s.grouppool.info, "GROUP", "vcluster")
    rule = argv[0].replace("<vcluster group id>", str(gid))
    r.output[f"oneacl create {argv[0]}"] = f"ID: {s.acl.addrule(*acl_parse_rule(rule))}"


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
    assert opts["path"].endswith(".qcow2"), opts
    text = f'NAME = "{opts["name"]}"\nPATH = "{IMAGE_STAND_IN}"\n'  # see IMAGE_STAND_IN
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
    "oneacl create": (oneacl_create, "the same"),
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
            f'controller_host = "{GATEWAY}:{SLURMCTLD_PORT}"\n'
            '[controller]\ncluster_name = "vcinstall"\ninterval_s = 2\n'
            f'join_address = "{GATEWAY}:6830"\n'
            '[[node_class]]\nname = "small"\ncount = 2\ncpus = 1\nmemory_mb = 512\n'
            'template = "vcluster-worker"\n')


def existing_slurm_conf() -> str:
    """The site's slurm.conf before vcluster: Debian's paths, SlurmUser=slurm, slurmctld on
    this machine at the bridge's address (the VMs' way to it)."""
    host = socket.gethostname().split(".")[0]
    return "\n".join([
        "ClusterName=site", f"SlurmctldHost={host}({GATEWAY})", f"SlurmctldPort={SLURMCTLD_PORT}",
        "SlurmdPort=6818", "SlurmUser=slurm", "AuthType=auth/munge", "CredType=cred/munge",
        "StateSaveLocation=/var/spool/slurmctld",
        "SlurmctldPidFile=/var/spool/slurmctld/slurmctld.pid",
        "SlurmctldLogFile=/var/log/slurm/slurmctld.log", "SlurmdSpoolDir=/var/spool/slurmd",
        "SlurmdLogFile=/var/log/slurm/slurmd.log", "SlurmdPidFile=/run/slurmd.pid",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none", "MpiDefault=none", "MailProg=/bin/true",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
        "SchedulerParameters=batch_sched_delay=0,sched_interval=5", "ReturnToService=2",
        "DefMemPerCPU=100", "SlurmdParameters=config_overrides",
        "NodeName=site-node-1 CPUs=1 State=FUTURE",  # the site's own nodes and partition
        "PartitionName=batch Nodes=site-node-1 Default=YES State=UP", ""])


def start_munge(r: Run) -> None:
    """Debian's munge before the guide: its key (mode 600, munge's) and munged as munge."""
    r.shell.run("chown munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge && "
                "chmod 700 /etc/munge /var/lib/munge /var/log/munge && "
                "mungekey --create --keyfile=/etc/munge/munge.key && "
                "chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key")
    r.shell.run("runuser -u munge -- /usr/sbin/munged")
    r.pids.append(int(r.shell.run("cat /run/munge/munged.pid").strip()))


def start_slurmctld(r: Run) -> int:
    """slurmctld as its unit starts it (as root; it becomes SlurmUser), until it answers."""
    r.shell.run("chown slurm:slurm /var/spool/slurmctld /var/log/slurm && slurmctld")
    ping = r.shell.run("for i in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && "
                       "break; sleep 0.3; done; scontrol ping", check=False)
    assert " is UP" in ping, ping + r.shell.run("tail -n 20 /var/log/slurm/slurmctld.log",
                                                check=False)
    pid = int(r.shell.run("cat /var/spool/slurmctld/slurmctld.pid").strip())
    r.pids.append(pid)
    return pid


def stop(pid: int) -> None:
    """SIGTERM to one process we started, then SIGKILL after 10 s."""
    try:
        os.kill(pid, 15)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


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


def run_as_user(r: Run, work: Path, command: str) -> str:
    """Section 8's ``fsub`` as an ordinary user would type it, in a directory of theirs
    (the VMs see /tmp, so the job's output lands there), bounded in time."""
    return r.shell.run(f"cd {work} && timeout {JOB_TIMEOUT_S} runuser -u {JOB_USER} -- "
                       f"env HOME={work} {command}; echo \"fsub exit $?\"", check=False)


def vm_logs(cloud: CloudServer) -> str:
    """The worker VMs' console and join logs (live and archived), for a failure's report."""
    state = cloud.settings.state_dir
    found = sorted(state.glob("vm*/console.log")) + sorted(state.glob("vm*/upper/var/log/"
                                                                       "vcluster-join.log"))
    found += sorted(state.glob("logs/*"))
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-4000:]}" for p in found)


def write(r: Run, path: str, text: str) -> None:
    r.shell.run(f"cat > {path} <<'VCLUSTER_EOF'\n{text}VCLUSTER_EOF")


# --- the test ------------------------------------------------------------------------------

@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[CloudServer]:
    """The testbed cloud with netns VMs on this test's bridge; its state on a tmpfs, since
    an image VM's overlay (upper layer in the state dir) cannot lie on the root it covers."""
    if os.geteuid() != 0:
        pytest.skip("INSTALL.md runs as root")
    state = tmp_path / "cloud"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=700", "vcluster-install-cloud",
                    str(state)], check=True)
    server = None
    try:
        netns.cleanup_prefix(f"{PREFIX}-", bridge=BRIDGE)  # a killed run's leftovers
        netns.ensure_bridge(BRIDGE, f"{GATEWAY}/24")
        server = CloudServer(CloudSettings(
            state_dir=state, driver="netns", prefix=PREFIX, port=0, onegate_host=GATEWAY,
            onegate_port=ONEGATE_PORT, auth=ADMIN_AUTH, hosts=1,
            network=NetworkSettings(name="vcluster", bridge=BRIDGE,
                                    subnet=f"{SUBNET_BASE}.0/24")))
        server.start()
        yield server
    finally:
        if server is not None:
            server.stop()
            server.driver.cleanup_stale(set())  # every VM: its processes, netns, cgroup
        netns.cleanup_prefix(f"{PREFIX}-", bridge=BRIDGE)
        subprocess.run(["umount", "-l", str(state)], check=False)


def test_install_md_as_written(cloud: CloudServer) -> None:
    if os.geteuid() != 0:
        pytest.skip("INSTALL.md runs as root")
    created: list[str] = []
    shell = NamespaceShell(REPO, created)
    r = Run(shell, cloud.endpoint)
    try:  # the guide's ordinary user: section 1's site has users
        pwd.getpwnam(JOB_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", JOB_USER], check=True)
    work = Path(tempfile.mkdtemp(prefix="vcluster-install-", dir="/tmp"))  # VMs share /tmp
    shutil.chown(work, JOB_USER, JOB_USER)
    guide = GUIDE.read_text(encoding="utf-8")
    try:
        try:
            start_munge(r)
            write(r, "/etc/slurm/slurm.conf", existing_slurm_conf())
            ctld = start_slurmctld(r)
            for first, last in ((2, 6), (7, 8)):
                for block in sh_blocks(guide, first, last):
                    for command in commands(block):
                        if "vcluster doctor" in command:
                            r.output["doctor"] = shell.run(command, check=False)
                        elif command.startswith("fsub "):
                            r.output["fsub"] = run_as_user(r, work, command)
                        else:
                            dispatch(r, command)
                if last == 6:  # "new node definitions need a restart of slurmctld"
                    stop(ctld)
                    ctld = start_slurmctld(r)
            _check(r)
            _check_status(r)
            _check_job(r, work)
            _check_old_template(r)
        except Exception:
            try:  # what went wrong, for the report; the original error is what is raised
                print(shell.run("tail -n 30 /var/log/vcluster/*.log /var/log/slurm/*.log",
                                check=False))
                print(vm_logs(cloud))
            except (AssertionError, OSError) as err:
                print(f"(no logs: {err})")
            raise
    finally:
        for pid in reversed(r.pids):  # controller (its session), slurmctld, munged
            try:
                os.killpg(pid, 15)
            except (ProcessLookupError, PermissionError):
                pass
            stop(pid)
        shell.close()  # the namespace, and its tmpfs mounts, end with its bash
        for d in created:
            os.rmdir(d)  # the empty mount points this test made on the host
        shutil.rmtree(work, ignore_errors=True)


def _check(r: Run) -> None:
    transcript = "\n".join(r.shell.transcript)
    assert "600 slurm /etc/vcluster/one_auth" in transcript
    assert "600 slurm /etc/vcluster/munge.key" in transcript
    hooks = next(v for k, v in r.output.items() if k.startswith("grep -E '^(Resume"))
    assert sorted(line.split("=")[0] for line in hooks.split()) == sorted(HOOKS)
    for line in hooks.split():  # the guide's hook front, built for its Python's hooks
        assert line.split("=")[1].startswith("/opt/vcluster/libexec/vcluster-"), hooks
    doctor = r.output["doctor"]
    assert doctor.splitlines() and all(line.startswith("ok") for line in
                                       doctor.splitlines()), doctor
    assert "ok    network of vcluster-worker: network 'vcluster'" in doctor, doctor
    assert "ok    vcluster-worker: exists" in doctor or "exists (id" in doctor, doctor
    _check_acls(r)


def _check_acls(r: Run) -> None:
    """The guide's ACLs as oned lists them, and the rights they give drain-host: the
    vcluster user sees the hosts and may set a host's status (enabling the enabled host
    changes nothing)."""
    s = r.one({})
    gid = _id(s, s.grouppool.info, "GROUP", "vcluster")
    rules = [a.STRING for a in s.acl.info().ACL]
    for rule in (f"@{gid} VM+IMAGE+TEMPLATE+DOCUMENT+SECGROUP+VROUTER+VMGROUP+BACKUPJOB/* "
                 "CREATE *", f"@{gid} HOST/* USE+MANAGE+ADMIN #0", f"@{gid} VM/@{gid} ADMIN #0"):
        assert rule in rules, rules
    me = r.one({"ONE_AUTH": "/etc/vcluster/one_auth"})
    hosts = [int(h.ID) for h in s.hostpool.info().HOST]
    assert [int(h.ID) for h in me.hostpool.info().HOST] == hosts
    assert me.host.status(hosts[0], 0) == hosts[0]


def _check_status(r: Run) -> None:
    """Section 8's promise for ``vcluster status`` as the controller's user."""
    status = r.output["runuser -u slurm -- vcluster status"]
    assert re.search(r"controller: running \(.*pid \d+.*\), heartbeat \d+s ago", status), status


def _check_job(r: Run, work: Path) -> None:
    """Section 8's promise for the ordinary user's job: fsub's lines in the guide's order
    (a stage shorter than fsub's one-second poll may not show, as the guide says), the job
    completed with exit code 0, its output the worker's hostname, the story in ``vcluster
    events``, and the VM terminated after the job."""
    out = r.output["fsub"]
    lines = out.splitlines()
    assert lines and re.fullmatch(r"Submitted batch job \d+", lines[0]), out
    n = lines[0].split()[-1]
    stages = [rf"job {n}: queued( \((Priority|Resources)\))?",
              rf"job {n}: booting VMs \([01]/1 ready\)", rf"job {n}: running on {WORKER}",
              rf"job {n}: completing", rf"job {n}: completed, exit code 0"]
    reached = 0
    for line in lines[1:-1]:
        stage = next((i for i, s in enumerate(stages) if re.fullmatch(s, line)), None)
        assert stage is not None and stage >= reached, f"unexpected line {line!r}:\n{out}"
        reached = stage
    assert lines[-1] == "fsub exit 0" and lines[-2] == f"job {n}: completed, exit code 0", out
    assert any(re.fullmatch(stages[1], line) for line in lines), out  # the prolog waits
    assert (work / f"slurm-{n}.out").read_text().strip() == WORKER, out
    events = r.shell.run(f"runuser -u slurm -- vcluster events --job {n}")
    for kind in ("hook.prolog", "hook.resume", "job.nodes_up", "hook.epilog",
                 "vm.terminated"):
        assert kind in events, events
    assert "vm.allocated" in events or all(
        k in events for k in ("vm.early_booted", "vm.standby_claimed", "node.addr")), events
    admin = r.one({})  # as oneadmin: `onevm list` of every VM, DONE included
    deadline = time.monotonic() + 60
    while True:
        vms = [vm for vm in admin.vmpool.infoextended(-2, -1, -1, -2).VM or []
               if (vm.USER_TEMPLATE or {}).get("VCLUSTER_NODE") == WORKER]
        if (vms and all(vm.STATE == 6 for vm in vms)) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(vms) == 1 and vms[0].STATE == 6, (  # DONE: terminated after its job
        f"the worker's VM is not terminated after the job: "
        f"{[(vm.ID, vm.STATE, vm.LCM_STATE) for vm in vms]}\n{events}")


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
