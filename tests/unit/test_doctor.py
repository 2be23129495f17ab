"""vcluster doctor: one line per check, what to do on each failure, exit 1 on a failure.

The command runs against a fake oned over real XML-RPC, a scontrol script, a slurm.conf and
hook programs in a temporary directory, and a real SQLite database.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.unit.fake_oned import FakeOned, vnet_xml
from tests.unit.test_status import serving
from vcluster import db, hook_front, hook_wire
from vcluster.cli import cli
from vcluster.config import load_config
from vcluster.doctor import cannot_run
from vcluster.slurmconf import PROGRAM_NAMES, default_program_dir

CONFIG = """
[opennebula]
xmlrpc = "{one_url}"
auth_file = "{tmp}/one_auth"
retry_delays_s = []

[slurm]
bin_dir = "{tmp}/bin"
conf = "{tmp}/slurm.conf"
munge_key_file = "{tmp}/munge.key"

[database]
url = "sqlite:///{tmp}/state.db"

[[node_class]]
name = "small"
count = 2
cpus = 2
memory_mb = 2000
template = "worker"
templates = ["ubuntu"]
"""

NIC = "<NIC><NETWORK><![CDATA[vcnet]]></NETWORK>{extra}</NIC>"


class Oned(FakeOned):
    """The site's oned: templates worker (0) and ubuntu (1), network vcnet of oneadmin."""

    def __init__(self) -> None:
        super().__init__(session="vcluster:secret")
        self.templates = {0: "worker", 1: "ubuntu"}
        self.template_bodies = {
            0: NIC.format(extra="<NETWORK_UNAME><![CDATA[oneadmin]]></NETWORK_UNAME>"),
            1: NIC.format(extra="")}
        self.vnets = [vnet_xml(0, "vcnet", "oneadmin", 20, 3)]


@pytest.fixture()
def oned() -> Iterator[Oned]:
    with serving(Oned()) as fake:
        assert isinstance(fake, Oned)
        yield fake


@pytest.fixture()
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, oned: Oned) -> Path:
    (tmp_path / "bin").mkdir()
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.write_text("#!/bin/sh\necho 'slurm 24.11.5'\n")
    scontrol.chmod(0o755)
    (tmp_path / "one_auth").write_text("vcluster:secret\n")
    key = tmp_path / "munge.key"
    key.write_bytes(b"k" * 1024)
    key.chmod(0o600)
    installed = Path(default_program_dir())
    (tmp_path / "slurm.conf").write_text("ClusterName=test\nSlurmUser=root\n" + "".join(
        f"{key}={installed / name}\n" for key, name in PROGRAM_NAMES.items()))
    path = tmp_path / "vcluster.toml"
    path.write_text(CONFIG.format(tmp=tmp_path, one_url=oned.url))
    monkeypatch.setenv("VCLUSTER_CONFIG", str(path))
    db.upgrade(load_config(path, environ={}).database.url)
    return tmp_path


def doctor(*args: str) -> Result:
    return CliRunner().invoke(cli, ["doctor", *args], prog_name="vcluster")


def test_what_a_site_admin_sees(site: Path) -> None:
    result = doctor()
    installed = Path(default_program_dir())
    assert result.stdout.splitlines() == [
        f"ok    database: schema {db.HEAD_REVISION} at sqlite:///{site}/state.db",
        "ok    slurm: Slurm 24.11.5 (supported)",
        "ok    opennebula: OpenNebula 7.4.0 (supported), user vcluster",
        "ok    template worker: exists (id 0, class small, 1 NIC)",
        "ok    network of worker: network 'vcnet' (id 0): 17 of 20 leases free",
        "ok    template ubuntu: exists (id 1, class small, 1 NIC)",
        "FAIL  network of ubuntu: its NIC names network 'vcnet' without NETWORK_UNAME, and "
        "user 'vcluster' owns no network of that name (oneadmin does); add "
        'NETWORK_UNAME="oneadmin" to the NIC in the template',
        *(f"ok    hook {key}: {installed / name}" for key, name in PROGRAM_NAMES.items()),
        f"ok    munge key: {site}/munge.key readable (1024 bytes, mode 600)",
    ]
    assert result.exit_code == 1


def test_every_check_passing_exits_zero_and_json_says_so(site: Path, oned: Oned) -> None:
    oned.templates.pop(1)
    (site / "vcluster.toml").write_text(
        (site / "vcluster.toml").read_text().replace('templates = ["ubuntu"]\n', ""))
    result = doctor("--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True
    assert {c["status"] for c in data["checks"]} == {"ok"}


def test_full_network_missing_template_and_open_munge_key(site: Path, oned: Oned) -> None:
    oned.vnets = [vnet_xml(0, "vcnet", "oneadmin", 20, 20)]
    oned.templates.pop(1)
    (site / "munge.key").chmod(0o644)
    out = doctor().stdout.splitlines()
    assert ("FAIL  network of worker: network 'vcnet' has no free lease (20 of 20 used); add "
            "an address range (onevnet addar)") in out
    assert ("FAIL  template ubuntu: OpenNebula has no VM template named 'ubuntu' that user "
            "'vcluster' can use; create it or fix node_class.template (class small, "
            "node_class[0].templates)") in out
    assert out[-1] == (f"warn  munge key: {site}/munge.key is mode 644: others can read it; "
                       f"chmod 600 {site}/munge.key")


def test_hooks_slurmuser_cannot_run_or_that_are_not_vclusters(site: Path) -> None:
    hooks = site / "hooks"  # under pytest's private temp dir: closed to nobody
    hooks.mkdir()
    for name in PROGRAM_NAMES.values():
        (hooks / name).write_text("#!/bin/sh\n")
        (hooks / name).chmod(0o755)
    lines = ["ClusterName=test", "SlurmUser=nobody",
             f"ResumeProgram={hooks / 'vcluster-resume'}",
             "SuspendProgram=/usr/local/sbin/my-suspend",
             f"ResumeFailProgram={site / 'gone' / 'vcluster-resume-fail'}",
             f"Include {site / 'more.conf'}"]
    (site / "slurm.conf").write_text("\n".join(lines) + "\n")
    (site / "more.conf").write_text(f"PrologSlurmctld={hooks / 'vcluster-prolog'}\n")
    out = [line for line in doctor().stdout.splitlines() if line.split()[1] == "hook"]
    closed = next(str(p) for p in reversed(hooks.parents) if not open_to_others(p))
    fix = "run `vcluster slurm-conf` and merge its {} line into slurm.conf"
    assert out == [
        f"FAIL  hook ResumeProgram: SlurmUser nobody cannot run {hooks}/vcluster-resume: "
        f"{closed} is closed to it; install vcluster where it can (e.g. a venv under /opt) "
        "and rerun `vcluster slurm-conf`",
        "FAIL  hook SuspendProgram: slurm.conf runs /usr/local/sbin/my-suspend, not "
        f"vcluster's vcluster-suspend; {fix.format('SuspendProgram')}",
        f"FAIL  hook ResumeFailProgram: {site}/gone/vcluster-resume-fail does not exist; "
        f"{fix.format('ResumeFailProgram')}",
        f"FAIL  hook PrologSlurmctld: SlurmUser nobody cannot run {hooks}/vcluster-prolog: "
        f"{closed} is closed to it; install vcluster where it can (e.g. a venv under /opt) "
        "and rerun `vcluster slurm-conf`",
        f"FAIL  hook EpilogSlurmctld: not set in slurm.conf; {fix.format('EpilogSlurmctld')}",
    ]


def open_to_others(directory: Path) -> bool:
    mode = directory.stat().st_mode
    return bool(mode & 0o001)


def test_a_hook_elsewhere_is_ok_if_it_wraps_this_vclusters_else_a_warning(site: Path) -> None:
    installed = f"{default_program_dir()}/vcluster-epilog"
    wrapper = site / "wrappers" / "vcluster-epilog"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\nexport VCLUSTER_CONFIG=/x\nexec {installed} \"$@\"\n")
    wrapper.chmod(0o755)
    conf = site / "slurm.conf"
    conf.write_text(conf.read_text() + f"EpilogSlurmctld={wrapper}\n")
    assert (f"ok    hook EpilogSlurmctld: {wrapper} (a wrapper of {installed})"
            in doctor().stdout.splitlines())
    wrapper.write_text("#!/bin/sh\nexec /opt/other/vcluster-epilog \"$@\"\n")
    out = doctor().stdout.splitlines()
    assert (f"warn  hook EpilogSlurmctld: slurm.conf runs {wrapper}, this vcluster's is "
            f"{default_program_dir()}/vcluster-epilog; if that is not a wrapper of it, run "
            "`vcluster slurm-conf` and merge its EpilogSlurmctld line into slurm.conf") in out


def test_a_hook_run_by_the_c_hook_front_of_this_vcluster_is_ok(site: Path) -> None:
    front = hook_front.build(site / "front", python_dir=default_program_dir())
    other = site / "other-python"
    other.mkdir()
    for name in hook_front.HOOK_NAMES:
        (other / name).write_text("#!/bin/sh\n")
        (other / name).chmod(0o755)
    elsewhere = hook_front.build(site / "front-of-other", python_dir=str(other))
    wrapper = site / "wrappers" / "vcluster-resume"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\nexport PATH=/bin\nexec {front}/vcluster-resume \"$@\"\n")
    wrapper.chmod(0o755)
    conf = site / "slurm.conf"
    # a front left from an earlier vcluster: built from other constants than this one's
    older = hook_front.build(site / "front-older", python_dir=default_program_dir(),
                             record_answer_s=hook_wire.RECORD_ANSWER_S + 1)
    conf.write_text(conf.read_text() + f"EpilogSlurmctld={front}/vcluster-epilog\n"
                    f"ResumeProgram={wrapper}\nPrologSlurmctld={elsewhere}/vcluster-prolog\n"
                    f"SuspendProgram={older}/vcluster-suspend\n")
    out = doctor().stdout.splitlines()
    installed = default_program_dir()
    assert (f"ok    hook EpilogSlurmctld: {front}/vcluster-epilog (the hook front of "
            f"{installed})") in out
    assert (f"ok    hook ResumeProgram: {wrapper} (a wrapper of the hook front of "
            f"{installed})") in out
    assert any(line.startswith(f"warn  hook PrologSlurmctld: slurm.conf runs {elsewhere}/")
               for line in out), out
    assert (f"warn  hook SuspendProgram: {older}/vcluster-suspend (the hook front of "
            f"{installed}) was built from another vcluster than this one: rebuild it with "
            f"`vcluster hook-front --out {older}`") in out


def test_unreachable_sides_fail_with_the_reason(site: Path, oned: Oned) -> None:
    (site / "bin" / "scontrol").write_text("#!/bin/sh\necho 'slurm-wlm 21.08.5'\n")
    (site / "one_auth").write_text("vcluster:wrong\n")
    out = doctor().stdout.splitlines()
    assert out[1] == ("FAIL  slurm: Slurm 21.08.5 is not supported: vcluster supports Slurm "
                      "22.05 and later (tested with 22.05 and 24.11)")
    assert out[2].startswith("FAIL  opennebula: ") and "one_auth" in out[2]
    assert not any(line.split()[1] == "template" for line in out)


def test_cannot_run_names_the_closed_directory(tmp_path: Path) -> None:
    assert cannot_run(sys.executable, "root") == ""
    assert cannot_run("/bin/sh", "nobody") == ""


@pytest.mark.parametrize("return_to_service", ["", "ReturnToService=1\n", "ReturnToService=2\n"])
def test_handover_at_allocation_needs_return_to_service_2(site: Path,
                                                          return_to_service: str) -> None:
    conf = site / "vcluster.toml"
    conf.write_text(conf.read_text().replace('munge_key_file =',
                                             'handover_at_allocation = true\nmunge_key_file ='))
    (site / "slurm.conf").write_text((site / "slurm.conf").read_text() + return_to_service)
    (line,) = [x for x in doctor().stdout.splitlines() if "handover at allocation" in x]
    if return_to_service.endswith("=2\n"):
        assert line == "ok    handover at allocation: ReturnToService=2 in slurm.conf"
    else:
        have = "1" if return_to_service else "none: 1"
        assert line == (
            "FAIL  handover at allocation: [slurm] handover_at_allocation needs "
            f"ReturnToService=2 in slurm.conf (it has {have}), else Slurm marks a node handed "
            'over at allocation DOWN ("Node unexpectedly rebooted"); set ReturnToService=2 or '
            "turn handover_at_allocation off")
