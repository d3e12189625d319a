"""Extractor weights load as tensors only (no pickle payload runs); the Inception plumbing on random weights."""

from __future__ import annotations

import pathlib
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from inception import random_inception_state, save_random_inception

from diffbench.metrics import digits_cnn, extractors
from diffbench.metrics.base import MetricContext
from diffbench.metrics.extractors import (
    INCEPTION,
    UnsafeWeights,
    load_tensors,
    resolve_extractor,
)
from diffbench.metrics.fidelity import METRICS

RGB_MODEL = SimpleNamespace(name="rgb", dataset="digits", data_range=(-1.0, 1.0))


class Payload:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def hostile_files(tmp_path):
    """Weights files whose loading would run code: torch.save'd and plainly pickled payloads."""
    marker = tmp_path / "payload-ran"
    zipped, plain = tmp_path / "evil.pth", tmp_path / "evil-plain.pkl"
    torch.save({"weight": torch.zeros(2), "x": Payload(marker)}, zipped)
    plain.write_bytes(pickle.dumps(Payload(marker)))
    return marker, [zipped, plain]


@pytest.mark.parametrize("name", [INCEPTION, "vgg16", "clip-vit-b-32", "digits-cnn"])
def test_a_pickle_payload_in_extractor_weights_never_runs(tmp_path, name):
    marker, files = hostile_files(tmp_path)
    context = MetricContext(cache_dir=tmp_path / "cache")
    for path in files:
        with pytest.raises(UnsafeWeights) as err:
            METRICS["fid"].compute(
                torch.zeros(2, 1, 8, 8),
                model=RGB_MODEL,
                context=context,
                extractor=name,
                weights_path=str(path),
                se_method="none",
            )
        msg = str(err.value)
        assert "\n" not in msg and str(path) in msg and "safetensors" in msg, msg
        assert not marker.exists(), f"the payload in {path.name} ran"
    assert not list((tmp_path / "cache").glob("*")) if (tmp_path / "cache").exists() else True


def test_load_tensors_reads_safetensors_and_plain_state_dicts_and_refuses_whole_modules(tmp_path):
    state = {"a": torch.arange(3.0), "b": torch.ones(2, 2)}
    torch.save(state, tmp_path / "sd.pt")
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "sd.safetensors"))
    for name in ("sd.pt", "sd.safetensors"):
        got = load_tensors(tmp_path / name)
        assert set(got) == {"a", "b"} and all(torch.equal(got[k], state[k]) for k in state)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module: needs its class to load
    with pytest.raises(UnsafeWeights, match="cannot be read as tensors only"):
        load_tensors(tmp_path / "module.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(UnsafeWeights, match="holds list, not a state dict"):
        load_tensors(tmp_path / "list.pt")


def test_a_weights_file_changed_after_it_was_resolved_is_refused(tmp_path):
    path = save_random_inception(tmp_path / "inception.safetensors")
    ext = resolve_extractor(INCEPTION, str(path), "fid")
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="changed while diffbench was using it"):
        load_tensors(path, ext.sha256)


@pytest.mark.slow  # ~6 s quiet, ~25 s on a loaded 2-core machine: two Inception builds and forwards at 299×299
def test_random_inception_plumbing_uint8_resize_299_2048_features(tmp_path):
    """diffbench's features (safe build from safetensors) equal torch-fidelity's own extractor on uint8 images."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = save_random_inception(tmp_path / "inception.safetensors")
    ext = resolve_extractor(INCEPTION, str(path), "fid")
    assert ext.layer == "2048"
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    feats = extractors.extract_features(images, (-1.0, 1.0), ext)
    assert feats.shape == (2, 2048) and feats.dtype == torch.float32 and bool(torch.isfinite(feats).all())
    torch.save(random_inception_state(), tmp_path / "reference.pth")  # our own file: torch-fidelity's loader
    theirs = FeatureExtractorInceptionV3(
        INCEPTION, ["2048"], feature_extractor_weights_path=str(tmp_path / "reference.pth")
    )
    u8 = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    with torch.inference_mode():
        want = theirs(u8)[0]
    torch.testing.assert_close(feats, want, rtol=0, atol=0)
    assert "299" in ext.describe()["resize"]


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_clip_built_from_tensors_equals_torch_fidelitys_own_torchscript_path(tmp_path):
    """A tiny random CLIP ViT: diffbench's safetensors build gives torch-fidelity's features from its archive."""
    from safetensors.torch import save_file
    from torch_fidelity.feature_extractor_clip import CLIPVisual, FeatureExtractorCLIP

    torch.manual_seed(0)
    visual = CLIPVisual(embed_dim=16, image_resolution=64, vision_layers=1, vision_width=64, vision_patch_size=32)

    class Archive(torch.nn.Module):  # the layout of OpenAI's CLIP archives: visual.* plus the text tower's keys
        def __init__(self):
            super().__init__()
            self.visual = visual.visual
            self.text_projection = torch.nn.Parameter(torch.randn(8, 16))

        def forward(self, x):
            return self.visual(x)

    archive = Archive().eval()
    for p in archive.parameters():  # random, not the zero-initialised projections: every layer matters
        p.data.normal_(0, 0.05)
    jit_path = tmp_path / "clip.pt"
    torch.jit.save(torch.jit.trace(archive, torch.zeros(1, 3, 64, 64)), str(jit_path))
    st_path = tmp_path / "clip.safetensors"  # the conversion docs/fid.md tells users to run once
    save_file({k: v.contiguous() for k, v in torch.jit.load(str(jit_path)).state_dict().items()}, str(st_path))

    ext = resolve_extractor("clip-vit-b-32", str(st_path), "fid")
    images = torch.rand(5, 3, 40, 40) * 2 - 1
    ours = extractors.extract_features(images, (-1.0, 1.0), ext)
    theirs_module = FeatureExtractorCLIP("clip-vit-b-32", [ext.layer], feature_extractor_weights_path=str(jit_path))
    with torch.inference_mode():
        theirs = theirs_module(extractors.digits_cnn.to_uint8(images, (-1.0, 1.0)))[0]
    assert ours.shape == (5, 16) and float(ours.std()) > 0
    assert torch.allclose(ours, theirs.float(), rtol=1e-6, atol=1e-6)


def test_digits_cnn_as_diffbench_runs_it_equals_the_torch_fidelity_extractor():
    """diffbench extracts digits-cnn features without importing torch-fidelity: same layer, same numbers."""
    from torch_fidelity.utils import create_feature_extractor

    from diffbench.datasets import digits

    digits_cnn.register_with_torch_fidelity()
    for metric in ("fid", "kid", "prc", "isc"):
        ext = resolve_extractor(digits_cnn.NAME, None, metric)
        theirs_module = create_feature_extractor(digits_cnn.NAME, [ext.layer], cuda=False, verbose=False)
        assert ext.layer == theirs_module.get_default_feature_layer_for_metric(metric)
    ext = resolve_extractor(digits_cnn.NAME, None, "fid")
    u8 = digits_cnn.to_uint8(digits("test").images[:16])
    with torch.inference_mode():
        ours = extractors.build_module(ext)(u8)[0]
        theirs = create_feature_extractor(digits_cnn.NAME, [ext.layer], cuda=False, verbose=False)(u8)[0]
    assert ours.shape == (16, 128) and torch.equal(ours, theirs)
    with pytest.raises(ValueError, match="uint8"):
        extractors.build_module(ext)(digits("test").images[:2])


def test_reference_statistics_are_torch_fidelitys_bit_for_bit():
    from torch_fidelity.metric_fid import fid_features_to_statistics

    from diffbench.metrics.reference import features_to_statistics

    feats = torch.randn(300, 40, generator=torch.Generator().manual_seed(0)).relu().double()
    ours, theirs = features_to_statistics(feats), fid_features_to_statistics(feats)
    assert np.array_equal(ours["mu"], theirs["mu"]) and np.array_equal(ours["sigma"], theirs["sigma"])


def test_a_run_scored_with_digits_cnn_imports_neither_torch_fidelity_nor_torchvision(tmp_path):
    """Start-up imports only what the suite uses: FID/KID on digits-cnn, a cell picture, a digits model."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from diffbench.metrics.base import MetricContext\n"
        "from diffbench.metrics.fidelity import METRICS\n"
        "from diffbench.models.digits import digits_eps\n"
        "from diffbench.run.pictures import save_samples\n"
        "from types import SimpleNamespace\n"
        "model = digits_eps()\n"
        f"ctx = MetricContext(cache_dir={str(tmp_path / 'cache')!r}, seed=0)\n"
        "x = torch.rand(64, 1, 8, 8) * 2 - 1\n"
        "stub = SimpleNamespace(name='stub', dataset='digits', data_range=(-1.0, 1.0))\n"
        "for name in ('fid', 'kid'):\n"
        "    METRICS[name].compute(x, model=stub, result=None, context=ctx)\n"
        f"save_samples(x, {str(tmp_path / 'p.png')!r})\n"
        "print(sorted(m for m in ('torch_fidelity', 'torchvision', 'torch._dynamo') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
