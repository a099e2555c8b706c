"""Ingest: validate sighting columns, drop duplicates, order by event time.

Invalid rows are rejected with a reason and counted; the valid rest goes on. Two kinds
of duplicate are removed:

* exact re-deliveries (same gateway, device, event counter and channel), as MQTT QoS 1
  produces after a reconnect;
* the same advertising event heard on channels 37, 38 and 39: these merge into one
  sighting whose RSSI is the mean over channels in dB (the per-channel offsets and
  independent fading then partly cancel), stamped with the earliest time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from engine._canonical import order_by_time, sorted_by_time
from engine._order import lexsort_by_time, member_of, shared_keys
from engine.contract import UNKNOWN, Sightings, compress_rows, concat_rows, take_rows

RSSI_MIN_DBM = -130.0
RSSI_MAX_DBM = 20.0
VALID_CHANNELS = (0, 37, 38, 39)


@dataclass
class IngestCounters:
    """Running counts of what ingest accepted, merged and rejected (by reason)."""

    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    merged_channels: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "merged_channels": self.merged_channels,
            "rejected": dict(sorted(self.rejected.items())),
        }


def validate(batch: Sightings, n_gateways: int, counters: IngestCounters) -> Sightings:
    """Keep the rows that make physical sense; count the others by reason."""
    checks = {
        "time is not finite": ~np.isfinite(batch["t"]),
        "rssi outside -130..20 dBm": ~((batch["rssi"] >= RSSI_MIN_DBM) & (batch["rssi"] <= RSSI_MAX_DBM)),
        "unknown gateway": (batch["gateway"] < 0) | (batch["gateway"] >= n_gateways),
        "negative device code": batch["device"] < 0,
        "channel not 37/38/39": ~np.isin(batch["channel"], VALID_CHANNELS),
    }
    bad = np.zeros(len(batch), dtype=bool)
    for reason, mask in checks.items():
        fresh = mask & ~bad  # one reason per rejected row: the first that applies
        if fresh.any():
            counters.rejected[reason] += int(fresh.sum())
        bad |= mask
    return compress_rows(batch, ~bad)


def _group_starts(keys: list[NDArray[np.int64]], order: NDArray[np.intp]) -> NDArray[np.intp]:
    """Positions in ``order`` where the tuple of ``keys`` changes (the first is 0): the
    groups of equal keys once rows are sorted by them. One pass of comparisons instead of
    a sort of row tuples (``np.unique(axis=0)``)."""
    change = np.zeros(len(order), dtype=bool)
    change[:1] = True
    for k in keys:
        ks = k[order]
        change[1:] |= ks[1:] != ks[:-1]
    return np.flatnonzero(change)


def _pair(high: NDArray[np.integer], low: NDArray[np.integer]) -> NDArray[np.int64]:
    """Two int32 columns as one int64 key, ordered as (high, low)."""
    return (high.astype(np.int64) << 32) | (low.astype(np.int64) & 0xFFFFFFFF)


def _canonical_keys(rows: Sightings) -> tuple[NDArray[np.float64], *tuple[NDArray[np.generic], ...]]:
    return rows["t"], rows["gateway"], rows["device"], rows["seq"], rows["channel"], rows["rssi"]


def canonical_order(rows: Sightings, sorted_runs: int | None = None) -> NDArray[np.intp]:
    """The order rows are deduplicated in: time, gateway, device, seq, channel, rssi;
    stable, so identical rows keep their arrival order. One pass when the rows are in
    that order already (the worker's held rows are); with ``sorted_runs=s``, rows 0..s
    and s..n are each ordered and then merged (held rows, then a new batch)."""
    return order_by_time(*_canonical_keys(rows), sorted_runs=sorted_runs)


def in_canonical_order(rows: Sightings) -> bool:
    """Whether :func:`canonical_order` would leave ``rows`` as they are."""
    return sorted_by_time(*_canonical_keys(rows))


def drop_redeliveries(batch: Sightings, counters: IngestCounters) -> Sightings:
    """Drop exact re-deliveries, returning the rest in canonical order.

    A re-delivery has the same gateway, device, event counter and channel; without an
    event counter (seq == UNKNOWN) only a byte-identical row (same time and RSSI) is one.
    Canonical order first, so which copy survives never depends on arrival order.
    Rows are grouped by a hash of that key first: only the rows whose hash is shared
    (re-deliveries, and the rare collision) go through the exact comparison.
    """
    if len(batch) == 0:
        return batch
    # Held rows are in canonical order, and so is a slice of them: no sort, only a copy
    # (as a sort made: never a view of the caller's rows).
    # Out of order: the sort itself (canonical_order would check the order a second time).
    in_order = in_canonical_order(batch)
    if in_order:
        batch = concat_rows([batch], batch.dtype)
    else:
        batch = take_rows(batch, lexsort_by_time(*_canonical_keys(batch)))
    no_seq = (batch["seq"] == UNKNOWN).astype(np.int64)
    keys = [
        _pair(batch["gateway"], batch["device"]),
        (batch["seq"].astype(np.int64) << 8) | batch["channel"].astype(np.int64),
        np.ascontiguousarray(batch["t"]).view(np.int64) * no_seq,
        np.ascontiguousarray(batch["rssi"], dtype=np.float32).view(np.int32).astype(np.int64) * no_seq,
    ]
    candidates = _shared_hash(keys)
    if candidates is None:
        return batch
    sub = [k[candidates] for k in keys]
    # Stable sort by the keys: the first row of each group is its first in canonical order.
    order = np.lexsort(sub[::-1])
    keep = np.ones(len(batch), dtype=bool)
    keep[candidates] = False
    keep[candidates[order[_group_starts(sub, order)]]] = True
    counters.duplicates += len(batch) - int(keep.sum())
    return compress_rows(batch, keep)


def _hash(keys: list[NDArray[np.int64]]) -> NDArray[np.int64]:
    """A hash of each row's tuple of ``keys`` (at most four)."""
    h = np.zeros(len(keys[0]), np.int64)
    for k, mult in zip(keys, _HASH_MULTIPLIERS, strict=False):
        h ^= k * mult
        h ^= h >> 29
    return h


def _shared_hash(keys: list[NDArray[np.int64]]) -> NDArray[np.intp] | None:
    """Indices of the rows whose hash of ``keys`` another row shares (a superset of the
    rows whose keys another row shares), or None when every hash is distinct."""
    shared = shared_keys(_hash(keys))
    return np.flatnonzero(shared) if shared.any() else None


# Odd 64-bit multipliers (splitmix64's) that spread the key bits over the hash.
_HASH_MULTIPLIERS = (np.int64(-7046029254386353131), np.int64(-4658895280553007687),
                     np.int64(-7723592293110705685), np.int64(6700417 * 2 + 1))


def _event_hash(rows: Sightings) -> NDArray[np.int64]:
    """A hash of each row's advertising event (gateway, device, seq)."""
    return _hash([_pair(rows["gateway"], rows["device"]), rows["seq"].astype(np.int64)])


def with_partners(rows: Sightings, lo: int, hi: int) -> Sightings:
    """Rows lo..hi, with the rows outside them that may share an advertising event with one
    of them (same gateway, device and seq: its channel copies and re-deliveries; by hash,
    so a rare collision adds a row, never drops one), in their order.

    Deduplicating and merging these gives the same events with times in rows lo..hi's
    span as all of ``rows`` would, when ``rows`` are sorted by time and lo..hi is a span of
    times: an event's copies are all kept together, and an event none of whose copies is
    inside the span has its time outside it (rows without an event counter are only
    ever duplicates of rows with the same time). Most of a margin-widened span is margin."""
    if lo <= 0 and hi >= len(rows):
        return rows
    outside = np.ones(len(rows), dtype=bool)
    outside[lo:hi] = False
    keep = ~outside
    side = np.flatnonzero(outside & (rows["seq"] != UNKNOWN))
    if len(side) and hi > lo:
        keep[side[member_of(_event_hash(take_rows(rows, side)), _event_hash(rows[lo:hi]))]] = True
    return compress_rows(rows, keep)


def merge_channels(batch: Sightings, fresh: NDArray[np.bool_] | None = None) -> tuple[Sightings, int]:
    """Merge the channel copies (37/38/39) of one advertising event at one gateway into one
    sighting: mean RSSI in dB, earliest time, channel 0. Returns the rows (events in
    (gateway, device, seq) order, then the rows without an event counter) and how many
    copies were merged away. Rows without an event counter pass through unchanged.

    With ``fresh`` (a mask of the rows that just arrived) the count is of the fresh
    copies only: each fresh row that joined an event already buffered, and all but one
    of the fresh rows of a new event, so a running total counts every copy once."""
    has_seq = batch["seq"] != UNKNOWN
    keyed, loose = compress_rows(batch, has_seq), compress_rows(batch, ~has_seq)
    if len(keyed) == 0:
        return batch, 0
    gw_dev = _pair(keyed["gateway"], keyed["device"])
    seq = keyed["seq"].astype(np.int64)
    order = np.lexsort((keyed["t"], seq, gw_dev))  # by event, earliest copy first
    starts = _group_starts([gw_dev, seq], order)
    counts = np.diff(np.r_[starts, len(order)])
    merged = take_rows(keyed, order[starts])
    multi = np.flatnonzero(counts > 1)  # the few events heard on more than one channel
    if len(multi):
        # Sums of float32 values in float64 are exact here, so the order they are added
        # in does not matter: the mean is the same bits as from any other order.
        rows = order[np.repeat(counts > 1, counts)]
        sums = np.add.reduceat(keyed["rssi"][rows].astype(np.float64), np.cumsum(counts[multi]) - counts[multi])
        merged["rssi"][multi] = (sums / counts[multi]).astype(np.float32)
        merged["channel"][multi] = 0
    if fresh is None:
        n_merged = len(keyed) - len(merged)
    else:
        group = np.repeat(np.arange(len(starts)), counts)  # group of each row, in sorted order
        new = fresh[has_seq][order]
        n_new = np.bincount(group, weights=new, minlength=len(starts))
        n_old = counts - n_new
        n_merged = int(np.sum(np.where(n_new > 0, n_new - (n_old == 0), 0)))
    return concat_rows([merged, loose], batch.dtype), n_merged


def merge_channels_by_time(batch: Sightings, fresh: NDArray[np.bool_] | None = None) -> tuple[Sightings, int]:
    """:func:`merge_channels`, its events then sorted by time (stable): the same rows in
    the same order, without sorting every row by event. Only the rows whose hash of
    (gateway, device, seq) another row shares (the events heard on several channels, and
    the rare collision) go through :func:`merge_channels`; the rest are single events."""
    has_seq = batch["seq"] != UNKNOWN
    keyed_at = np.flatnonzero(has_seq)
    candidates = _shared_hash([_pair(batch["gateway"][keyed_at], batch["device"][keyed_at]),
                               batch["seq"][keyed_at].astype(np.int64)])
    n_merged = 0
    single = len(batch)  # rows 0..single are single events in the batch's order
    if candidates is None:
        events = batch
    else:
        multi = np.zeros(len(batch), dtype=bool)
        multi[keyed_at[candidates]] = True
        merged, n_merged = merge_channels(compress_rows(batch, multi), None if fresh is None else fresh[multi])
        events = concat_rows([compress_rows(batch, ~multi), merged], batch.dtype)  # merged has no loose rows
        single = len(events) - len(merged)
        has_seq = events["seq"] != UNKNOWN
    # merge_channels' order, then by time: at equal times the events by (gateway, device,
    # seq), then the rows without an event counter in their order here. Rows in canonical
    # order (as drop_redeliveries returns them) are, but for the merged events, in this
    # order already: those few are sorted and merged in.
    loose = (~has_seq).astype(np.float64)
    order = order_by_time(events["t"], loose, events["gateway"] * has_seq, events["device"] * has_seq,
                          events["seq"] * has_seq, np.arange(len(events)) * loose, sorted_runs=single)
    return take_rows(events, order), n_merged


def deduplicate(batch: Sightings, counters: IngestCounters) -> Sightings:
    """Drop re-deliveries and merge the three channels of one advertising event."""
    merged, n_merged = merge_channels(drop_redeliveries(batch, counters))
    counters.merged_channels += n_merged
    return merged


def ingest(batch: Sightings, n_gateways: int, counters: IngestCounters) -> Sightings:
    """Validate, deduplicate and sort one batch by event time (stable)."""
    counters.received += len(batch)
    clean = deduplicate(validate(batch, n_gateways, counters), counters)
    clean = clean[np.argsort(clean["t"], kind="stable")]
    counters.accepted += len(clean)
    return clean


NEW_IDS_PER_GATEWAY_PER_MINUTE = 600  # a busy dock door sees a few hundred new tags a minute


@dataclass
class NewDeviceCap:
    """At most ``per_minute`` *new* device ids per gateway per minute get a row in the
    device table; sightings of further new ids are only counted, per zone of the gateway
    that heard them, in an anonymous bucket (the ``anonymous`` status counter).

    Why: device tables, tracks and rule state grow with every id ever seen, so a gateway
    (or a stolen gateway key) announcing 99,000 made-up ids a second would otherwise grow
    the server for good. A known id is never capped, so a resolved rotating id (the same
    device under a new address, resolved to its stable id before it gets here) is not new.
    Minutes are fixed windows of the caller's clock; sans-IO like the rest of the engine.
    """

    per_minute: int = NEW_IDS_PER_GATEWAY_PER_MINUTE
    window_s: float = 60.0
    anonymous: Counter[str] = field(default_factory=Counter)
    refused_ids: int = 0
    _window: dict[str, tuple[int, int]] = field(default_factory=dict)  # gateway -> (window, used)

    def admit(self, gateway: str, new_ids: list[str], now: float) -> list[str]:
        """The leading part of ``new_ids`` (distinct ids not yet in the table) that this
        gateway may still register in the current window."""
        window = int(now // self.window_s)
        start, used = self._window.get(gateway, (window, 0))
        if start != window:
            used = 0
        room = max(0, self.per_minute - used)
        admitted = new_ids[:room]
        self._window[gateway] = (window, used + len(admitted))
        self.refused_ids += len(new_ids) - len(admitted)
        return admitted

    def count_anonymous(self, zone: str, sightings: int) -> None:
        self.anonymous[zone] += sightings

    def as_dict(self) -> dict[str, object]:
        return {"per_minute": self.per_minute, "refused_ids": self.refused_ids,
                "anonymous_sightings_by_zone": dict(sorted(self.anonymous.items()))}
