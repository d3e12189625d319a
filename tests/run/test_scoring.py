"""`diffbench score` end to end: an image folder, an .npz of samples and an .npz of features give the numbers
the metric gives on the same images in memory."""

import json
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diffbench.cli import cli
from diffbench.datasets import digits
from diffbench.metrics import fidelity
from diffbench.metrics.base import MetricContext
from diffbench.metrics.digits_cnn import from_uint8, to_uint8
from diffbench.metrics.fidelity import METRICS

DIGITS_MODEL = SimpleNamespace(name="stub", dataset="digits", data_range=(-1.0, 1.0))


@pytest.fixture(scope="module")
def images():
    """Noisy held-out digits as uint8 (N, 1, 8, 8): exactly what a folder or .npz can hold."""
    test = digits("test").images
    return to_uint8(test + 0.3 * torch.randn(test.shape, generator=torch.Generator().manual_seed(0)))


def score(*args, cache):
    result = CliRunner().invoke(
        cli,
        ["score", *map(str, args), "--reference", "digits", "--cache-dir", str(cache), "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_score_npz_folder_and_features_agree_with_the_metric_in_memory(images, tmp_path):
    cache = tmp_path / "cache"
    want = {
        name: METRICS[name].compute(from_uint8(images), model=DIGITS_MODEL, context=MetricContext(cache))
        for name in ("fid", "kid")
    }
    np.savez(tmp_path / "samples.npz", samples=images.permute(0, 2, 3, 1).numpy())  # (N, H, W, C), ADM's layout
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img[0].numpy()).save(folder / f"{i:05d}.png")
    ext = fidelity.resolve_extractor("digits-cnn", None, "fid")
    np.savez(
        tmp_path / "features.npz", features=fidelity.extract_features(from_uint8(images), (-1.0, 1.0), ext).numpy()
    )
    metrics = ["--metric", "fid", "--metric", "{name: kid, options: {subsets: 100}}"]
    for source in ([tmp_path / "samples.npz"], [folder], ["--features", tmp_path / "features.npz"]):
        out = score(*source, *metrics, cache=cache)
        assert set(out) == {"fid", "kid"}
        for name in ("fid", "kid"):
            # the extractor's BLAS may round batches of other sizes apart by ~1e-7 (DESIGN.md)
            assert out[name]["value"] == pytest.approx(want[name][name].value, rel=1e-6)
            assert out[name]["se"] == pytest.approx(want[name][name].uncertainty, rel=1e-5)
            assert out[name]["method"] == want[name][name].method and out[name]["seconds"] >= 0
    assert "jackknife" in out["fid"]["method"]


def test_score_takes_metric_options_and_names_bad_input_in_one_line(images, tmp_path):
    np.savez(tmp_path / "features.npz", features=np.random.default_rng(0).normal(size=(100, 7)))
    np.savez(tmp_path / "samples.npz", samples=images.numpy())
    run = CliRunner().invoke
    boot = score(
        tmp_path / "samples.npz",
        "--metric",
        "{name: fid, options: {se_method: bootstrap, bootstrap: 20}}",
        cache=tmp_path / "c",
    )
    assert "20 bootstrap resamples" in boot["fid"]["method"] and boot["fid"]["se"] > 0
    huge = tmp_path / "huge.npz"  # a header declaring 8 TB of float32, and no data: refused from the header
    with zipfile.ZipFile(huge, "w") as z, z.open("features.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (1 << 30, 2048)})
    cases = [
        (["--features", huge, "--metric", "fid"], "decodes to 8192.0 GiB, over the 16 GiB limit"),
        (["--features", tmp_path / "features.npz", "--metric", "fid"], "features have 7 dimensions"),
        (["--features", tmp_path / "features.npz", "--metric", "class-accuracy"], "--features works with"),
        ([tmp_path / "samples.npz", "--metric", "{name: fid, options: {groups: 1}}"], "groups must be an integer >= 2"),
        ([tmp_path / "samples.npz", "--metric", "{name: fid, options: {nope: 1}}"], "--metric[0].options"),
        ([tmp_path / "missing.npz", "--metric", "fid"], "no such file"),
        (["--metric", "fid"], "one of the two"),
    ]
    for args, text in cases:
        result = run(cli, ["score", *map(str, args), "--reference", "digits", "--cache-dir", str(tmp_path / "c")])
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.count("\n") == 1 and text in result.stderr, result.stderr
