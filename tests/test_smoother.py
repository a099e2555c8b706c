"""Fixed-lag smoothers (engine/track.py: Kalman RTS, HMM forward-backward, particle
ancestry): at lag 0 they are the filter; every fix time
leaves exactly once, with a normalised posterior; an estimate never uses readings past
its lag; on walks with known truth they do not do worse than the filter on average; and
through the engine a smoothed fix leaves only once its lag has passed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.contract import SIGHTING_DTYPE, GatewayInfo
from engine.localize import Estimates, RadioMap, radio_map_localize
from engine.pipeline import Engine, EngineConfig
from engine.track import (
    FixedLagGridSmoother,
    FixedLagKalmanSmoother,
    FixedLagParticleSmoother,
    FloorPlan,
    GridFilter,
    KalmanTracker,
    ParticleFilter,
    Smoothed,
)
from radio_models.environment import Grid
from siteplan.zones import ZoneIndex

BOUNDS = (0.0, 0.0, 12.0, 8.0)
GW = np.array([[1.0, 1.0, 2.5], [11.0, 1.0, 2.5], [1.0, 7.0, 2.5], [11.0, 7.0, 2.5], [6.0, 4.0, 2.5]])
SIGMA_DB = 4.0


def radio_map() -> RadioMap:
    grid = Grid.covering(BOUNDS, 0.5)
    return RadioMap.from_model(grid, np.ones(grid.nx * grid.ny, bool), GW, 2.0, SIGMA_DB, 1.0)


PLAN = FloorPlan.open_floor(BOUNDS, 0.25)
MAP = radio_map()


def walk(seed: int, steps: int, devices: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """True positions (steps, devices, 2) of tags walking at about 1 m/s and bouncing
    off the walls, and their RSSI rows (steps, devices, gateways) with 4 dB noise."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform([1, 1], [11, 7], (devices, 2))
    heading = rng.uniform(0, 2 * np.pi, devices)
    truth = np.empty((steps, devices, 2))
    for k in range(steps):
        heading += rng.normal(0, 0.3, devices)
        pos = pos + np.column_stack([np.cos(heading), np.sin(heading)])
        for axis, hi in ((0, 11.5), (1, 7.5)):
            over = (pos[:, axis] < 0.5) | (pos[:, axis] > hi)
            pos[:, axis] = np.clip(pos[:, axis], 0.5, hi)
            heading[over] += np.pi
        truth[k] = pos
    d2 = np.sum((truth[..., None, :] - GW[None, None, :, :2]) ** 2, axis=-1) + (GW[:, 2] - 1.0) ** 2
    rssi = -59.0 - 10.0 * np.log10(d2) + rng.normal(0, SIGMA_DB, d2.shape)
    return truth, rssi


SMOOTHERS = FixedLagGridSmoother | FixedLagKalmanSmoother | FixedLagParticleSmoother


def run(tracker: GridFilter | KalmanTracker | ParticleFilter, rssi: np.ndarray) -> tuple[np.ndarray, Smoothed]:
    """Step a tracker through every row; the filter's estimates (steps, devices, 2) and,
    for a smoother, everything it released (finish included)."""
    steps, devices, _ = rssi.shape
    dev = np.arange(devices, dtype=np.int32)
    motion = np.full(devices, 1, np.int8)
    tx = np.full(devices, -59.0)
    filt = np.empty((steps, devices, 2))
    released = []
    for k in range(steps):
        single = radio_map_localize(rssi[k], MAP, tx)
        est = tracker.step(float(k), dev, rssi[k], single, motion, tx)
        filt[k] = np.column_stack([est.x, est.y])
        if isinstance(tracker, SMOOTHERS):
            released.append(tracker.smoothed())
    if isinstance(tracker, SMOOTHERS):
        released.append(tracker.finish())
    return filt, Smoothed.concat(released)


def as_grid(done: Smoothed, steps: int, devices: int) -> np.ndarray:
    out = np.full((steps, devices, 2), np.nan)
    out[np.rint(done.t).astype(int), done.device] = np.column_stack([done.est.x, done.est.y])
    return out


def make(kind: str, lag: float, seed: int = 0) -> GridFilter | KalmanTracker | ParticleFilter:
    if kind == "hmm":
        return FixedLagGridSmoother(MAP, PLAN, step_s=1.0, speed_mps=1.0, lag_s=lag)
    if kind == "particle":
        return FixedLagParticleSmoother(MAP, PLAN, seed=seed, lag_s=lag, step_s=1.0)
    return FixedLagKalmanSmoother(bounds=BOUNDS, lag_s=lag, step_s=1.0)


def plain(kind: str, seed: int = 0) -> GridFilter | KalmanTracker | ParticleFilter:
    if kind == "hmm":
        return GridFilter(MAP, PLAN, step_s=1.0, speed_mps=1.0)
    if kind == "particle":
        return ParticleFilter(MAP, PLAN, seed=seed)
    return KalmanTracker(bounds=BOUNDS)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["hmm", "kalman", "particle"]))
def test_at_lag_zero_the_smoother_is_the_filter(seed, kind):
    _, rssi = walk(seed, 12)
    filt, _ = run(plain(kind, seed), rssi)
    own_filter, done = run(make(kind, 0.0, seed), rssi)
    np.testing.assert_allclose(own_filter, filt, atol=1e-9)  # the smoother's filter is untouched
    np.testing.assert_allclose(as_grid(done, 12, 2), filt, atol=1e-4)  # float32 posteriors


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["hmm", "kalman", "particle"]),
       lag=st.sampled_from([1.0, 2.0, 3.0]))
def test_every_fix_time_leaves_once_and_never_uses_readings_past_its_lag(seed, kind, lag):
    steps = 10
    _, rssi = walk(seed, steps)
    _, done = run(make(kind, lag), rssi)
    keys = np.rint(done.t).astype(int) * 2 + done.device
    assert sorted(keys) == list(range(steps * 2))  # each (time, device) exactly once
    assert np.all(np.isfinite(done.est.r90)) and np.all(done.est.r90 > 0)
    assert np.all((done.est.x >= BOUNDS[0]) & (done.est.x <= BOUNDS[2]))
    assert np.all((done.est.y >= BOUNDS[1]) & (done.est.y <= BOUNDS[3]))
    # Readings after t + lag change nothing at t: the estimate is final when it leaves.
    cut = 4
    other = rssi.copy()
    after = slice(cut + int(lag) + 1, None)
    other[after] += np.random.default_rng(seed + 1).normal(0, 8.0, other[after].shape)
    _, done2 = run(make(kind, lag), other)
    a, b = as_grid(done, steps, 2), as_grid(done2, steps, 2)
    np.testing.assert_allclose(a[: cut + 1], b[: cut + 1], atol=1e-9)
    assert not np.allclose(a[cut + int(lag) + 2:], b[cut + int(lag) + 2:])


def test_smoothed_posterior_is_normalised():
    _, rssi = walk(3, 8, devices=3)
    smoother = FixedLagGridSmoother(MAP, PLAN, step_s=1.0, speed_mps=1.0, lag_s=3.0)
    seen = []
    original = smoother._estimate

    def spy(post: np.ndarray, n_gateways: np.ndarray) -> Estimates:
        seen.append(post)
        return original(post, n_gateways)

    smoother._estimate = spy  # type: ignore[method-assign]
    run(smoother, rssi)
    rows = np.vstack(seen)
    assert rows.shape[1] == len(smoother.cells)
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(rows >= 0)


@pytest.mark.parametrize("kind", ["hmm", "kalman", "particle"])
def test_smoother_does_not_do_worse_than_the_filter_on_known_walks(kind):
    """Seeded walks with known truth: the mean error of the lag-2 s smoother is at most
    the filter's (it is lower: the readings ahead say where a moving tag went)."""
    filt_err, smooth_err = [], []
    for seed in range(6):
        truth, rssi = walk(100 + seed, 40, devices=3)
        filt, done = run(make(kind, 2.0), rssi)
        smooth = as_grid(done, 40, 3)
        filt_err.append(np.linalg.norm(filt - truth, axis=-1).mean())
        smooth_err.append(np.linalg.norm(smooth - truth, axis=-1).mean())
    assert np.mean(smooth_err) < np.mean(filt_err)
    assert np.mean(smooth_err) < 0.97 * np.mean(filt_err)


def sightings(rssi: np.ndarray) -> np.ndarray:
    steps, devices, gws = rssi.shape
    k, d, g = np.meshgrid(np.arange(steps), np.arange(devices), np.arange(gws), indexing="ij")
    rows = np.zeros(k.size, SIGHTING_DTYPE)
    rows["t"] = k.ravel() + 0.5
    rows["device"], rows["gateway"] = d.ravel(), g.ravel()
    rows["rssi"] = rssi.ravel()
    rows["seq"] = k.ravel()
    rows["battery"] = rows["motion"] = -1
    rows["channel"] = 37
    return rows


@pytest.mark.parametrize("tracker", ["hmm", "kalman", "particle"])
def test_engine_holds_a_smoothed_fix_until_its_lag_has_passed(tracker):
    _, rssi = walk(5, 20)
    gateways = GatewayInfo(tuple(f"g{i}" for i in range(len(GW))), GW)
    cfg = EngineConfig(gateways=gateways, zones=ZoneIndex.from_points([]), bounds=BOUNDS, window_s=1.0,
                       step_s=1.0, allowed_lateness_s=0.0, localizer="radio-map", tracker=tracker,
                       radio_map=MAP, floor_plan=PLAN, tracker_speed_mps=1.0)
    rows = sightings(rssi)
    plain, lagged = Engine(cfg), Engine(EngineConfig(**{**cfg.__dict__, "smoother_lag_s": 3.0}))
    out_plain: list[np.ndarray] = []
    out_lag: list[np.ndarray] = []
    for k in range(20):
        sel = rows[(rows["t"] >= k) & (rows["t"] < k + 1)]
        for eng, out in ((plain, out_plain), (lagged, out_lag)):
            eng.ingest(sel)
            out.append(eng.advance())
        # Every fix the smoother released is at least its lag older than the newest window.
        newest = max((float(f["t"].max()) for f in out_plain if len(f)), default=0.0)
        assert all(float(f["t"].max()) <= newest - 3.0 + 1e-9 for f in out_lag if len(f))
    out_plain.append(plain.flush(21.0))
    out_lag.append(lagged.flush(21.0))
    a, b = np.concatenate(out_plain), np.concatenate(out_lag)
    assert len(a) == len(b) == 40
    key = lambda f: np.lexsort((f["device"], f["t"]))  # noqa: E731
    a, b = a[key(a)], b[key(b)]
    np.testing.assert_array_equal(a["t"], b["t"])
    np.testing.assert_array_equal(a["device"], b["device"])
    assert not np.allclose(a["x"], b["x"])  # smoothed, not the filter's
    assert np.all(b["r90"] > 0)
    assert lagged.state.t[0] == plain.state.t[0] == 20.0  # the flush released the last ones


def test_a_scenario_asks_for_a_smoother_only_with_a_tracker_that_has_one():
    from pydantic import ValidationError

    from twin.scenario import EngineSettings

    assert EngineSettings().smoother_lag_s == 0.0  # defaults: the filter, as before
    assert "smoother_lag_s" not in EngineSettings().model_dump()  # report hashes unchanged
    lagged = EngineSettings(tracker="hmm", smoother_lag_s=2.0)
    assert lagged.model_dump()["smoother_lag_s"] == 2.0
    assert EngineSettings.model_validate(lagged.model_dump()) == lagged
    assert EngineSettings(tracker="particle", smoother_lag_s=2.0).smoother_lag_s == 2.0
    with pytest.raises(ValidationError, match="smoother_lag_s needs tracker kalman, hmm or particle"):
        EngineSettings(tracker="none", smoother_lag_s=2.0)
    with pytest.raises(ValueError, match="smoother_lag_s"):
        EngineConfig(gateways=GatewayInfo(("g",), GW[:1]), zones=ZoneIndex.from_points([]), bounds=BOUNDS,
                     tracker="none", smoother_lag_s=1.0)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(2, 15))
def test_kalman_smoother_over_the_whole_track_is_the_textbook_rts(seed, steps):
    """With a lag longer than the track, every estimate is the fixed-interval RTS
    smoother (Särkkä 2013, theorem 8.2), written out here step by step."""
    from engine.localize import CHI2_2DOF_90

    rng = np.random.default_rng(seed)
    truth = np.column_stack([2 + 0.4 * np.arange(steps), 3 + 0.2 * np.arange(steps)])
    z = truth + rng.normal(0, 0.3, truth.shape)  # never gated: the textbook has no gate
    r90 = 1.5
    smoother = FixedLagKalmanSmoother(lag_s=100.0, step_s=1.0)
    one = np.zeros(1, np.int32)
    for k in range(steps):
        fix = Estimates(z[k : k + 1, 0], z[k : k + 1, 1], np.full(1, r90), np.full(1, 4, np.int32),
                        np.zeros(1, np.int8))
        smoother.step(float(k), one, np.zeros((1, 1)), fix, np.ones(1, np.int8), np.zeros(1))
    done = smoother.finish()
    got = np.column_stack([done.est.x, done.est.y])[np.argsort(done.t)]

    r = r90**2 / CHI2_2DOF_90
    f = np.eye(4)
    f[0, 2] = f[1, 3] = 1.0
    q = 0.5**2 * np.array([[1 / 3, 0, 1 / 2, 0], [0, 1 / 3, 0, 1 / 2], [1 / 2, 0, 1, 0], [0, 1 / 2, 0, 1]])
    h = np.eye(2, 4)
    xs, ps = [np.r_[z[0], 0, 0]], [np.diag([r, r, 1.0, 1.0])]
    xp, pp = [np.zeros(4)], [np.eye(4)]  # index 0 has no prediction
    for k in range(1, steps):
        x_pred, p_pred = f @ xs[-1], f @ ps[-1] @ f.T + q
        gain = p_pred @ h.T @ np.linalg.inv(h @ p_pred @ h.T + r * np.eye(2))
        xs.append(x_pred + gain @ (z[k] - h @ x_pred))
        ps.append(p_pred - gain @ h @ p_pred)
        xp.append(x_pred)
        pp.append(p_pred)
    sm = [xs[-1]]
    p_s = ps[-1]
    for k in range(steps - 2, -1, -1):
        c = ps[k] @ f.T @ np.linalg.inv(pp[k + 1])
        sm.insert(0, xs[k] + c @ (sm[0] - xp[k + 1]))
        p_s = ps[k] + c @ (p_s - pp[k + 1]) @ c.T
    np.testing.assert_allclose(got, np.array(sm)[:, :2], atol=1e-6)


def test_a_gated_outlier_does_not_drag_the_smoothed_past():
    """A fix 6 m off the track is gated by the filter; the smoother does not carry it
    back onto the positions before it."""
    steps = 12
    truth = np.column_stack([2 + 0.3 * np.arange(steps), np.full(steps, 4.0)])
    z = truth + np.random.default_rng(1).normal(0, 0.2, truth.shape)
    z[8] = [truth[8, 0], truth[8, 1] + 6.0]
    smoother = FixedLagKalmanSmoother(lag_s=3.0, step_s=1.0)
    one = np.zeros(1, np.int32)
    for k in range(steps):
        fix = Estimates(z[k : k + 1, 0], z[k : k + 1, 1], np.full(1, 1.0), np.full(1, 4, np.int32),
                        np.zeros(1, np.int8))
        smoother.step(float(k), one, np.zeros((1, 1)), fix, np.ones(1, np.int8), np.zeros(1))
    assert smoother.gated[0] == 0  # one gated fix, then back on track
    done = smoother.finish()
    got = np.column_stack([done.est.x, done.est.y])[np.argsort(done.t)]
    err = np.linalg.norm(got - truth, axis=1)
    assert err[:8].max() < 0.6, err


@pytest.mark.parametrize("tracker", ["hmm", "particle"])
def test_a_tracking_state_round_trip_replays_the_smoother_exactly(tracker):
    """Engine.tracking_state / set_tracking_state (the backbone's rewind) cover a
    smoother's ring and the fixes the engine holds for it."""
    _, rssi = walk(9, 16)
    gateways = GatewayInfo(tuple(f"g{i}" for i in range(len(GW))), GW)
    cfg = EngineConfig(gateways=gateways, zones=ZoneIndex.from_points([]), bounds=BOUNDS, window_s=1.0,
                       step_s=1.0, allowed_lateness_s=0.0, localizer="radio-map", tracker=tracker,
                       radio_map=MAP, floor_plan=PLAN, tracker_speed_mps=1.0, smoother_lag_s=3.0)
    rows = sightings(rssi)
    eng = Engine(cfg)
    eng.ingest(rows[rows["t"] < 8])
    eng.advance()
    saved = eng.tracking_state()
    eng.ingest(rows[rows["t"] >= 8])
    first = eng.advance()
    eng.set_tracking_state(saved)
    again = eng.localize_windows(rows[rows["t"] >= 7], 8, 15)
    assert len(first) and len(again) == len(first)
    np.testing.assert_allclose(again["x"], first["x"])
    np.testing.assert_array_equal(again["t"], first["t"])
