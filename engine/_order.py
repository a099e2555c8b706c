"""Sorting kernels for ingest, compiled (numba): ties of a time sort broken by more keys.

Sightings arrive nearly sorted by time, and the rows that share a time are few (one
advertising event heard by a handful of gateways), so a stable sort by time followed by
an insertion sort of each run of equal times gives ``np.lexsort`` of all the keys at a
fraction of its cost (lexsort sorts the whole array once per key).
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import NDArray


@numba.njit(cache=True, nogil=True)
def _less(keys: NDArray[np.float64], p: int, q: int) -> bool:
    for k in range(keys.shape[0]):
        a, b = keys[k, p], keys[k, q]
        if a < b:
            return True
        if a > b:
            return False
    return False


@numba.njit(cache=True, nogil=True)
def sort_ties(order: NDArray[np.intp], t: NDArray[np.float64], keys: NDArray[np.float64]) -> None:
    """In place: within each run of equal ``t[order]``, a stable sort of ``order`` by the
    rows of ``keys`` (keys, n), first row first."""
    n = len(order)
    i = 0
    while i < n:
        ti = t[order[i]]
        j = i + 1
        while j < n and t[order[j]] == ti:
            j += 1
        for a in range(i + 1, j):
            cur = order[a]
            b = a - 1
            while b >= i and _less(keys, cur, order[b]):
                order[b + 1] = order[b]
                b -= 1
            order[b + 1] = cur
        i = j


def lexsort_by_time(t: NDArray[np.float64], *keys: NDArray[np.generic]) -> NDArray[np.intp]:
    """``np.lexsort((*reversed(keys), t))``: by time, then by each key in turn, stable.
    Keys must be exact in float64 (ints up to 2**53, float32) and free of NaN."""
    order = np.argsort(t, kind="stable")
    if len(order) > 1 and keys:
        ts = t[order]
        if bool(np.any(ts[1:] == ts[:-1])):
            sort_ties(order, np.ascontiguousarray(t, dtype=np.float64),
                      np.vstack([np.asarray(k, dtype=np.float64) for k in keys]))
    return order
