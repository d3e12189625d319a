"""Linear multistep in σ (k-diffusion's sample_lms): Adams–Bashforth on a non-uniform grid."""
from __future__ import annotations

from diffbench.samplers._common import lagrange_integrals, sigmas_list, to_d


def lms_coefficients(sigmas: list[float], k: int, order: int) -> list[float]:
    """∫_{σ_k}^{σ_{k+1}} ℓ_j(σ) dσ for the Lagrange basis ℓ_j on σ_k, σ_{k-1}, ..., σ_{k-order+1} (j = 0 is newest).

    k-diffusion and diffusers integrate the same polynomials with scipy.integrate.quad; here the degree
    ≤ 3 polynomial is integrated exactly (numpy), which agrees with quad to rounding.
    """
    integral = lambda p: float(p.integ()(sigmas[k + 1]) - p.integ()(sigmas[k]))  # noqa: E731
    return lagrange_integrals([sigmas[k - j] for j in range(order)], integral)


def lms(denoiser, x, sigmas, *, noise=None, order: int = 4):
    """Linear multistep method of order 1-4 on dx/dσ (Crowson's k-diffusion sample_lms; Karras et al. 2022 σ-ODE).

    The first steps use the derivatives available (order k+1 at step k); the step into σ = 0 is the
    first-order limit x = D(x, σ), as for every diffbench multistep solver.
    """
    if order not in (1, 2, 3, 4):
        raise ValueError(f"lms order must be 1, 2, 3 or 4, got {order!r}")
    s = sigmas_list(sigmas)  # one host transfer before the loop
    ds: list = []  # derivatives, newest first
    for k, (sigma, sigma_next) in enumerate(zip(s, s[1:])):
        denoised = denoiser(x, sigma)
        if sigma_next == 0.0:
            x = denoised
            continue
        ds = [to_d(x, sigma, denoised), *ds][:order]
        for c, d in zip(lms_coefficients(s, k, len(ds)), ds):
            x = x + c * d
    return x
