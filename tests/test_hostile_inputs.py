"""Hostile data, one case per class at least: impossible numbers refused, sizes bounded, and every failure
one line naming the file or field (issue 19 items 3, 4, 6; caches: tests/util/test_verified_cache.py; code
named by suites: tests/util/test_trust.py)."""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from runhelpers import grid, small, test_registry

import diffbench
from diffbench.api import run_suite
from diffbench.cli import cli
from diffbench.core.conditioning import read_prompts
from diffbench.core.denoiser import NetworkOutputError
from diffbench.datasets import DatasetError, from_tensor, npz_stats
from diffbench.datasets.torchvision_root import torchvision_root
from diffbench.metrics.base import MetricContext
from diffbench.metrics.fidelity import FID, nonnegative_fid
from diffbench.metrics.reference import ReferenceData
from diffbench.models.gmm import gmm
from diffbench.models.python import python_model
from diffbench.run.suite import SuiteError, parse_suite

pytestmark = pytest.mark.usefixtures("single_thread")
FACTORIES = str(Path(__file__).parent / "models" / "python_factories.py")


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text, text
    return text


def cli_run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def cli_suite(**overrides):
    """The small suite with metrics the default registry has (the CLI uses it)."""
    return small(metrics=["solver-error"], **overrides)


def write_suite(tmp_path, data, name="s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# --- item 3: impossible numbers are refused ----------------------------------------------------------


@pytest.mark.parametrize(
    "sigma, match",
    [
        (np.diag([1.0, 1.0, -2.0]), "sigma is not positive semi-definite"),
        (np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), "sigma is not symmetric"),
        (np.diag([1.0, np.inf, 1.0]), "non-finite"),
    ],
)
def test_reference_statistics_must_be_finite_symmetric_and_psd(tmp_path, sigma, match):
    np.savez(tmp_path / "s.npz", mu=np.zeros(3), sigma=sigma)
    with pytest.raises(DatasetError, match=match) as err:
        npz_stats(path=str(tmp_path / "s.npz"))
    assert str(tmp_path / "s.npz") in one_line(err)
    rank_deficient = np.cov(np.random.default_rng(0).standard_normal((3, 8)), rowvar=False).astype(np.float32)
    np.savez(tmp_path / "ok.npz", mu=np.zeros(8), sigma=rank_deficient)  # PSD within float32 round-off: fine
    assert npz_stats(path=str(tmp_path / "ok.npz")).stats["sigma"].shape == (8, 8)


def test_an_fid_below_zero_beyond_round_off_fails_with_the_reason(tmp_path):
    gen = torch.from_numpy(np.random.default_rng(0).standard_normal((200, 3)))
    ref = from_tensor("x", "all", torch.zeros(1, 3, 1, 1), {"dataset": "x"})
    broken = ReferenceData(ref, None, "h", _stats={"mu": np.zeros(3), "sigma": np.diag([1.0, 1.0, -50.0])})
    with pytest.raises(ValueError, match="below zero beyond round-off") as err:
        FID().score_features(gen, broken, MetricContext(tmp_path), se_method="none", groups=20, bootstrap=0)
    one_line(err)
    assert nonnegative_fid(-1e-9, gen, {"mu": np.zeros(3), "sigma": np.eye(3)}) == -1e-9  # round-off stays


def test_a_network_output_of_another_shape_is_an_error_never_broadcast():
    model = gmm()
    narrow = dataclasses.replace(model, network=lambda x, t, c: x[:, :1], analytic=None)
    with pytest.raises(NetworkOutputError, match=r"returned shape \(4, 1\) for an input of shape \(4, 2\)") as err:
        diffbench.sample(narrow, "euler", steps=3, num_samples=4)
    one_line(err)


def test_a_network_of_another_shape_is_a_configuration_error_in_a_run(tmp_path):
    reg, _ = test_registry()
    suite = parse_suite(
        small(
            model={
                "name": "python",
                "options": {
                    "factory": f"{FACTORIES}:narrow",
                    "schedule": "edm",
                    "target": "x0",
                    "time_input": "sigma",
                    "shape": [2],
                },
            },
            metrics=[],
            grid=grid(sampler=["euler"], steps=[2]),
        ),
        reg,
    )
    with pytest.raises(SuiteError, match=r"the network returned shape \(2, 1\) for an input of shape \(2, 2\)") as err:
        run_suite(suite, tmp_path / "r", registry=reg, progress=False, draw=False, trust_code=True)
    one_line(err)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "options, match",
    [
        ({"time_scale": 0.0}, "time_scale must be a positive finite number"),
        ({"time_scale": -2.0}, "time_scale must be a positive finite number"),
        ({"num_classes": -1}, "num_classes must be 0"),
        ({"shape": [2, 10**9]}, "options.shape"),
        ({"data_range": [0.0, float("inf")]}, "options.data_range"),
    ],
)
def test_declared_values_that_make_no_sense_are_refused(options, match):
    base = {"factory": f"{FACTORIES}:edm_like", "schedule": "edm", "target": "x0", "shape": [2]}
    with pytest.raises(ValueError, match=match) as err:
        python_model(**{**base, **options})
    one_line(err)


# --- item 4: every size and count is bounded -----------------------------------------------------------


def test_trajectory_reference_refinement_is_bounded(tmp_path):
    reg, _ = test_registry()
    for options in ({"rtol": 1.0e-300}, {"atol": 1.0e-300}, {"max_steps": 2**40}):
        with pytest.raises(SuiteError, match=r"rtol, atol ≥ 1e-12 .* max_steps ≤ 65,536") as err:
            run_suite(
                parse_suite(small(metrics=[{"name": "trajectory-error", "options": options}]), reg),
                tmp_path / "r",
                registry=reg,
                progress=False,
            )
        one_line(err)


def test_a_time_limit_beyond_the_bound_is_refused_by_validate_and_run(tmp_path):
    path = write_suite(tmp_path, cli_suite(grid=grid(sampler=["euler"], steps=[2])))
    for args in (["run", path, "--time-limit", "1e300", "--out", tmp_path / "r", "--no-progress"],):
        result = cli_run(*args)
        assert result.exit_code == 2 and "--time-limit: a time limit must be a number of seconds" in result.stderr
    bad = write_suite(tmp_path, cli_suite(time_limit=1e300), "t.yaml")
    result = cli_run("validate", bad, "--no-load")
    assert result.exit_code == 2 and "time_limit" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_a_prompts_file_is_read_to_a_bound(tmp_path):
    with pytest.raises(ValueError, match="'/dev/zero' is larger than 16 MiB") as err:
        read_prompts("/dev/zero")
    one_line(err)
    (tmp_path / "nul.txt").write_bytes(b"a cat\0\n")
    with pytest.raises(ValueError, match="NUL bytes"):
        read_prompts(tmp_path / "nul.txt")


def cifar_root(tmp_path, entry) -> Path:
    folder = tmp_path / "tv" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ("test_batch",):
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    return tmp_path / "tv"


def test_a_cifar_batch_that_would_expand_to_gigabytes_is_refused(tmp_path):
    inner = [0] * 1000
    bomb = {"data": [[inner] * 1000] * 1000}  # a few kB of memo references for 10^9 values
    root = cifar_root(tmp_path, bomb)
    assert (root / "cifar-10-batches-py" / "test_batch").stat().st_size < 20_000
    with pytest.raises(DatasetError, match="'data' must be a uint8 array of shape \\(N, 3072\\), got list") as err:
        torchvision_root("test", root=str(root))
    assert "test_batch" in one_line(err)


def npz_declaring(shape) -> bytes:
    """An .npz whose sigma header declares ``shape`` but whose data is a few bytes."""
    buf, arr = io.BytesIO(), io.BytesIO()
    np.lib.format.write_array_header_1_0(arr, {"descr": "<f8", "fortran_order": False, "shape": shape})
    arr.write(b"\0" * 64)
    mu = io.BytesIO()
    np.save(mu, np.zeros(3))
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("mu.npy", mu.getvalue())
        z.writestr("sigma.npy", arr.getvalue())
    return buf.getvalue()


def test_npz_statistics_are_bounded_before_decoding(tmp_path):
    (tmp_path / "huge.npz").write_bytes(npz_declaring((100_000, 100_000)))
    with pytest.raises(DatasetError, match="sigma has shape \\(100000, 100000\\); statistics of at most 8192") as err:
        npz_stats(path=str(tmp_path / "huge.npz"))
    one_line(err)


def test_model_config_dimensions_are_bounded(tmp_path):
    pytest.importorskip("diffusers")
    from diffbench.models.diffusers import ConfigError, schedule_from_config
    from diffbench.models.digits import digits_eps
    from diffbench.util.checkpoints import load_checkpoint, save_checkpoint, shipped

    with pytest.raises(ConfigError, match="num_train_timesteps must be an integer from 2 to 100,000") as err:
        schedule_from_config({"_class_name": "DDPMScheduler", "num_train_timesteps": 10**12}, "sched.json")
    assert one_line(err).startswith("sched.json: ")
    with pytest.raises(ConfigError, match="shift"):
        schedule_from_config({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": "big"}, "sched.json")
    state, config, _ = load_checkpoint(shipped("digits-eps"))
    save_checkpoint(tmp_path / "w.safetensors", state, {**config, "arch": {**config["arch"], "width": 10**12}})
    with pytest.raises(ValueError, match="metadata 'arch' does not match the weights") as err:
        digits_eps(checkpoint=str(tmp_path / "w.safetensors"))
    one_line(err)


# --- item 6: one line naming the file or field ---------------------------------------------------------


def test_a_deeply_nested_or_huge_config_json_is_one_line(tmp_path):
    pytest.importorskip("diffusers")
    from diffbench.models.diffusers import ConfigError, _read_json

    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply") as err:
        _read_json(tmp_path / "config.json")
    assert str(tmp_path / "config.json") in one_line(err)
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="larger than 16 MiB"):
        _read_json(tmp_path / "zero.json")


def test_a_truncated_png_is_named_when_it_is_decoded(tmp_path):
    from PIL import Image

    from diffbench.datasets import image_folder

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    data = (tmp_path / "1.png").read_bytes()
    (tmp_path / "1.png").write_bytes(data[: len(data) // 2])  # header intact: opening it still works
    ref = image_folder(path=str(tmp_path))
    with pytest.raises(DatasetError, match="1.png' cannot be decoded") as err:
        list(ref.batches(2))
    one_line(err)


def test_a_malformed_cifar_batch_names_the_file(tmp_path):
    root = cifar_root(tmp_path, {"data": np.zeros((2, 5), dtype=np.uint8)})
    with pytest.raises(DatasetError, match=r"got uint8 array of shape \(2, 5\)") as err:
        torchvision_root("test", root=str(root))
    assert "test_batch" in one_line(err)


def test_a_truncated_checkpoint_names_the_file(tmp_path):
    from diffbench.util.checkpoints import load_checkpoint, shipped

    (tmp_path / "w.safetensors").write_bytes(shipped("digits-eps").read_bytes()[:5000])
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint") as err:
        load_checkpoint(tmp_path / "w.safetensors")
    assert str(tmp_path / "w.safetensors") in one_line(err)


def test_an_out_directory_the_file_system_refuses_is_a_one_line_error(tmp_path):
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no /sys")
    path = write_suite(tmp_path, cli_suite(grid=grid(sampler=["euler"], steps=[2])))
    result = cli_run("run", path, "--out", "/sys/kernel/diffbench-run", "--no-progress")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("diffbench: error: --out /sys/kernel/diffbench-run:")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("fin") / "r"
    reg, _ = test_registry()
    return run_suite(
        parse_suite(cli_suite(grid=grid(sampler=["euler"], steps=[2, 3])), reg),
        out,
        registry=reg,
        progress=False,
        draw=False,
        cache_dir=out.parent / "c",
    )


def damaged_copy(finished, tmp_path, how):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished.path, copy)
    if how == "record-string":
        path = next((copy / "cells").glob("*.json"))
        rec = json.loads(path.read_text())
        rec["metrics"]["solver-error-mean"]["value"] = "1.5"
        path.write_text(json.dumps(rec))
        return copy, f"{path}: field metrics['solver-error-mean'].value must be a number or null, got str '1.5'"
    if how == "record-nested":
        path = next((copy / "cells").glob("*.json"))
        path.write_text("[" * 50_000 + "]" * 50_000)
        return copy, f"{path}: unreadable (JSON nested too deeply)"
    if how == "csv-string":
        frame = (copy / "cells.csv").read_text().splitlines()
        header = frame[0].split(",")
        row = frame[1].split(",")
        row[header.index("nfe")] = "two"
        (copy / "cells.csv").write_text("\n".join([frame[0], ",".join(row), *frame[2:]]) + "\n")
        return copy, f"{copy / 'cells.csv'}: column 'nfe' must hold numbers; row 1 holds 'two'"
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["models"] = ["gmm"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy, f"{copy / 'manifest.json'}: field models must be a JSON object, got list"


@pytest.mark.parametrize("how", ["record-string", "record-nested", "csv-string", "manifest-type"])
def test_compare_report_and_show_name_a_bad_field_in_one_line(finished, tmp_path, how):
    copy, expected = damaged_copy(finished, tmp_path, how)
    commands = [["compare", finished.path, copy], ["compare", copy, finished.path], ["report", copy]]
    if how in ("csv-string", "manifest-type"):
        commands.append(["show", copy])
    for args in commands:
        if how == "csv-string" and args[0] == "compare":
            continue  # compare reads records, not cells.csv
        result = cli_run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.stderr and result.stderr.count("\n") == 1, (args, result.stderr)


def test_report_ignores_stray_files_beside_the_shards(tmp_path):
    import shutil

    path = write_suite(tmp_path, cli_suite(grid=grid(sampler=["euler"], steps=[2, 3])))
    for shard in ("1/2", "2/2"):
        assert cli_run("run", path, "--out", tmp_path / "r", "--shard", shard, "--no-progress").exit_code == 0
    shutil.copytree(tmp_path / "r" / "shards" / "1-of-2", tmp_path / "r" / "shards" / "1-of-2.bak")
    (tmp_path / "r" / "shards" / "notes.txt").write_text("x")
    result = cli_run("report", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["cells"]["ok"] == 2
