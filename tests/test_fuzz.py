"""Every parser in the fuzz registry (tagtwin/fuzz.py) rejects hostile input cleanly.

A few thousand hypothesis cases in all, mutations of valid seeds and raw bytes; the
100,000-case run with per-parser timing is benchmarks/fuzz.py. No timing assertions.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagtwin.fuzz import fuzz_input, outcome, targets

TARGETS = targets()
FUZZ_SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.too_slow])


def _check(name: str, data: bytes) -> None:
    kind, exc = outcome(TARGETS[name], data)
    assert kind != "crash", f"{name} crashed on {data[:200]!r}: {type(exc).__name__}: {exc}"
    if kind == "rejected":
        assert str(exc).strip(), f"{name}: a rejection without a reason"


def test_registry_covers_every_parser_the_issue_names() -> None:
    prefixes = {n.split(".")[0] for n in TARGETS}
    assert {"live", "wire", "scenario", "rules", "capture", "roi", "run", "server"} <= prefixes
    assert {"live.mibeacon", "live.theengs", "live.espresense", "live.wire-envelope"} <= set(TARGETS)
    for target in TARGETS.values():  # every seed is valid: mutations start from real input
        assert all(outcome(target, s)[0] == "accepted" for s in target.seeds), target.name


@pytest.mark.parametrize("name", sorted(TARGETS))
@FUZZ_SETTINGS
@given(seed=st.integers(0, 2**63 - 1))
def test_mutated_inputs_never_crash(name: str, seed: int) -> None:
    _check(name, fuzz_input(TARGETS[name], np.random.default_rng(seed)))


@pytest.mark.parametrize("name", sorted(TARGETS))
@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=st.binary(max_size=512))
def test_raw_bytes_never_crash(name: str, data: bytes) -> None:
    _check(name, data)


def test_a_crash_is_told_apart_from_a_rejection() -> None:
    from tagtwin.fuzz import FuzzTarget

    def parse(data: bytes) -> object:
        if data == b"bug":
            raise KeyError("x")
        raise ValueError("bad")

    t = FuzzTarget("t", parse, (ValueError,))
    assert outcome(t, b"bug")[0] == "crash"
    assert outcome(t, b"x")[0] == "rejected"


# Inputs the 100,000-case benchmark found crashing once, kept so they stay fixed.
REGRESSIONS = [
    ("live.wire-envelope", b'{"sig":"' + "\u00e9".encode("latin-1") * 64 + b'","batch":{"gw":"gw1"}}'),
    ("wire.columns-envelope", b'{"sig":"' + "\u00e9".encode("latin-1") * 64 + b'","batch":{"v":2,"gw":"gw1"}}'),
    ("gateways.csv", b"id,x,y,zx,y,z\n\n"),
    ("gateways.csv", b"id,x,y,z,y\ngw1,0,0,2,1\n"),
    ("capture.csv", b"time,gateway,device,rssi,truth_x,truth_y\n"),
    ("capture.csv", b"time,gateway,device,\xa2\trssi\n0,gw1,a,-60\n"),
]


@pytest.mark.parametrize(("name", "data"), REGRESSIONS)
def test_past_crashes_stay_fixed(name: str, data: bytes) -> None:
    assert outcome(TARGETS[name], data)[0] == "rejected"


def test_parquet_text_that_is_not_utf8_is_a_rejection() -> None:
    """Found by the 100,000-case run: Parquet stores text unchecked, and converting an
    invalid UTF-8 id raised pyarrow's ArrowException."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = pa.array([b"gw\xff", b"gw1"], pa.binary())
    text = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())
    sink = io.BytesIO()
    pq.write_table(pa.table({"time": [0.5, 1.0], "gateway": text, "device": ["a", "b"], "rssi": [-60.0, -70.0]}),
                   sink)
    kind, exc = outcome(TARGETS["capture.parquet"], sink.getvalue())
    assert kind == "rejected" and "'gateway'" in str(exc) and "UTF8" in str(exc)
