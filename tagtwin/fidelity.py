"""``tagtwin fidelity``: does the calibrated twin resemble the real site?

The real walk is replayed in the twin (twin/walk.py: same gateways, true path, instants
and reporting model) and the two are compared where a user would notice a difference:

- RSSI residuals against the site's calibrated mean model, two-sample
  Kolmogorov-Smirnov statistic overall and per distance band, with the same statistic
  between the real walk's two halves as the yardstick of what "the same" looks like;
- the share of instants each gateway reported;
- localization error of the same engine on the real walk and on its twin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.table import Table
from scipy.stats import ks_2samp

from engine.capture import Capture, truth_from_samples
from engine.contract import SIGHTING_DTYPE, UNKNOWN
from engine.evaluate import evaluate_capture
from siteplan.sitefile import SiteFile
from tagtwin.calibrate import instants
from tagtwin.evaluation import site_capture_config, site_radio
from twin.walk import SurveyReadings, simulate_walk

FloatArray = NDArray[np.float64]
DISTANCE_BANDS_M = ((0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, np.inf))


def capture_from_rows(
    template: Capture, t: FloatArray, device: NDArray[np.int32], xyz: FloatArray, rssi: FloatArray
) -> Capture:
    """A capture with one sighting per heard (row, gateway), truth from ``xyz``."""
    r, g = np.nonzero(np.isfinite(rssi))
    order = np.lexsort((g, t[r]))
    r, g = r[order], g[order]
    s = np.zeros(len(r), SIGHTING_DTYPE)
    s["t"], s["gateway"], s["device"], s["rssi"] = t[r], g, device[r], rssi[r, g]
    s["seq"] = s["battery"] = s["motion"] = UNKNOWN
    truth = truth_from_samples(s["device"], s["t"], xyz[r, :2])
    return Capture(s, template.devices, template.gateways, truth, xyz[r])


def survey_readings(capture: Capture, site: SiteFile) -> SurveyReadings:
    """A survey capture as the readings the twin conditions its shadowing on."""
    rows = instants(capture)
    xyz = rows.xyz.copy()
    xyz[:, 2] = np.where(np.isfinite(xyz[:, 2]), xyz[:, 2], site.site.tag_height_m)
    return SurveyReadings(xyz, rows.rssi, rows.t)


def _replay(capture: Capture, site: SiteFile, sensitivity: FloatArray, seed: int, walk: int,
            survey: SurveyReadings | None = None) -> Capture:
    """``capture``'s walk replayed in the twin whose shadowing ``seed`` draws (conditioned
    on ``survey`` when given)."""
    rows = instants(capture)
    xyz = rows.xyz.copy()
    xyz[:, 2] = np.where(np.isfinite(xyz[:, 2]), xyz[:, 2], site.site.tag_height_m)
    gw = capture.gateways
    rssi = simulate_walk(site, gw.xyz, gw.ids, sensitivity, xyz, seed, walk=walk, t=rows.t, survey=survey)
    return capture_from_rows(capture, rows.t, rows.device, xyz, rssi)


def fidelity(
    capture: Capture,
    site: SiteFile,
    site_path: Path,
    *,
    localizer: str = "radio-map",
    tracker: str = "hmm",
    step: float = 1.0,
    window: float = 1.0,
    seed: int = 0,
    realizations: int = 4,
    condition: bool = True,
    smoother_lag_s: float = 0.0,
) -> tuple[dict[str, Any], dict[str, FloatArray]]:
    """The comparison as JSON-ready numbers, and the arrays the plot draws.

    The twin is drawn ``realizations`` times (each its own shadowing fields). Where the
    site file names its survey walk, each twin also replays the survey and builds its
    radio map from that, as the real site's map comes from the real survey: the twin's
    localization error is then what the twin predicts a calibrated site would get.
    With ``condition`` (and a survey), the twin's shadowing is conditioned on what the
    survey measured (twin.walk.condition_on_survey): the twin of this site, not of a
    site like it, whose error would vary from one draw of the fields to the next.
    ``smoother_lag_s`` > 0 compares the tracker's fixed-lag smoother (tuned as the site
    file's entry with that lag), on the real walk and on the twin's alike."""
    from engine.capture import read_capture
    from engine.evaluate import position_errors

    if capture.truth_xyz is None:
        raise ValueError("the capture has no truth_x/truth_y (or x/y) columns: the twin needs the true path")
    gw = capture.gateways
    ids, table = site.gateway_table()
    sens_by_id = {i: row[5] for i, row in zip(ids, table, strict=True)}
    sensitivity = np.array([sens_by_id.get(g, site.gateways.defaults.sensitivity_dbm) for g in gw.ids])
    settings = site.radio.radio_map
    survey = (read_capture(site_path.parent / settings.survey, gw)
              if settings is not None and settings.survey else None)

    sr = site_radio(site, gw.ids, -59.0)

    def residuals(cap: Capture) -> tuple[FloatArray, FloatArray]:
        assert cap.truth_xyz is not None
        xyz = cap.truth_xyz.copy()
        xyz[:, 2] = np.where(np.isfinite(xyz[:, 2]), xyz[:, 2], site.site.tag_height_m)
        s = cap.sightings
        d = np.sqrt(np.sum((xyz - gw.xyz[s["gateway"]]) ** 2, axis=1))
        mean = sr.p0_reported_dbm + sr.offsets_db[s["gateway"]] - 10 * sr.exponent * np.log10(np.maximum(d, 0.1))
        return s["rssi"] - mean, d

    def reception(cap: Capture) -> FloatArray:
        rows = instants(cap)
        return np.asarray(np.isfinite(rows.rssi).mean(axis=0))

    def errors(cap: Capture, map_survey: Capture | None) -> tuple[dict[str, Any], FloatArray]:
        cfg = site_capture_config(site, site_path, gw, localizer, tracker, step, window, -59.0, None, seed,
                                  map_survey, smoother_lag_s=smoother_lag_s)
        fixes, metrics = evaluate_capture(cap, cfg)
        assert cap.truth is not None
        keep = ("median_error_m", "p90_error_m", "r90_coverage")
        return {k: metrics.get(k) for k in keep}, position_errors(fixes, cap.truth)

    real_res, real_d = residuals(capture)
    real_loc, real_err = errors(capture, survey)
    twin_res, twin_d, twin_err, twin_rec = [], [], [], []
    measured = survey_readings(survey, site) if survey is not None and condition else None
    for r in range(realizations):
        twin = _replay(capture, site, sensitivity, seed + r, walk=0, survey=measured)
        twin_survey = (_replay(survey, site, sensitivity, seed + r, walk=1, survey=measured)
                       if survey is not None else None)
        res, d = residuals(twin)
        twin_res.append(res)
        twin_d.append(d)
        twin_rec.append(reception(twin))
        twin_err.append(errors(twin, twin_survey)[1])
    t_res, t_d, t_err = np.concatenate(twin_res), np.concatenate(twin_d), np.concatenate(twin_err)
    t_err = t_err[np.isfinite(t_err)]
    half = np.arange(len(real_res)) < len(real_res) // 2
    rec_real, rec_twin = reception(capture), np.mean(twin_rec, axis=0)
    twin_loc = {
        "median_error_m": round(float(np.median(t_err)), 4),
        "p90_error_m": round(float(np.quantile(t_err, 0.9)), 4),
    }
    out: dict[str, Any] = {
        "realizations": realizations,
        "conditioned_on_survey": measured is not None,
        "ks_residuals": round(float(ks_2samp(real_res, t_res).statistic), 4),
        "ks_real_halves": round(float(ks_2samp(real_res[half], real_res[~half]).statistic), 4),
        "residual_sd_db": {"real": round(float(np.std(real_res)), 2), "twin": round(float(np.std(t_res)), 2)},
        "ks_by_distance": {},
        "reception": {
            g: {"real": round(float(rec_real[j]), 4), "twin": round(float(rec_twin[j]), 4)}
            for j, g in enumerate(gw.ids)
        },
        "localization": {
            "method": (localizer if tracker == "none" else f"{localizer}+{tracker}")
            + (f"+lag{smoother_lag_s:g}s" if smoother_lag_s > 0 else ""),
            "radio_map": "survey (the twin's replay of it for the twin)" if survey is not None else "model",
            "real": real_loc,
            "twin": twin_loc,
            "twin_over_real_median": round(twin_loc["median_error_m"] / (real_loc["median_error_m"] or np.nan), 3),
        },
    }
    for lo, hi in DISTANCE_BANDS_M:
        a = real_res[(real_d >= lo) & (real_d < hi)]
        b = t_res[(t_d >= lo) & (t_d < hi)]
        if len(a) >= 20 and len(b) >= 20:
            out["ks_by_distance"][f"{lo:g}-{hi:g} m"] = {
                "ks": round(float(ks_2samp(a, b).statistic), 4), "real": len(a), "twin": len(b)}
    curves = {"real_res": real_res, "twin_res": t_res, "real_err": real_err, "twin_err": t_err}
    return out, curves


def fidelity_png(result: dict[str, Any], curves: dict[str, FloatArray], path: Path) -> Path:
    """Residual CDFs, reception per gateway and error CDFs, real against twin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for key, label in (("real_res", "real"), ("twin_res", "twin")):
        v = np.sort(curves[key])
        axes[0].plot(v, np.linspace(0, 1, len(v)), label=label)
    axes[0].set_title(f"RSSI residuals, KS {result['ks_residuals']:.3f} "
                      f"(real halves {result['ks_real_halves']:.3f})", fontsize=9)
    axes[0].set_xlabel("residual (dB)")
    axes[0].legend()
    gws = list(result["reception"])
    xs = np.arange(len(gws))
    axes[1].bar(xs - 0.2, [result["reception"][g]["real"] for g in gws], 0.4, label="real")
    axes[1].bar(xs + 0.2, [result["reception"][g]["twin"] for g in gws], 0.4, label="twin")
    axes[1].set_xticks(xs, gws, rotation=45, fontsize=7)
    axes[1].set_title("share of instants reported", fontsize=9)
    axes[1].legend()
    for key, label in (("real_err", "real"), ("twin_err", "twin")):
        v = np.sort(curves[key][np.isfinite(curves[key])])
        axes[2].plot(v, np.linspace(0, 1, len(v)), label=label)
    axes[2].set_title(f"localization error ({result['localization']['method']})", fontsize=9)
    axes[2].set_xlabel("error (m)")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fidelity_table(result: dict[str, Any], name: str) -> Table:
    """The comparison as one table: measure, real, twin."""
    table = Table(title=f"twin vs real: {name}")
    table.add_column("measure")
    table.add_column("real", justify="right")
    table.add_column("twin", justify="right")
    table.add_row("KS of RSSI residuals (real: its two halves)", f"({result['ks_real_halves']:.3f})",
                  f"{result['ks_residuals']:.3f}")
    table.add_row("residual sd (dB)", f"{result['residual_sd_db']['real']:.2f}",
                  f"{result['residual_sd_db']['twin']:.2f}")
    for band, v in result["ks_by_distance"].items():
        table.add_row(f"KS {band}", f"{v['real']} samples", f"{v['ks']:.3f}")
    for g, v in result["reception"].items():
        table.add_row(f"reported share {g}", f"{v['real']:.3f}", f"{v['twin']:.3f}")
    loc = result["localization"]
    for key in ("median_error_m", "p90_error_m"):
        table.add_row(f"{loc['method']} {key}", f"{loc['real'][key]:.2f}", f"{loc['twin'][key]:.2f}")
    return table
