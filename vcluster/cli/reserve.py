"""``vcluster reserve``: advance reservations, admitted at once against the cloud's capacity.

A thin click layer over :mod:`vcluster.reserve`: it reads the cloud's hosts, admits or
refuses the wish with its reason, creates the Slurm reservation, prints what the user needs
to submit into it, and wakes the controller (which boots the VMs ahead of the start).
"""

from __future__ import annotations

import re
import sys
from datetime import datetime, timedelta

import click

from vcluster.cli.admin import _echo_json, _one, _slurm, _wake
from vcluster.cli.status import _config, _open_database

_UNITS_S = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration_s(text: str) -> int:
    """``90s``, ``10m``, ``2h``, ``1d``, ``HH:MM:SS`` or plain minutes."""
    text = text.strip()
    if m := re.fullmatch(r"(\d+)(s|m|min|h|d)?", text):
        return int(m.group(1)) * _UNITS_S[m.group(2) or "m"]
    if m := re.fullmatch(r"(\d+):(\d\d):(\d\d)", text):
        return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3))
    raise click.BadParameter(f"{text!r}: give e.g. 30m, 2h, 90s or HH:MM:SS")


def parse_start(text: str, now: datetime) -> datetime:
    """``now``, ``+2m`` (from now), or an ISO time (local time if it has no zone)."""
    text = text.strip()
    if text == "now":
        return now
    if text.startswith("+"):
        return now + timedelta(seconds=parse_duration_s(text[1:]))
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: give now, +10m or 2026-12-24T09:00") from None
    return (t if t.tzinfo else t.astimezone()).astimezone(now.tzinfo)


def _line(r: dict[str, object]) -> str:
    def hm(key: str) -> str:
        return datetime.fromisoformat(str(r[key])).astimezone().strftime("%Y-%m-%d %H:%M:%S")

    return (f"{r['id']:>4} {r['slurm_name']:<16} {r['state']:<9} {r['node_class']:<10} "
            f"{r['node_count']:>3} {r['nodes'] or '-':<24} {hm('start')}  {hm('end')}  "
            f"{float(str(r['lead_s'])):>5.0f}")


@click.group("reserve", invoke_without_command=True)
@click.option("--start", "start_text", metavar="T", help="now, +10m, or 2026-12-24T09:00.")
@click.option("--duration", "duration_text", metavar="D", help="30m, 2h, 90s or HH:MM:SS.")
@click.option("-N", "--nodes", "count", type=click.IntRange(min=1), help="How many nodes.")
@click.option("--vm-class", "class_name", metavar="CLASS", help="The node class.")
@click.option("--users", default=None, help="Who may submit into it (default: you).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def reserve(ctx: click.Context, start_text: str | None, duration_text: str | None,
            count: int | None, class_name: str | None, users: str | None,
            as_json: bool) -> None:
    """Reserve N nodes of a class from T for D, or refuse at once with the reason.

    The reservation is admitted only if its VMs fit on OpenNebula's hosts next to the
    other reservations then; its VMs are booted ahead (by the class's measured boot times)
    so that its nodes are working at T. Submit into it with `sbatch --reservation=NAME`; at
    its end its VMs are terminated.

    \b
    Example:
      vcluster reserve --start +2m --duration 30m -N 2 --vm-class small
      vcluster reserve list
      vcluster reserve cancel 3
    """
    if ctx.invoked_subcommand is not None:
        return
    missing = [opt for opt, v in (("--start", start_text), ("--duration", duration_text),
                                  ("-N", count), ("--vm-class", class_name)) if v is None]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or use list / cancel ID)")
    assert start_text and duration_text and count and class_name
    from vcluster import admin, db
    from vcluster import reserve as lib

    config = _config(ctx)
    nc = config.node_class(class_name)
    now = db.utcnow()
    start = parse_start(start_text, now)
    if start < now - timedelta(seconds=60):
        raise click.BadParameter(f"{start_text!r} is in the past", param_hint="--start")
    start = max(start, now)
    end = start + timedelta(seconds=parse_duration_s(duration_text))
    hosts = _one(config).host_capacities()
    engine = _open_database(config)
    try:
        made = lib.make(db.session_factory(engine), _slurm(config), config, hosts, nc, count,
                        start, end, users or admin.admin_name(), now=now)
    finally:
        engine.dispose()
    if made.accepted:
        _wake(config)
    if as_json:
        _echo_json(made.reservation)
    elif made.accepted:
        r = made.reservation
        click.echo(f"reservation {r['id']} accepted: {r['nodes']} from "
                   f"{start.astimezone():%Y-%m-%d %H:%M:%S} to {end.astimezone():%H:%M:%S}; "
                   f"VMs boot {float(str(r['lead_s'])):.0f} s ahead; submit with "
                   f"sbatch --reservation={r['slurm_name']}")
    else:
        click.echo(f"reservation {made.reservation['id']} {made.reason}", err=True)
    if not made.accepted:
        sys.exit(1)


@reserve.command("list")
@click.option("--all", "all_", is_flag=True, help="Ended, cancelled and refused ones too.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_(ctx: click.Context, all_: bool, as_json: bool) -> None:
    """List reservations (open ones unless --all).

    \b
    Example:
      vcluster reserve list --all --json
    """
    from vcluster import db
    from vcluster import reserve as lib

    config = _config(ctx)
    engine = _open_database(config)
    try:
        rows = lib.listing(db.session_factory(engine), all_=all_)
    finally:
        engine.dispose()
    if as_json:
        _echo_json({"reservations": rows})
        return
    click.echo("  ID NAME             STATE     CLASS        N NODES                    "
               "START                END                  LEAD")
    for r in rows:
        click.echo(_line(r))


@reserve.command("cancel")
@click.argument("reservation_id", type=int, metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def cancel(ctx: click.Context, reservation_id: int, as_json: bool) -> None:
    """Cancel a reservation: Slurm's is deleted and its VMs are terminated.

    A reservation jobs wait or run in is not cancelled (Slurm deletes no reservation in
    use, and ending it now would kill the running ones): the refusal names the jobs.

    \b
    Example:
      vcluster reserve cancel 3
    """
    from vcluster import db
    from vcluster import reserve as lib

    config = _config(ctx)
    engine = _open_database(config)
    try:
        row = lib.cancel(db.session_factory(engine), _slurm(config), reservation_id,
                         now=db.utcnow())
    finally:
        engine.dispose()
    _wake(config)
    if as_json:
        _echo_json(row)
    else:
        click.echo(f"reservation {reservation_id} cancelled")
