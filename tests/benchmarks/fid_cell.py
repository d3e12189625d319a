"""One Inception-FID cell at scale, in its own process: time and peak memory (the issue-11 GPU check).

``python tests/benchmarks/fid_cell.py N OUT [DEVICE]`` samples N images from streaming_cell.py's randomly
initialised 3×64×64 conv denoiser (Euler, 10 Karras steps, batch 500) on DEVICE (default ``auto``: CUDA when
present) and scores them with FID on ``inception-v3-compat`` features: torch-fidelity's architecture
with random weights (tests/metrics/inception.py; the real weights cost the same), against ``npz-stats``
of the same dimension, its default s.e. (jackknife) included. It prints one JSON line: wall, sampling and metric
seconds, peak RSS and peak CUDA memory (MiB). Memory flat in N: compare N = 5000 with N = 50000.
Meant for a GPU: on the 2-core CPU, N = 200 took 100 s (metrics 49 s a scoring, once in the warm-up
and once in the cell; sampling 0.1 s).
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "metrics"))
from inception import save_random_inception  # noqa: E402
from streaming_cell import Plugin  # noqa: E402  (the tiny 3×64×64 model)

from diffbench.registry import build_registry  # noqa: E402
from diffbench.results import RunDir  # noqa: E402
from diffbench.runner import run_suite  # noqa: E402
from diffbench.suite import parse_suite  # noqa: E402


def main(n: int, out: str, device: str = "auto") -> None:
    work = Path(out)
    work.mkdir(parents=True, exist_ok=True)
    weights = save_random_inception(work / "inception-random.safetensors")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2048, 2048)) / 64
    np.savez(work / "stats.npz", mu=rng.standard_normal(2048) * 0.1, sigma=a @ a.T + 0.01 * np.eye(2048))
    registry = build_registry(extra_plugins=[Plugin()], autoload=False)
    suite = {"name": "fid-at-scale", "model": "tiny-rgb64", "num_samples": n, "batch_size": 500, "device": device,
             "reference": {"name": "npz-stats", "options": {"path": str(work / "stats.npz")}},
             "metrics": [{"name": "fid", "options": {"extractor": "inception-v3-compat", "weights_path": str(weights)}}],
             "grid": {"sampler": ["euler"], "steps": [10]}}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = run_suite(parse_suite(suite, registry), work / "run", registry=registry, progress=False,
                       cache_dir=work / "cache", draw=False, allow_large=True)
    wall = time.perf_counter() - t0
    cell = RunDir(result.path).read_cells()[0]
    print(json.dumps({
        "num_samples": n, "status": cell["status"], "error": cell.get("error"), "device": cell.get("device"),
        "wall_seconds": round(wall, 2), "sample_seconds": round(cell["sample_seconds"], 2),
        "metric_seconds": round(cell.get("metric_seconds") or 0.0, 2), "fid": cell.get("metrics", {}).get("fid"),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None}))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], *(sys.argv[3:4]))
