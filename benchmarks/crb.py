"""The ML estimator and the trackers against the Cramér-Rao bound (Patwari et al. 2003).

1. Monte-Carlo on the log-distance model: a 30 x 20 m floor, 15 gateways on a 6 m grid at
   3 m, tags on a 1 m lattice, 200 draws each of N(0, sigma^2) dB per gateway; ML RMSE
   over the floor against the RMS of sqrt(CRLB) at the same points (target <= 1.25).
2. The same figure from the twin: scenarios/static-open.toml (static tags, no fading,
   shadowing independent from place to place).
3. Monte-Carlo of moving tags: straight legs at 1.2 m/s, one window a second, each
   window an independent draw; single-shot ML against Kalman and particle filters
   (target: trackers below the single-shot bound, ratio < 1).
4. The twin's scenarios/moving-open.toml (pickers carrying tags, spatially correlated
   shadowing, 0.5 m): the moving fixes of each tracker against the bound.

Prints JSON. Run: ``.venv/bin/python benchmarks/crb.py`` (about a minute).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.localize import Estimates, RadioMap, wls_localize  # noqa: E402
from engine.track import FloorPlan, KalmanTracker, ParticleFilter, Tracker  # noqa: E402
from radio_models.crb import crlb_rmse  # noqa: E402
from radio_models.environment import Grid  # noqa: E402
from twin.run import simulate  # noqa: E402
from twin.scenario import Scenario, load_scenario  # noqa: E402

W, H, SPACING, GW_Z, TAG_Z, N_EXP, SIGMA, P0 = 30.0, 20.0, 6.0, 3.0, 1.0, 2.0, 4.0, -59.0


def gateways() -> np.ndarray:
    gx, gy = np.meshgrid(np.arange(SPACING / 2, W, SPACING), np.arange(SPACING / 2, H, SPACING))
    return np.column_stack([gx.ravel(), gy.ravel(), np.full(gx.size, GW_Z)])


def rssi_at(xy: np.ndarray, gw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    d = np.sqrt(np.sum((xy[:, None, :] - gw[None, :, :2]) ** 2, axis=2) + (GW_Z - TAG_Z) ** 2)
    return P0 - 10 * N_EXP * np.log10(d) + rng.normal(0, SIGMA, d.shape)


def static_monte_carlo(rng: np.random.Generator, draws: int = 200) -> dict[str, float]:
    gw = gateways()
    px, py = np.meshgrid(np.arange(1.0, W, 1.0), np.arange(1.0, H, 1.0))
    pts = np.column_stack([px.ravel(), py.ravel()])
    rep = np.repeat(pts, draws, axis=0)
    est = wls_localize(
        rssi_at(rep, gw, rng), gw, np.full(len(rep), P0), N_EXP, SIGMA, TAG_Z, (0, 0, W, H)
    )
    se = ((est.x - rep[:, 0]) ** 2 + (est.y - rep[:, 1]) ** 2).reshape(len(pts), draws).mean(axis=1)
    crb = crlb_rmse(np.column_stack([pts, np.full(len(pts), TAG_Z)]), gw, N_EXP, SIGMA)
    err = np.hypot(est.x - rep[:, 0], est.y - rep[:, 1])
    return {
        "points": len(pts),
        "draws_per_point": draws,
        "gateways": len(gw),
        "ml_rmse_m": round(float(np.sqrt(se.mean())), 4),
        "crb_rms_m": round(float(np.sqrt(np.mean(crb**2))), 4),
        "rmse_over_crb": round(float(np.sqrt(se.mean()) / np.sqrt(np.mean(crb**2))), 4),
        "mean_pointwise_ratio": round(float(np.mean(np.sqrt(se) / crb)), 4),
        "r90_coverage": round(float(np.mean(err <= est.r90)), 4),
    }


def walks(rng: np.random.Generator, tags: int, seconds: int, speed: float = 1.2) -> np.ndarray:
    """(seconds, tags, 2) positions of tags walking straight legs between random points."""
    out = np.zeros((seconds, tags, 2))
    pos = rng.uniform([1, 1], [W - 1, H - 1], (tags, 2))
    goal = rng.uniform([1, 1], [W - 1, H - 1], (tags, 2))
    for s in range(seconds):
        vec = goal - pos
        dist = np.hypot(vec[:, 0], vec[:, 1])
        arrive = dist <= speed
        pos = np.where(arrive[:, None], goal, pos + vec / np.maximum(dist, 1e-9)[:, None] * speed)
        goal[arrive] = rng.uniform([1, 1], [W - 1, H - 1], (int(arrive.sum()), 2))
        out[s] = pos
    return out


def moving_monte_carlo(
    rng: np.random.Generator, tags: int = 200, seconds: int = 120
) -> dict[str, object]:
    gw = gateways()
    truth = walks(rng, tags, seconds)
    grid = Grid.covering((0, 0, W, H), 0.25)
    plan = FloorPlan.open_floor((0, 0, W, H), 0.25)
    rmap = RadioMap.from_model(
        grid, plan.cell_free(grid), gw, N_EXP, SIGMA, TAG_Z, P0, track_inflation=1.0
    )
    trackers: dict[str, Tracker] = {
        "kalman": KalmanTracker(accel_mps2=0.5),
        "particle": ParticleFilter(rmap, plan, particles=256, accel_mps2=0.5, seed=3),
    }
    device = np.arange(tags, dtype=np.int32)
    motion = np.ones(tags, np.int8)
    tx = np.full(tags, P0)
    sq: dict[str, list[np.ndarray]] = {"ml": [], "kalman": [], "particle": []}
    crb_sq = []
    warm = 10  # the first seconds, while filters converge, are not scored
    for s in range(seconds):
        rssi = rssi_at(truth[s], gw, rng)
        est = wls_localize(rssi, gw, tx, N_EXP, SIGMA, TAG_Z, (0, 0, W, H))
        outs: dict[str, Estimates] = {"ml": est}
        for name, tr in trackers.items():
            outs[name] = tr.step(float(s), device, rssi, est, motion, tx)
        if s >= warm:
            for name, e in outs.items():
                sq[name].append((e.x - truth[s, :, 0]) ** 2 + (e.y - truth[s, :, 1]) ** 2)
            crb_sq.append(
                crlb_rmse(np.column_stack([truth[s], np.full(tags, TAG_Z)]), gw, N_EXP, SIGMA) ** 2
            )
    crb_rms = float(np.sqrt(np.mean(np.concatenate(crb_sq))))
    res: dict[str, object] = {
        "tags": tags,
        "seconds": seconds,
        "speed_mps": 1.2,
        "crb_rms_m": round(crb_rms, 4),
    }
    for name, parts in sq.items():
        rmse = float(np.sqrt(np.mean(np.concatenate(parts))))
        res[name] = {"rmse_m": round(rmse, 4), "rmse_over_crb": round(rmse / crb_rms, 4)}
    return res


def twin_figures() -> dict[str, object]:
    static = simulate(load_scenario(ROOT / "scenarios" / "static-open.toml")).metrics
    out: dict[str, object] = {
        "static-open": {
            k: static[k]
            for k in (
                "rmse_m",
                "crb_rmse_m",
                "rmse_over_crb",
                "median_error_m",
                "r90_coverage",
                "fixes",
            )
        }
    }
    base = load_scenario(ROOT / "scenarios" / "moving-open.toml")
    rows = {}
    for tracker in ("none", "kalman", "particle"):
        d = base.model_dump()
        d["engine"] = d["engine"] | {"tracker": tracker}
        m = simulate(Scenario.model_validate(d)).metrics
        mv = m["moving"]
        assert isinstance(mv, dict)
        rows[tracker] = {
            "moving_rmse_m": mv["rmse_m"],
            "moving_crb_rmse_m": mv["crb_rmse_m"],
            "moving_rmse_over_crb": mv["rmse_over_crb"],
            "moving_r90_coverage": mv.get("r90_coverage"),
            "all_r90_coverage": m["r90_coverage"],
            "zone_accuracy": m["zone_accuracy"],
        }
    out["moving-open"] = rows
    return out


def main() -> None:
    rng = np.random.default_rng(np.random.SeedSequence(2024))
    result = {
        "static_monte_carlo": static_monte_carlo(rng),
        "moving_monte_carlo": moving_monte_carlo(rng),
        "twin": twin_figures(),
        "targets": {"ml_rmse_over_crb_max": 1.25, "tracker_moving_rmse_over_crb_max": 1.0},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
