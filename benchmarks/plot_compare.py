"""Plot benchmarks/results/compare.json (from compare.py) as benchmarks/results/compare.png.

One panel per measure (submit -> running, job end -> VM terminated): p50 seconds per shape
and setting, vcluster beside the reference bridge, a whisker from the fastest to the slowest
job of the shape's runs, the ratio vcluster/reference above each pair.
Run: ``python3 benchmarks/plot_compare.py [--input X.json] [--output Y.png]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

RESULTS = Path(__file__).resolve().parent / "results"
MEASURES = (("submit_to_running_p50_s", "submit -> running (p50, s)"),
            ("end_to_terminated_p50_s", "job end -> VM terminated (p50, s)"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=RESULTS / "compare.json")
    ap.add_argument("--output", type=Path, default=RESULTS / "compare.png")
    args = ap.parse_args()
    doc = json.loads(args.input.read_text())
    groups: list[tuple[str, dict[str, dict[str, Any]]]] = []
    for setting, result in doc["settings"].items():
        for shape, sides in result["shapes"].items():
            groups.append((f"{shape}\n{setting}", sides))
    fig, axes = plt.subplots(len(MEASURES), 1, figsize=(max(8, 1.1 * len(groups)), 8))
    width = 0.38
    for ax, (key, title) in zip(axes, MEASURES, strict=True):
        xs = range(len(groups))
        vc = [sides["vcluster"][key] or 0 for _, sides in groups]
        ref = [sides["reference"][key] or 0 for _, sides in groups]
        samples = key.replace("_p50_s", "_s")
        tops = []
        for side, dx, label in (("vcluster", -width / 2, "vcluster"),
                                ("reference", width / 2, "reference bridge")):
            p50s = [sides[side][key] or 0 for _, sides in groups]
            spans = [sides[side].get(samples) or [p] for (_, sides), p in zip(groups, p50s,
                                                                              strict=True)]
            lows = [max(0.0, p - min(s)) for p, s in zip(p50s, spans, strict=True)]
            highs = [max(0.0, max(s) - p) for p, s in zip(p50s, spans, strict=True)]
            ax.bar([x + dx for x in xs], p50s, width, label=label,
                   yerr=[lows, highs], capsize=2, error_kw={"elinewidth": 0.8})
            tops.append([p + h for p, h in zip(p50s, highs, strict=True)])
        for x, (v, r) in enumerate(zip(vc, ref, strict=True)):
            if v and r:
                ax.annotate(f"{v / r:.2f}x", (x, max(tops[0][x], tops[1][x])), ha="center",
                            va="bottom", fontsize=8)
        if key.startswith("submit"):  # 1.5 s to 140 s: on a linear axis the short ones vanish
            ax.set_yscale("log")
        ax.set_xticks(list(xs), [name for name, _ in groups], fontsize=7)
        ax.set_title(title)
        ax.legend()
    fig.suptitle("vcluster vs. a minimal reference bridge, same testbed (ratio = vcluster/ref)")
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
