"""The twin of a real site, measured on the Kolakowski 2021 flat (Sensors 21(18):6270,
CC BY 4.0; tests/data/kolakowski):

1. `tagtwin calibrate` on calibration_df.csv only (its plan: tests/data/kolakowski/site.toml);
2. every estimator/tracker, fix interval and window, the HMM and particle filter's
   motion speed and likelihood widening, and the Kalman, HMM and particle fixed-lag
   smoothers (lags 1, 2, 4 s), and at 1 s fixes the HMM smoothers at lags 4, 8, 16 s, with
   and without a shared per-window offset integrated out of the emission, on the site's
   radio map and on one 1.5 times smoother, scored by cross-validation on the calibration
   walk alone (time blocks held out and walked afresh, radio map from the rest); the
   candidate whose 6-minute tracks (three held-out walks) most often meet both the
   0.8 m and 1.8 m targets is chosen there, never on the test track (the earlier rule,
   the pooled errors' worst ratio to the targets, is printed beside it), and each
   tracker's r90 factor is measured there (docs/calibration.md s. 4);
3. every candidate on the robot test track (the chosen one is the figure);
4. fidelity with the chosen method (its smoother's lag included): the calibration walk
   and the test track replayed in the twin of this site (shadowing conditioned on the
   survey) and of a site like it (fresh fields);
5. leave-one-path-out on a capture the calibrated twin generates (four walks).

Prints one JSON object. Run: ``.venv/bin/python benchmarks/calibration.py [folder]``
(about 30 minutes at load 7-9 on 2 cores: 784 cross-validation runs of 196 candidates,
196 on the test track, 32 twin replays).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.capture import Capture, kolakowski_capture, read_capture, read_gateways  # noqa: E402
from engine.contract import IdTable  # noqa: E402
from engine.evaluate import evaluate_capture  # noqa: E402
from siteplan.model import SiteModel  # noqa: E402
from siteplan.sitefile import SiteFile, dump_site_file, load_site_file  # noqa: E402
from tagtwin.calibrate import calibrate  # noqa: E402
from tagtwin.evaluation import (  # noqa: E402
    choose_tracking,
    leave_one_path_out,
    rank_key,
    site_capture_config,
    tune_tracking,
)
from tagtwin.fidelity import capture_from_rows, fidelity  # noqa: E402
from twin.walk import simulate_walk  # noqa: E402


def twin_paths(site: SiteFile, template: Capture, paths: int, seconds: float, seed: int) -> Capture:
    """``paths`` random-waypoint walks (0.3 m/s, 3 reports/s) through the calibrated
    twin of the site, one device each, all in one shadowing realization."""
    rng = np.random.default_rng(seed)
    plan = SiteModel.from_scenario(site)
    gw = template.gateways
    ids, table = site.gateway_table()
    sens = dict(zip(ids, (row[5] for row in table), strict=True))
    sensitivity = np.array([sens.get(g, -95.0) for g in gw.ids])
    t_all, dev_all, xyz_all, rssi_all = [], [], [], []
    for p in range(paths):
        stops = plan.random_free_points(12, rng, plan.outline.buffer(-0.3))
        legs = np.linalg.norm(np.diff(stops, axis=0), axis=1)
        s_at = np.r_[0.0, np.cumsum(legs)]
        t = np.arange(0.0, seconds, 1 / 3)
        s = (0.3 * t) % s_at[-1]
        xy = np.column_stack([np.interp(s, s_at, stops[:, 0]), np.interp(s, s_at, stops[:, 1])])
        xyz = np.column_stack([xy, np.full(len(t), site.site.tag_height_m)])
        rssi = simulate_walk(site, gw.xyz, gw.ids, sensitivity, xyz, seed, walk=p, t=t)
        t_all.append(t + 1000.0 * p)
        dev_all.append(np.full(len(t), p, np.int32))
        xyz_all.append(xyz)
        rssi_all.append(rssi)
    devices = IdTable([f"path-{p + 1}" for p in range(paths)])
    shell = Capture(template.sightings[:0], devices, gw, None, None)
    return capture_from_rows(shell, np.concatenate(t_all), np.concatenate(dev_all),
                             np.concatenate(xyz_all), np.concatenate(rssi_all))


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests" / "data" / "kolakowski"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = kolakowski_capture(folder, tmp)
        gw = read_gateways(files["gateways"])
        cal = read_capture(files["calibration"], gw)
        test = read_capture(files["test"], gw)
        base = load_site_file(ROOT / "tests" / "data" / "kolakowski" / "site.toml")
        result = calibrate(cal, base=base, survey_path="calibration.csv", n_boot=100)
        site_path = tmp / "site.toml"
        site_path.write_text(dump_site_file(result.site))
        site = load_site_file(site_path)
        radio = site.radio

        # Every estimator/tracker at the walk's own report period and at 1 s, the HMM and
        # particle filter also with each motion speed and likelihood widening: chosen and
        # tuned by cross-validation on the walk (docs/calibration.md section 4).
        cv_started = time.perf_counter()
        site, best, cv, methods = tune_tracking(site, site_path, cal, gw, folds=4, criterion="meet_share")
        cv_wall = time.perf_counter() - cv_started
        # The earlier rule (pooled errors' worse ratio to the targets), for comparison.
        by_ratio, _ = choose_tracking(cv, methods, "target_ratio")
        ranks = {crit: {c.name: i + 1 for i, c in enumerate(sorted(methods, key=rank_key(cv, crit)))}
                 for crit in ("meet_share", "target_ratio")}
        assert site.radio.radio_map is not None
        tuning = site.radio.radio_map.tuning
        chosen = best.name
        site_path.write_text(dump_site_file(site))
        site = load_site_file(site_path)
        loc, trk, chosen_step, chosen_window = best.localizer, best.tracker, best.step_s, best.window_s

        on_test = {}
        for c in methods:
            scale = cv[c.name]["r90_scale"] if c.calibrated_r90 else 1.0
            cfg = site_capture_config(site, site_path, gw, c.localizer, c.tracker, c.step_s, c.window_s, -59.0,
                                      None, 0, cal, tuning=c.tuning(scale))
            _, m = evaluate_capture(test, cfg)
            on_test[c.name] = {k: m.get(k) for k in ("median_error_m", "p90_error_m", "r90_coverage")}

        # The twin of this site (shadowing conditioned on the survey), and of a site
        # like it (fresh fields each draw), for both walks.
        fid: dict[str, dict[str, object]] = {}
        for name, cap in (("calibration_walk", cal), ("test_track", test)):
            for kind, condition in (("this_site", True), ("a_site_like_it", False)):
                fid.setdefault(name, {})[kind], _ = fidelity(
                    cap, site, site_path, localizer=loc, tracker=trk, step=chosen_step, window=chosen_window,
                    seed=0, realizations=4, condition=condition, smoother_lag_s=best.lag_s)

        twin_capture = twin_paths(site, cal, paths=4, seconds=240.0, seed=7)
        loo = leave_one_path_out(twin_capture, base, site_path, 1.0, 1.0, seed=0,
                                 combinations=(("wls", "none"), ("radio-map", "none"), ("radio-map", "hmm"),
                                               ("radio-map", "particle")))
    out = {
        "dataset": "kolakowski-flat-2021: calibration_df (calibration), test_robot_df (scored)",
        "calibrated": {
            "p0_reported_dbm": round(result.fit.p0_dbm, 2), "p0_dbm": radio.p0_dbm,
            "p0_se": radio.uncertainty.p0_db if radio.uncertainty else None,
            "exponent": radio.model.exponent,  # type: ignore[union-attr]
            "exponent_se": radio.uncertainty.exponent if radio.uncertainty else None,
            "shadowing_sigma_db": radio.shadowing_sigma_db, "decorrelation_m": radio.decorrelation_m,
            "temporal_sigma_db": radio.temporal_sigma_db, "temporal_coherence_s": radio.temporal_coherence_s,
            "per_packet_sigma_db": round(result.split.white_sigma_db, 2),
            "fading": radio.fading, "rician_k_db": radio.rician_k_db,
            "channel_offset_db": radio.channel_offset_db,
            "report": radio.report.model_dump(), "gateway_offsets_db": radio.gateway_offsets_db,
            "radio_map": radio.radio_map.model_dump() if radio.radio_map else None,
            "outliers": result.outliers,
        },
        "cross_validation_on_calibration": cv,
        "cross_validation_rank": ranks,
        "cross_validation_wall_s": round(cv_wall, 1),
        "chosen_on_calibration": chosen,
        "chosen_by_target_ratio": by_ratio.name,
        "chosen_by_target_ratio_on_test": on_test[by_ratio.name],
        "tuning": [t.model_dump() for t in tuning],
        "test_track": on_test,
        "chosen_on_test": on_test[chosen],
        "targets": {"median_max_m": 0.8, "p90_max_m": 1.8, "ks_max": 0.05, "twin_error_within": 0.2},
        "fidelity": fid,
        "leave_one_path_out_twin": {
            path: {k: {m: v[m] for m in ("median_error_m", "p90_error_m", "r90_coverage")} for k, v in r.items()}
            for path, r in loo.items()
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
