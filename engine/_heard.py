"""The heard cells of the engine's windows, compiled (numba): (row, gateway) means without
a dense (rows x gateways) matrix.

A window row of the large scenario hears about 4 of its 54 gateways, so summing into a
dense matrix (two bincounts over rows x 54 cells, a division, then finding the heard
cells again) touches about 13 times more memory than there are readings. Here the
readings are put in (row, gateway) order by a stable counting sort on the row and an
insertion sort of each row's few readings by gateway, and each cell's readings are added
in their input order, as ``np.bincount`` adds them, so the means are the same bits.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import NDArray


@numba.njit(cache=True, nogil=True, inline="always")
def _sort_by_gateway(order: NDArray[np.int64], gateway: NDArray[np.integer], lo: int, hi: int) -> None:
    """Stable insertion sort of order[lo:hi] by gateway, in place: a row's readings are few
    and arrive nearly sorted, and equal gateways keep their order (the cell means' sums)."""
    for a in range(lo + 1, hi):
        v = order[a]
        g = gateway[v]
        b = a - 1
        while b >= lo and gateway[order[b]] > g:
            order[b + 1] = order[b]
            b -= 1
        order[b + 1] = v


@numba.njit(cache=True, nogil=True)
def heard_cells(
    row: NDArray[np.intp], gateway: NDArray[np.int64], rssi: NDArray[np.float64], n_rows: int,
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """Row, gateway and mean RSSI of every heard cell, by row then ascending gateway."""
    n = len(row)
    start = np.zeros(n_rows + 1, np.int64)
    for i in range(n):
        start[row[i] + 1] += 1
    for r in range(n_rows):
        start[r + 1] += start[r]
    fill = start[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):  # stable: a row's readings keep their input order
        r = row[i]
        order[fill[r]] = i
        fill[r] += 1
    for r in range(n_rows):  # each row's readings by gateway
        _sort_by_gateway(order, gateway, start[r], start[r + 1])
    out_row = np.empty(n, np.intp)
    out_col = np.empty(n, np.intp)
    out_mean = np.empty(n, np.float64)
    m = 0
    a = 0
    while a < n:
        v = order[a]
        r = row[v]
        g = gateway[v]
        total = 0.0
        count = 0
        while a < n and row[order[a]] == r and gateway[order[a]] == g:
            total += rssi[order[a]]
            count += 1
            a += 1
        out_row[m] = r
        out_col[m] = g
        out_mean[m] = total / count
        m += 1
    return out_row[:m], out_col[:m], out_mean[:m]


@numba.njit(cache=True, nogil=True)
def window_cells(
    t: NDArray[np.float64], device: NDArray[np.int32], gateway: NDArray[np.int32], rssi: NDArray[np.float32],
    battery: NDArray[np.int8], motion: NDArray[np.int8], k_first: int, k_last: int, step: float,
    window: float, per: int, unknown: int,
) -> tuple[int, NDArray[np.int64], NDArray[np.intp], NDArray[np.intp], NDArray[np.float64],
           NDArray[np.int8], NDArray[np.int8]]:
    """The engine's sliding windows k_first..k_last over time-sorted sightings, in one
    pass and without the (sightings x windows) index arrays: each window row (window,
    device) as its key (window - k_first) * n_dev + device, ascending, then the heard
    cells of :func:`heard_cells` and each row's newest battery and motion reading.

    A sighting at t belongs to windows floor(t / step) + 1 ... + per whose start
    k * step - window it is not before; its readings go in sighting order, then window
    order, as the numpy replication of engine.pipeline added them, so the means are the
    same bits. Returns n_dev = 0 with empty arrays when nothing falls in the windows, and
    n_dev = -1 when the (window, device) key space is too sparse for a presence table
    (the caller ranks the keys by sorting instead). Sightings in time order (as the
    engine passes them) go through :func:`_windows_in_time_order`, window by window."""
    n = len(t)
    in_order = True
    for i in range(1, n):
        if not (t[i] >= t[i - 1]):
            in_order = False
            break
    if in_order:
        return _windows_in_time_order(
            t, device, gateway, rssi, battery, motion, k_first, k_last, step, window, per, unknown)
    m = 0
    max_dev = -1
    for i in range(n):
        base = np.int64(np.floor(t[i] / step + 1e-12)) + 1
        for j in range(per):
            w = base + j
            if w >= k_first and w <= k_last and t[i] >= w * step - window:
                m += 1
                max_dev = max(max_dev, device[i])
    empty_i8 = np.zeros(0, np.int8)
    if m == 0:
        return (0, np.zeros(0, np.int64), np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0),
                empty_i8, empty_i8)
    n_dev = np.int64(max_dev) + 1
    n_keys = (k_last - k_first + 1) * n_dev
    if n_keys > 4 * m + 4096:
        return (-1, np.zeros(0, np.int64), np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0),
                empty_i8, empty_i8)
    rank = np.full(n_keys, -1, np.int64)
    for i in range(n):
        base = np.int64(np.floor(t[i] / step + 1e-12)) + 1
        for j in range(per):
            w = base + j
            if w >= k_first and w <= k_last and t[i] >= w * step - window:
                rank[(w - k_first) * n_dev + device[i]] = 0
    n_rows = 0
    for k in range(n_keys):
        if rank[k] == 0:
            rank[k] = n_rows
            n_rows += 1
    keys = np.empty(n_rows, np.int64)
    for k in range(n_keys):
        if rank[k] >= 0:
            keys[rank[k]] = k
    row = np.empty(m, np.intp)
    gw = np.empty(m, np.int64)
    value = np.empty(m, np.float64)
    bat = np.full(n_rows, unknown, np.int8)
    mot = np.full(n_rows, unknown, np.int8)
    e = 0
    for i in range(n):
        base = np.int64(np.floor(t[i] / step + 1e-12)) + 1
        for j in range(per):
            w = base + j
            if w >= k_first and w <= k_last and t[i] >= w * step - window:
                r = rank[(w - k_first) * n_dev + device[i]]
                row[e] = r
                gw[e] = gateway[i]
                value[e] = rssi[i]
                if battery[i] != unknown:
                    bat[r] = battery[i]
                if motion[i] != unknown:
                    mot[r] = motion[i]
                e += 1
    cell_row, cell_col, cell_mean = heard_cells(row, gw, value, n_rows)
    return int(n_dev), keys, cell_row, cell_col, cell_mean, bat, mot


@numba.njit(cache=True, nogil=True)
def _windows_in_time_order(
    t: NDArray[np.float64], device: NDArray[np.int32], gateway: NDArray[np.int32], rssi: NDArray[np.float32],
    battery: NDArray[np.int8], motion: NDArray[np.int8], k_first: int, k_last: int, step: float,
    window: float, per: int, unknown: int,
) -> tuple[int, NDArray[np.int64], NDArray[np.intp], NDArray[np.intp], NDArray[np.float64],
           NDArray[np.int8], NDArray[np.int8]]:
    """:func:`window_cells` for sightings in time order: a window's sightings are then one contiguous run (its
    membership test is monotone in t), so each window is done on its own run, whose
    per-device tables stay in cache, instead of by one pass over all (window, sighting)
    readings and a counting sort of all of them. Same rows, cells and bits: rows by
    window then device, a row's cells by gateway, a cell's readings added in sighting
    order, a row's newest battery and motion."""
    n = len(t)
    base = np.empty(n, np.int64)
    for i in range(n):
        base[i] = np.int64(np.floor(t[i] / step + 1e-12)) + 1
    # Each window's run [first, stop): its readings number m, its devices are below n_dev.
    n_win = k_last - k_first + 1
    first = np.zeros(max(n_win, 0), np.int64)
    stop = np.zeros(max(n_win, 0), np.int64)
    lo = 0
    hi = 0
    m = 0
    max_dev = -1
    seen = 0
    for w in range(k_first, k_last + 1):
        edge = w * step - window
        while hi < n and base[hi] <= w:
            hi += 1
        while lo < hi and not (base[lo] >= w - per + 1 and t[lo] >= edge):
            lo += 1
        first[w - k_first], stop[w - k_first] = lo, hi
        m += hi - lo
        for i in range(max(lo, seen), hi):  # each sighting of a window once
            max_dev = max(max_dev, device[i])
        seen = max(seen, hi)
    empty_i8 = np.zeros(0, np.int8)
    if m == 0:
        return (0, np.zeros(0, np.int64), np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0),
                empty_i8, empty_i8)
    n_dev = np.int64(max_dev) + 1
    if n_win * n_dev > 4 * m + 4096:
        return (-1, np.zeros(0, np.int64), np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0),
                empty_i8, empty_i8)
    keys = np.empty(m, np.int64)
    cell_row = np.empty(m, np.intp)
    cell_col = np.empty(m, np.intp)
    cell_mean = np.empty(m, np.float64)
    bat = np.empty(m, np.int8)
    mot = np.empty(m, np.int8)
    count = np.zeros(n_dev, np.int64)
    fill = np.zeros(n_dev, np.int64)
    order = np.empty(n, np.int64)
    gws = np.empty(n, np.int64)  # one row's gateways, their sums and counts (a row has at most n readings)
    totals = np.empty(n, np.float64)
    counts = np.empty(n, np.int64)
    n_rows = 0
    n_cells = 0
    for w in range(k_first, k_last + 1):
        lo, hi = first[w - k_first], stop[w - k_first]
        if lo == hi:
            continue
        for i in range(lo, hi):
            count[device[i]] += 1
        pos = 0
        for d in range(n_dev):  # rows by ascending device
            if count[d] > 0:
                fill[d] = pos
                pos += count[d]
        for i in range(lo, hi):  # stable: a device's readings keep sighting order
            d = device[i]
            order[fill[d]] = i
            fill[d] += 1
        a = 0
        while a < pos:
            d = device[order[a]]
            end = a + count[d]
            count[d] = 0
            b_r = unknown
            m_r = unknown
            for q in range(a, end):  # the row's newest battery and motion
                v = order[q]
                if battery[v] != unknown:
                    b_r = battery[v]
                if motion[v] != unknown:
                    m_r = motion[v]
            # The row's cells: each gateway's readings summed in sighting order (as a stable
            # sort by gateway, then a sum, would), the few gateways then put in order.
            k = 0
            for q in range(a, end):
                v = order[q]
                g = gateway[v]
                c = 0
                while c < k and gws[c] != g:
                    c += 1
                if c == k:
                    gws[k], totals[k], counts[k] = g, 0.0, 0
                    k += 1
                totals[c] += np.float64(rssi[v])
                counts[c] += 1
            for c in range(1, k):  # insertion sort of the row's few gateways
                g, tot, cnt = gws[c], totals[c], counts[c]
                b = c - 1
                while b >= 0 and gws[b] > g:
                    gws[b + 1], totals[b + 1], counts[b + 1] = gws[b], totals[b], counts[b]
                    b -= 1
                gws[b + 1], totals[b + 1], counts[b + 1] = g, tot, cnt
            for c in range(k):
                cell_row[n_cells] = n_rows
                cell_col[n_cells] = gws[c]
                cell_mean[n_cells] = totals[c] / counts[c]
                n_cells += 1
            keys[n_rows] = (w - k_first) * n_dev + d
            bat[n_rows] = b_r
            mot[n_rows] = m_r
            n_rows += 1
            a = end
    return (int(n_dev), keys[:n_rows], cell_row[:n_cells], cell_col[:n_cells], cell_mean[:n_cells],
            bat[:n_rows].copy(), mot[:n_rows].copy())
