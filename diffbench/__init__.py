"""diffbench: benchmark diffusion-model samplers and schedulers against truth."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("diffbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from diffbench.core.denoiser import DiffusionModel, SigmaDenoiser  # noqa: E402
from diffbench.registry import build_registry, default_registry  # noqa: E402
from diffbench.run.sampling import SampleResult, SamplingSpec, make_grid, sample, sample_batches  # noqa: E402


def load_model(name: str, **options):
    """Load a registered model by name with its options."""
    from diffbench.registry import resolve_options

    comp = default_registry().get("model", name)
    return comp.obj(**resolve_options(comp, options))


__all__ = ["DiffusionModel", "SigmaDenoiser", "SampleResult", "build_registry", "default_registry",
           "load_model", "make_grid", "sample", "sample_batches", "SamplingSpec", "__version__"]
