"""``vcluster doctor``: one line per check of the config against the live site.

A thin command over :mod:`vcluster.doctor`; exit status 1 if any check failed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import click

from vcluster.cli.status import _config, _open_database


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check the config against the live Slurm and OpenNebula before a job does.

    Checks: the database is at the current schema; Slurm and OpenNebula are versions
    vcluster drives; every class's templates exist; their NICs' networks can be used by
    vcluster's OpenNebula user and have free leases; slurm.conf's hook programs are
    vcluster's, installed, and runnable by SlurmUser; the munge key is readable and private.
    One line per check says what to do; the exit status is 1 if any check FAILs.

    \b
    Example:
      vcluster doctor
      vcluster doctor --json | jq '.checks[] | select(.status != "ok")'
    """
    from vcluster import db
    from vcluster.doctor import FAIL, run_checks
    from vcluster.one import OneClient
    from vcluster.slurm import Slurm

    config = _config(ctx)

    def database() -> str:
        engine = _open_database(config)
        try:
            return f"schema {db.current_revision(engine)} at {engine.url!r}"
        finally:
            engine.dispose()

    one = OneClient(replace(config.opennebula, retry_delays_s=()))
    checks = run_checks(config, Slurm(config.slurm), one, database)
    failed = any(c.status == FAIL for c in checks)
    if as_json:
        click.echo(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]},
                              indent=2))
    else:
        for c in checks:
            click.echo(f"{c.status:<4}  {c.name}: {c.message}")
    if failed:
        ctx.exit(1)
