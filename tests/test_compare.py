"""diffbench compare: verdicts derived by hand on constructed run directories, and the CLI's exit codes."""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from diffbench import compare
from diffbench.cli import cli
from diffbench.compare import BETTER, SAME, WORSE, Rule, Tolerance
from diffbench.results import RunDir


def metric(value: float, se: float | None, higher: bool | None = False) -> dict[str, Any]:
    out: dict[str, Any] = {"value": value, "uncertainty": se, "method": "test"}
    if higher is not None:
        out["higher_is_better"] = higher
    return out


def record(steps: int = 10, *, sampler: str = "euler", fid: float = 10.0, fid_se: float = 0.3,
           precision: float = 0.8, precision_se: float = 0.03, nfe: float | None = None,
           sample_seconds: float = 0.4, network_seconds: float | None = 0.2, status: str = "ok",
           num_samples: int = 100, **extra: Any) -> dict[str, Any]:
    """A finished cell of a one-model suite; cell id and config follow the runner's layout."""
    config = {"num_samples": num_samples, "sampler": {"name": sampler}, "steps": steps}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    rec = {"cell_id": f"m__{sampler}__karras__n{steps}__gnone-{digest}",
           "index": steps, "model": "m", "sampler": sampler, "scheduler": "karras", "steps": steps, "guidance": None,
           "status": status, "error": None if status == "ok" else "boom", "nfe": steps if nfe is None else nfe,
           "sample_seconds": sample_seconds, "seconds_per_sample": sample_seconds / num_samples,
           "network_seconds": network_seconds, "config": config,
           "metrics": {"fid": metric(fid, fid_se), "precision": metric(precision, precision_se, True)}}
    rec.update(extra)
    return rec


def make_run(path: Path, records: list[dict[str, Any]], *, bare: float | None = 0.01, batch: int = 100,
             suite: str = "smoke") -> Path:
    """A run directory as the runner leaves it: manifest with calibration, one JSON per cell."""
    run = RunDir(path)
    manifest: dict[str, Any] = {"suite": suite, "status": "complete", "models": {"m": {"model": "m"}}}
    if bare is not None:
        manifest["calibration"] = {"m": {"network_seconds_per_call": bare, "batch_size": batch}}
    run.write_manifest(manifest)
    for r in records:
        run.write_cell(r)
    return path


def verdicts(base: Path, run: Path, rule: Rule | None = None) -> dict[str, dict[str, str]]:
    """Cell label → check name → verdict (and 'cell' → the cell's verdict)."""
    result = compare.compare(base, run, rule)
    return {c.label: {"cell": c.verdict, **{k.what: k.verdict for k in c.checks}} for c in result.cells}


def invoke(*args: Any):
    return CliRunner().invoke(cli, ["compare", *(str(a) for a in args)], catch_exceptions=False)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return make_run(tmp_path / "base", [record(10), record(20, fid=8.0)])


# --- quality -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fid, expected", [
    (10.9, SAME),    # +0.9 < 2·√(0.3² + 0.4²) = 1.0
    (11.1, WORSE),   # +1.1 > 1.0
    (8.9, BETTER),   # −1.1, beyond 1.0 the good way
])
def test_fid_lower_is_better_within_z_combined_se(base, tmp_path, fid, expected):
    run = make_run(tmp_path / "run", [record(10, fid=fid, fid_se=0.4), record(20, fid=8.0)])
    got = verdicts(base, run)
    assert got["euler karras n=10"]["fid"] == expected
    assert got["euler karras n=10"]["cell"] == expected
    assert got["euler karras n=20"]["cell"] == SAME


@pytest.mark.parametrize("precision, expected", [(0.69, WORSE), (0.71, SAME), (0.91, BETTER)])
def test_precision_higher_is_better(base, tmp_path, precision, expected):
    # threshold 2·√(0.03² + 0.04²) = 0.1
    run = make_run(tmp_path / "run", [record(10, precision=precision, precision_se=0.04), record(20, fid=8.0)])
    assert verdicts(base, run)["euler karras n=10"]["precision"] == expected


def test_metric_tolerance_absolute_relative_and_per_metric(base, tmp_path):
    run = make_run(tmp_path / "run", [record(10, fid=11.4, fid_se=0.4), record(20, fid=8.0)])  # +1.4
    cell = "euler karras n=10"
    assert verdicts(base, run)[cell]["fid"] == WORSE
    assert verdicts(base, run, Rule(metric_tol={"fid": Tolerance(0.5)}))[cell]["fid"] == SAME  # 1.0 + 0.5
    assert verdicts(base, run, Rule(metric_tol={"": Tolerance(0.05, relative=True)}))[cell]["fid"] == SAME  # + 0.5
    assert verdicts(base, run, Rule(metric_tol={"precision": Tolerance(0.5)}))[cell]["fid"] == WORSE
    assert verdicts(base, run, Rule(z=3.0))[cell]["fid"] == SAME  # 3·0.5 = 1.5


def test_direction_falls_back_to_known_metrics_then_warns(tmp_path):
    old = record(10)
    old["metrics"] = {"class-accuracy": metric(0.9, 0.01, None), "mystery": metric(1.0, 0.01, None)}
    worse = copy.deepcopy(old)
    worse["metrics"] = {"class-accuracy": metric(0.8, 0.01, None), "mystery": metric(1.1, 0.01, None)}
    result = compare.compare(make_run(tmp_path / "b", [old]), make_run(tmp_path / "r", [worse]))
    assert {c.what: c.verdict for c in result.cells[0].checks}["class-accuracy"] == WORSE
    assert {c.what: c.verdict for c in result.cells[0].checks}["mystery"] == WORSE  # assumed lower is better
    assert result.warnings == ["metric 'mystery': direction not recorded; assuming lower is better"]


def test_missing_metric_in_run_is_worse(base, tmp_path):
    rec = record(10)
    del rec["metrics"]["precision"]
    run = make_run(tmp_path / "run", [rec, record(20, fid=8.0)])
    assert verdicts(base, run)["euler karras n=10"]["precision"] == WORSE


# --- cost and speed ----------------------------------------------------------------------------

@pytest.mark.parametrize("nfe, expected", [(11, WORSE), (10, SAME), (9, BETTER)])
def test_nfe_may_not_grow(base, tmp_path, nfe, expected):
    run = make_run(tmp_path / "run", [record(10, nfe=nfe), record(20, fid=8.0)])
    assert verdicts(base, run)["euler karras n=10"]["nfe"] == expected


def test_speed_in_network_evaluations_timed_in_the_same_call(base, tmp_path):
    # baseline: NFE 10 × 0.4 s sampling / 0.2 s in the network = 20 network evaluations
    def cell(sample: float, network: float) -> dict[str, dict[str, str]]:
        run = make_run(tmp_path / f"run-{sample}-{network}", [record(10, sample_seconds=sample, network_seconds=network),
                                                           record(20, fid=8.0)])
        return verdicts(base, run)["euler karras n=10"]

    assert cell(0.8, 0.4)["time"] == SAME  # a machine twice as slow, or twice as loaded
    assert cell(0.52, 0.2)["time"] == WORSE  # +30% of harness time: 26 evaluations
    assert cell(0.48, 0.2)["time"] == SAME  # +20%
    assert cell(0.28, 0.2)["time"] == BETTER  # −30%


def test_speed_tolerance_and_off(base, tmp_path):
    run = make_run(tmp_path / "run", [record(10, sample_seconds=0.52), record(20, fid=8.0)])
    assert verdicts(base, run, Rule(time_tol=0.5))["euler karras n=10"]["time"] == SAME
    assert "time" not in verdicts(base, run, Rule(time_tol=None))["euler karras n=10"]


def test_speed_falls_back_to_the_calibration(tmp_path):
    # no in-call network time: 0.4 s / 100 samples × batch 100 / 0.01 s bare call = 40 calls
    base = make_run(tmp_path / "base", [record(10, network_seconds=None)], bare=0.01)
    same = make_run(tmp_path / "same", [record(10, sample_seconds=0.8, network_seconds=None)], bare=0.02)
    slow = make_run(tmp_path / "slow", [record(10, sample_seconds=0.6, network_seconds=None)], bare=0.01)
    assert verdicts(base, same)["euler karras n=10"]["time"] == SAME
    assert verdicts(base, slow)["euler karras n=10"]["time"] == WORSE
    check = next(c for c in compare.compare(base, slow).cells[0].checks if c.what == "time")
    assert (check.baseline, check.run, check.note) == (pytest.approx(40.0), pytest.approx(60.0), "per calibration")


def test_speed_not_compared_without_network_time_or_calibration(base, tmp_path):
    run = make_run(tmp_path / "run", [record(10, network_seconds=None), record(20, fid=8.0)], bare=None)
    check = next(c for c in compare.compare(base, run).cells[0].checks if c.what == "time")
    assert check.verdict == SAME and "speed not compared" in check.note


# --- status and matching -----------------------------------------------------------------------

def test_failed_cell_in_run_is_worse_failed_baseline_cell_is_skipped(tmp_path):
    base = make_run(tmp_path / "b", [record(10), record(20, status="failed")])
    run = make_run(tmp_path / "r", [record(10, status="failed"), record(20)])
    result = compare.compare(base, run)
    assert [c.verdict for c in result.cells] == [WORSE, SAME]
    assert result.cells[0].note == "failed: boom" and "baseline cell failed" in result.cells[1].note


def test_new_cells_are_listed_not_compared(base, tmp_path):
    run = make_run(tmp_path / "run", [record(10), record(20, fid=8.0), record(40)])
    result = compare.compare(base, run)
    assert len(result.cells) == 2 and result.new_cells == [record(40)["cell_id"]]
    assert "not in the baseline" in compare.text(result)


def test_cli_exit_codes(base, tmp_path):
    same = make_run(tmp_path / "same", [record(10, fid=10.2), record(20, fid=8.0)])
    worse = make_run(tmp_path / "worse", [record(10, fid=12.0), record(20, fid=8.0)])
    ok = invoke(base, same)
    assert ok.exit_code == 0 and "2 cells: 0 better, 2 same within noise, 0 worse" in ok.stdout
    assert "z = 2" in ok.stdout
    bad = invoke(base, worse)
    assert bad.exit_code == 1 and "REGRESSION in 1 cell(s)" in bad.stdout
    assert invoke(base, worse, "--metric-tol", "fid=1.5").exit_code == 0
    assert invoke(base, worse, "--metric-tol", "20%").exit_code == 0


def test_cli_json(base, tmp_path):
    worse = make_run(tmp_path / "worse", [record(10, nfe=12), record(20, fid=8.0)])
    result = invoke(base, worse, "--json", "--time-tol", "off")
    data = json.loads(result.stdout)
    assert result.exit_code == 1 and data["regressions"] == 1 and data["z"] == 2.0 and data["time_tol"] is None
    assert [c["verdict"] for c in data["cells"]] == [WORSE, SAME]
    assert {c["what"] for c in data["cells"][0]["checks"]} == {"fid", "precision", "nfe", "harness", "drift"}
    assert data["regressed_cells"] == [{"cell_id": record(10)["cell_id"], "label": "euler karras n=10", "note": "",
                                        "worse": ["nfe: 10 → 12 (+2, allowed ±1e-08)"]}]


def one_line_error(result, text: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert text in result.stderr


def test_bad_input_exits_2_with_one_line(base, tmp_path):
    one_line_error(invoke(base, tmp_path / "nowhere"), "not a diffbench run directory")
    one_line_error(invoke(tmp_path / "nowhere", base), "baseline: ")
    other_suite = make_run(tmp_path / "other", [record(10), record(20, fid=8.0)], suite="steps")
    one_line_error(invoke(base, other_suite), "baseline is suite 'smoke', run is suite 'steps'")
    partial = make_run(tmp_path / "partial", [record(10)])
    one_line_error(invoke(base, partial), "run lacks 1 baseline cell(s), e.g. m__euler__karras__n20__gnone")
    reconfigured = make_run(tmp_path / "reconf", [record(10, num_samples=50), record(20, fid=8.0)])
    one_line_error(invoke(base, reconfigured), "run with another configuration (num_samples: 100 vs 50)")
    empty = make_run(tmp_path / "empty", [])
    one_line_error(invoke(empty, base), "no cell records")
    shutil.copytree(base, tmp_path / "corrupt")
    next((tmp_path / "corrupt" / "cells").glob("*.json")).write_text("{not json")
    one_line_error(invoke(base, tmp_path / "corrupt"), "corrupt/cells/m__euler__karras__n")
    one_line_error(invoke(base, base, "--metric-tol", "fid=lots"), "tolerance 'lots'")


def test_a_changed_checkpoint_is_named(tmp_path):
    base = make_run(tmp_path / "b", [record(10)])
    run = make_run(tmp_path / "r", [record(10)])
    manifest = RunDir(run).read_manifest()
    manifest["models"]["m"]["checkpoint_hash"] = "abcdef0123456789"
    RunDir(run).write_manifest(manifest)
    assert compare.compare(base, run).warnings == ["model 'm': checkpoint differs (baseline None, run abcdef012345)"]


# --- harness time ------------------------------------------------------------------------------

def probe(us: float, ref_us: float = 1000.0) -> dict[str, Any]:
    """A cell's harness probe record: ``us`` CPU µs per call, the reference work timed at ``ref_us``."""
    return {"method": "cpu-time", "seconds_per_call": us * 1e-6, "reference_seconds": ref_us * 1e-6,
            "ratio": us / ref_us, "repeats": 7}


def harness_runs(tmp_path: Path, base_us: float, run_us: float, *, base_ref: float = 1000.0,
                 run_ref: float = 1000.0, name: str = "h") -> tuple[Path, Path]:
    return (make_run(tmp_path / f"{name}-base", [record(10, harness=probe(base_us, base_ref))]),
            make_run(tmp_path / f"{name}-run", [record(10, harness=probe(run_us, run_ref))]))


@pytest.mark.parametrize("base_us, run_us, expected", [
    (100.0, 149.0, SAME),    # +49% < 50%
    (100.0, 151.0, WORSE),   # +51%
    (100.0, 200.0, WORSE),   # a sampler loop twice as slow
    (100.0, 49.0, BETTER),
    (4.0, 8.5, SAME),        # +112%, but +4.5 µs is under the 5 µs floor: timing noise
    (4.0, 9.5, WORSE),       # +5.5 µs
])
def test_harness_time_tolerance_and_floor(tmp_path, base_us, run_us, expected):
    base, run = harness_runs(tmp_path, base_us, run_us)
    check = next(c for c in compare.compare(base, run).cells[0].checks if c.what == "harness")
    assert check.verdict == expected
    assert check.delta == pytest.approx(run_us / base_us - 1)
    assert check.threshold == pytest.approx(max(0.5, 5.0 / base_us))


def test_harness_time_is_flagged_even_when_the_network_dominates(tmp_path):
    """Network 99.8 % of sampling time: total time moves 0.2 %, the harness check sees ×2."""
    base = make_run(tmp_path / "b", [record(10, sample_seconds=10.02, network_seconds=10.0, harness=probe(100))])
    run = make_run(tmp_path / "r", [record(10, sample_seconds=10.04, network_seconds=10.0, harness=probe(200))])
    checks = {c.what: c for c in compare.compare(base, run).cells[0].checks}
    assert checks["time"].verdict == SAME and checks["harness"].verdict == WORSE
    assert checks["harness"].describe() == "harness: 100 → 200 µs CPU per network call (+100.0%, allowed ±50%)"


def test_harness_is_judged_in_units_of_the_reference_timed_in_the_same_moments(tmp_path):
    # the run's reference work took twice as long (a slower or busier machine): 100 µs then is 200 µs now
    base, run = harness_runs(tmp_path, 100.0, 280.0, base_ref=1000.0, run_ref=2000.0)
    check = next(c for c in compare.compare(base, run).cells[0].checks if c.what == "harness")
    assert (check.verdict, check.baseline, check.run, check.delta) == (SAME, pytest.approx(200e-6),
                                                                       pytest.approx(280e-6), pytest.approx(0.4))
    base, run = harness_runs(tmp_path, 100.0, 160.0, base_ref=1000.0, run_ref=1050.0, name="near")
    assert next(c for c in compare.compare(base, run).cells[0].checks if c.what == "harness").verdict == WORSE


def test_harness_not_compared_names_the_missing_field_and_the_refresh_command(base, tmp_path):
    run = make_run(tmp_path / "run", [record(10, harness=probe(100)), record(20, fid=8.0)])
    check = next(c for c in compare.compare(base, run).cells[0].checks if c.what == "harness")
    assert check.verdict == SAME and check.note == ("the baseline lacks harness.ratio (schema 1, older than 2): "
                                                    "records written before the harness probe")
    out = compare.text(compare.compare(base, run))
    assert "not compared: harness: the baseline lacks harness.ratio (schema 1, older than 2)" in out
    assert f"refresh the baseline: diffbench run <the suite file of 'smoke'> --out /tmp/smoke-new" in out
    assert "harness" not in verdicts(base, run, Rule(harness_tol=None))["euler karras n=10"]
    assert invoke(base, run, "--harness-tol", "off").exit_code == 0
    required = invoke(base, run, "--require-all")
    assert required.exit_code == 1 and "--require-all: " in required.stderr
    assert "harness: the baseline lacks harness.ratio" in required.stdout


# --- metrics without standard error, the log a CI reader acts on ---------------------------------

@pytest.mark.parametrize("run_value, expected", [(2.0 + 1.9e-6, SAME), (2.0 + 2.1e-6, WORSE)])
def test_metric_without_standard_error_gets_the_round_off_floor(tmp_path, run_value, expected):
    old, new = record(10), record(10)
    old["metrics"] = {"solver-error": metric(2.0, None)}
    new["metrics"] = {"solver-error": metric(run_value, None)}
    check = compare.compare(make_run(tmp_path / "b", [old]), make_run(tmp_path / "r", [new])).cells[0].checks[0]
    assert check.verdict == expected and check.threshold == pytest.approx(2e-6)  # 1e-6 · |2.0|
    assert check.note == "no standard error: round-off allowance 1e-06·|baseline|"


def _with_context(path: Path, **changes: Any) -> Path:
    run = RunDir(path)
    manifest = run.read_manifest()
    manifest.update({"versions": {"diffbench": "0.1.0", "torch": "2.14.1"}, "plugins": {"diffbench": "0.1.0",
                     "diffbench-extra": "0.1.0"}, "git": {"sha": "a" * 40, "dirty": False}, "device": "cpu",
                     "device_name": "x86_64, 2 threads"})
    for key, value in changes.items():
        if key in ("diffbench", "torch"):
            manifest["versions"][key] = value
        elif key == "extra":
            manifest["plugins"]["diffbench-extra"] = value
        else:
            manifest[key] = value
    run.write_manifest(manifest)
    return path


def test_the_log_says_what_changed_and_lists_each_regression_in_full(tmp_path):
    base = _with_context(make_run(tmp_path / "b", [record(10), record(20, fid=8.0)]))
    long_error = "RuntimeError: " + "the sampler could not allocate its history buffer " * 3
    failed = record(20, status="failed")
    failed["error"] = long_error
    run = _with_context(make_run(tmp_path / "r", [record(10, fid=12.0, fid_se=0.4), failed]),
                        extra="0.2.0", git={"sha": "b" * 40, "dirty": True})
    result = invoke(base, run)
    out = result.stdout
    assert result.exit_code == 1
    assert "what ran (baseline → run):" in out
    lines = out.splitlines()
    assert any(line.split() == ["plugin", "diffbench-extra", "0.1.0", "→", "0.2.0", "CHANGED"] for line in lines)
    assert any(line.split() == ["git", "commit", "aaaaaaaaaa", "→", "bbbbbbbbbb", "(uncommitted", "changes)",
                                "CHANGED"] for line in lines)
    assert any(line.split() == ["diffbench", "0.1.0", "(same)"] for line in lines)
    # each regressed metric: baseline → run, change, allowance; a failed cell's error in full
    assert "    fid: 10 → 12 (+2, allowed ±1)" in out  # 2·√(0.3² + 0.4²) = 1
    assert f"  euler karras n=20: failed: {long_error}" in out
    # the table cuts the note at a word, never inside one
    note_cell = next(line for line in lines if line.startswith("euler karras n=20"))
    assert note_cell.endswith(" failed: RuntimeError: the sampler could not allocate its…")
    # the output ends with the regressed cells
    assert lines[-3:] == ["regressed cells:", "  euler karras n=10: fid", "  euler karras n=20: status"]
    data = json.loads(invoke(base, run, "--json").stdout)
    changed = {c["what"]: (c["baseline"], c["run"]) for c in data["context"] if c["changed"]}
    assert changed == {"plugin diffbench-extra": ("0.1.0", "0.2.0"),
                       "git commit": ("aaaaaaaaaa", "bbbbbbbbbb (uncommitted changes)")}
    assert [c["label"] for c in data["regressed_cells"]] == ["euler karras n=10", "euler karras n=20"]
    assert data["regressed_cells"][0]["worse"] == ["fid: 10 → 12 (+2, allowed ±1)"]
    assert data["regressed_cells"][1]["note"] == f"failed: {long_error}"


# --- CI-native output, --require-all -------------------------------------------------------------

def test_markdown_summary_has_the_outcome_the_table_and_each_regression(base, tmp_path):
    worse = make_run(tmp_path / "worse", [record(10, nfe=12), record(20, fid=8.0)])
    result = invoke(base, worse, "--format", "markdown", "--time-tol", "off")
    assert result.exit_code == 1
    md = result.stdout
    assert md.startswith("### diffbench compare: 2 cells: 0 better, 1 same within noise, 1 worse → REGRESSION")
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert rows[0].split(" | ")[1:3] == ["cell", "verdict"] and len(rows) == 3  # header + one row per cell
    assert "| ❌ | euler karras n=10 | worse |" in md and "| ✅ | euler karras n=20 | same |" in md
    assert "**Regressions**" in md and "  - `nfe: 10 → 12 (+2, allowed ±1e-08)`" in md
    assert "**Not compared** (4)" in md  # harness and drift of both cells: the records have neither


def test_junit_has_one_test_case_per_cell_and_check(base, tmp_path):
    from xml.etree import ElementTree as ET

    worse = make_run(tmp_path / "worse", [record(10, nfe=12), record(20, fid=8.0)])
    junit = tmp_path / "out" / "compare.xml"
    assert invoke(base, worse, "--junit", junit, "--time-tol", "off").exit_code == 1
    suite = ET.parse(junit).getroot()
    cases = {(c.get("classname"), c.get("name")): c for c in suite.iter("testcase")}
    assert set(cases) == {(cell, check) for cell in ("euler karras n=10", "euler karras n=20")
                          for check in ("fid", "precision", "nfe", "harness", "drift")}
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("10", "1", "4")
    failure = cases[("euler karras n=10", "nfe")].find("failure")
    assert failure.get("type") == "worse" and failure.get("message") == "nfe: 10 → 12 (+2, allowed ±1e-08)"
    assert cases[("euler karras n=10", "harness")].find("skipped").get("message").startswith("the baseline lacks")
    assert cases[("euler karras n=20", "fid")].find("failure") is None


def test_require_all_passes_when_every_check_is_made(tmp_path):
    import torch

    from diffbench import drift

    fp = drift.fingerprint(torch.linspace(-1, 1, 32).reshape(2, 16))
    full = [record(10, harness=probe(100), drift_fingerprint=fp, schema_version=2)]
    base, run = make_run(tmp_path / "b", full), make_run(tmp_path / "r", full)
    assert compare.compare(base, run).not_compared() == []
    assert invoke(base, run, "--require-all").exit_code == 0
    extra = make_run(tmp_path / "x", full + [record(20, harness=probe(100), drift_fingerprint=fp)])
    assert compare.compare(base, extra).not_compared() == ["m__euler__karras__n20__gnone: not in the baseline"]
    assert invoke(base, extra, "--require-all").exit_code == 1
