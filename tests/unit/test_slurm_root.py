"""The other Slurm's root: how its commands are run, which release is "the other", its version."""

from __future__ import annotations

from pathlib import Path

import pytest

from vcluster.testbed import slurm_root
from vcluster.testbed.slurm_root import SlurmRoot

ROOT = "/var/cache/vcluster-testbed/roots/trixie"

DPKG_STATUS = """Package: slurm-client
Status: deinstall ok config-files
Version: 22.05.8-4

Package: slurmctld
Status: install ok installed
Version: 24.11.5-4+deb13u1

Package: slurm-client
Status: install ok installed
Version: 24.11.5-4+deb13u1
"""


def test_the_hosts_slurm_runs_commands_unchanged() -> None:
    host = SlurmRoot("/")
    assert host.is_host and host.plugin_dir == ""
    assert host.client_argv(["squeue", "--json"]) == ["squeue", "--json"]
    assert host.daemon_argv(["slurmctld", "-c"], ["/srv"]) == ["slurmctld", "-c"]


def test_a_roots_clients_run_with_its_own_loader_and_libraries() -> None:
    argv = SlurmRoot(ROOT).client_argv(["squeue", "--json"])
    assert argv[:2] == [f"{ROOT}/lib64/ld-linux-x86-64.so.2", "--library-path"]
    assert argv[2].split(":")[0] == f"{ROOT}/usr/lib/x86_64-linux-gnu/slurm-wlm"
    assert argv[3:] == ["--argv0", "squeue", f"{ROOT}/usr/bin/squeue", "--json"]
    assert SlurmRoot(ROOT).plugin_dir == f"{ROOT}/usr/lib/x86_64-linux-gnu/slurm-wlm"


def test_a_roots_daemons_run_chrooted_in_a_private_mount_namespace() -> None:
    argv = SlurmRoot(ROOT).daemon_argv(["slurmctld", "-c"], ["/srv/state", "/etc/passwd"])
    assert argv[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert argv[4:6] == ["sh", str(slurm_root.IN_ROOT_SCRIPT)]
    assert argv[6:] == [ROOT, "/srv/state", "/etc/passwd", "--", "slurmctld", "-c"]
    assert slurm_root.IN_ROOT_SCRIPT.is_file()


def test_version_comes_from_the_installed_package(tmp_path: Path) -> None:
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(DPKG_STATUS)
    assert SlurmRoot(str(tmp_path)).version() == "24.11.5"
    assert slurm_root.package_version(tmp_path, "slurmd") == ""
    assert SlurmRoot(str(tmp_path / "nothing")).version() == ""
    assert not slurm_root.is_complete(tmp_path)  # no marker: an interrupted build
    (tmp_path / slurm_root.DONE_MARKER).write_text("trixie\n")
    assert slurm_root.is_complete(tmp_path)


@pytest.mark.parametrize(("host", "other"), [("bookworm", "trixie"), ("trixie", "bookworm"),
                                             ("", "trixie")])
def test_the_other_release_is_the_one_the_host_is_not(host: str, other: str) -> None:
    assert slurm_root.other_suite(host) == other
    assert slurm_root.SUITE_SLURM[other] in ("22.05", "24.11")


def test_an_unknown_release_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    with pytest.raises(slurm_root.SlurmRootError, match="unknown Debian release 'sid'"):
        slurm_root.build("sid", tmp_path / "root")
    assert not (tmp_path / "root").exists()


def test_client_wrappers_exec_the_roots_commands(tmp_path: Path) -> None:
    bin_dir = slurm_root.write_client_wrappers(SlurmRoot(ROOT), tmp_path / "bin")
    text = (bin_dir / "sbatch").read_text()
    assert text.startswith("#!/bin/sh\n")
    assert f"exec {ROOT}/lib64/ld-linux-x86-64.so.2 --library-path " in text
    assert text.rstrip().endswith(f'--argv0 sbatch {ROOT}/usr/bin/sbatch "$@"')
    assert (bin_dir / "scontrol").stat().st_mode & 0o755 == 0o755
