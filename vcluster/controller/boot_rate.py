"""Boot-rate limits: VM allocations go out to oned at a bounded rate, per class and in total.

Why it exists: a burst of a thousand powered-up nodes would otherwise be a thousand
``one.template.instantiate`` calls in one pass, flooding oned and its scheduler. Each limit is
a token bucket (GCRA): ``burst`` allocations may go out at once, then ``rate`` per second,
so a burst of N takes (N - burst) / rate seconds and no longer. The allocations already sent
are in the picture (``Observed.recent_boots``, from the events act records as it sends them,
over the last ``HISTORY_WINDOWS`` bucket lengths), so the limit is a pure function of it:
boots over the limit are left out of this pass and planned again in a later one (passes come
every second while boots are pending). Reading only that history can let through at most
``burst`` more per history length than the rate: ``rate / HISTORY_WINDOWS`` at most.
Pure: the picture in, actions out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta

from vcluster.config import Config, NodeClass

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


def _allowance(limit: tuple[float, int], sent: Iterable[datetime], now: datetime,
               history_s: float) -> int:
    """GCRA: the theoretical arrival time after the sends (each 1/rate after the later of
    the previous one's and its own time) allows ``burst - (TAT - now) * rate`` more now."""
    rate, burst = limit
    start = now - timedelta(seconds=history_s)
    times = sorted(at for at in sent if at > start)
    tat = now
    for i, at in enumerate(times):  # TAT = max over suffixes of (first time + count / rate)
        tat = max(tat, at + timedelta(seconds=(len(times) - i) / rate))
    return max(0, math.floor(burst - (tat - now).total_seconds() * rate + 1e-9))


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
