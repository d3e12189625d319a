"""FID between two image folders: diffbench equals torch-fidelity's own calculate_metrics (random Inception)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffbench.datasets import image_folder
from diffbench.metrics import reference
from diffbench.metrics.base import MetricContext
from diffbench.metrics.fidelity import METRICS
from inception import random_inception_state, save_random_inception


def write_folder(folder, n, seed):
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (16, 16, 3))
    for i in range(n):  # images near a common base, so features vary smoothly
        img = np.clip(base + rng.integers(-40, 41, (16, 16, 3)) * (1 + seed), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return folder


@pytest.mark.slow  # ~24 Inception forwards at 299×299 on the CPU, twice
def test_fid_between_two_folders_equals_torch_fidelity_calculate_metrics(tmp_path):
    import torch_fidelity

    a, b = write_folder(tmp_path / "a", 12, 0), write_folder(tmp_path / "b", 12, 1)
    pth = tmp_path / "inception.pth"
    torch.save(random_inception_state(), pth)  # torch-fidelity's own loader reads this file (written here)
    want = torch_fidelity.calculate_metrics(input1=str(a), input2=str(b), fid=True, cuda=False, cache=False,
                                            verbose=False, feature_extractor="inception-v3-compat",
                                            feature_extractor_weights_path=str(pth))["frechet_inception_distance"]
    weights = save_random_inception(tmp_path / "inception.safetensors")  # diffbench reads tensors only
    reference.clear_memo()
    samples = torch.cat(list(image_folder(path=str(a)).batches(64)))
    model = SimpleNamespace(name="folder-a", dataset={"name": "image-folder", "options": {"path": str(b)}},
                            data_range=(-1.0, 1.0))
    got = METRICS["fid"].compute(samples, model=model, context=MetricContext(cache_dir=tmp_path / "cache"),
                                 weights_path=str(weights), se_method="none")["fid"].value
    assert want > 0
    assert abs(got - want) <= 1e-6, (got, want)
