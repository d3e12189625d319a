"""FID's reported s.e. against the truth on digits: the spread of FID over independent sample blocks.

``python tests/benchmarks/fid_se_truth.py [BLOCKS]`` samples BLOCKS independent blocks of 500 samples
(seeds 0..BLOCKS-1, as suites/smoke.yaml draws seed 0) for two smoke cells (ddim 10 steps, heun 5 steps,
Karras σ, digits-eps), scores each block's digits-cnn features with FID, and prints per cell the s.d.
of the block FIDs (what a standard error should match) beside the RMS over blocks of the jackknife
s.e. and of the 100-resample bootstrap s.e., both computed on the same features; and how much the
blocks' feature means spread against what independent draws would give (median over features of
s.d. of block means ÷ (within-block s.d. / √500)): under 1 for a class-stratified sample.
"""

from __future__ import annotations

import sys

import numpy as np

CELLS = [("ddim", 10), ("heun", 5)]


def _mean_spread(means: np.ndarray, sds: np.ndarray, n: int) -> float:
    """Median over features of the s.d. of block means ÷ the s.e. of a mean of n independent draws."""
    iid = sds.mean(0) / np.sqrt(n)
    live = iid > 0
    return float(np.median(means.std(0, ddof=1)[live] / iid[live]))


def block_rows(blocks: int) -> list[str]:
    import diffbench
    from diffbench.metrics.base import Batch, MetricContext
    from diffbench.metrics.fidelity import FID
    from diffbench.run.preparation import default_cache_dir

    model = diffbench.load_model("digits-eps")
    ctx = MetricContext(cache_dir=default_cache_dir())
    out = []
    for sampler, steps in CELLS:
        fids, jk, boot, means, sds = [], [], [], [], []
        for seed in range(blocks):
            res = diffbench.sample(
                model, sampler, steps=steps, scheduler="karras", num_samples=500, seed=seed, batch_size=500
            )
            feats = FID().features(model=model, context=ctx)(Batch(res.samples, None, None, seed))
            v_jk = FID().score(feats, model=model, result=None, context=ctx)["fid"]
            v_bs = FID().score(feats, model=model, result=None, context=ctx, se_method="bootstrap")["fid"]
            fids.append(v_jk.value)
            jk.append(v_jk.uncertainty)
            boot.append(v_bs.uncertainty)
            rows = np.asarray(feats, dtype=np.float64)
            means.append(rows.mean(0))
            sds.append(rows.std(0, ddof=1))

        def rms(x):
            return float(np.sqrt(np.mean(np.square(x))))

        out.append(
            f"{sampler} {steps} steps, {blocks} blocks of 500: mean FID {np.mean(fids):.3f}, s.d. over blocks "
            f"{np.std(fids, ddof=1):.3f}; RMS s.e. jackknife {rms(jk):.3f}, bootstrap {rms(boot):.3f}; "
            f"feature means spread {_mean_spread(np.array(means), np.array(sds), 500):.2f}× independent draws'"
        )
        print(out[-1], flush=True)
    return out


if __name__ == "__main__":
    block_rows(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
