"""The runner against truth: counted NFE, paired noise, failures recorded, resume, honest timing, records."""

from __future__ import annotations

import json
import math
import statistics

import pandas as pd
import pytest
import torch
from runhelpers import grid, initial_checksum, small, test_registry

from diffbench.api import run_suite
from diffbench.run.executors.local import LocalExecutor
from diffbench.run.rundir import CellsCsv, RunDir, cells_frame
from diffbench.run.runner import RunInterrupted
from diffbench.run.sampling import make_grid
from diffbench.run.suite import SuiteError, expand, parse_suite


def run(data, out, registry=None, draw=False, **kw):
    registry = registry or test_registry()[0]
    return run_suite(
        parse_suite(data, registry), out, registry=registry, progress=False, cache_dir=out / "cache", draw=draw, **kw
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    return run(small(), out, draw=True)


def test_run_writes_every_output(finished):
    files = {p.name for p in finished.path.iterdir()}
    assert {
        "cells.csv",
        "manifest.json",
        "suite.json",
        "report.md",
        "cells",
        "metric_vs_nfe.png",
        "metric_vs_time.png",
    } <= files
    assert finished.ran == 6 and finished.skipped == 0 and finished.failed == 0
    assert (finished.cells["status"] == "ok").all()
    pictures = sorted(p.name for p in (finished.path / "cells").glob("*.png"))
    assert len(pictures) == 6


def test_cell_nfe_is_counted_and_equals_declared(finished):
    reg, _ = test_registry()
    cells = finished.cells
    assert (cells["nfe"] == cells["declared_nfe"]).all()
    heun = cells[cells["sampler"] == "heun"].set_index("steps")["nfe"]
    assert heun[2] == 3 and heun[4] == 7  # 2N - 1: no correction on the step into σ = 0
    euler = cells[cells["sampler"] == "euler"].set_index("steps")["nfe"]
    assert euler[2] == 2 and euler[4] == 4
    for rec in RunDir(finished.path).read_cells():
        comp = reg.get("sampler", rec["sampler_name"])
        assert rec["nfe"] == comp.meta["nfe"](torch.tensor(rec["grid"]["sigmas"]), **rec["sampler_options"])


def test_cell_record_has_grid_and_every_option(finished, tmp_path):
    rec = json.loads(next((finished.path / "cells").glob("gmm__heun__*n4*.json")).read_text())
    assert rec["sampler_options"] == {
        "churn_amount": 0.0,
        "s_tmin": 0.0,
        "s_tmax": None,
        "s_noise": 1.0,
        "clip_x0": False,
    }
    assert rec["scheduler_options"] == {
        "rho": 7.0,
        "sigma_min": None,
        "sigma_max": None,
        "quantize": False,
        "final_zero": True,
    }
    from diffbench import load_model

    expected, _ = make_grid(load_model("gmm"), "karras", 4)
    assert rec["grid"]["sigmas"] == expected.sigmas.tolist() and rec["grid"]["sigmas"][-1] == 0
    assert len(rec["grid"]["timesteps"]) == 4
    assert rec["model_identity"]["checkpoint_hash"] and rec["dtype"] == "float64"


def test_cells_record_harness_and_network_time_per_call(finished):
    """Medians per network call; the harness (between calls) is a small part of sampling time, never negative."""
    manifest = finished.run.read_manifest()
    assert all(c["cpu_reference_seconds"] > 0 for c in manifest["calibration"].values())
    for rec in finished.run.read_cells():
        calls = rec["nfe"] * -(-rec["num_samples"] // rec["batch_size"]) * len(rec["seeds"])
        assert 0 < rec["network_seconds_per_call"] <= rec["network_seconds"]
        assert rec["network_seconds_per_call"] * calls == pytest.approx(rec["network_seconds"], rel=2.0)
        assert 0 < rec["harness_seconds_per_call"] <= 2 * rec["sample_seconds"] / max(calls - 1, 1)  # median ≤ 2·mean


def test_manifest_records_provenance(finished):
    m = json.loads((finished.path / "manifest.json").read_text())
    assert m["status"] == "complete" and m["cells"] == {"total": 6, "ok": 6, "failed": 0}
    assert set(m["git"]) == {"sha", "dirty"}
    assert {"diffbench", "torch", "torch-fidelity", "python"} <= set(m["versions"])
    assert "diffbench" in m["plugins"] and m["device"] == "cpu" and m["dtype"] == "float64"
    assert m["calibration"]["gmm"]["network_seconds_per_call"] > 0 and m["command"]
    assert m["models"]["gmm"]["checkpoint_hash"]
    assert m["metric_values"]["mean-norm"]["higher_is_better"] is False


def test_every_cell_starts_from_the_same_noise(tmp_path):
    data = small(
        metrics=["checksum"],
        num_samples=40,
        batch_size=16,
        grid=grid(sampler=["start-noise"], scheduler=["karras", "logsnr"], steps=[1, 3, 7]),
    )
    res = run(data, tmp_path / "r")
    want = initial_checksum(0, 40, (2,))
    assert res.cells["checksum"].tolist() == pytest.approx([want] * 6, rel=1e-12)


def test_several_models_share_the_starting_noise(tmp_path):
    models = [{"name": "gmm", "label": "x0"}, {"name": "gmm", "label": "eps", "options": {"target": "eps"}}]
    data = small(model=models, metrics=["checksum", "mean-norm"], grid=grid(sampler=["start-noise", "heun"], steps=[3]))
    res = run(data, tmp_path / "r")
    assert res.cells["model"].tolist() == ["x0", "x0", "eps", "eps"]
    start = res.cells[res.cells["sampler"] == "start-noise"]["checksum"]
    assert start.tolist() == pytest.approx([initial_checksum(0, 64, (2,))] * 2, rel=1e-12)
    heun = res.cells[res.cells["sampler"] == "heun"]["mean-norm"].tolist()
    assert heun[0] == pytest.approx(heun[1], rel=1e-9)  # the same exact denoiser, whatever the target
    assert set(RunDir(res.path).read_manifest()["calibration"]) == {"x0", "eps"}


def test_failing_cells_are_recorded_and_the_rest_complete(tmp_path):
    data = small(grid=grid(sampler=["broken", "euler", "nan"], steps=[2]))
    res = run(data, tmp_path / "r")
    status = res.cells.set_index("sampler")
    assert status.loc["euler", "status"] == "ok" and status.loc["euler", "mean-norm"] > 0
    assert status.loc["broken", "status"] == "failed"
    assert status.loc["broken", "error"] == "RuntimeError: broken sampler exploded"
    assert status.loc["nan", "status"] == "failed" and "non-finite samples: 32 of 32" in status.loc["nan", "error"]
    assert res.failed == 2
    rec = json.loads(next((res.path / "cells").glob("gmm__broken*.json")).read_text())
    assert "Traceback" in rec["traceback"]
    assert "## Failed cells" in (res.path / "report.md").read_text()


class _LastFirst(LocalExecutor):
    """The local executor running the cells in reverse grid order (so completion order is not grid order)."""

    def run(self, cells):
        return super().run(cells[::-1])


def test_cells_csv_grows_a_row_per_finished_cell_and_closes_in_grid_order(tmp_path, monkeypatch):
    # reversed: the broken cell finishes first (no metric column), then two ok cells (the first brings it)
    data = small(grid=grid(sampler=["euler", "heun", "broken"], steps=[2]))
    seen = []
    add = CellsCsv.add

    def watched(table, record):
        add(table, record)
        path = table.path
        seen.append((path.read_bytes(), path.stat().st_ino, RunDir(path.parent).read_csv()))

    monkeypatch.setattr(CellsCsv, "add", watched)
    res = run(data, tmp_path / "r", executor=_LastFirst())
    grid_order = [c.cell_id for c in expand(parse_suite(data, test_registry()[0]))]
    assert [list(frame["cell_id"]) for _, _, frame in seen] == [grid_order[::-1][:n] for n in (1, 2, 3)]
    (text0, ino0, first), (text1, ino1, second), (text2, ino2, third) = seen
    assert "mean-norm" not in first.columns and first.loc[0, "status"] == "failed"
    # heun brought the metric column: the file was rewritten, the failed row's value empty
    assert ino1 != ino0 and math.isnan(second.loc[0, "mean-norm"]) and second.loc[1, "mean-norm"] > 0
    # euler's row was appended: one line more, the file otherwise as it was
    assert ino2 == ino1 and text2.startswith(text1) and text2[len(text1) :].count(b"\n") == 1
    assert third.loc[2, "mean-norm"] > 0
    # the run closed with the file rebuilt in grid order from the records
    assert (res.path / "cells.csv").read_text() == cells_frame(res.records).to_csv(index=False)
    assert list(RunDir(res.path).read_csv()["cell_id"]) == grid_order


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["sample_seconds", "seconds_per_sample", "counted_seconds_per_sample", "network_share"])


def test_interrupt_keeps_finished_cells_and_resume_reproduces_the_full_run(tmp_path, finished):
    reg, plugin = test_registry()
    data = small(metrics=["mean-norm", {"name": "interrupter", "options": {"after": 3}}])  # warm-up calls it once
    with pytest.raises(RunInterrupted, match="interrupted: 2 of 6 cells kept") as info:
        run(data, tmp_path / "r", registry=reg)
    partial = RunDir(tmp_path / "r")
    assert info.value.run.path == partial.path
    assert len(partial.read_cells()) == 2 and len(partial.read_csv()) == 2
    assert partial.read_manifest()["status"] == "interrupted"
    assert not list(partial.path.rglob("*.tmp"))

    plugin.interrupter.calls = -100  # no more Ctrl-C
    resumed = run(data, tmp_path / "r", registry=reg, resume=True)
    assert resumed.skipped == 2 and resumed.ran == 4
    assert partial.read_manifest()["status"] == "complete" and partial.read_manifest()["resumed"] == 1
    full = comparable(finished.cells).drop(columns=["cell_id", "suite"])
    again = comparable(resumed.cells).drop(columns=["cell_id", "suite", "interrupter", "interrupter_se"])
    pd.testing.assert_frame_equal(full, again)


def test_resume_reruns_cells_whose_configuration_changed(tmp_path):
    run(small(grid=grid(sampler=["euler"], steps=[2, 4])), tmp_path / "r")
    changed = run(small(grid=grid(sampler=["euler", "heun"], steps=[2, 4])), tmp_path / "r", resume=True)
    assert changed.skipped == 2 and changed.ran == 2 and len(changed.cells) == 4
    rerun = run(small(num_samples=32, grid=grid(sampler=["euler"], steps=[2])), tmp_path / "r", resume=True)
    assert rerun.skipped == 0 and rerun.ran == 1 and len(rerun.cells) == 1


def test_resume_reruns_cells_made_with_a_checkpoint_since_replaced_at_the_same_path(tmp_path):
    from diffbench.util.checkpoints import load_checkpoint, save_checkpoint, shipped

    state, config, _ = load_checkpoint(shipped("digits-eps"))
    ckpt = tmp_path / "w.safetensors"
    save_checkpoint(ckpt, state, config)
    suite = small(
        model={"name": "digits-eps", "options": {"checkpoint": str(ckpt)}},
        metrics=["checksum"],
        num_samples=8,
        batch_size=8,
        grid=grid(sampler=["euler"], steps=[2, 3]),
    )
    first = run(suite, tmp_path / "r")
    save_checkpoint(ckpt, {k: v * 1.01 for k, v in state.items()}, config)  # same path, other weights
    said = []
    again = run(suite, tmp_path / "r", resume=True, announce=said.append)
    assert again.skipped == 0 and again.ran == 2  # never mixed: both cells rerun with the new weights
    assert [line for line in said if "checkpoint changed since 2 finished cell(s)" in line]
    assert set(again.cells["checksum"]).isdisjoint(first.cells["checksum"])
    assert run(suite, tmp_path / "r", resume=True).skipped == 2  # unchanged: kept


def test_existing_run_needs_resume(tmp_path):
    run(small(grid=grid(sampler=["euler"], steps=[2])), tmp_path / "r")
    with pytest.raises(SuiteError, match="holds a run already; pass --resume"):
        run(small(grid=grid(sampler=["euler"], steps=[2])), tmp_path / "r")
    with pytest.raises(SuiteError, match="holds a run of suite 'small', not 'other'"):
        run(small(name="other", grid=grid(sampler=["euler"], steps=[2])), tmp_path / "r", resume=True)


def test_default_output_is_results_suite_run_id(tmp_path):
    reg, _ = test_registry()
    suite = parse_suite(small(grid=grid(sampler=["euler"], steps=[2])), reg)
    first = run_suite(suite, registry=reg, progress=False, results_root=tmp_path, cache_dir=tmp_path / "c", draw=False)
    assert first.path.parent == tmp_path / "small" and first.path.name[:2] == "20"
    again = run_suite(
        suite, registry=reg, progress=False, results_root=tmp_path, resume=True, cache_dir=tmp_path, draw=False
    )
    assert again.path == first.path and again.skipped == 1


def test_uncertainty_across_seed_groups(tmp_path):
    res = run(small(seeds=[0, 1, 2], grid=grid(sampler=["euler"], steps=[3])), tmp_path / "r")
    rec = RunDir(res.path).read_cells()[0]
    per_seed = [s["metrics"]["mean-norm"]["value"] for s in rec["per_seed"]]
    assert len(set(per_seed)) == 3
    assert rec["metrics"]["mean-norm"]["value"] == pytest.approx(statistics.fmean(per_seed))
    assert rec["metrics"]["mean-norm"]["uncertainty"] == pytest.approx(statistics.stdev(per_seed) / 3**0.5)
    assert "3 seed groups" in rec["metrics"]["mean-norm"]["method"]
    assert res.cells.loc[0, "seeds"] == "0;1;2"


def test_single_seed_keeps_the_metric_s_own_error(finished):
    rec = RunDir(finished.path).read_cells()[0]
    own = rec["per_seed"][0]["metrics"]["mean-norm"]
    assert rec["metrics"]["mean-norm"]["uncertainty"] == own["uncertainty"] and own["method"] == "std / √n over samples"


def test_timing_excludes_metrics_and_is_consistent(tmp_path):
    res = run(
        small(metrics=[{"name": "slow", "options": {"seconds": 0.5}}], grid=grid(sampler=["euler"], steps=[2])),
        tmp_path / "r",
    )
    row = res.cells.iloc[0]
    assert 0 < row["sample_seconds"] < 0.5
    assert row["seconds_per_sample"] == pytest.approx(row["sample_seconds"] / 64)
    assert 0 < row["network_share"] <= 1


def test_counted_time_is_nfe_times_calibrated_call_plus_harness(tmp_path):
    """Each cell's counted time is its counted NFE × (the run's calibrated bare call + its own harness CPU time
    per call) / batch size; cells doing identical work (ddim and euler: same NFE) share the network part exactly."""
    res = run(small(grid=grid(sampler=["ddim", "euler"], steps=[4])), tmp_path / "r")
    run_dir = RunDir(res.path)
    cal = run_dir.read_manifest()["calibration"]["gmm"]
    assert cal["network_seconds_per_call_min"] <= cal["network_seconds_per_call"]
    recs = {r["sampler"]: r for r in run_dir.read_cells()}
    for rec in recs.values():
        t = rec["timing"]
        assert t["network_seconds_per_call"] == cal["network_seconds_per_call_min"] and t["batch_size"] == 32
        assert rec["counted_seconds_per_sample"] == pytest.approx(
            rec["nfe"] * (cal["network_seconds_per_call_min"] + rec["harness_seconds_per_call"]) / 32, rel=1e-12
        )
        assert "counted NFE" in t["method"]
    network = {k: r["nfe"] * r["timing"]["network_seconds_per_call"] for k, r in recs.items()}
    assert network["ddim"] == network["euler"]
    assert "counted s/sample" in (res.path / "report.md").read_text()


def test_configuration_problems_found_before_running(tmp_path):
    with pytest.raises(SuiteError, match="grid.guidance: model 'gmm' is unconditional"):
        run(small(grid=grid(guidance=[2.0])), tmp_path / "a")
    with pytest.raises(SuiteError, match=r"grid.scheduler\[0\] \(leading, steps=2\): scheduler 'leading' needs a disc"):
        run(small(grid=grid(scheduler=["leading"])), tmp_path / "b")
    if not torch.cuda.is_available():
        with pytest.raises(SuiteError, match="device: .*CUDA is not available"):
            run(small(device="cuda"), tmp_path / "c")
    assert not (tmp_path / "a").exists()


def test_a_metric_that_cannot_run_here_is_a_config_error_before_any_output(tmp_path):
    with pytest.raises(SuiteError, match=r"metrics\[1\] \(picky\): needs an image model"):
        run(small(metrics=["mean-norm", "picky"]), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_a_metric_bug_fails_each_cell_with_its_name(tmp_path):
    picky = {"name": "picky", "options": {"bug": True, "after": 1}}  # the warm-up's call passes
    res = run(small(metrics=[picky], grid=grid(steps=[2])), tmp_path / "r")
    assert (res.cells["status"] == "failed").all()
    assert set(res.cells["error"]) == {"metric 'picky': ZeroDivisionError: metric bug"}
    assert res.cells["nfe"].notna().all()  # sampling finished; its numbers are kept


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_matches_cpu(tmp_path, finished):
    res = run(small(device="cuda"), tmp_path / "r")
    manifest = RunDir(res.path).read_manifest()
    assert manifest["device"].startswith("cuda") and (res.cells["status"] == "ok").all()
    # the same per-sample noise (drawn on the CPU), float64 on both: the same numbers to rounding
    assert res.cells["mean-norm"].tolist() == pytest.approx(finished.cells["mean-norm"].tolist(), rel=1e-9)


def test_git_state_reads_sha_and_dirty_flag(tmp_path):
    import subprocess

    from diffbench.run.provenance import git_state

    assert git_state(tmp_path) == {"sha": None, "dirty": None}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    (tmp_path / "f").write_text("a")
    for args in (["init", "-q"], ["add", "f"], ["commit", "-q", "-m", "x"]):
        subprocess.run(git + args, check=True)
    sha = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_state(tmp_path) == {"sha": sha, "dirty": False}
    (tmp_path / "f").write_text("b")
    assert git_state(tmp_path) == {"sha": sha, "dirty": True}


def test_each_metric_keeps_its_own_direction(tmp_path):
    res = run(small(metrics=["mean-norm", "checksum"], grid=grid(sampler=["euler"], steps=[2])), tmp_path / "r")
    values = RunDir(res.path).read_manifest()["metric_values"]
    assert values["mean-norm"]["higher_is_better"] is False and values["checksum"]["higher_is_better"] is True


def test_guidance_counts_both_halves_on_a_conditional_image_model(tmp_path):
    data = small(
        model="digits-eps",
        num_samples=16,
        batch_size=16,
        grid=grid(sampler=["euler", "heun"], steps=[2], guidance=[None, 2.0]),
    )
    res = run(data, tmp_path / "r")
    nfe = res.cells.set_index(["sampler", res.cells["guidance"].fillna(1.0)])["nfe"]
    assert nfe[("euler", 1.0)] == 2 and nfe[("euler", 2.0)] == 4
    assert nfe[("heun", 1.0)] == 3 and nfe[("heun", 2.0)] == 6
    assert (res.cells["nfe"] == res.cells["declared_nfe"]).all()
    from PIL import Image

    with Image.open(next((res.path / "cells").glob("*.png"))) as img:
        assert img.mode == "L" and img.size[0] >= 128  # a 4 × 4 grid of 8 × 8 digits, upscaled
    with pytest.raises(SuiteError, match="guidance needs conditional: true"):
        run({**data, "conditional": False}, tmp_path / "s")


def test_trajectory_error_in_a_run_absent_for_stochastic_cells_with_the_reason(tmp_path):
    data = small(
        metrics=["trajectory-error", "solver-error"],
        num_samples=16,
        batch_size=8,
        grid=grid(sampler=["heun", "ddpm"], steps=[4]),
    )
    registry = test_registry()[0]
    run_suite(
        parse_suite(data, registry),
        tmp_path / "r",
        registry=registry,
        progress=False,
        cache_dir=tmp_path / "cache",
        draw=True,
    )
    cells = {
        json.loads(p.read_text())["sampler"]: json.loads(p.read_text())
        for p in (tmp_path / "r" / "cells").glob("*.json")
    }
    heun, ddpm = cells["heun"], cells["ddpm"]
    assert "trajectory-error" in heun["metrics"] and "trajectory-error" not in ddpm["metrics"]
    assert any("trajectory-error absent: sampler 'ddpm' is stochastic" in w for w in ddpm["warnings"])
    # on the GMM it is the exact solver error per coordinate (2-D): same samples, same starting noise
    exact = heun["metrics"]["solver-error-mean"]["value"] / 2**0.5
    assert heun["metrics"]["trajectory-error"]["value"] == pytest.approx(exact, rel=1e-3)
    report = (tmp_path / "r" / "report.md").read_text()
    assert "trajectory-error absent: sampler 'ddpm' is stochastic" in report
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert any(e["nfe_per_sample"] > 0 for e in manifest["metric_info"]["trajectory_references"].values())


def test_a_cache_directory_inside_a_fresh_out_directory_is_not_a_foreign_file(tmp_path):
    """The warm-up writes a trajectory reference into --cache-dir before the run claims --out."""
    from diffbench.registry import default_registry

    data = small(
        metrics=[{"name": "trajectory-error", "options": {"max_samples": 4}}],
        num_samples=8,
        batch_size=8,
        grid=grid(sampler=["euler"], steps=[2]),
    )
    out = tmp_path / "out"
    result = run_suite(parse_suite(data, default_registry()), out, progress=False, cache_dir=out / "cache", draw=False)
    assert list((out / "cache" / "trajectory-references").glob("*.safetensors"))
    assert RunDir(result.path).read_cells()[0]["status"] == "ok"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SuiteError, match="exists and is not a diffbench run directory"):
        run_suite(parse_suite(data, default_registry()), other, progress=False, cache_dir=other / "cache", draw=False)


def test_one_trajectory_reference_serves_every_grid_and_is_in_the_plan(tmp_path):
    """Karras grids to σ_min and to σ = 0.05, at two step counts each: one reference (one solve, two stops),
    counted in the plan and the manifest; a second run plans it as cached and solves nothing."""
    data = small(
        metrics=["trajectory-error", "solver-error"],
        num_samples=8,
        batch_size=8,
        grid=grid(
            sampler=["euler", "heun", "ddpm"],
            steps=[3, 5],
            scheduler=["karras", {"name": "karras", "label": "karras-005", "options": {"sigma_min": 0.05}}],
        ),
    )
    said = []
    first = run(data, tmp_path / "a", announce=said.append)
    manifest = json.loads((first.path / "manifest.json").read_text())
    (ref,) = manifest["metric_info"]["trajectory_references"].values()
    assert ref["from_cache"] is False and {(round(s, 6), z) for s, z in ref["stops"]} == {(0.002, True), (0.05, True)}
    plan = manifest["plan"]
    assert plan["references"] == 1 and plan["references_cached"] == 0 and plan["reference_network_evaluations"] is None
    assert "1 trajectory reference(s), 0 cached: unknown network evaluations" in said[0]
    cells = {(r["sampler"], r["scheduler"], r["steps"]): r for r in RunDir(first.path).read_cells()}
    for key, rec in cells.items():  # to σ_min on the GMM: the exact solver error per coordinate (2-D)
        if key[0] != "ddpm" and key[1] == "karras":
            exact = rec["metrics"]["solver-error-mean"]["value"] / 2**0.5
            assert rec["metrics"]["trajectory-error"]["value"] == pytest.approx(exact, rel=1e-3)
    said.clear()
    second = run_suite(
        parse_suite(data, test_registry()[0]),
        tmp_path / "b",
        registry=test_registry()[0],
        progress=False,
        cache_dir=tmp_path / "a" / "cache",
        draw=False,
        announce=said.append,
    )
    assert "1 trajectory reference(s), 1 cached: about 0 network evaluations" in said[0]
    manifest = json.loads((second.path / "manifest.json").read_text())
    assert all(e["from_cache"] for e in manifest["metric_info"]["trajectory_references"].values())
