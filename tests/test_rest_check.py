"""misplaced's rest check (engine/rules/rest.py): a resting tag's link means over its whole
rest, censored where adverts went unheard, placed on the radio map, veto an alarm whose
fixes wander over a wall; a tag really inside still fires."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.contract import sightings_from_columns
from engine.rules import RuleContext, RuleEngine
from engine.rules.rest import RestMap
from tests.test_rules import ZONES, fixes, rules_with

OUTLINE = shapely.box(0, 0, 26, 30)
OFFICE = shapely.box(0, 20, 10, 30)  # ZONES' office, in the outline's north-west corner
GW_XY = np.array([[5.0, 5.0], [15.0, 15.0], [24.0, 10.0], [5.0, 27.0], [20.0, 26.0]])
GW_Z, TAG_Z, TX = 3.0, 1.0, -59.0
WALL_DB = 6.0  # the office's walls, for every link that crosses one
SENS = -95.0
OFFSETS = np.array([-3.0, -1.0, 4.0])
# Rayleigh fading in dB: power ~ Exp(1), its quantile function at even probabilities
RAYLEIGH_DB = 10 * np.log10(-np.log1p(-(np.arange(2000) + 0.5) / 2000))


def mean_rssi(xy: np.ndarray) -> np.ndarray:
    """(points, gateways) log-distance mean (exponent 2) less the office wall's loss."""
    d2 = ((xy[:, None, :] - GW_XY[None]) ** 2).sum(axis=2) + (GW_Z - TAG_Z) ** 2
    inside = shapely.contains_xy(OFFICE, xy[:, 0], xy[:, 1])
    gw_inside = shapely.contains_xy(OFFICE, GW_XY[:, 0], GW_XY[:, 1])
    return TX - 10 * np.log10(d2) - WALL_DB * (inside[:, None] != gw_inside[None, :])


def rest_map(n_devices: int = 2) -> RestMap:
    g = np.arange(0.25, 30, 0.5)
    cells = np.array([(x, y) for y in g for x in g if x < 26], float)
    return RestMap(
        cell_xy=cells, mean_dbm=mean_rssi(cells).astype(np.float32), tx_ref_dbm=TX,
        device_tx_dbm=np.full(n_devices, TX), sensitivity_dbm=np.full(len(GW_XY), SENS),
        fading_quantiles_db=RAYLEIGH_DB, channel_offset_db=OFFSETS,
    )


def context(rest: RestMap | None) -> RuleContext:
    return RuleContext(
        zones=ZONES, device_ids=["tag-0", "tag-1"], device_class=np.array([0, 0], np.int32),
        class_names=("pallet",), class_interval_s=np.array([1.0]),
        gateway_ids=tuple(f"g{i}" for i in range(len(GW_XY))), gateway_xy=GW_XY,
        site_outline=OUTLINE, rest_map=rest,
    )


def heard(xy: tuple[float, float], t0: float, t1: float, seed: int, motion: int = 0, device: int = 0) -> np.ndarray:
    """What the gateways report of a tag at ``xy`` advertising once a second: a channel
    per reading, its offset, Rayleigh fading, 1 dB steps, nothing below sensitivity."""
    rng = np.random.default_rng(seed)
    t = np.arange(t0, t1, 1.0)
    mean = mean_rssi(np.array([xy]))[0]
    ch = rng.integers(0, 3, size=(len(t), len(GW_XY)))
    reading = np.round(mean[None, :] + OFFSETS[ch] + rng.choice(RAYLEIGH_DB, size=ch.shape))
    ok = reading >= SENS
    k, g = np.nonzero(ok)
    return sightings_from_columns(
        t=t[k] + 0.01 * g, gateway=g, device=np.full(len(k), device), rssi=reading[ok],
        channel=37 + ch[ok], seq=k, motion=np.full(len(k), motion),
    )


def drive(
    eng: RuleEngine, sightings: np.ndarray, track: list[tuple[float, float, int]], r90: float = 6.4, t0: int = 0,
) -> list:
    """One fix a second from t0 + 1 (x, y, motion), the sightings of each second before it."""
    out = []
    for i, (x, y, m) in enumerate(track, start=t0 + 1):
        out += eng.observe_sightings(sightings[(sightings["t"] >= i - 1) & (sightings["t"] < i)])
        out += eng.process_fixes(fixes(float(i), [0], [x], [y], r90=r90, motion=m))
    return [e for e in out if e.rule == "misplaced"]


CARRY = [(12.0 - i * 0.7, 19.0 + i * 0.6, 1) for i in range(10)]  # walked in from the store
REST_FIX = (5.0, 20.9, 0)  # 0.9 m inside the wall, r90 6.4 m: P(office) about 0.6


def carried_and_resting(at: tuple[float, float], seed: int, rest_s: int = 240) -> tuple[np.ndarray, list]:
    moving = heard((10.0, 21.0), 0, 10, seed, motion=1)
    still = heard(at, 10, 10 + rest_s, seed + 1)
    return np.concatenate([moving, still]), CARRY + [REST_FIX] * rest_s


def test_a_tag_resting_outside_the_wall_is_vetoed_and_one_inside_fires() -> None:
    """The quiet alarms' case: moving fixes inside, a resting fix 0.9 m inside the wall. The
    look alone fires either way; the rest check fires only for the tag that is inside."""
    outside, track = carried_and_resting((5.0, 19.3), seed=1)
    assert len(drive(RuleEngine(rules_with(), context(None)), outside, track)) == 1
    assert drive(RuleEngine(rules_with(), context(rest_map())), outside, track) == []
    inside, track = carried_and_resting((5.0, 21.5), seed=3)
    fired = drive(RuleEngine(rules_with(), context(rest_map())), inside, track)
    assert len(fired) == 1
    assert fired[0].evidence["p_forbidden_rest"] >= 0.8
    assert 10 + 60 <= fired[0].t <= 10 + 75  # as soon as the look alone would


def test_the_check_is_a_setting_and_needs_enough_adverts() -> None:
    outside, track = carried_and_resting((5.0, 19.3), seed=1)
    off = rules_with(misplaced={"rest_check": False})
    assert len(drive(RuleEngine(off, context(rest_map())), outside, track)) == 1
    few = rules_with(misplaced={"rest_min_adverts": 100_000})
    fired = drive(RuleEngine(few, context(rest_map())), outside, track)
    assert len(fired) == 1 and "p_forbidden_rest" not in fired[0].evidence


def test_motion_starts_the_rest_again() -> None:
    """A tag heard resting deep in the office for 400 s, then carried out and set down by the
    wall outside: only the second rest counts. Mixed with the first, its link means would
    still place it in the office."""
    before = heard((5.0, 26.0), 0, 400, seed=5)
    moving = heard((10.0, 21.0), 400, 410, seed=6, motion=1)
    after = heard((5.0, 19.3), 410, 560, seed=7)
    eng = RuleEngine(rules_with(misplaced={"alone_threshold": 0.99}), context(rest_map()))
    first = drive(eng, before, [(5.0, 26.0, 0)] * 400)
    assert first == []  # no carry, and the look stays below 0.99
    assert eng._rest_probability(0, 0) >= 0.8
    assert drive(eng, np.concatenate([moving, after]), CARRY + [REST_FIX] * 150, t0=400) == []
    assert eng._rest_probability(0, 0) < 0.2


def _readings(mu: float, n: int, seed: int) -> tuple[float, float]:
    """Heard count and sum of RSSI less the channel's offset of ``n`` adverts of a link."""
    rng = np.random.default_rng(seed)
    ch = rng.integers(0, 3, size=n)
    r = np.round(mu + OFFSETS[ch] + rng.choice(RAYLEIGH_DB, size=n))
    ok = r >= SENS
    return float(ok.sum()), float((r - OFFSETS[ch])[ok].sum())


@settings(max_examples=40, deadline=None)
@given(st.floats(-99.0, -55.0), st.integers(60, 400), st.integers(0, 2**31))
def test_link_means_recover_the_mean_within_their_own_uncertainty(mu: float, n: int, seed: int) -> None:
    n_heard, total = _readings(mu, n, seed)
    if n_heard == 0:
        return
    est, var = rest_map().link_means(np.array([n_heard]), np.array([total]), np.array([float(n)]), np.array([0]))
    assert np.isfinite(est[0]) and var[0] > 0
    assert abs(est[0] - mu) <= 4.5 * np.sqrt(var[0]) + 0.5


def test_censoring_removes_the_heard_only_bias_of_a_weak_link() -> None:
    """A link 2 dB below sensitivity is heard on lucky fades only: the heard readings' mean
    sits several dB above its mean; the censored estimate does not."""
    mu, n = -97.0, 20_000
    n_heard, total = _readings(mu, n, seed=11)
    est, _ = rest_map().link_means(np.array([n_heard]), np.array([total]), np.array([float(n)]), np.array([0]))
    heard_only = total / n_heard + 2.51  # Rayleigh's mean in dB is 2.51 dB below its mean power
    assert heard_only - mu > 3.0
    assert est[0] == pytest.approx(mu, abs=0.5)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2_599))
def test_exact_link_means_put_the_posterior_mode_on_the_true_cell(cell: int) -> None:
    rm = rest_map()
    cell = cell % len(rm.cell_xy)
    w = rm.cell_posterior(rm.mean_dbm[cell].astype(float), np.full(len(GW_XY), 0.1), 0)
    assert w.sum() == pytest.approx(1.0)
    assert np.argmax(w) == cell
