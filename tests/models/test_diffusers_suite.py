"""suites/tiny-diffusers.yaml end to end on a tiny model folder, as .ci/run runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytest.importorskip("diffusers")

import tiny_diffusers  # noqa: E402

from diffbench.api import run_suite  # noqa: E402
from diffbench.registry import default_registry  # noqa: E402
from diffbench.run.suite import parse_suite  # noqa: E402

SUITE = Path(__file__).resolve().parents[2] / "suites" / "tiny-diffusers.yaml"


def test_tiny_diffusers_suite_runs_every_cell(tmp_path, single_thread):
    data = yaml.safe_load(SUITE.read_text())
    data["model"]["options"]["path"] = str(tiny_diffusers.pixel_ddpm(tmp_path / "tiny-ddpm", channels=1))
    data["num_samples"] = data["batch_size"] = 16
    data["grid"]["steps"] = [3]
    data["grid"]["sampler"] = ["ddim", "heun"]
    registry = default_registry()
    out = run_suite(
        parse_suite(data, registry),
        tmp_path / "run",
        registry=registry,
        progress=False,
        cache_dir=tmp_path / "cache",
        draw=False,
    )
    frame = out.cells
    assert len(frame) == 4 and set(frame["status"]) == {"ok"} and out.failed == 0
    assert (frame["nfe"] == frame["declared_nfe"]).all()
    assert sorted(frame["nfe"].unique().tolist()) == [3, 5]  # heun: 2N - 1
    assert frame["fid"].notna().all()  # scored against digits: the whole table path ran


CIFAR = SUITE.with_name("cifar10-ddpm.yaml")


def test_cifar10_suite_is_valid_and_its_grids_fit_a_cifar_shaped_ddpm(tmp_path):
    """Schema, plugins and options check offline; every cell's grid materialises on a stand-in folder with the
    public checkpoint's scheduler (DDPMScheduler, linear β 1e-4..0.02, 1000 steps) and shape 3×32×32."""
    from diffbench.models.diffusers import diffusers_model
    from diffbench.run.sampling import make_grid
    from diffbench.run.suite import expand, load_suite

    registry = default_registry()
    suite = load_suite(CIFAR, registry)
    cells = expand(suite)
    ddim = sorted((c.scheduler.key, c.steps) for c in cells if c.sampler.key == "ddim")
    assert ddim == sorted(
        [("leading", n) for n in (10, 20, 50, 100)]
        + [("trailing", n) for n in (10, 20, 50, 100)]
        + [("ddim-quadratic", 10), ("ddim-quadratic", 20)]
    )
    assert suite.num_samples == 50000 and [m.name for m in suite.metrics] == ["fid"]
    root = tmp_path / "standin"
    tiny_diffusers.unet(root, size=32)
    tiny_diffusers.scheduler(root, "DDPMScheduler", **tiny_diffusers.VP)  # the public config's values
    tiny_diffusers._index(
        root, "DDPMPipeline", unet=("diffusers", "UNet2DModel"), scheduler=("diffusers", "DDPMScheduler")
    )
    model = diffusers_model(path=str(root))
    for c in cells:
        grid, _ = make_grid(model, c.scheduler.name, c.steps, c.scheduler.options, registry=registry)
        assert len(grid.sigmas) == c.steps + 1
    leading = make_grid(model, "leading", 10, registry=registry)[0]
    assert [round(t) for t in leading.timesteps] == list(range(900, -1, -100))  # DDIM's "uniform" selection


def test_cifar10_validate_offline_names_the_missing_checkpoint(tmp_path, monkeypatch):
    """The full pre-flight loads the model: offline, without the checkpoint cached, that is one line."""
    from diffbench.run.preparation import preflight
    from diffbench.run.suite import SuiteError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(SuiteError, match="google/ddpm-cifar10-32.*not in the local hub cache") as err:
        preflight(CIFAR, default_registry(), cache_dir=tmp_path / "cache")
    assert "\n" not in str(err.value)


def test_cifar10_validate_no_load_passes_offline(tmp_path, monkeypatch):
    """Offline, without the checkpoint, Inception weights or CIFAR-10 statistics: the checks that need none
    of them pass, and the output says what was not checked."""
    from click.testing import CliRunner

    from diffbench.cli import cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = CliRunner().invoke(cli, ["validate", "--no-load", str(CIFAR)])
    assert result.exit_code == 0, result.output
    assert result.output == f"{CIFAR}: ok (22 cells; --no-load: models, grids, plan and warm-up not checked)\n"
