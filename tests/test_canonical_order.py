"""Ingest's sorts skip rows already in order, and the worker's row store merges each batch
into its sorted rows in a buffer of bounded size: the same bytes as sorting everything
(the code path before), whatever order and split the rows arrive in."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import eventtime
from engine._order import lexsort_by_time
from engine.contract import UNKNOWN, GatewayInfo, sightings_from_columns
from engine.eventtime import RevisingWindows
from engine.ingest import (
    IngestCounters,
    canonical_order,
    drop_redeliveries,
    merge_channels_by_time,
    with_partners,
)
from engine.pipeline import Engine, EngineConfig
from siteplan.zones import ZoneIndex

ROWS = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 3), st.integers(0, 2), st.integers(0, 3),
                          st.integers(0, 2), st.integers(0, 2)), max_size=150)


def rows_from(draw_rows: list[tuple[int, int, int, int, int, int]]):
    """Many equal times, keys, channel copies and re-deliveries (seq 3: no event counter)."""
    a = np.array(draw_rows, dtype=np.int64).reshape(-1, 6)
    t, gw, dev, seq, ch, rssi = a.T
    return sightings_from_columns(t=t / 8.0, gateway=gw, device=dev, rssi=(-60.0 - rssi).astype(np.float32),
                                  channel=np.array([37, 38, 39])[ch], seq=np.where(seq == 3, UNKNOWN, seq))


def sorted_before(rows):
    """canonical_order as it was: a full sort of every row, in order or not."""
    return rows[lexsort_by_time(rows["t"], rows["gateway"], rows["device"], rows["seq"], rows["channel"],
                                rows["rssi"])]


@settings(max_examples=200, deadline=None)
@given(ROWS, st.integers(0, 150))
def test_canonical_order_is_the_full_sort_in_order_or_not(rows, split) -> None:
    batch = rows_from(rows)
    expected = sorted_before(batch)
    assert batch[canonical_order(batch)].tobytes() == expected.tobytes()
    assert np.array_equal(canonical_order(expected), np.arange(len(batch)))  # in order: the identity
    # a sorted block, then a batch in arrival order: sorted apart and merged
    split = min(split, len(batch))
    held_then_new = np.concatenate([sorted_before(batch[:split]), batch[split:]])
    got = held_then_new[canonical_order(held_then_new, sorted_runs=split)]
    assert got.tobytes() == sorted_before(held_then_new).tobytes()


@settings(max_examples=200, deadline=None)
@given(ROWS, st.randoms(use_true_random=False))
def test_dedup_and_merge_of_sorted_rows_equal_those_of_any_arrival_order(rows, rnd) -> None:
    """The worker passes rows in canonical order (no sort); any other order of the same
    rows goes through the sort: the same events and counts either way."""
    batch = rows_from(rows)
    shuffled = batch[np.array(rnd.sample(range(len(batch)), len(batch)), dtype=np.intp)]
    a, b = IngestCounters(), IngestCounters()
    ev_sorted, merged_sorted = merge_channels_by_time(drop_redeliveries(sorted_before(batch), a))
    ev_any, merged_any = merge_channels_by_time(drop_redeliveries(shuffled, b))
    assert ev_sorted.tobytes() == ev_any.tobytes()
    assert (merged_sorted, a.duplicates) == (merged_any, b.duplicates)


def test_dedup_of_rows_in_order_is_a_copy_not_a_view() -> None:
    batch = sorted_before(rows_from([(1, 0, 0, 0, 0, 0), (2, 1, 1, 1, 1, 1)]))
    out = drop_redeliveries(batch, IngestCounters())
    out["t"] += 1.0
    assert batch["t"].tolist() == [0.125, 0.25]


def small_windows(horizon_s: float) -> RevisingWindows:
    zones = ZoneIndex.from_points([("all", "storage", [(-1, -1), (13, -1), (13, 13), (-1, 13)])])
    gws = GatewayInfo(("a", "b", "c", "d"), np.array([[0, 0, 1.0], [12, 0, 1.0], [12, 12, 1.0], [0, 12, 1.0]]))
    return RevisingWindows(Engine(EngineConfig(gateways=gws, zones=zones, bounds=(0, 0, 12, 12))), horizon_s=horizon_s)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(ROWS, st.integers(0, 6)), min_size=1, max_size=25))
def test_row_store_holds_what_a_full_sort_of_every_batch_held(batches) -> None:
    """Batches (late rows, re-deliveries) added and pruned as the worker does: the held
    rows are byte for byte those of re-sorting the held rows with each batch, while the
    buffer is reused from the front and grown (a small first buffer, so both happen)."""
    small, eventtime.STORE_MIN_ROWS = eventtime.STORE_MIN_ROWS, 8  # a small first buffer: both happen
    try:
        windows = small_windows(horizon_s=0.5)
        held = sorted_before(rows_from([]))
        most = 0
        for k, (rows, closed) in enumerate(batches):
            batch = rows_from(rows)
            batch["t"] += k * 0.5  # time moves on; rows still reach back up to 5 s
            windows.add(batch)
            kept = batch[batch["t"] >= windows.prune_start()]  # what add (and add_history) hold
            held = sorted_before(np.concatenate([held, kept]))
            most = max(most, len(held) + len(batch))
            windows._merge_new()  # what advance does first
            assert windows.rows.tobytes() == held.tobytes()
            assert len(windows._store) <= max(8, eventtime.STORE_GROWTH * most)  # bounded by what it held
            windows.closed_through = max(windows.closed_through or 0, k // 2 + closed)
            windows.prune()
            held = held[held["t"] >= windows.prune_start()]
            assert windows.rows.tobytes() == held.tobytes()
    finally:
        eventtime.STORE_MIN_ROWS = small


@settings(max_examples=300, deadline=None)
@given(ROWS, st.integers(0, 40), st.integers(0, 40))
def test_a_spans_events_from_it_and_its_partners_equal_those_from_the_whole_margin(rows, a, b) -> None:
    """EventSlices: a step's events from its rows and the margins' rows sharing an event
    with them are the step's events from every row of the margin-widened span."""
    held = sorted_before(rows_from(rows))  # times 0..5 s in 1/8 s, copies and re-deliveries
    t0, t1 = min(a, b) / 8.0, max(a, b) / 8.0 + 0.0625

    def step_events(span):
        events, _ = merge_channels_by_time(drop_redeliveries(span, IngestCounters()))
        return events[(events["t"] >= t0) & (events["t"] < t1)]

    lo, hi = np.searchsorted(held["t"], [t0, t1])
    assert step_events(with_partners(held, int(lo), int(hi))).tobytes() == step_events(held).tobytes()
