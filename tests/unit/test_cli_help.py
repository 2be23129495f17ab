"""Every command of ``vcluster`` and ``fsub`` has --help with an example."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from vcluster.cli import cli
from vcluster.cli.fsub import fsub


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
