"""How far batch size moves results, per shipped digits model and dtype (README "Reliability").

64 samples, euler, 10 Karras steps, seed 0; each batch size is compared with one batch of 64. The
noise and the sampler are per sample, so the only differences are the network's kernels rounding a
batch of 1 or 7 differently from a batch of 64 (tests/test_batch_independence.py asserts the bounds
and that a network evaluated row by row gives bit-identical results at every batch size).
Run: python scripts/batch_rounding.py
"""

from __future__ import annotations

import torch

from diffbench.registry import default_registry
from diffbench.run.sampling import sample

MODELS = ("digits-eps", "digits-v", "digits-flow")
BATCHES = (1, 7, 32)


def main() -> None:
    torch.set_num_threads(1)
    registry = default_registry()
    print("| model | dtype | " + " | ".join(f"batch {b}" for b in BATCHES) + " |")
    print("|---|---|" + "---|" * len(BATCHES))
    for name in MODELS:
        model = registry.get("model", name).obj()
        for dtype in ("float32", "float64"):

            def draw(batch: int) -> torch.Tensor:
                return sample(model, "euler", steps=10, num_samples=64, batch_size=batch, dtype=dtype).samples

            ref = draw(64)
            diffs = [float((draw(b) - ref).abs().max()) for b in BATCHES]
            print(f"| {name} | {dtype} | " + " | ".join(f"{d:.1e}" for d in diffs) + " |")


if __name__ == "__main__":
    main()
