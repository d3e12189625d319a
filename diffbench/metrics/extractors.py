"""torch-fidelity feature extractors, resolved offline and built from weights loaded as tensors only.

No weights file is ever unpickled: a file is read as safetensors, or as a PyTorch state dict
through ``torch.load(weights_only=True)`` (which refuses any pickled object other than tensors
and plain containers); anything else is a one-line ``UnsafeWeights`` error naming the file and
the safe formats. diffbench then builds the extractor itself from the verified tensors:
digits-cnn and CLIP directly from the state dict; Inception and VGG16 through torch-fidelity's
own constructor, handed a file that diffbench has just written from those tensors (so the only
file torch-fidelity reads holds nothing but tensors). DINOv2 extractors load code through
``torch.hub`` and are refused. Nothing downloads: a missing file is a one-line error saying
where to put it or which option names it.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffbench.metrics import digits_cnn
from diffbench.util.checkpoints import file_sha256, shipped

INCEPTION = "inception-v3-compat"
SAFE_FORMATS = (
    "safe formats: a .safetensors file, or a PyTorch state dict of tensors that torch.load(weights_only=True) reads"
)


class MetricUnavailable(ValueError):
    """A metric cannot run here (missing weights, no reference dataset); the message is one line."""


class UnsafeWeights(MetricUnavailable):
    """A weights file that cannot be read as tensors only (it would need unpickling or TorchScript)."""


@dataclass(frozen=True)
class Extractor:
    """A resolved torch-fidelity feature extractor: name, weights file, its sha256, feature layer."""

    name: str
    weights_path: str | None
    sha256: str
    layer: str

    def describe(self) -> dict[str, Any]:
        """The extraction protocol as recorded in the manifest."""
        resize = (
            "none (native 8×8)"
            if self.name == digits_cnn.NAME
            else "bilinear to 299×299 inside the network, TensorFlow-1 compatible (torch-fidelity)"
            if self.name == INCEPTION
            else "bilinear to the extractor's input size inside the network (torch-fidelity)"
        )
        return {
            "feature_extractor": self.name,
            "feature_extractor_hash": self.sha256,
            "feature_layer": self.layer,
            "feature_extractor_weights": self.weights_path,
            "resize": resize,
            "uint8_mapping": digits_cnn.UINT8_MAPPING,
        }


def inception_url() -> str:
    """Where torch-fidelity publishes the inception-2015-12-05 weights (for the user to fetch once)."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3


def default_inception_path() -> Path:
    """Where diffbench looks for the Inception weights when no weights_path is given (torch hub's folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / inception_url().rsplit("/", 1)[-1]


def _extractor_weights(name: str, weights_path: str | None) -> Path:
    """The weights file for ``name``; never downloads: a missing file is a one-line MetricUnavailable."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise MetricUnavailable(f"feature extractor {name!r}: weights_path {str(path)!r} does not exist")
        return path
    if name == digits_cnn.NAME:
        return shipped(digits_cnn.NAME)
    if name == INCEPTION:
        path = default_inception_path()
        if path.is_file():
            return path
        raise MetricUnavailable(
            f"feature extractor {INCEPTION!r}: weights not found offline at {path}; download {inception_url()} "
            "and pass the metric option weights_path=<file> (or place the file at that path)"
        )
    raise MetricUnavailable(
        f"feature extractor {name!r}: pass the metric option weights_path=<file> "
        "(diffbench never downloads weights at run time)"
    )


def resolve_extractor(name: str, weights_path: str | None, metric: str) -> Extractor:
    """Check that ``name`` is a registered torch-fidelity extractor with weights available offline (digits-cnn,
    diffbench's own, is resolved without importing torch-fidelity)."""
    if name == digits_cnn.NAME:
        path = _extractor_weights(name, weights_path)
        return Extractor(name, str(path), file_sha256(path), digits_cnn.LAYER_FOR_METRIC[metric])
    digits_cnn.register_with_torch_fidelity()
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if name not in FEATURE_EXTRACTORS_REGISTRY:
        raise MetricUnavailable(
            f"unknown feature extractor {name!r}; registered with torch-fidelity: "
            f"{', '.join(sorted(FEATURE_EXTRACTORS_REGISTRY))}"
        )
    if name.startswith("dinov2"):
        raise MetricUnavailable(
            f"feature extractor {name!r} loads its code through torch.hub; diffbench "
            "runs no downloaded code (use inception-v3-compat, vgg16 or a clip-* extractor)"
        )
    path = _extractor_weights(name, weights_path)
    layer = FEATURE_EXTRACTORS_REGISTRY[name].get_default_feature_layer_for_metric(metric)
    return Extractor(name, str(path), file_sha256(path), layer)


def check_input_shape(name: str, shape: tuple[int, ...]) -> None:
    """One-line MetricUnavailable when extractor ``name`` cannot take images of ``shape`` (C, H, W)."""
    if name == digits_cnn.NAME and (len(shape) != 3 or shape[0] not in (1, 3) or tuple(shape[1:]) != (8, 8)):
        size = "×".join(str(d) for d in shape)
        raise MetricUnavailable(
            f"feature extractor {digits_cnn.NAME!r} takes 8×8 images (1 or 3 channels), not {size}; for "
            f"other sizes use metric 'swd' (no pretrained network) or extractor {INCEPTION!r}"
        )


def extractor_names() -> list[str]:
    """Extractors the fid, fid-inf, kid and prc metrics accept (torch-fidelity's, less those that load code)."""
    digits_cnn.register_with_torch_fidelity()
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    return sorted(n for n in FEATURE_EXTRACTORS_REGISTRY if not n.startswith("dinov2"))


def _is_safetensors(data: bytes) -> bool:
    """safetensors files start with a little-endian u64 header length, then a JSON object."""
    if len(data) < 10:
        return False
    n = int.from_bytes(data[:8], "little")
    return 0 < n <= len(data) - 8 and data[8:9] == b"{"


def load_tensors(path: str | Path, expected_sha256: str | None = None) -> dict[str, Tensor]:
    """A flat {name: tensor} state dict from ``path``, read as safetensors or torch.load(weights_only=True).

    Never unpickles anything but tensors and plain containers. ``expected_sha256`` guards against the
    file changing after it was resolved. Raises UnsafeWeights (one line) for anything else.
    """
    path = Path(path)
    data = path.read_bytes()
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise MetricUnavailable(f"weights file {str(path)!r} changed while diffbench was using it")
    if _is_safetensors(data):
        from safetensors.torch import load

        try:
            return load(data)
        except Exception as exc:
            raise UnsafeWeights(f"weights file {str(path)!r} is not a valid safetensors file ({_line(exc)})") from None
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UnsafeWeights(
            f"weights file {str(path)!r} refused: it cannot be read as tensors only ({_line(exc)}); {SAFE_FORMATS}"
        ) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not (
        isinstance(obj, Mapping) and obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    ):
        raise UnsafeWeights(
            f"weights file {str(path)!r} refused: it holds {type(obj).__name__}, not a state dict "
            f"of tensors; {SAFE_FORMATS}"
        )
    return dict(obj)


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def build_module(ext: Extractor) -> torch.nn.Module:
    """The extractor ``ext`` on the CPU, built by diffbench from its weights loaded as tensors only."""
    if ext.name == digits_cnn.NAME:
        with open(ext.weights_path, "rb") as f:
            head = f.read(16)
        if not (len(head) > 9 and head[8:9] == b"{"):
            raise UnsafeWeights(f"weights file {ext.weights_path!r} refused: digits-cnn reads only .safetensors")
        return digits_cnn.DigitsFeatures([ext.layer], ext.weights_path)
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    cls = FEATURE_EXTRACTORS_REGISTRY[ext.name]
    state = load_tensors(ext.weights_path, ext.sha256)
    if ext.name.startswith("clip-"):
        return _build_clip(cls, ext, state)
    if ext.name in (INCEPTION, "vgg16"):
        # torch-fidelity's constructor reads a file path: hand it one written here from the verified tensors
        fd, tmp = tempfile.mkstemp(suffix=".pt")
        os.close(fd)
        try:
            torch.save(state, tmp)
            return cls(ext.name, [ext.layer], feature_extractor_weights_path=tmp, verbose=False)
        finally:
            os.unlink(tmp)
    raise MetricUnavailable(
        f"feature extractor {ext.name!r}: diffbench builds only digits-cnn, "
        f"{INCEPTION}, vgg16 and clip-* extractors from tensors-only weights"
    )


def _build_clip(cls: type, ext: Extractor, state: dict[str, Tensor]) -> torch.nn.Module:
    """torch-fidelity's CLIP extractor from a state dict (its own loader expects a TorchScript archive)."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.feature_extractor_clip import build_model

    module = cls.__new__(cls)
    FeatureExtractorBase.__init__(module, ext.name, [ext.layer])
    module.feature_extractor_internal_dtype = torch.float32
    module.model = build_model(state, torch.float32)
    module.resolution = module.model.visual.input_resolution
    return module.requires_grad_(False).eval()


@lru_cache(maxsize=4)
def extractor_module(ext: Extractor, device: str) -> torch.nn.Module:
    """The built extractor on ``device`` (one per process, extractor and device)."""
    return build_module(ext).to(device)


def extract_features(
    images: Tensor,
    data_range: tuple[float, float],
    ext: Extractor,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> Tensor:
    """Features (N, D) float32 on the CPU of float images (N, C, H, W) in ``data_range``."""
    device = torch.device(device)
    check_input_shape(ext.name, tuple(images.shape[1:]))
    module = extractor_module(ext, str(device))
    u8 = digits_cnn.to_uint8(images, data_range)
    if u8.shape[1] == 1 and ext.name != digits_cnn.NAME:
        u8 = u8.expand(-1, 3, -1, -1)  # grey → RGB for RGB extractors
    with torch.inference_mode():
        feats = [module(b.to(device))[0].float().cpu() for b in u8.split(batch_size)]
    return torch.cat(feats)
