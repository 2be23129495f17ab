"""Boot-rate limits: VM allocations go out to oned at a bounded rate, per class and in total.

Why it exists: a burst of a thousand powered-up nodes would otherwise be a thousand
``one.template.instantiate`` calls in one pass, flooding oned and its scheduler. Each limit is
a token bucket (GCRA): ``burst`` allocations may go out at once, then ``rate`` per second,
so a burst of N takes (N - burst) / rate seconds and no longer. The allocations already sent
are in the picture (``Observed.recent_boots``, from the events act records as it sends them,
over the last ``HISTORY_WINDOWS`` bucket lengths), so the limit is a pure function of it.
Each boot gets its slot (:func:`schedule`): now, while the buckets hold tokens, else the
moment they will; boots whose slot is within PACE_S go out in this pass at their slot (act
waits for it: ``not_before_s``), later ones are left out and planned again in a later pass.
Without the pacing a pass sent at most ``burst`` boots, and a pass that took 1.5 s (a
1,000-job burst on a busy controller host) made 200/s, burst 100 into 66/s. Reading only
that history can let through at most ``burst`` more per history length than the rate:
``rate / HISTORY_WINDOWS`` at most. Pure: the picture in, actions out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta

from vcluster.config import Config, NodeClass

PACE_S = 2.0
"""Boots the buckets will hold within this many seconds go out in this pass, each at its
slot; later ones wait for a later pass."""
HISTORY_WINDOWS = 30
"""How many bucket lengths (burst / rate) of sent allocations the limit reads."""
MIN_HISTORY_S = 30.0


def class_limit(nc: NodeClass) -> tuple[float, int] | None:
    """(rate per second, burst) of one class, or None when only the total limit applies."""
    if not nc.boot_rate_per_s:
        return None
    return nc.boot_rate_per_s, nc.boot_burst or max(1, math.ceil(nc.boot_rate_per_s))


def total_limit(config: Config) -> tuple[float, int]:
    return config.controller.boot_rate_per_s, config.controller.boot_burst


def boot_window_s(config: Config) -> float:
    """How far back the limits read sent allocations, seconds."""
    limits = [total_limit(config)] + [
        lim for nc in config.node_classes if (lim := class_limit(nc)) is not None]
    return max(MIN_HISTORY_S, HISTORY_WINDOWS * max(burst / rate for rate, burst in limits))


def _lead_s(limit: tuple[float, int], sent: Iterable[datetime], now: datetime,
            history_s: float) -> float:
    """GCRA: how far the theoretical arrival time after the sends (each 1/rate after the
    later of the previous one's and its own time) is ahead of now, seconds (>= 0)."""
    rate, _ = limit
    start = now - timedelta(seconds=history_s)
    times = sorted(at for at in sent if at > start)
    tat = now
    for i, at in enumerate(times):  # TAT = max over suffixes of (first time + count / rate)
        tat = max(tat, at + timedelta(seconds=(len(times) - i) / rate))
    return (tat - now).total_seconds()


def _allowance(limit: tuple[float, int], sent: Iterable[datetime], now: datetime,
               history_s: float) -> int:
    """``burst - (TAT - now) * rate`` more may go out now."""
    rate, burst = limit
    return max(0, math.floor(burst - _lead_s(limit, sent, now, history_s) * rate + 1e-9))


def _slot_s(limit: tuple[float, int], lead_s: float, index: int) -> float:
    """When the bucket holds the token of its ``index``-th boot from now on (0: now): the
    boots below ``burst - lead * rate`` go now, then one each 1/rate."""
    rate, burst = limit
    return max(0.0, lead_s + (index + 1 - burst) / rate - 1e-9 / rate)


def schedule(config: Config, recent_boots: Iterable[tuple[datetime, str]], now: datetime,
             classes_in_order: Iterable[str], pace_s: float = PACE_S) -> list[float | None]:
    """For each boot (named by its class, in the plan's order): seconds from now when the
    total and its class's buckets hold its token (0.0: now), or None if not within
    ``pace_s`` (it waits for a later pass)."""
    boots = list(recent_boots)
    history_s = boot_window_s(config)
    total = total_limit(config)
    total_lead = _lead_s(total, (at for at, _ in boots), now, history_s)
    per_class: dict[str, tuple[tuple[float, int], float]] = {}
    for nc in config.node_classes:
        lim = class_limit(nc)
        if lim is not None:
            per_class[nc.name] = (lim, _lead_s(lim, (at for at, c in boots if c == nc.name),
                                                now, history_s))
    used: Counter[str] = Counter()
    sent = 0
    slots: list[float | None] = []
    for node_class in classes_in_order:
        slot = _slot_s(total, total_lead, sent)
        if node_class in per_class:
            lim, lead = per_class[node_class]
            slot = max(slot, _slot_s(lim, lead, used[node_class]))
        if slot > pace_s:
            slots.append(None)
            continue
        slots.append(round(slot, 3))
        sent += 1
        used[node_class] += 1
    return slots


def allowances(config: Config, recent_boots: Iterable[tuple[datetime, str]],
               now: datetime) -> tuple[int, dict[str, int]]:
    """How many allocations may go out now: in total, and per class that has a limit."""
    boots = list(recent_boots)
    history_s = boot_window_s(config)
    total = _allowance(total_limit(config), (at for at, _ in boots), now, history_s)
    per_class: dict[str, int] = {}
    for nc in config.node_classes:
        lim = class_limit(nc)
        if lim is not None:
            per_class[nc.name] = _allowance(lim, (at for at, c in boots if c == nc.name), now,
                                            history_s)
    return total, per_class


def within_limits(classes_in_order: Iterable[str], total: int,
                  per_class: dict[str, int]) -> list[bool]:
    """For each boot (named by its class, in the plan's order): may it go out this pass."""
    used: Counter[str] = Counter()
    sent = 0
    keep: list[bool] = []
    for node_class in classes_in_order:
        ok = sent < total and (node_class not in per_class
                               or used[node_class] < per_class[node_class])
        if ok:
            sent += 1
            used[node_class] += 1
        keep.append(ok)
    return keep
