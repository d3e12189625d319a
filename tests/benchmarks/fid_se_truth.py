"""FID's reported s.e. against the truth on digits: the spread of FID over independent sample blocks.

``python tests/benchmarks/fid_se_truth.py [BLOCKS]`` samples BLOCKS independent blocks of 500 samples
(seeds 0..BLOCKS-1, as suites/smoke.yaml draws seed 0) for two smoke cells (ddim 10 steps, heun 5 steps,
Karras σ, digits-eps), scores each block's digits-cnn features with FID, and prints per cell the s.d.
of the block FIDs (what a standard error should match) beside the RMS over blocks of the jackknife
s.e. and of the 100-resample bootstrap s.e., both computed on the same features.
"""
from __future__ import annotations

import sys

import numpy as np

CELLS = [("ddim", 10), ("heun", 5)]


def block_rows(blocks: int) -> list[str]:
    import diffbench
    from diffbench.metrics.base import Batch, MetricContext
    from diffbench.metrics.fidelity import FID
    from diffbench.runner import default_cache_dir

    model = diffbench.load_model("digits-eps")
    ctx = MetricContext(cache_dir=default_cache_dir())
    out = []
    for sampler, steps in CELLS:
        fids, jk, boot = [], [], []
        for seed in range(blocks):
            res = diffbench.sample(model, sampler, steps=steps, scheduler="karras", num_samples=500, seed=seed,
                                   batch_size=500)
            feats = FID().features(model=model, context=ctx)(Batch(res.samples, None, None, seed))
            v_jk = FID().score(feats, model=model, result=None, context=ctx)["fid"]
            v_bs = FID().score(feats, model=model, result=None, context=ctx, se_method="bootstrap")["fid"]
            fids.append(v_jk.value)
            jk.append(v_jk.uncertainty)
            boot.append(v_bs.uncertainty)
        rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
        out.append(f"{sampler} {steps} steps, {blocks} blocks of 500: mean FID {np.mean(fids):.3f}, s.d. over blocks "
                   f"{np.std(fids, ddof=1):.3f}; RMS s.e. jackknife {rms(jk):.3f}, bootstrap {rms(boot):.3f}")
        print(out[-1], flush=True)
    return out


if __name__ == "__main__":
    block_rows(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
