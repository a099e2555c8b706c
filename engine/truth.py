"""Ground truth: where every tag really was, as piecewise-linear segments in time.

A tag at rest is one segment with equal start and end points; a tag being carried
follows its mover's path, one segment per straight leg. Storing segments instead of
per-second samples keeps 10,000 tags over an hour in a few megabytes and gives the
exact position at any time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

SEGMENT_DTYPE = np.dtype(
    [("device", "i4"), ("t0", "f8"), ("t1", "f8"), ("x0", "f8"), ("y0", "f8"), ("x1", "f8"), ("y1", "f8")]
)
MOVEMENT_DTYPE = np.dtype(
    [("t", "f8"), ("device", "i4"), ("mover", "i4"), ("kind", "U6"), ("x", "f8"), ("y", "f8"), ("zone", "i4")]
)


@dataclass(frozen=True)
class GroundTruth:
    """Segments sorted by (device, t0), and the log of pick-ups and drops."""

    segments: NDArray[np.void]
    movements: NDArray[np.void]

    @classmethod
    def build(cls, segments: NDArray[np.void], movements: NDArray[np.void]) -> GroundTruth:
        order = np.lexsort((segments["t0"], segments["device"]))
        mv_order = np.lexsort((movements["device"], movements["t"]))
        return cls(segments[order], movements[mv_order])

    def position_at(self, device: NDArray[np.integer], t: NDArray[np.floating]) -> NDArray[np.float64]:
        """True (x, y) of each ``device[i]`` at ``t[i]``; NaN where no segment covers it."""
        seg = self.segments
        device = np.asarray(device, dtype=np.int64)
        t = np.asarray(t, dtype=float)
        span = float(max(seg["t1"].max(initial=0.0), t.max(initial=0.0))) + 1.0
        seg_key = seg["device"].astype(float) * span + seg["t0"]
        key = device.astype(float) * span + t
        i = np.searchsorted(seg_key, key, side="right") - 1
        i = np.clip(i, 0, max(len(seg) - 1, 0))
        out = np.full((len(t), 2), np.nan)
        if len(seg) == 0:
            return out
        s = seg[i]
        ok = (s["device"] == device) & (t >= s["t0"]) & (t <= s["t1"])
        dt = s["t1"] - s["t0"]
        frac = np.where(dt > 0, (t - s["t0"]) / np.where(dt > 0, dt, 1.0), 0.0)
        out[ok, 0] = (s["x0"] + frac * (s["x1"] - s["x0"]))[ok]
        out[ok, 1] = (s["y0"] + frac * (s["y1"] - s["y0"]))[ok]
        return out
