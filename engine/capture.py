"""Recorded captures: the documented file format users bring their own recordings in.

A capture is one table, CSV (with a header row) or Parquet, one sighting per row:

| column | type | required | meaning |
| --- | --- | --- | --- |
| time | float | yes | event time, seconds (any epoch: Unix time or since start) |
| gateway | string | yes | receiver id, as in the gateway-positions file |
| device | string | yes | tag id |
| rssi | float | yes | dBm as reported by the receiver |
| channel | int | no | 37, 38, 39, or 0 when unknown (default 0) |
| battery | int | no | percent, -1 unknown |
| motion | int | no | 1 moving, 0 still, -1 unknown |
| truth_x, truth_y | float | no | where the tag really was at ``time``, metres (or ``x, y``) |
| truth_z | float | no | its height, metres (or ``z``) |

The gateway-positions file (CSV or Parquet) has columns ``id, x, y, z`` in metres.
Any problem raises :class:`CaptureError` naming the file, the row (1-based line number
for CSV, counting the header; 0-based row index for Parquet) and the column.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from numpy.typing import NDArray

from engine.contract import SIGHTING_DTYPE, UNKNOWN, GatewayInfo, IdTable, Sightings
from engine.ingest import RSSI_MAX_DBM, RSSI_MIN_DBM
from engine.truth import MOVEMENT_DTYPE, SEGMENT_DTYPE, GroundTruth

FloatArray = NDArray[np.float64]

CAPTURE_COLUMNS = ("time", "gateway", "device", "rssi")
OPTIONAL_INT = {"channel": 0, "battery": UNKNOWN, "motion": UNKNOWN}
TRUTH_COLUMNS = ("truth_x", "truth_y", "truth_z")
TRUTH_ALIASES = ("x", "y", "z")
GATEWAY_COLUMNS = ("id", "x", "y", "z")
_NUMBER = r"^\s*([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[nN]a[nN])\s*$"


class CaptureError(ValueError):
    """A capture or gateway file that cannot be used; the message names file, row, column."""


@dataclass(frozen=True)
class Capture:
    """A capture read into the engine's contract: sightings with codes into the tables."""

    sightings: Sightings  # time-sorted
    devices: IdTable
    gateways: GatewayInfo
    truth: GroundTruth | None  # piecewise linear between a device's truth samples
    truth_xyz: FloatArray | None  # per sighting, aligned with ``sightings``


def _row_name(path: Path, index: int) -> str:
    if path.suffix.lower() == ".csv":
        return f"row {index + 2}"  # line number: the header is line 1
    return f"row {index}"


def _read_table(path: Path) -> pa.Table:
    """Every column as read; CSV columns all as strings so we can say which cell is bad."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8", errors="replace") as fh:
                header = next(csv.reader(fh), [])
            types = {name.strip(): pa.string() for name in header}
            table = pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=False),
            )
        elif suffix in (".parquet", ".pq"):
            table = pq.read_table(path)
        else:
            raise CaptureError(f"{path}: unknown format {suffix!r}; use .csv or .parquet")
        names = table.column_names  # decoded lazily: a non-UTF-8 header fails here, not later
    except FileNotFoundError:
        raise CaptureError(f"{path}: no such file") from None
    except (OSError, pa.ArrowInvalid) as exc:
        raise CaptureError(f"{path}: cannot read: {exc}") from None
    except UnicodeDecodeError:
        raise CaptureError(f"{path}: not UTF-8 text") from None
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise CaptureError(f"{path}: columns named more than once: {repeated}")
    for name in names:  # Parquet does not check that text columns hold UTF-8; we do, once
        try:
            table.column(name).validate(full=True)
        except pa.ArrowException as exc:
            raise CaptureError(f"{path}: column {name!r}: {str(exc)[:120]}") from None
    return table


def _numbers(path: Path, table: pa.Table, name: str, required: bool = True) -> FloatArray:
    """A column as float64; names the first bad row. Empty cells are NaN (an error if required)."""
    col = table.column(name)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        stripped = pc.utf8_trim_whitespace(col)
        empty = pc.equal(stripped, "")
        ok = pc.or_(pc.match_substring_regex(stripped, _NUMBER), empty)
        bad = np.flatnonzero(~np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool))
        if len(bad):
            cell = col[int(bad[0])].as_py()
            raise CaptureError(
                f"{path}: {_row_name(path, int(bad[0]))}: column {name!r}: not a number: {cell!r}"
            )
        values = pc.if_else(empty, pa.scalar(None, pa.string()), stripped)
        arr = np.asarray(pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False), dtype=float)
    elif pa.types.is_null(col.type):
        arr = np.full(len(col), np.nan)
    elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        arr = np.asarray(col.to_numpy(zero_copy_only=False), dtype=float)
    else:
        raise CaptureError(f"{path}: column {name!r}: expected numbers, found {col.type}")
    if required:
        missing = np.flatnonzero(~np.isfinite(arr))
        if len(missing):
            raise CaptureError(
                f"{path}: {_row_name(path, int(missing[0]))}: column {name!r}: empty or not finite"
            )
    return arr


def _strings(path: Path, table: pa.Table, name: str) -> NDArray[np.str_]:
    col = table.column(name)
    if not (
        pa.types.is_string(col.type)
        or pa.types.is_large_string(col.type)
        or pa.types.is_integer(col.type)
        or pa.types.is_dictionary(col.type)
    ):
        raise CaptureError(f"{path}: column {name!r}: expected text ids, found {col.type}")
    values = np.asarray(
        pc.cast(col, pa.string()).to_numpy(zero_copy_only=False)
        if not pa.types.is_dictionary(col.type)
        else col.to_pylist(),
        dtype=object,
    )
    empty = np.flatnonzero(
        np.array([v is None or str(v).strip() == "" for v in values], dtype=bool)
    )
    if len(empty):
        raise CaptureError(f"{path}: {_row_name(path, int(empty[0]))}: column {name!r}: empty id")
    return np.asarray(values.astype(str))


def _require(path: Path, table: pa.Table, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise CaptureError(f"{path}: missing columns {missing} (have {table.column_names})")


def read_gateways(path: Path | str) -> GatewayInfo:
    """The gateway-positions file: ``id, x, y, z`` in metres."""
    path = Path(path)
    table = _read_table(path)
    _require(path, table, GATEWAY_COLUMNS)
    ids = [str(i) for i in _strings(path, table, "id")]
    seen: dict[str, int] = {}
    for i, ident in enumerate(ids):
        if ident in seen:
            raise CaptureError(
                f"{path}: {_row_name(path, i)}: column 'id': duplicate gateway {ident!r}"
            )
        seen[ident] = i
    xyz = np.column_stack([_numbers(path, table, c) for c in ("x", "y", "z")])
    return GatewayInfo(tuple(str(i) for i in ids), xyz)


def read_capture(
    path: Path | str, gateways: GatewayInfo, gateways_path: Path | str = "gateways"
) -> Capture:
    """Read a capture (CSV or Parquet) into sighting columns, checking every cell."""
    path = Path(path)
    table = _read_table(path)
    _require(path, table, CAPTURE_COLUMNS)
    if table.num_rows == 0:
        raise CaptureError(f"{path}: no sightings (the file has a header but no rows)")
    t = _numbers(path, table, "time")
    rssi = _numbers(path, table, "rssi")
    bad_rssi = np.flatnonzero((rssi < RSSI_MIN_DBM) | (rssi > RSSI_MAX_DBM))
    if len(bad_rssi):
        i = int(bad_rssi[0])
        raise CaptureError(
            f"{path}: {_row_name(path, i)}: column 'rssi': {rssi[i]:g} dBm is outside "
            f"{RSSI_MIN_DBM:g}..{RSSI_MAX_DBM:g} dBm"
        )
    gw_names = _strings(path, table, "gateway")
    dev_names = _strings(path, table, "device")
    gw_table = IdTable(list(gateways.ids))
    gw_codes = gw_table.codes(gw_names, register=False)
    unknown = np.flatnonzero(gw_codes == UNKNOWN)
    if len(unknown):
        i = int(unknown[0])
        where = f"{path}: {_row_name(path, i)}: column 'gateway'"
        raise CaptureError(f"{where}: {str(gw_names[i])!r} is not in {gateways_path}")
    devices = IdTable()
    out = np.zeros(len(t), SIGHTING_DTYPE)
    out["t"], out["rssi"] = t, rssi
    out["gateway"], out["device"] = gw_codes, devices.codes(dev_names)
    out["seq"] = UNKNOWN
    for name, default in OPTIONAL_INT.items():
        if name in table.column_names:
            vals = _numbers(path, table, name, required=False)
            vals = np.where(np.isnan(vals), default, vals)
            if name == "channel":
                bad = np.flatnonzero(~np.isin(vals, (0, 37, 38, 39)))
                if len(bad):
                    raise CaptureError(
                        f"{path}: {_row_name(path, int(bad[0]))}: column 'channel': "
                        f"{vals[int(bad[0])]:g} is not 0, 37, 38 or 39"
                    )
            out[name] = vals
        else:
            out[name] = default
    truth_xyz = None
    truth = None
    names = truth_column_names(path, table.column_names)
    if names is not None:
        _require(path, table, names[:2])
        tz = (
            _numbers(path, table, names[2], required=False)
            if names[2] in table.column_names
            else np.full(len(t), np.nan)
        )
        truth_xyz = np.column_stack(
            [_numbers(path, table, names[0]), _numbers(path, table, names[1]), tz]
        )
    order = np.argsort(out["t"], kind="stable")
    out = out[order]
    if truth_xyz is not None:
        truth_xyz = truth_xyz[order]
        truth = truth_from_samples(out["device"], out["t"], truth_xyz[:, :2])
    return Capture(out, devices, gateways, truth, truth_xyz)


def truth_column_names(path: Path, columns: list[str]) -> tuple[str, str, str] | None:
    """The truth columns a capture uses: ``truth_x, truth_y[, truth_z]`` or, as many
    datasets name them, ``x, y[, z]``; None when it has neither (both is ambiguous)."""
    if all(c in columns for c in (*TRUTH_COLUMNS[:2], *TRUTH_ALIASES[:2])):
        raise CaptureError(f"{path}: both truth_x/truth_y and x/y columns: keep one pair")
    for names in (TRUTH_COLUMNS, TRUTH_ALIASES):
        if any(c in columns for c in names[:2]):
            return names
    return None


def truth_from_samples(device: NDArray[np.integer], t: FloatArray, xy: FloatArray) -> GroundTruth:
    """Ground truth as straight segments between each device's consecutive truth samples."""
    if len(device) == 0:
        return GroundTruth.build(np.zeros(0, SEGMENT_DTYPE), np.zeros(0, MOVEMENT_DTYPE))
    order = np.lexsort((t, device))
    d, tt, p = np.asarray(device)[order], np.asarray(t)[order], np.asarray(xy)[order]
    # One sample per (device, time): repeated sightings of one instant agree on the truth.
    keep = np.ones(len(d), bool)  # (np.r_[True, ...] would keep a phantom row when empty)
    keep[1:] = (d[1:] != d[:-1]) | (tt[1:] != tt[:-1])
    d, tt, p = d[keep], tt[keep], p[keep]
    same = d[1:] == d[:-1]
    seg = np.zeros(int(same.sum()) + len(np.unique(d)), SEGMENT_DTYPE)
    a = np.flatnonzero(same)
    n = len(a)
    seg["device"][:n] = d[a]
    seg["t0"][:n], seg["t1"][:n] = tt[a], tt[a + 1]
    seg["x0"][:n], seg["y0"][:n] = p[a, 0], p[a, 1]
    seg["x1"][:n], seg["y1"][:n] = p[a + 1, 0], p[a + 1, 1]
    # Each device's last sample as a zero-length segment, so its final instant is covered.
    last = np.flatnonzero(np.r_[~same, True])
    seg["device"][n:] = d[last]
    seg["t0"][n:] = seg["t1"][n:] = tt[last]
    seg["x0"][n:] = seg["x1"][n:] = p[last, 0]
    seg["y0"][n:] = seg["y1"][n:] = p[last, 1]
    return GroundTruth.build(seg, np.zeros(0, MOVEMENT_DTYPE))


def rows_by_window(
    capture: Capture, step_s: float
) -> tuple[FloatArray, NDArray[np.int32], FloatArray, FloatArray]:
    """Average a capture into (device, window) rows: window end times, devices, mean truth
    (x, y) and the mean RSSI matrix (rows, gateways), NaN where a gateway was silent.
    Used to turn a calibration walk into fingerprints."""
    s = capture.sightings
    n_gw = len(capture.gateways.ids)
    win = np.floor(s["t"] / step_s).astype(np.int64)
    key = win * (len(capture.devices) + 1) + s["device"]
    uniq, row = np.unique(key, return_inverse=True)
    cell = row * n_gw + s["gateway"]
    sums = np.bincount(cell, weights=s["rssi"], minlength=len(uniq) * n_gw)
    counts = np.bincount(cell, minlength=len(uniq) * n_gw)
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = (sums / counts).reshape(len(uniq), n_gw)
    xy = np.full((len(uniq), 2), np.nan)
    if capture.truth_xyz is not None:
        n = np.bincount(row, minlength=len(uniq))
        xy[:, 0] = np.bincount(row, weights=capture.truth_xyz[:, 0], minlength=len(uniq)) / n
        xy[:, 1] = np.bincount(row, weights=capture.truth_xyz[:, 1], minlength=len(uniq)) / n
    t_end = (uniq // (len(capture.devices) + 1) + 1) * step_s
    dev = (uniq % (len(capture.devices) + 1)).astype(np.int32)
    return t_end.astype(float), dev, xy, matrix


def write_capture(
    path: Path | str,
    t: FloatArray,
    gateway: NDArray[np.str_],
    device: NDArray[np.str_],
    rssi: FloatArray,
    channel: NDArray[np.integer] | None = None,
    truth_xyz: FloatArray | None = None,
) -> Path:
    """Write a capture in the documented format (by suffix: .csv or .parquet)."""
    path = Path(path)
    cols: dict[str, pa.Array] = {
        "time": pa.array(np.asarray(t, float)),
        "gateway": pa.array(np.asarray(gateway, str)),
        "device": pa.array(np.asarray(device, str)),
        "rssi": pa.array(np.asarray(rssi, float)),
    }
    if channel is not None:
        cols["channel"] = pa.array(np.asarray(channel, np.int64))
    if truth_xyz is not None:
        for j, name in enumerate(TRUTH_COLUMNS):
            if j < 2 or np.isfinite(truth_xyz[:, j]).any():
                cols[name] = pa.array(np.asarray(truth_xyz[:, j], float))
    table = pa.table(cols)
    if path.suffix.lower() == ".csv":
        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    return path


def write_gateways(path: Path | str, gateways: GatewayInfo) -> Path:
    path = Path(path)
    table = pa.table(
        {
            "id": list(gateways.ids),
            "x": gateways.xyz[:, 0],
            "y": gateways.xyz[:, 1],
            "z": gateways.xyz[:, 2],
        }
    )
    if path.suffix.lower() == ".csv":
        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    return path


def kolakowski_capture(folder: Path, out_dir: Path, fmt: str = "csv") -> dict[str, Path]:
    """Convert the Kolakowski 2021 dataset into captures (calibration walk and test track,
    one sighting per heard anchor per row, with truth) and a gateway-positions file."""
    from engine.datasets import load_kolakowski

    data = load_kolakowski(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    gw = GatewayInfo(tuple(f"anchor-{i}" for i in data.anchor_ids), data.anchor_xyz)
    paths = {"gateways": write_gateways(out_dir / f"gateways.{fmt}", gw)}
    for name, track in (("calibration", data.calibration), ("test", data.test)):
        row, g = np.nonzero(~np.isnan(track.rssi))
        truth = np.column_stack([track.xy[row], np.full(len(row), np.nan)])
        paths[name] = write_capture(
            out_dir / f"{name}.{fmt}",
            track.t[row],
            np.asarray(gw.ids)[g],
            np.full(len(row), "robot-tag"),
            track.rssi[row, g],
            None,
            truth,
        )
    return paths


def capture_subset(capture: Capture, keep: NDArray[np.bool_]) -> Capture:
    """The sightings ``keep`` selects, with their truth (for folds and held-out paths)."""
    s = capture.sightings[keep]
    truth_xyz = None if capture.truth_xyz is None else capture.truth_xyz[keep]
    truth = None if truth_xyz is None else truth_from_samples(s["device"], s["t"], truth_xyz[:, :2])
    return Capture(s, capture.devices, capture.gateways, truth, truth_xyz)
