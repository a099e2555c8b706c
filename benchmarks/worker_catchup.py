"""A worker that is behind: CPU per window when it catches up, against keeping up, in process.

The load test's traffic (static-open's twin, ``--scale`` copies of its 400 tags, 0.25 s
gateway batches, wire 2) through :class:`live_bridge.worker.WorkerCore` with the site's
rules, as the worker runs it (``handle`` per batch; ``release_due`` + ``tick`` after each
0.25 s tick). From ``--backlog-at`` seconds on, ``--backlog`` seconds of batches are
handled with no tick between (a worker behind its stream), then one tick computes every
window they close. Printed: CPU ms of a steady close (one window) and of the catch-up
close, per window; of each of the first 12 closes (after the worker's warm-up: a cold
start's first windows, where the rules decide an event for every tag), and what they cost
beyond steady closes per rule event (``burst``); the site registers the copies sent,
as ``tagtwin loadtest --rate`` does; the saved
timeline states (how many, packed or not, their bytes) and the checkpoint's size at the
end (as serialized, and compressed as the worker stores it). Timed with the process's
CPU clock, so the figures hold on a busy machine.
Also the process's resident memory every 10 s of traffic, with the rows held and the row
store's capacity: run past ``--horizon`` to see whether memory stays flat once the horizon
has filled (the row store reuses its buffer; a short horizon shows it in a short run).

    .venv/bin/python benchmarks/worker_catchup.py [--scale 18] [--seconds 40] [--backlog 12]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from _common import emit, peak_rss_mb

from engine.timeline import PackedState
from live_bridge.backbone import raw_subject
from live_bridge.worker import WorkerCore, WorkerSettings, warm_up
from tagtwin.live import site_engine_config
from tagtwin.loadgen import PublisherSpec, Schedule, TickBuilder
from tagtwin.loadtest import site_traffic
from tagtwin.worker import site_worker_core
from twin.scenario import load_scenario

REPO = Path(__file__).resolve().parents[1]
T0 = 1_790_000_000.0


def main(scale: float, seconds: float, backlog_at: float, backlog: float, horizon: float) -> dict[str, object]:
    sc = load_scenario(REPO / "scenarios" / "static-open.toml")
    tr = site_traffic(sc, "catchup", 0, 12.0)
    b = TickBuilder(PublisherSpec(0, "", "nats", [tr], Schedule(scale, seconds), T0, 0.25, wire=2))
    def make_core() -> WorkerCore:
        return site_worker_core(sc, site_engine_config(sc), tr.keys, WorkerSettings(
            site="catchup", horizon_s=horizon, registered_copies=b.spec.schedule.copies() or 1))

    warm_up(make_core())  # as the worker does before its first live close: kernels loaded
    core = make_core()
    cpu = time.process_time
    skip = range(int(backlog_at / 0.25), int((backlog_at + backlog) / 0.25))
    first: list[list[float]] = []
    first_events: list[int] = []  # rule events each of the first closes released
    seq, n, handle = 0, 0, 0.0
    steady: list[float] = []
    memory: list[list[float]] = []
    catch_up: list[tuple[int, float]] = []
    for k in range(int(seconds / 0.25)):
        recv = T0 + (k + 1) * 0.25
        items = b.build(k * 0.25, (k + 1) * 0.25, scale)
        n += sum(x[3] for x in items)
        t = cpu()
        for _, gw, body, _ in items:
            seq += 1
            core.handle(raw_subject("catchup", gw), body, seq, recv)
        handle += cpu() - t
        if k in skip:
            continue
        before = core.windows.closed_through
        events = core.counters["events"]
        t = cpu()
        core.release_due(recv)
        core.tick(recv)  # (with the events' messages: a live loop writes them right after)
        spent = cpu() - t
        done = (core.windows.closed_through or 0) - (before or 0) if before is not None else 0
        if done == 1 and len(first) < 12:
            first.append([(k + 1) * 0.25, round(spent * 1000)])
            first_events.append(core.counters["events"] - events)
        if (k + 1) % 40 == 0:  # every 10 s of traffic
            memory.append([(k + 1) * 0.25, round(rss_mb(), 1), len(core.windows.rows), len(core.windows._store)])
        if k >= int(8 / 0.25) and done == 1:  # past the first windows (the rules' zone-entry burst)
            steady.append(spent)
        elif done > 1:
            catch_up.append((done, spent))
    w = core.windows
    packed = [s for s in w.states.values() if isinstance(s, PackedState)]
    blob = core.checkpoint()
    per_window = [spent / done for done, spent in catch_up if done >= 4]
    # The cold start's burst (every tag enters its zone in the first windows): what the first
    # closes cost beyond a steady close, per rule event they decided and wrote.
    burst_events = sum(first_events)
    burst_extra = sum(ms for _, ms in first) - len(first) * float(np.median(steady)) * 1000 if steady else None
    return {
        "sightings_per_s": round(n / seconds), "tags": round(scale * len(tr.device_ids)),
        "handle_cpu_us_per_sighting": round(handle / n * 1e6, 2),
        "steady_close_cpu_ms": {"median": round(float(np.median(steady)) * 1000, 1),
                                "p90": round(float(np.percentile(steady, 90)) * 1000, 1), "closes": len(steady)},
        "first_closes [s, cpu ms]": first,
        "burst": {"events": burst_events, "extra_cpu_ms": None if burst_extra is None else round(burst_extra),
                  "cpu_us_per_event": None if burst_extra is None or not burst_events
                  else round(burst_extra / burst_events * 1000, 1)},
        "catch_up_closes": [{"windows": done, "cpu_ms": round(spent * 1000, 1),
                             "cpu_ms_per_window": round(spent / done * 1000, 1)} for done, spent in catch_up],
        "catch_up_over_steady_per_window": round(float(np.mean(per_window)) / float(np.median(steady)), 3)
        if per_window and steady else None,
        "saved_states": {"count": len(w.states), "packed": len(packed),
                         "packed_bytes": sum(len(p.blob) for p in packed)},
        "checkpoint_bytes": len(blob),
        "checkpoint_stored_bytes": len(zlib.compress(blob, 1)),  # as run_worker stores it
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "memory [s, rss MB, rows held, row store capacity]": memory,
    }


def loop(scale: float, seconds: float, per_message: bool, share: float = 1.0) -> dict[str, object]:
    """The worker's loop (live_bridge.worker.run_worker) replayed on one core of its own:
    batches arrive at their receive times; a virtual clock advances by the CPU each step
    takes (handle, release_due, the events' JSON, tick, checkpoint) and waits for input
    when idle; fetches of up to 64 messages. Close-to-position per window is the virtual
    time its positions were released minus its closing tick (as the load test measures it,
    without the network and the other processes). ``per_message``: release_due between the
    messages of a fetch and each window's rule step after its positions went out (the loop
    since this session), or only after the fetch, the rules in the close (before).
    ``share``: the part of a core the worker gets while busy (a live run's publishers,
    nats-server and controller share the machine's two cores): each step's wall time is
    its CPU / share."""
    import gc
    import json
    import math

    sc = load_scenario(REPO / "scenarios" / "static-open.toml")
    tr = site_traffic(sc, "loop", 0, 12.0)
    # Publisher ticks 0.1 s off the whole seconds the windows end on, as a live run's start
    # falls: a window is due with the tick that carries its end + allowed lateness (on the
    # whole second itself, that tick's rows all precede it and the next tick makes it due).
    t0 = T0 + 0.1
    b = TickBuilder(PublisherSpec(0, "", "nats", [tr], Schedule(scale, seconds), t0, 0.25, wire=2))
    config = site_engine_config(sc)

    def make_core() -> WorkerCore:
        return site_worker_core(sc, config, tr.keys, WorkerSettings(
            site="loop", registered_copies=b.spec.schedule.copies() or 1))

    items = [(t0 + (k + 1) * 0.25, raw_subject("loop", gw), body, n)
             for k in range(int(seconds / 0.25)) for _, gw, body, n in b.build(k * 0.25, (k + 1) * 0.25, scale)]
    arrivals = [(recv, subject, body) for recv, subject, body, _ in items]
    warm_up(make_core())
    core = make_core()
    core.defer_event_messages = True
    deferred = per_message and hasattr(core, "finish_rules")  # this session's loop: rule steps after positions
    core.defer_rules = deferred
    gc.collect()
    gc.freeze()  # as run_worker does
    cpu = time.process_time
    released: dict[float, float] = {}
    v = t0
    last_ckpt = v

    busy = 0.0

    def timed(f: object, *args: object) -> object:
        nonlocal v, busy
        t = cpu()
        out = f(*args)  # type: ignore[operator]
        v += (cpu() - t) / share
        busy += cpu() - t
        return out

    def note(out: object) -> None:
        for subject, body in out:  # type: ignore[attr-defined]
            if subject.endswith(".positions"):
                for p in json.loads(body)["positions"]:
                    released.setdefault(float(p["t"]), v)

    i = 0
    while i < len(arrivals):
        v = max(v, arrivals[i][0])  # idle until the next batch arrives
        arrived = i
        while arrived < len(arrivals) and arrivals[arrived][0] <= v:
            arrived += 1
        fetch = arrivals[i:min(arrived, i + 64)]
        before = core.counters["positions"]
        for j, (recv, subject, body) in enumerate(fetch, 1):
            timed(core.handle, subject, body, i + j, recv, arrived - i - j)
            if per_message and j < len(fetch) and (core.held or core.held_events):
                note(timed(core.release_due, core.loop_clock(v, got_input=True)))
                timed(core.event_messages)
        i += len(fetch)
        now = core.loop_clock(v, got_input=True)
        note(timed(core.release_due, now))
        timed(core.event_messages)
        if deferred:
            note(timed(core.finish_rules, now))
            timed(core.event_messages)
        note(timed(core.tick, now))
        timed(core.event_messages)
        pending = deferred and core.windows.rules_pending is not None
        closed = core.counters["positions"] > before
        if (v - last_ckpt >= 1.0 and closed and not pending) or v - last_ckpt >= 2.0:
            if pending:
                note(timed(core.finish_rules, now, True))
                timed(core.event_messages)
            timed(core.checkpoint)
            last_ckpt = v
    lateness = config.allowed_lateness_s

    def closing_tick(we: float) -> float:
        return t0 + math.ceil((we + lateness - t0) / 0.25 - 1e-9) * 0.25

    judged = sorted(we for we in released if we >= t0 + config.window_s and closing_tick(we) <= t0 + seconds)
    c2p = [(round(we - t0, 2), round((released[we] - closing_tick(we)) * 1000)) for we in judged]
    ms = np.array([x for _, x in c2p], float)
    return {"sightings_per_s": round(sum(n for *_, n in items) / seconds),
            "worker_cpu_share": round(busy / seconds, 3),  # of the one core
            "release": "per message" if per_message else "per fetch", "core_share": share,
            "close_to_position_ms": {"p50": round(float(np.percentile(ms, 50))),
                                     "p99": round(float(np.percentile(ms, 99))), "max": round(float(ms.max())),
                                     "windows_over_250": int((ms > 250).sum()), "windows": len(ms)},
            "by_window [s, ms]": c2p}


def rss_mb() -> float:
    """Resident memory of this process now, MiB (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def pause(scale: float, behind: float, pause_s: float, after: float) -> dict[str, object]:
    """A worker ``behind`` seconds behind its stream, working the backlog off a second of
    batches per loop pass, meets a delivery pause of ``pause_s`` (the ack-pending bound
    reached while a commit is stored): its loop ticks once with no input. Judged on the
    wall clock (main until session 4) every gateway looks idle and the windows close up to
    half the horizon ahead; judged on the stream's clock (``WorkerCore.loop_clock``) nothing
    moves. Then ``after`` seconds more of the backlog: CPU and windows computed per pass."""
    sc = load_scenario(REPO / "scenarios" / "static-open.toml")
    tr = site_traffic(sc, "pause", 0, 12.0)
    seconds = 8.0 + after
    b = TickBuilder(PublisherSpec(0, "", "nats", [tr], Schedule(scale, seconds), T0, 0.25, wire=2))
    batches = [b.build(k * 0.25, (k + 1) * 0.25, scale) for k in range(int(seconds / 0.25))]
    out: dict[str, object] = {}
    for judged in ("wall clock", "stream clock"):
        core = site_worker_core(sc, site_engine_config(sc), tr.keys, WorkerSettings(site="pause", idle_s=2.0))
        cpu = time.process_time
        seq = 0
        passes: list[tuple[int, int | None, int]] = []
        for k, items in enumerate(batches):
            recv = T0 + (k + 1) * 0.25
            for _, gw, body, _ in items:
                seq += 1
                core.handle(raw_subject("pause", gw), body, seq, recv, pending=int(behind * 60))
            if k % 4 != 3:
                continue  # a loop pass takes a second of batches (64 messages)
            before, t = core.windows.closed_through, cpu()
            core.release_due(recv)
            core.tick(recv)
            if k == int(8 / 0.25) - 1:  # then delivery pauses: a pass with no input
                wall = recv + behind + pause_s
                core.tick(wall if judged == "wall clock" else core.loop_clock(wall, got_input=False, held_back=True))
            if k >= int(8 / 0.25) - 1:
                first = None if before is None else before + 1 - round(T0)
                passes.append((round((cpu() - t) * 1000), first, (core.windows.closed_through or 0) - round(T0)))
        out[judged] = {"passes [cpu ms, first new window, closed through] (s from start)": passes,
                       "cpu_s": round(sum(p[0] for p in passes) / 1000, 2)}
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=18.0, help="copies of the scenario's 400 tags (18: ~85,000/s)")
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--backlog-at", type=float, default=12.0, help="seconds of traffic before the worker falls behind")
    ap.add_argument("--backlog", type=float, default=12.0, help="seconds of batches handled with no close between")
    ap.add_argument("--horizon", type=float, default=120.0, help="the worker's rows horizon, s")
    ap.add_argument("--pause", action="store_true", help="instead: a delivery pause while behind, both clocks")
    ap.add_argument("--loop", choices=("per-message", "per-fetch"),
                    help="instead: the worker's loop replayed on a core of its own, close-to-position per window")
    ap.add_argument("--share", type=float, default=1.0, help="--loop: the part of a core the worker gets when busy")
    args = ap.parse_args()
    if args.loop:
        emit("worker_catchup_loop", loop(args.scale, args.seconds, args.loop == "per-message", args.share))
    elif args.pause:
        emit("worker_catchup_pause", pause(args.scale, behind=10.0, pause_s=3.0, after=args.seconds))
    else:
        emit("worker_catchup", main(args.scale, args.seconds, args.backlog_at, args.backlog, args.horizon))
