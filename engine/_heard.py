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
    for r in range(n_rows):  # stable insertion sort of each row's readings by gateway
        lo, hi = start[r], start[r + 1]
        for a in range(lo + 1, hi):
            v = order[a]
            g = gateway[v]
            b = a - 1
            while b >= lo and gateway[order[b]] > g:
                order[b + 1] = order[b]
                b -= 1
            order[b + 1] = v
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
