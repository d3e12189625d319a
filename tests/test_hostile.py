"""Hostile input, one case per class at least: misbehaving plugins, hostile suite files, damaged or
shared run directories, and the honesty of what sample() leaves behind."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from diffbench.hookspecs import hookimpl
from diffbench.registry import Registry, build_registry
from diffbench.cli import cli
from diffbench.results import RunBusyError, RunDir, RunDirError
from diffbench.runner import run_suite
from diffbench.samplers import per_step
from diffbench.sampling import SamplerOutputError, sample
from diffbench.suite import SuiteError, load_suite, parse_suite
import runhelpers
from runhelpers import grid, small

pytestmark = pytest.mark.usefixtures("single_thread")


# --- misbehaving samplers ------------------------------------------------------------------------

def wrong_shape(denoiser, x, sigmas, *, noise=None):
    """Drops the last sample."""
    denoiser(x, float(sigmas[0]))
    return x[:-1]


def wrong_dtype(denoiser, x, sigmas, *, noise=None):
    """Returns half precision for a float64 model."""
    denoiser(x, float(sigmas[0]))
    return x.half()


def wrong_device(denoiser, x, sigmas, *, noise=None):
    """Returns its batch on another device ('meta' stands in for a GPU on a CPU-only machine)."""
    denoiser(x, float(sigmas[0]))
    return x.to("meta")


def not_a_tensor(denoiser, x, sigmas, *, noise=None):
    denoiser(x, float(sigmas[0]))
    return x.tolist()


def exits(denoiser, x, sigmas, *, noise=None):
    """Calls sys.exit as a careless script would."""
    sys.exit(4)


def overcounts(denoiser, x, sigmas, *, noise=None):
    """Makes one more network call than it declares."""
    for s in sigmas[:-1]:
        x = denoiser(x, float(s))
    denoiser(x, float(sigmas[0]))
    return x


class RaisingNetwork(torch.nn.Module):
    """A network that cannot take the suite's samples (as one built for another shape)."""

    def forward(self, x, t, *args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x2 and 3x64)\nmore text torch adds")


def raising_model():
    """The gmm model with a network that raises on every call."""
    import dataclasses

    from diffbench.models.gmm import gmm

    return dataclasses.replace(gmm(), network=RaisingNetwork())


class Misbehaving:
    @hookimpl
    def diffbench_register(self, registry: Registry) -> None:
        registry.add("model", "raising", raising_model)
        one = dict(order=None, nfe=lambda s, **_: 1, stochastic=lambda **_: False)
        for fn in (wrong_shape, wrong_dtype, wrong_device, not_a_tensor, exits):
            registry.add("sampler", fn.__name__.replace("_", "-"), fn, **one)
        registry.add("sampler", "overcounts", overcounts, order=None, nfe=per_step(1), stochastic=lambda **_: False)


def hostile_registry() -> Registry:
    return build_registry(extra_plugins=[runhelpers.TestPlugin(), Misbehaving()], autoload=False)


def run(data, out, registry=None, draw=False, **kw):
    registry = registry or hostile_registry()
    return run_suite(parse_suite(data, registry), out, registry=registry, progress=False, cache_dir=out / "cache",
                     draw=draw, **kw)


def test_each_misbehaving_sampler_fails_its_own_cell_with_a_reason(tmp_path):
    samplers = ["wrong-shape", "wrong-dtype", "wrong-device", "not-a-tensor", "exits", "nan", "euler"]
    res = run(small(grid=grid(sampler=samplers, steps=[2])), tmp_path / "r")
    cells = res.cells.set_index("sampler")
    assert cells.loc["euler", "status"] == "ok"
    errors = {s: cells.loc[s, "error"] for s in samplers[:-1]}
    assert all(cells.loc[s, "status"] == "failed" for s in errors)
    assert errors["wrong-shape"] == "sampler 'wrong-shape' (samples 0..31) returned shape (31, 2), expected (32, 2)"
    assert errors["wrong-dtype"] == "sampler 'wrong-dtype' (samples 0..31) returned dtype float16, expected float64"
    assert errors["wrong-device"] == "sampler 'wrong-device' (samples 0..31) returned a tensor on meta, expected cpu"
    assert errors["not-a-tensor"] == "sampler 'not-a-tensor' (samples 0..31) returned list, not a tensor"
    assert errors["exits"] == "SystemExit: 4"
    assert errors["nan"] == "sampler 'nan' (samples 0..31) returned non-finite samples: 32 of 32"
    assert res.failed == 6


def test_a_plugin_that_miscounts_its_nfe_is_flagged_in_the_record_and_report(tmp_path):
    res = run(small(grid=grid(sampler=["overcounts"], steps=[3])), tmp_path / "r")
    cell = res.cells.iloc[0]
    assert cell["status"] == "ok" and cell["nfe"] == 4 and cell["declared_nfe"] == 3  # counted is what is used
    rec = RunDir(res.path).read_cells()[0]
    assert len(rec["warnings"]) == 1 and re.fullmatch(
        r"sampler 'overcounts' made 4 network evaluations per sample but declares 3 \(plugin 'Misbehaving[^']*'; "
        r"its cost axis uses the counted NFE\)", rec["warnings"][0])
    report = (res.path / "report.md").read_text()
    assert "## Warnings" in report and "made 4 network evaluations per sample but declares 3" in report


def test_a_builtin_that_miscounts_its_nfe_is_an_error(gmm_model):
    registry = build_registry(autoload=False)
    registry.get("sampler", "euler").meta["nfe"] = lambda sigmas, **_: len(sigmas)  # one more than it makes
    with pytest.raises(SamplerOutputError, match="sampler 'euler' made 4 network evaluations per sample but "
                                                 "declares 5"):
        sample(gmm_model, "euler", steps=4, num_samples=3, registry=registry)


# --- no hidden state -----------------------------------------------------------------------------

@pytest.fixture
def gmm_model():
    return build_registry(autoload=False).get("model", "gmm").obj()


def test_sample_in_another_dtype_leaves_the_callers_model_as_it_was():
    model = build_registry(autoload=False).get("model", "digits-eps").obj()
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    res = sample(model, "euler", steps=3, num_samples=2, dtype="float16")
    assert res.samples.dtype == torch.float16 and res.meta["dtype"] == "float16"
    assert model.dtype == torch.float32
    after = model.network.state_dict()
    assert all(after[k].dtype == torch.float32 and torch.equal(after[k], v) for k, v in before.items())
    # and a later call without dtype samples in the model's own float32, as if the first never happened
    again = sample(model, "euler", steps=3, num_samples=2)
    fresh = sample(build_registry(autoload=False).get("model", "digits-eps").obj(), "euler", steps=3, num_samples=2)
    assert again.samples.dtype == torch.float32 and torch.equal(again.samples, fresh.samples)


# --- a sampler past the per-cell time limit ------------------------------------------------------

def sleepy(denoiser, x, sigmas, *, noise=None, seconds: float = 30.0):
    """Never returns in time (a hung plugin), after one network call."""
    denoiser(x, float(sigmas[0]))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)
    return x


class Sleepy:
    @hookimpl
    def diffbench_register(self, registry: Registry) -> None:
        registry.add("sampler", "sleepy", sleepy, order=None, nfe=lambda s, **_: 1, stochastic=lambda **_: False)


def test_a_cell_past_its_time_limit_fails_and_the_run_goes_on(tmp_path):
    registry = build_registry(extra_plugins=[runhelpers.TestPlugin(), Sleepy()], autoload=False)
    data = small(time_limit=0.5, grid=grid(sampler=["sleepy", "euler"], steps=[2]))
    t0 = time.monotonic()
    res = run(data, tmp_path / "r", registry=registry)
    assert time.monotonic() - t0 < 20  # two 0.5 s limits (warm-up and the cell), not 30 s sleeps
    cells = res.cells.set_index("sampler")
    assert cells.loc["sleepy", "status"] == "failed" and cells.loc["sleepy", "error"] == "time limit of 0.5 s exceeded"
    assert cells.loc["euler", "status"] == "ok"
    # the CLI flag overrides the suite's limit
    res = run(small(grid=grid(sampler=["sleepy"], steps=[2]), metrics=[]), tmp_path / "r2", registry=registry,
              time_limit=0.3)
    assert res.cells.iloc[0]["error"] == "time limit of 0.3 s exceeded"


# --- configuration problems found at warm-up, empty grids, plans -----------------------------------

def test_a_metric_failing_at_warm_up_with_any_exception_is_a_config_error_before_anything_is_written(tmp_path):
    with pytest.raises(SuiteError, match=r"^metrics\[0\] \(picky\): ZeroDivisionError: metric bug$"):
        run(small(metrics=[{"name": "picky", "options": {"bug": True}}]), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_an_empty_grid_is_an_error(tmp_path):
    data = small(grid=grid(sampler=["euler"], steps=[2]), exclude=[{"sampler": "euler"}])
    with pytest.raises(SuiteError, match="^grid: no cells are left after exclude and include$"):
        run(data, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_a_huge_plan_needs_allow_large_and_is_stated(tmp_path):
    from diffbench.plan import MAX_CELLS, MAX_SAMPLES

    big = small(num_samples=MAX_SAMPLES // 6 + 1)  # 6 cells
    with pytest.raises(SuiteError, match=r"num_samples × seeds × cells: 10,000,002 samples exceeds the limit of "
                                         r"10,000,000; pass --allow-large"):
        run(big, tmp_path / "r")
    many = small(grid=grid(steps=list(range(1, 3400))))  # 3 samplers × 3399 steps > MAX_CELLS
    with pytest.raises(SuiteError, match=rf"^grid: 10,197 cells \(before exclude\) exceeds the limit of {MAX_CELLS:,}"):
        run(many, tmp_path / "r")
    assert not (tmp_path / "r").exists()
    said = []
    res = run(small(grid=grid(sampler=["euler"], steps=[2, 3])), tmp_path / "ok", announce=said.append)
    # euler: N evaluations for N steps; 2 + 3 = 5 per sample, × 64 samples
    assert said == ["plan: 2 cells × 1 seed × 64 samples = 128 samples, 320 network evaluations (declared)"]
    assert json.loads((res.path / "manifest.json").read_text())["plan"]["network_evaluations"] == 320


# --- hostile suite files ---------------------------------------------------------------------------

def write(tmp_path, text: str | bytes):
    path = tmp_path / "suite.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def suite_text(**overrides) -> str:
    return yaml.safe_dump(small(**overrides), sort_keys=False)


def load_error(tmp_path, text) -> str:
    path = write(tmp_path, text)
    with pytest.raises(SuiteError) as info:
        load_suite(path, hostile_registry())
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    return msg.removeprefix(f"{path}: ")


@pytest.mark.parametrize("text, expected", [
    # non-finite numbers anywhere, typed or not
    ("grid:\n  guidance: [1.0, .nan]\n", "grid.guidance[1]: nan is not a finite number"),
    ("grid:\n  sampler: [{name: ddim, options: {eta: .inf}}]\n", "grid.sampler[0].options.eta: inf is not a finite number"),
    ("metrics: [{name: mean-norm, options: {scale: -.inf}}]\n", "metrics[0].options.scale: -inf is not a finite number"),
    # booleans where integers (or floats) are expected
    ("num_samples: true\n", "num_samples: Input should be a valid integer, not the boolean true"),
    ("grid:\n  steps: [4, false]\n", "grid.steps[1]: Input should be a valid integer, not the boolean false"),
    ("seeds: [true]\n", "seeds[0]: Input should be a valid integer, not the boolean true"),
    ("grid:\n  sampler: [{name: ddim, options: {eta: true}}]\n",
     "grid.sampler[0].options.eta: Input should be a valid number, not the boolean true"),
    # negative seeds
    ("seeds: [0, -1]\n", "seeds[1]: Input should be greater than or equal to 0"),
    # absurd sizes that would allocate before the first sample
    ("grid:\n  steps: [1000000000]\n", "grid.steps[0]: Input should be less than or equal to 100000"),
])
def test_strict_values_are_one_line_errors_naming_the_yaml_path(tmp_path, text, expected):
    data = yaml.safe_load(suite_text())
    data.update(yaml.safe_load(text) if "grid:" not in text else {})
    if "grid:" in text:
        data["grid"].update(yaml.safe_load(text)["grid"])
    assert load_error(tmp_path, yaml.safe_dump(data, sort_keys=False)) == expected


def test_duplicate_keys_are_refused(tmp_path):
    text = suite_text() + "num_samples: 8\n"
    line = text.count("\n")
    first = text.splitlines().index("num_samples: 64") + 1
    assert load_error(tmp_path, text) == f"line {line}: duplicate key 'num_samples' (first on line {first})"


def test_binary_and_non_utf8_files_are_refused(tmp_path):
    assert load_error(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR") == \
        "a binary file, not a YAML suite (it contains NUL bytes)"
    assert load_error(tmp_path, b"name: small\ndescription: caf\xe9\n") == "line 2: not UTF-8 text (byte 0xe9)"


def test_nesting_and_alias_bombs_are_bounded(tmp_path):
    from diffbench.suitefile import MAX_DEPTH, MAX_VALUES

    deep = "description: " + "[" * 10_000 + "]" * 10_000 + "\n"
    assert load_error(tmp_path, suite_text() + deep).endswith(f"nested deeper than {MAX_DEPTH} levels")
    laughs = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    laughs += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]  # 9^9 ≈ 387 million strings
    bomb = "x-bomb:\n" + "".join(f"  {line}\n" for line in laughs)
    t0 = time.monotonic()
    assert load_error(tmp_path, suite_text() + bomb) == \
        f"more than {MAX_VALUES} values once YAML aliases are expanded (an alias bomb or a self-referencing structure?)"
    assert time.monotonic() - t0 < 10
    assert load_error(tmp_path, suite_text() + "x-loop: &l [*l]\n") == \
        f"x-loop{'[0]' * (MAX_DEPTH - 1)}: nested deeper than {MAX_DEPTH} levels"


def test_a_file_larger_than_a_suite_may_be_is_refused_without_reading_it_all(tmp_path):
    from diffbench.suitefile import MAX_BYTES

    assert load_error(tmp_path, suite_text() + "#" * MAX_BYTES + "\n") == \
        f"larger than a suite file may be ({MAX_BYTES} bytes)"


def test_a_device_torch_cannot_use_is_a_one_line_config_error(tmp_path):
    for device, why in [("cuda:3", "CUDA is not available" if not torch.cuda.is_available() else "does not exist")]:
        with pytest.raises(SuiteError, match=f"^device: device '{device}' .*{why}"):
            run(small(device=device), tmp_path / "r")
    assert load_error(tmp_path, suite_text(device="tpu")) == "device: device must be auto, cpu, cuda or cuda:N, got 'tpu'"


def test_a_model_of_absurd_size_is_refused_before_it_allocates(tmp_path):
    with pytest.raises(SuiteError, match=r"^model: 'gmm' could not be loaded: dim=100000 with components=3 needs "
                                         r"224 GiB of covariances \(limit 0.5 GiB\)$"):
        run(small(model={"name": "gmm", "options": {"dim": 100_000}}), tmp_path / "r")


# --- damaged or shared run directories --------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished small run (6 cells) to damage in copies."""
    return run(small(), tmp_path_factory.mktemp("fin") / "r")


def copy_run(res, dest):
    shutil.copytree(res.path, dest)
    return dest


def test_resume_reruns_unreadable_and_truncated_records_saying_which(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path / "r")
    cells = sorted((out / "cells").glob("*.json"))
    truncated, garbage = cells[0], cells[3]
    truncated.write_bytes(truncated.read_bytes()[:100])
    garbage.write_bytes(b"\xff\xfe not json at all")
    said = []
    res = run(small(), out, resume=True, announce=said.append)
    assert res.ran == 2 and res.skipped == 4 and (res.cells["status"] == "ok").all()
    warnings = [s for s in said if s.startswith("warning")]
    assert len(warnings) == 2 and all(w.endswith("; rerunning its cell") for w in warnings)
    assert any(str(truncated) in w and "truncated or not JSON" in w for w in warnings)
    assert any(str(garbage) in w and "not UTF-8" in w for w in warnings)
    # the rerun cells are whole again and equal the originals' numbers (same seeds, same noise)
    before = finished_run.cells.set_index("cell_id")["mean-norm"]
    after = res.cells.set_index("cell_id")["mean-norm"]
    assert after.to_dict() == pytest.approx(before.to_dict(), rel=1e-12)


@pytest.mark.parametrize("damage", ["record", "manifest", "csv"])
def test_show_report_and_compare_name_the_bad_file_in_one_line(finished_run, tmp_path, damage):
    out = copy_run(finished_run, tmp_path / "r")
    bad = {"record": sorted((out / "cells").glob("*.json"))[1], "manifest": out / "manifest.json",
           "csv": out / "cells.csv"}[damage]
    bad.write_bytes(b'{"cell_id": "x", "trunc' if damage != "csv" else b'a,b\n"unterminated\n')
    commands = [["report", str(out)]]
    if damage != "csv":
        commands.append(["compare", str(finished_run.path), str(out)])  # compare reads records and manifest
    if damage != "record":
        commands.append(["show", str(out)])  # show reads cells.csv and the manifest
    for args in commands:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, args
        assert str(bad) in result.stderr and "unreadable" in result.stderr, (args, result.stderr)


def test_a_run_killed_before_its_manifest_is_resumable(finished_run, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    shutil.copy(finished_run.path / "suite.json", out / "suite.json")
    (out / ".lock").write_text("12345\n")  # left by the killed process (its lock died with it)
    with pytest.raises(SuiteError, match="holds a run already; pass --resume"):
        run(small(), out)
    res = run(small(), out, resume=True)
    assert res.ran == 6 and (res.cells["status"] == "ok").all()
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    # a directory holding only the lock (killed before writing anything) is a fresh start
    empty = tmp_path / "e"
    empty.mkdir()
    (empty / ".lock").write_text("")
    assert run(small(grid=grid(steps=[2])), empty).ran == 3


class LoadSpy:
    """Counts model loads: an unwritable output must be found before any."""

    loads = 0

    @hookimpl
    def diffbench_register(self, registry: Registry) -> None:
        gmm = build_registry(autoload=False).get("model", "gmm").obj

        def spied(**kw):
            LoadSpy.loads += 1
            return gmm(**kw)

        spied.__signature__ = __import__("inspect").signature(gmm)
        registry.add("model", "spied-gmm", spied)


def test_an_unwritable_out_or_cache_dir_is_found_before_any_model_loads(tmp_path):
    registry = build_registry(extra_plugins=[runhelpers.TestPlugin(), LoadSpy()], autoload=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    data = small(model={"name": "spied-gmm"})
    with pytest.raises(RunDirError, match=f"^--out {blocker}/run: {blocker} is not a directory$"):
        run_suite(parse_suite(data, registry), blocker / "run", registry=registry, progress=False,
                  cache_dir=tmp_path / "cache")
    with pytest.raises(RunDirError, match=f"^cache directory {blocker}/c: {blocker} is not a directory$"):
        run_suite(parse_suite(data, registry), tmp_path / "r", registry=registry, progress=False,
                  cache_dir=blocker / "c")
    if os.geteuid() != 0:  # root may write anywhere: a read-only directory stops only other users
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(RunDirError, match="is not writable"):
            run_suite(parse_suite(data, registry), ro / "r", registry=registry, progress=False,
                      cache_dir=tmp_path / "cache")
    assert LoadSpy.loads == 0 and not (tmp_path / "r").exists()


def test_a_second_run_into_a_busy_directory_is_refused_in_one_line(tmp_path):
    out = tmp_path / "r"
    with RunDir(out).lock():
        with pytest.raises(RunBusyError, match=rf"^{out}: in use by another diffbench run \(pid {os.getpid()}, "
                                               r"\.lock\); wait for it or choose another --out$"):
            run(small(), out)
        # a shard locks its own name in the same directory
        with RunDir(out).lock(".lock-shard-1"):
            with pytest.raises(RunBusyError, match="lock-shard-1"):
                with RunDir(out).lock(".lock-shard-1"):
                    pass
    assert not (out / "manifest.json").exists()
    assert run(small(grid=grid(steps=[2])), out).ran == 3  # released: the directory is usable again


def test_the_lock_is_released_when_its_process_is_killed(tmp_path):
    out = tmp_path / "r"
    code = (f"import time; from diffbench.results import RunDir\n"
            f"with RunDir({str(out)!r}).lock():\n    print('locked', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunBusyError, match=f"pid {proc.pid}"):
            with RunDir(out).lock():
                pass
        proc.kill()
        proc.wait(10)
        with RunDir(out).lock():  # kill -9 released it
            pass
    finally:
        proc.kill()


def test_labels_too_long_for_a_file_name_still_give_valid_cell_files(tmp_path):
    long = "x" * 300
    samplers = [{"name": "euler", "label": long + "a"}, {"name": "euler", "label": long + "b"}]
    res = run(small(grid=grid(sampler=samplers, steps=[2])), tmp_path / "r", draw=True)
    assert (res.cells["status"] == "ok").all() and res.cells["cell_id"].nunique() == 2
    files = sorted(p.name for p in (res.path / "cells").iterdir())
    assert len(files) == 4 and all(len(f.encode()) <= 200 for f in files)  # record and picture per cell


def test_plots_and_pictures_are_written_atomically_with_normal_permissions(finished_run, tmp_path, monkeypatch):
    from diffbench import plots

    out = copy_run(finished_run, tmp_path / "r")
    picture = next((out / "cells").glob("*.png"))
    before = picture.read_bytes()

    def fail_midway(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr("PIL.Image.Image.save", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        plots.save_samples(torch.zeros(4, 1, 8, 8), picture)
    assert picture.read_bytes() == before and not list((out / "cells").glob(".*"))  # old file, no temporary
    monkeypatch.undo()
    umask = os.umask(0o022)
    try:
        res = run(small(grid=grid(sampler=["euler"], steps=[2])), tmp_path / "p", draw=True)
    finally:
        os.umask(umask)
    written = [p for p in res.path.rglob("*") if p.is_file() and p.name != ".lock"]
    assert {p.suffix for p in written} >= {".json", ".png", ".csv", ".md"}
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {"0o644"}


# --- exit codes tell the truth ----------------------------------------------------------------------

@pytest.fixture
def hostile_cli(monkeypatch):
    """The CLI with the hostile test plugins installed."""
    registry = hostile_registry()
    monkeypatch.setattr("diffbench.registry.default_registry", lambda: registry)
    monkeypatch.setattr("diffbench.runner.default_registry", lambda: registry)

    def invoke(*args):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return invoke


def test_a_run_with_failed_cells_exits_1_with_a_one_line_summary(hostile_cli, tmp_path):
    path = write(tmp_path, suite_text(grid=grid(sampler=["euler", "nan", "exits"], steps=[2])))
    result = hostile_cli("run", path, "--out", tmp_path / "r", "--no-progress")
    assert result.exit_code == 1
    assert result.stderr == f"diffbench: 2 of 3 cells failed (see 'Failed cells' in {tmp_path / 'r'}/report.md)\n"
    assert result.stdout.startswith("diffbench: plan: 3 cells × 1 seed × 64 samples = 192 samples, "
                                    "256 network evaluations (declared)\n")  # euler 2, nan 1, exits 1 per sample
    ok = hostile_cli("run", write(tmp_path, suite_text(grid=grid(sampler=["euler"], steps=[2]))),
                     "--out", tmp_path / "ok", "--no-progress")
    assert ok.exit_code == 0 and ok.stderr == ""


@pytest.mark.parametrize("z", ["nan", "inf", "-1"])
def test_compare_refuses_a_z_that_would_switch_the_gate_off(finished_run, hostile_cli, z):
    result = hostile_cli("compare", finished_run.path, finished_run.path, "--z", z)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "must be a finite non-negative number" in result.stderr
    for tol in (["--metric-tol", "nan"], ["--metric-tol", "mean-norm=inf"], ["--time-tol", "nan%"]):
        bad = hostile_cli("compare", finished_run.path, finished_run.path, *tol)
        assert bad.exit_code == 2 and "must be a finite non-negative number" in bad.stderr, tol


def test_validate_runs_the_checks_run_makes_before_sampling(hostile_cli, tmp_path):
    cases = {
        "guidance on an unconditional model":
            (dict(grid=grid(guidance=[2.0])), "grid.guidance: model 'gmm' is unconditional; use guidance: [null]"),
        "a metric that cannot run on the model":
            (dict(metrics=["mean-norm", "picky"]), "metrics[1] (picky): needs an image model"),
        "a scheduler the model cannot take":
            (dict(grid=grid(scheduler=[{"name": "karras", "quantize": True}])), "grid.scheduler[0] (karras-q, steps=2)"),
        "a device torch cannot use": (dict(device="cuda:5"), "device: device 'cuda:5'"),
        "an empty grid": (dict(exclude=[{"steps": [2, 4]}]), "grid: no cells are left after exclude and include"),
        "a plan beyond the limits": (dict(num_samples=2_000_000), "samples exceeds the limit of 10,000,000"),
    }
    for what, (overrides, expected) in cases.items():
        path = write(tmp_path, suite_text(**overrides))
        result = hostile_cli("validate", path)
        assert result.exit_code == 2, what
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"diffbench: error: {path}: "), what
        assert expected in result.stderr, (what, result.stderr)
    assert hostile_cli("validate", write(tmp_path, suite_text(num_samples=2_000_000)), "--allow-large").exit_code == 0


def test_a_batch_whose_noise_would_take_gigabytes_is_refused_before_it_is_drawn(tmp_path):
    from diffbench.plan import MAX_BATCH_BYTES

    # ddpm draws its starting noise and a step-noise bank, 2 float64 per sample and step:
    # (1 + 10,000) × 2,000,000 × 16 B = 298.1 GiB
    data = small(num_samples=2_000_000, batch_size=2_000_000, grid=grid(sampler=["ddpm"], steps=[10_000]))
    with pytest.raises(SuiteError, match=rf"^batch_size × grid.steps: one batch needs 298.1 GiB of noise .* beyond "
                                         rf"the limit of {MAX_BATCH_BYTES / 2**30:g} GiB; lower batch_size or pass "
                                         r"--allow-large"):
        run(data, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_the_noise_estimate_counts_every_draw_a_step_makes(tmp_path):
    """pc with 3 corrector steps draws 4 normals a step: (1 + 4 × 1,000) × 300,000 × 16 B = 17.9 GiB, over
    the limit where one draw a step (4.5 GiB) would not be. 40 seeds make both plans too large
    (12 million samples), a check that comes after the noise estimate: nothing samples."""
    data = small(num_samples=300_000, batch_size=300_000, seeds=list(range(40)),
                 grid=grid(sampler=[{"name": "pc", "options": {"corrector_steps": 3}}], steps=[1_000]))
    with pytest.raises(SuiteError, match=r"one batch needs 17.9 GiB of noise"):
        run(data, tmp_path / "r")
    data["grid"]["sampler"] = ["ddpm"]  # one draw a step: within the limit, so the plan's next check speaks
    with pytest.raises(SuiteError, match=r"12,000,000 samples"):
        run(data, tmp_path / "r")


# --- validate samples what run would, on one tiny batch (issue 19 item 5) --------------------------------------------

def test_a_model_that_fails_on_a_batch_is_a_config_error_in_validate_and_run(hostile_cli, tmp_path):
    path = write(tmp_path, suite_text(model="raising"))
    expected = ("model: 'raising' fails on a batch of 2 samples of shape (2,): RuntimeError: mat1 and mat2 shapes "
                "cannot be multiplied (2x2 and 3x64)")
    checked = hostile_cli("validate", path)
    assert checked.exit_code == 2 and checked.stderr == f"diffbench: error: {path}: {expected}\n"
    ran = hostile_cli("run", path, "--out", tmp_path / "r", "--no-progress", "--cache-dir", tmp_path / "c")
    assert ran.exit_code == 2 and ran.stderr.count("\n") == 1 and expected in ran.stderr
    assert not (tmp_path / "r").exists()  # nothing left 'running'


def test_sampler_option_values_are_tried_on_a_batch_by_validate_and_run(hostile_cli, tmp_path):
    bogus = suite_text(grid=grid(sampler=["euler", {"name": "ddpm", "options": {"variance": "bogus"}}], steps=[2]))
    path = write(tmp_path, bogus)
    checked = hostile_cli("validate", path)
    assert checked.exit_code == 2 and checked.stderr.count("\n") == 1
    assert ("grid.sampler[1] (ddpm): options {'variance': 'bogus'} fail on a batch of 2 samples where the defaults "
            "do not: ValueError: ddpm variance must be 'posterior' or 'beta', got 'bogus'") in checked.stderr
    ran = hostile_cli("run", path, "--out", tmp_path / "r", "--no-progress", "--cache-dir", tmp_path / "c")
    assert ran.exit_code == 2 and "grid.sampler[1] (ddpm): options" in ran.stderr and not (tmp_path / "r").exists()
    fine = write(tmp_path, suite_text(grid=grid(sampler=[{"name": "ddpm", "options": {"variance": "beta"}},
                                                         "broken"], steps=[2])))
    assert hostile_cli("validate", fine).exit_code == 0  # a sampler failing whatever its options fails its cells


def test_a_run_that_fails_after_its_manifest_is_written_is_closed_as_failed_and_unlocked(tmp_path, monkeypatch):
    from diffbench import runner
    from diffbench.results import lock_is_held

    def no_calibration(model, batch_size, repeats=5):
        raise RuntimeError("CUDA error: device-side assert triggered\nmore")

    monkeypatch.setattr(runner, "calibrate", no_calibration)
    with pytest.raises(RuntimeError, match="device-side assert"):
        run(small(), tmp_path / "r")
    manifest = RunDir(tmp_path / "r").read_manifest()
    assert manifest["status"] == "failed"
    assert manifest["error"] == "RuntimeError: CUDA error: device-side assert triggered"
    assert not lock_is_held(tmp_path / "r" / ".lock")
    monkeypatch.undo()
    assert run(small(), tmp_path / "r", resume=True).ran == 6
