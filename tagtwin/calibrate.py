"""``tagtwin calibrate``: a walk (or point survey) with truth into a site file's radio section.

The physics of each step lives in radio_models/calibration.py; this module reads the
capture, runs the steps in order and writes the site file and a diagnostics figure:

1. log-distance fit of every heard sighting with per-gateway offsets, P0 and n with
   parametric-bootstrap uncertainties (the residuals are spatially correlated);
2. the residual variance split into slow shadowing (with its decorrelation distance)
   and per-packet spread, from the residuals' correlogram;
3. how gateways report (modules averaged, quantization), read off the RSSI values
   themselves, and the Rician K that makes fading through that reporting as spread as
   the per-packet part (any excess becomes per-channel offsets, shaped as measured on
   BLE hardware: -3/-1/+4 dB, docs/references.md section 1);
4. P0 corrected for the fading mean (a twin adds fading on top of its mean RSSI);
5. reception: each gateway's sensitivity (lowest level heard) and the share of
   packets missed far above it;
6. radio-map bandwidth and reach from the survey's point spacing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from rich.table import Table

from engine.capture import Capture
from radio_models.calibration import (
    Calibration,
    VarianceSplit,
    fit_log_distance,
    rician_k_for_spread,
    split_variance,
    survey_map_settings,
)
from radio_models.environment import ReportModel
from siteplan.radio import GatewayReport, Radio, RadioMapSettings, RadioUncertainty
from siteplan.schema import Gateway, Gateways, Site
from siteplan.sitefile import SiteFile

FloatArray = NDArray[np.float64]

# Measured per-channel mean offsets on BLE hardware, ch 37/38/39 (docs/references.md s. 1).
CHANNEL_OFFSET_SHAPE_DB = np.array([-3.0, -1.0, 4.0])
# A gateway whose offset or residual spread is this far out is flagged for a look.
OUTLIER_OFFSET_DB = 6.0
OUTLIER_SPREAD_RATIO = 1.5
# Links predicted this far above sensitivity should always be heard: misses there are
# scan gaps and errors, not path loss.
MISS_MARGIN_DB = 12.0


@dataclass(frozen=True)
class CalibrationResult:
    """What ``tagtwin calibrate`` found, for the table, the figure and the site file."""

    site: SiteFile
    fit: Calibration
    split: VarianceSplit
    report: ReportModel
    fading_mean_db: float
    fading_spread_db: float
    rician_k_db: float
    k_se_db: float
    channel_spread_db: float
    sensitivity_dbm: FloatArray
    reception: FloatArray  # share of instants each gateway was heard
    bandwidth_m: float
    reach_m: float
    gateway_ids: tuple[str, ...]
    sample_gateway: NDArray[np.intp]
    sample_distance_m: FloatArray
    outliers: list[str] = field(default_factory=list)

    def table(self, name: str) -> Table:
        """The printed table: parameter, value, 1-sigma."""
        table = Table(title=f"calibration from {name}")
        for col in ("parameter", "value", "1-sigma"):
            table.add_column(col)
        for row in self.rows():
            table.add_row(*row)
        return table

    def rows(self) -> list[tuple[str, str, str]]:
        """(parameter, value, 1-sigma) rows of the printed table."""
        f, s = self.fit, self.split
        radio = self.site.radio
        p0 = radio.p0_dbm if radio.p0_dbm is not None else float("nan")
        rows = [
            ("P0 reported at 1 m (dBm)", f"{f.p0_dbm:.2f}", f"{f.p0_se:.2f}"),
            ("P0 before fading (dBm)", f"{p0:.2f}", f"{f.p0_se:.2f}"),
            ("path-loss exponent n", f"{f.exponent:.3f}", f"{f.exponent_se:.3f}"),
            ("residual sigma, total (dB)", f"{f.sigma_db:.2f}", f"{f.sigma_se:.2f}"),
            ("shadowing sigma (dB)", f"{s.shadowing_sigma_db:.2f}", f"{s.shadowing_se:.2f}"),
            ("decorrelation distance (m)", f"{s.decorrelation_m:.2f}", f"{s.decorrelation_se:.2f}"),
            ("temporal sigma (dB), lasting seconds", f"{s.temporal_sigma_db:.2f}", f"{s.temporal_se:.2f}"),
            ("temporal coherence time (s)", f"{s.coherence_s:.2f}", f"{s.coherence_se:.2f}"),
            ("per-packet sigma (dB)", f"{s.white_sigma_db:.2f}", f"{s.white_se:.2f}"),
            (
                f"fading {radio.fading}" + (", Rician K (dB)" if radio.fading == "rician" else ""),
                f"{self.rician_k_db:.1f}" if radio.fading == "rician" else "-",
                f"{self.k_se_db:.1f}" if radio.fading == "rician" else "",
            ),
            ("fading mean as reported (dB)", f"{self.fading_mean_db:.2f}", ""),
            ("per-channel offsets 37/38/39 (dB)", "/".join(f"{v:+.1f}" for v in radio.channel_offset_db), ""),
            (
                "gateway reports",
                f"{self.report.receivers} module(s), {self.report.combine}, "
                f"{self.report.quantization_db:g} dB steps, miss {self.report.miss_probability:.3f}",
                "",
            ),
            ("radio map bandwidth / reach (m)", f"{self.bandwidth_m:.2f} / {self.reach_m:.2f}", ""),
            ("samples / bootstrap refits", f"{f.n_samples} / {f.n_clusters}", ""),
        ]
        for i, gid in enumerate(self.gateway_ids):
            flag = "  OUTLIER" if gid in self.outliers else ""
            rows.append((
                f"gateway {gid}: offset (dB), sensitivity, heard",
                f"{f.gateway_offset_db[i]:+.2f}, {self.sensitivity_dbm[i]:.0f} dBm, "
                f"{self.reception[i]:.0%}{flag}",
                f"{f.gateway_offset_se[i]:.2f}",
            ))
        return rows


def detect_report(rssi: FloatArray) -> tuple[int, str, float]:
    """(modules, combine, quantization) from the values a gateway reported: whole dBm is
    one module; halves are a dB mean of two; anything else a mean of two in mW (the
    Kolakowski anchors: 10 log10 of the mean of two modules' mW readings)."""
    v = np.asarray(rssi, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return 1, "linear", 1.0
    whole = np.mean(np.abs(v - np.round(v)) < 1e-6)
    if whole > 0.99:
        return 1, "linear", 1.0
    halves = np.mean(np.abs(2 * v - np.round(2 * v)) < 1e-6)
    if halves > 0.99:
        return 2, "db", 1.0
    return 2, "linear", 1.0


@dataclass(frozen=True)
class Instants:
    """A capture as one row per device and distinct time: truth and RSSI per gateway."""

    t: FloatArray
    device: NDArray[np.int32]
    xyz: FloatArray  # truth; z NaN where the capture has none
    rssi: FloatArray  # (rows, gateways), NaN: not heard


def instants(capture: Capture) -> Instants:
    """Rows of (device, time): captures whose gateways report at the same times (one
    advertising event heard by several) give rows with several gateways."""
    s = capture.sightings
    n_gw = len(capture.gateways.ids)
    keys = np.column_stack([s["device"].astype(float), np.round(s["t"], 4)])
    uniq, row = np.unique(keys, axis=0, return_inverse=True)
    row = row.ravel()
    rssi = np.full((len(uniq), n_gw), np.nan)
    rssi[row, s["gateway"]] = s["rssi"]
    xyz = np.full((len(uniq), 3), np.nan)
    if capture.truth_xyz is not None:
        xyz[row] = capture.truth_xyz
    t = np.zeros(len(uniq))
    t[row] = s["t"]
    return Instants(t, uniq[:, 0].astype(np.int32), xyz, rssi)


def calibrate(
    capture: Capture,
    *,
    base: SiteFile | None = None,
    tag_z: float | None = None,
    survey_path: str | None = None,
    n_boot: int = 100,
    seed: int = 0,
) -> CalibrationResult:
    """Fit the radio of a site from a capture with truth columns; returns the site file
    (``base`` with its radio section and gateway sensitivities replaced, or a site
    outlined by the gateways and the walk) and everything the table and figure show."""
    if capture.truth_xyz is None:
        raise ValueError("the calibration capture has no truth_x/truth_y columns")
    gw = capture.gateways
    z = tag_z if tag_z is not None else (base.site.tag_height_m if base is not None else 1.0)
    rows = instants(capture)
    xyz, rssi = rows.xyz, rows.rssi
    xyz[:, 2] = np.where(np.isfinite(xyz[:, 2]), xyz[:, 2], z)
    # 1. Fit (cluster-robust first: its residuals give the decorrelation distance the
    # bootstrap needs).
    first = fit_log_distance(xyz, gw.xyz, rssi, cluster_m=1.0)
    pi, gi = np.nonzero(np.isfinite(rssi))
    split = split_variance(xyz[pi, :2], gi, first.residuals_db, seed=seed, t=rows.t[pi])
    fit = fit_log_distance(
        xyz, gw.xyz, rssi, decorrelation_m=max(split.decorrelation_m, 0.1), n_boot=n_boot, seed=seed
    )
    # 3. Reporting and fading.
    receivers, combine, step = detect_report(rssi)
    heard_any = np.isfinite(rssi)
    predicted = fit.p0_dbm + fit.gateway_offset_db[None, :] - 10 * fit.exponent * np.log10(
        np.maximum(np.sqrt(np.sum((xyz[:, None, :] - gw.xyz[None]) ** 2, axis=2)), 0.1)
    )
    sensitivity = np.array([
        float(np.nanmin(rssi[:, g])) if heard_any[:, g].any() else -95.0 for g in range(len(gw.ids))
    ])
    strong = predicted >= sensitivity[None, :] + MISS_MARGIN_DB
    miss = 1.0 - float(heard_any[strong].mean()) if strong.any() else 0.0
    report = ReportModel(receivers, combine, step, 0.0)
    k_db, fading_mean, fading_spread = rician_k_for_spread(split.white_sigma_db, report)
    lo = rician_k_for_spread(split.white_sigma_db + split.white_se, report)[0]
    hi = rician_k_for_spread(max(split.white_sigma_db - split.white_se, 0.0), report)[0]
    k_se = abs(hi - lo) / 2
    fading = "rician"
    channel = 0.0
    rayleigh_mean, rayleigh_spread = report.fading_stats("rayleigh")
    if split.white_sigma_db > rayleigh_spread:
        # More per-packet spread than fading through this reporting can make: the rest is
        # the advertising channels' different mean levels.
        fading, fading_mean, fading_spread = "rayleigh", rayleigh_mean, rayleigh_spread
        channel = float(np.sqrt(split.white_sigma_db**2 - rayleigh_spread**2))
    offsets = CHANNEL_OFFSET_SHAPE_DB / np.std(CHANNEL_OFFSET_SHAPE_DB) * channel
    report = ReportModel(receivers, combine, step, round(miss, 4))
    # 5/6. Per-gateway diagnostics and the radio map's smoothing.
    dist = np.sqrt(np.sum((xyz[pi] - gw.xyz[gi]) ** 2, axis=1))
    spread = np.array([np.std(fit.residuals_db[gi == g]) if np.any(gi == g) else 0.0 for g in range(len(gw.ids))])
    outliers = [
        gid for g, gid in enumerate(gw.ids)
        if abs(fit.gateway_offset_db[g]) > OUTLIER_OFFSET_DB
        or spread[g] > OUTLIER_SPREAD_RATIO * float(np.median(spread))
    ]
    bandwidth, reach = survey_map_settings(xyz[heard_any.any(axis=1), :2])
    p0_twin = fit.p0_dbm - fading_mean
    radio = Radio.model_validate({
        **(base.radio.model_dump() if base is not None else {}),
        "model": {"kind": "log-distance", "exponent": round(fit.exponent, 3)},
        "shadowing_sigma_db": round(split.shadowing_sigma_db, 2),
        "decorrelation_m": round(split.decorrelation_m, 2),
        "temporal_sigma_db": round(split.temporal_sigma_db, 2),
        "temporal_coherence_s": round(max(split.coherence_s, 0.01), 2),
        "fading": fading,
        "rician_k_db": round(k_db, 2),
        "channel_offset_db": tuple(round(float(v), 2) + 0.0 for v in offsets),
        "gateway_bias_sigma_db": 0.0,
        "p0_dbm": round(p0_twin, 2),
        "gateway_offsets_db": {g: round(float(v), 2) for g, v in zip(gw.ids, fit.gateway_offset_db, strict=True)},
        "report": GatewayReport(
            receivers=receivers, combine=combine, quantization_db=step, miss_probability=round(miss, 4)
        ),
        "uncertainty": RadioUncertainty(
            p0_db=round(fit.p0_se, 2),
            exponent=round(fit.exponent_se, 3),
            shadowing_sigma_db=round(split.shadowing_se, 2),
            decorrelation_m=round(split.decorrelation_se, 2),
            temporal_sigma_db=round(split.temporal_se, 2),
            temporal_coherence_s=round(split.coherence_se, 2),
            rician_k_db=round(k_se, 2),
            gateway_offsets_db={g: round(float(v), 2) for g, v in zip(gw.ids, fit.gateway_offset_se, strict=True)},
        ),
        "radio_map": RadioMapSettings(survey=survey_path, bandwidth_m=bandwidth, reach_m=reach),
    })
    site = _site_with(base, gw.ids, gw.xyz, sensitivity, xyz, z).model_copy(update={"radio": radio})
    site = SiteFile.model_validate(site.model_dump(by_alias=True))  # re-check cross references
    return CalibrationResult(
        site=site, fit=fit, split=split, report=report, fading_mean_db=fading_mean,
        fading_spread_db=fading_spread, rician_k_db=k_db, k_se_db=k_se, channel_spread_db=channel,
        sensitivity_dbm=sensitivity, reception=heard_any.mean(axis=0), bandwidth_m=bandwidth,
        reach_m=reach, gateway_ids=gw.ids, sample_gateway=gi, sample_distance_m=dist, outliers=outliers,
    )


def _site_with(
    base: SiteFile | None, ids: tuple[str, ...], gw_xyz: FloatArray, sensitivity: FloatArray,
    walk_xyz: FloatArray, tag_z: float,
) -> SiteFile:
    """The base site with the capture's gateways (positions, calibrated sensitivity), or
    a new site outlined by the gateways and the walk with a 1 m margin."""
    units = [
        Gateway(id=g, x=float(p[0]), y=float(p[1]), z=float(p[2]), sensitivity_dbm=float(np.clip(s, -130, -40)))
        for g, p, s in zip(ids, gw_xyz, sensitivity, strict=True)
    ]
    if base is not None:
        known = {u.id: u for u in base.gateways.units}
        merged = [
            (known[u.id].model_copy(update={"sensitivity_dbm": u.sensitivity_dbm}) if u.id in known else u)
            for u in units
        ]
        return base.model_copy(update={"gateways": base.gateways.model_copy(update={"units": merged})})
    pts = np.vstack([gw_xyz[:, :2], walk_xyz[:, :2]])
    (x0, y0), (x1, y1) = pts.min(axis=0) - 1.0, pts.max(axis=0) + 1.0
    outline = [(round(float(x0), 2), round(float(y0), 2)), (round(float(x1), 2), round(float(y0), 2)),
               (round(float(x1), 2), round(float(y1), 2)), (round(float(x0), 2), round(float(y1), 2))]
    return SiteFile(
        name="calibrated-site",
        site=Site(outline=outline, tag_height_m=tag_z),
        gateways=Gateways(units=units),
    )


def survey_reference(capture_path: Path, out_path: Path) -> str:
    """The capture's path as the site file will refer to it: relative to the site file."""
    return os.path.relpath(capture_path.resolve(), out_path.resolve().parent)


def diagnostics_png(result: CalibrationResult, path: Path) -> Path:
    """Residuals against distance, one panel per gateway (outliers titled in red), and
    the residual correlogram with the fitted shadowing share and decorrelation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result.gateway_ids)
    cols = min(4, n + 1)
    rows = int(np.ceil((n + 1) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    resid = result.fit.residuals_db
    for g, gid in enumerate(result.gateway_ids):
        ax = axes.flat[g]
        sel = result.sample_gateway == g
        ax.scatter(result.sample_distance_m[sel], resid[sel], s=2, alpha=0.3)
        ax.axhline(0, color="k", lw=0.8)
        off = result.fit.gateway_offset_db[g]
        bad = gid in result.outliers
        ax.set_title(f"{gid}: offset {off:+.1f} dB, sd {np.std(resid[sel]):.1f}" + (" OUTLIER" if bad else ""),
                     fontsize=8, color="red" if bad else "black")
        ax.set_xlabel("distance (m)", fontsize=7)
        ax.set_ylabel("residual (dB)", fontsize=7)
    ax = axes.flat[n]
    s = result.split
    ax.plot(s.lags_m, s.correlation, ".", label="residual pairs")
    share = s.shadowing_sigma_db**2 / max(s.shadowing_sigma_db**2 + s.white_sigma_db**2, 1e-9)
    ax.plot(s.lags_m, share * np.exp(-s.lags_m / max(s.decorrelation_m, 1e-6)), "-",
            label=f"shadowing share {share:.2f}, {s.decorrelation_m:.2f} m")
    ax.set_title("residual correlogram", fontsize=8)
    ax.set_xlabel("lag (m)", fontsize=7)
    ax.legend(fontsize=6)
    for extra in list(axes.flat)[n + 1:]:
        extra.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
