"""``vcluster usage``: VM-hours, core-hours and cost per job, user, account and class.

A thin command over :mod:`vcluster.usage`: it reads only vcluster's database (never
Slurm or OpenNebula), so it works while either is down.
"""

from __future__ import annotations

import json

import click

from vcluster.cli.status import _config, _console, _open_database


@click.command("usage")
@click.option("--user", metavar="USER", help="Only jobs of this Slurm user.")
@click.option("--account", metavar="ACCOUNT", help="Only jobs of this Slurm account.")
@click.option("--since", metavar="TIME", help="Only usage after TIME: a date (2026-11-01), "
              "a UTC time (2026-11-01T08:00) or a span back from now (7d, 12h, 30m).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (hours to 6 decimals).")
@click.option("--csv", "as_csv", is_flag=True,
              help="Print CSV: by,key,vms,vm_hours,core_hours,cost (one row per job, user, "
              "account, class, and the total).")
@click.pass_context
def usage(ctx: click.Context, user: str | None, account: str | None, since: str | None,
          as_json: bool, as_csv: bool) -> None:
    """Report VM-hours and core-hours per job, user, account and node class.

    A VM counts from OpenNebula's start of it to its end (now if it still runs); core-hours
    are VM-hours times its CPUs; cost is the class's cost_per_hour times VM-hours (shown
    when a class has one). The job's user and account are Slurm's.

    \b
    Example:
      vcluster usage --since 7d
      vcluster usage --account physics --since 2026-11-01 --csv > physics.csv
    """
    from vcluster import db
    from vcluster.usage import build_usage, parse_since, render_usage, usage_to_csv, usage_to_json

    if as_json and as_csv:
        raise click.UsageError("give --json or --csv, not both")
    config = _config(ctx)
    now = db.utcnow()
    since_at = parse_since(since, now) if since else None
    engine = _open_database(config)
    try:
        with db.session_factory(engine)() as session:
            report = build_usage(session, config, now, since=since_at, user=user,
                                 account=account)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(usage_to_json(report), indent=2))
    elif as_csv:
        click.echo(usage_to_csv(report), nl=False)
    else:
        render_usage(report, _console())
