"""FID's jackknife and bootstrap s.e. against the true spread on Gaussian features (known truth).

``python tests/benchmarks/fid_se_gaussian.py D N SHIFT REPEATS GROUPS``: REPEATS independent sets of N
samples from N(SHIFT·1, 0.2·AAᵀ + I) (A random, fixed) scored against the fixed reference N(0, I);
prints the true FID, the mean and s.d. of the estimates, the RMS jackknife s.e. (GROUPS groups) and
the RMS bootstrap s.e. (50 resamples, on the first 40 repeats).
"""
import sys

import numpy as np

from diffbench.metrics import frechet
from diffbench.metrics.fidelity import _fid_against

d, n, shift, repeats, groups = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(0)
a = rng.normal(size=(d, d)) / np.sqrt(d)
sigma_g, mu_g = 0.2 * a @ a.T + np.eye(d), np.full(d, shift)
ref = frechet.ReferenceRoot.of({"mu": np.zeros(d), "sigma": np.eye(d)})
true = frechet.fid_of(mu_g, sigma_g, ref)
chol = np.linalg.cholesky(sigma_g)
fid = _fid_against(ref)
values, jk, boot = [], [], []
for r in range(repeats):
    x = mu_g + rng.normal(size=(n, d)) @ chol.T
    v, se = frechet.fid_with_jackknife(frechet.GroupMoments.of_rows(x, groups), ref)
    values.append(v)
    jk.append(se)
    if r < 40:
        boot.append(np.std([fid(x[rng.integers(0, n, n)]) for _ in range(50)], ddof=1))
print(f"D={d} N={n} true FID {true:.3f}, mean {np.mean(values):.3f}, s.d. {np.std(values, ddof=1):.4f}; "
      f"RMS s.e. jackknife {np.sqrt(np.mean(np.square(jk))):.4f}, bootstrap {np.sqrt(np.mean(np.square(boot))):.4f}")
