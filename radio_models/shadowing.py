"""Spatially correlated log-normal shadowing as a static random field.

Gudmundson (Electronics Letters 27(23), 1991) measured that shadowing decorrelates
exponentially with distance: rho(dx) = exp(-|dx| / d_corr). TR 38.901 Table 7.5-6 gives
d_corr = 10 m (InH LoS), 6 m (InH NLoS), 10 m (InF LoS). The field is drawn once per
gateway and stays fixed in time: a tag standing still cannot average it away.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def correlated_gaussian_field(
    shape: tuple[int, int],
    cell_m: float,
    sigma_db: float,
    decorrelation_m: float,
    rng: np.random.Generator,
) -> FloatArray:
    """A zero-mean Gaussian field on a (ny, nx) grid with covariance sigma^2 exp(-r/d_corr).

    Circulant embedding (Dietrich & Newsam 1997): the covariance is laid on a torus at
    least twice the grid plus one correlation length, diagonalised by the FFT, and white
    noise is coloured by the square root of its spectrum. Small negative eigenvalues from
    the truncation are clipped to zero.
    """
    ny, nx = shape
    if sigma_db <= 0:
        return np.zeros(shape)
    if decorrelation_m <= 0:
        return rng.normal(0.0, sigma_db, size=shape)
    pad = int(np.ceil(3 * decorrelation_m / cell_m))
    my, mx = 2 * (ny + pad), 2 * (nx + pad)
    iy = np.minimum(np.arange(my), my - np.arange(my)) * cell_m
    ix = np.minimum(np.arange(mx), mx - np.arange(mx)) * cell_m
    r = np.hypot(iy[:, None], ix[None, :])
    cov = sigma_db**2 * np.exp(-r / decorrelation_m)
    spectrum = np.maximum(np.fft.fft2(cov).real, 0.0)
    noise = rng.normal(size=(my, mx)) + 1j * rng.normal(size=(my, mx))
    field = np.fft.ifft2(np.sqrt(spectrum) * noise) * np.sqrt(my * mx)
    # Real and imaginary parts are two independent fields; one is enough.
    return np.asarray(field.real[:ny, :nx], dtype=float)
