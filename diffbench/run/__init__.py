"""Layer 3: running a suite (schema, plan, preparation, sampling, cell, executors, run directories)."""
