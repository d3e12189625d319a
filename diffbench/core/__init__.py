"""Layer 1: sigma-space maths with no knowledge of runs (schedules, grids, targets, denoiser, noise)."""
