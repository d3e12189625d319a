"""The noise rule against hand-computed cases, number formatting, report.md contents."""

from __future__ import annotations

import math

import pytest
from runhelpers import record

from diffbench.analysis.report import (
    RULE,
    display_table,
    fmt_pm,
    markdown,
    noise_verdicts,
    pareto_verdicts,
    text_table,
    write_report,
)
from diffbench.run.rundir import RunDir, cells_frame


def cells(*rows):
    """rows: (nfe, fid, se) or (nfe, fid, se, status)."""
    recs = []
    for i, row in enumerate(rows):
        nfe, fid, se, *status = row
        r = record(i, *status)
        r.update(nfe=nfe, metrics={"fid": {"value": fid, "uncertainty": se, "method": "bootstrap"}} if fid else {})
        recs.append(r)
    return cells_frame(recs)


def test_verdicts_compare_with_best_at_similar_nfe():
    f = cells((10, 5.0, 0.5), (11, 6.0, 0.5), (12, 9.0, 1.0), (50, 9.0, 0.1), (10, None, None, "failed"))
    v = noise_verdicts(f, "fid")
    assert v[0] == "best"
    assert v[1] == "within noise"  # |6 - 5| / √(0.5² + 0.5²) = 1.41 ≤ 2
    assert v[2] == f"worse ({4 / math.hypot(1.0, 0.5):.1f}σ)"  # 3.6σ
    assert v[3] == "no peer"  # NFE 50 has no other cell within a factor 1.25: nothing is claimed
    assert v[4] == ""


def test_pareto_front_over_all_nfe():
    """The issue's case: heun at 99 NFE is 'no peer' at its cost, yet a cheaper cell beats it: dominated."""
    f = cells((50, 0.0103, 0.001), (99, 0.023, 0.002), (10, 0.5, 0.01), (12, 0.4, 0.01))
    near, front = noise_verdicts(f, "fid"), pareto_verdicts(f, "fid")
    assert near[1] == "no peer" and front[1].startswith("dominated by") and "(0.0103 at 50 NFE)" in front[1]
    assert list(front[[0, 2, 3]]) == ["front", "front", "front"]
    assert near[2] == "worse (7.1σ)" and near[3] == "best"


def test_verdicts_respect_direction_and_missing_uncertainty():
    f = cells((10, 0.9, 0.01), (10, 0.8, 0.01), (12, 0.85, None))
    v = noise_verdicts(f, "fid", higher_is_better=True)
    assert v[0] == "best" and v[1] == "worse (7.1σ)" and v[2] == "no uncertainty"


@pytest.mark.parametrize(
    "value, se, text",
    [
        (12.3456, 0.0321, "12.346 ± 0.032"),
        (12.3456, 1.7, "12.3 ± 1.7"),
        (1234.5, 25.0, "1234 ± 25"),
        (5.0, 0.5, "5.00 ± 0.50"),
        (-4.08e-06, 0.0087, "-0.0000 ± 0.0087"),
        (0.000642, 6.4e-05, "0.000642 ± 6.4e-05"),
        (2.5e-6, 1e-7, "2.5e-06 ± 1e-07"),
        (3.14159, None, "3.142"),
        (float("nan"), 1.0, ""),
        (0.5, 0.0, "0.5"),
    ],
)
def test_fmt_pm(value, se, text):
    assert fmt_pm(value, se) == text


def test_tables():
    f = cells((10, 5.0, 0.5), (20, 3.0, 0.2), (10, None, None, "failed"))
    t = display_table(f, {"fid": False})
    assert list(t.columns) == [
        "sampler",
        "scheduler",
        "steps",
        "NFE",
        "fid",
        "fid vs best ≤1.25× NFE",
        "fid front (all NFE)",
        "s/sample",
        "net %",
        "status",
    ]
    assert t.loc[2, "status"] == "failed: boom"
    md = markdown(t).splitlines()
    assert md[0].startswith("| sampler | scheduler") and md[1] == "|---" + "|---" * 9 + "|" and len(md) == 5
    assert "5.00 ± 0.50" in text_table(f)


def test_report_md(tmp_path):
    run = RunDir(tmp_path)
    for r in (record(0, fid=5.0), record(1, status="failed")):
        run.write_cell({**r, "sample_image": "x.png" if r["status"] == "ok" else None})
    frame = run.write_csv()
    run.write_manifest(
        {
            "suite": "s",
            "description": "what it shows",
            "status": "complete",
            "seeds": [0],
            "metric_values": {"fid": {"higher_is_better": False}},
            "metric_info": {"extractor": "cnn"},
            "git": {"sha": "abc", "dirty": True},
            "wall_seconds": 12.0,
        }
    )
    text = write_report(run, frame, [tmp_path / "metric_vs_nfe.png"]).read_text()
    assert text.startswith("# s\n\nwhat it shows")
    assert "| euler | karras | 2 | 2 | 5.00 ± 0.50 | no peer | front |" in text
    assert RULE in text and "`fid` (lower is better): uncertainty is m" in text
    assert (
        "![metric_vs_nfe](metric_vs_nfe.png)\n\n*Each metric (y, ± 1 standard error" in text and "(cells/x.png)" in text
    )
    assert "## Failed cells" in text and "git abc (dirty)" in text and "**extractor**: cnn" in text


def test_report_lists_trajectory_references_with_their_convergence(tmp_path):
    run = RunDir(tmp_path)
    run.write_cell(record(0, fid=5.0))
    frame = run.write_csv()
    info = {
        "steps": 146.5,
        "rejected": 14.2,
        "nfe_per_sample": 973.1,
        "nfe": 31139.2,
        "seconds": 3.1,
        "samples": 32,
        "model": "digits-eps",
        "sigma_start": 157.4,
        "stops": [[0.01, True], [0.3388, True]],
        "rtol": 1e-6,
        "atol": 1e-6,
        "from_cache": False,
        "method": "m",
    }
    run.write_manifest(
        {
            "suite": "s",
            "status": "complete",
            "seeds": [0],
            "wall_seconds": 1.0,
            "metric_info": {"trajectory_references": {"78c84d01f4c0aaaa": info}},
        }
    )
    text = write_report(run, frame, []).read_text()
    assert "**trajectory_references**" not in text  # a section, not a raw dict in the header
    assert (
        "| `78c84d01f4c0` | digits-eps | 157.4 | 0.01 → 0, 0.3388 → 0 | 32 | 973 | 31,139 | 146 | 14 | "
        "rtol 1e-06, atol 1e-06 | computed, 3.1 s |"
    ) in text
    assert "Computed in this run: 31,139 network evaluations." in text
