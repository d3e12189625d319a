"""The CLI: exit codes (0 ok, 2 user error in one line, 3 internal, 130 interrupted) and each command."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml
from click.testing import CliRunner
from runhelpers import grid, small, test_registry

import diffbench
from diffbench import registry as registry_module
from diffbench.cli import cli
from diffbench.registry import PluginError
from diffbench.run import runner
from diffbench.run.rundir import RunDir


@pytest.fixture(autouse=True)
def with_test_plugins(monkeypatch):
    """The CLI's process-wide registry, with the test plugins in it."""
    reg, _ = test_registry()
    monkeypatch.setattr(registry_module, "_default", reg)
    return reg


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def suite_file(tmp_path, **overrides):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(small(**overrides)))
    return path


def assert_one_line_error(result, code, text):
    assert result.exit_code == code
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert text in result.stderr


def test_validate(tmp_path):
    result = invoke("validate", suite_file(tmp_path))
    # euler 2 + 4, heun 3 + 7 (2N - 1), dpm-solver++-2m 2 + 4 = 22 evaluations per sample, × 64 samples
    plan = "6 cells × 1 seed × 64 samples = 384 samples, 1,408 network evaluations (declared)"
    assert result.exit_code == 0 and result.stdout.endswith(f"ok ({plan})\n")
    bad = suite_file(tmp_path, grid=grid(sampler=[{"name": "ddim", "options": {"etta": 0}}]))
    assert_one_line_error(invoke("validate", bad), 2, "grid.sampler[0].options.etta: sampler 'ddim' has no such option")
    assert_one_line_error(invoke("validate", tmp_path / "none.yaml"), 2, "cannot read suite")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(small()))
    both = invoke("validate", bad, good)  # every file is checked; any bad one makes it exit 2
    assert both.exit_code == 2 and "etta" in both.stderr and both.stdout == f"{good}: ok ({plan})\n"


def test_validate_states_the_trajectory_references_cost_and_never_solves_them(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFBENCH_CACHE_DIR", str(tmp_path / "cache"))
    result = invoke("validate", suite_file(tmp_path, metrics=["trajectory-error"], num_samples=8, batch_size=8))
    assert result.exit_code == 0, result.output
    assert (
        "1 trajectory reference(s), 0 cached: unknown network evaluations to compute (not known before this "
        "model's first solve (adaptive steps))"
    ) in result.stdout
    assert not (tmp_path / "cache" / "trajectory-references").exists()


def test_validate_no_load_checks_what_needs_no_model(tmp_path):
    result = invoke("validate", "--no-load", suite_file(tmp_path))
    assert result.exit_code == 0 and result.stdout.endswith(
        "ok (6 cells; --no-load: models, grids, plan and warm-up not checked)\n"
    )
    bad = suite_file(tmp_path, grid=grid(sampler=[{"name": "ddim", "options": {"etta": 0}}]))
    assert_one_line_error(
        invoke("validate", "--no-load", bad), 2, "grid.sampler[0].options.etta: sampler 'ddim' has no such option"
    )
    empty = suite_file(tmp_path, exclude=[{"sampler": ["euler", "heun", "dpm-solver++-2m"]}])
    assert_one_line_error(invoke("validate", "--no-load", empty), 2, "no cells are left")


def test_usage_errors_exit_2():
    assert CliRunner().invoke(cli, ["run"]).exit_code == 2
    assert CliRunner().invoke(cli, ["frobnicate"]).exit_code == 2


def test_schema_includes_plugin_options():
    result = invoke("schema")
    schema = json.loads(result.stdout)
    assert result.exit_code == 0 and schema["title"] == "diffbench suite"
    assert any(k.startswith("MetricSpec_mean_norm") for k in schema["$defs"])
    assert '"eta"' in result.stdout and '"rho"' in result.stdout


def test_plugins_table_and_json(monkeypatch):
    result = invoke("plugins")
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["kind", "name", "plugin", "distribution", "version", "description"]
    heun = next(r for r in rows if r.split()[:2] == ["sampler", "heun"])
    assert heun.split()[2:5] == ["builtin", "diffbench", diffbench.__version__]
    assert heun.endswith("Heun's 2nd-order method, no correction on the step to σ = 0 (Karras et…")
    listed = json.loads(invoke("plugins", "--json").stdout)
    assert {"kind", "name", "plugin", "distribution", "version"} <= set(listed[0])
    mean_norm = next(c for c in listed if c["name"] == "mean-norm")
    assert mean_norm["kind"] == "metric" and mean_norm["options"] == {"scale": 1.0}


def test_plugins_warns_about_broken_plugins(monkeypatch):
    reg, _ = test_registry()
    reg.errors.append(PluginError("badplug", "bad-dist", "failed to import: ImportError: nope"))
    monkeypatch.setattr(registry_module, "_default", None)
    monkeypatch.setattr(registry_module, "build_registry", lambda: reg)
    result = invoke("plugins")
    assert result.exit_code == 1  # a failed check: the plugin's components are missing
    assert "warning: plugin 'badplug' (bad-dist): failed to import" in result.stderr
    assert result.stdout.endswith(
        "\n1 plugin(s) failed to load or register (their components are not listed):\n"
        "  plugin 'badplug' (bad-dist): failed to import: ImportError: nope\n"
    )


def test_validate_names_a_plugin_that_failed_to_register(tmp_path, monkeypatch):
    reg, _ = test_registry()
    reg.errors.append(
        PluginError("extra", "diffbench-extra", "registration failed: sampler 'ipndm': unknown declaration 'orders'")
    )
    for comp in [c for c in reg if c.distribution == "diffbench-extra"]:
        del reg._items[comp.kind][comp.name]
    monkeypatch.setattr(registry_module, "_default", reg)
    result = invoke("validate", suite_file(tmp_path, requires={"diffbench_extra": ">=0.1"}))
    assert_one_line_error(
        result,
        2,
        "requires.diffbench_extra: diffbench_extra is installed but its plugin failed to "
        "load or register: plugin 'extra' (diffbench-extra): registration failed: "
        "sampler 'ipndm': unknown declaration 'orders'",
    )
    named = invoke("validate", suite_file(tmp_path, grid=grid(sampler=["ipndm"])))
    assert_one_line_error(named, 2, "unknown sampler 'ipndm'; available: ")
    assert "; plugin 'extra' (diffbench-extra): registration failed" in named.stderr


def test_run_show_and_report(tmp_path):
    out = tmp_path / "run"
    result = invoke("run", suite_file(tmp_path, grid=grid(steps=[2])), "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "3 cells run (0 failed)" in result.stdout and (out / "cells.csv").exists()
    shown = invoke("show", out)
    assert shown.exit_code == 0 and "dpm-solver++-2m" in shown.stdout and "mean-norm vs best ≤1.25× NFE" in shown.stdout
    assert invoke("show", tmp_path).stdout == shown.stdout  # a suite's folder: its newest run
    assert_one_line_error(invoke("show", out / "cells"), 2, "not a diffbench run directory")
    assert invoke("report", out).stdout.strip().endswith("report.md")

    again = invoke("run", suite_file(tmp_path, grid=grid(steps=[2])), "--out", out, "--no-progress")
    assert_one_line_error(again, 2, "holds a run already; pass --resume")
    resumed = invoke("run", suite_file(tmp_path, grid=grid(steps=[2])), "--out", out, "--resume", "--no-progress")
    assert resumed.exit_code == 0 and "0 cells run (0 failed), 3 kept from before" in resumed.stdout


def test_config_error_found_at_run_time_is_exit_2(tmp_path):
    result = invoke("run", suite_file(tmp_path, grid=grid(guidance=[3.0])), "--out", tmp_path / "r")
    assert_one_line_error(result, 2, "model 'gmm' is unconditional")


def test_internal_error_is_exit_3(tmp_path, monkeypatch):
    def explode(*_, **__):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(runner, "run_suite", explode)
    result = invoke("run", suite_file(tmp_path), "--out", tmp_path / "r")
    assert result.exit_code == 3
    assert "Traceback" in result.stderr and result.stderr.splitlines()[-1].startswith(
        "diffbench: internal error: ZeroDivisionError: oops"
    )


def test_ctrl_c_keeps_cells_and_exits_130(tmp_path):
    path = suite_file(tmp_path, metrics=[{"name": "interrupter", "options": {"after": 2}}])  # warm-up is call 1
    result = invoke("run", path, "--out", tmp_path / "r", "--no-progress")
    assert_one_line_error(result, 130, "interrupted: 1 of 6 cells kept in")
    assert "finish with --resume" in result.stderr
    assert len(list((tmp_path / "r" / "cells").glob("*.json"))) == 1


@pytest.mark.skipif(shutil.which("diffbench") is None, reason="console script not installed")
def test_console_script_exit_code(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: gmm\nnum_samples: 0\n")
    proc = subprocess.run(["diffbench", "validate", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"diffbench: error: {bad}: num_samples: Input should be greater than 0"]


@pytest.mark.skipif(shutil.which("diffbench") is None, reason="console script not installed")
def test_real_sigint_keeps_finished_cells(tmp_path):
    import signal
    import time

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small(metrics=["solver-error"], grid=grid(steps=[2, 3, 4, 5, 6, 7, 8, 9]))))
    out = tmp_path / "r"
    proc = subprocess.Popen(
        ["diffbench", "run", str(path), "--out", str(out), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as in a terminal: a shell's background job (CI's, say) starts with SIGINT ignored, which
        # Python then leaves ignored, and the run would rightly finish instead
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not list((out / "cells").glob("[!.]*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    kept = list((out / "cells").glob("[!.]*.json"))
    assert proc.returncode == 130 and err.count("\n") == 1 and "Traceback" not in err
    assert f"interrupted: {len(kept)} of 24 cells kept" in err
    assert len(RunDir(out).read_csv()) == len(kept) >= 1
    assert RunDir(out).read_manifest()["status"] == "interrupted" and not list(out.rglob("*.tmp"))


def test_run_scores_fid_inf_from_a_suite(tmp_path):
    """fid-inf through `diffbench run` (it asks the extractor for FID's feature layer): FID∞ extrapolates FID's
    positive small-sample bias away, so it lies below FID at N on the same samples."""
    suite = {
        "name": "fid-inf",
        "model": "digits-eps",
        "metrics": ["fid", {"name": "fid-inf", "options": {"points": 5}}],
        "num_samples": 200,
        "batch_size": 100,
        "seeds": [0],
        "device": "cpu",
        "grid": {"sampler": ["ddim"], "scheduler": ["karras"], "steps": [5]},
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    result = invoke("run", path, "--out", tmp_path / "run", "--no-progress")
    assert result.exit_code == 0, result.output
    (cell,) = [json.loads(p.read_text()) for p in (tmp_path / "run" / "cells").glob("*.json")]
    assert cell["status"] == "ok"
    fid, inf = cell["metrics"]["fid"], cell["metrics"]["fid-inf"]
    assert inf["uncertainty"] > 0 and "FID∞" in inf["method"]
    assert inf["value"] < fid["value"]


def test_python_dash_m_runs_the_command_line():
    import sys

    for module in ("diffbench", "diffbench.cli"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.startswith("Usage: diffbench"), (module, done.stderr)
