"""Plot benchmarks/results/compare.json (from compare.py) as benchmarks/results/compare.png.

One panel per measure (submit -> running, job end -> VM terminated): p50 seconds per shape
and setting, vcluster beside the reference bridge, the ratio vcluster/reference above each
pair. Run: ``python3 benchmarks/plot_compare.py [--input X.json] [--output Y.png]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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
    groups: list[tuple[str, dict[str, dict[str, float | None]]]] = []
    for setting, result in doc["settings"].items():
        for shape, sides in result["shapes"].items():
            groups.append((f"{shape}\n{setting}", sides))
    fig, axes = plt.subplots(len(MEASURES), 1, figsize=(max(8, 1.1 * len(groups)), 8))
    width = 0.38
    for ax, (key, title) in zip(axes, MEASURES, strict=True):
        xs = range(len(groups))
        vc = [sides["vcluster"][key] or 0 for _, sides in groups]
        ref = [sides["reference"][key] or 0 for _, sides in groups]
        ax.bar([x - width / 2 for x in xs], vc, width, label="vcluster")
        ax.bar([x + width / 2 for x in xs], ref, width, label="reference bridge")
        for x, (v, r) in enumerate(zip(vc, ref, strict=True)):
            if v and r:
                ax.annotate(f"{v / r:.2f}x", (x, max(v, r)), ha="center", va="bottom",
                            fontsize=8)
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
