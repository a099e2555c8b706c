"""Careless and hostile input (issue 13): one line naming the file, field or message and a
non-zero exit, never a traceback; a running pipeline rejects with a reason and keeps going."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from live_bridge.adapters import AdapterError, parse_espresense, parse_theengs
from live_bridge.decoders import build_ibeacon
from tagtwin.cli import app
from tests.conftest import SCENARIOS

STATIC = (SCENARIOS / "static-open.toml").read_text()
DEMO = (SCENARIOS / "demo.toml").read_text()


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def tagtwin(*args: str) -> Ran:
    """The CLI in this process (typer's runner, narrow terminal): seconds cheaper than a
    subprocess each. An exception escaping a command would show as exit 1 with the
    exception kept, which assert_one_clean_line refuses; the last-resort guard in main()
    is tested through a real process below."""
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "80"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def assert_one_clean_line(proc: Ran, *needles: str, code: int = 2) -> None:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "╭" not in proc.stderr, proc.stderr
    line = next(line for line in proc.stderr.splitlines() if all(n in line for n in needles))
    assert line


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


# -- scenarios and runs ----------------------------------------------------------------------


def test_zero_sightings_is_one_line_and_exit_1(tmp_path: Path) -> None:
    short = STATIC.replace("duration_s = 12", "duration_s = 3")
    for name, text in {
        "none.toml": short.replace("count = 400", "count = 0"),
        "deaf.toml": short.replace("sensitivity_dbm = -110", "sensitivity_dbm = -40").replace(
            "tx_power_1m_dbm = -59", "tx_power_1m_dbm = -90"),
    }.items():
        path = write(tmp_path, name, text)
        out = tmp_path / f"run-{name}"
        proc = tagtwin("simulate", str(path), "--out", str(out), "--quiet", "--no-plot")
        assert_one_clean_line(proc, str(path), "no gateway heard any tag", code=1)
        # and scoring that run names the empty estimates file, exit 2
        proc = tagtwin("evaluate", str(out))
        assert_one_clean_line(proc, "estimates.parquet", "no fixes")


def test_out_that_is_a_file(tmp_path: Path) -> None:
    short = write(tmp_path, "s.toml", STATIC.replace("duration_s = 12", "duration_s = 2"))
    proc = tagtwin("simulate", str(short), "--out", str(short), "--quiet", "--no-plot")
    assert_one_clean_line(proc, str(short), "cannot write")


def test_placement_zone_without_free_floor(tmp_path: Path) -> None:
    text = STATIC.replace("[[tags]]", "[[site.racks]]\npolygon = [[0, 0], [30, 0], [30, 20], [0, 20]]\n\n[[tags]]")
    path = write(tmp_path, "full.toml", text)
    proc = tagtwin("simulate", str(path), "--out", str(tmp_path / "o"), "--quiet", "--no-plot")
    assert_one_clean_line(proc, str(path), "tags[0].placement", "no free floor")


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (('id = "gw-01"\nx = 5', 'id = "gw-01"\nx = nan'), "gateways.list[0].x"),
        (('id = "gw-01"\nx = 5', 'id = "gw-01"\nx = 500'), "outside the site outline"),
    ],
)
def test_bad_gateway_positions_are_refused(tmp_path: Path, edit: tuple[str, str], needle: str) -> None:
    assert edit[0] in DEMO
    path = write(tmp_path, "s.toml", DEMO.replace(*edit, 1))
    proc = tagtwin("simulate", str(path), "--out", str(tmp_path / "o"), "--quiet", "--no-plot")
    assert_one_clean_line(proc, str(path), needle)


# -- roi --report and evaluate ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "needle"),
    [(None, "cannot read"), (b"\x89PNG\r\n\x1a\n\x00\xff", "not UTF-8"), (b"[1, 2]", "expected a JSON object"),
     (b'{"metrics": {"zone_accuracy": "high"}}', "metrics.zone_accuracy"), (b"{", "not valid JSON")],
)
def test_roi_report_problems(tmp_path: Path, content: bytes | None, needle: str) -> None:
    path = tmp_path / "report.json"
    if content is not None:
        path.write_bytes(content)
    proc = tagtwin("roi", "--report", str(path))
    assert_one_clean_line(proc, str(path), needle)


def _run_dir(tmp_path: Path) -> Path:
    short = STATIC.replace("duration_s = 12", "duration_s = 4").replace("count = 400", "count = 20")
    path = write(tmp_path, "s.toml", short)
    out = tmp_path / "run"
    proc = tagtwin("simulate", str(path), "--out", str(out), "--quiet", "--no-plot")
    assert proc.returncode == 0, proc.stderr
    return out


def test_evaluate_refuses_corrupt_and_wrong_schema_estimates(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    assert tagtwin("evaluate", str(run)).returncode == 0
    est = run / "estimates.parquet"
    est.write_bytes(b"PAR1 not really parquet")
    assert_one_clean_line(tagtwin("evaluate", str(run)), str(est), "cannot read as Parquet")
    pq.write_table(pa.table({"t": ["a", "b"]}), est)
    assert_one_clean_line(tagtwin("evaluate", str(run)), str(est), "'t'", "expected numbers")
    pq.write_table(pa.table({"t": [1.0]}), est)
    assert_one_clean_line(tagtwin("evaluate", str(run)), str(est), "missing column")


def test_capture_rssi_out_of_range(tmp_path: Path) -> None:
    gws = write(tmp_path, "gw.csv", "id,x,y,z\ngw1,0,0,2\ngw2,10,0,2\ngw3,0,10,2\n")
    for rssi in ("50", "9999"):
        cap = write(tmp_path, "cap.csv", f"time,gateway,device,rssi\n0,gw1,a,-60\n1,gw2,a,{rssi}\n")
        proc = tagtwin("evaluate", "--capture", str(cap), "--gateways", str(gws))
        assert_one_clean_line(proc, str(cap), "row 3", "'rssi'", "outside -130..20")


def test_serve_refuses_keys_that_match_no_gateway(tmp_path: Path) -> None:
    keys = write(tmp_path, "keys.toml", '[keys]\n"gw-01" = "' + "ab" * 32 + '"\n"gw-99" = "' + "cd" * 32 + '"\n')
    keys.chmod(0o600)
    for broker in ([], ["--broker", "mqtt://127.0.0.1:9"]):  # the backbone (default) and the MQTT-only server
        proc = tagtwin("serve", "--keys", str(keys), "--duration", "0.1", *broker)
        assert_one_clean_line(proc, str(keys), "keys.gw-99", "no gateway")
    keys.chmod(0o644)
    for broker in ([], ["--broker", "mqtt://127.0.0.1:9"]):
        assert_one_clean_line(tagtwin("serve", "--keys", str(keys), "--duration", "0.1", *broker), str(keys),
                              "mode 0644")


def test_internal_errors_are_one_line_with_exit_70(tmp_path: Path) -> None:
    """The last-resort guard: a bug (here forced through a broken module) is one line."""
    shim = write(tmp_path, "sitecustomize.py",
                 "import twin.scenario as s\ndef boom(*a, **k):\n    raise RuntimeError('forced')\n"
                 "s.load_scenario = boom\n")
    proc = subprocess.run([sys.executable, "-m", "tagtwin", "simulate", "--quiet"], capture_output=True, text=True,
                          check=False, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{Path.cwd()}"})
    assert shim.exists()
    assert proc.returncode == 70, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "internal error (RuntimeError: forced)" in proc.stderr


# -- third-party messages in a running server --------------------------------------------------


def test_theengs_ibeacon_power_above_20_dbm_keeps_the_sighting_without_tx() -> None:
    raw = build_ibeacon("e2c56db5-dffb-48d2-b060-d0f5a71096e0", 1, 2, power=0)[:-1] + bytes([0x7F])  # +127 dBm
    body = json.dumps({"id": "AA:BB:CC:DD:EE:FF", "rssi": -60, "manufacturerdata": "4c00" + raw.hex()}).encode()
    gw, ads = parse_theengs("home/gw-01/BTtoMQTT/AABBCCDDEEFF", body, 1.7e9)
    assert gw == "gw-01"
    assert [(a.dev.startswith("ibeacon:"), a.tx) for a in ads] == [(True, None)]


def test_theengs_overlong_id_is_a_rejection_with_reason() -> None:
    body = json.dumps({"id": "A" * 129, "rssi": -60}).encode()
    with pytest.raises(AdapterError, match="longer than 128"):
        parse_theengs("home/gw-01/BTtoMQTT/AABBCCDDEEFF", body, 1.7e9)


def test_espresense_bad_fields_are_rejections() -> None:
    _gw, ads = parse_espresense("espresense/devices/x/gw-01", b'{"id": "x", "rssi": -60, "rssi@1m": 99}', 1.7e9)
    assert ads[0].tx is None
    with pytest.raises(AdapterError):
        parse_espresense("espresense/devices/x/gw-01", b'{"id": "x", "rssi": true}', 1.7e9)


def test_server_keeps_going_after_hostile_theengs_messages() -> None:
    from tagtwin.fuzz import fuzz_server

    core = fuzz_server()
    gw = core.config.gateways.ids[0]
    raw = build_ibeacon("e2c56db5-dffb-48d2-b060-d0f5a71096e0", 1, 2)[:-1] + bytes([0x7F])
    hostile = [json.dumps({"id": "A" * 500, "rssi": -60}).encode(),
               json.dumps({"id": "AA:BB:CC:DD:EE:FF", "rssi": -60, "manufacturerdata": "4c00" + raw.hex()}).encode()]
    before = core.counters["batches_accepted"]
    for body in hostile:
        core.handle(f"home/{gw}/BTtoMQTT/AABBCCDDEEFF", body, 1.7e9)
    assert core.counters["rejected: schema violation"] >= 1
    assert core.counters["batches_accepted"] == before + 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["schema", "--out", "{tmp}/missing/x.json"], "cannot write"),
        (["wire-schema", "--out", "{tmp}/missing/x.md"], "cannot write"),
        (["replay", "{tmp}/junk.bin", "--speed", "0"], "line 1"),
        (["audit", "--log", "{tmp}/junk.bin"], "line 1"),
    ],
)
def test_unwritable_outputs_and_binary_inputs(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "junk.bin").write_bytes(bytes(range(256)) * 4)
    argv = [a.format(tmp=tmp_path) for a in args]
    assert_one_clean_line(tagtwin(*argv), str(tmp_path), needle)


def test_roi_refuses_a_report_of_another_scenario(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"scenario": "someone-else", "metrics": {}}))
    proc = tagtwin("roi", str(SCENARIOS / "demo.toml"), "--report", str(report))
    assert_one_clean_line(proc, str(report), "someone-else", "demo-warehouse")
