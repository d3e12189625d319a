"""A user's own network, as docs/models.md walks through it: a factory file beside the suite, relative paths,
a (T+1)-entry β table trained on t = 1..T with time input t/T, validated and run from the CLI with the
offline swd metric and trajectory-error; the report's verdicts and the plots' axes are checked."""

from __future__ import annotations

import gzip
import json
import struct
import textwrap

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from diffbench import registry as registry_module
from diffbench.analysis import plots
from diffbench.cli import cli
from diffbench.registry import build_registry
from diffbench.run.rundir import RunDir

T = 100  # training timesteps t = 1..T; the β table has T + 1 entries (index 0 unused in training)

NET = textwrap.dedent('''
    """A small ε-network trained (here: initialised) on t/T in [0, 1]; it refuses any other time input."""
    import torch
    from safetensors.torch import load_file


    class TinyEps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
            self.time = torch.nn.Linear(1, 1)

        def forward(self, x, t, cond=None):
            if float(t.max()) > 1.0 + 1e-9 or float(t.min()) < 0.0:
                raise ValueError(f"time input outside [0, 1]: {float(t.max())}")
            scale = torch.tanh(self.time(t.reshape(-1, 1).to(x.dtype))).reshape(-1, 1, 1, 1)
            return 0.1 * torch.tanh(self.conv(x)) * (1 + 0.1 * scale) + 0.05 * x


    def make(checkpoint):
        net = TinyEps()
        net.load_state_dict(load_file(checkpoint))
        return net
    ''')


def _write_folder(root):
    """suite/ holds the suite, net.py, its weights and an MNIST-like reference as torchvision downloads it (.gz)."""
    folder = root / "my-model"
    folder.mkdir()
    (folder / "net.py").write_text(NET)
    torch.manual_seed(0)
    from safetensors.torch import save_file

    conv, lin = torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.Linear(1, 1)
    save_file(
        {
            "conv.weight": conv.weight.detach(),
            "conv.bias": conv.bias.detach(),
            "time.weight": lin.weight.detach(),
            "time.bias": lin.bias.detach(),
        },
        str(folder / "net.safetensors"),
    )
    raw = folder / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = np.clip(rng.normal(128, 60, (64, 8, 8)), 0, 255).astype(np.uint8)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">IIII", 2051, 64, 8, 8) + images.tobytes())
    )
    betas = np.linspace(1e-4, 0.02, T + 1).tolist()  # the authors' table: betas[t] for t = 0..T
    suite = {
        "name": "my-model",
        "model": {
            "name": "python",
            "options": {
                "factory": "net.py:make",
                "checkpoint": "net.safetensors",
                "shape": [1, 8, 8],
                "target": "eps",
                "schedule": "trained-betas",
                "schedule_options": {"betas": betas},
                "time_input": "t",
                "time_scale": 1.0 / T,
                "data_range": [-1.0, 1.0],
            },
        },
        "reference": {"name": "torchvision", "options": {"root": "data", "dataset": "MNIST"}, "split": "train"},
        "metrics": [
            {"name": "swd", "options": {"directions": 32, "groups": 4}},
            {"name": "trajectory-error", "options": {"rtol": 1.0e-3, "atol": 1.0e-3}},
        ],
        "num_samples": 16,
        "batch_size": 16,
        "device": "cpu",
        "grid": {
            "sampler": ["ddim", "euler", "heun"],
            "steps": [4, 8],
            "scheduler": [{"name": "linspace", "options": {"t_min": 1}}],
        },
    }
    (folder / "suite.yaml").write_text(yaml.safe_dump(suite))
    return folder


@pytest.fixture
def builtins(monkeypatch):
    monkeypatch.setattr(registry_module, "_default", build_registry(autoload=False))


def test_own_network_from_a_folder_beside_the_suite(tmp_path, monkeypatch, builtins):
    folder = _write_folder(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths resolve against the suite's folder, not the working directory
    suite = str(folder / "suite.yaml")
    runner = CliRunner()

    refused = runner.invoke(cli, ["validate", suite])
    assert refused.exit_code == 2 and "--trust-code" in refused.output  # a factory file runs only with consent
    checked = runner.invoke(cli, ["validate", "--trust-code", suite])
    assert checked.exit_code == 0, checked.output

    scales: dict[str, list[tuple[str, str]]] = {}
    finish = plots._finish

    def record_axes(fig, axes, path):
        scales[path.name] = [(ax.get_title(), ax.get_yscale()) for ax in axes]
        return finish(fig, axes, path)

    monkeypatch.setattr(plots, "_finish", record_axes)
    out = runner.invoke(cli, ["run", "--trust-code", "--no-progress", "--out", str(tmp_path / "run"), suite])
    assert out.exit_code == 0, out.output

    run = RunDir(tmp_path / "run")
    recs = {(r["sampler"], r["steps"]): r for r in run.read_cells()}
    assert all(r["status"] == "ok" for r in recs.values())
    # the authors' grid on the (T+1)-entry table: round(linspace(T, 1, N)), never t = 0
    for n in (4, 8):
        assert recs[("ddim", n)]["grid"]["timesteps"] == pytest.approx(np.round(np.linspace(T, 1, n)).tolist())
    for rec in recs.values():
        assert (
            rec["metrics"]["swd"]["uncertainty"] > 0
            and "not comparable with Inception FID" in rec["metrics"]["swd"]["method"]
        )
        assert rec["metrics"]["trajectory-error"]["value"] > 0
        assert rec["counted_seconds_per_sample"] > 0 and "counted NFE" in rec["timing"]["method"]
    options = run.read_manifest()["models"]  # the model's identity; the suite as run records absolute paths
    suite_run = json.loads((run.path / "suite.json").read_text())["model"][0]["options"]
    assert suite_run["factory"] == f"{folder / 'net.py'}:make" and suite_run["checkpoint"] == str(
        folder / "net.safetensors"
    )
    assert options

    report = (run.path / "report.md").read_text()
    assert "trajectory-error vs best ≤1.25× NFE" in report and "trajectory-error front (all NFE)" in report
    assert "swd vs best ≤1.25× NFE" in report
    table = [line for line in report.splitlines() if line.startswith("| heun |")]
    assert table and all(("front" in line or "dominated by" in line) for line in table)
    for name in (plots.NFE_PLOT, plots.TIME_PLOT):
        assert f"![{name[:-4]}]({name})\n\n*{plots.caption(name)}*" in report
    assert dict(scales[plots.NFE_PLOT])["trajectory-error"] == "log"  # error metrics on log axes
    assert dict(scales[plots.TIME_PLOT])["trajectory-error"] == "log"
