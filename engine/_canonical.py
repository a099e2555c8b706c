"""Compiled (numba) checks and merges for rows kept in a lexicographic order (time first,
then up to five keys), so ingest can skip re-sorting rows that are already in order.

The worker keeps its held rows in canonical order (``engine.ingest.canonical_order``) and
every close reads slices of them; a stable sort of rows already in order is the identity,
and a stable sort of (sorted rows, then a batch) is a stable merge of the two with the
batch sorted on its own. Both give the same order as sorting everything, in one pass.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import NDArray

from engine._order import lexsort_by_time


@numba.njit(cache=True, nogil=True, inline="always")
def _cmp_rows(k0: NDArray[np.generic], k1: NDArray[np.generic], k2: NDArray[np.generic], k3: NDArray[np.generic],
              k4: NDArray[np.generic], k5: NDArray[np.generic], p: int, q: int) -> int:
    """-1, 0 or 1 as row p sorts before, with, or after row q by (k0, .., k5)."""
    if k0[p] != k0[q]:
        return -1 if k0[p] < k0[q] else 1
    if k1[p] != k1[q]:
        return -1 if k1[p] < k1[q] else 1
    if k2[p] != k2[q]:
        return -1 if k2[p] < k2[q] else 1
    if k3[p] != k3[q]:
        return -1 if k3[p] < k3[q] else 1
    if k4[p] != k4[q]:
        return -1 if k4[p] < k4[q] else 1
    if k5[p] != k5[q]:
        return -1 if k5[p] < k5[q] else 1
    return 0


@numba.njit(cache=True, nogil=True)
def _is_sorted(lo: int, hi: int, k0: NDArray[np.generic], k1: NDArray[np.generic], k2: NDArray[np.generic],
               k3: NDArray[np.generic], k4: NDArray[np.generic], k5: NDArray[np.generic]) -> bool:
    for i in range(lo + 1, hi):  # noqa: SIM110 (a loop numba compiles)
        if _cmp_rows(k0, k1, k2, k3, k4, k5, i, i - 1) < 0:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _merge(a: NDArray[np.intp], b: NDArray[np.intp], k0: NDArray[np.generic], k1: NDArray[np.generic],
           k2: NDArray[np.generic], k3: NDArray[np.generic], k4: NDArray[np.generic],
           k5: NDArray[np.generic]) -> NDArray[np.intp]:
    """Stable merge of two orders (each sorted by the keys); on equal keys ``a`` first."""
    out = np.empty(len(a) + len(b), np.intp)
    i = j = n = 0
    while i < len(a) and j < len(b):
        if _cmp_rows(k0, k1, k2, k3, k4, k5, b[j], a[i]) < 0:
            out[n] = b[j]
            j += 1
        else:
            out[n] = a[i]
            i += 1
        n += 1
    while i < len(a):
        out[n] = a[i]
        i += 1
        n += 1
    while j < len(b):
        out[n] = b[j]
        j += 1
        n += 1
    return out


def _columns(t: NDArray[np.float64], keys: tuple[NDArray[np.generic], ...]) -> list[NDArray[np.generic]]:
    zeros = np.zeros(len(t), np.int8)
    return [np.ascontiguousarray(t, dtype=np.float64), *(np.ascontiguousarray(k) for k in keys),
            *([zeros] * (5 - len(keys)))]


def _run_order(cols: list[NDArray[np.generic]], t: NDArray[np.float64], keys: tuple[NDArray[np.generic], ...],
               lo: int, hi: int) -> NDArray[np.intp]:
    """Order of rows lo..hi: the identity when they are in order already."""
    if _is_sorted(lo, hi, *cols):
        return np.arange(lo, hi, dtype=np.intp)
    return lo + lexsort_by_time(t[lo:hi], *(k[lo:hi] for k in keys)).astype(np.intp)


def order_by_time(t: NDArray[np.float64], *keys: NDArray[np.generic],
                  sorted_runs: int | None = None) -> NDArray[np.intp]:
    """``lexsort_by_time(t, *keys)`` (by time, then each key in turn; stable; at most five
    keys, free of NaN), in one pass when the rows are in order already. With
    ``sorted_runs=s`` rows 0..s and s..n are each ordered on their own (the identity when
    one is in order) and then merged, for a sorted block followed by a batch."""
    if len(keys) > 5:
        raise ValueError("at most five keys after the time")
    n = len(t)
    cols = _columns(t, keys)
    if sorted_runs is None or sorted_runs <= 0 or sorted_runs >= n:
        return _run_order(cols, t, keys, 0, n)
    return _merge(_run_order(cols, t, keys, 0, sorted_runs), _run_order(cols, t, keys, sorted_runs, n), *cols)


def sorted_by_time(t: NDArray[np.float64], *keys: NDArray[np.generic]) -> bool:
    """Whether the rows are in ``order_by_time(t, *keys)`` order already (then it is the
    identity and the caller need not copy them)."""
    if len(keys) > 5:
        raise ValueError("at most five keys after the time")
    return bool(_is_sorted(0, len(t), *_columns(t, keys)))
