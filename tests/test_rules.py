"""Rule engine: each rule on small synthetic streams, config parsing, sinks."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.contract import sightings_from_columns
from engine.pipeline import FIX_DTYPE
from engine.rules import (
    CHECKOUT_DTYPE,
    JsonLinesSink,
    ListSink,
    MqttSink,
    RuleContext,
    RuleEngine,
    RulesError,
    RuleSet,
    load_rules,
    parse_rules,
    read_events,
)
from siteplan.zones import ZoneIndex

ZONES = ZoneIndex.from_points(
    [
        ("store", "storage", [(0, 0), (20, 0), (20, 20), (0, 20)]),
        ("door", "exit", [(20, 5), (26, 5), (26, 15), (20, 15)]),
        ("office", "office", [(0, 20), (10, 20), (10, 30), (0, 30)]),
    ]
)
GW_XY = np.array([[5.0, 5.0], [15.0, 15.0], [24.0, 10.0]])


def context(n: int = 3, intervals: tuple[float, ...] = (1.0, 10.0)) -> RuleContext:
    return RuleContext(
        zones=ZONES,
        device_ids=[f"tag-{i}" for i in range(n)],
        device_class=np.array([i % len(intervals) for i in range(n)], np.int32),
        class_names=tuple(f"class{i}" for i in range(len(intervals))),
        class_interval_s=np.array(intervals),
        gateway_ids=("g0", "g1", "g2"),
        gateway_xy=GW_XY,
    )


def fixes(
    t: float,
    device: list[int],
    x: list[float],
    y: list[float],
    r90: float = 2.0,
    motion: int = 0,
    battery: int = 80,
) -> np.ndarray:
    out = np.zeros(len(device), FIX_DTYPE)
    out["t"], out["device"], out["x"], out["y"], out["r90"] = t, device, x, y, r90
    out["zone"] = ZONES.assign(np.array(x, float), np.array(y, float))
    out["motion"], out["battery"], out["n_gateways"] = motion, battery, 3
    return out


def adverts(
    device: int,
    t0: float,
    t1: float,
    interval: float,
    gateways: tuple[int, ...] = (0, 1, 2),
    seq0: int = 0,
) -> np.ndarray:
    t = np.arange(t0, t1, interval)
    n = len(t)
    g = np.tile(np.array(gateways), n)
    return sightings_from_columns(
        t=np.repeat(t, len(gateways)),
        gateway=g,
        device=np.full(n * len(gateways), device),
        rssi=np.full(n * len(gateways), -70.0),
        channel=37,
        seq=np.repeat(np.arange(seq0, seq0 + n), len(gateways)),
    )


def drive(eng: RuleEngine, sightings: np.ndarray, fix_rows: list[np.ndarray], end: float) -> list:
    """Replay second by second like twin.run.feed_rules."""
    events = []
    allfix = np.concatenate(fix_rows) if fix_rows else np.zeros(0, FIX_DTYPE)
    sightings = sightings[np.argsort(sightings["t"], kind="stable")]
    for now in np.arange(1.0, end + 1e-9, 1.0):
        events += eng.observe_sightings(
            sightings[(sightings["t"] >= now - 1) & (sightings["t"] < now)]
        )
        events += eng.process_fixes(allfix[(allfix["t"] > now - 1) & (allfix["t"] <= now)])
        events += eng.advance(now)
    return events


def rules_with(**sections: dict) -> RuleSet:
    return RuleSet.model_validate({"version": "test-1", **sections})


def test_zone_enter_after_confirm_fixes_and_dwell() -> None:
    eng = RuleEngine(
        rules_with(zone_transition={"confirm_fixes": 3}, dwell={"limits_s": {"door": 5}}), context()
    )
    rows = [fixes(float(t), [0], [22.0], [10.0]) for t in range(1, 12)]
    ev = drive(eng, adverts(0, 0, 12, 1.0), rows, 11)
    enter = [e for e in ev if e.rule == "zone_enter"]
    assert len(enter) == 1
    assert enter[0].t == 3.0
    assert enter[0].zone == "door"
    assert enter[0].ruleset_version == "test-1"
    assert enter[0].tag == "tag-0"
    dwell = [e for e in ev if e.rule == "dwell"]
    assert len(dwell) == 1
    assert dwell[0].t == pytest.approx(8.0)


def test_missing_tag_after_k_intervals_not_for_slow_class() -> None:
    eng = RuleEngine(rules_with(missing={"false_alarms_per_day_per_1000_tags": 1e5}), context())
    # tag 0 advertises every 1 s until t = 60; tag 1 (10 s class) every 10 s throughout.
    # (a lax design rate, alpha = 1.2e-3; q ~ 0.5 / 61 from 60 clean adverts, and with no
    # run of misses seen yet the burst continuation is its prior 1/2: q (1/2)^3 <= alpha, k = 4)
    s = np.concatenate([adverts(0, 0.2, 60, 1.0), adverts(1, 0.5, 120, 10.0)])
    ev = drive(eng, s, [], 120)
    missing = [e for e in ev if e.rule == "missing_tag"]
    assert [e.tag for e in missing] == ["tag-0"]
    e = missing[0]
    last = 59.2
    k = e.evidence["missed_in_a_row"]
    assert e.t == pytest.approx(last + k * 1.01 + 0.005)
    assert k == 4
    # q = loss floor + common-mode (0 + 1/2) / (60 + 1); p = q rho^(k - 1)
    assert e.evidence["p_silent_if_present"] == pytest.approx((5e-5 + 0.5 / 61) * 0.5**3)
    assert e.severity == "alarm"
    assert 0 < e.confidence <= 1


def test_missing_tag_found_again() -> None:
    eng = RuleEngine(rules_with(), context())
    s = np.concatenate([adverts(0, 0.2, 30, 1.0), adverts(0, 50.2, 60, 1.0, seq0=50)])
    ev = drive(eng, s, [], 60)
    rules = [e.rule for e in ev if e.tag == "tag-0" and e.rule in ("missing_tag", "tag_found")]
    assert rules == ["missing_tag", "tag_found"]
    # the 20 missed frames count toward the tag's miss rate
    assert eng.tags["n_missed"][0] == 20


def exit_run(
    checkout_t: float | None, watermark: float | None = None, end: float = 80.0, motion: int = 1
) -> list:
    eng = RuleEngine(rules_with(exit={"checkout_after_s": 5, "max_wait_s": 30}), context())
    # tag 0 walks from the store to the door (t 1..30), then vanishes at t = 30.
    rows = [
        fixes(float(t), [0], [10.0 + 12.0 * t / 30], [10.0], motion=motion) for t in range(1, 31)
    ]
    # runs of misses the site has seen, as in the demo twin: rho1 = 0.071, rho2 = 0.12
    # (without them both keep their prior 1/2 and k is large)
    eng.burst_missed, eng.burst_continued, eng.burst_deep = 400, 28, 3
    s = adverts(0, 0.2, 30, 1.0)
    if checkout_t is not None:
        co = np.zeros(1, CHECKOUT_DTYPE)
        co["t"], co["device"] = checkout_t, 0
        eng.ingest_checkouts(co, watermark=watermark)
    elif watermark is not None:
        eng.ingest_checkouts(np.zeros(0, CHECKOUT_DTYPE), watermark=watermark)
    return drive(eng, s, rows, end)


def test_exit_without_checkout_alarm() -> None:
    ev = exit_run(None, watermark=1e9)
    alarm = [e for e in ev if e.rule == "exit_without_checkout"]
    assert len(alarm) == 1
    a = alarm[0]
    assert a.confidence >= 0.5
    assert a.evidence["p_motion"] == 1.0
    assert a.zone == "door"
    assert 30 < a.t < 40
    assert not [e for e in ev if e.rule == "missing_tag"]


def test_exit_with_checkout_is_legit() -> None:
    ev = exit_run(checkout_t=10.0, watermark=1e9)
    assert [e.rule for e in ev if e.rule.startswith("exit")] == ["exit_checked_out"]


def test_exit_escalated_when_checkout_feed_behind() -> None:
    ev = exit_run(None, watermark=5.0)
    unresolved = [e for e in ev if e.rule == "exit_unresolved"]
    assert len(unresolved) == 1
    assert unresolved[0].evidence["reason"] == "checkout feed has not caught up"
    assert unresolved[0].severity == "review"


def test_still_tag_vanishing_at_door_is_not_a_theft_alarm() -> None:
    ev = exit_run(None, watermark=1e9, motion=0)
    assert not [e for e in ev if e.rule == "exit_without_checkout"]
    assert [e for e in ev if e.rule in ("exit_unresolved", "missing_tag")]


def test_gateway_silent_and_recovered() -> None:
    eng = RuleEngine(rules_with(gateway={"warmup_s": 20, "silent_s": 5}), context(30))
    s = np.concatenate([adverts(d, 0.1 * d, 200, 1.0) for d in range(30)])
    down = (s["gateway"] == 2) & (s["t"] >= 100) & (s["t"] < 150)
    ev = drive(eng, s[~down], [], 200)
    gw = [e for e in ev if e.gateway == "g2"]
    assert [e.rule for e in gw][:2] == ["gateway_silent", "gateway_recovered"]
    assert gw[0].t == pytest.approx(float(s["t"][(s["gateway"] == 2) & (s["t"] < 100)].max()) + 5)
    assert not [e for e in ev if e.gateway in ("g0", "g1")]


def test_battery_low_with_forecast_and_cohort() -> None:
    eng = RuleEngine(
        rules_with(battery={"low_pct": 15, "default_drain_pct_per_day": 1.0}), context(2)
    )
    ev = eng.process_fixes(
        np.concatenate(
            [fixes(1.0, [0], [5.0], [5.0], battery=14), fixes(1.0, [1], [6.0], [5.0], battery=90)]
        )
    )
    low = [e for e in ev if e.rule == "battery_low"]
    assert len(low) == 1
    assert low[0].tag == "tag-0"
    # the registry's class drain is the default 1 %/day here: 14 % lasts 14 days
    assert low[0].evidence["days_to_empty"] == pytest.approx(14.0)
    fc = eng.battery_forecast(2.0)
    assert {e.evidence["tag_class"] for e in fc} == {"class0", "class1"}


def test_unknown_revoked_and_after_hours() -> None:
    rules = rules_with(
        registry={"revoked": ["tag-1"]},
        after_hours={"working_hours": [["08:00", "17:00"]], "time_offset_s": 18 * 3600},
    )
    eng = RuleEngine(rules, context(2))
    ev = eng.process_fixes(
        np.concatenate(
            [
                fixes(1.0, [1], [5.0], [5.0]),
                fixes(1.0, [5], [5.0], [5.0]),
                fixes(1.0, [0], [5.0], [5.0], motion=1),
            ]
        )
    )
    by = {e.rule: e.tag for e in ev}
    assert by["revoked_tag"] == "tag-1"
    assert by["unknown_tag"] == "device#5"
    assert by["after_hours_movement"] == "tag-0"
    # cooldown: the same fixes a second later raise nothing new
    again = eng.process_fixes(
        np.concatenate([fixes(2.0, [1], [5.0], [5.0]), fixes(2.0, [0], [5.0], [5.0], motion=1)])
    )
    assert not again


def test_misplaced_still_tag_in_forbidden_zone() -> None:
    eng = RuleEngine(rules_with(), context())
    ev = []
    for t in range(1, 120):
        ev += eng.process_fixes(fixes(float(t), [0, 2], [5.0, 5.0], [25.0, 10.0], r90=2.0))
    mis = [e for e in ev if e.rule == "misplaced"]
    assert [e.tag for e in mis] == ["tag-0"]
    assert mis[0].zone == "office"
    assert 60 <= mis[0].t < 80  # six 10 s looks in a row (misplaced.looks)


def test_sinks(tmp_path) -> None:
    path = tmp_path / "ev" / "events.jsonl"
    jsonl, mem = JsonLinesSink(path), ListSink()
    published: list[tuple[str, bytes]] = []
    mqtt = MqttSink(lambda topic, payload: published.append((topic, payload)), prefix="site/a/")
    eng = RuleEngine(rules_with(), context(2), [jsonl, mem, mqtt])
    eng.process_fixes(fixes(1.0, [7], [5.0], [5.0]))
    jsonl.close()
    rows = read_events(path)
    assert len(rows) == len(mem.events) == len(published) == 1
    assert rows[0]["rule"] == "unknown_tag"
    assert rows[0]["ruleset_version"] == "test-1"
    assert published[0][0] == "site/a/alarm/unknown_tag"
    assert json.loads(published[0][1])["tag"] == "device#7"
    with pytest.raises(Exception, match=r"frozen|cannot assign"):
        mem.events[0].t = 3.0  # type: ignore[misc]


def test_bad_rows_are_counted_not_fatal() -> None:
    eng = RuleEngine(rules_with(), context())
    s = sightings_from_columns(
        t=np.array([1.0, np.nan, 2.0]),
        gateway=np.array([0, 0, 9]),
        device=np.array([0, 0, 0]),
        rssi=-60.0,
        channel=37,
    )
    eng.observe_sightings(s)
    assert eng.counters["rejected_rows"] == 2
    assert eng.counters["sightings"] == 1
    with pytest.raises(TypeError):
        eng.ingest_checkouts(np.zeros(1, FIX_DTYPE))


# -- configuration ------------------------------------------------------------------------


def test_rules_file_errors_name_file_and_field(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'version = "x"\n[exit]\nalarm_confidence = 2.0\n[missing]\nmin_missed = 9\nmax_missed = 3\n'
    )
    with pytest.raises(RulesError) as err:
        load_rules(bad)
    text = str(err.value)
    assert str(bad) in text
    assert "exit.alarm_confidence" in text
    assert "missing" in text
    with pytest.raises(RulesError, match=r"rules\.dwell\.limits_s"):
        parse_rules("[rules]\n[rules.dwell]\nlimits_s = { exit = -1 }\n", "scenario.toml")
    with pytest.raises(RulesError, match="unknown_rule"):
        parse_rules("[unknown_rule]\nx = 1\n")
    with pytest.raises(RulesError, match="not valid TOML"):
        parse_rules("version = ")
    with pytest.raises(RulesError, match="HH:MM"):
        parse_rules('[after_hours]\nworking_hours = [["25:00", "10:00"]]\n')


@settings(max_examples=60, deadline=None)
@given(
    confirm=st.integers(-5, 2000),
    low=st.floats(-50, 150, allow_nan=False),
    risk=st.floats(-1, 2e6, allow_nan=False),
    hours=st.tuples(st.integers(0, 30), st.integers(0, 70)),
)
def test_rule_parameter_parsing(
    confirm: int, low: float, risk: float, hours: tuple[int, int]
) -> None:
    hh = f"{hours[0]:02d}:{hours[1]:02d}"
    text = (
        f'version = "v"\n[zone_transition]\nconfirm_fixes = {confirm}\n'
        f"[battery]\nlow_pct = {low!r}\n"
        f"rearm_pct = 100.0\n[missing]\nfalse_alarms_per_day_per_1000_tags = {risk!r}\n"
        f'[after_hours]\nworking_hours = [["{hh}", "23:00"]]\n'
    )
    valid = (
        1 <= confirm <= 1000
        and 0 <= low <= 100
        and 0 < risk < 1e6
        and hours[0] < 24
        and hours[1] < 60
    )
    if valid:
        rs = parse_rules(text)
        assert rs.zone_transition.confirm_fixes == confirm
        assert rs.battery.low_pct == low
        assert rs.after_hours.intervals_s()[0][0] == hours[0] * 3600 + hours[1] * 60
    else:
        with pytest.raises(RulesError) as err:
            parse_rules(text, "r.toml")
        assert all(
            p.split(":")[0].split(".")[0]
            in {"zone_transition", "battery", "missing", "after_hours"}
            for p in err.value.problems
        )


def test_threshold_grows_with_miss_rate() -> None:
    eng = RuleEngine(rules_with(), context(3))
    eng._grow(3)
    eng.tags["n_heard"][:3] = [10_000, 1000, 1000]
    eng.tags["n_missed"][:3] = [0, 1, 100]
    # rho1 ~ 0.07, rho2 ~ 0.12 as in the demo twin
    eng.burst_missed, eng.burst_continued, eng.burst_deep = 1000, 70, 8
    theta, k = eng.silence_threshold(np.arange(3))
    assert k[0] <= k[1] < k[2]  # tag 1 is a 10 s class: alpha 10 x larger
    assert math.isclose(theta[2], k[2] * 1.01 + 0.005)


def test_per_gateway_miss_rate_for_tags_at_rest() -> None:
    eng = RuleEngine(rules_with(), context(2))
    # tag 0 heard by all 3 gateways on every frame for 100 s: the per-gateway product hits
    # the floor; the common-mode estimate is still its prior (0 + 1/2) / (100 + 1).
    eng.observe_sightings(adverts(0, 0.2, 100, 1.0))
    q = eng.miss_rate(np.array([0]))
    assert q[0] == pytest.approx(5e-5 + 0.5 / 101)
    # it moves: the per-gateway history restarts and the frame-counter estimate applies
    eng.process_fixes(fixes(100.0, [0], [5.0], [5.0], motion=1))
    assert eng.miss_rate(np.array([0]))[0] == pytest.approx(0.5 / 101)
    # a gateway that went silent no longer vouches for the tag
    eng2 = RuleEngine(rules_with(), context(2))
    eng2.observe_sightings(adverts(0, 0.2, 100, 1.0, gateways=(0,)))
    q_one = eng2.miss_rate(np.array([0]))[0]
    eng2.gw_state[0] = 1
    assert eng2.miss_rate(np.array([0]))[0] > q_one



def heard_frames(device: int, heard: np.ndarray, gateways: tuple[int, ...] = (0, 1, 2)):
    """Sightings of frame i at t = i + 0.2 s by every gateway, for the frames heard."""
    seq = np.repeat(np.flatnonzero(heard), len(gateways))
    return sightings_from_columns(
        t=seq + 0.2,
        gateway=np.tile(np.array(gateways), int(heard.sum())),
        device=np.full(len(seq), device),
        rssi=np.full(len(seq), -70.0),
        channel=37,
        seq=seq,
    )


def test_burst_statistics_from_frame_counters() -> None:
    """Runs of misses are counted per closed run: isolated misses keep rho1 small and k low,
    runs of misses (collisions that recur) raise rho1 and rho2 and with them k."""
    n = 2000
    lax = rules_with(missing={"false_alarms_per_day_per_1000_tags": 1e5})  # alpha 1.16e-3
    isolated = np.ones(n, bool)
    isolated[10:n:50] = False  # 40 single misses
    eng = RuleEngine(lax, context(3))
    eng.observe_sightings(heard_frames(0, isolated))
    assert (eng.burst_missed, eng.burst_continued, eng.burst_deep, eng.burst_deeper) == (40, 0, 0, 0)
    assert eng.burst_continuation() == pytest.approx((0.5 / 41, 0.5, 0.5))
    # q of a tag at rest: the per-gateway product (floored) plus the site's common-mode loss,
    # here all 40 misses hit every gateway at once: q_c = (40 - 2000 x 0.02^3 + 1/2) / 2001
    q_gw = (1 - (n - 40 + 0.5) / (n + 1)) ** 3
    assert eng.common_loss() == pytest.approx((40 - n * q_gw + 0.5) / (n + 1), rel=1e-9)
    q = eng.miss_rate(np.array([0]))[0]
    assert q == pytest.approx(5e-5 + eng.common_loss(), rel=1e-9)
    # the tag's own continuation (0 of its 40 misses followed a miss), shrunk toward the
    # site's with the weight of 20 misses, and at least q; each deeper one at least the last
    rho1 = max((0 + 20 * 0.5 / 41) / (40 + 20), q)
    r1, r2, r3 = eng.tag_continuation(np.array([0]), np.array([q]))
    assert (r1[0], r2[0], r3[0]) == pytest.approx((rho1, 0.5, 0.5))
    _, k_iso = eng.silence_threshold(np.array([0]))
    alpha = 1e5 / 1000 / 86_400
    assert q * rho1 <= alpha
    assert k_iso[0] == 2
    bursty = np.ones(n, bool)
    for start in range(10, n - 10, 50):
        bursty[start : start + 3] = False  # 40 runs of 3
    eng2 = RuleEngine(lax, context(3))
    # the same frames in two batches: a run that spans the batch boundary counts once
    eng2.observe_sightings(heard_frames(0, np.where(np.arange(n) < 1011, bursty, False)))
    eng2.observe_sightings(heard_frames(0, np.where(np.arange(n) >= 1011, bursty, False)))
    assert (eng2.burst_missed, eng2.burst_continued, eng2.burst_deep, eng2.burst_deeper) == (
        120, 80, 40, 0
    )
    assert tuple(eng2.tags[c][0] for c in ("b_missed", "b_cont", "b_deep", "b_deeper")) == (
        120, 80, 40, 0
    )
    # runs of exactly 3: a run that reached 3 never went on, so rho3 is the site's small
    # value shrunk toward nothing deeper; rho3 still at least rho2 (the tail never thins)
    assert eng2.burst_continuation()[2] == pytest.approx(0.5 / 41)
    q2 = eng2.miss_rate(np.array([0]))[0]
    r1, r2, r3 = eng2.tag_continuation(np.array([0]), np.array([q2]))
    assert r3[0] == r2[0]
    _, k_burst = eng2.silence_threshold(np.array([0]))
    head = q2 * r1[0] * r2[0]
    assert head > alpha
    assert k_burst[0] == 3 + math.ceil(math.log(head / alpha) / -math.log(r3[0]))
    assert k_burst[0] > k_iso[0]
    p = eng2.silent_probability(np.array([0, 0]), np.array([k_burst[0], k_burst[0] - 1]))
    assert p[0] <= alpha < p[1]
    # a tag that reports a nearly empty cell is expected to fall silent: k = min_missed
    eng2.tags["battery"][0] = 3
    assert eng2.silence_threshold(np.array([0]))[1][0] == 2


def test_heavy_tail_of_long_runs_raises_k() -> None:
    """Runs that went past 3 misses set rho3 above rho2: a tail one geometric rate from the
    second miss on (the earlier model) would have called such a tag missing too early."""
    n = 3000
    lax = rules_with(missing={"false_alarms_per_day_per_1000_tags": 1e5})  # alpha 1.16e-3
    heard = np.ones(n, bool)
    for i, start in enumerate(range(20, n - 20, 75)):
        heard[start : start + (6 if i % 4 == 0 else 2)] = False  # 30 runs of 2, 10 runs of 6
    eng = RuleEngine(lax, context(3))
    eng.observe_sightings(heard_frames(0, heard))
    assert (eng.burst_missed, eng.burst_continued, eng.burst_deep, eng.burst_deeper) == (120, 80, 40, 30)
    rho1, rho2, rho3 = eng.burst_continuation()
    assert (rho1, rho2, rho3) == pytest.approx((80.5 / 121, 40.5 / 81, 30.5 / 41))
    d = np.array([0])
    q = eng.miss_rate(d)[0]
    r1, r2, r3 = (float(r[0]) for r in eng.tag_continuation(d, np.array([q])))
    assert r3 > r2
    alpha = 1e5 / 1000 / 86_400
    _, k = eng.silence_threshold(d)
    assert k[0] == 3 + math.ceil(math.log(q * r1 * r2 / alpha) / -math.log(r3))
    p = eng.silent_probability(np.array([0, 0]), np.array([k[0], k[0] - 1]))
    assert p[0] <= alpha < p[1]
    # the two-level chain q rho1 rho2^(k-2) would have stopped earlier
    k_two_level = 2 + math.ceil(math.log(q * r1 / alpha) / -math.log(r2))
    assert k_two_level < k[0]


def test_scoring_by_hand() -> None:
    """Precision, recall, delays in intervals split by incident kind, and the false-alarm
    rate, on a handful of events scored by hand."""
    from engine.rules.events import Event
    from engine.rules.scoring import IncidentRecord, score_report, tally_events

    incidents = [
        IncidentRecord("battery_death", t=100.0, t_begin=70.0, tag="a"),
        IncidentRecord("battery_death", t=200.0, t_begin=170.0, tag="b"),
        IncidentRecord("tag_removed", t=300.0, t_begin=290.0, tag="c", detail={"silent": True}),
        IncidentRecord("tag_removed", t=400.0, t_begin=390.0, tag="d", detail={"silent": False}),
    ]
    ev = [
        Event("missing_tag", 101.5, "v1", tag="a"),  # 1.5 intervals of 1 s
        Event("missing_tag", 201.0, "v1", tag="b"),  # 2 intervals of 0.5 s
        Event("missing_tag", 309.0, "v1", tag="c"),  # 9 intervals: a destroyed tag
        Event("missing_tag", 500.0, "v1", tag="e"),  # no incident: a false alarm
        Event("battery_low", 80.0, "v1", tag="a"),  # 20 s before the cell died
    ]
    s = score_report(tally_events(ev, incidents, n_tags=200, duration_s=8640.0,
                     interval_s={"a": 1.0, "b": 0.5, "c": 1.0, "d": 1.0}))
    miss = s["per_rule"]["missing_tag"]  # type: ignore[index]
    assert (miss["events"], miss["true_positives"], miss["incidents"], miss["detected"]) == (4, 3, 3, 3)
    assert miss["precision"] == 0.75
    assert miss["delay_intervals"]["median"] == 2.0
    by = miss["delay_intervals_by_incident"]
    assert by["battery_death"] == {"median": 1.75, "p90": 1.95, "max": 2.0}
    assert by["tag_destroyed"] == {"median": 9.0, "p90": 9.0, "max": 9.0}
    bat = s["per_rule"]["battery_low"]  # type: ignore[index]
    assert bat["delay_s"]["max"] == -20.0
    # a warning before the incident: counted, and said so beside the figure
    assert bat["negative_delays"] == 1 and "before the incident" in bat["negative_delay_note"]
    # one unexplained alarm over 200 tags x 0.1 day = 0.02 thousand-tag-days
    assert s["false_alarms"] == 1
    assert s["false_alarms_per_day_per_1000_tags"] == 50.0


def test_class_design_rate_trades_false_alarms_for_speed() -> None:
    """A class that accepts 1,000x more false alarms gets alpha 1,000x larger and, with the
    same loss statistics, a smaller k; other classes keep the site's rate."""
    ctx = context(4, intervals=(1.0, 1.0))
    site = RuleEngine(rules_with(), ctx)
    fast = RuleEngine(rules_with(missing={"false_alarms_by_class": {"class1": 250.0}}), ctx)
    for eng in (site, fast):
        eng._grow(4)
        eng.tags["n_heard"][:4] = 1000
        eng.tags["n_missed"][:4] = 10
        eng.burst_missed, eng.burst_continued, eng.burst_deep, eng.burst_deeper = 1000, 70, 8, 2
    d = np.arange(4)
    assert site.false_alarm_risk(d) == pytest.approx(np.full(4, 0.25 / 1000 / 86_400))
    alpha = fast.false_alarm_risk(d)
    assert alpha[[0, 2]] == pytest.approx(site.false_alarm_risk(d)[[0, 2]])
    assert alpha[[1, 3]] == pytest.approx(1000 * site.false_alarm_risk(d)[[1, 3]])
    _, k_site = site.silence_threshold(d)
    _, k_fast = fast.silence_threshold(d)
    assert (k_fast[[0, 2]] == k_site[[0, 2]]).all()
    assert (k_fast[[1, 3]] < k_site[[1, 3]]).all()


def test_per_class_values_are_checked_with_the_class_named() -> None:
    text = (
        'version = "x-1"\n[missing]\nfalse_alarms_by_class = { pallet = 0.0 }\n'
        "expected_interval_s = { tote = 9999.0 }\n"
    )
    with pytest.raises(RulesError) as err:
        parse_rules(text, "r.toml")
    assert sorted(err.value.problems) == [
        "missing.expected_interval_s.tote: Input should be less than or equal to 3600",
        "missing.false_alarms_by_class.pallet: Input should be greater than 0",
    ]


def test_rule_feeder_in_chunks_gives_the_events_of_one_replay() -> None:
    """twin.run.RuleFeeder fed as a streaming pipeline delivers (sightings as they arrive,
    fixes a chunk late, checkouts on arrival) decides exactly what feed_rules does at once."""
    from twin.incidents import FEED_DTYPE
    from twin.run import RuleFeeder, feed_rules

    rules = rules_with(exit={"checkout_after_s": 5, "max_wait_s": 30}, gateway={"warmup_s": 20, "silent_s": 5})
    s = np.concatenate([adverts(0, 0.2, 30, 1.0), adverts(1, 0.3, 90, 1.0), adverts(2, 0.4, 45, 1.0)])
    s = s[np.argsort(s["t"], kind="stable")]
    f = np.concatenate([fixes(float(t), [0, 1], [10.0 + 12.0 * t / 30, 5.0], [10.0, 5.0], motion=1)
                        for t in range(1, 31)] + [fixes(float(t), [1], [5.0], [5.0]) for t in range(31, 90)])
    feed = np.zeros(1, FEED_DTYPE)
    feed["t"], feed["arrival"], feed["device"] = 44.0, 52.0, 2

    def events(run: Callable[[RuleEngine], None]) -> list[dict[str, object]]:
        sink = ListSink()
        run(RuleEngine(rules, context(), [sink]))
        return [e.to_dict() for e in sink.events]

    def at_once(eng: RuleEngine) -> None:
        feed_rules(eng, s, f, feed, end_t=100.0, step_s=1.0, feed_max_delay_s=10.0)

    def chunked(eng: RuleEngine) -> None:
        feeder = RuleFeeder(eng, step_s=1.0, feed_max_delay_s=10.0)
        for lo in range(0, 100, 20):
            feeder.add(s[(s["t"] >= lo) & (s["t"] < lo + 20)], f[(f["t"] > lo - 20) & (f["t"] <= lo)],
                       feed[(feed["arrival"] > lo) & (feed["arrival"] <= lo + 20)])
            feeder.step_until(lo)
        feeder.add(fixes=f[f["t"] > 80])
        feeder.flush(100.0)

    once = events(at_once)
    assert once == events(chunked)
    assert {"exit_without_checkout", "missing_tag"} & {e["rule"] for e in once}


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 12), st.integers(1, 20), st.integers(0, 2**31 - 1))
def test_independent_loss_kernel_is_the_product_over_gateways_up(n_tags: int, n_gw: int, seed: int) -> None:
    """The compiled per-tag loss prod_g (1 - h_g) over gateways up equals the matrix form
    it replaced, to rounding (it adds the logs gateway by gateway, BLAS in blocks)."""
    from engine.rules.presence import _independent_loss

    rng = np.random.default_rng(seed)
    sent = rng.integers(0, 5000, n_tags).astype(np.int64)
    heard = np.minimum(rng.integers(0, 5000, (n_tags, n_gw)) * rng.integers(0, 2, (n_tags, n_gw)),
                       sent[:, None]).astype(np.int32)
    up = rng.random(n_gw) < 0.8
    d = rng.integers(0, n_tags, 2 * n_tags).astype(np.int64)
    h = (heard[d] + 0.5) / (sent[d][:, None] + 1.0)
    want = np.exp(np.log1p(-np.minimum(h, 1 - 1e-12)) @ up.astype(float))
    np.testing.assert_allclose(_independent_loss(heard, sent, d, up), want, rtol=1e-12, atol=0)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.integers(1, 12), st.integers(0, 2**31 - 1), st.booleans())
def test_independent_loss_kernel_is_the_plain_sum_bit_for_bit(n_tags: int, n_gw: int, seed: int, huge: bool) -> None:
    """The kernel's looked-up logarithms (one per (heard, sent) pair in a call) give the
    plain gateway-by-gateway sum's bits: many tags sharing counts, and counts outside the
    lookup's key field (past 2^31, or a negative one, which would read as an empty slot)
    computed directly."""
    from engine.rules.presence import _independent_loss

    rng = np.random.default_rng(seed)
    sent = rng.choice([30, 31, 2**31 + 5 if huge else 32, -3], n_tags).astype(np.int64)
    counts = rng.choice([0, 0, 0, 29, 30, 31], (n_tags, n_gw))
    heard = np.where(sent[:, None] < 0, counts, np.minimum(counts, sent[:, None])).astype(np.int32)
    up = rng.random(n_gw) < 0.8
    d = rng.integers(0, n_tags, 3 * n_tags).astype(np.int64)
    want = []
    for tag in d:
        s1 = float(sent[tag]) + 1.0
        acc = 0.0
        for g in np.flatnonzero(up):
            acc += math.log1p(-min((int(heard[tag, g]) + 0.5 if heard[tag, g] else 0.5) / s1, 1 - 1e-12))
        want.append(math.exp(acc))
    assert _independent_loss(heard, sent, d, up).tobytes() == np.array(want).tobytes()


def test_independent_loss_kernel_with_more_distinct_pairs_than_its_table() -> None:
    """Every tag with counts of its own (more (heard, sent) pairs than the lookup table
    holds: it keeps half its slots and computes the rest) ends, with the plain sum's bits."""
    from engine.rules.presence import _independent_loss

    rng = np.random.default_rng(3)
    n_tags, n_gw = 300, 40
    sent = rng.integers(1000, 100_000, n_tags).astype(np.int64)
    heard = rng.integers(1, 1000, (n_tags, n_gw)).astype(np.int32)  # 12,000 pairs, table 2,048
    up = np.ones(n_gw, bool)
    d = np.arange(n_tags, dtype=np.int64)
    want = []
    for tag in d:
        s1 = float(sent[tag]) + 1.0
        acc = 0.0
        for g in range(n_gw):
            acc += math.log1p(-min((int(heard[tag, g]) + 0.5) / s1, 1 - 1e-12))
        want.append(math.exp(acc))
    assert _independent_loss(heard, sent, d, up).tobytes() == np.array(want).tobytes()


def carry_run(
    path: Callable[[float], tuple[float, float]],
    motion: int = 1,
    r90: float = 2.0,
    outline: bool = False,
    **exit_cfg: float,
) -> list:
    """Tag 0 (1 s class) carried along ``path`` for t = 1..30, then silent; no checkout."""
    ctx = context()
    if outline:  # the door zone's east edge (x = 26) is the building's outer wall
        ctx = dataclasses.replace(ctx, site_outline=shapely.box(0, 0, 26, 30))
    eng = RuleEngine(rules_with(exit={"checkout_after_s": 5, **exit_cfg}), ctx)
    rows = [fixes(float(t), [0], [path(t)[0]], [path(t)[1]], r90=r90, motion=motion) for t in range(1, 31)]
    eng.burst_missed, eng.burst_continued, eng.burst_deep = 400, 28, 3  # as in exit_run
    eng.ingest_checkouts(np.zeros(0, CHECKOUT_DTYPE), watermark=1e9)
    return drive(eng, adverts(0, 0.2, 30, 1.0), rows, 80)


def exit_rules(ev: list) -> list[str]:
    return [e.rule for e in ev if e.rule in ("exit_without_checkout", "exit_unresolved", "missing_tag")]


def test_exit_evidence_at_the_outer_wall_is_renormalized_to_the_building() -> None:
    # Fixes pinned to the outer wall at the door (as a localizer clips them): half of each
    # fix's Gaussian lies outside the building, where the tag cannot be before it leaves.
    def at_door(t: float) -> tuple[float, float]:
        return 26.0, 10.0

    inside = carry_run(at_door, r90=3.0, outline=True, carry_speed_mps=0.0)
    alarm = [e for e in inside if e.rule == "exit_without_checkout"]
    assert len(alarm) == 1
    assert alarm[0].evidence["p_zone"] > 0.9
    # Without the outline the same fixes put only about half their mass in the zone.
    plain = carry_run(at_door, r90=3.0, outline=False, carry_speed_mps=0.0)
    p_plain = [e.evidence["p_zone"] for e in plain if e.rule.startswith("exit_")]
    assert len(p_plain) == 1
    assert 0.4 < p_plain[0] < 0.6


def test_carried_tag_that_vanishes_within_reach_of_the_exit_is_an_exit() -> None:
    # The last fixes lie 1 m short of the exit zone (x = 20), sharp (r90 0.5 m): carried
    # at 1.5 m/s, the tag reaches the zone before its next advert (1 s later).
    def short_of_door(t: float) -> tuple[float, float]:
        return min(5.0 + 0.5 * t, 19.0), 10.0

    assert exit_rules(carry_run(short_of_door, r90=0.5)) == ["exit_without_checkout"]
    # A still tag cannot cover the metre, and without a carry speed neither can a moving one.
    assert exit_rules(carry_run(short_of_door, r90=0.5, motion=0)) == ["missing_tag"]
    assert exit_rules(carry_run(short_of_door, r90=0.5, carry_speed_mps=0.0)) == ["missing_tag"]


def test_tag_carried_past_the_door_and_away_is_missing_not_an_exit() -> None:
    # In the door zone until t = 18, then carried back into the store at 1.3 m/s: last
    # within reach of the zone at t = 20, silent 10 s later 16 m from it. Evidence that old
    # says nothing of where the tag is (with a 15 s memory this was an exit case).
    def past_door(t: float) -> tuple[float, float]:
        return (22.0, 10.0) if t <= 18 else (22.0 - 1.3 * (t - 18.0), 10.0)

    assert exit_rules(carry_run(past_door)) == ["missing_tag"]
