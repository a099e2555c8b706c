"""The worker's IO loop under a busy site's load: outputs cut under the backbone's message
limit (a window of 8,000 tags is ~1.2 MB of positions, which the stream refuses), and a
pull feed that keeps delivering while the worker computes. Real nats-server on free
loopback ports."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.contract import UNKNOWN, IdTable
from engine.eventtime import REVISED_FIX_DTYPE
from engine.localize import METHOD_NAMES
from engine.timeline import EventRevision
from live_bridge.backbone import (
    MAX_BATCH_BYTES,
    PullFeed,
    connect,
    ensure_streams,
    out_subject,
    publish_batch,
    raw_stream,
    raw_subject,
)
from live_bridge.natsserver import EmbeddedNats
from live_bridge.server import positions_payload, positions_payloads
from live_bridge.wire import Advert
from live_bridge.worker import MAX_OUTPUT_BYTES, events_payloads, run_worker
from tests.test_backbone import SITE, core, signed, until


def fixes_of(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = np.zeros(n, REVISED_FIX_DTYPE)
    f["t"], f["device"] = 1.7e9 + rng.integers(0, 5, n), rng.integers(0, 50, n)
    f["x"], f["y"], f["r90"] = rng.normal(0, 30, n), rng.normal(0, 30, n), rng.uniform(0, 5, n)
    f["x"][:: max(1, n // 7)] = np.nan  # unlocalized rows are left out, as before
    f["zone"], f["n_gateways"] = rng.integers(-1, 1, n), rng.integers(0, 9, n)
    f["method"], f["battery"] = rng.integers(0, len(METHOD_NAMES), n), rng.integers(-1, 101, n)
    f["motion"], f["revision"] = rng.integers(-1, 2, n), rng.integers(0, 10**6, n)
    f["battery"][:1] = UNKNOWN
    return f


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 400), st.integers(300, 20_000), st.integers(0, 3))
def test_positions_are_cut_under_the_limit_and_lose_nothing(n, max_bytes, seed):
    fixes = fixes_of(n, seed)
    devices = IdTable([f"tag-{i:05d}" for i in range(50)])
    whole = positions_payload(fixes, devices, ("floor",), 0.0, 5.0)
    parts = positions_payloads(fixes, devices, ("floor",), 0.0, 5.0, max_bytes)
    assert positions_payloads(fixes, devices, ("floor",), 0.0, 5.0, None) == [whole]
    got = [json.loads(p) for p in parts]
    assert all(len(p) <= max_bytes for p in parts if len(json.loads(p)["positions"]) > 1)  # one fix always fits
    assert [q for g in got for q in g["positions"]] == json.loads(whole)["positions"]
    assert all(g["v"] == 1 and g["t"] == 5.0 for g in got)
    if len(whole) <= max_bytes:
        assert parts == [whole]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([3.0, 4.0, 1e9 + 0.0005]), st.integers(0, 5),
                          st.one_of(st.floats(-1e3, 1e3), st.just(float("nan"))), st.integers(-1, 100),
                          st.integers(-1, 1), st.integers(0, 40)), max_size=60),
       st.integers(0, 3))
def test_positions_are_json_dumps_of_each_fix_as_the_ids_table_grows(rows, added):
    """A window's positions (few distinct times, small-int columns written from tables, ids
    quoted once per table and appended as the table grows) are json.dumps of each fix."""
    devices = IdTable(["tag-0", 'odd "id" \u00e9', "tag-2"])
    positions_payloads(np.zeros(1, REVISED_FIX_DTYPE), devices, ("dock",), 0.0, 1.0, None)  # quotes 3 ids
    for i in range(added + 3):
        devices.code(f"new-\u00fc-{i}")
    fixes = np.zeros(len(rows), REVISED_FIX_DTYPE)
    for j, (t, d, x, bat, mot, ngw) in enumerate(rows):
        fixes[j]["t"], fixes[j]["device"], fixes[j]["x"], fixes[j]["y"] = t, d, x, 2.5
        fixes[j]["battery"], fixes[j]["motion"], fixes[j]["n_gateways"], fixes[j]["revision"] = bat, mot, ngw, 7
    expected = {"v": 1, "t": 2.0, "positions": [
        {"t": round(float(f["t"]) + 0.5, 3), "dev": devices.ids[int(f["device"])], "x": round(float(f["x"]), 3),
         "y": 2.5, "r90": 0.0, "zone": "dock", "n_gw": int(f["n_gateways"]), "method": METHOD_NAMES[0],
         "bat": None if f["battery"] == UNKNOWN else int(f["battery"]),
         "mot": None if f["motion"] == UNKNOWN else int(f["motion"]), "rev": 7}
        for f in fixes if np.isfinite(f["x"])]}
    got = positions_payloads(fixes, devices, ("dock",), 0.5, 2.0, None)
    assert got == [json.dumps(expected, separators=(",", ":")).encode()]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 200), st.integers(200, 8_000))
def test_events_are_cut_under_the_limit_and_keep_their_order(n, max_bytes):
    events = [EventRevision(f"zone_enter|tag-{i}|{i}", 1.7e9 + i, i, None if i % 5 == 0 else json.dumps(
                            {"rule": "zone_enter", "t": 1.7e9 + i, "tag": f"tag-{i}", "detail": "x" * (i % 90)},
                            sort_keys=True, separators=(",", ":")))
              for i in range(n)]
    whole = events_payloads(events, 3.0, None)
    parts = events_payloads(events, 3.0, max_bytes)
    assert len(whole) == 1
    assert [r for p in parts for r in json.loads(p)["events"]] == json.loads(whole[0])["events"]
    assert all(len(p) <= max_bytes for p in parts if len(json.loads(p)["events"]) > 1)


JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(-1e9, 1e9), st.text(max_size=4))
JSON_VALUE = st.recursive(JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                              st.dictionaries(st.text(max_size=3), inner, max_size=3)),
                          max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.none(), st.dictionaries(st.text(max_size=5), JSON_VALUE, max_size=6)), max_size=8))
def test_events_are_written_as_the_parsed_sorted_text_was(events):
    """The timeline hands out each event as its compact sorted text, copied into the
    messages: the bytes json.dumps gave the record (keys sorted at every level) in the
    envelope, as the messages were written before the text was kept."""
    revs = [EventRevision(f"k{i}", 1.7e9 + i / 3, i,
                          None if e is None else json.dumps(e, sort_keys=True, separators=(",", ":")))
            for i, e in enumerate(events)]

    def as_before(e: EventRevision) -> str:
        return json.dumps({"key": e.key, "window": round(e.step_t, 3), "rev": e.revision, "retracted": True}
                          if e.retracted else
                          {"key": e.key, "window": round(e.step_t, 3), "rev": e.revision, "event": e.event},
                          separators=(",", ":"))

    head = json.dumps({"v": 1, "t": 3.0}, separators=(",", ":"))[:-1] + ',"events":['
    assert events_payloads(revs, 3.0, None) == [(head + ",".join(map(as_before, revs)) + "]}").encode()]


@pytest.fixture
def backbone(tmp_path: Path):
    with EmbeddedNats.on_free_ports(tmp_path / "nats") as srv:
        yield srv


async def _append(out: list, msg) -> None:
    out.append(msg.data)


@pytest.mark.integration
def test_a_window_over_the_message_limit_is_published_in_parts(backbone):
    """8,000 tags heard in one window: ~1.2 MB of positions. One message would be refused
    by the stream on every retry and the worker would publish nothing more; cut in parts,
    every tag's position arrives and the worker goes on to the next windows."""
    tags = 8000
    t0 = float(int(time.time()) - 30) + 0.3  # a batch's rows (0.1 s) all in one step

    def ads(t: float) -> list[Advert]:
        return [Advert(t=t + (i % 100) / 1000, dev=f"tag-{i:05d}", rssi=-60.0 - i % 20, ch=37, seq=i)
                for i in range(tags)]

    async def main():
        w = core(status_every_s=0.2)
        nc = await connect(backbone.url, name="worker")
        pub = await connect(backbone.url, name="pub")
        js = pub.jetstream()
        await ensure_streams(js, SITE)
        got: list[bytes] = []
        await pub.subscribe(out_subject(SITE, "positions"), cb=functools.partial(_append, got))
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_worker(w, nc, stop, ready=ready))
        await ready.wait()
        for i, t in enumerate((t0, t0 + 1.0, t0 + 6.0)):  # the third batch closes the first windows
            for gw in "abcd":
                await publish_batch(js, raw_subject(SITE, gw), signed(gw, i, ads(t)), timeout=30)
        await until(lambda: w.counters["positions"] >= tags, timeout=60, what="a window of 8,000 positions")
        await until(lambda: sum(len(json.loads(b)["positions"]) for b in got) >= w.counters["positions"],
                    timeout=60, what="every position received")
        stop.set()
        await task
        await nc.close()
        await pub.close()
        return w, got

    w, got = asyncio.run(main())
    assert not any(k.startswith("commit retried") for k in w.counters), dict(w.counters)
    assert len(got) > 2 and max(len(b) for b in got) <= MAX_OUTPUT_BYTES < MAX_BATCH_BYTES
    first = min(p["t"] for b in got for p in json.loads(b)["positions"])
    assert len({p["dev"] for b in got for p in json.loads(b)["positions"] if p["t"] == first}) == tags


@pytest.mark.integration
def test_the_pull_feed_delivers_while_the_caller_computes_and_across_expiries(backbone):
    """Messages stored while the caller is busy (a blocking close) are there, in order, at
    its next take; requests that expired with nothing to deliver are replaced."""
    async def main():
        nc = await connect(backbone.url, name="feed")
        js = nc.jetstream()
        await ensure_streams(js, SITE)
        from nats.js.api import AckPolicy, ConsumerConfig

        await js.add_consumer(raw_stream(SITE), ConsumerConfig(durable_name="d", ack_policy=AckPolicy.EXPLICIT,
                                                               max_ack_pending=64))
        feed = await PullFeed(nc, raw_stream(SITE), "d", batch=16, expires_s=0.3).start()
        seqs = [await publish_batch(js, raw_subject(SITE, "a"), signed("a", i, [])) for i in range(5)]
        taken = []
        while len(taken) < 5:
            taken += await feed.take(timeout=5.0)
        time.sleep(0.5)  # busy: a blocking close; the outstanding request expires meanwhile
        for m in taken:
            await m.ack()
        later = [await publish_batch(js, raw_subject(SITE, "a"), signed("a", 5 + i, [])) for i in range(40)]
        more = []
        while len(more) < 40:
            got = await feed.take(timeout=5.0)
            assert got, "the feed stopped delivering"
            more += got
            for m in got:
                await m.ack()
        await feed.stop()
        await nc.close()
        return seqs, later, taken, more, feed.requests

    seqs, later, taken, more, requests = asyncio.run(main())
    assert [m.metadata.sequence.stream for m in taken] == seqs
    assert [m.metadata.sequence.stream for m in more] == later  # 40 > the batch of 16: several requests
    assert requests >= 3


# -- early close: computed when the rows are in, published when due ---------------------------

REPO = Path(__file__).resolve().parents[1]
T_START = 1_790_000_000.0


@functools.cache
def site_ticks(seconds: float = 14.0, scale: float = 0.5) -> tuple[object, list[list[tuple[str, bytes, float]]]]:
    """static-open's twin traffic as 0.25 s publisher ticks: (subject, body, receive time)."""
    from tagtwin.loadgen import PublisherSpec, Schedule, TickBuilder
    from tagtwin.loadtest import site_traffic
    from twin.scenario import load_scenario

    sc = load_scenario(REPO / "scenarios" / "static-open.toml")
    tr = site_traffic(sc, "early", 0, 12.0)
    b = TickBuilder(PublisherSpec(0, "", "nats", [tr], Schedule(scale, seconds), T_START, 0.25, wire=2))
    ticks = [[(subj, body, T_START + (k + 1) * 0.25) for subj, _, body, _ in b.build(k * 0.25, (k + 1) * 0.25, scale)]
             for k in range(int(seconds / 0.25))]
    return (sc, tr), ticks


def site_core(early: bool):
    from live_bridge.worker import WorkerSettings
    from tagtwin.live import site_engine_config
    from tagtwin.worker import site_worker_core

    (sc, tr), _ = site_ticks()
    return site_worker_core(sc, site_engine_config(sc), tr.keys, WorkerSettings(site="early", early_close=early))


def first_out(outputs: list[list[tuple[str, bytes]]]) -> list[set[tuple[str, float]]]:
    """Per tick, the (device, window end) positions published for the first time."""
    seen: set[tuple[str, float]] = set()
    out = []
    for tick in outputs:
        new = {(p["dev"], p["t"]) for subj, body in tick if subj.endswith(".positions")
               for p in json.loads(body)["positions"]} - seen
        seen |= new
        out.append(new)
    return out


def run_ticks(w, ticks, seq0: int = 0) -> list[list[tuple[str, bytes]]]:
    outs, seq = [], seq0
    for tick in ticks:
        for subject, body, received in tick:
            seq += 1
            w.handle(subject, body, seq, received)
        outs.append(w.release_due(tick[-1][2]) + w.tick(tick[-1][2]))  # as the worker loop calls them
    return outs


def test_early_close_publishes_the_same_outputs_at_the_same_ticks():
    """Computing a window when its rows are in and publishing it when due changes neither
    what is published nor when: per tick the same new positions, and the same positions
    and rule events in the end."""
    from live_bridge.faults import latest_events, latest_positions

    _, ticks = site_ticks()
    early, late = site_core(True), site_core(False)
    e_out, l_out = run_ticks(early, ticks), run_ticks(late, ticks)
    assert early.windows.closed_through > late.windows.closed_through  # computed ahead ...
    assert early.held  # ... and held
    assert first_out(e_out) == first_out(l_out)  # published at the same ticks
    e_out.append(early.tick(ticks[-1][-1][2], final=True))
    l_out.append(late.tick(ticks[-1][-1][2], final=True))
    payloads = {name: [(s, b) for tick in outs for s, b in tick] for name, outs in (("e", e_out), ("l", l_out))}
    pos = {n: latest_positions(b for s, b in p if s.endswith(".positions"))[0] for n, p in payloads.items()}
    ev = {n: latest_events(b for s, b in p if s.endswith(".events"))[0] for n, p in payloads.items()}
    assert len(pos["l"]) > 1000 and pos["e"] == pos["l"]
    assert ev["e"] == ev["l"] and ev["l"]


def test_a_checkpoint_with_held_windows_publishes_them_after_a_restore():
    """A crash after a checkpoint taken while windows were computed but held: the restored
    worker publishes them (nothing lost), and ends with the same positions and events."""
    from live_bridge.faults import latest_events, latest_positions

    _, ticks = site_ticks()
    cut = 30
    a = site_core(True)
    before = run_ticks(a, ticks[:cut])
    assert a.held and a.windows.closed_through > a.released_through
    blob = a.checkpoint()  # then the worker dies: its held windows never went out
    log = [(s, b, i + 1, r) for i, (s, b, r) in enumerate(x for tick in ticks[:cut] for x in tick)]
    b = site_core(True)
    b.restore(blob)
    rb = b.begin_history()
    assert rb is not None
    for subject, body, seq, received in log:
        if seq >= b.history_from:
            b.read_back(rb, subject, body, seq, received)
    b.end_read_back(rb, ticks[cut - 1][-1][2])
    after = run_ticks(b, ticks[cut:], seq0=len(log))
    after.append(b.tick(ticks[-1][-1][2], final=True))
    ref = site_core(False)
    r_out = run_ticks(ref, ticks)
    r_out.append(ref.tick(ticks[-1][-1][2], final=True))
    got = [(s, p) for tick in before + after for s, p in tick]
    want = [(s, p) for tick in r_out for s, p in tick]
    got_pos = latest_positions(p for s, p in got if s.endswith(".positions"))[0]
    want_pos = latest_positions(p for s, p in want if s.endswith(".positions"))[0]
    assert set(got_pos) == set(want_pos)  # every window's positions, the held ones included
    assert got_pos == want_pos
    assert latest_events(p for s, p in got if s.endswith(".events"))[0] == \
        latest_events(p for s, p in want if s.endswith(".events"))[0]


def test_a_backlog_of_windows_is_computed_in_one_pass_equal_to_one_by_one():
    """A worker that is behind (many seconds of batches handled, no tick between) computes
    every window they close in one tick, and publishes what a worker ticking after every
    batch publishes: the same latest positions and rule events. The rules are stepped
    through the backlog with their buffers sorted once per run of windows, not once a
    window (a run of k windows used to sort up to k windows' rows k times)."""
    from live_bridge.faults import latest_events, latest_positions

    _, ticks = site_ticks()
    steady, behind = site_core(True), site_core(True)
    s_out = run_ticks(steady, ticks)
    s_out.append(steady.tick(ticks[-1][-1][2], final=True))
    cut = 24  # the first ticks as usual, then a backlog of the rest in one go
    b_out = run_ticks(behind, ticks[:cut])
    before = behind.windows.closed_through
    calls = []
    step_until = behind.windows.feeder.step_until

    def counted(t, **kw):
        calls.append(t)
        return step_until(t, **kw)

    behind.windows.feeder.step_until = counted
    seq = sum(len(t) for t in ticks[:cut])
    for tick in ticks[cut:]:
        for subject, body, received in tick:
            seq += 1
            behind.handle(subject, body, seq, received)
    b_out.append(behind.release_due(ticks[-1][-1][2]) + behind.tick(ticks[-1][-1][2]))
    assert before is not None
    caught_up = behind.windows.closed_through - before
    assert caught_up >= 8  # many windows in one tick ...
    assert len(calls) <= -(-caught_up // 16) + 1  # ... the rules stepped once per run of 16
    behind.windows.feeder.step_until = step_until
    b_out.append(behind.tick(ticks[-1][-1][2], final=True))
    flat = {n: [(s, b) for tick in outs for s, b in tick] for n, outs in (("s", s_out), ("b", b_out))}
    pos = {n: latest_positions(b for s, b in p if s.endswith(".positions"))[0] for n, p in flat.items()}
    ev = {n: latest_events(b for s, b in p if s.endswith(".events"))[0] for n, p in flat.items()}
    assert len(pos["s"]) > 1000 and pos["b"] == pos["s"]
    assert ev["s"] and ev["b"] == ev["s"]


def test_a_worker_behind_judges_idle_gateways_on_the_stream_clock():
    """While the stream still holds messages behind the newest one handled (or holds delivery
    back for acks), a pause in delivery is not a silent site: the loop's clock stays on the
    stream's receive times and no window is closed ahead of the data. On the wall clock
    the same pause closed windows up to half the horizon past the newest sighting, and
    every later batch reran them (the cold-start backlog that never cleared)."""
    _, ticks = site_ticks()
    w = site_core(True)
    seq = 0
    for tick in ticks[:24]:
        for subject, body, received in tick:
            seq += 1
            w.handle(subject, body, seq, received, pending=500)  # far behind the stream
        w.tick(tick[-1][2])
    newest = w.latest_received
    wall = newest + 40.0  # delivery paused (a commit holding acks), the wall clock ran on
    assert w.loop_clock(wall, got_input=False) == newest
    assert w.loop_clock(wall, got_input=False, held_back=True) == newest
    w.tick(w.loop_clock(wall, got_input=False))
    assert w.windows.closed_through * w.config.step_s <= newest + w.config.allowed_lateness_s
    ahead = site_core(True)  # the old judgement: the wall clock
    seq = 0
    for tick in ticks[:24]:
        for subject, body, received in tick:
            seq += 1
            ahead.handle(subject, body, seq, received)
        ahead.tick(tick[-1][2])
    ahead.tick(wall)
    assert ahead.windows.closed_through * ahead.config.step_s > newest + 20.0
    subject, body, received = ticks[24][0]
    w.handle(subject, body, seq + 1, received, pending=0)  # caught up: a real silence runs on the wall clock
    assert w.loop_clock(wall, got_input=False) == wall


def _run_static_open(defer: bool) -> tuple[list[str], list[str], list[str]]:
    """static-open's cold start (1,200 tag copies, 9 s) through a worker core ticked as
    run_worker does, one gateway's batches of 4-5 s held back and delivered 2 s late (its
    windows rerun, tracker and rules from the saved state): positions and event records,
    order-free, and the checkpoints."""
    from live_bridge.worker import WorkerSettings
    from tagtwin.live import site_engine_config
    from tagtwin.loadgen import PublisherSpec, Schedule, TickBuilder
    from tagtwin.loadtest import site_traffic
    from tagtwin.worker import site_worker_core
    from twin.scenario import load_scenario

    sc = load_scenario(Path(__file__).resolve().parents[1] / "scenarios" / "static-open.toml")
    tr = site_traffic(sc, "d", 0, 12.0)
    t0 = 1_790_000_000.1
    b = TickBuilder(PublisherSpec(0, "", "nats", [tr], Schedule(3.0, 9.0), t0, 0.25, wire=2))
    w = site_worker_core(sc, site_engine_config(sc), tr.keys, WorkerSettings(site="d", registered_copies=3))
    w.defer_event_messages = True
    w.defer_rules = defer
    positions: list[str] = []
    events: list[str] = []
    checkpoints: list[str] = []

    def eat(out: list[tuple[str, bytes]]) -> None:
        for _, body in out:
            d = json.loads(body)
            positions.extend(json.dumps(p, sort_keys=True) for p in d.get("positions", []))
            events.extend(json.dumps(e, sort_keys=True) for e in d.get("events", []))

    late_gw: str | None = None
    held: list[tuple[str, bytes]] = []
    seq = 0
    for k in range(36):
        recv = t0 + (k + 1) * 0.25
        batch = [(gw, body) for _, gw, body, _ in b.build(k * 0.25, (k + 1) * 0.25, 3.0)]
        late_gw = late_gw or batch[0][0]
        if 16 <= k < 20:
            held += [x for x in batch if x[0] == late_gw]
            batch = [x for x in batch if x[0] != late_gw]
        if k == 27:
            batch += held
        for gw, body in batch:
            seq += 1
            eat(w.handle(raw_subject("d", gw), body, seq, recv))
            if defer:
                eat(w.release_due(recv) + w.event_messages())
        eat(w.release_due(recv) + w.event_messages())
        if defer:
            eat(w.finish_rules(recv) + w.event_messages())
        eat(w.tick(recv) + w.event_messages())
        if k % 8 == 7:
            if defer:
                eat(w.finish_rules(recv, force=True) + w.event_messages())
            checkpoints.append(w.checkpoint().decode())
    eat(w.tick(t0 + 40, final=True) + w.finish_rules(t0 + 40, force=True) + w.event_messages())
    checkpoints.append(w.checkpoint().decode())
    return sorted(positions), sorted(events), checkpoints


def test_rule_steps_run_after_their_positions_decide_the_same_outputs():
    """run_worker defers each window's rule step until its positions went out
    (WorkerCore.defer_rules, finish_rules): the same positions, rule events (a revision
    among them) and checkpoints as the rules run in the close."""
    plain = _run_static_open(False)
    deferred = _run_static_open(True)
    assert len(plain[0]) > 10_000 and len(plain[1]) >= 1_200
    assert plain == deferred


def test_checkpoints_come_at_the_interval_after_closes_not_at_twice_it():
    """CheckpointSchedule alone, on static-open's traffic through a worker core ticked as
    run_worker ticks it (early close and deferred rule steps, so the next window's rule
    steps are pending at every close): once the interval (1 s, one step) is up, the next
    close takes a checkpoint. This drives the schedule, not run_worker's own condition
    around it: test_run_worker_checkpoints_at_about_every_close_on_live_traffic does."""
    from live_bridge.worker import CheckpointSchedule

    _, ticks = site_ticks(10.0)
    w = site_core(True)
    w.defer_event_messages = True
    w.defer_rules = True
    s = w.settings
    schedule = CheckpointSchedule(s.checkpoint_every_s, w.config.step_s, s.max_ack_pending, T_START)
    closes, taken, unacked, seq = [], [], 0, 0
    for tick in ticks:
        now = tick[-1][2]
        positions = w.counters["positions"]
        for subject, body, received in tick:
            seq += 1
            unacked += 1
            w.handle(subject, body, seq, received)
            w.release_due(now)
        w.release_due(now)
        w.event_messages()
        w.finish_rules(now)
        w.tick(now)
        w.event_messages()
        closed = w.counters["positions"] > positions
        closes += [now] * closed
        if schedule.due(now, closed=closed, unacked=unacked):
            w.finish_rules(now, force=True)  # as the loop does before a checkpoint
            w.event_messages()
            w.checkpoint()
            schedule.taken(now)
            taken.append(now)
            unacked = 0
    assert len(closes) >= 6 and max(np.diff(closes)) <= w.config.step_s + 1e-6
    assert set(closes) <= set(taken)  # the interval is a step: every close
    after_first_close = taken[taken.index(closes[0]):]  # (before it: the overdue path, 2 s)
    assert max(np.diff(after_first_close)) <= s.checkpoint_every_s + 1e-6


@pytest.mark.integration
def test_run_worker_checkpoints_at_about_every_close_on_live_traffic(backbone):
    """The real loop (run_worker on a real nats-server) fed static-open's traffic as it
    happens, for 12 s: with early close the next window's rule steps are pending at every
    close, and a checkpoint still follows nearly every close (interval 1 s = one step).
    The rule before (a checkpoint after a close only with no rule step pending) left them
    all to the overdue path: one per two closes. Counted by the loop's own clock
    (loop_ms.checkpoints, loop_ms.closes in its status)."""
    from live_bridge.worker import WorkerSettings
    from tagtwin.live import site_engine_config
    from tagtwin.loadgen import PublisherSpec, Schedule, TickBuilder
    from tagtwin.worker import site_worker_core

    (sc, tr), _ = site_ticks()
    seconds, tick_s = 12.0, 0.25
    settings = WorkerSettings(site="early", early_close=True, status_every_s=0.5)
    w = site_worker_core(sc, site_engine_config(sc), tr.keys, settings)
    loops: list[dict] = []

    async def main() -> None:
        nc = await connect(backbone.url, name="worker")
        pub = await connect(backbone.url, name="pub")
        js = pub.jetstream()
        await ensure_streams(js, "early")
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_worker(w, nc, stop, ready=ready, on_status=lambda s: loops.append(s["loop_ms"])))
        await ready.wait()
        t0 = time.time()
        b = TickBuilder(PublisherSpec(0, "", "nats", [tr], Schedule(0.5, seconds), t0, tick_s, wire=2))
        for k in range(int(seconds / tick_s)):
            await asyncio.sleep(max(0.0, t0 + (k + 1) * tick_s - time.time()))
            for subj, _, body, _ in b.build(k * tick_s, (k + 1) * tick_s, 0.5):
                await publish_batch(js, subj, body, timeout=30)
        stop.set()
        await task
        await nc.close()
        await pub.close()

    asyncio.run(main())
    closes = sum(int(x["closes"]) for x in loops)
    checkpoints = sum(int(x["checkpoints"]) for x in loops)
    assert closes >= 8, loops
    assert checkpoints >= 0.7 * closes, (closes, checkpoints)  # the rule before: about 0.5
