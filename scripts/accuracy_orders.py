"""Each sampler's measured order on the digits models from 10 to 100 NFE (docs/solvers.md's table).

Reads a run of suites/accuracy.yaml and prints, per sampler and model, minus the least-squares slope of
log(mean trajectory-error) against log(counted NFE) over the cells with 10 ≤ NFE ≤ 100, then the local
orders between neighbouring cells in that range (coarse → fine).

    diffbench run suites/accuracy.yaml --out results/accuracy
    python scripts/accuracy_orders.py results/accuracy        # a suite's folder means its newest run
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from diffbench.results import STATUS_OK, find_run

METRIC, LOW, HIGH = "trajectory-error", 10, 100


def orders(nfe: list[float], err: list[float]) -> tuple[float, list[float]]:
    """(fitted order, local orders) of error against NFE: minus the log-log slopes."""
    x, y = np.log(nfe), np.log(err)
    return -float(np.polyfit(x, y, 1)[0]), [float(v) for v in -np.diff(y) / np.diff(x)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a run of suites/accuracy.yaml, or the suite's results folder")
    args = ap.parse_args()
    lines: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    declared: dict[str, object] = {}
    for rec in find_run(args.run).read_cells():
        value = (rec.get("metrics") or {}).get(METRIC, {}).get("value")
        if rec.get("status") != STATUS_OK or value is None or not LOW <= rec["nfe"] <= HIGH:
            continue
        lines[rec["sampler"]][rec["model"]].append((rec["nfe"], value))
        declared[rec["sampler"]] = rec.get("sampler_order")
    models = sorted({m for per in lines.values() for m in per})
    print("| sampler | declared | " + " | ".join(f"`{m}`: fit (local)" for m in models) + " |")
    print("|---|---|" + "---|" * len(models))
    for sampler, per in lines.items():
        cells = []
        for m in models:
            points = sorted(per.get(m, []))
            if len(points) < 2:
                cells.append("")
                continue
            fit, local = orders(*zip(*points))
            nfe = "–".join(f"{n:g}" for n in (points[0][0], points[-1][0]))
            cells.append(f"{fit:.2f} ({', '.join(f'{v:.1f}' for v in local)}; NFE {nfe})")
        print(f"| {sampler} | {declared[sampler]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
