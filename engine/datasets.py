"""Importers for public BLE datasets with ground truth.

Kolakowski 2021 (Sensors 21(18):6270, CC BY 4.0): six anchors in a furnished flat, a
4,104-point calibration walk and a 719-row robot test track. Column order in the CSVs
is ``,ts,x,heading,y,rssi_1..rssi_6``; missing RSSI cells are empty.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from radio_models.calibration import Calibration, fit_log_distance

FloatArray = NDArray[np.float64]

# The copy that ships with the repository (tests/data/kolakowski, CC BY 4.0, with its licence).
KOLAKOWSKI_IN_REPO = Path(__file__).resolve().parent.parent / "tests" / "data" / "kolakowski"


class DatasetError(ValueError):
    """A dataset file that cannot be read, naming the file, row and column."""


@dataclass(frozen=True)
class RssiTrack:
    """Rows of (time, true x, true y) with an RSSI per anchor (NaN = not heard)."""

    t: FloatArray  # seconds
    xy: FloatArray  # (rows, 2) metres
    rssi: FloatArray  # (rows, anchors) dBm


@dataclass(frozen=True)
class KolakowskiFlat:
    anchor_ids: tuple[str, ...]
    anchor_xyz: FloatArray
    outline: FloatArray
    calibration: RssiTrack
    test: RssiTrack


def _read_track(path: Path, n_anchors: int) -> RssiTrack:
    try:
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            rows = list(reader)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror})") from None
    except StopIteration:
        raise DatasetError(f"{path}: empty file") from None
    want = ["ts", "x", "heading", "y", *(f"rssi_{i + 1}" for i in range(n_anchors))]
    missing = [c for c in want if c not in header]
    if missing:
        raise DatasetError(f"{path}: missing columns {missing}")
    idx = [header.index(c) for c in want]
    out = np.full((len(rows), len(want)), np.nan)
    for r, row in enumerate(rows):
        for j, col in enumerate(idx):
            cell = row[col] if col < len(row) else ""
            if cell == "":
                if j < 4:
                    raise DatasetError(f"{path}: row {r + 2}: column {want[j]!r} is empty")
                continue
            try:
                out[r, j] = float(cell)
            except ValueError:
                raise DatasetError(f"{path}: row {r + 2}: column {want[j]!r}: not a number: {cell!r}") from None
    t = (out[:, 0] - out[0, 0]) / 1e9 if len(out) else out[:, 0]
    return RssiTrack(t=t, xy=out[:, [1, 3]], rssi=out[:, 4:])


def load_kolakowski(folder: Path = KOLAKOWSKI_IN_REPO) -> KolakowskiFlat:
    """Load anchors, outline, calibration walk and test track from the dataset folder."""
    folder = Path(folder)
    anchors = np.genfromtxt(folder / "anchors.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
    ids = tuple(str(i) for i in anchors["id"])
    xyz = np.column_stack([anchors["x"], anchors["y"], anchors["z"]]).astype(float)
    outline = np.genfromtxt(folder / "layout.csv", delimiter=",", skip_header=1, dtype=float)
    return KolakowskiFlat(
        anchor_ids=ids,
        anchor_xyz=xyz,
        outline=outline,
        calibration=_read_track(folder / "calibration_df.csv", len(ids)),
        test=_read_track(folder / "test_robot_df.csv", len(ids)),
    )


def fit_kolakowski(
    folder: Path | None = None,
    tag_height_m: float = 0.3,
    decorrelation_m: float | None = 2.0,
    n_boot: int = 200,
) -> Calibration:
    """Calibrate on the Kolakowski 2021 flat (Sensors 21(18):6270): the robot's
    calibration walk with LiDAR positions. The tag's height on the robot is not given in
    the dataset; 0.3 m is assumed (n moves by about 0.2 between 0.1 and 0.6 m). A flat's
    clutter decorrelates within a couple of metres, hence ``decorrelation_m`` 2 m (TR
    38.901 gives 6-10 m for larger halls)."""
    data = load_kolakowski(folder or KOLAKOWSKI_IN_REPO)
    cal = data.calibration
    xyz = np.column_stack([cal.xy, np.full(len(cal.xy), tag_height_m)])
    return fit_log_distance(
        xyz, data.anchor_xyz, cal.rssi, decorrelation_m=decorrelation_m, n_boot=n_boot
    )
