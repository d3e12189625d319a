"""Linear multistep in σ (k-diffusion's sample_lms): Adams–Bashforth on a non-uniform grid."""
from __future__ import annotations

from diffbench.samplers._common import integrate_polynomial, lagrange_basis, sigmas_list, to_d


def lms_coefficients(sigmas: list[float], k: int, order: int) -> list[float]:
    """∫_{σ_k}^{σ_{k+1}} ℓ_j(σ) dσ for the Lagrange basis ℓ_j on σ_k, σ_{k-1}, ..., σ_{k-order+1} (j = 0 is newest).

    k-diffusion and diffusers integrate the same polynomials with scipy.integrate.quad; here the degree
    ≤ 3 polynomial is integrated exactly, which agrees with quad to rounding.
    """
    basis = lagrange_basis([sigmas[k - j] for j in range(order)])
    return [integrate_polynomial(coef, sigmas[k], sigmas[k + 1]) for coef in basis]


def lms(denoiser, x, sigmas, *, noise=None, order: int = 4):
    """Linear multistep method of order 1-4 on dx/dσ (Crowson's k-diffusion sample_lms; Karras et al. 2022 σ-ODE).

    Step k uses the derivatives available (order min(k + 1, order)). As k-diffusion's sample_lms and
    diffusers' LMSDiscreteScheduler, the step into σ = 0 integrates the Lagrange polynomial down to 0 too
    (it is x = D(x, σ) only where a single derivative is available).
    """
    if order not in (1, 2, 3, 4):
        raise ValueError(f"lms order must be 1, 2, 3 or 4, got {order!r}")
    s = sigmas_list(sigmas)  # one host transfer before the loop
    coefficients = [lms_coefficients(s, k, min(k + 1, order)) for k in range(len(s) - 1)]  # once per grid
    ds: list = []  # derivatives, newest first
    for k, (sigma, coef) in enumerate(zip(s, coefficients)):
        ds = [to_d(x, sigma, denoiser(x, sigma)), *ds][:order]
        for c, d in zip(coef, ds):
            x = x.add(d, alpha=c)
    return x
