"""The `digits-cnn` classifier and feature extractor for 1×8×8 digits, registered with torch-fidelity.

diffbench itself extracts with ``DigitsFeatures`` (the same forward, no torch-fidelity import), so a run
scored with digits-cnn never pays for importing torch-fidelity, torchvision and torch._dynamo.

torch-fidelity hands extractors uint8 images. Samples in [lo, hi] become uint8 by
u = round((x - lo) / (hi - lo) · 255) clipped to 0..255 (``to_uint8``); the extractor maps
back with x = u / 255 · 2 - 1 (``from_uint8``), so a digits image (17 grey levels) survives
the round trip within 1/255. The classifier was trained on round-tripped images.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from diffbench.core.images import (  # re-exported: the extractor's pixel mapping
    from_uint8,
    to_uint8,
)
from diffbench.util.checkpoints import load_checkpoint, shipped

NAME = "digits-cnn"
UINT8_MAPPING = "u = round((x - lo) / (hi - lo) * 255) clipped to [0, 255]; extractor input u / 127.5 - 1"


class DigitsCNN(nn.Module):
    """Small VGG-style classifier for 1×8×8 digits: two conv stages, a 128-d feature layer, 10 logits."""

    def __init__(self, width: int = 32, features: int = 128, num_classes: int = 10, dropout: float = 0.3) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * w * 4, features),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(features, num_classes)
        # fixed after training so train-split features have unit RMS per dimension: KID's cubic
        # kernel (x·y/d + 1)^3 then sees inputs of order 1, as with Inception features
        self.register_buffer("feature_scale", torch.ones(()))

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(features scaled by feature_scale, logits) for float images (B, 1, 8, 8) in [-1, 1]."""
        f = self.body(x)
        return f * self.feature_scale, self.head(self.dropout(f))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[1]


def build_classifier(path: str | None = None) -> tuple[DigitsCNN, str]:
    """A fresh digits-cnn from the shipped (or given) checkpoint, in eval mode, and its sha256."""
    state, config, sha = load_checkpoint(Path(path) if path else shipped(NAME))
    net = DigitsCNN(**config.get("arch", {}))
    net.load_state_dict(state)
    return net.eval().requires_grad_(False), sha


load_classifier = lru_cache(maxsize=4)(build_classifier)  # shared CPU instance for classify()


def classify(images: Tensor, data_range: tuple[float, float] = (-1.0, 1.0), batch_size: int = 1024) -> Tensor:
    """Predicted class of each image, through the same uint8 mapping the extractor uses."""
    net, _ = load_classifier()
    with torch.inference_mode():
        return torch.cat([net(from_uint8(to_uint8(b.cpu(), data_range))).argmax(1) for b in images.split(batch_size)])


FEATURE_LAYERS = ("128", "logits")
LAYER_FOR_METRIC = {"isc": "logits", "fid": "128", "kid": "128", "prc": "128"}


def features_of_uint8(net: DigitsCNN, x: Tensor, features_list: list[str]) -> tuple[Tensor, ...]:
    """The extractor's forward: uint8 images B×1×H×W or B×3×H×W (grey by channel mean) → the listed layers."""
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"digits-cnn expects uint8 images Bx1xHxW or Bx3xHxW, got {x.dtype} {tuple(x.shape)}")
    x = from_uint8(x)
    x = x.mean(1, keepdim=True) if x.shape[1] == 3 else x
    feats, logits = net.forward_features(x)
    out = {"128": feats, "logits": logits}
    return tuple(out[name] for name in features_list)


class DigitsFeatures(nn.Module):
    """The digits-cnn extractor as diffbench runs it: torch-fidelity's interface (uint8 in, a tuple of the
    listed layers out) without importing torch-fidelity (whose import pulls in torchvision and torch._dynamo)."""

    def __init__(self, features_list: list[str], weights_path: str | None = None) -> None:
        super().__init__()
        self.features_list = list(features_list)
        self.net, self.checkpoint_hash = build_classifier(weights_path)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return features_of_uint8(self.net, x, self.features_list)


def _feature_extractor_class():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class FeatureExtractorDigitsCNN(FeatureExtractorBase):
        """torch-fidelity extractor: features '128' (penultimate, ReLU) and 'logits' of digits-cnn."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            self.net, self.checkpoint_hash = build_classifier(feature_extractor_weights_path)
            self.requires_grad_(False)
            self.eval()

        def forward(self, x):
            return features_of_uint8(self.net, x, self.features_list)

        @staticmethod
        def get_provided_features_list():
            return FEATURE_LAYERS

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return LAYER_FOR_METRIC[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)

    return FeatureExtractorDigitsCNN


def register_with_torch_fidelity() -> None:
    """Register `digits-cnn` with torch-fidelity (idempotent)."""
    from torch_fidelity.registry import (
        FEATURE_EXTRACTORS_REGISTRY,
        register_feature_extractor,
    )

    if NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(NAME, _feature_extractor_class())
