"""The capture format: round trips, and errors that name the file, row and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from engine.capture import (
    CaptureError,
    kolakowski_capture,
    read_capture,
    read_gateways,
    rows_by_window,
    write_capture,
    write_gateways,
)
from engine.contract import GatewayInfo
from tagtwin.cli import app

DATA = Path(__file__).resolve().parent / "data" / "kolakowski"
GW = GatewayInfo(
    ("g1", "g2", "g3"), np.array([[0.0, 0.0, 3.0], [10.0, 0.0, 3.0], [0.0, 10.0, 3.0]])
)

CSV = """time,gateway,device,rssi,channel,truth_x,truth_y
0.5,g1,tag-a,-60,37,1.0,2.0
0.5,g2,tag-a,-70.5,38,1.0,2.0
1.5,g3,tag-b,-65,0,5.0,5.0
2.5,g1,tag-a,-61,39,3.0,2.0
"""


def write(tmp_path: Path, text: str, name: str = "cap.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip(tmp_path, suffix):
    gw_path = write_gateways(tmp_path / f"gw{suffix}", GW)
    gw = read_gateways(gw_path)
    assert gw.ids == GW.ids
    np.testing.assert_allclose(gw.xyz, GW.xyz)
    t = np.array([2.0, 1.0, 3.0])
    truth = np.array([[1.0, 1.0, np.nan], [0.0, 0.0, np.nan], [2.0, 2.0, np.nan]])
    path = write_capture(
        tmp_path / f"c{suffix}",
        t,
        np.array(["g2", "g1", "g3"]),
        np.array(["a", "a", "b"]),
        np.array([-60.0, -61.0, -62.0]),
        np.array([37, 38, 39]),
        truth,
    )
    cap = read_capture(path, gw)
    np.testing.assert_allclose(cap.sightings["t"], [1.0, 2.0, 3.0])  # time-sorted
    assert list(cap.sightings["gateway"]) == [0, 1, 2]
    assert list(cap.sightings["channel"]) == [38, 37, 39]
    assert cap.devices.ids == ["a", "b"]
    assert cap.truth is not None
    # Truth is linear between a device's samples.
    np.testing.assert_allclose(cap.truth.position_at(np.array([0]), np.array([1.5])), [[0.5, 0.5]])


def test_csv_with_optional_columns_and_windows(tmp_path):
    cap = read_capture(write(tmp_path, CSV), GW)
    assert len(cap.sightings) == 4
    assert (cap.sightings["motion"] == -1).all()
    _, _, xy, m = rows_by_window(cap, 1.0)
    assert m.shape == (3, 3)
    np.testing.assert_allclose(m[0], [-60.0, -70.5, np.nan])
    np.testing.assert_allclose(xy[0], [1.0, 2.0])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (CSV.replace("-70.5", "loud"), "cap.csv: row 3: column 'rssi': not a number: 'loud'"),
        (CSV.replace("1.5,g3", ",g3"), "cap.csv: row 4: column 'time': empty or not finite"),
        (CSV.replace("g3,tag-b", "g9,tag-b"), "cap.csv: row 4: column 'gateway': 'g9' is not in"),
        (
            CSV.replace(",37,", ",12,"),
            "cap.csv: row 2: column 'channel': 12 is not 0, 37, 38 or 39",
        ),
        (CSV.replace("tag-b", ""), "cap.csv: row 4: column 'device': empty id"),
        (CSV.replace("rssi,", "power,"), "cap.csv: missing columns ['rssi']"),
        (CSV.replace("truth_x,", "x,"), "cap.csv: missing columns ['truth_x']"),
    ],
)
def test_errors_name_file_row_and_column(tmp_path, text, message):
    with pytest.raises(CaptureError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_capture(write(tmp_path, text), GW)


def test_parquet_errors_name_row(tmp_path):
    table = pa.table(
        {
            "time": [0.0, float("nan")],
            "gateway": ["g1", "g1"],
            "device": ["a", "a"],
            "rssi": [-50.0, -51.0],
        }
    )
    pq.write_table(table, tmp_path / "c.parquet")
    with pytest.raises(CaptureError, match=r"c.parquet: row 1: column 'time'"):
        read_capture(tmp_path / "c.parquet", GW)


def test_gateway_file_errors(tmp_path):
    with pytest.raises(CaptureError, match=r"gw.csv: row 3: column 'id': duplicate gateway 'a'"):
        read_gateways(write(tmp_path, "id,x,y,z\na,0,0,3\na,1,1,3\n", "gw.csv"))
    with pytest.raises(CaptureError, match=r"gw.csv: row 2: column 'z': not a number"):
        read_gateways(write(tmp_path, "id,x,y,z\na,0,0,high\n", "gw.csv"))
    with pytest.raises(CaptureError, match="no such file"):
        read_gateways(tmp_path / "none.csv")
    with pytest.raises(CaptureError, match="unknown format"):
        read_gateways(write(tmp_path, "x", "gw.txt"))


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 3),
    st.sampled_from(["time", "rssi"]),
    st.text(alphabet="abcxyz!#%&", min_size=1, max_size=6),
)
def test_any_bad_number_is_reported_where_it_is(tmp_path_factory, row, column, junk):
    lines = CSV.strip().split("\n")
    header = lines[0].split(",")
    cells = lines[row + 1].split(",")
    cells[header.index(column)] = junk
    lines[row + 1] = ",".join(cells)
    path = tmp_path_factory.mktemp("cap") / "cap.csv"
    path.write_text("\n".join(lines) + "\n")
    if junk.lower() == "nan":
        return
    with pytest.raises(CaptureError, match=rf"cap.csv: row {row + 2}: column '{column}'"):
        read_capture(path, GW)


def test_kolakowski_import_and_cli_evaluate(tmp_path):
    paths = kolakowski_capture(DATA, tmp_path)
    gw = read_gateways(paths["gateways"])
    cap = read_capture(paths["test"], gw)
    assert len(cap.sightings) == 719 * 6
    runner = CliRunner()
    out = tmp_path / "m.json"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--capture",
            str(paths["test"]),
            "--gateways",
            str(paths["gateways"]),
            "--calibration",
            str(paths["calibration"]),
            "--localizer",
            "radio-map",
            "--tracker",
            "hmm",
            "--tag-z",
            "0.3",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    import json

    metrics = json.loads(out.read_text())
    assert metrics["fixes"] > 300
    assert metrics["median_error_m"] < 1.2
    assert metrics["rmse_over_crb"] > 0
    assert 0.5 < metrics["r90_coverage"] <= 1.0


def test_cli_evaluate_reports_bad_capture(tmp_path):
    write_gateways(tmp_path / "gw.csv", GW)
    bad = write(tmp_path, CSV.replace("-70.5", "loud"))
    result = CliRunner().invoke(
        app, ["evaluate", "--capture", str(bad), "--gateways", str(tmp_path / "gw.csv")]
    )
    assert result.exit_code == 2
    assert "row 3" in result.output
    assert "rssi" in result.output
