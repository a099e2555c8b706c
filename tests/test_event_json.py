"""The fast event writer (engine.rules.events.events_json) writes what the reference does:
the record of Event.to_dict through json.dumps with sorted keys, both separators, for
arbitrary events (unicode ids, NaN and infinities, numpy scalars, nested evidence)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.rules.events import RULE_SEVERITY, Event, JsonLinesSink, event_json, events_json, json_scalar
from engine.timeline import absolute_times, event_key
from live_bridge.backbone import raw_subject
from live_bridge.worker import WorkerCore, WorkerSettings
from tagtwin.live import site_engine_config
from tagtwin.loadgen import PublisherSpec, Schedule, TickBuilder
from tagtwin.loadtest import site_traffic
from tagtwin.worker import site_worker_core
from twin.scenario import load_scenario

REPO = Path(__file__).resolve().parents[1]
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e6, 1e6),
                   st.floats(-1e6, 1e6).map(np.float64), st.floats(-1e3, 1e3, width=32).map(np.float32))
NUMBERS = st.one_of(FLOATS, st.integers(-(2**70), 2**70), st.booleans(), st.integers(-1000, 1000).map(np.int64),
                    st.booleans().map(np.bool_))
LEAVES = st.one_of(st.none(), NUMBERS, st.text(max_size=6))
VALUES = st.recursive(LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple),
    st.dictionaries(st.one_of(st.text(max_size=3), st.integers(0, 9)), inner, max_size=3)), max_leaves=10)
NAMES = st.one_of(st.none(), st.text(max_size=12))
EVIDENCE = st.one_of(
    st.dictionaries(st.text(max_size=8), VALUES, max_size=5),
    st.dictionaries(st.sampled_from(["fixes_in_zone", "previous", "device_code", "stayed_s"]), LEAVES, max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=3), st.integers(0, 5)), LEAVES, max_size=3),  # keys cleaned to str
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    """Events as the rules make them, and with numpy scalars where floats belong."""
    fields: dict[str, Any] = {
        "rule": draw(st.sampled_from(sorted(RULE_SEVERITY))), "t": draw(FLOATS),
        "ruleset_version": draw(st.text(max_size=8)),
        "tag": draw(NAMES), "x": draw(FLOATS), "y": draw(FLOATS), "r90": draw(FLOATS), "zone": draw(NAMES),
        "gateway": draw(NAMES), "confidence": draw(st.one_of(FLOATS, st.integers(0, 1))), "evidence": draw(EVIDENCE)}
    return Event(**fields)


def reference(ev: Event, t: float | None = None, drop: tuple[str, ...] = ()) -> tuple[str, str]:
    record = ev.to_dict()
    if t is not None:
        record["t"] = t
    for k in drop:
        record["evidence"].pop(k, None)  # type: ignore[attr-defined]
    return json.dumps(record, sort_keys=True), json.dumps(record, sort_keys=True, separators=(",", ":"))


@settings(max_examples=300, deadline=None)
@given(st.lists(events(), max_size=6))
def test_events_are_written_as_to_dict_and_json_dumps_write_them(evs):
    assert events_json(evs) == [reference(ev) for ev in evs]
    assert [event_json(ev) for ev in evs] == [reference(ev) for ev in evs]


@settings(max_examples=200, deadline=None)
@given(st.lists(events(), max_size=6), st.data())
def test_a_time_in_place_of_the_events_and_dropped_evidence(evs, data):
    times = data.draw(st.lists(st.one_of(st.floats(-1e10, 1e10), st.floats(-1e10, 1e10).map(np.float64)),
                               min_size=len(evs), max_size=len(evs)))
    drop = ("device_code", "previous")
    assert events_json(evs, times, drop) == [reference(ev, t, drop) for ev, t in zip(evs, times, strict=True)]


def test_a_burst_of_zone_entries_is_the_reference_text():
    """The cold start's burst: one rule, one evidence key set, many tags (cached per call)."""
    evs = [Event("zone_enter", 1234.5 + i / 7, "rs-1", tag=f"pallet-{i:05d}~3", x=12.345678 + i / 3, y=-3.21 * i,
                 r90=2.5 + i / 11, zone="aisle-ü", evidence={"fixes_in_zone": 2, "previous": None if i % 2 else "dock"})
           for i in range(300)]
    assert events_json(evs, None, ("device_code",)) == [reference(ev) for ev in evs]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.integers(-(2**80), 2**80), st.booleans(), st.floats(), st.floats().map(np.float64),
                st.none()))
def test_json_scalar_is_json_dumps(value):
    assert json_scalar(value) == json.dumps(value)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(0, 1e5), st.floats(-10, 10)), max_size=30),
       st.floats(1e8, 2e9).map(lambda o: np.floor(o / 60) * 60))
def test_absolute_times_round_as_each_event_alone(ts, origin):
    """Numpy's rounding of the array is the scalar's: the times (and keys) of the record
    path, ``round(float(record_t) + origin, 3)``, for a numpy origin and a Python one."""
    evs = [Event("zone_enter", t, "v") for t in ts]
    for o in (np.float64(origin), float(origin)):
        expected = [round(float(ev.to_dict()["t"]) + o, 3) for ev in evs]  # type: ignore[arg-type]
        got = absolute_times(evs, o)
        assert got == expected
        assert [f"{t:.3f}" for t in got] == [f"{t:.3f}" for t in expected]


def test_the_json_lines_sink_writes_the_reference_lines(tmp_path):
    evs = [Event("zone_enter", 1.5, "v", tag="é", x=float("nan"), evidence={"n": np.int64(3), "p": [1.23456, None]}),
           Event("gateway_silent", 2.0, "v", gateway="gw-1", r90=0.0)]
    sink = JsonLinesSink(tmp_path / "events.jsonl")
    sink.emit(evs)
    sink.close()
    assert (tmp_path / "events.jsonl").read_text() == "".join(json.dumps(ev.to_dict(), sort_keys=True) + "\n"
                                                              for ev in evs)



def test_a_restored_worker_rounds_event_times_as_before_its_checkpoint():
    """The rules' origin comes back from a checkpoint as the numpy float the first advance
    computed: as a Python float, about 1 in 20 event times rounded to another millisecond,
    so a restored worker decided those events under other keys."""
    sc = load_scenario(REPO / "scenarios" / "static-open.toml")
    tr = site_traffic(sc, "o", 0, 12.0)
    t0 = 1_790_000_000.0
    b = TickBuilder(PublisherSpec(0, "", "nats", [tr], Schedule(0.2, 5.0), t0, 0.25, wire=2))

    def core() -> WorkerCore:
        return site_worker_core(sc, site_engine_config(sc), tr.keys, WorkerSettings(site="o"))

    first = core()
    seq = 0
    for k in range(20):
        for _, gw, body, _ in b.build(k * 0.25, (k + 1) * 0.25, 0.2):
            seq += 1
            first.handle(raw_subject("o", gw), body, seq, t0 + (k + 1) * 0.25)
        first.tick(t0 + (k + 1) * 0.25)
    origin = first.windows.origin
    assert type(origin) is np.float64
    restored = core()
    restored.restore(first.checkpoint())
    assert type(restored.windows.origin) is np.float64
    assert restored.windows.origin == origin
    evs = [Event("unknown_tag", round(0.0005 + i * 0.0131, 4), "v") for i in range(400)]
    assert absolute_times(evs, restored.windows.origin) == absolute_times(evs, origin)
    assert absolute_times(evs, float(origin)) != absolute_times(evs, origin)  # what a Python float did


@settings(max_examples=200, deadline=None)
@given(events(), st.floats(-1e10, 1e10))
def test_an_event_key_is_the_records(ev, t):
    """The identity the timeline gives an event: rule, tag else gateway else zone, time,
    as the record (Event.to_dict) holds them."""
    record = ev.to_dict()
    about = record.get("tag") or record.get("gateway") or record.get("zone") or ""
    assert event_key(ev, t) == f"{record['rule']}/{about}/{t:.3f}"


def test_an_events_constructor_is_its_fields():
    """Event's own __init__ (one dict update, not a setattr per field) takes the dataclass's
    fields, in order, with their defaults; an event stays frozen, equal and hashable."""
    import dataclasses
    import inspect
    import math

    params = list(inspect.signature(Event.__init__).parameters.values())[1:]
    fields = dataclasses.fields(Event)
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields, strict=True):
        if f.default is not dataclasses.MISSING:
            assert p.default == f.default or (math.isnan(p.default) and math.isnan(f.default))
        elif f.default_factory is not dataclasses.MISSING:
            assert p.default is None and Event("dwell", 1.0, "v").evidence == f.default_factory()
        else:
            assert p.default is inspect.Parameter.empty
    a = Event("zone_enter", 1.0, "v", tag="t", evidence={"n": 1})
    assert a == Event("zone_enter", 1.0, "v", tag="t", evidence={"n": 1}) and a.x != a.x
    assert dataclasses.replace(a, tag="u").tag == "u" and dataclasses.asdict(a)["evidence"] == {"n": 1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.tag = "u"  # type: ignore[misc]
    assert Event("dwell", 1.0, "v").evidence is not Event("dwell", 1.0, "v").evidence
