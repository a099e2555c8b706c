"""What a resting tag's radio evidence says about a walled forbidden zone (the office).

The misplaced rule decides on a still tag's fixes: P(forbidden zone | fix), the mass of the
fix's Gaussian (r90) inside the zone. This measures whether that is where the limit is. For
every rest (motion flag off for at least ``MIN_REST_S``) that starts with the tag truly
within ``--reach`` m of a forbidden zone's boundary, inside or out, over the first
``LOOK_S`` s of the rest (after ``SETTLE_S`` s):

* ``rule``: the rule's P, the mean over the rest's fixes (engine.rules.geofence.ZoneRegion);
* ``pooled``: a posterior from the rest's raw sightings instead, pooled per gateway over the
  whole window (fast fading averages out, the static shadowing does not) and evaluated on
  the radio grid under the engine's own model: log-distance with the site plan's wall and
  rack losses (the localizer's ObstacleMap), shadowing sigma per link plus fading over the
  number heard, the common offset profiled out, a uniform prior over the floor; gateways
  that heard fewer than half as many as the best one are left out (their mean is biased
  up by the ones they missed);
* the rest fixes' error against the truth, their r90 and its coverage.

It prints, per threshold, how many rests inside the zone and outside it reach it, for both.
Incident runs (scenarios/demo_incidents.toml) give the rests inside (misplacements, dumped
tags); quiet runs (scenarios/demo.toml, no incidents) give the rests beside the wall that
quiet traffic makes. Prints JSON.

Usage: python benchmarks/misplaced_rest.py [--seeds 42 7] [--quiet-seeds 111 115]
[--quiet-duration 7200] [--fixes-dir DIR] [--quiet-fixes-dir DIR] [--engine KEY=VALUE ...]
(kept fixes, as benchmarks/score_rules.py and quiet_missing.py keep them.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from _common import engine_variant
from numpy.typing import NDArray

from engine.rules.geofence import MISPLACED_POINTS, ZoneRegion
from radio_models.environment import ReportModel
from twin.run import engine_config_for, simulate_keeping_fixes
from twin.scenario import Scenario, load_scenario

ROOT = Path(__file__).resolve().parents[1]
MIN_REST_S = 70.0
SETTLE_S = 5.0
LOOK_S = 60.0  # the default rule decides after six 10 s looks
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_HEARD_SHARE = 0.5


def rests(still: NDArray[np.bool_]) -> list[tuple[int, int]]:
    """(first, end) index pairs of the runs of True."""
    edges = np.flatnonzero(np.diff(np.r_[0, still.astype(np.int8), 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def one_run(sc: Scenario, fixes_dir: Path | None, reach_m: float) -> list[dict[str, Any]]:
    """The rests near the forbidden zones of one run, with both probabilities."""
    run, _ = simulate_keeping_fixes(sc, fixes_dir)
    twin = run.twin
    cfg = engine_config_for(sc, twin)
    allowed = set(sc.rules.misplaced.default_allowed_roles)
    zones = twin.site.zones
    banned = [p for p, r in zip(zones.polygons, zones.roles, strict=True) if r not in allowed]
    forbidden = shapely.union_all(banned)
    outline = shapely.Polygon(sc.site.outline)
    region = ZoneRegion(banned, within=outline, points=MISPLACED_POINTS)
    # The pooled posterior's grid: the localizer's own model on every cell of the floor.
    if cfg.obstacle_map is None:
        raise SystemExit(f"{sc.name}: no site plan in the engine (use_site_plan), nothing to pool on")
    grid = cfg.obstacle_map.grid
    cells = grid.centres()
    floor = shapely.contains_xy(outline, cells[:, 0], cells[:, 1])
    in_zone = shapely.contains_xy(forbidden, cells[:, 0], cells[:, 1])[floor]
    gw = cfg.gateways.xyz
    d3 = np.sqrt(((cells[floor, None, :] - gw[None, :, :2]) ** 2).sum(-1) + (gw[None, :, 2] - cfg.tag_height_m) ** 2)
    model = -10.0 * cfg.path_loss_exponent * np.log10(d3) - cfg.obstacle_map.loss[floor]
    fading_sd = ReportModel().fading_stats(sc.radio.fading)[1]

    def pooled(gws: NDArray[np.int32], rssi: NDArray[np.float32], tx: float) -> float:
        if len(gws) == 0:
            return float("nan")
        n = np.bincount(gws, minlength=len(gw))
        total = np.bincount(gws, rssi.astype(float), minlength=len(gw))
        use = n >= MIN_HEARD_SHARE * n.max()
        mean = total[use] / n[use]
        weight = 1.0 / (cfg.sigma_db**2 + fading_sd**2 / n[use])
        res = mean[None, :] - (tx + model[:, use])
        res -= ((res * weight).sum(1) / weight.sum())[:, None]  # the common offset
        logp = -0.5 * (res * res * weight).sum(1)
        p = np.exp(logp - logp.max())
        return float(p[in_zone].sum() / p.sum())

    f = run.fixes[np.argsort(run.fixes["device"], kind="stable")]
    s = twin.sightings[np.lexsort((twin.sightings["t"], twin.sightings["device"]))]
    n_dev = len(twin.device_ids)
    f_at = np.searchsorted(f["device"], np.arange(n_dev + 1))
    s_at = np.searchsorted(s["device"], np.arange(n_dev + 1))
    out: list[dict[str, Any]] = []
    for dev in range(n_dev):
        ff = f[f_at[dev] : f_at[dev + 1]]
        for a, b in rests(ff["motion"] == 0):
            t0, t1 = float(ff["t"][a]), float(ff["t"][b - 1])
            if t1 - t0 < MIN_REST_S:
                continue
            lo, hi = t0 + SETTLE_S, t0 + SETTLE_S + LOOK_S
            truth = twin.truth.position_at(np.array([dev]), np.array([lo]))[0]
            point = shapely.Point(truth)
            if forbidden.boundary.distance(point) > reach_m:
                continue
            w = ff[a:b]
            w = w[(w["t"] >= lo) & (w["t"] < hi)]
            ss = s[s_at[dev] : s_at[dev + 1]]
            ss = ss[(ss["t"] >= lo) & (ss["t"] < hi)]
            r90 = w["r90"].astype(float)
            err = np.hypot(w["x"] - truth[0], w["y"] - truth[1])
            out.append({
                "seed": sc.seed,
                "tag": twin.device_ids[dev],
                "t": round(t0, 1),
                "inside": bool(forbidden.contains(point)),
                "rule": float(region.probability(w["x"], w["y"], r90).mean()) if len(w) else float("nan"),
                "pooled": pooled(ss["gateway"], ss["rssi"], float(twin.tx_power_1m_dbm[dev])),
                "error_m": err.tolist(),
                "r90_m": r90.tolist(),
            })
    return out


def summary(eps: list[dict[str, Any]]) -> dict[str, Any]:
    """Per threshold: rests inside / outside at or above it, for both probabilities."""
    inside = [e for e in eps if e["inside"]]
    outside = [e for e in eps if not e["inside"]]
    err = np.array([x for e in eps for x in e["error_m"]])
    r90 = np.array([x for e in eps for x in e["r90_m"]])
    return {
        "rests_inside": len(inside),
        "rests_outside": len(outside),
        "rest_fix_error_m": {"median": round(float(np.median(err)), 2), "p90": round(float(np.percentile(err, 90)), 2)}
        if len(err) else None,
        "rest_r90_m_median": round(float(np.median(r90)), 2) if len(r90) else None,
        "rest_r90_coverage": round(float(np.mean(err <= r90)), 3) if len(err) else None,
        "at_or_above": {
            str(thr): {
                kind: {"inside": sum(e[kind] >= thr for e in inside), "outside": sum(e[kind] >= thr for e in outside)}
                for kind in ("rule", "pooled")
            }
            for thr in THRESHOLDS
        },
        "outside_highest": {
            kind: sorted((round(e[kind], 3) for e in outside if e[kind] == e[kind]), reverse=True)[:5]
            for kind in ("rule", "pooled")
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="*", default=[42])
    ap.add_argument("--quiet-seeds", type=int, nargs="*", default=[])
    ap.add_argument("--quiet-duration", type=float, default=7200.0)
    ap.add_argument("--fixes-dir", help="kept fixes of the incident runs (reused, and kept when made)")
    ap.add_argument("--quiet-fixes-dir", help="kept fixes of the quiet runs (default: --fixes-dir)")
    ap.add_argument("--reach", type=float, default=5.0, help="rests this close to the zone's edge, m")
    ap.add_argument("--engine", action="append", default=[], metavar="KEY=VALUE",
                    help="replace one [engine] setting of the scenarios (repeatable)")
    args = ap.parse_args()
    wall = time.perf_counter()
    fixes_dir = Path(args.fixes_dir) if args.fixes_dir else None
    inc = engine_variant(load_scenario(ROOT / "scenarios" / "demo_incidents.toml"), args.engine)
    quiet = engine_variant(load_scenario(ROOT / "scenarios" / "demo.toml"), args.engine)
    eps_inc: list[dict[str, Any]] = []
    for seed in args.seeds:
        eps_inc += one_run(Scenario.model_validate(inc.model_dump() | {"seed": seed}), fixes_dir, args.reach)
    eps_quiet: list[dict[str, Any]] = []
    for seed in args.quiet_seeds:
        sc = Scenario.model_validate(
            quiet.model_dump() | {"seed": seed, "duration_s": args.quiet_duration, "incidents": []}
        )
        eps_quiet += one_run(sc, Path(args.quiet_fixes_dir) if args.quiet_fixes_dir else fixes_dir, args.reach)
    print(json.dumps({
        "engine": inc.engine.model_dump(),
        "incident_runs": {"scenario": inc.name, "seeds": args.seeds, **summary(eps_inc)},
        "quiet_runs": {"scenario": quiet.name, "seeds": args.quiet_seeds, "duration_s": args.quiet_duration,
                       **summary(eps_quiet)} if args.quiet_seeds else None,
        "wall_s": round(time.perf_counter() - wall, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
