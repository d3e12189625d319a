"""σ-space maths with no knowledge of runs: schedules, σ grids, targets, the denoiser, noise draws, batches."""
