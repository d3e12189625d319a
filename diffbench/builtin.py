"""The built-in components, registered through the same hook and entry point as any plugin."""
from __future__ import annotations

from diffbench.hookspecs import hookimpl


@hookimpl
def diffbench_register(registry) -> None:
    """Register diffbench's own samplers, schedulers, targets, models, metrics and reference datasets."""
    from diffbench import datasets, models, schedulers, targets
    from diffbench.samplers import SAMPLERS

    for name, info in SAMPLERS.items():
        registry.add("sampler", name, info.fn, **info.declarations(name))
    for name, fn in schedulers.SCHEDULERS.items():
        registry.add("scheduler", name, fn, discrete_only=name in ("leading", "trailing"),
                     option_help=schedulers.OPTION_HELP.get(name, {}))
    for name, fn in schedulers.PARTIAL_SCHEDULERS.items():
        registry.add("scheduler", name, fn, discrete_only=True, option_help=schedulers.OPTION_HELP.get(name, {}))
    for name, target in targets.TARGETS.items():
        registry.add("target", name, target, description=type(target).__doc__.split("\n")[0])
    for name, loader in models.MODELS.items():
        registry.add("model", name, loader, **models.DECLARATIONS.get(name, {}))
    for name, loader in datasets.DATASETS.items():
        registry.add("dataset", name, loader)
    try:
        from diffbench import metrics
    except ImportError:  # metrics are optional until their module lands
        return
    for name, metric in metrics.METRICS.items():
        registry.add("metric", name, metric)
