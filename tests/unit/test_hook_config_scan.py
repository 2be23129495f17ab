"""The hook programs read where the controller's socket and their log are without tomllib:
the line scan must agree with tomllib on every file it reads, and hand anything unusual to
tomllib (the scan says None)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from vcluster.hook_client import hook_dirs, scan_hook_keys
from vcluster.testbed.site_spec import SiteSpec, site_config_text

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "vcluster.toml.example"


def by_tomllib(text: str) -> dict[str, str]:
    controller = tomllib.loads(text).get("controller", {})
    return {k: v for k, v in controller.items() if k in ("state_dir", "log_dir", "log_to")}


PLAIN = [
    '[controller]\nstate_dir = "/var/lib/vcluster"\nlog_dir = "/var/log/vcluster"\n',
    "[controller]\nstate_dir = '/srv/vc'   # a literal string\nlog_to = \"file\"\n",
    '# a comment naming state_dir\n[database]\nurl = "sqlite:////x/state_dir.db"\n'
    '[controller]\ncluster_name = "log_dir"\nstate_dir="/s"\n[[node_class]]\nname = "a"\n',
    '[opennebula]\nretry_delays_s = [1, 2, 5]\n[controller]\nlog_dir = "/l"\n',
    '[ controller ]\nstate_dir = "/spaced"\n',
    '[controller]\nstate_dir = "/a"\n[controller.metrics]\nlisten = "127.0.0.1:9"\n',
    "",
]


@pytest.mark.parametrize("text", PLAIN)
def test_the_scan_agrees_with_tomllib(text: str) -> None:
    assert scan_hook_keys(text) == by_tomllib(text)


def test_the_example_config_and_the_testbeds_are_read_by_the_scan(tmp_path: Path) -> None:
    example = EXAMPLE.read_text()
    assert scan_hook_keys(example) == by_tomllib(example)
    spec = SiteSpec(name="vcscan", subnet="10.250.0.0/24", state_dir=str(tmp_path / "state"))
    text = site_config_text(spec)
    assert (scan := scan_hook_keys(text)) is not None and scan == by_tomllib(text)
    assert scan["state_dir"]


UNUSUAL = [
    '[controller]\nstate_dir = """/multi\nline"""\n',  # a multi-line string
    'controller.state_dir = "/dotted"\n',  # a dotted key at the top level
    'controller = { state_dir = "/inline" }\n',  # an inline table
    '[controller]\n"state_dir" = "/quoted"\n',  # a quoted key
    '[controller]\nstate_dir = "/esc\\u0041ped"\n',  # an escape
    '[controller]\nstate_dir = "/a"\nstate_dir = "/b"\n',  # repeated (tomllib refuses)
    '[controller]\nnodes = [\n  "a",\n]\nstate_dir = "/after"\n',  # a multi-line array
    '[[controller]]\nstate_dir = "/array"\n',  # an array of tables
    '[controller.state_dir]\nx = 1\n',  # the key as a table
    '[controller]\nstate_dir = 5\n',  # not a string
]


@pytest.mark.parametrize("text", UNUSUAL)
def test_unusual_files_go_to_tomllib(text: str) -> None:
    assert scan_hook_keys(text) is None


def test_hook_dirs_falls_back_to_tomllib_and_says_none_for_a_broken_file(
        tmp_path: Path) -> None:
    config = tmp_path / "vcluster.toml"
    config.write_text('controller.state_dir = "/dotted"\ncontroller.log_to = "file"\n')
    assert hook_dirs(str(config)) == ("/dotted", "/var/log/vcluster", "file")
    config.write_text('[controller]\nstate_dir = """/a"""\nlog_dir = [\n')
    assert hook_dirs(str(config)) is None
    config.write_text('[controller]\nstate_dir = "/plain"\n')
    assert hook_dirs(str(config)) == ("/plain", "/var/log/vcluster", "auto")


def test_a_hook_imports_neither_tomllib_nor_typing_for_a_plain_config(tmp_path: Path) -> None:
    """What the scan is for: the program slurmctld runs does not pay for tomllib's and
    typing's imports (about 5 ms of its 15 ms of imports)."""
    config = tmp_path / "vcluster.toml"
    config.write_text(f'[controller]\nstate_dir = "{tmp_path}"\nlog_dir = "{tmp_path}"\n'
                      'log_to = "file"\n')
    package_dir = str(Path(hook_dirs.__code__.co_filename).resolve().parents[1])
    probe = (f"import sys; sys.path.insert(0, {package_dir!r}); "  # -S: not site's imports
             "from vcluster import hook_client; "
             f"print(hook_client.hook_dirs({str(config)!r})); "
             "print('tomllib' in sys.modules, 'typing' in sys.modules)")
    out = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0] == repr((str(tmp_path), str(tmp_path), "file"))
    assert out[1] == "False False"
