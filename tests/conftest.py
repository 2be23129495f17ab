"""Shared pytest wiring: ``--integration`` selects the tests that run real daemons."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--integration",
        action="store_true",
        default=False,
        help="also run integration tests (real slurmctld, slurmd, munge, testbed cloud; root)",
    )
    _add_slurm_option(parser)


def _add_slurm_option(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slurm",
        default="host",
        choices=("host", "other", "both"),
        help="which Slurm the end-to-end tests run against: the host's (Debian 12: 22.05), "
             "the other Debian release's from a debootstrapped root (24.11 on Debian 12, 22.05 "
             "on Debian 13), or both, one after the other",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests that use the end-to-end site run once per Slurm that ``--slurm`` asks for."""
    if "slurm_flavor" not in metafunc.fixturenames:
        return
    choice = metafunc.config.getoption("--slurm")
    flavors = {"host": ["host"], "other": ["other"], "both": ["host", "other"]}[choice]
    if choice == "both" and metafunc.definition.get_closest_marker("one_slurm") is not None:
        flavors = ["host"]  # keeps the whole run within CI's time: see the marker's help
    metafunc.parametrize("slurm_flavor", flavors, indirect=True, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--integration"):
        return
    skip = pytest.mark.skip(reason="integration test: run with --integration")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)
