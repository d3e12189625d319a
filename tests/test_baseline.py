"""The committed smoke baseline: readable, equal to itself, and the gate catches a worse run built from it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffbench import compare
from diffbench.cli import cli
from diffbench.compare import WORSE
from diffbench.results import SCHEMA_VERSION, RunDir

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "results" / "baselines" / "smoke"


def invoke(*args):
    return CliRunner().invoke(cli, ["compare", *(str(a) for a in args)], catch_exceptions=False)


def test_baseline_is_a_complete_smoke_run_equal_to_itself():
    manifest = RunDir(BASELINE).read_manifest()
    assert manifest["suite"] == "smoke" and manifest["status"] == "complete"
    assert manifest["cells"]["failed"] == 0 and manifest["calibration"]["digits-eps"]["network_seconds_per_call"] > 0
    assert manifest["schema_version"] == SCHEMA_VERSION
    result = compare.compare(BASELINE, BASELINE)
    assert len(result.cells) == manifest["cells"]["total"] and not result.regressions and not result.changed
    checks = [c for cell in result.cells for c in cell.checks]
    assert all(c.delta == 0 for c in checks)
    # every check is made (CI runs compare --require-all): harness, drift and trajectory-error included
    assert result.not_compared() == []
    assert {c.what for c in checks} == {"fid", "kid", "trajectory-error", "nfe", "time", "harness", "drift"}


def test_baseline_holds_results_only():
    """No lock file or temporary of the run that made it (diffbench baseline copies results only)."""
    assert [p for p in BASELINE.rglob("*") if p.name.startswith(".")] == []


def with_cell(tmp_path: Path, sampler: str, steps: int, **fields) -> Path:
    """A copy of the baseline whose (sampler, steps) cell record has ``fields`` replaced."""
    run = tmp_path / "run"
    shutil.copytree(BASELINE, run)
    rec = next(r for r in RunDir(run).read_cells() if (r["sampler"], r["steps"]) == (sampler, steps))
    RunDir(run).write_cell({**rec, **fields})
    return run


def test_fewer_steps_mapped_onto_a_baseline_cell_is_a_regression(tmp_path):
    """heun n=10 holding what heun n=5 produced: a sampler that silently took fewer steps."""
    fewer = next(r for r in RunDir(BASELINE).read_cells() if (r["sampler"], r["steps"]) == ("heun", 5))
    run = with_cell(tmp_path, "heun", 10, metrics=fewer["metrics"], per_seed=fewer["per_seed"])
    assert invoke(BASELINE, run, "--time-tol", "off").exit_code == 1
    result = compare.compare(BASELINE, run)
    assert [c.label for c in result.regressions] == ["heun karras n=10"]
    assert next(c for c in result.regressions[0].checks if c.what == "fid").verdict == WORSE


def test_extra_network_call_and_slower_harness_are_regressions(tmp_path):
    rec = next(r for r in RunDir(BASELINE).read_cells() if (r["sampler"], r["steps"]) == ("euler", 10))
    run = with_cell(tmp_path, "euler", 10, nfe=rec["nfe"] + 1)
    assert invoke(BASELINE, run, "--time-tol", "off").exit_code == 1
    slower = with_cell(tmp_path / "slow", "euler", 10, sample_seconds=rec["sample_seconds"] * 1.5)
    result = compare.compare(BASELINE, slower)
    assert [(c.label, [k.what for k in c.checks if k.verdict == WORSE]) for c in result.regressions] == [
        ("euler karras n=10", ["time"])]


@pytest.mark.slow
def test_a_fresh_smoke_run_passes_the_gate(tmp_path):
    """The CI gate itself: same seeds, same samples, so quality must match the baseline here."""
    run = tmp_path / "smoke"
    assert CliRunner().invoke(cli, ["run", str(REPO / "suites" / "smoke.yaml"), "--out", str(run),
                                    "--no-progress"], catch_exceptions=False).exit_code == 0
    result = invoke(BASELINE, run)
    assert result.exit_code == 0, result.stdout
