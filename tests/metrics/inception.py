"""A randomly initialised Inception of torch-fidelity's inception-v3-compat architecture (never downloaded)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch


@cache
def random_inception_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """State dict of torch-fidelity's FeatureExtractorInceptionV3 with PyTorch's default random init."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    saved = fe.load_state_dict_from_url, torch.nn.Module.load_state_dict
    fe.load_state_dict_from_url = lambda *a, **k: {}  # the constructor would download: hand it nothing
    torch.nn.Module.load_state_dict = lambda self, *a, **k: None  # and keep the random init
    try:
        torch.manual_seed(seed)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        fe.load_state_dict_from_url, torch.nn.Module.load_state_dict = saved
    return {k: v.clone() for k, v in net.state_dict().items()}


def save_random_inception(path: Path, fmt: str = "safetensors") -> Path:
    """Write the random Inception's weights as safetensors or as a torch.save'd state dict; return the path."""
    state = random_inception_state()
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path
