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


class TemporalVariation:
    """The slow, time-correlated part of a link's RSSI (people walking by, the carrier's
    body, doors): per (gateway, tag) link a stationary Gauss-Markov process, the
    Ornstein-Uhlenbeck process sampled exactly at the packets' times,

        x(t + dt) = rho x(t) + sqrt(1 - rho^2) sigma w,   rho = exp(-dt / coherence_s),

    so x has variance sigma^2 and correlation exp(-|dt| / coherence_s): Gudmundson's
    exponential decorrelation (1991) in time instead of distance. ``tagtwin calibrate``
    fits sigma and the coherence time from readings repeated at one place.

    State is one float per link; a tag's first packet draws its links from the
    stationary distribution. ``offsets`` takes the events of a tick in time order and
    returns (gateways, events) offsets in dB.
    """

    def __init__(self, sigma_db: float, coherence_s: float, n_gateways: int, rng: np.random.Generator) -> None:
        if sigma_db < 0 or coherence_s <= 0:
            raise ValueError(f"temporal variation needs sigma >= 0 and coherence > 0, got {sigma_db}, {coherence_s}")
        self.sigma_db = float(sigma_db)
        self.coherence_s = float(coherence_s)
        self.rng = rng
        self.state = np.zeros((n_gateways, 0))
        self.last_t = np.zeros(0)

    def _grow(self, n_tags: int) -> None:
        have = len(self.last_t)
        if n_tags > have:
            self.state = np.hstack([self.state, np.zeros((self.state.shape[0], n_tags - have))])
            self.last_t = np.r_[self.last_t, np.full(n_tags - have, np.nan)]

    def offsets(self, tags: NDArray[np.integer], t: FloatArray) -> FloatArray:
        """Offsets (gateways, events) of events ``tags`` at times ``t`` (sorted). A tag
        with several events in one call is advanced once per event, in order: the loop
        runs over the largest number of events one tag has, not over events."""
        tags = np.asarray(tags, dtype=np.int64)
        t = np.asarray(t, dtype=float)
        out = np.empty((self.state.shape[0], len(tags)))
        if len(tags) == 0:
            return out
        self._grow(int(tags.max()) + 1)
        order = np.argsort(tags, kind="stable")  # events of one tag together, in time order
        st = tags[order]
        first = np.r_[True, st[1:] != st[:-1]]
        start = np.maximum.accumulate(np.where(first, np.arange(len(st)), 0))
        rank = np.empty(len(tags), np.int64)
        rank[order] = np.arange(len(st)) - start
        for k in range(int(rank.max()) + 1):
            ev = np.flatnonzero(rank == k)
            tg = tags[ev]
            dt = t[ev] - self.last_t[tg]
            fresh = ~np.isfinite(dt)
            rho = np.where(fresh, 0.0, np.exp(-np.maximum(np.nan_to_num(dt), 0.0) / self.coherence_s))
            noise = self.rng.standard_normal((self.state.shape[0], len(ev)))
            new = rho * self.state[:, tg] + np.sqrt(1.0 - rho**2) * self.sigma_db * noise
            self.state[:, tg] = new
            self.last_t[tg] = t[ev]
            out[:, ev] = new
        return out
