"""diffbench: benchmark diffusion-model samplers and schedulers against truth."""

from __future__ import annotations

from diffbench.core.denoiser import DiffusionModel, SigmaDenoiser
from diffbench.registry import build_registry, default_registry
from diffbench.run.sampling import SampleResult, SamplingSpec, make_grid, sample, sample_batches
from diffbench.util.version import package_version

__version__ = package_version()


def load_model(name: str, **options):
    """Load a registered model by name with its options."""
    from diffbench.registry import resolve_options

    comp = default_registry().get("model", name)
    return comp.obj(**resolve_options(comp, options))


__all__ = [
    "DiffusionModel",
    "SigmaDenoiser",
    "SampleResult",
    "build_registry",
    "default_registry",
    "load_model",
    "make_grid",
    "sample",
    "sample_batches",
    "SamplingSpec",
    "__version__",
]
