"""Boot-rate limits: VM allocations go out to oned at a bounded rate, per class and in total.

Why it exists: a burst of a thousand powered-up nodes would otherwise be a thousand
``one.template.instantiate`` calls in one pass, flooding oned and its scheduler. Each limit is
a sliding window: at most ``burst`` allocations within the last ``burst / rate`` seconds. The
allocations already sent are in the picture (``Observed.recent_boots``, from the events act
records as it sends them), so the limit is a pure function of it: boots over the limit are
left out of this pass and planned again in a later one (the loop runs every second while
boots are pending). Pure: the picture in, actions out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta

from vcluster.config import Config, NodeClass


def class_limit(nc: NodeClass) -> tuple[float, int] | None:
    """(rate per second, burst) of one class, or None when only the total limit applies."""
    if not nc.boot_rate_per_s:
        return None
    return nc.boot_rate_per_s, nc.boot_burst or max(1, math.ceil(nc.boot_rate_per_s))


def total_limit(config: Config) -> tuple[float, int]:
    return config.controller.boot_rate_per_s, config.controller.boot_burst


def boot_window_s(config: Config) -> float:
    """The longest window any limit looks back over, seconds (burst / rate)."""
    limits = [total_limit(config)] + [
        lim for nc in config.node_classes if (lim := class_limit(nc)) is not None]
    return max(burst / rate for rate, burst in limits)


def _allowance(limit: tuple[float, int], sent: Iterable[datetime], now: datetime) -> int:
    rate, burst = limit
    start = now - timedelta(seconds=burst / rate)
    return max(0, burst - sum(1 for at in sent if at > start))


def allowances(config: Config, recent_boots: Iterable[tuple[datetime, str]],
               now: datetime) -> tuple[int, dict[str, int]]:
    """How many allocations may go out now: in total, and per class that has a limit."""
    boots = list(recent_boots)
    total = _allowance(total_limit(config), (at for at, _ in boots), now)
    per_class: dict[str, int] = {}
    for nc in config.node_classes:
        lim = class_limit(nc)
        if lim is not None:
            per_class[nc.name] = _allowance(lim, (at for at, c in boots if c == nc.name), now)
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
