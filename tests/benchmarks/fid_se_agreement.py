"""The jackknife s.e. of FID against the 100-resample bootstrap on the digits cells of suites/smoke.yaml.

``python tests/benchmarks/fid_se_agreement.py OUT`` runs the smoke suite twice into OUT (FID's s.e. by
each method; the samples and FID values are the same) and prints, per cell, FID and both standard
errors with their ratio, then the geometric mean of the ratios. ``tests/metrics/test_frechet.py -m slow``
asserts the agreement.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def smoke_with(fid_options: dict) -> dict:
    suite = yaml.safe_load((REPO / "suites" / "smoke.yaml").read_text())
    suite["metrics"] = [{"name": "fid", "options": fid_options}]
    return suite


def se_by_method(out: Path) -> list[dict]:
    """One row per smoke cell: label, FID, jackknife s.e., bootstrap s.e. (two runs of the smoke suite)."""
    from diffbench.runner import run_suite
    from diffbench.suite import Suite

    runs = {}
    for method in ("jackknife", "bootstrap"):
        result = run_suite(Suite.model_validate(smoke_with({"se_method": method, "bootstrap": 100})),
                           out / method, progress=False, draw=False)
        # keyed by sampler and steps: the cell ids hash the metric options too
        runs[method] = {(c["sampler_name"], c["steps"]): c for c in (json.loads(p.read_text())
                                                                   for p in (result.path / "cells").glob("*.json"))}
    rows = []
    for key, jk in sorted(runs["jackknife"].items()):
        bs = runs["bootstrap"][key]
        assert jk["metrics"]["fid"]["value"] == bs["metrics"]["fid"]["value"]
        rows.append({"cell": f"{jk['sampler_name']} {jk['steps']} steps", "fid": jk["metrics"]["fid"]["value"],
                     "jackknife": jk["metrics"]["fid"]["uncertainty"], "bootstrap": bs["metrics"]["fid"]["uncertainty"]})
    return rows


def lines(rows: list[dict]) -> list[str]:
    out = [f"{r['cell']:<28} FID {r['fid']:.3f}  s.e. jackknife {r['jackknife']:.3f}  bootstrap {r['bootstrap']:.3f}"
           f"  ratio {r['jackknife'] / r['bootstrap']:.2f}" for r in rows]
    ratios = [r["jackknife"] / r["bootstrap"] for r in rows]
    out.append(f"geometric mean of the ratios over {len(rows)} cells: "
               f"{math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}")
    return out


if __name__ == "__main__":
    print("\n".join(lines(se_by_method(Path(sys.argv[1])))))
