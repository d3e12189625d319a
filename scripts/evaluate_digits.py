"""Quality of the shipped digits models: the FID/KID floor, per-model FID/KID/PRC/class accuracy, speed, grids.

    python scripts/evaluate_digits.py                          # 2000 samples, heun 50 steps, karras
    python scripts/evaluate_digits.py --grids docs/images      # also write a sample grid PNG per model

The floor is the digits test split scored against the train split (the reference every model is
scored against); a model's KID is judged against it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from diffbench.datasets import digits
from diffbench.metrics.base import MetricContext, MetricValue
from diffbench.metrics.fidelity import FID, KID, METRICS
from diffbench.models.digits import MODELS
from diffbench.run.sampling import sample


def fmt(v: MetricValue) -> str:
    return f"{v.value:.5f} ± {v.uncertainty:.5f}" if v.uncertainty is not None else f"{v.value:.5f}"


def network_ms(model, batch: int = 256, repeats: int = 50) -> float:
    """Median wall-clock of one network evaluation on ``batch`` samples (after warm-up)."""
    x = torch.randn(batch, *model.shape)
    t = torch.full((batch,), float(model.schedule.t_of_sigma(1.0)))
    labels = torch.arange(batch) % model.num_classes
    times = []
    with torch.inference_mode():
        for _ in range(5):
            model.network(x, t, labels)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.network(x, t, labels)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def save_grid(model, path: Path, per_class: int, steps: int) -> None:
    """A per_class × 10 grid (one column per class), heun ``steps`` steps, upscaled ×4 (nearest)."""
    from torchvision.utils import save_image

    res = sample(model, "heun", steps=steps, scheduler="karras", num_samples=per_class * model.num_classes, seed=0)
    img = ((res.samples.clamp(-1, 1) + 1) / 2).repeat_interleave(4, -1).repeat_interleave(4, -2)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(img, path, nrow=model.num_classes, padding=2, pad_value=1.0)


def floor(context: MetricContext) -> dict[str, MetricValue]:
    """FID and KID of the test split against the train split."""
    test = digits("test")
    ref_model = type("Ref", (), {"dataset": "digits", "data_range": (-1.0, 1.0), "name": "digits-test"})()
    out = {}
    for metric in (FID(), KID()):
        out.update(metric.compute(test.images, model=ref_model, result=None, context=context))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--checkpoint-dir", type=Path, default=None, help="load <dir>/<model>.safetensors instead")
    ap.add_argument("--num-samples", type=int, default=2000)
    ap.add_argument("--sampler", default="heun")
    ap.add_argument("--scheduler", default="karras")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=None, help="reference-feature cache (default: a temp dir)")
    ap.add_argument("--grids", type=Path, default=None, help="write <dir>/<model>.png sample grids")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the speed budget is for 2 cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="diffbench-eval-"))
    context = MetricContext(cache_dir=cache, seed=args.seed)

    for name, v in floor(context).items():
        print(f"floor (test vs train, n=300/1497) {name}: {fmt(v)}")
    for name in args.models:
        ckpt = str(args.checkpoint_dir / f"{name}.safetensors") if args.checkpoint_dir else None
        model = MODELS[name](checkpoint=ckpt)
        ms = network_ms(model)
        t0 = time.perf_counter()
        res = sample(
            model,
            args.sampler,
            steps=args.steps,
            scheduler=args.scheduler,
            num_samples=args.num_samples,
            seed=args.seed,
            guidance=args.guidance,
        )
        secs = time.perf_counter() - t0
        values: dict[str, MetricValue] = {}
        for metric in ("fid", "kid", "prc", "class-accuracy"):
            values.update(METRICS[metric].compute(res.samples, model=model, result=res, context=context))
        print(
            f"{name} ({args.sampler} {args.steps} steps {args.scheduler}, NFE {res.nfe:g}, "
            f"guidance {args.guidance}, n={args.num_samples}, {secs:.1f} s; network batch 256: {ms:.1f} ms)"
        )
        for k, v in values.items():
            print(f"  {k}: {fmt(v)}")
        if args.grids:
            save_grid(model, args.grids / f"{name}.png", per_class=8, steps=args.steps)
    print("context:", {k: v for k, v in context.info.items()})


if __name__ == "__main__":
    main()
