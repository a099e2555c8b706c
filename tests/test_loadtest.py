"""``tagtwin loadtest``: the traffic it generates is what the worker accepts and scales as
asked; a short run through the real backbone and worker reconciles every sighting and
judges the SLOs with the exit code CI gates on."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from live_bridge.faults import FAULT_KINDS, Fault, parse_seconds
from live_bridge.wire import verify_signed
from tagtwin.loadgen import PublisherSpec, Schedule, TickBuilder, encode_gateway_batch
from tagtwin.loadtest import (
    SLO_NAMES,
    LoadTestError,
    Ramp,
    assign_publishers,
    parse_settings,
    parse_slos,
    percentiles,
    registered_copies,
    site_traffic,
    slo_text,
)
from tests import live_fixtures
from twin.scenario import load_scenario

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "scenarios" / "static-open.toml"


@pytest.fixture(scope="module")
def traffic():
    return site_traffic(load_scenario(SCENARIO), "lt", 0, 12.0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), rssi=st.floats(-130, 20), bat=st.integers(-1, 100), mot=st.integers(-1, 1),
       seq=st.integers(-1, 2**31 - 1), ch=st.sampled_from([0, 37, 38, 39]))
def test_text_encoded_batch_is_what_the_worker_verifies(n, rssi, bat, mot, seq, ch):
    key = bytes(range(32))
    t = 1_790_000_000.0 + np.arange(n) * 0.01
    body = encode_gateway_batch(
        "gw-1", 5, 1, float(t[-1]), t, [f"tag-{i}~3" for i in range(n)], np.full(n, rssi, np.float32),
        np.full(n, ch, np.uint8), np.full(n, bat, np.int8), np.full(n, mot, np.int8), np.full(n, seq, np.int64), key)
    batch = verify_signed(body, "gw-1", key)
    assert len(batch.ads) == n and batch.seq == 5
    a = batch.ads[0]
    assert a.dev == "tag-0~3" and abs(a.rssi - rssi) <= 0.005 and a.ch == ch
    assert a.bat == (None if bat < 0 else bat) and a.mot == (None if mot < 0 else mot)
    assert a.seq == (None if seq < 0 else seq)


def test_scale_is_copies_of_tags_and_every_sighting_stays_distinct(traffic):
    spec = PublisherSpec(0, "", "nats", [traffic], Schedule(2.5, 30.0), 1_790_000_000.0, 0.5)
    builder = TickBuilder(spec)
    seen = set()
    n = 0
    for k in range(30):  # 15 s: crosses the 12 s loop boundary
        for _subject, gw, body, count in builder.build(k * 0.5, (k + 1) * 0.5, 2.5):
            batch = verify_signed(body, gw, traffic.keys[gw])
            assert len(batch.ads) == count
            n += count
            seen |= {(gw, a.dev, a.seq, a.ch) for a in batch.ads}
    assert len(seen) == n  # copies and loops never collide on the redelivery key
    rate = n / 15.0
    assert math.isclose(rate, traffic.offered_at(2.5), rel_tol=0.05)
    assert math.isclose(traffic.offered_at(2.5), 2.5 * traffic.natural_rate, rel_tol=0.05)


def test_publishers_share_the_gateways_evenly(traffic):
    shares = assign_publishers([traffic], 4)
    gws = [g for share in shares for _, gs in share for g in gs]
    assert sorted(gws) == sorted(set(np.unique(traffic.gateway).tolist()))
    loads = [sum(int(np.sum(traffic.gateway == g)) for _, gs in share for g in gs) for share in shares]
    assert max(loads) < 1.5 * min(loads)


def test_ramp_and_percentiles():
    assert Ramp.parse("5000:1.5:10") == Ramp(5000, 1.5, 10)
    with pytest.raises(ValueError, match="START:FACTOR:STEP_S"):
        Ramp.parse("fast")
    sched = Schedule(1.0, None, 2.0, 10.0)
    assert [sched.scale_at(t) for t in (0, 9.9, 10, 35)] == [1.0, 1.0, 2.0, 8.0]  # no end of its own
    # the copies the site registers (live_bridge WorkerSettings.registered_copies): all a run sends
    assert sched.copies() is None and Schedule(2.5, 30.0).copies() == 3 and Schedule(0.4, 30.0).copies() == 1
    assert Schedule(3.0, 30.0).copies() == 3
    assert percentiles([1.0, 2.0], [99, 1])["p50"] == 1.0
    assert percentiles([])["p99"] is None


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "tagtwin", "loadtest", *args], check=False, capture_output=True,
                          text=True,                           timeout=timeout, env=env, cwd=REPO)


def test_a_ramp_registers_the_copies_it_sends_up_to_a_million_a_second_per_site(traffic):
    """A fixed rate registers the copies it sends; a ramp, having no last step, those it
    sends up to RAMP_REGISTERED_PER_SITE_S (a real site at that rate knows its tags)."""
    from tagtwin.loadtest import RAMP_REGISTERED_PER_SITE_S

    natural = traffic.natural_rate
    assert registered_copies(Schedule(2.5, 30.0), [traffic]) == 3
    ramp = Schedule(5000 / natural, None, 1.5, 10.0)
    copies = registered_copies(ramp, [traffic])
    steps = [ramp.scale_at(10.0 * i) or 0.0 for i in range(40)]
    sent = [math.ceil(s - 1e-9) for s in steps if s * natural <= RAMP_REGISTERED_PER_SITE_S]
    assert len(sent) > 10 and max(sent) <= copies == math.ceil(RAMP_REGISTERED_PER_SITE_S / natural - 1e-9)
    assert registered_copies(Schedule(3e6 / natural, None, 2.0, 10.0), [traffic]) == math.ceil(3e6 / natural - 1e-9)


def test_a_drain_timeout_reports_the_backlog_as_unprocessed_not_lost():
    from tagtwin.loadtest import reconcile

    assert reconcile(1000, 1000, 1000, 0, True) == {"unprocessed": 0, "lost": 0}
    # the drain timed out with 300 stored sightings not yet processed: a backlog, not a loss
    assert reconcile(1000, 1000, 690, 10, False) == {"unprocessed": 300, "lost": 0}
    # 50 never stored (refused or never acknowledged): those are lost whether drained or not
    assert reconcile(1000, 950, 690, 10, False) == {"unprocessed": 250, "lost": 50}
    assert reconcile(1000, 950, 940, 10, True) == {"unprocessed": 0, "lost": 50}


def test_only_windows_that_closed_on_traffic_are_judged():
    """A window whose closing tick (end + allowed lateness, up to the next 0.25 s tick) is
    after the last tick of traffic closes when the gateways fall idle, ~idle_s later: it
    is left out, whatever the publishers' finishing time."""
    from tagtwin.loadtest import closed_on_traffic, last_traffic_tick

    assert last_traffic_tick(60.31, 0.25, 60.0) == 60.0  # a fixed run: its duration
    assert last_traffic_tick(30.6, 0.25, None) == 30.25  # a ramp: the tick before the one that found the end
    judged = functools.partial(closed_on_traffic, lateness=2.0, t0=100.0, batch_s=0.25, last_tick=160.0)
    assert judged(100.0 + 57.27)  # closes at tick 59.5: on traffic
    assert judged(100.0 + 58.0)  # closes at tick 60.0, the last one with traffic
    # end + lateness 60.27: its closing tick 60.5 never came, though 58.27 <= 60.31 - 2
    assert not judged(100.0 + 58.27)


def test_bad_options_are_one_line_errors(tmp_path: Path):
    loose = tmp_path / "loose.creds"
    loose.write_text("-----BEGIN NATS USER JWT-----\n")
    loose.chmod(0o644)
    cases = [
        ("--ramp", "fast"),
        ("--fault", "link-cut@3"),
        ("--fault", "broker-restart@30x"),
        ("--slo", "completeness=all"),
        ("--creds", str(tmp_path / "x.creds")),  # as serve and twin-publish take it: checked before anything starts
        ("--nats", "nats://127.0.0.1:1", "--creds", str(loose)),
    ]
    # Independent commands, run side by side (the 2-core machine's second core would idle).
    with ThreadPoolExecutor(2) as pool:
        ramp, link_cut, bad_time, slo, creds, loose_creds = pool.map(
            lambda args: run_cli(str(SCENARIO), *args, "--quiet"), cases)
    assert ramp.returncode == 2 and "--ramp 'fast'" in ramp.stderr and "Traceback" not in ramp.stderr
    assert link_cut.returncode == 2 and "loadtest injects" in link_cut.stderr
    assert bad_time.returncode == 2 and "--fault 'broker-restart@30x': T '30x': expected a time" in bad_time.stderr
    assert slo.returncode == 2 and "completeness: expected a number >= 0 or none" in slo.stderr
    assert creds.returncode == 2 and "--creds needs --nats or --mqtt" in creds.stderr
    res = loose_creds
    assert res.returncode == 2 and str(loose) in res.stderr and "Traceback" not in res.stderr
    for r in (res,):
        assert len(r.stderr.strip().splitlines()) == 1


# -- the option parsers: round trips and errors that name the field --------------------------

TIMES = st.floats(0, 1e9, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(FAULT_KINDS), at=TIMES, down=TIMES)
def test_a_fault_parses_back_from_its_text(kind: str, at: float, down: float):
    fault = Fault(kind, at, down)
    assert Fault.parse(fault.text()) == fault


@settings(max_examples=200, deadline=None)
@given(start=st.floats(1e-6, 1e9), factor=st.floats(1.0001, 100), step=st.floats(1e-6, 1e6))
def test_a_ramp_parses_back_from_its_text(start: float, factor: float, step: float):
    ramp = Ramp(start, factor, step)
    assert Ramp.parse(ramp.text()) == ramp


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(SLO_NAMES), st.none() | st.floats(0, 1e12)))
def test_slos_parse_back_from_their_text(slos: dict[str, float | None]):
    assert parse_slos([slo_text(k, v) for k, v in slos.items()]) == slos


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_any_option_text_is_a_value_or_a_one_line_error_naming_the_option(text: str):
    for parse, option in ((Fault.parse, "--fault"), (Ramp.parse, "--ramp"), (lambda t: parse_slos([t]), "--slo"),
                          (lambda t: parse_settings([t]), "--worker-setting")):
        try:
            parse(text)
        except ValueError as exc:  # LoadTestError is a ValueError
            assert str(exc).startswith(option) and "\n" not in str(exc).strip()


def test_times_take_a_unit_and_errors_name_the_field():
    """The issue's own example, ``--fault broker-restart@30s``, and the units accepted."""
    assert Fault.parse("broker-restart@30s") == Fault("broker-restart", 30.0, 3.0)
    assert Fault.parse("link-cut@10+30") == Fault("link-cut", 10.0, 30.0)
    assert Fault.parse("worker-kill@1.5m+500ms") == Fault("worker-kill", 90.0, 0.5)
    assert Fault.parse("worker-kill") == Fault("worker-kill", 4.0, 3.0)
    assert [parse_seconds(t, "T") for t in ("30", "30s", "30S", "2m", "250ms", "1e1s")] == [30, 30, 30, 120, 0.25, 10]
    for text, field in (("broker-restart@", "T ''"), ("broker-restart@-1s", "T '-1s'"),
                        ("broker-restart@3+xs", "DOWN 'xs'"), ("broker-restart@infs", "T 'infs'"),
                        ("meteor@3", "KIND 'meteor'")):
        with pytest.raises(ValueError, match="^" + re.escape(f"--fault '{text}': {field}")):
            Fault.parse(text)
    assert Ramp.parse("5000:1.5:10s") == Ramp(5000, 1.5, 10)
    for text, field in (("x:1.5:10", "START 'x'"), ("5000:1:10", "FACTOR '1'"), ("5000:2:0", "STEP_S '0'"),
                        ("5000:2:10q", "STEP_S '10q'")):
        with pytest.raises(LoadTestError, match="^" + re.escape(f"--ramp '{text}': {field}")):
            Ramp.parse(text)
    with pytest.raises(LoadTestError, match=r"^--slo p99_latency: expected one of"):
        parse_slos(["p99_latency=3"])
    with pytest.raises(LoadTestError, match=r"^--slo 'completeness': expected NAME=BOUND"):
        parse_slos(["completeness"])
    assert parse_slos(["p99_publish_ack_ms=100", "completeness = none"]) == {
        "p99_publish_ack_ms": 100.0, "completeness": None}


def test_worker_settings_are_json_and_a_too_deep_one_is_a_one_line_error():
    """JSON nested past the parser's recursion limit raises RecursionError, not ValueError:
    it must still be the option's one-line error, not a traceback."""
    assert parse_settings(["horizon_s=30", "name=\"a\"", "x = none"]) == {"horizon_s": 30, "name": "a", "x": None}
    for item in ("horizon_s", "horizon_s=thirty", "deep=" + "[" * 100_000):
        with pytest.raises(LoadTestError, match=r"^--worker-setting "):
            parse_settings([item])


def test_the_ramp_benchmark_refuses_a_ramp_that_never_ends():
    """``loadtest_ramp.py --refine 1`` would ramp at a constant rate forever: a one-line error."""
    done = subprocess.run([sys.executable, "benchmarks/loadtest_ramp.py", "--refine", "1"], check=False,
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("loadtest_ramp.py: error: --refine 1.0: ")
    assert "Traceback" not in done.stderr


@pytest.mark.integration
def test_short_run_reconciles_every_sighting_and_fails_an_impossible_slo(tmp_path: Path):
    """One run (a few seconds of load, two sites: two streams, two workers): every generated
    sighting processed, both latencies measured, and a bound no pipeline can meet fails
    with exit code 1."""
    out = tmp_path / "report.json"
    res = run_cli(str(SCENARIO), "--multiplier", "0.5", "--sites", "2", "--duration", "8", "--json", str(out),
                  "--out", str(tmp_path / "html"), "--slo", "p99_close_to_position_ms=0.001",
                  "--slo", "p99_alert_delivery_ms=60000")
    assert res.returncode == 1, res.stderr[-2000:]
    report = json.loads(out.read_text())
    for key in ("offered_per_s", "achieved_per_s", "generated", "processed", "lost", "latency_ms", "slo"):
        assert key in report
    assert report["generated"] > 5000
    assert report["lost"] == 0 and report["processed"] == report["generated"]
    assert report["drained"] is True and report["unprocessed"] == 0
    by_window = report["close_to_position_by_window"]  # every judged window, the slowest with the worker's loop
    assert len(by_window["windows"]) >= 3 and by_window["slowest"]
    assert sum(n for _, n, _ in by_window["windows"]) <= report["positions"]
    assert any(s["worker_loop"] and "stages" in s["worker_loop"] for s in by_window["slowest"])
    assert report["slo"]["completeness"] == {"bound": 1.0, "value": 1.0, "pass": True, "kind": "min"}
    assert report["slo"]["p99_close_to_position_ms"]["pass"] is False
    # advert to position is bounded below by step + allowed lateness (a window closes then)
    floor = report["latency_floor"]
    assert report["latency_ms"]["p50"] >= (floor["step_s"] + floor["allowed_lateness_s"]) * 1000
    assert report["positions"] > 0 and report["timeline"]
    # rule events come from the backbone too: their delivery is measured like positions'
    assert report["events"] > 0 and report["alert_delivery_ms"]["p50"] is not None
    assert report["slo"]["p99_alert_delivery_ms"]["value"] == report["alert_delivery_ms"]["p99"]
    assert report["sites"] == ["static-open-1", "static-open-2"] and report["workers"] == 2
    assert sum(p["role"] == "worker" for p in report["processes"].values()) == 2
    assert (tmp_path / "html" / "index.html").read_text().count("data:image/png;base64,") == 1
    # what made it (design.md): tool version, scenario hash, seed; the wall clock in perf.json
    scenario = load_scenario(SCENARIO)
    from twin.run import scenario_sha256, tool_version

    assert report["tool"] == {"name": "tagtwin", "version": tool_version()}
    assert report["scenario_sha256"] == scenario_sha256(scenario) and report["seed"] == scenario.seed
    assert json.loads((tmp_path / "html" / "perf.json").read_text())["created_utc"].startswith("20")
    assert "SLO failed: p99_close_to_position_ms" in res.stderr


@pytest.mark.integration
def test_a_ramps_tag_copies_are_registered_tags(tmp_path: Path):
    """A ramp's copies (here 5 of each tag from its first step) are the site's registered
    tags: no unknown_tag alarm per copy. The impossible SLO ends it after its first step."""
    out = tmp_path / "report.json"
    res = run_cli(str(SCENARIO), "--ramp", "20000:1.5:4", "--wire", "2", "--json", str(out), "--quiet",
                  "--slo", "p99_close_to_position_ms=0.001")
    assert res.returncode == 1, res.stderr[-2000:]
    report = json.loads(out.read_text())
    natural = report["natural_per_s"]
    assert report["registered_copies"] == math.ceil(1e6 / natural - 1e-9)
    assert report["ramp"]["steps"] and report["events"] > 400  # every tag copy entered its zone
    assert report["alarms"] == 0, report["alarms"]
    assert report["lost"] == 0


mosquitto = live_fixtures.mosquitto  # fixture: a real broker on a free loopback port


@pytest.mark.integration
def test_mqtt_mode_measures_the_broker_side_only(mosquitto, tmp_path: Path):
    out = tmp_path / "report.json"
    # --slo p99_publish_ack_ms (docs/load-testing.md) is the bound --mqtt judges
    res = run_cli(str(SCENARIO), "--mqtt", mosquitto.url, "--multiplier", "0.25", "--duration", "3", "--json",
                  str(out), "--quiet", "--slo", "p99_publish_ack_ms=60000")
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["slo"]["p99_publish_ack_ms"]["bound"] == 60000.0
    assert report["published"] == report["generated"] > 1000  # every QoS 1 publish acknowledged
    assert report["processed"] is None and report["latency_ms"] is None
    assert set(report["slo"]) == {"p99_publish_ack_ms"} and report["publish_ack_ms"]["p50"] is not None


@pytest.mark.integration
def test_mqtt_mode_logs_in_with_creds(tmp_path: Path):
    """``--creds FILE`` as serve and twin-publish take it (design.md): a broker that refuses
    anonymous clients takes the load test's publishers with the file's login."""
    import shutil

    if shutil.which("mosquitto") is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto is not installed (tests/system-packages.txt)")
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "lt", "s3cret"], check=True, capture_output=True)
    passwd.chmod(0o600)
    port = live_fixtures.free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
                    "persistence false\nmax_inflight_messages 0\nmax_queued_messages 100000\n"
                    + ("user root\n" if os.geteuid() == 0 else ""))  # as root it would drop to a user
    creds = tmp_path / "lt.toml"
    creds.write_text('username = "lt"\npassword = "s3cret"\n')
    creds.chmod(0o600)
    broker = live_fixtures.Broker(conf, port)
    broker.start()
    try:
        out = tmp_path / "report.json"
        res = run_cli(str(SCENARIO), "--mqtt", f"mqtt://127.0.0.1:{port}", "--creds", str(creds),
                      "--multiplier", "0.1", "--duration", "2", "--json", str(out), "--quiet")
    finally:
        broker.stop()
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["published"] == report["generated"] > 0  # every QoS 1 publish acknowledged
    assert "s3cret" not in out.read_text()


def test_slos_come_from_the_scenario_and_the_command_line_overrides(tmp_path: Path):
    from tagtwin.loadtest import LoadTest, LoadTestError, LoadTestOptions

    scenario = tmp_path / "site.toml"
    scenario.write_text(SCENARIO.read_text() + "\n[loadtest.slo]\np99_close_to_position_ms = 500\n"
                        "completeness = 0.999\n")
    slos = LoadTest(LoadTestOptions(scenario=scenario)).slos
    assert slos["p99_close_to_position_ms"] == (500.0, "max") and slos["completeness"] == (0.999, "min")
    assert slos["p99_advert_to_position_ms"] == ((4.0 + 2.0 + 1.0) * 1000, "max")  # window + lateness + 1 s
    slos = LoadTest(LoadTestOptions(scenario=scenario, slo={"completeness": 1.0,
                                                            "p99_advert_to_position_ms": None})).slos
    assert slos["completeness"] == (1.0, "min") and "p99_advert_to_position_ms" not in slos
    with pytest.raises(LoadTestError, match="--slo p99_latency"):
        LoadTest(LoadTestOptions(scenario=scenario, slo={"p99_latency": 1.0}))
    # --mqtt judges the broker-side bound alone, as docs/load-testing.md says --slo sets it
    slos = LoadTest(LoadTestOptions(scenario=scenario, mqtt_url="mqtt://127.0.0.1:1883",
                                    slo={"p99_publish_ack_ms": 100.0})).slos
    assert slos == {"p99_publish_ack_ms": (100.0, "max")}
