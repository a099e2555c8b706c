"""engine.eventtime: per-gateway watermarks, batch dedup and revised windows (pure, no IO)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.contract import GatewayInfo, sightings_from_columns
from engine.eventtime import (
    BatchDedup,
    GatewayWatermarks,
    RevisingWindows,
    parse_snapshot,
    snapshot_bytes,
)
from engine.pipeline import Engine, EngineConfig
from siteplan.zones import ZoneIndex

GW_XYZ = np.array([[0, 0, 1.0], [12, 0, 1.0], [12, 12, 1.0], [0, 12, 1.0]])
T0 = 1_700_000_000.0


def engine() -> Engine:
    zones = ZoneIndex.from_points([("all", "storage", [(-1, -1), (13, -1), (13, 13), (-1, 13)])])
    cfg = EngineConfig(gateways=GatewayInfo(("a", "b", "c", "d"), GW_XYZ), zones=zones, bounds=(0, 0, 12, 12))
    return Engine(cfg)


def traffic(seconds: int, devices: int = 3, seed: int = 1):
    """Every gateway hears every device 4 times a second, with noise (absolute Unix times)."""
    rng = np.random.default_rng(seed)
    n = seconds * 4 * devices * 4
    t = T0 + np.repeat(np.arange(seconds * 4) / 4.0, devices * 4) + rng.uniform(0, 0.2, n)
    gw = np.tile(np.repeat(np.arange(4), devices), seconds * 4)
    dev = np.tile(np.arange(devices), seconds * 16)
    xy = np.array([[3, 3], [6, 9], [10, 2]])[dev]
    d = np.hypot(*(xy - GW_XYZ[gw, :2]).T) + 0.5
    rssi = -59 - 20 * np.log10(d) + rng.normal(0, 2, n)
    seq = np.tile(np.repeat(np.arange(seconds * 4), devices * 4), 1)[:n]
    return sightings_from_columns(t=t, gateway=gw, device=dev, rssi=rssi.astype(np.float32), channel=37, seq=seq)


def latest(fixes) -> dict[tuple[int, float], tuple[float, float, float]]:
    """(device, window end) -> position of its highest revision, as a consumer keeps it."""
    best: dict[tuple[int, float], tuple[int, tuple[float, float, float]]] = {}
    for f in fixes:
        key = (int(f["device"]), float(f["t"]))
        if key not in best or f["revision"] >= best[key][0]:
            best[key] = (int(f["revision"]), (float(f["x"]), float(f["y"]), float(f["r90"])))
    return {k: v for k, (_, v) in best.items()}


def run_in_order(rows, chunk_s: float, watermark_of) -> list:
    w = RevisingWindows(engine(), horizon_s=120)
    out = []
    for lo in np.arange(T0, T0 + 40, chunk_s):
        part = rows[(rows["t"] >= lo) & (rows["t"] < lo + chunk_s)]
        assert not w.add(part).any()
        out.append(w.advance(watermark_of(lo + chunk_s)))
    out.append(w.advance(T0 + 1000))
    return out


def test_late_gateway_revises_windows_to_the_fault_free_answer():
    rows = traffic(30)
    clean = latest(np.concatenate(run_in_order(rows, 1.0, lambda t: t)))
    # Gateway 3 is cut off for 10 s, then its spool replays; the others keep closing windows.
    w = RevisingWindows(engine(), horizon_s=120)
    held = rows[(rows["gateway"] == 3) & (rows["t"] >= T0 + 10) & (rows["t"] < T0 + 20)]
    rest = rows[~np.isin(np.arange(len(rows)), np.flatnonzero((rows["gateway"] == 3) & (rows["t"] >= T0 + 10)
                                                              & (rows["t"] < T0 + 20)))]
    out = []
    for lo in np.arange(T0, T0 + 30, 1.0):
        w.add(rest[(rest["t"] >= lo) & (rest["t"] < lo + 1)])
        out.append(w.advance(lo + 1))
        if lo == T0 + 24:
            assert not w.add(held).any()
    out.append(w.advance(T0 + 1000))
    fixes = np.concatenate(out)
    revised = fixes[fixes["revision"] > 0]
    # Windows overlapping 10..20 s were published once without gateway 3, then revised.
    assert len(revised) > 0
    assert revised["t"].min() >= T0 + 10 and revised["t"].max() <= T0 + 24
    assert latest(fixes) == clean


@settings(max_examples=15, deadline=None)
@given(st.permutations(list(range(10))), st.floats(0.3, 3.0))
def test_latest_revision_does_not_depend_on_arrival_order(order, chunk_s):
    rows = traffic(10, devices=2, seed=3)
    pieces = np.array_split(rows, 10)
    clean = latest(np.concatenate(run_in_order(rows, 1.0, lambda t: t)))
    w = RevisingWindows(engine(), horizon_s=120)
    out = []
    for i in order:
        w.add(pieces[i])
        out.append(w.advance(float(pieces[i]["t"].max()) - chunk_s))
    out.append(w.advance(T0 + 1000))
    assert latest(np.concatenate(out)) == clean


def test_rows_older_than_the_horizon_are_returned_not_dropped():
    rows = traffic(5)
    w = RevisingWindows(engine(), horizon_s=10)
    w.add(rows)
    w.advance(T0 + 100)
    old = w.add(rows[:7])
    assert old.all()
    assert w.advance(T0 + 101).size == 0


def test_snapshot_round_trip_continues_identically():
    rows = traffic(12)
    a = RevisingWindows(engine(), horizon_s=60)
    a.add(rows[rows["t"] < T0 + 6])
    a.advance(T0 + 5)
    meta, snap = a.snapshot()
    b = RevisingWindows(engine(), horizon_s=60)
    m2, r2 = parse_snapshot(snapshot_bytes(meta, snap))
    b.restore(m2, r2)
    for w in (a, b):
        w.add(rows[rows["t"] >= T0 + 6])
        w.add(rows[rows["gateway"] == 1][:10])  # a late re-send of early rows
    fa, fb = a.advance(T0 + 100), b.advance(T0 + 100)
    assert fa.tobytes() == fb.tobytes()


def test_site_watermark_is_the_slowest_active_gateway_and_idle_ones_stop_holding_it():
    wm = GatewayWatermarks(idle_s=5, max_skew_s=30)
    wm.observe("a", T0 + 10, received=T0 + 10)
    wm.observe("b", T0 + 4, received=T0 + 10)
    assert wm.site_watermark(T0 + 10) == T0 + 4  # the first to drain does not decide
    wm.observe("a", T0 + 20, received=T0 + 20)
    assert wm.site_watermark(T0 + 20) == T0 + 20  # b silent for 10 s: idle
    wm.observe("b", T0 + 5, received=T0 + 21)  # b replays old data: no step back
    assert wm.site_watermark(T0 + 21) == T0 + 20
    assert wm.future(np.array([T0 + 100, T0 + 50, T0 + 1]), T0 + 21).tolist() == [True, False, False]
    again = GatewayWatermarks.from_json(wm.to_json())
    assert again == wm


def test_idle_clock_runs_on_the_receive_clock_only_while_every_gateway_is_idle():
    """Event times 7 days behind the receive clock (a gateway clock offset, a replay of old
    data): the idle clock counts from the newest sighting, not from the receive time."""
    wm = GatewayWatermarks(idle_s=5, max_skew_s=30)
    lag = 7 * 86400.0
    wm.observe("a", T0 + 10, received=T0 + lag + 11)
    wm.observe("b", T0 + 9, received=T0 + lag + 12)
    assert wm.idle_clock(T0 + lag + 16) == -np.inf  # b spoke 4 s ago
    assert wm.idle_clock(T0 + lag + 30) == T0 + 10 + 18  # the newest sighting, 18 s of silence on
    assert wm.site_watermark(T0 + lag + 30) == T0 + 10  # the site watermark does not follow it
    wm.observe("b", T0 + 29, received=T0 + lag + 31)
    assert wm.idle_clock(T0 + lag + 31) == -np.inf


def test_batch_dedup_repeats_epochs_and_seq_jumps():
    d = BatchDedup(remember=4)
    assert d.first_time("g", 1, 0)
    assert not d.first_time("g", 1, 0)
    assert d.first_time("g", 1, 2**62)  # a jump ...
    assert d.first_time("g", 1, 1)  # ... locks nobody out
    assert d.first_time("g", 2, 0)  # re-provisioned: new epoch, seq from 0
    for s in range(2, 7):
        assert d.first_time("g", 1, s)
    assert d.first_time("g", 1, 0)  # forgotten after `remember` newer ids
    again = BatchDedup.from_json(d.to_json())
    assert not again.first_time("g", 1, 6) and again.first_time("g", 1, 99)


def test_spans_of_windows_merge_neighbours_and_keep_distant_ones_apart():
    w = RevisingWindows(engine(), horizon_s=10)  # window 4 s, step 1 s, merge margin 1 s
    spans = w.spans([10, 11, 12, 40])
    assert spans.tolist() == [[5.0, 13.0], [35.0, 41.0]]
    assert w.spans([7]).tolist() == [[2.0, 8.0]]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.floats(0.25, 2.0))
def test_event_slices_fed_in_batches_equal_one_pass_over_every_row(seed, batches, step):
    """The cached steps of merged events, invalidated by each batch of rows (in any order, late
    ones included), equal the steps made from every row at once: a row only makes stale the
    steps whose margin-widened span holds it, and every such step is made again."""
    from engine.eventtime import MERGE_MARGIN_S, EventSlices
    from engine.ingest import canonical_order

    rng = np.random.default_rng(seed)
    n = 400
    # advertising events, each heard on up to 3 channels ms apart; half of them straddle a step boundary
    base = T0 + np.where(rng.random(n // 4) < 0.5, rng.uniform(0, 12, n // 4),
                         rng.integers(0, int(12 / step), n // 4) * step - rng.uniform(0, 0.004, n // 4))
    t = np.concatenate([base + k * 0.0015 for k in range(4)])
    rows = sightings_from_columns(t=t, gateway=np.tile(rng.integers(0, 4, n // 4), 4),
                                  device=np.tile(np.arange(n // 4) % 7, 4),
                                  rssi=rng.normal(-70, 5, n).astype(np.float32),
                                  channel=np.repeat([37, 38, 39, 37], n // 4),
                                  seq=np.tile(np.arange(n // 4), 4))
    # batches in time order, as gateways send them; a fifth of the rows arrive in a later batch
    part = np.minimum(((t - T0) / 12 * batches).astype(np.int64), batches - 1)
    late = rng.random(n) < 0.2
    part[late] = np.minimum(part[late] + rng.integers(2, 6, int(late.sum())), batches - 1)
    held = rows[:0]
    cache = EventSlices(step, MERGE_MARGIN_S)
    for b in range(batches):
        new = rows[part == b]
        held = np.concatenate([held, new])
        held = held[canonical_order(held)]
        cache.invalidate(new["t"])
        cache.between(held, T0 - 2, T0 + 14)  # every step made, as windows computed
    fresh = EventSlices(step, MERGE_MARGIN_S)
    for lo in np.arange(T0 - 2, T0 + 14, step):
        got, want = cache.between(held, lo, lo + step), fresh.between(held, lo, lo + step)
        assert got.tobytes() == want.tobytes()
