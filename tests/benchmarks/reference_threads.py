"""Does a float32-network trajectory reference gain from the sampling's torch threads? An in-run A/B.

Run: python tests/benchmarks/reference_threads.py [one two one two ...]
Each argument runs ``mnist_like_costs`` (steps.yaml's grid on the random 28×28 UNet, 8 samples, trajectory-error
with ``network_dtype: float32`` at 3e-6) once, its reference solved on one torch thread (``one``, as
trajectory-error solves it) or on the threads the batch's features are extracted on (``two`` on this 2-core
machine: ``devices.one_thread`` replaced by a no-op around the solve), and prints the reference's and the cells'
seconds and seconds per network call of 8 rows. Alternate the modes: this machine's speed drifts between runs.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_measurement_cost import mnist_like_costs  # noqa: E402

from diffbench.metrics import trajectory  # noqa: E402


def main(modes: list[str]) -> None:
    single = trajectory.one_thread
    for mode in modes:
        trajectory.one_thread = single if mode == "one" else contextlib.nullcontext
        with tempfile.TemporaryDirectory() as tmp:
            c = mnist_like_costs(Path(tmp), network_dtype="float32")
        calls, cell_calls = c["reference_nfe"] / c["samples"], c["cell_nfe"] / c["samples"]
        print(
            f"{mode}: reference {c['reference_seconds']:.1f} s ({1e3 * c['reference_seconds'] / calls:.1f} ms a call), "
            f"cells {c['sampling_seconds']:.1f} s ({1e3 * c['sampling_seconds'] / cell_calls:.1f} ms a call), "
            f"reference / sampling {c['seconds_ratio']:.2f}",
            flush=True,
        )
    trajectory.one_thread = single


if __name__ == "__main__":
    main(sys.argv[1:] or ["one", "two", "one", "two"])
