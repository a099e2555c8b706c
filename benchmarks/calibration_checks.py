"""Checks on the calibration walk behind docs/calibration.md section 6 (Kolakowski 2021
flat, calibration_df.csv only; the test track is not read): for a few methods,

1. the learning curve of cross-validation: maps from half the survey (2 interleaved
   folds), three quarters (4, the default) and all but one 120 s walk (each walk held
   out alone): pooled median / p90 and the share of 6-minute tracks meeting both targets;
2. start-up edges: errors in the first 10 s of each held-out walk against the rest;
3. a paired bootstrap over the held-out walks (4 folds): how often each method has the
   highest meet share.

Prints one JSON object. Run: ``.venv/bin/python benchmarks/calibration_checks.py``
(about ten minutes on 2 loaded cores).
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
from engine.pipeline import EngineConfig  # noqa: E402
from siteplan.sitefile import dump_site_file, load_site_file  # noqa: E402
from tagtwin.calibrate import calibrate  # noqa: E402
from tagtwin.evaluation import (  # noqa: E402
    Candidate,
    cross_validate,
    site_capture_config,
    step_period,
    time_folds,
    track_meet_share,
)

BLOCK_S = 120.0
FIRST_S = 10.0


def main() -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = kolakowski_capture(ROOT / "tests" / "data" / "kolakowski", tmp)
        gw = read_gateways(files["gateways"])
        cal = read_capture(files["calibration"], gw)
        base = load_site_file(ROOT / "tests" / "data" / "kolakowski" / "site.toml")
        site_path = tmp / "site.toml"
        site_path.write_text(dump_site_file(calibrate(cal, base=base, survey_path="calibration.csv",
                                                      n_boot=100).site))
        site = load_site_file(site_path)
        period = round(step_period(cal), 4)
        methods = (
            Candidate("radio-map", "hmm", 1.0, 1.0, 0.6, 1.6, 4.0),
            Candidate("radio-map", "hmm", 1.0, 1.0, 0.6, 1.0),
            Candidate("radio-map", "hmm", period, 1.0),
            Candidate("radio-map", "hmm", period, 1.0, lag_s=4.0),
            Candidate("radio-map", "none", 1.0, 2.0),
            Candidate("radio-map", "particle", 1.0, 1.0),
            Candidate("radio-map", "particle", 1.0, 1.0, lag_s=2.0),
            Candidate("radio-map", "hmm", 1.0, 1.0, 1.5, 1.6, 4.0),
            # Session 4's first four by meet share, and the pooled ratio's choice.
            Candidate("radio-map", "hmm", 1.0, 1.0, 0.6, 2.5, 16.0, 4.0, 0.75),
            Candidate("radio-map", "hmm", 1.0, 1.0, 0.6, 2.5, 16.0, 0.0, 0.75),
            Candidate("radio-map", "hmm", 1.0, 1.0, 0.6, 1.6, 16.0, 4.0, 0.75),
            Candidate("radio-map", "hmm", 1.0, 1.0, 0.6, 2.5, 16.0, 4.0),
            Candidate("radio-map", "hmm", 1.0, 1.0, 0.6, 1.6, 16.0),
        )

        def make(c: Candidate, rest: Capture) -> EngineConfig:
            return site_capture_config(site, site_path, gw, c.localizer, c.tracker, c.step_s, c.window_s,
                                       -59.0, None, 0, rest, tuning=c.tuning())

        t = cal.sightings["t"]
        block = np.floor((t - t.min()) / BLOCK_S).astype(np.int64)
        schemes = {"2 folds": time_folds(cal, 2, BLOCK_S), "4 folds": time_folds(cal, 4, BLOCK_S),
                   "each walk alone": [block == b for b in np.unique(block)]}
        curve: dict[str, dict[str, dict[str, float]]] = {}
        walks: dict[str, list[np.ndarray]] = {}
        for scheme, masks in schemes.items():
            got: dict[str, list[np.ndarray]] = {}
            cv = cross_validate(cal, make, methods, masks=masks, walks_out=got)
            curve[scheme] = {name: {k: r[k] for k in ("median_error_m", "p90_error_m", "track_meet_share")}
                             for name, r in cv.items()}
            if scheme == "4 folds":
                walks = got

        edges = {}
        for c in methods:
            n = round(FIRST_S / c.step_s)
            first = np.concatenate([w[:n] for w in walks[c.name]])
            rest = np.concatenate([w[n:] for w in walks[c.name]])
            edges[c.name] = {f"first_{FIRST_S:g}s": [round(float(np.median(first)), 3),
                                                    round(float(np.quantile(first, 0.9)), 3)],
                             "rest": [round(float(np.median(rest)), 3), round(float(np.quantile(rest, 0.9)), 3)]}

        rng = np.random.default_rng(0)
        n_walks = len(walks[methods[0].name])
        resamples, best = 200, np.zeros(len(methods))
        for _ in range(resamples):
            pick = rng.integers(0, n_walks, n_walks)
            shares = [track_meet_share([walks[c.name][j] for j in pick], 3, 0.8, 1.8, max_tracks=400)
                      ["track_meet_share"] for c in methods]
            best[int(np.argmax(shares))] += 1
    out = {
        "dataset": "kolakowski-flat-2021: calibration_df only",
        "held_out_walks": n_walks,
        "learning_curve": curve,
        "start_up_edges_median_p90_m": edges,
        "bootstrap_best_share": {c.name: round(float(b / resamples), 3) for c, b in zip(methods, best, strict=True)},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
