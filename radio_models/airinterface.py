"""The BLE air interface: advertising timing, air time, collisions, scanners, Wi-Fi.

Vectorized helpers the twin's radio tick calls on whole arrays of packets; nothing here
loops over packets in Python. Sources: Bluetooth Core Specification 5.4, Vol 6 Part B
(advertising events 4.4.2.2, packet formats 2.1-2.2), the pure-ALOHA survival bound
(Abramson 1970) as used for BLE advertising by Perez-Diaz de Cerio et al. (Sensors
17(3):499, 2017), and scanner duty cycling after Cho et al. (Sensors 15(1):59, 2015).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

ADV_CHANNEL_MHZ = {37: 2402.0, 38: 2426.0, 39: 2480.0}
ADV_DELAY_MAX_S = 0.010  # Core spec Vol 6 Part B 4.4.2.2.1: advDelay uniform 0-10 ms
ADV_INTERVAL_MIN_S = 0.020
ADV_INTERVAL_MAX_S = 10.24
BLE_CHANNEL_HALF_WIDTH_MHZ = 1.0
WIFI_HALF_WIDTH_MHZ = 11.0  # 802.11b/g/n 20 MHz channels occupy about 22 MHz
PHYS = ("1M", "2M", "coded-s2", "coded-s8")


def packet_air_time_s(payload_bytes: int | NDArray[np.integer], phy: str = "1M") -> FloatArray:
    """Time on air of one advertising packet with a PDU payload of ``payload_bytes``
    (6 bytes AdvA + 0-31 AdvData for legacy advertising).

    Core spec Vol 6 Part B 2.1: 1M = preamble 1 + access address 4 + header 2 + payload
    + CRC 3 bytes at 1 Mb/s (16-47 bytes, 128-376 us); 2M: preamble 2 bytes at 2 Mb/s.
    Coded PHY (2.2): preamble 80 us, access address 256 us, CI 16 us and TERM1 24 us at
    S = 8, then header + payload + CRC and TERM2 (3 bits) at S = 2 or 8 us per bit.
    Legacy advertising only uses 1M; 2M and coded apply to extended advertising.
    """
    p = np.asarray(payload_bytes, dtype=float)
    if np.any((p < 0) | (p > 255)):
        raise ValueError("payload_bytes must be 0-255")
    match phy:
        case "1M":
            return (1 + 4 + 2 + p + 3) * 8e-6
        case "2M":
            return (2 + 4 + 2 + p + 3) * 8 / 2e6
        case "coded-s2" | "coded-s8":
            s = 2 if phy == "coded-s2" else 8
            return 376e-6 + ((2 + p + 3) * 8 + 3) * s * 1e-6
        case _:
            raise ValueError(f"phy must be one of {PHYS}, got {phy!r}")


def aloha_survival(
    n_advertisers: int | FloatArray, air_time_s: float, period_s: float | FloatArray
) -> FloatArray:
    """Pure-ALOHA probability that a packet overlaps none of N-1 other advertisers with
    event period T: (1 - 2 tau / T)^(N-1) (docs/references.md section 2)."""
    n = np.asarray(n_advertisers, dtype=float)
    return np.asarray(
        np.clip(1 - 2 * air_time_s / np.asarray(period_s, dtype=float), 0, 1) ** (n - 1),
        dtype=float,
    )


def next_event_times(t: FloatArray, interval_s: FloatArray, rng: np.random.Generator) -> FloatArray:
    """Start of the next advertising event: T_advEvent = advInterval + advDelay,
    advDelay uniform 0-10 ms (Core spec Vol 6 Part B 4.4.2.2.1)."""
    return t + interval_s + rng.uniform(0.0, ADV_DELAY_MAX_S, len(t))


def scanner_listening(
    t: NDArray[np.floating],
    channel_index: int | NDArray[np.integer],
    phase_s: NDArray[np.floating],
    window_s: NDArray[np.floating],
    interval_s: NDArray[np.floating],
    *,
    switch_gap_s: float | FloatArray = 0.0,
) -> NDArray[np.bool_]:
    """Whether a scanner hears channel 37 + ``channel_index`` at time t.

    A scanner listens for scanWindow at the start of every scanInterval, on one channel per
    interval in turn 37 -> 38 -> 39 (Cho et al. 2015); the first ``switch_gap_s`` of each
    window is lost to retuning. Catch probability of an advertising event is therefore
    (scanWindow - gap) / scanInterval.
    """
    since = t - phase_s
    cycle = np.floor(since / interval_s)
    into = since - cycle * interval_s
    return (
        (into >= switch_gap_s) & (into < window_s) & ((cycle.astype(np.int64) % 3) == channel_index)
    )


def listened_packets(
    t: NDArray[np.floating],
    gw: NDArray[np.integer],
    phase_s: NDArray[np.floating],
    window_s: NDArray[np.floating],
    interval_s: NDArray[np.floating],
    *,
    cycle0: NDArray[np.integer],
    spacing_s: float,
    switch_gap_s: float = 0.0,
    n_channels: int = 3,
) -> tuple[NDArray[np.intp], NDArray[np.int16]]:
    """Which of the packets of each advertising event (start ``t``, packets at t + k
    spacing on channel index k) gateway ``gw`` is listening for.

    Per-gateway arrays: ``phase_s`` (start of a scan interval), ``cycle0`` (the rotation
    counter of the interval starting at phase). Same rule as :func:`scanner_listening`,
    evaluated once per event instead of once per channel: the scanner's channel at t is
    heard if the matching packet still falls in the window; a packet pushed past the end
    of the interval by the spacing meets the next channel of the rotation. Returns (event
    index, channel index), sorted by event index.
    """
    iv = interval_s[gw]
    since = t - phase_s[gw]
    cyc = np.floor(since / iv)
    into = since - cyc * iv
    c = (cycle0[gw] + cyc.astype(np.int64)) % n_channels
    into_a = into + c * spacing_s
    win = window_s[gw]
    a = (into_a >= switch_gap_s) & (into_a < win) & (into_a < iv)
    idx_a = np.flatnonzero(a)
    if 2 * (n_channels - 1) * spacing_s >= float(np.min(interval_s, initial=np.inf)):
        # Scan intervals shorter than an advertising event: check every packet exactly.
        parts = [
            np.flatnonzero(
                scanner_listening(
                    t + k * spacing_s,
                    (k - cycle0[gw]) % n_channels,
                    phase_s[gw],
                    win,
                    iv,
                    switch_gap_s=switch_gap_s,
                )
            )
            for k in range(n_channels)
        ]
        idx = np.concatenate(parts)
        ks = np.repeat(np.arange(n_channels, dtype=np.int16), [len(p) for p in parts])
        order = np.argsort(idx, kind="stable")
        return idx[order], ks[order]
    near = np.flatnonzero(into + (n_channels - 1) * spacing_s >= iv)
    k_b = (c[near] + 1) % n_channels
    into_b = into[near] + k_b * spacing_s - iv[near]
    b = (into_b >= switch_gap_s) & (into_b < win[near])
    # Merge the few wrapped packets into the sorted main list (after their own event's
    # first packet, which is earlier in time) instead of sorting everything again.
    at = np.searchsorted(idx_a, near[b], side="right")
    idx = np.insert(idx_a, at, near[b])
    ks = np.insert(c[idx_a].astype(np.int16), at, k_b[b].astype(np.int16))
    return idx, ks


def wifi_overlaps(ble_channel: int, wifi_channel: int) -> bool:
    """True when a 2.4 GHz Wi-Fi channel (1-13, centre 2407 + 5 ch MHz, about 22 MHz wide)
    overlaps a BLE advertising channel (2 MHz wide): ch 1 hits 37, ch 6 hits 38's edge,
    ch 11 leaves all three clear, ch 12-13 hit 39."""
    centre = 2407.0 + 5.0 * wifi_channel
    return (
        abs(ADV_CHANNEL_MHZ[ble_channel] - centre)
        < WIFI_HALF_WIDTH_MHZ + BLE_CHANNEL_HALF_WIDTH_MHZ
    )


def interference_mw(
    group: NDArray[np.integer],
    t: NDArray[np.floating],
    power_dbm: NDArray[np.floating],
    air_time_s: NDArray[np.floating],
    channel: NDArray[np.integer] | None = None,
) -> FloatArray:
    """Summed power (mW) of the *other* packets in the same group (a receiver) and on the
    same channel that overlap each packet in time.

    Packets must be sorted by (group, t). Two packets overlap when their starts are closer
    than the air time of the earlier one. Walks outward one neighbour offset at a time, so
    the Python loop runs over the largest pile-up (a handful), never over packets.
    """
    n = len(t)
    if n < 2:
        return np.zeros(n)
    # Offset 1 over everything; packets still overlapping at offset k+1 overlapped at
    # offset k, so the candidate set only shrinks.
    a = np.flatnonzero((group[1:] == group[:-1]) & (t[1:] - t[:-1] < air_time_s[:-1]))
    pairs_a, pairs_b = [], []
    off = 1
    while len(a):
        pairs_a.append(a)
        pairs_b.append(a + off)
        off += 1
        a = a[a + off < n]
        b = a + off
        a = a[(group[a] == group[b]) & (t[b] - t[a] < air_time_s[a])]
    if not pairs_a:
        return np.zeros(n)
    pa, pb = np.concatenate(pairs_a), np.concatenate(pairs_b)
    if channel is not None:
        same = channel[pa] == channel[pb]
        pa, pb = pa[same], pb[same]
    p = np.asarray(power_dbm, dtype=float)
    into_a = np.bincount(pa, 10.0 ** (p[pb] / 10.0), minlength=n)
    return np.asarray(into_a + np.bincount(pb, 10.0 ** (p[pa] / 10.0), minlength=n), dtype=float)


def survives(
    power_dbm: FloatArray, interference: FloatArray, capture_db: float | None
) -> NDArray[np.bool_]:
    """A packet survives a collision when nothing overlaps it, or (with capture) when its
    power exceeds the summed interference by ``capture_db``: the Core spec's co-channel
    C/I is 21 dB, real chips capture at 6-10 dB (docs/references.md section 2)."""
    clear = interference <= 0.0
    if capture_db is None:
        return clear
    hit = np.flatnonzero(~clear)
    sir = np.asarray(power_dbm, dtype=float)[hit] - 10.0 * np.log10(interference[hit])
    clear[hit] = sir >= capture_db
    return clear


def first_per_bucket(bucket: NDArray[np.integer], limit: NDArray[np.integer]) -> NDArray[np.bool_]:
    """Keep the first ``limit[bucket]`` items of each bucket, in the given order: a gateway
    that can forward at most so many reports drops the rest."""
    n = len(bucket)
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(bucket, kind="stable")
    sb = bucket[order]
    starts = np.r_[0, np.flatnonzero(sb[1:] != sb[:-1]) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - run_start
    return rank < limit[bucket]


@dataclass(frozen=True)
class WifiInterferer:
    """A Wi-Fi transmitter: where it is, its channel, its power at 1 m and how often it is
    on the air. It hits BLE packets on the channels it overlaps."""

    x: float
    y: float
    channel: int
    power_1m_dbm: float = -20.0  # 20 dBm EIRP minus 40 dB free-space loss at 1 m, 2.44 GHz
    duty_cycle: float = 0.3

    def hit_channels(self) -> tuple[int, ...]:
        return tuple(c for c in ADV_CHANNEL_MHZ if wifi_overlaps(c, self.channel))
