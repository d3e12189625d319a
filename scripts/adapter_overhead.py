"""The diffusers adapter's cost on a CIFAR-size UNet: wrapped denoiser call against the bare UNet call.

Run: python scripts/adapter_overhead.py [DEVICE] [--small]. Builds DDPM's CIFAR-10 UNet2DModel (3×32×32,
channels 128/256/256/256, attention at 16×16, ~36M parameters) with random weights, saves it with
save_pretrained to a temporary folder, loads it through the ``diffusers`` model, and times interleaved
pairs of the bare ``unet(x_t, t).sample`` and diffbench's wrapped ``D(x, σ)`` at batch 128 (device
synchronised before each clock read). ``--small``: a 2-level 32/64-channel UNet at batch 8, to check the
script end to end on a CPU. Prints one JSON object.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffbench.core.denoiser import SigmaDenoiser
from diffbench.models.diffusers import diffusers_model
from diffbench.util.devices import resolve_device, synchronize


def unet_folder(root: Path, small: bool) -> Path:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    if small:
        net = UNet2DModel(
            sample_size=32,
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
        )
    else:  # google/ddpm-cifar10-32's configuration
        net = UNet2DModel(
            sample_size=32,
            in_channels=3,
            out_channels=3,
            block_out_channels=(128, 256, 256, 256),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        )
    net.save_pretrained(root / "unet")
    DDPMScheduler().save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    return root


def main(device: str = "auto", small: bool = False, pairs: int = 20) -> dict:
    dev = resolve_device(device)
    batch = 8 if small else 128
    with tempfile.TemporaryDirectory() as tmp:
        model = diffusers_model(path=str(unet_folder(Path(tmp), small))).to(dev)
    unet = model.network.denoiser
    den = SigmaDenoiser(model)
    sigma = 1.0
    den.prepare([sigma])
    t_net, c = den._time(sigma)
    x = torch.randn(batch, *model.shape, generator=torch.Generator().manual_seed(0)).to(dev)
    x_t, t_in = x * c.alpha, torch.full((batch,), t_net, device=dev)

    def timed(fn) -> float:
        synchronize(dev)
        t0 = time.perf_counter()
        fn()
        synchronize(dev)
        return time.perf_counter() - t0

    def bare():
        return unet(x_t, t_in).sample  # the call a diffusers user writes

    def wrapped():
        return den(x, sigma)

    with torch.inference_mode():
        for _ in range(3):
            bare(), wrapped()
        ratios, bare_s, wrapped_s = [], [], []
        for i in range(pairs):  # interleaved, alternating order
            b, w = (timed(bare), timed(wrapped)) if i % 2 else (timed(wrapped), timed(bare))[::-1]
            bare_s.append(b)
            wrapped_s.append(w)
            ratios.append(w / b)
    return {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "parameters": sum(p.numel() for p in unet.parameters()),
        "batch": batch,
        "pairs": pairs,
        "bare_ms": 1e3 * statistics.median(bare_s),
        "wrapped_ms": 1e3 * statistics.median(wrapped_s),
        "overhead": statistics.median(ratios) - 1.0,
    }


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--small"]
    print(json.dumps(main(*(args[:1] or ["auto"]), small="--small" in sys.argv[1:])))
