"""Rule events and trackers on the backbone (engine/timeline.py, live_bridge/worker.py).

The demo site (Kalman tracker, zone hysteresis, its rules) as its gateways would send a
short twin run: the worker's positions equal the in-process engine's for the same
traffic; a link cut whose spools replay late, and a worker crash between publishing and
checkpointing in the middle of it, end with the same latest revision of every position and
of every rule event as the fault-free run. Then the events subject on a real nats-server.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.contract import UNKNOWN, IdTable, copy_id, sightings_from_columns
from engine.pipeline import Engine
from live_bridge.backbone import connect, mqtt_topic, out_subject, publish_batch, raw_subject
from live_bridge.faults import latest_events, latest_positions
from live_bridge.server import positions_payload
from live_bridge.wire import verify_signed
from live_bridge.worker import WorkerCore, WorkerSettings, run_worker
from tagtwin.live import site_engine_config
from tagtwin.twin_publish import run_windows
from tagtwin.worker import site_worker_core
from tests import test_backbone
from tests.test_backbone import mqtt_dashboard
from twin.run import registry_ids
from twin.scenario import load_scenario
from twin.sim import WarehouseTwin

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_790_000_000.0
SITE = "demo"
Message = tuple[str, bytes, float]  # subject, signed body, stream receive time


@functools.cache
def demo(seconds: float = 24.0):
    sc = load_scenario(ROOT / "scenarios" / "demo.toml")
    sc = sc.model_copy(update={"duration_s": seconds})
    result = WarehouseTwin(sc).run()
    cfg = site_engine_config(sc)
    keys = {g: bytes(range(32)) for g in cfg.gateways.ids}
    windows = [(T0 + end, batches) for end, batches in run_windows(result, keys, T0, 0.5)]
    return sc, cfg, keys, windows


def make_core(horizon_s: float = 120.0) -> WorkerCore:
    sc, cfg, keys, _ = demo()
    return site_worker_core(sc, cfg, keys, WorkerSettings(site=SITE, horizon_s=horizon_s))


def gateway(topic: str) -> str:
    return topic.split("/")[-2]  # tagtwin/gw/<gateway>/batch


def fault_free() -> Iterator[tuple[float, list[tuple[str, bytes]]]]:
    yield from demo()[3]


def link_cut(cut_from: float = 6.0, cut_to: float = 16.0,
             per_tick: int | None = None) -> Iterator[tuple[float, list[tuple[str, bytes]]]]:
    """Half the gateways' batches of (cut_from, cut_to] held in their spools, then replayed:
    all at once, or ``per_tick`` batches a tick, oldest first, as a real spool drains (each
    tick's late data then revises from a later window than the last)."""
    _, cfg, _, windows = demo()
    cut = set(cfg.gateways.ids[: len(cfg.gateways.ids) // 2])
    held: list[tuple[str, bytes]] = []
    for end, batches in windows:
        keep: list[tuple[str, bytes]] = []
        for topic, body in batches:
            (held if gateway(topic) in cut and cut_from < end - T0 <= cut_to else keep).append((topic, body))
        if end - T0 > cut_to and held:
            n = len(held) if per_tick is None else per_tick
            keep, held = held[:n] + keep, held[n:]
        yield end, keep
    assert not held, "the demo ended before the spools drained"


def staggered_link_cut() -> Iterator[tuple[float, list[tuple[str, bytes]]]]:
    return link_cut(per_tick=10)


def messages(order: Callable[[], Iterator[tuple[float, list[tuple[str, bytes]]]]]) -> list[list[Message]]:
    """Per receive tick, the messages the stream stored then."""
    return [[(raw_subject(SITE, gateway(t)), body, end) for t, body in batches] for end, batches in order()]


def run(core: WorkerCore, ticks: list[list[Message]], first_seq: int = 1) -> list[tuple[str, bytes]]:
    """Handle every message (stream sequences from ``first_seq``), tick after each receive time."""
    out: list[tuple[str, bytes]] = []
    seq = first_seq
    for tick in ticks:
        for subject, body, received in tick:
            out += core.handle(subject, body, seq, received)
            seq += 1
        if tick:
            out += core.tick(tick[-1][2])
    return out


def events_of(out: list[tuple[str, bytes]]) -> tuple[dict[str, object], int]:
    """Latest revision of every rule event (live_bridge.faults.latest_events), and how many
    records revised or retracted one."""
    return latest_events(p for s, p in out if s.endswith(".events"))


def positions(out: list[tuple[str, bytes]]) -> tuple[dict, int]:
    return latest_positions(p for s, p in out if s.endswith(".positions"))


@functools.cache
def reference() -> tuple[dict, dict]:
    core = make_core()
    out = run(core, messages(fault_free))
    out += core.tick(time.time(), final=True)
    return positions(out)[0], events_of(out)[0]


def in_process_positions(device_ids: list[str]) -> dict:
    """The same decoded sightings through one in-process Engine (times from 0, as a twin run)."""
    _, cfg, keys, windows = demo()
    code = {d: i for i, d in enumerate(device_ids)}
    parts = []
    for _, batches in windows:
        for topic, body in batches:
            ads = verify_signed(body, gateway(topic), keys[gateway(topic)]).ads
            parts.append(sightings_from_columns(
                t=np.array([a.t for a in ads]) - T0, gateway=cfg.gateways.ids.index(gateway(topic)),
                device=np.array([code[a.dev] for a in ads], np.int32),
                rssi=np.array([a.rssi for a in ads], np.float32), channel=np.array([a.ch for a in ads], np.uint8),
                battery=np.array([UNKNOWN if a.bat is None else a.bat for a in ads], np.int8),
                motion=np.array([UNKNOWN if a.mot is None else a.mot for a in ads], np.int8),
                seq=np.array([UNKNOWN if a.seq is None else a.seq for a in ads], np.int32)))
    rows = np.concatenate(parts)
    engine = Engine(cfg)
    engine.ingest(rows[np.argsort(rows["t"], kind="stable")])
    fixes = np.concatenate([engine.advance(), engine.flush(float(rows["t"].max()) + 10.0)])
    return latest_positions([positions_payload(fixes, IdTable(device_ids), cfg.zones.names, T0, 0.0)])[0]


def test_demo_positions_on_the_backbone_equal_the_in_process_engine():
    sc, cfg, _, _ = demo()
    assert cfg.tracker == "kalman" and cfg.zone_hysteresis  # what the old backbone refused to run
    core = make_core()
    out = run(core, messages(fault_free))
    out += core.tick(time.time(), final=True)
    live, revised = positions(out)
    assert len(live) > 3000 and revised == 0
    assert live == in_process_positions(list(core.devices.ids))
    events, _ = events_of(out)
    assert {e["rule"] for e in events.values()} >= {"zone_enter"}  # type: ignore[index]
    assert core.devices.ids[: len(sc.tags[0].name)]  # the fleet first: codes match the rules' registry


def test_late_spool_replay_revises_tracked_positions_and_events_to_the_fault_free_answer():
    want_positions, want_events = reference()
    core = make_core()
    out = run(core, messages(link_cut))
    out += core.tick(time.time(), final=True)
    live, revised = positions(out)
    events, revisions = events_of(out)
    assert revised > 100  # the tracker's later windows were revised too, not only the late ones
    assert revisions > 0
    assert live == want_positions
    assert events == want_events


def test_a_spool_draining_over_many_ticks_revises_to_the_fault_free_answer():
    """Each tick's late batches start the re-run at a later window than the tick before, so
    a saved state from an earlier pass over the same windows (decided without the replayed
    data) must never be the one a re-run restores."""
    want_positions, want_events = reference()
    core = make_core()
    out = run(core, messages(staggered_link_cut))
    out += core.tick(time.time(), final=True)
    live, revised = positions(out)
    events, _ = events_of(out)
    assert revised > 100
    assert live == want_positions
    assert events == want_events


@pytest.mark.parametrize("early", [False, True])
def test_late_rows_in_the_first_chunk_rerun_from_the_first_window(early):
    """A worker that starts behind closes its first windows in one chunk (one state saved,
    after the last); a late batch for a window inside that chunk reruns from the initial
    state, which is the state before the *first* window (it used to restart at the late
    window from the initial state: the tracker's positions went wrong from there)."""
    want_positions, want_events = reference()
    ticks = messages(fault_free)
    first = [m for tick in ticks[:16] for m in tick]  # 8 s of batches in one go
    late = next(i for i, m in enumerate(first) if m[2] - T0 > 5.0)  # one gateway's batch of ~5 s
    held = first.pop(late)
    core = site_worker_core(*demo()[:3], WorkerSettings(site=SITE, early_close=early))
    out = run(core, [first, [held], *ticks[16:]])
    out += core.tick(time.time(), final=True)
    assert positions(out)[0] == want_positions
    assert events_of(out)[0] == want_events


def test_a_crash_between_publishing_and_checkpointing_leaves_no_phantom_event():
    """Checkpoint during the cut; the worker publishes more windows and events from the
    partial data, then dies before its next checkpoint. The restarted worker works the
    rest off as one backlog (one fetch, one tick), so it never decides those partial events
    again: it reads them back (recall_events, what run_worker does from the output stream
    after the checkpoint's sequence) and retracts or corrects them."""
    want_positions, want_events = reference()
    ticks = messages(link_cut)
    at = next(i for i, tick in enumerate(ticks) if tick and tick[0][2] - T0 > 8.0)
    crash = next(i for i, tick in enumerate(ticks) if tick and tick[0][2] - T0 > 16.0)
    first = make_core()
    consumer = run(first, ticks[:at])
    blob = first.checkpoint()
    seq = 1 + sum(len(t) for t in ticks[:at])
    after = run(first, ticks[at:crash], seq)  # published, then the crash
    consumer += after
    second = make_core()
    second.restore(blob)
    rb = second.begin_history()  # the held rows, read back from the raw log (run_worker does)
    assert rb is not None
    stored = [m for tick in ticks for m in tick]
    for i, (subject, body, received) in enumerate(stored[second.history_from - 1: rb.through_seq]):
        second.read_back(rb, subject, body, second.history_from + i, received)
    second.end_read_back(rb, time.time())
    for subject, payload in after:
        if subject.endswith(".events"):
            second.recall_events(payload)
    backlog = [[m for tick in ticks[at:] for m in tick]]
    consumer += run(second, backlog, seq)
    consumer += second.tick(time.time(), final=True)
    assert positions(consumer)[0] == want_positions
    assert events_of(consumer)[0] == want_events


nats_server = test_backbone.nats_server  # fixture: a real nats-server on free loopback ports


async def _collect(into: list, msg) -> None:
    into.append(json.loads(msg.data))


@pytest.mark.integration
def test_rule_events_on_their_subject_and_over_mqtt(nats_server):
    """The worker on a real stream publishes rule events on tagtwin.v1.<site>.events, stored
    in the output stream; an MQTT dashboard reads them on tagtwin/v1/<site>/events."""
    async def main() -> list[dict]:
        core = make_core()
        nc = await connect(nats_server.url, name="worker")
        pub = await connect(nats_server.url, name="pub")
        js = pub.jetstream()
        events: list[dict] = []
        await pub.subscribe(out_subject(SITE, "events"), cb=functools.partial(_collect, events))
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_worker(core, nc, stop, ready=ready))
        await ready.wait()
        for tick in messages(fault_free)[:24]:
            for subject, body, _ in tick:
                await publish_batch(js, subject, body)
        deadline = time.monotonic() + 60
        while not events:
            assert time.monotonic() < deadline, "no rule events from the worker"
            await asyncio.sleep(0.05)
        stop.set()
        await task
        await nc.close()
        await pub.close()
        return events

    with mqtt_dashboard(nats_server, mqtt_topic(out_subject(SITE, "events"))) as got:
        events = asyncio.run(main())
        records = [e for msg in events for e in msg["events"]]
        assert records and all({"key", "window", "rev", "event"} <= set(r) for r in records)
        assert json.loads(got.get(timeout=10))["events"][0]["key"] == records[0]["key"]


def test_a_checkpoint_state_loads_arrays_and_rule_state_only():
    """The saved state is a pickle: it loads numpy arrays, generators and the rules' own
    classes, and refuses anything else (a checkpoint bucket writer cannot run code)."""
    import os
    import pickle

    from engine.timeline import load_state_pickle, load_states

    core = make_core()
    run(core, messages(fault_free)[:12])
    meta, blob = core.windows.snapshot_timeline()
    states = load_states(blob)  # the oldest saved state and the one the rows held start from
    assert isinstance(states, list) and len(states) == len(meta["state_windows"]) >= 1  # type: ignore[arg-type]
    state = states[-1]
    assert isinstance(state, tuple)
    assert "tracker" in state[0] and state[1] is not None
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        load_state_pickle(pickle.dumps(os.system))


# -- a silent site: every gateway down ------------------------------------------------------

OUTAGE = (66.0, 88.0)  # every gateway's batches of this span held in its spool; > silent_s, after warmup


def silent_site(cut: tuple[float, float] | None) -> list[tuple[float, list[Message]]]:
    """Per receive tick of a 90 s demo run, its time and the messages stored then: during
    ``cut`` none (the spools hold them), then all of them at once with the next tick."""
    _, _, _, windows = demo(90.0)
    out: list[tuple[float, list[Message]]] = []
    held: list[Message] = []
    for end, batches in windows:
        msgs = [(raw_subject(SITE, gateway(t)), body, end) for t, body in batches]
        if cut is not None and cut[0] < end - T0 <= cut[1]:
            held += msgs
            msgs = []
        elif held:
            msgs, held = [(s, b, end) for s, b, _ in held] + msgs, []
        out.append((end, msgs))
    return out


def run_clocked(core: WorkerCore, ticks: list[tuple[float, list[Message]]],
                first_seq: int = 1) -> list[list[tuple[str, bytes]]]:
    """Handle each tick's messages and tick at its receive time, messages or not (the
    worker's loop ticks on the wall clock while nothing arrives); the outputs per tick."""
    per_tick = []
    seq = first_seq
    for now, msgs in ticks:
        out = []
        for subject, body, received in msgs:
            out += core.handle(subject, body, seq, received)
            seq += 1
        per_tick.append(out + core.tick(now))
    return per_tick


def silent_core() -> WorkerCore:
    sc, cfg, keys, _ = demo(90.0)
    return site_worker_core(sc, cfg, keys, WorkerSettings(site=SITE, horizon_s=120.0))


@functools.cache
def silent_reference() -> list[tuple[str, bytes]]:
    """The fault-free 90 s run's outputs, ticked at the same receive times."""
    core = silent_core()
    out = [m for tick in run_clocked(core, silent_site(None)) for m in tick]
    return out + core.tick(time.time(), final=True)


def test_a_silent_site_gets_its_alarms_during_the_outage_and_the_replay_retracts_them():
    """Every gateway goes quiet for 22 s (longer than gateway_silent's 10 s): the rules'
    clock runs on the receive clock, so gateway_silent is published during the silence.
    The spools then replay the silent period: the timeline re-runs those windows from the
    state before them, retracts the alarms the data contradicts, and the latest revision
    of every event and position equals the fault-free run's."""
    _, cfg, _, _ = demo(90.0)
    ref = silent_reference()
    want_events, _ = events_of(ref)
    assert not any(str(k).startswith("gateway_silent/") for k in want_events)  # the gateways were alive

    core = silent_core()
    per_tick = run_clocked(core, silent_site(OUTAGE))
    during = [m for (now, _), out in zip(silent_site(OUTAGE), per_tick, strict=True)
              if OUTAGE[0] < now - T0 <= OUTAGE[1] for m in out]
    alarms = [e for s, p in during if s.endswith(".events") for e in json.loads(p)["events"]
              if e["key"].startswith("gateway_silent/")]
    assert {a["event"]["gateway"] for a in alarms} == set(cfg.gateways.ids)  # every gateway, during the outage
    assert all(OUTAGE[0] < a["window"] - T0 <= OUTAGE[1] for a in alarms)
    out = [m for tick in per_tick for m in tick] + core.tick(time.time(), final=True)
    events, revisions = events_of(out)
    retracted = {e["key"] for s, p in out if s.endswith(".events") for e in json.loads(p)["events"]
                 if e.get("retracted")}
    assert {a["key"] for a in alarms} <= retracted and revisions > 0
    assert events == want_events
    assert positions(out)[0] == positions(ref)[0]
    # Deterministic: the same stream and the same tick times give the same bytes. The site
    # watermark itself did not move on the idle clock (only the rules' windows did).
    again, ticks = silent_core(), silent_site(OUTAGE)
    ends = sum(now - T0 <= OUTAGE[1] for now, _ in ticks)
    first = run_clocked(again, ticks[:ends])
    assert again.marks.mark - T0 <= OUTAGE[0] + 1.0
    assert again.windows.closed_through * cfg.step_s - T0 > OUTAGE[1] - 10.0
    assert first + run_clocked(again, ticks[ends:], 1 + sum(len(m) for _, m in ticks[:ends])) == per_tick


def test_the_idle_clock_runs_at_most_half_the_horizon_past_the_newest_sighting():
    """A wall clock far from the stream's event times (a replay of old data, a test) moves
    the rules at most ``idle_rules_reach_s`` (default: half the horizon) past the newest
    sighting, so the silent period's replay can still be placed and revise it."""
    core = silent_core()
    run_clocked(core, silent_site(None)[:40])
    newest = max(core.marks.event.values())
    core.tick(newest + 30 * 86400.0)
    assert core.windows.closed_through is not None
    closed_t = core.windows.closed_through * core.config.step_s
    assert newest + 50.0 <= closed_t <= newest + 60.0


def test_a_worker_restarted_during_a_silent_site_retracts_the_alarms_it_inherited():
    """The worker checkpoints mid-outage (after the alarms went out), a new worker restores
    it, reads its rows back from the raw log and goes on: the replay retracts the
    inherited alarms and the latest revision is the fault-free run's."""
    ref = silent_reference()
    ticks = silent_site(OUTAGE)
    at = sum(now - T0 <= OUTAGE[1] - 1.0 for now, _ in ticks)
    first = silent_core()
    consumer = [m for tick in run_clocked(first, ticks[:at]) for m in tick]
    assert any(p for s, p in consumer if s.endswith(".events") and b"gateway_silent/" in p)
    blob = first.checkpoint()
    second = silent_core()
    second.restore(blob)
    rb = second.begin_history()
    assert rb is not None
    stored = [m for _, msgs in ticks[:at] for m in msgs]
    for i, (subject, body, received) in enumerate(stored[second.history_from - 1: rb.through_seq]):
        second.read_back(rb, subject, body, second.history_from + i, received)
    second.end_read_back(rb, ticks[at - 1][0])
    consumer += [m for tick in run_clocked(second, ticks[at:], 1 + len(stored)) for m in tick]
    consumer += second.tick(time.time(), final=True)
    assert events_of(consumer)[0] == events_of(ref)[0]
    assert positions(consumer)[0] == positions(ref)[0]


# -- late data beyond the rows horizon on a tracked site: the deep pass reruns from saved states --


def run_deep(core: WorkerCore, ticks: list[list[Message]], first_seq: int = 1,
             log: list[tuple[str, bytes, int, float]] | None = None) -> list[tuple[str, bytes]]:
    """As :func:`run`, and the deep passes run_worker does: once due, the raw batches are read
    back from the log (by receive time from ``deep_start_time``, through the pass's sequence)."""
    log = [] if log is None else log
    out: list[tuple[str, bytes]] = []
    seq = first_seq

    def deep(now: float) -> None:
        rb = core.deep_due(now)
        if rb is not None:
            start = core.deep_start_time(rb)
            for subject, body, s, received in log:
                if received >= start:
                    core.read_back(rb, subject, body, s, received)
            out.extend(core.end_read_back(rb, now))

    for tick in ticks:
        for subject, body, received in tick:
            log.append((subject, body, seq, received))
            out += core.handle(subject, body, seq, received)
            seq += 1
        if tick:
            out += core.tick(tick[-1][2])
            deep(tick[-1][2])
    deep(np.inf)
    return out


def deep_core(horizon_s: float = 5.0, **settings: object) -> WorkerCore:
    sc, cfg, keys, _ = demo()
    return site_worker_core(sc, cfg, keys, WorkerSettings(site=SITE, horizon_s=horizon_s, **settings))  # type: ignore[arg-type]


def test_a_link_cut_longer_than_the_rows_horizon_loses_nothing_and_revises_positions_and_events():
    """Half the demo's gateways cut for 10 s against a 5 s rows horizon (the tracked site used
    to dead-letter their spool replay as older than its horizon): the replay is placed by a
    deep pass that reads the rows back from the raw log, reruns the Kalman tracker, zone
    hysteresis and rules from the saved state before the first late window, and publishes
    the revisions. Nothing is dead-lettered; the latest positions and events are the
    fault-free run's."""
    want_positions, want_events = reference()
    core = deep_core()
    out = run_deep(core, messages(link_cut))
    out += core.tick(time.time(), final=True)
    assert core.counters["late beyond horizon: recomputed from stream"] > 500
    assert core.counters["deep recomputations"] >= 1
    assert not any(k.startswith(("dead", "rejected")) for k in core.counters), core.counters
    live, revised = positions(out)
    events, revisions = events_of(out)
    assert revised > 100 and revisions > 0
    assert live == want_positions
    assert events == want_events


def test_a_worker_restored_mid_replay_reruns_from_the_oldest_saved_state():
    """A checkpoint taken after the cut started and before the replay keeps the oldest saved
    state and the one the held rows start from; the restored worker's deep pass reruns from
    the oldest one (the states between are not in the checkpoint) and still ends at the
    fault-free answer."""
    want_positions, want_events = reference()
    ticks = messages(link_cut)
    at = next(i for i, tick in enumerate(ticks) if tick and tick[0][2] - T0 > 14.0)
    first = deep_core()
    log: list[tuple[str, bytes, int, float]] = []
    consumer = run_deep(first, ticks[:at], log=log)
    blob = first.checkpoint()
    meta = json.loads(blob)["timeline"]
    assert len(meta["state_windows"]) == 2 and meta["state_windows"][0] < meta["rows_state"]
    second = deep_core()
    second.restore(blob)
    rb = second.begin_history()
    assert rb is not None
    for subject, body, seq, received in log:
        if second.history_from <= seq:
            second.read_back(rb, subject, body, seq, received)
    second.end_read_back(rb, ticks[at - 1][-1][2])
    again = json.loads(second.checkpoint())["timeline"]  # a checkpoint before any close keeps both
    assert (again["state_windows"], again["rows_state"]) == (meta["state_windows"], meta["rows_state"])
    consumer += run_deep(second, ticks[at:], 1 + len(log), log=log)
    consumer += second.tick(time.time(), final=True)
    assert not any(k.startswith(("dead", "rejected")) for k in second.counters), second.counters
    assert positions(consumer)[0] == want_positions
    assert events_of(consumer)[0] == want_events


def test_rows_older_than_the_state_horizon_are_dead_lettered_with_that_reason():
    core = deep_core(horizon_s=2.0, state_horizon_s=4.0)
    out = run_deep(core, messages(link_cut))
    assert core.counters["dead_lettered: older than state horizon"] > 0
    assert any(s.endswith(".deadletter") and b"older than state horizon" in p for s, p in out)
    assert core.counters["late beyond horizon: recomputed from stream"] > 0  # the younger part still is


def test_a_stateless_site_with_rules_gets_its_events_revised_by_the_deep_pass():
    """The demo's site without a tracker or hysteresis (fixes per window) still runs rules,
    whose state carries: the deep pass reruns them too, so a cut longer than the rows
    horizon ends with the fault-free run's events, not only its positions."""
    import dataclasses

    sc, cfg, keys, _ = demo()
    plain = dataclasses.replace(cfg, tracker="none", zone_hysteresis=False)

    def stateless(horizon_s: float) -> WorkerCore:
        return site_worker_core(sc, plain, keys, WorkerSettings(site=SITE, horizon_s=horizon_s))

    ref_core = stateless(120.0)
    assert not ref_core.engine.stateful and ref_core.windows.runs_rules
    ref = run(ref_core, messages(fault_free)) + ref_core.tick(time.time(), final=True)
    core = stateless(5.0)
    out = run_deep(core, messages(link_cut)) + core.tick(time.time(), final=True)
    assert core.counters["deep recomputations"] >= 1
    assert not any(k.startswith(("dead", "rejected")) for k in core.counters), core.counters
    events, revisions = events_of(out)
    assert revisions > 0
    assert events == events_of(ref)[0]
    assert positions(out)[0] == positions(ref)[0]


def test_deferred_event_messages_are_the_messages_a_tick_returns():
    """The live loop sends a close's positions, then writes its events (defer_event_messages):
    the same messages in the same order as a tick that writes both."""
    ticks = messages(fault_free)
    plain = run(make_core(), ticks)
    core = make_core()
    core.defer_event_messages = True
    deferred: list[tuple[str, bytes]] = []
    seq = 1
    for tick in ticks:
        for subject, body, received in tick:
            deferred += core.handle(subject, body, seq, received)
            seq += 1
        if tick:
            deferred += core.release_due(tick[-1][2]) + core.event_messages()
            deferred += core.tick(tick[-1][2]) + core.event_messages()
    assert any(s.endswith(".events") for s, _ in plain)
    assert deferred == plain


def with_copies(copies: int, stranger: str) -> list[list[Message]]:
    """The demo's first 8 s as a load test sends it at scale ``copies`` (tagtwin/loadgen.py):
    every sighting once per copy id, plus one device no registry knows, in each batch."""
    from tagtwin.loadgen import encode_gateway_batch

    _, _, keys, windows = demo()
    ticks = []
    for end, batches in windows:
        if end - T0 > 8.0:
            break
        tick = []
        for topic, body in batches:
            gw = gateway(topic)
            b = verify_signed(body, gw, keys[gw])
            ads = [*b.ads, b.ads[0].model_copy(update={"dev": stranger})] if b.ads else []
            devs = [copy_id(a.dev, k) if a.dev != stranger else a.dev for k in range(copies) for a in ads]
            rows = [a for _ in range(copies) for a in ads]

            def col(f: str, default: float, dt: type, rows: list = rows) -> np.ndarray:
                return np.array([default if getattr(a, f) is None else getattr(a, f) for a in rows], dt)

            signed = encode_gateway_batch(
                gw, b.seq, b.ep, b.sent, col("t", 0, np.float64), devs, col("rssi", 0, np.float32),
                col("ch", 0, np.uint8), col("bat", -1, np.int8), col("mot", -1, np.int8), col("seq", -1, np.int64),
                keys[gw])
            tick.append((raw_subject(SITE, gw), signed, end))
        ticks.append(tick)
    return ticks


@pytest.mark.parametrize("registered", [1, 3])
def test_a_load_tests_tag_copies_are_registered_tags_and_a_stranger_still_alarms(registered):
    sc, cfg, keys, _ = demo()
    core = site_worker_core(sc, cfg, keys, WorkerSettings(site=SITE, registered_copies=registered))
    out = run(core, with_copies(3, "stranger-tag"))
    events: list[dict] = list(events_of(out)[0].values())  # type: ignore[arg-type]
    unknown = {str(e["tag"]) for e in events if e["rule"] == "unknown_tag"}
    copies = {d for d in unknown if "~" in d}
    assert "stranger-tag" in unknown
    if registered == 3:
        assert not copies, f"copies alarmed as unknown: {sorted(copies)[:5]}"
        ids, classes = registry_ids(sc, registered)  # copy k of fleet tag i: code k * fleet + i, its class
        fleet = len(ids) // registered
        assert ids[2 * fleet + 5] == copy_id(ids[5], 2) and classes[2 * fleet + 5] == classes[5]
        assert core.devices.ids[: len(ids)] == ids
        again = site_worker_core(sc, cfg, keys, WorkerSettings(site=SITE, registered_copies=registered))
        again.restore(core.checkpoint())  # the saved device table starts with the extended registry
        assert again.devices.ids == core.devices.ids
    else:  # the fleet only: every copy seen is an unknown tag
        assert len(copies) > 10
