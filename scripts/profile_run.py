"""Where a run's time goes: cProfile of one run of a suite (the README's scoring-cost breakdown).

Run: python scripts/profile_run.py suites/steps.yaml  (prints diffbench's own functions by cumulative time;
the run goes to a temporary folder, with the default reference cache).
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import tempfile

from diffbench.api import run_suite

profile = cProfile.Profile()
with tempfile.TemporaryDirectory() as out:
    profile.enable()
    run_suite(sys.argv[1], f"{out}/run", progress=False)
    profile.disable()
pstats.Stats(profile).sort_stats("cumulative").print_stats(r"diffbench/|torch_fidelity/__init__", 60)
