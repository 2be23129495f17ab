"""What users and admins read: every command's --help has an example, and the example
config (deploy/vcluster.toml.example) loads and documents every key vcluster reads."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from vcluster.cli import cli
from vcluster.cli.fsub import fsub
from vcluster.config import (
    ControllerSettings,
    DatabaseSettings,
    NodeClass,
    OpenNebulaSettings,
    SlurmSettings,
    load_config,
)


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
        elif command is not None:
            paths.append((*prefix, name))
    return paths


ALL_COMMANDS = command_paths(cli)


def test_the_walk_finds_the_user_facing_commands() -> None:
    assert {("status",), ("events",), ("slurm-conf",), ("testbed",)} <= set(ALL_COMMANDS)


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(("vcluster", *p)))
def test_vcluster_help_has_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="vcluster")
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout, f"`vcluster {' '.join(path)} --help` shows no example"
    example = result.stdout.split("Example", 1)[1]
    assert "vcluster " in example, "the example should show the command being run"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_fsub_help_has_an_example(flag: str) -> None:
    result = CliRunner().invoke(fsub, [flag], prog_name="fsub")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        "Usage: fsub [SBATCH OPTIONS] [--vm-class NAME] [--vm-template NAME] [--wait]")
    assert "Example:\n    fsub -N2 --mem=4G --vm-template ubuntu --wait job.sh\n" in result.stdout


EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "vcluster.toml.example"
SECTIONS = {"opennebula": OpenNebulaSettings, "slurm": SlurmSettings,
            "database": DatabaseSettings, "controller": ControllerSettings,
            "node_class": NodeClass}


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE, environ={})
    assert [nc.name for nc in config.node_classes] == ["small", "big"]
    assert config.node_class("small").allowed_templates == (
        "vcluster-worker", "vcluster-worker-gpu-drivers")


@pytest.mark.parametrize("section", list(SECTIONS))
def test_example_config_documents_every_key(section: str) -> None:
    text = EXAMPLE.read_text()
    header = f"[[{section}]]" if section == "node_class" else f"[{section}]"
    body = text.split(f"\n{header}\n", 1)[1]
    body = re.split(r"^\[", body, maxsplit=1, flags=re.M)[0]
    documented = set(re.findall(r"^#? ?([a-z_]+) =", body, flags=re.M))
    keys = {f.name for f in dataclasses.fields(SECTIONS[section])}
    assert keys - documented == set(), f"[{section}] keys missing from {EXAMPLE.name}"
