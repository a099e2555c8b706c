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
    if sigma_db <= 0:
        return np.zeros(shape)
    if decorrelation_m <= 0:
        return rng.normal(0.0, sigma_db, size=shape)
    return FieldSampler(shape, cell_m, sigma_db, decorrelation_m).sample(rng, 1)[0]


class FieldSampler:
    """Many fields with the same covariance: the spectrum is computed once, and each
    complex FFT yields two independent fields (its real and imaginary parts)."""

    def __init__(
        self, shape: tuple[int, int], cell_m: float, sigma_db: float, decorrelation_m: float
    ) -> None:
        ny, nx = shape
        self.shape = shape
        pad = int(np.ceil(3 * decorrelation_m / cell_m))
        my, mx = 2 * (ny + pad), 2 * (nx + pad)
        iy = np.minimum(np.arange(my), my - np.arange(my)) * cell_m
        ix = np.minimum(np.arange(mx), mx - np.arange(mx)) * cell_m
        r = np.hypot(iy[:, None], ix[None, :])
        cov = sigma_db**2 * np.exp(-r / max(decorrelation_m, 1e-9))
        self._root = np.sqrt(np.maximum(np.fft.fft2(cov).real, 0.0)) * np.sqrt(my * mx)
        self._m = (my, mx)

    def sample(self, rng: np.random.Generator, count: int, both_parts: bool = False) -> FloatArray:
        """``count`` fields (count, ny, nx). ``both_parts`` uses real and imaginary parts
        of each transform (half the FFTs); the default keeps the real part only, the
        twin's historical draw order."""
        ny, nx = self.shape
        out = np.empty((count, ny, nx))
        k = 0
        while k < count:
            noise = rng.normal(size=self._m) + 1j * rng.normal(size=self._m)
            field = np.fft.ifft2(self._root * noise)
            out[k] = field.real[:ny, :nx]
            k += 1
            if both_parts and k < count:
                out[k] = field.imag[:ny, :nx]
                k += 1
        return out
