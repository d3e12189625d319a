"""Train the shipped digits denoisers (digits-eps, digits-v, digits-flow) on the digits train split.

    python scripts/train_digits.py                    # all three → diffbench/data/<name>.safetensors
    python scripts/train_digits.py --models digits-v  # one of them

Deterministic: a fixed seed, one CPU thread (torch and BLAS) whatever the caller's, data order and
noise from one generator; docs/digits.md states when the files are reproduced bit for bit.
Each model: the same ``DenoiserMLP``; x_t = alpha x0 + sigma eps at a time t drawn uniformly (training
timesteps 0..999 for the discrete model, continuous t covering σ in [sigma_min, sigma_max] = [0.002, 80]
otherwise); MSE against the model's target built with the target's own ``from_x0`` (the definition sampling
inverts); labels dropped to the null class with probability 0.1 for classifier-free guidance; AdamW, cosine
LR, EMA weights shipped.
"""
from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffbench.checkpoints import DATA_DIR, save_checkpoint
from diffbench.datasets import digits
from diffbench.devices import one_thread
from diffbench.models.digits import SPECS, DigitsSpec
from diffbench.models.network import DenoiserMLP
from diffbench.noise import Coef, DiscreteVP, NoiseSchedule
from diffbench.targets import TARGETS

# Time embedding periods from 200 to 20000 units (training steps, or t × 1000): DDPM's shortest period,
# 2π units, made D(x, σ) wiggle in σ faster than solver grids resolve and capped every solver's order
# above ~25 NFE (scripts/trajectory_floor.py).
ARCH = {"shape": [1, 8, 8], "num_classes": 10, "width": 256, "hidden": 512, "depth": 3, "emb_dim": 128,
        "time_min_period": 200.0, "time_max_period": 20000.0}


def sample_times(schedule: NoiseSchedule, n: int, gen: torch.Generator) -> np.ndarray:
    """Training times: uniform training timesteps (discrete) or uniform t over [t(σ_min), t(σ_max)]."""
    if isinstance(schedule, DiscreteVP):
        return torch.randint(0, schedule.num_steps, (n,), generator=gen).double().numpy()
    u = torch.rand(n, generator=gen, dtype=torch.float64).numpy()
    return schedule.t_min + u * (schedule.t_max - schedule.t_min)


def coef_columns(schedule: NoiseSchedule, t: np.ndarray) -> Coef:
    """Schedule coefficients at times t as (B, 1, 1, 1) float32 tensors."""
    c = schedule.coef(t)
    col = lambda v: torch.as_tensor(np.broadcast_to(v, t.shape).copy(), dtype=torch.float32).view(-1, 1, 1, 1)
    return Coef(col(c.alpha), col(c.sigma), col(c.dalpha), col(c.dsigma))


def train(name: str, spec: DigitsSpec, *, steps: int, batch: int, lr: float, p_uncond: float, ema_decay: float,
          seed: int, out: Path) -> None:
    """Train one model and write its EMA weights; on one thread whatever the caller's (sums round alike)."""
    with one_thread():
        _train(name, spec, steps=steps, batch=batch, lr=lr, p_uncond=p_uncond, ema_decay=ema_decay, seed=seed,
               out=out)


def _train(name: str, spec: DigitsSpec, *, steps: int, batch: int, lr: float, p_uncond: float, ema_decay: float,
           seed: int, out: Path) -> None:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = digits("train")
    schedule, target = spec.make_schedule(), TARGETS[spec.target]
    arch = {**ARCH, "time_scale": spec.time_scale}
    net = DenoiserMLP(**arch)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, min(500, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    t0, running = time.perf_counter(), 0.0
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        x0, labels = data.images[idx], data.labels[idx].clone()
        labels[torch.rand(batch, generator=gen) < p_uncond] = data.num_classes
        t = sample_times(schedule, batch, gen)
        c = coef_columns(schedule, t)
        eps = torch.randn(x0.shape, generator=gen)
        x_t = c.alpha * x0 + c.sigma * eps
        loss = F.mse_loss(net(x_t, torch.from_numpy(t).float(), labels), target.from_x0(x0, x_t, c))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - decay)
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if (step + 1) % 1000 == 0:
            print(f"{name} step {step + 1}/{steps} loss {running:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    seconds = time.perf_counter() - t0
    config = {"model": name, "arch": arch, "schedule": spec.schedule, "target": spec.target, "dataset": "digits",
              "split": "train", "training": {"steps": steps, "batch": batch, "lr": lr, "p_uncond": p_uncond,
                                             "ema_decay": ema_decay, "seed": seed}}
    sha = save_checkpoint(out, ema.state_dict(), config)
    print(f"{name}: {seconds:.0f} s; wrote {out} ({out.stat().st_size / 1e6:.2f} MB, sha256 {sha[:16]})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(SPECS), choices=list(SPECS))
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--p-uncond", type=float, default=0.1)
    ap.add_argument("--ema-decay", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=DATA_DIR)
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        train(name, SPECS[name], steps=args.steps, batch=args.batch, lr=args.lr, p_uncond=args.p_uncond,
              ema_decay=args.ema_decay, seed=args.seed, out=args.out_dir / f"{name}.safetensors")


if __name__ == "__main__":
    main()
