"""Where a resting tag is, from everything the gateways heard of it since it came to rest.

A tracked fix is made from one window's few readings, each with the fading's spread of
several dB; a tag resting 0.5-1 m outside a wall can sit 2-3 m on the wrong side for
minutes (docs/rules.md, misplaced). Once it rests, every advert it sends is another draw
from the same links, so the rule can ask the question directly: which cells of the
localizer's radio map explain the *mean* of each link over the whole rest? Per (tag,
gateway) the rule engine keeps two running sums of the readings since the tag's last
motion (heard count and sum of RSSI less the channel's offset); from them
each link's mean RSSI is estimated with the censoring of the adverts it did not hear (a
weak link is heard only on lucky fades: the mean of the heard readings alone is biased
upward; Tobin, Econometrica 26(1), 1958), and the cells' posterior gives P(forbidden
zone). Sans-IO, arrays only; the map comes from the engine's own configuration
(twin.run.rest_map_for), never from the twin's truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from radio_models.calibration import reported_sensitivity_dbm

FloatArray = NDArray[np.float64]

MU_GRID_DB = np.arange(-130.0, 0.0 + 1e-9, 0.25)  # candidate link means, dBm
_MIN_P = 1e-12


@dataclass(frozen=True)
class RestMap:
    """The localizer's radio map as the misplaced rule reads it, plus the receiver model
    that turns a link's mean into what gateways report (its fading, channel offsets,
    sensitivity, reporting step)."""

    cell_xy: FloatArray  # (cells, 2) centres of the free cells
    mean_dbm: NDArray[np.float32]  # (cells, gateways) predicted mean RSSI at tx_ref_dbm
    tx_ref_dbm: float
    device_tx_dbm: FloatArray  # (registered devices,) each tag's power at 1 m; NaN: tx_ref
    sensitivity_dbm: FloatArray  # (gateways,)
    fading_quantiles_db: FloatArray  # the fading's quantile function at even probabilities
    channel_offset_db: FloatArray  # (3,) per advertising channel 37, 38, 39
    quantization_db: float = 1.0
    miss_probability: float = 0.02  # reports lost at any level (collisions, scan gaps)
    map_sigma_db: float = 2.0  # how far the map's mean may be from the site's, per link
    _tail: tuple[FloatArray, FloatArray, FloatArray, FloatArray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mean_dbm.shape != (len(self.cell_xy), len(self.sensitivity_dbm)):
            raise ValueError("mean_dbm must be (cells, gateways)")
        table = np.sort(np.asarray(self.fading_quantiles_db, dtype=float))
        # Tail moments of the fading's (equally likely) table values: P(F >= u),
        # E[F | F >= u], E[F^2 | F >= u] at every u = table[k] (suffix sums).
        k = len(table)
        suffix1 = np.cumsum(table[::-1])[::-1]
        suffix2 = np.cumsum((table**2)[::-1])[::-1]
        count = np.arange(k, 0, -1, dtype=float)
        object.__setattr__(self, "_tail", (table, count / k, suffix1 / count, suffix2 / count))

    def _tail_moments(self, u: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """P(F >= u), E[F | F >= u], E[F^2 | F >= u] for thresholds ``u`` (any shape)."""
        table, share, m1, m2 = self._tail
        i = np.searchsorted(table, u, side="left")
        none = i >= len(table)
        j = np.minimum(i, len(table) - 1)
        p = np.where(none, 0.0, share[j])
        return p, np.where(none, table[-1], m1[j]), np.where(none, table[-1] ** 2, m2[j])

    def link_means(
        self, n_heard: FloatArray, total: FloatArray, n_sent: FloatArray,
        gateway: NDArray[np.intp],
    ) -> tuple[FloatArray, FloatArray]:
        """Maximum-likelihood mean RSSI of links (before fading and channel offset) and its
        variance, from sufficient statistics: ``n_heard`` readings of ``n_sent`` adverts
        heard and their sum (RSSI less the channel's offset). The heard
        count is binomial in P(heard | mu); the heard readings' mean is approximately
        normal around mu + E[F | heard] with variance Var[F | heard] / n (central limit;
        the fading truncated at sensitivity, mixed over the three channels). NaN where
        nothing was heard: such a link says only "weak", which the map's other links
        already place."""
        n = np.asarray(n_heard, dtype=float)
        sent = np.maximum(np.asarray(n_sent, dtype=float), n)
        mean = np.full(len(n), np.nan)
        var = np.full(len(n), np.nan)
        some = n > 0
        if not some.any():
            return mean, var
        n, sent = n[some], sent[some]
        r_bar = np.asarray(total, dtype=float)[some] / n
        q = float(self.quantization_db)
        # heard when the reported (rounded) value reaches sensitivity: the unrounded edge
        sens = reported_sensitivity_dbm(self.sensitivity_dbm[np.asarray(gateway)[some]], q) - 0.5 * q
        mu = MU_GRID_DB[None, :]
        p_h = np.zeros((len(n), len(MU_GRID_DB)))
        e1 = np.zeros_like(p_h)
        e2 = np.zeros_like(p_h)
        for offset in np.asarray(self.channel_offset_db, dtype=float):
            p, m1, m2 = self._tail_moments(sens[:, None] - offset - mu)
            p_h += p
            e1 += p * m1
            e2 += p * m2
        e1 = e1 / np.maximum(p_h, _MIN_P)
        v1 = np.maximum(e2 / np.maximum(p_h, _MIN_P) - e1**2, 0.25) + q * q / 12.0
        p_h = (1.0 - self.miss_probability) * p_h / len(self.channel_offset_db)
        ll = (n[:, None] * np.log(np.maximum(p_h, _MIN_P))
              + (sent - n)[:, None] * np.log(np.maximum(1.0 - p_h, _MIN_P))
              - n[:, None] * (r_bar[:, None] - mu - e1) ** 2 / (2.0 * v1))
        best = np.clip(np.argmax(ll, axis=1), 1, len(MU_GRID_DB) - 2)
        rows = np.arange(len(n))
        step = MU_GRID_DB[1] - MU_GRID_DB[0]
        curvature = (2.0 * ll[rows, best] - ll[rows, best - 1] - ll[rows, best + 1]) / step**2
        mean[some] = MU_GRID_DB[best]
        var[some] = 1.0 / np.maximum(curvature, 1e-3)
        return mean, var

    def cell_posterior(self, link_mean: FloatArray, link_var: FloatArray, device: int) -> FloatArray:
        """P(cell) for one tag given its links' estimated means (gateways,), NaN for links
        not heard: a Gaussian likelihood per link with the estimate's variance plus the
        map's own error, flat prior over the free cells."""
        ok = np.isfinite(link_mean) & np.isfinite(link_var)
        if not ok.any():
            return np.full(len(self.cell_xy), 1.0 / len(self.cell_xy))
        tx = self.device_tx_dbm[device] if device < len(self.device_tx_dbm) else np.nan
        shift = (float(tx) - self.tx_ref_dbm) if np.isfinite(tx) else 0.0
        pred = self.mean_dbm[:, ok].astype(float) + shift
        ll = -0.5 * (((link_mean[ok] - pred) ** 2) / (link_var[ok] + self.map_sigma_db**2)).sum(axis=1)
        w = np.exp(ll - ll.max())
        return np.asarray(w / w.sum())
