"""The shipped digits denoisers: digits-eps (linear VP, ε), digits-v (cosine VP, v), digits-flow (RF, velocity).

Each is a ``DenoiserMLP`` trained on the digits train split (scripts/train_digits.py) and
shipped as diffbench/data/<name>.safetensors; its config (architecture, schedule, target,
training) lives in the file's metadata and its sha256 is the model's checkpoint hash.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from diffbench.core.denoiser import DiffusionModel
from diffbench.core.schedules import NoiseSchedule, make_schedule
from diffbench.core.targets import TARGETS
from diffbench.models.network import DenoiserMLP
from diffbench.util.checkpoints import load_checkpoint, shipped


@dataclass(frozen=True)
class DigitsSpec:
    """How one digits model is set up: noise schedule, prediction target, network time scaling."""

    schedule: str
    target: str
    time_scale: float  # network sees t * time_scale: discrete steps 0..999 as they are, continuous t ×1000

    def make_schedule(self) -> NoiseSchedule:
        return make_schedule(self.schedule)


SPECS: dict[str, DigitsSpec] = {
    "digits-eps": DigitsSpec("linear", "eps", 1.0),
    "digits-v": DigitsSpec("cosine", "v", 1000.0),
    "digits-flow": DigitsSpec("flow", "flow", 1000.0),
}


class _NoInitialisers(TorchFunctionMode):
    """Skips ``torch.nn.init``'s initialisers (modules built for their shapes only). On the meta device some of
    them (``normal_``) run Python reference kernels whose first call imports torch._dynamo: seconds of start-up."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **(kwargs or {}))


def _arch(config: dict[str, Any], state: dict[str, Any], path: Any) -> dict[str, Any]:
    """The checkpoint's architecture, checked against its tensors before anything is allocated: a config
    whose dimensions the weights do not have (a typo, or 10^12 units) is a one-line ValueError."""
    arch = config.get("arch")
    params = inspect.signature(DenoiserMLP.__init__).parameters
    if not isinstance(arch, dict) or set(arch) - set(params) - {"self"}:
        raise ValueError(f"checkpoint {path}: metadata 'arch' must be a mapping of {', '.join(list(params)[1:])}")
    blocks = {k.split(".")[1] for k in state if k.startswith("blocks.")}
    if arch.get("depth", params["depth"].default) != len(blocks):
        raise ValueError(
            f"checkpoint {path}: arch depth {arch.get('depth')!r} but the weights hold {len(blocks)} blocks"
        )
    try:
        with torch.device("meta"), _NoInitialisers():  # shapes only: no memory, whatever the config says
            want = {k: tuple(v.shape) for k, v in DenoiserMLP(**arch).state_dict().items()}
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise ValueError(f"checkpoint {path}: metadata 'arch' {arch!r} is not buildable ({exc})") from None
    have = {k: tuple(v.shape) for k, v in state.items()}
    if want != have:
        bad = next((k for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)))
        raise ValueError(
            f"checkpoint {path}: metadata 'arch' does not match the weights (tensor {bad!r}: "
            f"{have.get(bad)} in the file, {want.get(bad)} from the config)"
        )
    return arch


def load_digits_model(name: str, checkpoint: str | None = None) -> DiffusionModel:
    """Build digits model ``name`` from its shipped checkpoint (or ``checkpoint``), without pickle."""
    spec = SPECS[name]
    state, config, sha = load_checkpoint(Path(checkpoint) if checkpoint else shipped(name))
    trained_as = config.get("model")
    if trained_as != name:
        raise ValueError(f"checkpoint {checkpoint or shipped(name)} holds {trained_as!r}, not {name!r}")
    net = DenoiserMLP(**_arch(config, state, checkpoint or shipped(name)))
    net.load_state_dict(state)
    net.eval().requires_grad_(False)
    info: dict[str, Any] = {"train_split": config.get("split"), "train_steps": config.get("training", {}).get("steps")}
    return DiffusionModel(
        name=name,
        network=net,
        schedule=spec.make_schedule(),
        target=TARGETS[spec.target],
        shape=tuple(config["arch"]["shape"]),
        num_classes=config["arch"]["num_classes"],
        checkpoint_hash=sha,
        dataset="digits",
        data_range=(-1.0, 1.0),
        info=info,
    )


def digits_eps(*, checkpoint: str | None = None) -> DiffusionModel:
    """Digits denoiser, linear-β VP with 1000 discrete steps, ε-prediction (DDPM set-up, Ho et al. 2020)."""
    return load_digits_model("digits-eps", checkpoint)


def digits_v(*, checkpoint: str | None = None) -> DiffusionModel:
    """Digits denoiser, cosine VP, v-prediction (Salimans & Ho 2022)."""
    return load_digits_model("digits-v", checkpoint)


def digits_flow(*, checkpoint: str | None = None) -> DiffusionModel:
    """Digits denoiser, rectified flow, velocity prediction (Liu et al. 2023; Lipman et al. 2023)."""
    return load_digits_model("digits-flow", checkpoint)


MODELS = {"digits-eps": digits_eps, "digits-v": digits_v, "digits-flow": digits_flow}


for _loader in MODELS.values():
    _loader.option_help = {
        "checkpoint": "another checkpoint of this model (safetensors, with its training config "
        "in the metadata); default: the shipped one"
    }
    _loader.path_options = {"checkpoint": "path"}
