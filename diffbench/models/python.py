"""A network from the user's own code: ``factory: "package.module:function"`` plus what weights cannot say.

The factory returns a torch module called as ``module(x_t, t, cond)``: x_t in the noise schedule's
own coordinates (x_t = alpha x0 + sigma eps; for the ``edm`` schedule that is x0 + σ eps), t the
time input chosen by ``time_input``, cond the class labels (None when unconditional). The options
declare what MODELS.md lists as configuration, never weights: noise schedule, prediction target,
time input convention, shape, classes and data range. docs/models.md has worked examples (an EDM
network, a guided-diffusion checkpoint).
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from diffbench.checkpoints import file_sha256
from diffbench.denoiser import DiffusionModel
from diffbench.noise import (SCHEDULE_OPTION_HELP, SCHEDULES, TABLE_SCHEDULES, DiscreteVP, check_schedule_options,
                             make_schedule, schedule_options_json_schema)

ALL_SCHEDULES = (*SCHEDULES, *TABLE_SCHEDULES)
from diffbench.targets import TARGETS
from diffbench.trust import installed_factories, installed_factory


MAX_RANK, MAX_SIDE = 8, 1 << 16  # sample dimensions and the size of each (the plan bounds the total)


def _t(sigma: float, t: float) -> float:
    return t


# Network time input conventions (MODELS.md): each maps (σ, schedule time t) to the value the network gets.
TIME_INPUTS: dict[str, Callable[[float, float], float]] = {
    "t": _t,  # the schedule's own time (discrete VP: the training index 0..T-1), times time_scale
    "sigma": lambda sigma, t: sigma,  # EDM Precond networks: σ itself (they compute c_noise inside)
    "edm": lambda sigma, t: math.log(sigma) / 4.0,  # EDM c_noise = ln(σ)/4 (Karras et al. 2022, Table 1)
    "ve": lambda sigma, t: math.log(sigma / 2.0),  # EDM's VE c_noise = ln(σ/2)
    "consistency": lambda sigma, t: 1000.0 * 0.25 * math.log(sigma + 1e-44),  # consistency models
}


def load_factory(spec: str) -> Callable[..., Any]:
    """``package.module:function``, ``path/to/file.py:function`` or the name of an installed factory
    (entry-point group ``diffbench.factories``) → the function (one-line errors).

    Imports and runs code: a suite may name one only with the user's consent (``diffbench.trust``)."""
    installed = installed_factory(spec)
    if installed is not None:
        spec = f"{installed.module}:{installed.attr}"
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"factory {spec!r}: expected 'package.module:function', 'path/file.py:function' or the "
                         f"name of an installed factory ({', '.join(installed_factories()) or 'none installed'})")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise ValueError(f"factory {spec!r}: no such file {str(path)!r}")
            folder = str(path.resolve().parent)
            if folder not in sys.path:  # the file imports its neighbours, as a script run from its folder does
                sys.path.insert(0, folder)
            loader_spec = importlib.util.spec_from_file_location(f"diffbench_factory_{path.stem}", path)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"factory {spec!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"factory {spec!r}: {module_name!r} has no callable {attr!r}")
    return fn


def check_options(*, factory: str = "", schedule: str = "linear", schedule_options: dict | None = None,
                  target: str = "eps", time_input: str = "t", time_scale: float = 1.0, shape: list | None = None,
                  num_classes: int = 0, data_range: list | None = None, **_: Any) -> None:
    """The checks that need no import, file or weights (validate --no-load runs them): one-line ValueErrors."""
    if not factory:
        raise ValueError("factory: model 'python' needs options.factory: 'package.module:function' or "
                         "'file.py:function' (a path relative to the suite file)")
    if target not in TARGETS:
        raise ValueError(f"target: unknown target {target!r}; available: {', '.join(TARGETS)}")
    if time_input not in TIME_INPUTS:
        raise ValueError(f"time_input: unknown convention {time_input!r}; available: {', '.join(TIME_INPUTS)}")
    if time_input != "t" and time_scale != 1.0:
        raise ValueError(f"time_scale applies to time_input 't' only, not {time_input!r}")
    if isinstance(time_scale, bool) or not isinstance(time_scale, (int, float)) or not 0 < time_scale < math.inf:
        raise ValueError(f"time_scale must be a positive finite number, got {time_scale!r}")
    if not shape or len(shape) > MAX_RANK or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_SIDE
                                                     for d in shape):
        raise ValueError(f"shape: the sample shape as a list of at most {MAX_RANK} positive ints, each at "
                         f"most {MAX_SIDE:,} (e.g. [3, 32, 32]), got {shape!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be 0 (unconditional) or a positive int, got {num_classes!r}")
    data_range = [-1.0, 1.0] if data_range is None else data_range
    if len(data_range) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                       for v in data_range) or not data_range[0] < data_range[1]:
        raise ValueError(f"data_range: [low, high] finite, with low < high, got {data_range!r}")
    try:
        check_schedule_options(schedule, dict(schedule_options or {}))
    except ValueError as exc:
        raise ValueError(f"{'schedule_options' if schedule in ALL_SCHEDULES else 'schedule'}: {exc}") from None


OPTION_HELP = {
    "factory": "'package.module:function' or 'file.py:function' (relative to the suite file) returning the "
               "torch module; running it needs --trust-code (or DIFFBENCH_TRUST_CODE=1)",
    "factory_options": "keyword arguments passed to the factory (checked when it runs, not by validate)",
    "checkpoint": "weights file handed to the factory as checkpoint=<absolute path> (relative to the suite file)",
    "schedule": f"noise schedule as trained: {', '.join(ALL_SCHEDULES)}",
    "schedule_options": "the schedule's own options (listed below by schedule), e.g. {betas: [...]} for "
                        "trained-betas",
    "target": f"what the network predicts: {', '.join(TARGETS)}",
    "time_input": f"what the network gets as time: {', '.join(TIME_INPUTS)} (see docs/models.md)",
    "time_scale": "multiplies time_input 't' (1/T for networks trained on t/T)",
    "shape": "one sample's shape, e.g. [1, 28, 28]",
    "num_classes": "class labels 0..num_classes-1 passed as cond (0: unconditional, cond is None)",
    "learned_variance": "the network outputs 2×channels (mean and variance halves); the variance half is dropped",
    "data_range": "[low, high] of the training data (e.g. [-0.5, 0.5]); metrics map it to [0, 255]",
    "dataset": "default reference dataset for fid/kid/prc/swd (a name such as digits; a suite's reference: "
               "overrides it)",
}


class PythonNetwork(torch.nn.Module):
    """The user's module, with the variance half of a learned-variance output dropped."""

    def __init__(self, module: torch.nn.Module, channels: int | None) -> None:
        super().__init__()
        self.module, self.channels = module, channels

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        out = self.module(x_t, t, cond)
        return out if self.channels is None else out[:, : self.channels]


def python_model(*, factory: str = "", factory_options: dict = {}, checkpoint: str = "",  # noqa: B006
                 schedule: str = "linear", schedule_options: dict = {}, target: str = "eps",  # noqa: B006
                 time_input: str = "t", time_scale: float = 1.0, shape: list = [],  # noqa: B006
                 num_classes: int = 0, learned_variance: bool = False, data_range: list = [-1.0, 1.0],  # noqa: B006
                 dataset: str = "") -> DiffusionModel:
    """A torch module from the user's factory with its declared schedule, target and time input."""
    try:
        check_options(factory=factory, schedule=schedule, schedule_options=schedule_options, target=target,
                      time_input=time_input, time_scale=time_scale, shape=shape, num_classes=num_classes,
                      data_range=data_range)
    except ValueError as exc:
        raise ValueError(f"options.{exc}") from None
    try:
        sched = make_schedule(schedule, **schedule_options)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"options.schedule_options: {exc}") from None
    kwargs = dict(factory_options)
    if checkpoint:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"options.checkpoint: no such file {checkpoint!r}")
        kwargs["checkpoint"] = checkpoint
    module = load_factory(factory)(**kwargs)
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"factory {factory!r} returned {type(module).__name__}, not a torch.nn.Module")
    module.eval().requires_grad_(False)
    time_fn: Callable[[float, float], float] | None = None if time_input == "t" else TIME_INPUTS[time_input]
    if time_input == "t" and time_scale != 1.0:
        time_fn = lambda sigma, t: t * time_scale  # noqa: E731
    info = {"factory": factory, "factory_options": kwargs, "time_input": time_input, "time_scale": time_scale,
            "learned_variance": learned_variance, "schedule_options": schedule_options,
            "discrete": isinstance(sched, DiscreteVP)}
    return DiffusionModel(
        name="python", network=PythonNetwork(module, shape[0] if learned_variance else None), schedule=sched,
        target=TARGETS[target], shape=tuple(shape), num_classes=num_classes or None,
        checkpoint_hash=file_sha256(checkpoint) if checkpoint else None, dataset=dataset or None,
        data_range=(float(data_range[0]), float(data_range[1])), info=info, time_input=time_fn,
    )



python_model.option_help = OPTION_HELP
python_model.check_options = check_options
python_model.path_options = {"factory": "factory", "checkpoint": "path"}
python_model.option_schema = {"schedule_options": schedule_options_json_schema()}
