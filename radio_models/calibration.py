"""Fitting the log-distance model to sightings with known positions, with uncertainty.

Model (Rappaport eq. 4.68 with a per-receiver bias):

    RSSI_ij = P0 + b_j - 10 n log10(d_ij) + e_ij,    sum_j b_j = 0,   e ~ N(0, sigma^2)

P0 (RSSI at 1 m), n and the offsets b_j enter linearly, so one least-squares solve gives
them; the constraint sum b_j = 0 separates the common P0 from the receivers' biases.
Residuals of nearby points share the same shadowing (Gudmundson), so the textbook
standard errors are far too small. Two remedies, named in ``Calibration.method``:
- "parametric-bootstrap" (when a decorrelation distance is given): split the residual
  variance into a spatially correlated part (the correlation of residual pairs closer
  than 0.3 m) and white noise, redraw both at the same points with Gudmundson fields,
  refit, and take the spread of the refits. Checked to give z-scores of unit spread.
- "cluster-robust": the sandwich estimator with points grouped in square cells. Cheaper,
  but with exponential correlation neighbouring cells still correlate and it
  underestimates the error two- to threefold (tests/test_radio_calibration.py).
Unheard links are missing, not weak: near sensitivity only the lucky samples remain, so
a fit on censored data underestimates n; fit where links are well above sensitivity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from radio_models.environment import ReportModel
from radio_models.pathloss import three_d_distance

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Calibration:
    """A fitted log-distance model and its 1-sigma uncertainties."""

    p0_dbm: float
    exponent: float
    sigma_db: float
    gateway_offset_db: FloatArray
    p0_se: float
    exponent_se: float
    sigma_se: float
    gateway_offset_se: FloatArray
    n_samples: int
    n_clusters: int
    residuals_db: FloatArray
    method: str = "cluster-robust"
    correlated_fraction: float = float("nan")

    def as_dict(self) -> dict[str, object]:
        return {
            "p0_dbm": round(self.p0_dbm, 2),
            "p0_se": round(self.p0_se, 2),
            "exponent": round(self.exponent, 3),
            "exponent_se": round(self.exponent_se, 3),
            "sigma_db": round(self.sigma_db, 2),
            "sigma_se": round(self.sigma_se, 2),
            "gateway_offset_db": [round(float(v), 2) for v in self.gateway_offset_db],
            "gateway_offset_se": [round(float(v), 2) for v in self.gateway_offset_se],
            "n_samples": self.n_samples,
            "n_clusters": self.n_clusters,
            "uncertainty": self.method,
            "correlated_fraction": round(self.correlated_fraction, 3),
        }


def fit_log_distance(
    points_xyz: FloatArray,
    gateway_xyz: FloatArray,
    rssi_dbm: FloatArray,
    *,
    cluster_m: float = 1.0,
    per_gateway_offsets: bool = True,
    decorrelation_m: float | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> Calibration:
    """Fit P0, n, sigma and per-gateway offsets from an RSSI matrix (points, gateways)
    with NaN where a gateway did not hear the point.

    ``cluster_m``: side of the square cells that group points for the cluster-robust
    standard errors (0: treat every sample as independent). ``decorrelation_m``: use the
    parametric bootstrap (``n_boot`` refits, seeded by ``seed``) instead.
    """
    points_xyz = np.atleast_2d(np.asarray(points_xyz, dtype=float))
    gateway_xyz = np.atleast_2d(np.asarray(gateway_xyz, dtype=float))
    rssi = np.asarray(rssi_dbm, dtype=float)
    if rssi.shape != (len(points_xyz), len(gateway_xyz)):
        raise ValueError(
            f"rssi must be (points, gateways) = {(len(points_xyz), len(gateway_xyz))}, "
            f"got {rssi.shape}"
        )
    pi, gi = np.nonzero(np.isfinite(rssi))
    m = len(gateway_xyz)
    n_params = 2 + (m - 1 if per_gateway_offsets else 0)
    if len(pi) <= n_params + 1:
        raise ValueError(f"need more than {n_params + 1} finite RSSI samples, got {len(pi)}")
    y = rssi[pi, gi]
    logd = np.log10(three_d_distance(points_xyz, gateway_xyz)[pi, gi])
    x = _design(logd, gi, m, per_gateway_offsets)
    beta, resid, sigma, xtx_inv = _solve(x, y, n_params)
    dof = len(y) - n_params
    fraction = float("nan")
    if decorrelation_m is not None:
        fraction = _correlated_fraction(points_xyz[pi, :2], gi, resid)
        betas, sigmas = _parametric_bootstrap(
            points_xyz[pi, :2],
            gi,
            x,
            beta,
            sigma=sigma,
            fraction=fraction,
            decorrelation_m=decorrelation_m,
            n_boot=n_boot,
            seed=seed,
        )
        cov = np.cov(betas, rowvar=False)
        n_clusters = n_boot
        method = "parametric-bootstrap"
    elif cluster_m > 0:
        cell = np.floor(points_xyz[pi, :2] / cluster_m).astype(np.int64)
        _, cluster = np.unique(cell, axis=0, return_inverse=True)
        cluster = cluster.ravel()
        n_clusters = int(cluster.max()) + 1
        score = np.zeros((n_clusters, x.shape[1]))
        np.add.at(score, cluster, x * resid[:, None])
        meat = score.T @ score * (n_clusters / max(n_clusters - 1, 1))
        cov = xtx_inv @ meat @ xtx_inv
        method = "cluster-robust"
    else:
        n_clusters = len(y)
        cov = sigma**2 * xtx_inv
        method = "independent"
    se = np.sqrt(np.diag(cov))
    offsets = np.zeros(m)
    offsets_se = np.zeros(m)
    if per_gateway_offsets:
        offsets[:-1] = beta[2:]
        offsets[-1] = -beta[2:].sum()
        offsets_se[:-1] = se[2:]
        offsets_se[-1] = float(np.sqrt(np.sum(cov[2:, 2:])))
    if method == "parametric-bootstrap":
        sigma_se = float(np.std(sigmas, ddof=1))
    else:  # chi-square with the effective number of independent clusters
        sigma_se = sigma / np.sqrt(2 * max(min(n_clusters, dof), 1))
    return Calibration(
        p0_dbm=float(beta[0]),
        exponent=float(beta[1]),
        sigma_db=sigma,
        gateway_offset_db=offsets,
        p0_se=float(se[0]),
        exponent_se=float(se[1]),
        sigma_se=float(sigma_se),
        gateway_offset_se=offsets_se,
        n_samples=len(y),
        n_clusters=n_clusters,
        residuals_db=resid,
        method=method,
        correlated_fraction=fraction,
    )


def _design(
    logd: FloatArray, gi: NDArray[np.intp], m: int, per_gateway_offsets: bool
) -> FloatArray:
    cols = [np.ones_like(logd), -10.0 * logd]
    if per_gateway_offsets:
        # b_j for j < m-1 free, b_{m-1} = -sum: column j is [g == j] - [g == m-1].
        onehot = (gi[:, None] == np.arange(m - 1)[None, :]).astype(float)
        onehot -= (gi == m - 1)[:, None]
        cols += list(onehot.T)
    return np.column_stack(cols)


def _solve(
    x: FloatArray, y: FloatArray, n_params: int
) -> tuple[FloatArray, FloatArray, float, FloatArray]:
    xtx_inv = np.asarray(np.linalg.inv(x.T @ x), dtype=float)
    beta = xtx_inv @ (x.T @ y)
    resid = y - x @ beta
    sigma = float(np.sqrt(resid @ resid / (len(y) - n_params)))
    return beta, resid, sigma, xtx_inv


def _correlated_fraction(
    xy: FloatArray, gi: NDArray[np.intp], resid: FloatArray, radius_m: float = 0.3
) -> float:
    """Share of the residual variance that nearby points of the same gateway share: the
    correlation of residual pairs closer than ``radius_m`` (the variogram's sill minus
    nugget over sill, at a lag much shorter than any decorrelation distance)."""
    from scipy.spatial import cKDTree

    pairs = cKDTree(np.column_stack([xy, gi * 1e6])).query_pairs(radius_m, output_type="ndarray")
    if len(pairs) < 30:
        return 1.0
    a, b = resid[pairs[:, 0]], resid[pairs[:, 1]]
    return float(np.clip(np.mean(a * b) / np.mean(resid * resid), 0.0, 1.0))


def _parametric_bootstrap(
    sample_xy: FloatArray,
    gi: NDArray[np.intp],
    x: FloatArray,
    beta: FloatArray,
    *,
    sigma: float,
    fraction: float,
    decorrelation_m: float,
    n_boot: int,
    seed: int,
) -> tuple[FloatArray, FloatArray]:
    """Refit on samples redrawn from the fitted model: correlated fields per gateway with
    ``fraction`` of the variance, white noise with the rest."""
    from radio_models.environment import Grid
    from radio_models.shadowing import FieldSampler

    rng = np.random.default_rng(seed)
    lo, hi = sample_xy.min(axis=0), sample_xy.max(axis=0)
    grid = Grid.covering((lo[0], lo[1], hi[0] + 1e-6, hi[1] + 1e-6), max(decorrelation_m / 5, 0.05))
    cells = grid.cell_index(sample_xy)
    m = int(gi.max()) + 1
    mean = x @ beta
    sd_corr, sd_white = sigma * np.sqrt(fraction), sigma * np.sqrt(1 - fraction)
    sampler = FieldSampler((grid.ny, grid.nx), grid.cell_m, sd_corr, decorrelation_m)
    betas, sigmas = [], []
    for _ in range(n_boot):
        fields = sampler.sample(rng, m, both_parts=True).reshape(m, -1)
        y = mean + fields[gi, cells] + rng.normal(0.0, sd_white, len(mean))
        b, _, s, _ = _solve(x, y, x.shape[1])
        betas.append(b)
        sigmas.append(s)
    return np.array(betas), np.array(sigmas)


# -- the variance split: slow shadowing versus per-packet fading ---------------------------


@dataclass(frozen=True)
class VarianceSplit:
    """The residual variance of a fit split into a spatially correlated part (shadowing,
    correlation falling to 1/e at the decorrelation distance) and a white part (per
    packet: fading, reporting), from the residuals' correlogram; 1-sigma by spatial
    jackknife."""

    shadowing_sigma_db: float
    decorrelation_m: float
    white_sigma_db: float
    shadowing_se: float
    decorrelation_se: float
    white_se: float
    lags_m: FloatArray  # correlogram bin centres
    correlation: FloatArray  # empirical correlation of same-gateway residual pairs per bin
    temporal_sigma_db: float = 0.0  # what lasts seconds at one place (people, carrier)
    coherence_s: float = 0.0
    temporal_se: float = 0.0
    coherence_se: float = 0.0


def correlogram(
    xy: FloatArray,
    gi: NDArray[np.intp],
    resid: FloatArray,
    max_lag_m: float = 6.0,
    bin_m: float = 0.25,
    max_points: int = 800,
    seed: int = 0,
    t: FloatArray | None = None,
    min_dt_s: float = 0.0,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Correlation of residual pairs of one gateway against their distance: (bin centres,
    correlation, pair counts). At most ``max_points`` samples per gateway (seeded
    subsample) keep the pair count near a million. With times ``t``, only pairs at least
    ``min_dt_s`` apart count: what stays put, not what lasts a few seconds."""
    edges = np.arange(0.0, max_lag_m + bin_m, bin_m)
    var = float(np.mean(resid * resid))
    a, b = _near_pairs(xy, gi, max_lag_m, max_points, seed)
    if t is not None and min_dt_s > 0:
        apart = np.abs(t[a] - t[b]) >= min_dt_s
        a, b = a[apart], b[apart]
    h = np.hypot(*(xy[a] - xy[b]).T)
    k = np.minimum((h / bin_m).astype(np.intp), len(edges) - 2)
    num = np.bincount(k, weights=resid[a] * resid[b], minlength=len(edges) - 1).astype(float)
    cnt = np.bincount(k, minlength=len(edges) - 1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = num / cnt / var
    return 0.5 * (edges[:-1] + edges[1:]), corr, cnt


def _decorrelation(lags: FloatArray, corr: FloatArray, share: float) -> float:
    """The lag at which the correlation first falls to share / e (Gudmundson's
    definition of the decorrelation distance), linearly interpolated between bins."""
    target = share / np.e
    below = np.flatnonzero(np.isfinite(corr) & (corr <= target))
    if share <= 0 or len(below) == 0:
        return float(lags[-1]) if share > 0 else 0.0
    k = int(below[0])
    if k == 0:
        return float(lags[0])
    c0, c1 = corr[k - 1], corr[k]
    return float(lags[k - 1] + (lags[k] - lags[k - 1]) * (c0 - target) / max(c0 - c1, 1e-12))


def _near_pairs(
    xy: FloatArray, gi: NDArray[np.intp], near_m: float, max_points: int, seed: int
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Same-gateway sample pairs closer than ``near_m`` (seeded subsample per gateway)."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    out_a, out_b = [], []
    for g in np.unique(gi):
        idx = np.flatnonzero(gi == g)
        if len(idx) > max_points:
            idx = np.sort(rng.choice(idx, max_points, replace=False))
        pairs = cKDTree(xy[idx]).query_pairs(near_m, output_type="ndarray")
        out_a.append(idx[pairs[:, 0]])
        out_b.append(idx[pairs[:, 1]])
    if not out_a:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    return np.concatenate(out_a), np.concatenate(out_b)


def split_variance(
    xy: FloatArray,
    gi: NDArray[np.intp],
    resid: FloatArray,
    nugget_m: float = 0.1,
    blocks: int = 6,
    seed: int = 0,
    t: FloatArray | None = None,
    short_s: float = 1.0,
    revisit_s: float = 60.0,
) -> VarianceSplit:
    """Shadowing sigma and decorrelation distance, a temporal part with its coherence
    time, and the white (per-packet) sigma, from the residuals of a log-distance fit at
    sample positions ``xy`` of gateways ``gi`` taken at times ``t``.

    Samples closer than ``nugget_m`` share their shadowing but not their fading. Among
    such pairs, those revisiting a place at least ``revisit_s`` later correlate by the
    shadowing share of the variance (the variogram's sill minus nugget over sill); those
    under ``short_s`` apart also share what lasts seconds (people, the carrier's body and
    heading), which a radio map cannot learn; the rest is per packet. The decorrelation
    distance is where the revisit correlogram falls to 1/e of the shadowing share
    (Gudmundson, Electron. Lett. 27(23), 1991); the coherence time where the temporal
    excess does. On the Kolakowski walk: 0.74 within a second, 0.47 after a minute.
    Without times (or revisits) every near pair counts and there is no temporal part.
    Uncertainty: delete-one-block jackknife over ``blocks`` strips along the survey's
    longer axis.
    """
    xy = np.asarray(xy, dtype=float)
    resid = np.asarray(resid, dtype=float)
    times = np.zeros(len(resid)) if t is None else np.asarray(t, dtype=float)
    dt_edges = np.geomspace(short_s, revisit_s, 9)

    def one(sel: NDArray[np.bool_]) -> tuple[float, float, float, float, float, FloatArray, FloatArray]:
        idx = np.flatnonzero(sel)
        var = float(np.mean(resid[idx] ** 2))
        a, b = _near_pairs(xy[idx], gi[idx], nugget_m, 6000, seed)
        a, b = idx[a], idx[b]
        prod = resid[a] * resid[b] / var
        dt = np.abs(times[a] - times[b])
        long_pairs = dt >= revisit_s
        if t is None or long_pairs.sum() < 100:
            share = float(np.clip(np.mean(prod) if len(prod) else 0.0, 0.0, 1.0))
            short, coherence, ts = share, 0.0, None
        else:
            share = float(np.clip(np.mean(prod[long_pairs]), 0.0, 1.0))
            short_pairs = dt < short_s
            short = float(np.clip(np.mean(prod[short_pairs]) if short_pairs.any() else share, share, 1.0))
            mid = (dt >= short_s) & ~long_pairs
            k = np.clip(np.searchsorted(dt_edges, dt[mid], side="right") - 1, 0, len(dt_edges) - 2)
            num = np.bincount(k, weights=prod[mid], minlength=len(dt_edges) - 1)
            cnt = np.bincount(k, minlength=len(dt_edges) - 1)
            with np.errstate(invalid="ignore", divide="ignore"):
                excess = np.r_[short - share, num / cnt - share]
            centres = np.r_[short_s / 2, np.sqrt(dt_edges[:-1] * dt_edges[1:])]
            coherence = _decorrelation(centres, excess, short - share) if short > share else 0.0
            ts = times[idx]
        lags, corr, _ = correlogram(xy[idx], gi[idx], resid[idx], max_lag_m=8.0, bin_m=0.1, seed=seed,
                                    t=ts, min_dt_s=revisit_s)
        dc = _decorrelation(lags, corr, share)
        return (float(np.sqrt(share * var)), dc, float(np.sqrt((1 - short) * var)),
                float(np.sqrt((short - share) * var)), coherence, lags, corr)

    s_sig, s_dc, s_white, s_temp, s_coh, lags, corr = one(np.ones(len(resid), bool))
    axis = int(np.argmax(np.ptp(xy, axis=0))) if len(xy) else 0
    edges = np.quantile(xy[:, axis], np.linspace(0, 1, blocks + 1)) if len(xy) else np.zeros(blocks + 1)
    block = np.clip(np.searchsorted(edges, xy[:, axis], side="right") - 1, 0, blocks - 1)
    reps = np.array([one(block != b)[:5] for b in range(blocks)])
    with np.errstate(invalid="ignore"):
        se = np.sqrt((blocks - 1) / blocks * np.nansum((reps - np.nanmean(reps, axis=0)) ** 2, axis=0))
    se = np.nan_to_num(se, nan=0.0)
    return VarianceSplit(
        s_sig, s_dc, s_white, float(se[0]), float(se[1]), float(se[2]), lags, corr,
        s_temp, float(np.nan_to_num(s_coh)), float(se[3]), float(se[4]),
    )


def rician_k_for_spread(
    white_sigma_db: float, report: ReportModel, k_range_db: tuple[float, float] = (-10.0, 30.0)
) -> tuple[float, float, float]:
    """The Rician K (dB) whose reported per-packet spread (fading through the gateway's
    reporting: modules, averaging, quantization) equals ``white_sigma_db``; returns
    (K dB, mean of the reported fading in dB, its spread). The spread falls as K grows,
    so bisection; a spread beyond K's range clamps to its end."""

    def stats(k_db: float) -> tuple[float, float]:
        return report.fading_stats("rician", k_db, samples=50_000)

    lo, hi = k_range_db
    s_lo, s_hi = stats(lo)[1], stats(hi)[1]
    if white_sigma_db >= s_lo:
        k = lo
    elif white_sigma_db <= s_hi:
        k = hi
    else:
        for _ in range(24):
            mid = 0.5 * (lo + hi)
            if stats(mid)[1] > white_sigma_db:
                lo = mid
            else:
                hi = mid
        k = 0.5 * (lo + hi)
    mean, spread = stats(k)
    return float(k), mean, spread


def survey_map_settings(xy: FloatArray, cell_m: float = 0.2) -> tuple[float, float]:
    """Radio-map (bandwidth, reach) in metres from how densely a survey covers its area.
    The typical gap g is the median distance from a cell inside the survey's hull to
    the nearest survey point (0.38 a on a square grid of spacing a, whose widest gap is
    0.71 a): reach 2 g bridges the gaps (or the map falls into islands), bandwidth
    1.5 g averages a few neighbouring points (or it follows single noisy readings).
    Floors: 0.35 m reach, 0.5 m bandwidth, what a dense continuous walk needs
    (docs/localization.md)."""
    import shapely
    from scipy.spatial import cKDTree

    xy = np.unique(np.round(np.asarray(xy, dtype=float), 2), axis=0)
    if len(xy) < 3:
        return 0.5, 0.35
    hull = shapely.MultiPoint([tuple(p) for p in xy]).convex_hull
    minx, miny, maxx, maxy = hull.bounds
    gx, gy = np.meshgrid(np.arange(minx, maxx, cell_m) + cell_m / 2, np.arange(miny, maxy, cell_m) + cell_m / 2)
    cells = np.column_stack([gx.ravel(), gy.ravel()])
    if hull.area > 0:
        cells = cells[shapely.contains_xy(hull, cells[:, 0], cells[:, 1])]
    if len(cells) == 0:
        return 0.5, 0.35
    gap = float(np.median(cKDTree(xy).query(cells)[0]))
    return max(0.5, round(1.5 * gap, 2)), max(0.35, round(2.0 * gap, 2))


# -- a calibration walk's shadowing map: link means from censored readings, kriged ---------


def reported_sensitivity_dbm(sensitivity_dbm: FloatArray, quantization_db: float) -> FloatArray:
    """The lowest *reported* value a gateway passes: a reading is rounded to
    ``quantization_db`` steps before the sensitivity test, so a link is heard when its
    rounded value reaches sensitivity (the step above it, for a sensitivity between steps)."""
    sens = np.asarray(sensitivity_dbm, dtype=float)
    if quantization_db > 0:
        return np.asarray(np.ceil(sens / quantization_db - 1e-9) * quantization_db)
    return sens


def censored_link_means(
    rssi: FloatArray,
    channel: NDArray[np.intp],
    sensitivity_dbm: FloatArray,
    fading_quantiles_db: FloatArray,
    channel_offset_db: FloatArray,
    quantization_db: float = 1.0,
    miss_probability: float = 0.0,
    search_db: tuple[float, float] = (-140.0, 0.0),
) -> tuple[FloatArray, FloatArray]:
    """Maximum-likelihood mean RSSI (before fading and channel offset) of each link from
    its repeated readings, and the estimate's variance; NaN where nothing was heard.

    ``rssi`` is (links, readings) with NaN for a reading no gateway module heard,
    ``channel`` (links, readings) the advertising channel index 0-2 of each reading (any
    value where unheard: a miss does not say its channel), ``sensitivity_dbm`` (links,).
    A reading r is a quantized draw of mu + offset[ch] + F with F the fading in dB
    (``fading_quantiles_db``: its quantile function at evenly spaced probabilities, as
    radio_models.environment.PacketEffects tabulates it), so

        P(r) = (1 - p) [G(r + q/2 - mu - o_ch) - G(r - q/2 - mu - o_ch)],
        P(unheard) = p + (1 - p) mean_ch G(s - q/2 - mu - o_ch),

    G the fading's CDF, p the share of reports lost at any level. Unheard readings count
    as censored (below sensitivity), not as missing: near sensitivity only the lucky
    fades are heard, and the mean of the heard readings alone would be biased upward
    (the Tobit model, Tobin, Econometrica 26(1), 1958). Maximised on a 1 dB grid, then on
    0.05 dB around its best; the variance is the inverse of the log-likelihood's
    curvature there (observed Fisher information)."""
    rssi = np.atleast_2d(np.asarray(rssi, dtype=float))
    links, _ = rssi.shape
    heard = np.isfinite(rssi)
    table = np.sort(np.asarray(fading_quantiles_db, dtype=float))
    probs = (np.arange(len(table)) + 0.5) / len(table)
    offsets = np.asarray(channel_offset_db, dtype=float)
    half = 0.5 * max(quantization_db, 0.1)  # exact readings: a 0.1 dB bin stands in for the density
    p_miss = float(miss_probability)
    ch = np.where(heard, np.asarray(channel), 0)
    hi_edge = np.where(heard, rssi + half - offsets[ch], 0.0)
    lo_edge = np.where(heard, rssi - half - offsets[ch], 0.0)
    n_unheard = (~heard).sum(axis=1).astype(float)
    sens = reported_sensitivity_dbm(sensitivity_dbm, quantization_db) - half

    def cdf(y: FloatArray) -> FloatArray:
        return np.interp(y, table, probs, left=0.0, right=1.0)

    def loglik(idx: NDArray[np.intp], mu: FloatArray, shared: bool = False) -> FloatArray:
        """(links, candidates) log-likelihood of links ``idx`` at candidate means ``mu``;
        ``shared``: every link has the same candidates (``mu[0]``)."""
        if shared:
            # Readings take few values (whole dB steps less a channel's offset): the CDF at
            # each value minus each candidate, looked up, is the same bits as computing it
            # at every reading, and faster (a demo walk's fit: 1.0 s -> 0.7 s).
            c = mu[0][None, :]
            hi_vals, hi_at = np.unique(hi_edge[idx], return_inverse=True)
            lo_vals, lo_at = np.unique(lo_edge[idx], return_inverse=True)
            p_heard = (cdf(hi_vals[:, None] - c)[hi_at.reshape(len(idx), -1)]
                       - cdf(lo_vals[:, None] - c)[lo_at.reshape(len(idx), -1)])
        else:
            m = mu[:, None, :]
            p_heard = cdf(hi_edge[idx, :, None] - m) - cdf(lo_edge[idx, :, None] - m)
        p_heard = np.maximum((1.0 - p_miss) * p_heard, 1e-300)
        ll = np.where(heard[idx, :, None], np.log(p_heard), 0.0).sum(axis=1)
        below = np.mean([cdf(sens[idx, None] - o - mu) for o in offsets], axis=0)
        return ll + n_unheard[idx, None] * np.log(np.maximum(p_miss + (1.0 - p_miss) * below, 1e-300))

    mean = np.full(links, np.nan)
    var = np.full(links, np.nan)
    some = np.flatnonzero(heard.any(axis=1))
    coarse = np.arange(search_db[0], search_db[1] + 1.0, 1.0)
    fine = np.arange(-1.0, 1.0 + 1e-9, 0.05)
    step = 0.25
    for lo in range(0, len(some), 256):  # (links x readings x candidates) blocks stay small
        idx = some[lo : lo + 256]
        best = coarse[np.argmax(loglik(idx, np.broadcast_to(coarse, (len(idx), len(coarse))), shared=True), axis=1)]
        cand = best[:, None] + fine[None, :]
        mu = cand[np.arange(len(idx)), np.argmax(loglik(idx, cand), axis=1)]
        ll3 = loglik(idx, mu[:, None] + np.array([-step, 0.0, step])[None, :])
        curvature = (2.0 * ll3[:, 1] - ll3[:, 0] - ll3[:, 2]) / step**2
        mean[idx] = mu
        var[idx] = np.where(curvature > 1e-6, 1.0 / np.maximum(curvature, 1e-6), np.nan)
    return mean, var


def simple_kriging(
    points_xy: FloatArray,
    values: FloatArray,
    noise_var: FloatArray,
    targets_xy: FloatArray,
    sigma_db: float,
    decorrelation_m: float,
) -> FloatArray:
    """Simple kriging (zero prior mean) of noisy point values onto targets, with the
    exponential covariance C(h) = sigma^2 exp(-h / d_corr) of Gudmundson's shadowing
    (Electron. Lett. 27(23), 1991):

        f(x*) = k*^T (K + diag(noise_var))^-1 y,   K_ij = C(|x_i - x_j|), k*_i = C(|x* - x_i|),

    the Gaussian-process posterior mean (Rasmussen & Williams, Gaussian Processes for
    Machine Learning, MIT Press 2006, eq. 2.25, here with a per-point noise variance;
    Cressie, Statistics for Spatial Data, 1993, s. 3.4.5). It passes through noise-free
    points and falls back to 0, the prior mean, a few decorrelation distances from every
    point. Points with a non-finite value or variance are left out."""
    xy = np.asarray(points_xy, dtype=float)
    y = np.asarray(values, dtype=float)
    v = np.asarray(noise_var, dtype=float)
    targets = np.asarray(targets_xy, dtype=float)
    keep = np.isfinite(y) & np.isfinite(v) & (v >= 0)
    if sigma_db <= 0 or not keep.any():
        return np.zeros(len(targets))
    xy, y, v = xy[keep], y[keep], v[keep]
    scale = max(float(decorrelation_m), 1e-9)
    var = float(sigma_db) ** 2

    from scipy.linalg import cho_factor, cho_solve
    from scipy.spatial.distance import cdist
    from threadpoolctl import threadpool_limits

    def cov(a: FloatArray, b: FloatArray) -> FloatArray:
        return np.asarray(var * np.exp(-cdist(a, b) / scale))

    k = cov(xy, xy)
    k[np.diag_indices_from(k)] += v + 1e-9 * var  # jitter: exact points stay solvable
    # One BLAS thread: a system of a few hundred stops takes 0.07 s on one thread, but 2-3 s
    # when several BLAS threads contend for a shared, loaded machine's cores.
    with threadpool_limits(limits=1, user_api="blas"):
        alpha = cho_solve(cho_factor(k, lower=True), y)
        out = np.empty(len(targets))
        for lo in range(0, len(targets), 4096):  # (targets x points) blocks stay small
            out[lo : lo + 4096] = cov(targets[lo : lo + 4096], xy) @ alpha
    return out
