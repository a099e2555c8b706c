"""The engine's fast paths against plain references: tie sorts, hashed dedup and merge,
cached window events, column-wise position JSON, id codes and the windows' heard cells
(same bytes, same order)."""

from __future__ import annotations

import json

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine._heard import heard_cells, window_cells
from engine._newton import _bits_f32, _f32_bits, hypotf, log10f, newton_rows, newton_rows_lanes
from engine._order import BUCKET_RUN, INSERTION_RUN, lexsort_by_time, member_of, sort_keys_by_device
from engine.contract import UNKNOWN, GatewayInfo, IdTable, sightings_from_columns
from engine.eventtime import REVISED_FIX_DTYPE, RevisingWindows
from engine.ingest import IngestCounters, drop_redeliveries, merge_channels_by_time
from engine.localize import METHOD_NAMES, Heard
from engine.pipeline import Engine, EngineConfig
from live_bridge.server import positions_payload
from siteplan.zones import NO_ZONE, ZoneIndex

GW_XYZ = np.array([[0, 0, 1.0], [12, 0, 1.0], [12, 12, 1.0], [0, 12, 1.0]])


def rows_from(draw_rows: list[tuple[int, int, int, int, int, int, int]]):
    """Sightings from small integer tuples: many equal times, keys and re-deliveries."""
    a = np.array(draw_rows, dtype=np.int64).reshape(-1, 7)
    t, gw, dev, seq, ch, rssi, bat = a.T
    return sightings_from_columns(t=t / 8.0, gateway=gw, device=dev, rssi=(-60.0 - rssi).astype(np.float32),
                                  channel=np.array([37, 38, 39])[ch], seq=np.where(seq == 3, UNKNOWN, seq),
                                  battery=bat)


ROWS = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(0, 2), st.integers(0, 3),
                          st.integers(0, 2), st.integers(0, 2), st.integers(-1, 1)), max_size=120)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(-1, 1), st.floats(-2, 2, width=32)),
                max_size=4 * INSERTION_RUN))
def test_lexsort_by_time_is_numpys_lexsort(rows) -> None:
    a = np.array(rows, dtype=float).reshape(-1, 4)
    t, k1, k2, k3 = a[:, 0], a[:, 1].astype(np.int32), a[:, 2].astype(np.int64), a[:, 3].astype(np.float32)
    assert np.array_equal(lexsort_by_time(t, k1, k2, k3), np.lexsort((k3, k2, k1, t)))


def reference_events(batch):
    """The documented rules, row by row: canonical order, first copy of a re-delivery
    kept, channel copies of one event merged (mean RSSI, earliest copy), then by time."""
    order = np.lexsort((batch["rssi"], batch["channel"], batch["seq"], batch["device"], batch["gateway"], batch["t"]))
    seen, kept = set(), []
    for r in batch[order]:
        key = (r["gateway"], r["device"], r["seq"], r["channel"]) + (
            (r["t"], r["rssi"]) if r["seq"] == UNKNOWN else ())
        if key not in seen:
            seen.add(key)
            kept.append(r)
    groups: dict[tuple[int, int, int], list] = {}
    loose = []
    for r in kept:
        if r["seq"] == UNKNOWN:
            loose.append(r.copy())
        else:
            groups.setdefault((int(r["gateway"]), int(r["device"]), int(r["seq"])), []).append(r)
    events = []
    for key in sorted(groups):
        copies = sorted(groups[key], key=lambda r: r["t"])  # stable: canonical among equal times
        first = copies[0].copy()
        if len(copies) > 1:
            first["rssi"] = np.float32(sum(float(c["rssi"]) for c in copies) / len(copies))
            first["channel"] = 0
        events.append(first)
    out = np.array(events + loose, dtype=batch.dtype)
    return out[np.argsort(out["t"], kind="stable")], len(batch) - len(kept)


@settings(max_examples=150, deadline=None)
@given(ROWS)
def test_hashed_dedup_and_merge_follow_the_row_by_row_rules(rows) -> None:
    batch = rows_from(rows)
    counters = IngestCounters()
    events, _ = merge_channels_by_time(drop_redeliveries(batch, counters))
    expected, dropped = reference_events(batch)
    assert events.tobytes() == expected.tobytes()
    assert counters.duplicates == dropped


def small_engine() -> Engine:
    zones = ZoneIndex.from_points([("all", "storage", [(-1, -1), (13, -1), (13, 13), (-1, 13)])])
    return Engine(EngineConfig(gateways=GatewayInfo(("a", "b", "c", "d"), GW_XYZ), zones=zones,
                               bounds=(0, 0, 12, 12)))


def test_windows_from_cached_events_equal_windows_from_all_rows() -> None:
    """Closing one window per tick, with late rows, re-deliveries and channel copies that
    straddle step boundaries, gives each window's fixes as computed from all its rows."""
    rng = np.random.default_rng(3)
    n = 6000
    t = np.sort(rng.uniform(0, 30, n))
    dev, gw = rng.integers(0, 5, n), rng.integers(0, 4, n)
    xy = np.array([[3, 3], [6, 9], [10, 2], [1, 11], [7, 7]])[dev]
    rssi = (-59 - 20 * np.log10(np.hypot(*(xy - GW_XYZ[gw, :2]).T) + 0.5) + rng.normal(0, 2, n))
    rows = sightings_from_columns(t=t, gateway=gw, device=dev, rssi=rssi.astype(np.float32), channel=37,
                                  seq=np.arange(n), battery=rng.integers(-1, 100, n))
    copies = rows[rng.choice(n, 800, replace=False)].copy()
    copies["channel"], copies["t"] = 38, copies["t"] + 0.004  # some cross a step boundary
    copies["rssi"] -= 1.5
    redelivered = rows[rng.choice(n, 300, replace=False)]
    everything = np.concatenate([rows, copies, redelivered])
    arrival = everything[np.argsort(everything["t"] + rng.exponential(0.3, len(everything))
                                    + 3.0 * (rng.random(len(everything)) < 0.03))]  # 3 % arrive 3 s late
    windows = RevisingWindows(small_engine(), horizon_s=60)
    latest = {}
    for part in np.array_split(arrival, 120):
        windows.add(part)
        for f in windows.advance(float(part["t"].max())):
            latest[(int(f["device"]), float(f["t"]))] = f
    for f in windows.advance(40.0):
        latest[(int(f["device"]), float(f["t"]))] = f
    reference = small_engine()
    clean = drop_redeliveries(everything, IngestCounters())
    expected = reference.localize_windows(clean, 1, 33)
    got = np.array(sorted(latest.values(), key=lambda f: (f["t"], f["device"])), dtype=REVISED_FIX_DTYPE)
    assert len(got) == len(expected)
    for name in expected.dtype.names or ():
        assert np.array_equal(got[name], expected[name], equal_nan=True), name


def test_positions_payload_is_json_dumps_of_one_dict_per_fix() -> None:
    rng = np.random.default_rng(0)
    devices = IdTable(["tag-1", 'odd "id" \u00e9', "tag-3"])
    zones = ("dock", "zone \u00fc")
    fixes = np.zeros(40, REVISED_FIX_DTYPE)
    fixes["t"], fixes["device"] = rng.uniform(0, 1e9, 40), rng.integers(0, 3, 40)
    fixes["x"], fixes["y"], fixes["r90"] = rng.normal(0, 30, 40), rng.normal(0, 30, 40), rng.uniform(0, 5, 40)
    fixes["x"][3], fixes["x"][4], fixes["y"][5], fixes["r90"][6] = np.nan, -0.0, 0.0004, np.inf
    fixes["zone"], fixes["n_gateways"] = rng.integers(-1, 2, 40), rng.integers(0, 9, 40)
    fixes["method"], fixes["battery"] = rng.integers(0, len(METHOD_NAMES), 40), rng.integers(-1, 101, 40)
    fixes["motion"], fixes["revision"] = rng.integers(-1, 2, 40), rng.integers(0, 10**6, 40)
    expected = {"v": 1, "t": 12.5, "positions": [
        {"t": round(float(f["t"]) + 7.0, 3), "dev": devices.ids[int(f["device"])], "x": round(float(f["x"]), 3),
         "y": round(float(f["y"]), 3), "r90": round(float(f["r90"]), 3),
         "zone": zones[f["zone"]] if f["zone"] != NO_ZONE else None, "n_gw": int(f["n_gateways"]),
         "method": METHOD_NAMES[int(f["method"])], "bat": None if f["battery"] == UNKNOWN else int(f["battery"]),
         "mot": None if f["motion"] == UNKNOWN else int(f["motion"]), "rev": int(f["revision"])}
        for f in fixes if np.isfinite(f["x"])]}
    got = positions_payload(fixes, devices, zones, 7.0, 12.5)
    assert got == json.dumps(expected, separators=(",", ":")).encode()


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.floats(-1e12, 1e12, allow_nan=False, exclude_min=True, exclude_max=True),
                          st.sampled_from([-0.0, 0.0, 0.0005, -0.0005, 0.0015, 2.675, 1e-320, 999999.9995,
                                           999999999999.9995, 70368744.177664875])),
                max_size=50))
def test_decimals3_is_repr_of_round_to_three_places(values) -> None:
    """The positions writer's fast number format is ``repr(round(v, 3))`` exactly."""
    from live_bridge.server import decimals3

    assert decimals3(values) == [repr(round(v, 3)) for v in values]


def test_id_codes_register_new_ids_in_sorted_order() -> None:
    table = IdTable(["b"])
    assert table.codes(np.array(["d", "b", "a", "d"])).tolist() == [2, 0, 1, 2]
    assert table.codes(["zz", "a"], register=False).tolist() == [UNKNOWN, 1]
    assert table.ids == ["b", "a", "d"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 4), st.floats(-100, -40)), max_size=200),
       st.integers(0, 3))
def test_heard_cells_are_the_dense_bincount_means(readings, extra_rows) -> None:
    """Means by (row, gateway) equal a dense bincount's sums over counts, bit for bit, in
    np.nonzero order; rows nobody heard have no cells."""
    a = np.array(readings, dtype=float).reshape(-1, 3)
    row, gw, rssi = a[:, 0].astype(np.intp), a[:, 1].astype(np.int64), a[:, 2]
    n_rows, n_gw = int(row.max(initial=-1)) + 1 + extra_rows, 5
    cell = row * n_gw + gw
    with np.errstate(invalid="ignore", divide="ignore"):
        dense = (np.bincount(cell, weights=rssi, minlength=n_rows * n_gw)
                 / np.bincount(cell, minlength=n_rows * n_gw)).reshape(n_rows, n_gw)
    r_i, c_i, mean = heard_cells(row, gw, rssi, n_rows)
    want_r, want_c = np.nonzero(~np.isnan(dense))
    assert np.array_equal(r_i, want_r) and np.array_equal(c_i, want_c)
    assert mean.tobytes() == dense[want_r, want_c].tobytes()
    assert np.array_equal(Heard(n_rows, n_gw, r_i, c_i, mean).matrix(), dense, equal_nan=True)



@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(-5, 5), max_size=60),
       st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(-5, 5), max_size=60))
def test_member_of_is_numpys_isin(a: list[int], b: list[int]) -> None:
    a_arr, b_arr = np.array(a, np.int64), np.array(b, np.int64)
    np.testing.assert_array_equal(member_of(a_arr, b_arr), np.isin(a_arr, b_arr))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 2**32 - 1)), max_size=300),
       st.integers(0, 6), st.integers(0, 3 * BUCKET_RUN), st.booleans())
def test_keys_sorted_by_device_are_numpys_sort(pairs: list[tuple[int, int]], divisor: int, crowd: int,
                                               hostile: bool) -> None:
    """Bucketed by device then insertion-sorted, or quicksorted past BUCKET_RUN keys (``crowd``
    more keys for device 0 crosses it); negative or far-off keys, or a divisor of 0, take
    np.sort: all np.sort."""
    high = [d for d, _ in pairs] + [0] * crowd
    low = [s for _, s in pairs] + list(range(crowd, 0, -1))
    keys = np.array(high, np.int64) * (1 << 32) + np.array(low, np.int64)
    if hostile and len(keys):
        keys[0] = -keys[0] - 1 if len(keys) % 2 else (1 << 62) + keys[0]
    np.testing.assert_array_equal(sort_keys_by_device(keys, divisor), np.sort(keys))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 80), st.integers(0, 3), st.integers(0, 4), st.floats(-100, -40, width=32),
                          st.integers(-1, 100), st.integers(-1, 1)), max_size=150),
       st.integers(0, 12), st.integers(0, 6),
       st.sampled_from([(1.0, 4.0), (0.5, 1.75), (1.0, 1.0), (2.0, 3.0), (2.0, 0.5)]),
       st.sampled_from([1, 1000, 10**7]))
def test_window_cells_are_the_replicated_windows(rows, k_first, n_windows, step_window, spread) -> None:
    """The compiled window pass equals the numpy replication it replaced (ranked by
    sorting), bit for bit, also for window lengths that are not a multiple of the step
    (or shorter than it: sightings between windows);
    device codes spread far apart take the sorting path."""
    from engine.pipeline import _window_cells_sorted

    a = np.array(rows, dtype=float).reshape(-1, 6)
    a = a[np.argsort(a[:, 0], kind="stable")]
    step, window = step_window
    sightings = sightings_from_columns(t=a[:, 0] / 8.0, gateway=a[:, 1].astype(np.int64),
                                       device=a[:, 2].astype(np.int64) * spread, rssi=a[:, 3].astype(np.float32),
                                       battery=a[:, 4].astype(np.int64), motion=a[:, 5].astype(np.int64))
    per = int(np.ceil(window / step))
    k_last = k_first + n_windows
    got = window_cells(sightings["t"], sightings["device"], sightings["gateway"], sightings["rssi"],
                       sightings["battery"], sightings["motion"], k_first, k_last, step, window, per, UNKNOWN)
    if got[0] == 0:  # nothing in these windows
        base = np.floor(sightings["t"] / step + 1e-12).astype(np.int64) + 1
        assert not any(k_first <= b + j <= k_last and t >= (b + j) * step - window
                       for b, t in zip(base, sightings["t"], strict=True) for j in range(per))
        return
    want = _window_cells_sorted(sightings, k_first, k_last, step, window, per)
    if got[0] < 0:
        assert spread > 1  # only sparse codes leave the presence table
        return
    assert got[0] == want[0]
    for g, w in zip(got[1:], want[1:], strict=True):
        g_arr, w_arr = np.asarray(g), np.asarray(w)
        assert g_arr.dtype == w_arr.dtype and g_arr.tobytes() == w_arr.tobytes()
    # Out of time order (the window-by-window path needs time order, this one does not).
    if len(sightings) > 1 and sightings["t"][0] < sightings["t"][-1]:
        swapped = sightings[np.r_[len(sightings) - 1, 1 : len(sightings) - 1, 0]]
        got = window_cells(swapped["t"], swapped["device"], swapped["gateway"], swapped["rssi"],
                           swapped["battery"], swapped["motion"], k_first, k_last, step, window, per, UNKNOWN)
        want = _window_cells_sorted(swapped, k_first, k_last, step, window, per)
        for g, w in zip(got[1:], want[1:], strict=True):
            assert np.asarray(g).tobytes() == np.asarray(w).tobytes()


@numba.njit
def _log10f_differences(bits: np.ndarray) -> int:
    """How many float32s (given by their bits) the inline log10f gives other bits for
    than the C library's log10f (numba's np.log10 on a float32); NaN counts as equal."""
    bad = 0
    for b in bits:
        v = _bits_f32(b)
        a, c = log10f(v), np.float32(np.log10(v))
        if _f32_bits(a) != _f32_bits(c) and not (np.isnan(a) and np.isnan(c)):
            bad += 1
    return bad


def _glibc_with_fma() -> bool:
    """The inline log10f copies glibc's (2.28 on) FMA build: only there is the library's
    log10f the reference bit for bit."""
    import platform
    from pathlib import Path

    lib, version = platform.libc_ver()
    if lib != "glibc" or tuple(int(v) for v in version.split(".")[:2]) < (2, 28):
        return False
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.exists() and " fma" in cpuinfo.read_text()


@pytest.mark.skipif(not _glibc_with_fma(), reason="the reference is glibc >= 2.28's log10f on a CPU with FMA")
def test_inline_log10f_is_the_c_librarys_bit_for_bit() -> None:
    """The Newton loop's inline log10f against the library's: four whole binades (every
    float32 of [1/16, 1/8), [0.5, 1), [1, 2) and [512, 1024): both of the logarithm's
    argument ranges, all 16 table rows), special values, and random bit patterns of every
    sign and exponent. All 2^31 non-negative floats were checked once (docs/scaling.md,
    ninth round)."""
    whole = [np.arange(lo, lo + (1 << 23), dtype=np.int64) for lo in (0x3D800000, 0x3F000000, 0x3F800000, 0x44000000)]
    special = np.array([0, 1, 0x7FFFFF, 0x800000, 0x7F7FFFFF, 0x7F800000, 0x7FC00000, -0x80000000, -0x40800000],
                       dtype=np.int64)
    rng = np.random.default_rng(14)
    bits = np.concatenate([*whole, special, rng.integers(-(1 << 31), 1 << 31, 2_000_000)]).astype(np.int32)
    assert _log10f_differences(bits) == 0


def test_inline_log10f_is_within_one_ulp_of_the_exact_logarithm() -> None:
    """On any machine: the inline log10f is within 2 ulp of log10 computed in float64
    (glibc documents up to 2 ulp for log10f; 1.4 is the largest seen here), over random
    positive normal floats of every exponent."""
    rng = np.random.default_rng(15)
    bits = rng.integers(0x00800000, 0x7F800000, 200_000).astype(np.int32)
    x = bits.view(np.float32)
    got = np.array([log10f(v) for v in x[:20_000]], dtype=np.float32)
    exact = np.log10(x[:20_000].astype(np.float64))
    ulp = np.spacing(np.abs(got)).astype(np.float64)
    assert np.all(np.abs(got.astype(np.float64) - exact) <= 2 * ulp)


@numba.njit
def _library_hypotf(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The C library's hypotf (numba's np.hypot on float32 calls it)."""
    out = np.empty(len(a), np.float32)
    for i in range(len(a)):
        out[i] = np.hypot(a[i], b[i])
    return out


@numba.njit
def _inline_hypotf(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(len(a), np.float32)
    for i in range(len(a)):
        out[i] = hypotf(a[i], b[i])
    return out


def _random_float32s(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random bit patterns (every sign, exponent, NaN and infinity) and special values."""
    special = np.array([0.0, -0.0, 1e-45, 1.1754944e-38, 3.4028235e38, np.inf, -np.inf, np.nan], np.float32)
    bits = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([special, bits])


@pytest.mark.skipif(
    __import__("platform").libc_ver()[0] != "glibc"
    or tuple(int(v) for v in __import__("platform").libc_ver()[1].split(".")[:2]) < (2, 35),
    reason="the reference is glibc >= 2.35's hypotf (its algorithm before 2.35 rounds differently)",
)
def test_inline_hypotf_is_the_c_librarys_bit_for_bit() -> None:
    """The Newton loops' inline hypotf against the library's, on random bit patterns of
    every exponent and on pairs of close magnitudes (where rounding is closest)."""
    rng = np.random.default_rng(16)
    a = _random_float32s(rng, 1_000_000)
    with np.errstate(over="ignore", invalid="ignore"):  # near-maximal values scaled past float32
        b = np.concatenate([np.roll(a, 3)[: len(a) // 2],
                            (a[len(a) // 2 :] * rng.uniform(0.5, 2.0, len(a) - len(a) // 2)).astype(np.float32)])
    got, want = _inline_hypotf(a, b), _library_hypotf(a, b)
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), (a[~same][:3], b[~same][:3])


def test_inline_hypotf_is_within_one_ulp_of_the_exact_root() -> None:
    """On any machine: the float64 root rounded to float32 is within one ulp."""
    rng = np.random.default_rng(17)
    a = rng.uniform(-1e3, 1e3, 100_000).astype(np.float32)
    b = rng.uniform(-1e3, 1e3, 100_000).astype(np.float32)
    exact = np.hypot(a.astype(np.float64), b.astype(np.float64))
    got = _inline_hypotf(a, b).astype(np.float64)
    assert np.all(np.abs(got - exact) <= np.spacing(np.abs(got).astype(np.float32)).astype(np.float64))


def _newton_inputs(seed: int, n: int, width: int, walls: bool, iterations: int) -> tuple:
    """Rows as engine.localize gives the Newton loop: gateways on a 40 x 30 m floor, RSSI
    from log-distance path loss with noise, padding cells (weight 0), starts anywhere on
    the floor, some on its bounds or on a gateway, a few NaN readings; with ``walls`` a
    1 m obstacle grid of random losses."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    n_gw = 12
    gw = np.c_[rng.uniform(0, 40, n_gw), rng.uniform(0, 30, n_gw), rng.uniform(2, 4, n_gw)]
    cols = np.stack([rng.choice(n_gw, width, replace=False) for _ in range(n)]) if n else np.zeros((0, width), np.intp)
    cols = cols.astype(np.intp)
    tag = np.c_[rng.uniform(0, 40, n), rng.uniform(0, 30, n)]
    d = np.sqrt(((tag[:, None, :] - gw[cols, :2]) ** 2).sum(-1) + (gw[cols, 2] - 1.0) ** 2)
    r = (-59.0 - 20.0 * np.log10(d) + rng.normal(0, 4, d.shape)).astype(f32)
    w = np.ones((n, width), f32)
    heard = rng.integers(2, width + 1, n)
    w[np.arange(width)[None, :] >= heard[:, None]] = 0.0
    r[w == 0] = 0.0
    r[rng.random(r.shape) < 0.002] = np.nan
    x0, y0 = rng.uniform(0, 40, n).astype(f32), rng.uniform(0, 30, n).astype(f32)
    x0[rng.random(n) < 0.1], y0[rng.random(n) < 0.1] = 0.0, 30.0  # on the bounds
    on_gw = rng.random(n) < 0.05  # exactly on a heard gateway (dz2 0 for some)
    x0[on_gw], y0[on_gw] = gw[cols[on_gw, 0], 0], gw[cols[on_gw, 0], 1]
    dz2 = ((gw[cols, 2] - 1.0) ** 2).astype(f32)
    dz2[on_gw, 0] = 0.0
    loss = rng.uniform(0, 12, (40 * 30, n_gw)).astype(f32) if walls else np.zeros((0, 0), f32)
    grid = np.array([0.0, 0.0, 1.0, 40, 30]) if walls else np.zeros(5)
    return (r, w, rng.uniform(-62, -56, n).astype(f32), gw[cols, 0].astype(f32), gw[cols, 1].astype(f32), dz2,
            cols, loss, grid, x0, y0, f32(10.0), f32(20.0 / np.log(10.0)), np.array([0.0, 0.0, 40.0, 30.0]),
            iterations, f32(5.0), f32(2.0))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300), width=st.integers(2, 10), walls=st.booleans(),
       iterations=st.integers(1, 20))
def test_newton_lanes_give_the_scalar_loops_bits(seed: int, n: int, width: int, walls: bool, iterations: int) -> None:
    """The SIMD Newton loop (rows side by side in lanes, lanes refilled as rows settle)
    gives every row the scalar loop's answer bit for bit: including NaN readings, padding
    cells, starts on the bounds and distances of zero (the library's logarithm). A NaN is a
    NaN: its sign bit depends on which operand of an operation the compiler put first, in
    either loop (and the localizer discards NaN end points)."""
    args = _newton_inputs(seed, n, width, walls, iterations)
    want = newton_rows(*args, False)
    got = newton_rows_lanes(*args)
    for g, w_ in zip(got, want, strict=True):
        same = (g.view(np.uint32) == w_.view(np.uint32)) | (np.isnan(g) & np.isnan(w_))
        assert same.all(), np.flatnonzero(~same)[:5]
