"""The sans-IO engine: ingest, windows, lateness, localization, state."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.contract import SIGHTING_DTYPE, UNKNOWN, GatewayInfo, IdTable, sightings_from_columns
from engine.ingest import IngestCounters, ingest
from engine.localize import POLISH_STEP_M, wls_localize
from engine.parallel import PartitionedEngine
from engine.pipeline import Engine, EngineConfig
from siteplan.zones import ZoneIndex

GW = np.array([[0, 0, 3], [20, 0, 3], [0, 20, 3], [20, 20, 3], [10, -2, 3]], dtype=float)
BOUNDS = (-5.0, -5.0, 25.0, 25.0)


def model_rssi(xy: np.ndarray, gw: np.ndarray = GW, p0: float = -59.0, n: float = 2.0) -> np.ndarray:
    d = np.sqrt(((xy[:, None, :] - gw[None, :, :2]) ** 2).sum(-1) + (gw[None, :, 2] - 1.0) ** 2)
    return p0 - 10 * n * np.log10(d)


def test_noise_free_rssi_gives_the_true_position_to_a_centimetre() -> None:
    pts = np.random.default_rng(0).uniform(0, 20, (500, 2))
    est = wls_localize(model_rssi(pts), GW, np.full(500, -59.0), 2.0, 4.0, 1.0, BOUNDS)
    assert np.max(np.hypot(est.x - pts[:, 0], est.y - pts[:, 1])) < 0.01


def _wls_cost(rssi: np.ndarray, gw: np.ndarray, x: float, y: float) -> float:
    """The ML localizer's cost at (x, y) in float64 (P0 -59 dBm, n = 2, tag at 1 m)."""
    d = np.sqrt((x - gw[:, 0]) ** 2 + (y - gw[:, 1]) ** 2 + (gw[:, 2] - 1.0) ** 2)
    return float(((rssi - (-59.0 - 20.0 * np.log10(d))) ** 2).sum())


def _assert_same_minimum(rssi: np.ndarray, gw: np.ndarray, a: tuple[float, float], b: tuple[float, float],
                         shift: tuple[float, float], tol_m: float) -> None:
    """``b`` (found with the gateways ``gw`` reordered or moved by ``shift``) is the
    same answer as ``a``: within ``tol_m``, where the float64 polish finished the row; or,
    where the cost is flat (a valley whose Hessian is nearly singular, or a floor bound
    along which the float32 loop takes Gauss-Newton steps until they move under 1 mm and
    the polish's Newton step does not apply), as converged as the loop's documented
    settle rule makes it: an equally good cost (1e-4 relative) within POLISH_STEP_M."""
    bx, by = b[0] - shift[0], b[1] - shift[1]
    if abs(a[0] - bx) < tol_m and abs(a[1] - by) < tol_m:
        return
    cost_a, cost_b = _wls_cost(rssi, gw, *a), _wls_cost(rssi, gw, bx, by)
    assert abs(cost_a - cost_b) <= 1e-4 * cost_a, (a, b, cost_a, cost_b)
    assert np.hypot(a[0] - bx, a[1] - by) < POLISH_STEP_M, (a, b)


@settings(max_examples=40, deadline=None)
@given(st.floats(1, 19), st.floats(1, 19), st.permutations(range(5)), st.floats(-50, 50), st.floats(-50, 50))
# Found by random runs (1 in about 1,000 draws): a flat interior valley (0.16 mm apart
# under a permutation) and a row on the x bound (1.97 mm apart under a translation).
@example(12.32266947502009, 13.922691681929862, [2, 4, 0, 1, 3], 44.0061082907163, -47.16373620784026)
@example(5.690093640921944, 17.454319262016558, [1, 0, 4, 3, 2], -1.330803939264399, 12.43763394384495)
def test_localizer_ignores_gateway_order_and_follows_translation(x, y, perm, dx, dy) -> None:
    pt = np.array([[x, y]])
    noise = np.random.default_rng(int(x * 1000)).normal(0, 3, (1, 5))
    rssi = model_rssi(pt) + noise
    base = wls_localize(rssi, GW, np.array([-59.0]), 2.0, 4.0, 1.0, BOUNDS)
    p = list(perm)
    permuted = wls_localize(rssi[:, p], GW[p], np.array([-59.0]), 2.0, 4.0, 1.0, BOUNDS)
    at = (float(base.x[0]), float(base.y[0]))
    # The localizer iterates in float32: another summation order may move the last bit
    # (2e-6 m at 12 m), so equal means within 0.1 mm where the polish finished the row.
    _assert_same_minimum(rssi[0], GW, at, (float(permuted.x[0]), float(permuted.y[0])), (0.0, 0.0), 1e-4)
    shift = np.array([dx, dy, 0.0])
    moved = wls_localize(
        rssi,
        GW + shift,
        np.array([-59.0]),
        2.0,
        4.0,
        1.0,
        (BOUNDS[0] + dx, BOUNDS[1] + dy, BOUNDS[2] + dx, BOUNDS[3] + dy),
    )
    _assert_same_minimum(rssi[0], GW, at, (float(moved.x[0]), float(moved.y[0])), (dx, dy), 1e-3)


def test_ingest_rejects_with_reasons_and_keeps_the_rest() -> None:
    batch = sightings_from_columns(
        t=np.array([1.0, np.nan, 2.0, 3.0, 4.0, 0.5]),
        gateway=np.array([0, 0, 9, 1, 1, 2]),
        device=np.array([0, 0, 0, -3, 1, 1]),
        rssi=np.array([-70, -70, -70, -70, 55, -60]),
        channel=37,
    )
    counters = IngestCounters()
    out = ingest(batch, n_gateways=5, counters=counters)
    assert counters.rejected == {
        "time is not finite": 1,
        "unknown gateway": 1,
        "negative device code": 1,
        "rssi outside -130..20 dBm": 1,
    }
    np.testing.assert_array_equal(out["t"], [0.5, 1.0])  # sorted by event time
    assert counters.received == 6 and counters.accepted == 2


def test_ingest_merges_channels_of_one_event_and_drops_redeliveries() -> None:
    batch = sightings_from_columns(
        t=np.array([1.0, 1.0004, 1.0008, 1.0, 2.0, 2.0]),
        gateway=np.array([0, 0, 0, 0, 0, 0]),
        device=np.array([7, 7, 7, 7, 7, 7]),
        rssi=np.array([-60, -62, -70, -60, -50, -51]),
        channel=np.array([37, 38, 39, 37, 37, 37]),
        seq=np.array([5, 5, 5, 5, UNKNOWN, UNKNOWN]),
    )
    counters = IngestCounters()
    out = ingest(batch, 5, counters)
    assert counters.duplicates == 1 and counters.merged_channels == 2
    merged = out[out["seq"] == 5]
    assert len(merged) == 1 and merged["t"][0] == 1.0 and merged["channel"][0] == 0
    assert merged["rssi"][0] == pytest.approx(-64.0)
    assert len(out[out["seq"] == UNKNOWN]) == 2  # no counter: cannot merge, both kept


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 100),
            st.integers(0, 4),
            st.integers(0, 3),
            st.integers(-100, -40),
            st.sampled_from([37, 38, 39]),
            st.integers(0, 5),
        ),
        min_size=1,
        max_size=60,
    ),
    st.randoms(),
)
def test_ingest_output_does_not_depend_on_arrival_order(rows, rnd) -> None:
    arr = np.array(rows)
    cols = {
        "t": arr[:, 0],
        "gateway": arr[:, 1],
        "device": arr[:, 2],
        "rssi": arr[:, 3],
        "channel": arr[:, 4],
        "seq": arr[:, 5],
    }
    a = ingest(sightings_from_columns(**cols), 5, IngestCounters())
    perm = rnd.sample(range(len(arr)), len(arr))
    b = ingest(sightings_from_columns(**{k: v[perm] for k, v in cols.items()}), 5, IngestCounters())
    key = lambda s: np.sort(s, order=["t", "gateway", "device", "seq", "channel"])  # noqa: E731
    np.testing.assert_allclose(key(a)["rssi"], key(b)["rssi"], atol=1e-4)
    assert len(a) == len(b)


def _engine(**kw: object) -> Engine:
    zones = ZoneIndex.from_points([("west", "storage", [(-5, -5), (10, -5), (10, 25), (-5, 25)])])
    cfg = EngineConfig(gateways=GatewayInfo(tuple(f"g{i}" for i in range(5)), GW), zones=zones, bounds=BOUNDS, **kw)
    return Engine(cfg)


def _stream(xy: np.ndarray, t0: float, t1: float, rate_hz: float = 4.0) -> np.ndarray:
    """Noise-free sightings of devices at fixed positions, every gateway, 4 events a second."""
    times = np.arange(t0, t1, 1 / rate_hz)
    rssi = model_rssi(xy)
    dev, gw, k = np.meshgrid(np.arange(len(xy)), np.arange(len(GW)), np.arange(len(times)), indexing="ij")
    out = np.zeros(dev.size, SIGHTING_DTYPE)
    out["t"], out["device"], out["gateway"] = times[k.ravel()], dev.ravel(), gw.ravel()
    out["rssi"], out["channel"], out["battery"], out["motion"] = rssi[dev.ravel(), gw.ravel()], 37, 90, 0
    out["seq"] = k.ravel()
    return out[np.argsort(out["t"], kind="stable")]


def test_engine_windows_locate_and_keep_state() -> None:
    xy = np.array([[3.0, 4.0], [15.0, 12.0]])
    eng = _engine(window_s=2.0, step_s=1.0, allowed_lateness_s=1.0)
    eng.ingest(_stream(xy, 0.0, 10.0))
    fixes = eng.advance()
    # Watermark 9.75 s, lateness 1 s: windows ending at 1..8 s are closed.
    assert sorted(set(fixes["t"])) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    last = fixes[fixes["t"] == 8.0]
    np.testing.assert_allclose(np.c_[last["x"], last["y"]], xy, atol=0.01)
    np.testing.assert_array_equal(last["zone"], [0, -1])
    assert eng.state.zone.tolist() == [0, -1] and eng.state.battery.tolist() == [90, 90]
    assert eng.state.t.tolist() == [8.0, 8.0]


def test_late_sightings_are_counted_not_lost_silently() -> None:
    eng = _engine(window_s=2.0, step_s=1.0, allowed_lateness_s=0.0)
    xy = np.array([[5.0, 5.0]])
    eng.ingest(_stream(xy, 0.0, 10.0))
    eng.advance()
    late = _stream(xy, 2.0, 3.0)
    eng.ingest(late)
    assert eng.counters.rejected["late: window already closed"] == len(late)


def test_chunked_feeding_equals_feeding_everything_at_once() -> None:
    xy = np.random.default_rng(4).uniform(0, 20, (6, 2))
    stream = _stream(xy, 0.0, 30.0)
    stream["rssi"] += np.random.default_rng(5).normal(0, 4, len(stream)).astype(np.float32)
    whole = _engine()
    whole.ingest(stream)
    all_at_once = whole.flush(30.0)
    chunked = _engine()
    parts = []
    for lo in range(0, 30, 5):
        chunked.ingest(stream[(stream["t"] >= lo) & (stream["t"] < lo + 5)])
        parts.append(chunked.advance())
    parts.append(chunked.flush(30.0))
    got = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(got, order=["t", "device"]), np.sort(all_at_once, order=["t", "device"]))


def test_engine_rejects_foreign_dtypes() -> None:
    with pytest.raises(TypeError, match="SIGHTING_DTYPE"):
        _engine().ingest(np.zeros(3))


def test_id_table_codes_are_stable() -> None:
    table = IdTable(["a"])
    codes = table.codes(np.array(["b", "a", "b", "c"]))
    assert codes.tolist() == [1, 0, 1, 2]
    assert table.lookup(codes).tolist() == ["b", "a", "b", "c"]
    assert table.codes(["z"], register=False).tolist() == [UNKNOWN]


def test_channel_copies_split_across_batches_still_merge() -> None:
    eng = _engine(window_s=2.0, step_s=1.0, allowed_lateness_s=0.0)
    first = sightings_from_columns(
        t=np.array([1.0, 1.0004, 2.5]),
        gateway=np.array([0, 0, 1]),
        device=np.array([3, 3, 4]),
        rssi=np.array([-60.0, -62.0, -70.0]),
        channel=np.array([37, 38, 37]),
        seq=np.array([7, 7, 1]),
    )
    eng.ingest(first)
    closed = eng.advance()  # watermark 2.5 s: the window ending at 2 s closes, the one ending at 3 s stays open
    assert sorted(set(closed["t"])) == [2.0]
    assert eng.counters.merged_channels == 1
    late_copy = sightings_from_columns(t=np.array([1.0008]), gateway=0, device=3, rssi=-70.0, channel=39, seq=7)
    redelivery = first[:1].copy()  # QoS 1 sends the channel-37 copy again after a reconnect
    eng.ingest(np.concatenate([late_copy, redelivery]))
    assert eng.counters.rejected == {}  # the window ending at 3 s still takes them
    fixes = eng.flush(3.0)
    assert eng.counters.duplicates == 1
    assert eng.counters.merged_channels == 2  # three copies of one event: two merged away
    assert len(fixes[(fixes["t"] == 3.0) & (fixes["device"] == 3)]) == 1


@pytest.mark.parametrize("tracker", ["none", "kalman"])
def test_device_partitioned_engine_returns_the_same_bytes_as_one_engine(tracker: str) -> None:
    xy = np.random.default_rng(6).uniform(0, 20, (9, 2))
    stream = _stream(xy, 0.0, 20.0)
    stream["rssi"] += np.random.default_rng(7).normal(0, 4, len(stream)).astype(np.float32)
    stream = stream[np.random.default_rng(8).random(len(stream)) < 0.7]  # some gateways miss some events
    one = _engine(tracker=tracker)
    with PartitionedEngine(one.config, workers=2) as two:
        got, want = [], []
        for lo in range(0, 20, 5):
            part = stream[(stream["t"] >= lo) & (stream["t"] < lo + 5)]
            one.ingest(part)
            two.ingest(part)
            want.append(one.advance())
            got.append(two.advance())
        want.append(one.flush(20.0))
        got.append(two.flush(20.0))
        assert two.counters.as_dict() == one.counters.as_dict()
    assert np.concatenate(got).tobytes() == np.concatenate(want).tobytes()
    assert len(np.concatenate(got)) > 100


def test_fixes_in_groups_of_windows_are_the_fixes_of_advance(monkeypatch: pytest.MonkeyPatch) -> None:
    """advance_parts, on one engine and over worker processes, yields advance's fixes a
    group of windows at a time (3 here, so 5 s of traffic makes several groups)."""
    monkeypatch.setattr("engine.pipeline.WINDOWS_PER_CHUNK", 3)  # before the workers fork
    xy = np.random.default_rng(16).uniform(0, 20, (9, 2))
    stream = _stream(xy, 0.0, 20.0)
    stream["rssi"] += np.random.default_rng(17).normal(0, 4, len(stream)).astype(np.float32)
    one, grouped = _engine(), _engine()
    with PartitionedEngine(one.config, workers=2) as two:
        want, got_one, got_two, groups = [], [], [], 0
        for lo in range(0, 20, 5):
            part = stream[(stream["t"] >= lo) & (stream["t"] < lo + 5)]
            for eng in (one, grouped, two):
                eng.ingest(part)
            want.append(one.advance())
            got_one += list(grouped.advance_parts())
            two.start_advance(parts=True)
            parts = list(two.finish_advance_parts())
            groups += len(parts)
            assert all(len(np.unique(p["t"])) <= 3 for p in parts)
            got_two += parts
        assert groups > 4
    for got in (got_one, got_two):
        assert np.concatenate(got).tobytes() == np.concatenate(want).tobytes()
    assert np.array_equal(grouped.state.x, one.state.x, equal_nan=True)


def _noisy_stream(seed: int) -> np.ndarray:
    xy = np.random.default_rng(seed).uniform(0, 20, (9, 2))
    stream = _stream(xy, 0.0, 20.0)
    stream["rssi"] += np.random.default_rng(seed + 1).normal(0, 4, len(stream)).astype(np.float32)
    return stream


def test_calls_made_ahead_give_the_fixes_of_calls_made_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """ingest (in pieces), start_advance and start_flush made while an advance's groups
    are still coming back (the watermark taken by the workers when they reach it): the
    same fixes, in the same groups, as one engine's calls made one after the other, and
    the same counters."""
    monkeypatch.setattr("engine.pipeline.WINDOWS_PER_CHUNK", 3)  # before the workers fork
    stream = _noisy_stream(26)
    feeds = [stream[(stream["t"] >= lo) & (stream["t"] < lo + 5)] for lo in range(0, 20, 5)]
    one = _engine(tracker="kalman")
    with PartitionedEngine(one.config, workers=2) as ahead:
        ahead.INGEST_PIECE_ROWS = 97  # each feed sent in pieces
        want: list[np.ndarray] = []
        for feed in feeds:
            one.ingest(feed)
            want += list(one.advance_parts())
        want.append(one.flush(20.0))
        got: list[np.ndarray] = []
        ahead.ingest(feeds[0])
        ahead.start_advance(parts=True)
        for k in range(len(feeds)):
            if k + 1 < len(feeds):
                ahead.ingest(feeds[k + 1])
                ahead.start_advance(parts=True)
            else:
                ahead.start_flush(20.0)
            got += list(ahead.finish_advance_parts())
        got.append(ahead.finish_flush())
        assert ahead.counters.as_dict() == one.counters.as_dict()
    assert [len(g) for g in got] == [len(w) for w in want]
    assert np.concatenate(got).tobytes() == np.concatenate(want).tobytes()


@pytest.mark.timeout(120)
def test_a_batch_larger_than_the_pipe_sent_while_larger_fixes_are_due_does_not_wait_forever() -> None:
    """Both directions far beyond a pipe's buffer (about 200 kB) at once: the workers'
    fixes of the first 40 s, and 40 s more of sightings sent before those are read."""
    xy = np.random.default_rng(56).uniform(0, 20, (1000, 2))
    stream = _stream(xy, 0.0, 80.0, rate_hz=1.0)
    first, second = stream[stream["t"] < 40], stream[stream["t"] >= 40]
    assert second.nbytes > 4 * 2**20
    one = _engine()
    with PartitionedEngine(one.config, workers=2) as two:
        two.ingest(first)
        two.start_advance()
        two.ingest(second)
        two.start_flush(80.0)
        got = [two.finish_advance(), two.finish_flush()]
    one.ingest(first)
    want = [one.advance()]
    one.ingest(second)
    want.append(one.flush(80.0))
    assert got[0].nbytes > 2**20  # half a MB or more from each worker
    assert np.concatenate(got).tobytes() == np.concatenate(want).tobytes()


def _fail_on_odd_devices(self: Engine, rows: np.ndarray, k_first: int, k_last: int) -> np.ndarray:
    if k_first >= 6 and (rows["device"] % 2 == 1).any():
        raise FloatingPointError(f"windows {k_first}-{k_last}")
    return _LOCALIZE_WINDOWS(self, rows, k_first, k_last)


_LOCALIZE_WINDOWS = Engine._localize_windows


def test_a_worker_failure_reaches_the_call_it_belongs_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker (odd devices) fails from window 7 on: its groups stop, the other's run
    to their end, and the failure reaches the caller at the call it belongs to; the call
    made ahead behind it still runs (and fails there too), and the workers keep serving."""
    monkeypatch.setattr("engine.pipeline.WINDOWS_PER_CHUNK", 3)
    monkeypatch.setattr(Engine, "_localize_windows", _fail_on_odd_devices)  # forked into the workers
    stream = _noisy_stream(36)
    with PartitionedEngine(_engine().config, workers=2) as two:
        two.ingest(stream[stream["t"] < 15])
        two.start_advance(parts=True)
        two.ingest(stream[stream["t"] >= 15])
        two.start_advance(parts=True)
        groups: list[np.ndarray] = []
        parts = two.finish_advance_parts()
        with pytest.raises(FloatingPointError, match="windows 7-9"):
            groups.extend(parts)  # keeps the groups yielded before the failure
        assert len(groups) == 2 and groups[-1]["t"].max() <= 6.0  # windows 1-6, both workers
        with pytest.raises(FloatingPointError, match=r"windows 1[3-9]"):
            list(two.finish_advance_parts())
        assert two.counters.received == len(stream)
        assert two.watermark == stream["t"].max()


def _fail_on_device_7(self: Engine, batch: np.ndarray) -> None:
    if (batch["device"] == 7).any():
        raise OverflowError("device 7")
    _INGEST(self, batch)


_INGEST = Engine.ingest


def test_a_failed_ingest_is_told_at_the_next_advance_and_the_other_worker_is_not_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ingest has no reply: its failure comes with the worker's next reply. The worker
    still takes its part in the shared watermark, so the other one is not kept waiting."""
    monkeypatch.setattr(Engine, "ingest", _fail_on_device_7)
    stream = _noisy_stream(66)
    with PartitionedEngine(_engine().config, workers=2) as two:
        two.ingest(stream[stream["t"] < 10])
        with pytest.raises(OverflowError, match="device 7"):
            two.advance()
        assert two.watermark == stream["t"][stream["t"] < 10].max()  # worker 0 took its rows


def test_finishing_out_of_turn_is_refused() -> None:
    with PartitionedEngine(_engine().config, workers=2) as two:
        two.ingest(_noisy_stream(46))
        two.start_advance()
        two.start_flush(20.0)
        with pytest.raises(RuntimeError, match="no 'flush' is the oldest call outstanding"):
            two.finish_flush()
        with pytest.raises(RuntimeError, match="finish the outstanding 'advance' first"):
            _ = two.watermark
        assert len(two.finish_advance()) > 0
        assert len(two.finish_flush()) > 0


def test_a_worker_that_died_makes_the_next_advance_fail_not_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed between calls (out of memory, a signal): the survivor gives up on it
    at the advance's shared watermark and says so, and the caller gets an error instead of
    waiting for good."""
    import threading
    from threading import BrokenBarrierError

    monkeypatch.setattr("engine.parallel.BARRIER_TIMEOUT_S", 2.0)  # forked into the workers
    stream = _noisy_stream(56)
    with PartitionedEngine(_engine().config, workers=2) as two:
        two.ingest(stream[stream["t"] < 10])
        two._procs[1].kill()
        two._procs[1].join(timeout=30)
        outcome: list[BaseException] = []

        def advance() -> None:
            try:
                two.advance()
            except BaseException as exc:  # what the caller sees is the point
                outcome.append(exc)

        caller = threading.Thread(target=advance, daemon=True)
        caller.start()
        caller.join(timeout=120)
        assert not caller.is_alive(), "the advance waited for the dead worker"
        assert outcome and isinstance(outcome[0], (BrokenBarrierError, EOFError, ConnectionError))
