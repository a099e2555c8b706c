"""Sorting kernels for ingest, compiled (numba): ties of a time sort broken by more keys,
keys shared by more than one row, and set membership of keys.

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
def _cmp(a: NDArray[np.generic], p: int, q: int) -> int:
    if a[p] < a[q]:
        return -1
    if a[p] > a[q]:
        return 1
    return 0


@numba.njit(cache=True, nogil=True)
def _less(k0: NDArray[np.generic], k1: NDArray[np.generic], k2: NDArray[np.generic], k3: NDArray[np.generic],
          k4: NDArray[np.generic], p: int, q: int) -> bool:
    c = _cmp(k0, p, q)
    if c == 0:
        c = _cmp(k1, p, q)
    if c == 0:
        c = _cmp(k2, p, q)
    if c == 0:
        c = _cmp(k3, p, q)
    if c == 0:
        c = _cmp(k4, p, q)
    return c < 0


INSERTION_RUN = 24  # longer runs of equal times are left to np.lexsort


@numba.njit(cache=True, nogil=True)
def sort_ties(order: NDArray[np.intp], t: NDArray[np.float64], k0: NDArray[np.generic], k1: NDArray[np.generic],
              k2: NDArray[np.generic], k3: NDArray[np.generic], k4: NDArray[np.generic]) -> NDArray[np.bool_]:
    """In place: within each run of equal ``t[order]`` of at most INSERTION_RUN rows, a
    stable insertion sort of ``order`` by the keys k0..k4 (compared in that order).
    Returns which positions of ``order`` lie in longer runs, left as they were (live
    captures stamp many rows with one millisecond, where this would be quadratic)."""
    n = len(order)
    long_run = np.zeros(n, np.bool_)
    i = 0
    while i < n:
        ti = t[order[i]]
        j = i + 1
        while j < n and t[order[j]] == ti:
            j += 1
        if j - i > INSERTION_RUN:
            for a in range(i + 1, j):  # already in order (rows kept canonical): nothing to do
                if _less(k0, k1, k2, k3, k4, order[a], order[a - 1]):
                    long_run[i:j] = True
                    break
        else:
            for a in range(i + 1, j):
                cur = order[a]
                b = a - 1
                while b >= i and _less(k0, k1, k2, k3, k4, cur, order[b]):
                    order[b + 1] = order[b]
                    b -= 1
                order[b + 1] = cur
        i = j
    return long_run


@numba.njit(cache=True, nogil=True)
def shared_keys(h: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Which values of ``h`` occur more than once: an open-addressing hash table, one pass
    to count and one to mark (no sort)."""
    n = len(h)
    size = 16
    while size < 2 * n:
        size *= 2
    mask = size - 1
    keys = np.empty(size, np.int64)
    count = np.zeros(size, np.int32)
    slot = np.empty(n, np.int64)
    for i in range(n):
        v = h[i]
        j = (v ^ (v >> 31)) & mask
        while count[j] != 0 and keys[j] != v:
            j = (j + 1) & mask
        keys[j] = v
        count[j] += 1
        slot[i] = j
    out = np.empty(n, np.bool_)
    for i in range(n):
        out[i] = count[slot[i]] > 1
    return out


@numba.njit(cache=True, nogil=True)
def member_of(a: NDArray[np.int64], b: NDArray[np.int64]) -> NDArray[np.bool_]:
    """``np.isin(a, b)`` for int64 values: an open-addressing hash table of ``b`` probed
    with each value of ``a`` (no sort of either)."""
    size = 16
    while size < 2 * len(b):
        size *= 2
    mask = size - 1
    keys = np.empty(size, np.int64)
    used = np.zeros(size, np.bool_)
    for i in range(len(b)):
        v = b[i]
        j = (v ^ (v >> 31)) & mask
        while used[j] and keys[j] != v:
            j = (j + 1) & mask
        keys[j] = v
        used[j] = True
    out = np.empty(len(a), np.bool_)
    for i in range(len(a)):
        v = a[i]
        j = (v ^ (v >> 31)) & mask
        while used[j] and keys[j] != v:
            j = (j + 1) & mask
        out[i] = used[j]
    return out


def lexsort_by_time(t: NDArray[np.float64], *keys: NDArray[np.generic]) -> NDArray[np.intp]:
    """``np.lexsort((*reversed(keys), t))``: by time, then by each key (at most five) in
    turn, stable. Keys must be free of NaN."""
    order = np.argsort(t, kind="stable")
    if len(order) > 1 and keys:
        ts = t[order]
        if bool(np.any(ts[1:] == ts[:-1])):
            padded = [np.ascontiguousarray(k) for k in keys] + [np.zeros(len(t), np.int8)] * (5 - len(keys))
            long_run = sort_ties(order, np.ascontiguousarray(t, dtype=np.float64), *padded)
            if long_run.any():  # by time first, so each run stays where it is
                at = np.flatnonzero(long_run)
                sub = order[at]
                order[at] = sub[np.lexsort([k[sub] for k in keys[::-1]] + [t[sub]])]
    return order



BUCKET_RUN = 32  # a bucket longer than this is sorted by numba's quicksort, not by insertion


@numba.njit(cache=True, nogil=True)
def _sort_by_bucket(keys: NDArray[np.int64], divisor: int, buckets: int) -> NDArray[np.int64]:
    out = np.empty_like(keys)
    start = np.zeros(buckets + 1, np.int64)
    for i in range(len(keys)):
        start[((keys[i] >> 32) // divisor) + 1] += 1
    for b in range(buckets):
        start[b + 1] += start[b]
    fill = start[:-1].copy()
    for i in range(len(keys)):  # each bucket keeps the keys' order: nearly sorted already
        b = (keys[i] >> 32) // divisor
        out[fill[b]] = keys[i]
        fill[b] += 1
    for b in range(buckets):
        lo, hi = start[b], start[b + 1]
        if hi - lo > BUCKET_RUN:
            out[lo:hi].sort()
            continue
        for i in range(lo + 1, hi):
            v = out[i]
            j = i - 1
            while j >= lo and out[j] > v:
                out[j + 1] = out[j]
                j -= 1
            out[j + 1] = v
    return out


def sort_keys_by_device(keys: NDArray[np.int64], divisor: int = 1) -> NDArray[np.int64]:
    """``np.sort(keys)`` for keys ``(device * divisor + k) << 32 | low`` whose devices are
    few next to the keys (the rules' per-second counters: a batch holds a handful of
    sightings per tag): the keys bucketed by device in one linear pass, then each short
    bucket sorted by insertion (each tag's sightings come nearly in order). Negative keys,
    or devices far more than the keys, take ``np.sort``."""
    if len(keys) < 2 or divisor < 1:
        return np.sort(keys)
    lo, hi = int(keys.min()), int(keys.max())
    buckets = ((hi >> 32) // divisor) + 1
    if lo < 0 or buckets > 4 * len(keys) + 65_536:
        return np.sort(keys)
    return _sort_by_bucket(np.ascontiguousarray(keys, dtype=np.int64), divisor, buckets)
