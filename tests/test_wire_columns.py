"""Wire format 2 (columns, live_bridge/wire_columns.py): the same sightings as version 1,
the same checks (HMAC before parsing, strict bounded schema), and the worker makes the
same positions from either."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from live_bridge.backbone import raw_subject
from live_bridge.wire import WireError, encode_payload
from live_bridge.wire_columns import encode_columns, is_columns, verify_columns
from live_bridge.worker import WorkerCore, WorkerSettings
from tagtwin.live import site_engine_config
from tagtwin.loadgen import PublisherSpec, Schedule, TickBuilder
from tagtwin.loadtest import site_traffic
from twin.scenario import load_scenario

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "static-open.toml"
KEY = bytes(range(32))


def columns(n: int, rssi: float = -70.0, bat: int = 50, mot: int = 1, seq: int = 3, ch: int = 37) -> bytes:
    t = 1_790_000_000.0 + np.arange(n) * 0.01
    return encode_columns("gw-1", 9, 2, 1_790_000_001.0, t, [f"tag-{i}" for i in range(n)], np.full(n, rssi),
                          np.full(n, ch), np.full(n, bat), np.full(n, mot), np.full(n, seq), KEY)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 30), rssi=st.floats(-130, 20), bat=st.integers(-1, 100), mot=st.integers(-1, 1),
       seq=st.integers(-1, 2**32 - 1), ch=st.integers(0, 39))
def test_columns_round_trip(n, rssi, bat, mot, seq, ch):
    body = columns(n, rssi, bat, mot, seq, ch)
    assert is_columns(body)
    b = verify_columns(body, "gw-1", KEY)
    assert (b.seq, b.ep, len(b.t)) == (9, 2, n)
    if n:
        assert b.dev[-1] == f"tag-{n - 1}" and abs(b.rssi[0] - rssi) <= 0.005
        assert (b.bat[0], b.mot[0], b.aseq[0], b.ch[0]) == (bat, mot, seq, ch)


def tampered(payload: dict) -> bytes:
    return encode_payload(json.dumps(payload).encode(), KEY)


@pytest.mark.parametrize(("change", "reason"), [
    ({"rssi": [-70.0, 99.0]}, "schema violation"),  # out of bounds
    ({"t": ["1790000000.0", 1790000000.1]}, "schema violation"),  # a string is not a number (strict)
    ({"dev": ["a"]}, "schema violation"),  # columns of different lengths
    ({"bat": [50, 101]}, "schema violation"),
    ({"aseq": [0, -2]}, "schema violation"),
    ({"gw": "gw-2"}, "topic does not match signed gateway"),
    ({"extra": 1}, "schema violation"),
])
def test_bad_columns_are_refused_with_a_reason(change, reason):
    good = json.loads(columns(2)[len(b'{"sig":"') + 64 + len(b'","batch":'):-1])
    with pytest.raises(WireError) as exc:
        verify_columns(tampered(good | change), "gw-1", KEY)
    assert exc.value.reason == reason


def test_signature_is_checked_before_parsing():
    body = columns(3)
    forged = body.replace(b'"seq":9', b'"seq":8')
    with pytest.raises(WireError) as exc:
        verify_columns(forged, "gw-1", KEY)
    assert exc.value.reason == "bad signature"
    assert not is_columns(encode_payload(b'{"v":1,"gw":"x"}', KEY))


def positions_of(wire: int) -> tuple[list[dict], dict]:
    sc = load_scenario(SCENARIO)
    tr = site_traffic(sc, "cols", 0, 12.0)
    builder = TickBuilder(PublisherSpec(0, "", "nats", [tr], Schedule(1.5, 6.0), 1_790_000_000.0, 0.5, wire=wire))
    core = WorkerCore(site_engine_config(sc), tr.keys, WorkerSettings(site="cols"))
    out = []
    for k in range(12):
        for i, (_, gw, body, _) in enumerate(builder.build(k * 0.5, (k + 1) * 0.5, 1.5)):
            out += core.handle(raw_subject("cols", gw), body, k * 1000 + i + 1, 1_790_000_000.0 + (k + 1) * 0.5)
        out += core.tick(1_790_000_000.0 + (k + 1) * 0.5)
    out += core.tick(time.time(), final=True)
    positions = [p for subject, payload in out if subject.endswith("positions")
                 for p in json.loads(payload)["positions"]]
    return positions, dict(core.counters)


def test_the_worker_makes_the_same_positions_from_either_version():
    v1, c1 = positions_of(1)
    v2, c2 = positions_of(2)
    assert len(v1) > 500
    assert v1 == v2
    assert c1 == c2 and c1["processed"] > 10_000


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_bytes_are_a_batch_or_a_wire_error(data):
    """Fuzz: random bytes, and a valid signed body with bytes flipped or cut (re-signed, so
    the schema is reached): verify_columns returns or raises WireError, nothing else."""
    good = columns(4)
    payload = good[len(b'{"sig":"') + 64 + len(b'","batch":'):-1]
    kind = data.draw(st.sampled_from(["random", "mutated", "cut"]))
    if kind == "random":
        body = data.draw(st.binary(max_size=400))
    else:
        b = bytearray(payload)
        if kind == "mutated":
            for _ in range(data.draw(st.integers(1, 8))):
                b[data.draw(st.integers(0, len(b) - 1))] = data.draw(st.integers(0, 255))
        else:
            b = b[: data.draw(st.integers(0, len(b)))]
        body = encode_payload(bytes(b), KEY)
    with contextlib.suppress(WireError):  # the only refusal allowed
        verify_columns(body, "gw-1", KEY)
