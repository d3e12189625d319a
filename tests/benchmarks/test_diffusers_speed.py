"""Speed benchmark: the diffusers adapter's wrapped denoiser call against the bare diffusers UNet call.

Run with ``python -m pytest tests/benchmarks/test_diffusers_speed.py -m benchmark --benchmark-enable``
(or ``tox -e bench``). Two figures, on a small 3×32×32 UNet2DModel at batch 64 on the CPU: the
median over interleaved pairs of (wrapped call / bare call) - 1, which a loaded machine makes noisy,
and the adapter's own cost per call (the same wrapped call with the UNet swapped for a free stub)
divided by the bare UNet call, which does not depend on pairing luck.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

pytest.importorskip("diffusers")

from diffbench.core.denoiser import SigmaDenoiser  # noqa: E402
from diffbench.models.diffusers import diffusers_model  # noqa: E402

pytestmark = pytest.mark.benchmark
BATCH, PAIRS = 64, 20


def small_unet_folder(root):
    """A small CIFAR-shaped UNet2DModel (3×32×32, 2 levels, attention at 8×8... ~0.5M parameters)."""
    import json

    from diffusers import DDIMScheduler, UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    ).save_pretrained(root / "unet")
    DDIMScheduler().save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    return root


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@pytest.mark.benchmark(group="diffusers adapter: wrapped denoiser call (small UNet, batch 64, CPU)")
def test_diffusers_adapter_overhead(benchmark, figures, tmp_path):
    model = diffusers_model(path=str(small_unet_folder(tmp_path)))
    unet = model.network.denoiser
    sigma = 1.0
    x = torch.randn(BATCH, *model.shape, generator=torch.Generator().manual_seed(0))
    den = SigmaDenoiser(model)
    den.prepare([sigma])  # σ → t before the clock, as sample() does
    t_net, c = den._time(sigma)
    x_t = x * c.alpha
    t_in = torch.full((BATCH,), t_net)

    def bare():
        return unet(x_t, t_in).sample  # the call a diffusers user writes

    def wrapped():
        return den(x, sigma)

    with torch.inference_mode():
        for _ in range(3):
            bare(), wrapped()
        ratios = []
        for i in range(PAIRS):  # interleaved, alternating order: drift hits both sides alike
            if i % 2:
                b, w = _seconds(bare), _seconds(wrapped)
            else:
                w, b = _seconds(wrapped), _seconds(bare)
            ratios.append(w / b)
        benchmark.pedantic(wrapped, rounds=10, warmup_rounds=1)
        bare_s = statistics.median(_seconds(bare) for _ in range(5))
        model.network.denoiser = _Stub()  # the adapter's own work: scaling, time batch, slicing, target
        for _ in range(10):
            wrapped()
        harness_s = statistics.median(_seconds(wrapped) for _ in range(200))
    model.network.denoiser = unet
    overhead = statistics.median(ratios) - 1.0
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    benchmark.extra_info.update(
        overhead_median=overhead,
        ratio_q1=q1,
        ratio_q3=q3,
        pairs=PAIRS,
        batch=BATCH,
        threads=torch.get_num_threads(),
        bare_s=bare_s,
        harness_s=harness_s,
    )
    figures.append(
        f"diffusers adapter, small UNet 3x32x32 batch {BATCH}: bare call {bare_s * 1e3:.1f} ms; "
        f"adapter's own cost {harness_s * 1e6:.0f} us/call = {harness_s / bare_s:+.3%} of it; "
        f"wrapped/bare - 1 = {overhead:+.2%} (median of {PAIRS} interleaved pairs, IQR {q1:.3f}-{q3:.3f})"
    )


class _Stub(torch.nn.Module):
    """A free 'UNet' with the diffusers call signature: returns its input as the output tuple."""

    def forward(self, x, t, class_labels=None, return_dict=True):
        return (x,)
