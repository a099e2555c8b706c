"""``tagtwin loadtest SCENARIO``: the pipeline under the site's traffic, judged against SLOs.

One run: a backbone (the embedded nats-server unless ``--nats``), one engine worker
process per site partition (``python -m tagtwin.worker``, the process ``tagtwin serve``
runs), publisher processes sending the twin's traffic as the gateways would
(tagtwin.loadgen), and this controller, which listens to the positions and the workers'
status and samples every process's CPU and memory once a second.

Two latencies, both from the positions as a dashboard receives them:

* **advert to position**: receive time minus the time of the oldest advert the window's
  step added (window end - step). Bounded below by the engine's design: a window closes
  when the watermark passes its end by the allowed lateness, so this is at least
  ``allowed_lateness_s`` plus a batch; the report puts window, step and lateness beside it.
* **window close to position**: receive time minus the moment the batch that let the
  window close was sent (the first publisher tick at or after end + lateness): the
  pipeline's own cost (broker, queue in the worker, decode, engine, publish).

And one for rule events (``tagtwin.v1.<site>.events``), the alert delivery latency: receive
time of an event's first record minus the moment the window that decided it could close
(as for positions: the publisher tick at or after window end + lateness), beside the
receive time minus the event's own time (when its condition became true).

Completeness is processed / generated sightings once the run has drained; ``lost`` is
generated - processed - dead-lettered - ``unprocessed``, where ``unprocessed`` counts the
sightings the stream stored (acknowledged to a publisher) that the worker had not yet
processed when the drain timed out (``drained`` false): a backlog, not a loss.
``--mqtt URL`` sends to a user's broker, where only broker-side figures (acked rate, PUBACK latency) can be measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import multiprocessing as mp
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil

from live_bridge.backbone import StreamSettings, connect, ensure_streams
from live_bridge.faults import Fault, WorkerProcess, parse_seconds, seconds_text
from live_bridge.natsserver import EmbeddedNats
from tagtwin.loadgen import PublisherSpec, Schedule, SiteTraffic, TickReport, drain_reports, publisher_main

if TYPE_CHECKING:
    from engine.pipeline import EngineConfig
    from twin.scenario import Scenario

log = logging.getLogger("tagtwin.loadtest")

PUBLISHER_CAPACITY = 40_000.0  # sightings/s per publisher: it used ~1 CPU-s per 190k in the ramp, so room to spare
# A ramp has no last step, so the copies its sites register (WorkerSettings.registered_copies)
# are those it sends up to this rate at its busiest site: five times what one worker passed
# through the backbone here (~200,000/s), the target for the engine in process on
# both cores. Past it a ramp's new copies alarm unknown_tag (the report's "alarms").
RAMP_REGISTERED_PER_SITE_S = 1_000_000.0
RAMP_REGISTERED_IDS_MAX = 1_000_000  # registered tag ids a site holds at most for a ramp
LOADTEST_FAULTS = ("none", "broker-restart", "worker-kill", "host-reboot")
SLO_NAMES = ("p99_advert_to_position_ms", "p99_close_to_position_ms", "completeness", "p99_alert_delivery_ms",
             "p99_publish_ack_ms")  # the last is the one --mqtt judges (broker-side only)


class LoadTestError(ValueError):
    """Bad options: one line naming the option."""


def registered_copies(sched: Schedule, traffic: list[SiteTraffic]) -> int:
    """Copies of each tag (``<tag>~k``, k below this) the sites register, as a real site at
    that rate knows its tags: all a fixed-rate run sends; for a ramp, all it sends up to
    :data:`RAMP_REGISTERED_PER_SITE_S` at its busiest site (no fewer than its first step's).
    Registered copies that are never sent cost the worker only their ids (no rule state)."""
    fixed = sched.copies()
    if fixed is not None:
        return fixed
    busiest = max((t.natural_rate for t in traffic), default=0.0)
    ceiling = math.ceil(RAMP_REGISTERED_PER_SITE_S / busiest - 1e-9) if busiest > 0 else 1
    # a slow-advertising fleet would need millions of ids per worker to reach that rate:
    # register at most RAMP_REGISTERED_IDS_MAX ids a site (later copies raise unknown_tag)
    tags = max((len(t.device_ids) for t in traffic), default=1)
    ceiling = min(ceiling, max(1, RAMP_REGISTERED_IDS_MAX // max(tags, 1)))
    return max(1, ceiling, math.ceil(sched.base_scale - 1e-9))


@dataclass(frozen=True)
class Ramp:
    """``--ramp START:FACTOR:STEP_S``: rate START, times FACTOR every STEP_S, until an SLO fails."""

    start: float
    factor: float
    step_s: float

    @classmethod
    def parse(cls, text: str) -> Ramp:
        """``START:FACTOR:STEP_S``: sightings/s, a factor > 1 and a time (``10``, ``10s``,
        ``500ms``, ``1m``). A bad one is a LoadTestError naming the field."""
        parts = text.split(":")
        if len(parts) != 3:
            raise LoadTestError(f"--ramp {text!r}: expected START:FACTOR:STEP_S, e.g. 5000:1.5:10")
        values = []
        for name, part, ok in (("START", parts[0], "a number > 0"), ("FACTOR", parts[1], "a number > 1")):
            try:
                v = float(part)
            except ValueError:
                v = math.nan
            if not (math.isfinite(v) and v > (1.0 if name == "FACTOR" else 0.0)):
                raise LoadTestError(f"--ramp {text!r}: {name} {part!r}: expected {ok}")
            values.append(v)
        try:
            step = parse_seconds(parts[2], "STEP_S")
        except ValueError as exc:
            raise LoadTestError(f"--ramp {text!r}: {exc}") from None
        if step <= 0:
            raise LoadTestError(f"--ramp {text!r}: STEP_S {parts[2]!r}: expected a time > 0")
        return cls(values[0], values[1], step)

    def text(self) -> str:
        """The ``--ramp`` text that parses back to this ramp exactly."""
        return f"{self.start!r}:{self.factor!r}:{seconds_text(self.step_s)}"


def parse_settings(items: Sequence[str], what: str = "--worker-setting") -> dict[str, object]:
    """``NAME=JSON`` items (``none`` for None). A bad item is a LoadTestError naming it, also
    one nested too deep for the JSON parser (RecursionError, which is not a ValueError)."""
    out: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise LoadTestError(f"{what} {item!r}: expected NAME=VALUE")
        try:
            out[name.strip()] = None if value.strip() == "none" else json.loads(value)
        except (ValueError, RecursionError):
            raise LoadTestError(f"{what} {item!r}: the value must be JSON (a number, true, \"text\")") from None
    return out


def parse_slos(items: Sequence[str]) -> dict[str, float | None]:
    """``--slo NAME=BOUND`` items (``none`` drops a bound the scenario sets): NAME one of
    SLO_NAMES, BOUND a finite number >= 0. A bad item is a LoadTestError naming it."""
    out: dict[str, float | None] = {}
    for item in items:
        name, sep, value = (x.strip() for x in item.partition("="))
        if not sep:
            raise LoadTestError(f"--slo {item!r}: expected NAME=BOUND, e.g. completeness=1")
        if name not in SLO_NAMES:
            shown = name if name.isprintable() else repr(name)  # a line break in it stays on the error's one line
            raise LoadTestError(f"--slo {shown}: expected one of {', '.join(SLO_NAMES)}")
        if value == "none":
            out[name] = None
            continue
        try:
            bound = float(value)
        except ValueError:
            bound = math.nan
        if not (math.isfinite(bound) and bound >= 0):
            raise LoadTestError(f"--slo {item!r}: {name}: expected a number >= 0 or none, found {value!r}")
        out[name] = bound
    return out


def slo_text(name: str, bound: float | None) -> str:
    """The ``--slo`` item that :func:`parse_slos` reads back as ``(name, bound)``."""
    return f"{name}={'none' if bound is None else repr(bound)}"


@dataclass
class LoadTestOptions:
    scenario: Path
    sites: int = 1
    rate: float | None = None  # sightings/s over all sites
    multiplier: float | None = None  # of the scenario's natural rate
    ramp: Ramp | None = None
    duration_s: float = 30.0
    nats_url: str | None = None
    mqtt_url: str | None = None
    publishers: int | None = None
    pool: int | None = None  # N pool workers sharing the sites' partitions (live_bridge/pool.py)
    wire: int = 1  # wire format version the publishers send (2: columns)
    faults: list[Fault] = field(default_factory=list)
    slo: dict[str, float | None] = field(default_factory=dict)  # command-line overrides
    batch_s: float = 0.25
    loop_s: float = 60.0
    sample_s: float = 1.0
    drain_timeout_s: float = 120.0
    worker_settings: dict[str, Any] = field(default_factory=dict)
    data_dir: Path | None = None
    progress: Callable[[str], None] | None = None


@dataclass
class SloResult:
    name: str
    bound: float
    value: float | None
    kind: str  # "max" or "min"
    note: str = ""

    @property
    def passed(self) -> bool:
        if self.value is None or math.isnan(self.value):
            return False
        return self.value <= self.bound if self.kind == "max" else self.value >= self.bound

    def row(self) -> dict[str, object]:
        out: dict[str, object] = {"bound": self.bound, "value": _r(self.value), "pass": self.passed,
                                  "kind": self.kind}
        if self.note:
            out["note"] = self.note
        return out


def _r(v: float | None, nd: int = 3) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), nd)


def percentiles(values: Sequence[float] | np.ndarray, weights: Sequence[int] | np.ndarray | None = None,
                ) -> dict[str, float | None]:
    """p50/p90/p99 (weighted by repetition), None for no samples."""
    v = np.asarray(values, float)
    if weights is not None:
        v = np.repeat(v, np.asarray(weights, np.int64))
    if len(v) == 0:
        return {"p50": None, "p90": None, "p99": None}
    p = np.percentile(v, [50, 90, 99])
    return {"p50": round(float(p[0]), 1), "p90": round(float(p[1]), 1), "p99": round(float(p[2]), 1)}


def weighted_percentiles(samples: Sequence[tuple[float, int]]) -> dict[str, float | None]:
    """Percentiles of (value, count) samples: each position of a window counts once."""
    return percentiles([v for v, _ in samples], [n for _, n in samples])


# -- traffic ---------------------------------------------------------------------------------


def site_traffic(scenario: Scenario, site: str, seed_offset: int, loop_s: float) -> SiteTraffic:
    """The twin's sightings of ``loop_s`` (at most the scenario's duration) for one site; each
    site its own seed (the scenario's + offset) and its own gateway keys."""
    from twin.sim import run_twin

    loop = min(loop_s, scenario.duration_s)
    sc = scenario.model_copy(update={"duration_s": loop, "seed": scenario.seed + seed_offset, "incidents": []})
    result = run_twin(sc)
    s = result.sightings
    s = s[(s["t"] >= 0) & (s["t"] < loop)]
    s = s[np.argsort(s["t"], kind="stable")]
    rng = np.random.default_rng(np.random.SeedSequence([scenario.seed, seed_offset, 14]))
    keys = {g: rng.bytes(32) for g in result.gateways.ids}
    return SiteTraffic(
        site=site, loop_s=loop, t=s["t"].astype(np.float64), gateway=s["gateway"].astype(np.int32),
        device=s["device"].astype(np.int32), rssi=s["rssi"].astype(np.float32), channel=s["channel"],
        battery=s["battery"], motion=s["motion"], seq=s["seq"].astype(np.int32),
        gateway_ids=tuple(result.gateways.ids), device_ids=list(result.device_ids), keys=keys,
    )


def assign_publishers(traffic: list[SiteTraffic], n: int) -> list[list[tuple[int, list[int]]]]:
    """Split the (site, gateway) pairs over ``n`` publishers, busiest first onto the least loaded."""
    pairs = []
    for si, tr in enumerate(traffic):
        counts = np.bincount(tr.gateway, minlength=len(tr.gateway_ids))
        pairs += [(int(c), si, g) for g, c in enumerate(counts) if c > 0]
    pairs.sort(reverse=True)
    load = [0] * n
    shares: list[dict[int, list[int]]] = [defaultdict(list) for _ in range(n)]
    for c, si, g in pairs:
        j = int(np.argmin(load))
        load[j] += c
        shares[j][si].append(g)
    return [sorted(s.items()) for s in shares if s]


# -- the run ---------------------------------------------------------------------------------


@dataclass
class ProcInfo:
    name: str
    role: str  # broker, worker, publisher, controller
    proc: psutil.Process | None
    cpu: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    cpu_s: float | None = None  # user + system CPU seconds at the last sample

    def sample(self) -> tuple[float | None, float | None]:
        if self.proc is None:
            return None, None
        try:
            c = self.proc.cpu_percent(None)
            m = self.proc.memory_info().rss / 2**20
            times = self.proc.cpu_times()
            self.cpu_s = times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None, None
        self.cpu.append(c)
        self.rss.append(m)
        return round(c, 1), round(m, 1)

    def summary(self) -> dict[str, object]:
        if not self.cpu:
            return {"role": self.role}
        return {"role": self.role, "cpu_s": None if self.cpu_s is None else round(self.cpu_s, 2),
                "cpu_pct_mean": round(float(np.mean(self.cpu)), 1),
                "cpu_pct_max": round(float(np.max(self.cpu)), 1), "rss_mb_first": round(self.rss[0], 1),
                "rss_mb_peak": round(max(self.rss), 1), "rss_mb_last": round(self.rss[-1], 1)}


class LoadTest:
    """One load test run; :meth:`run` returns the report (a JSON-able dict)."""

    def __init__(self, options: LoadTestOptions) -> None:
        from tagtwin.live import site_engine_config
        from twin.scenario import load_scenario

        self.o = o = options
        self.scenario = load_scenario(o.scenario)
        self.config: EngineConfig = site_engine_config(self.scenario)
        if sum(x is not None for x in (o.rate, o.multiplier, o.ramp)) > 1:
            raise LoadTestError("give one of --rate, --multiplier and --ramp")
        if o.sites < 1:
            raise LoadTestError("--sites must be >= 1")
        if o.wire not in (1, 2):
            raise LoadTestError(f"--wire {o.wire}: wire format 1 (an object per advert) or 2 (columns)")
        if o.pool is not None and o.pool < 1:
            raise LoadTestError("--pool must be >= 1")
        if o.duration_s <= 0:
            raise LoadTestError("--duration must be > 0")
        if o.nats_url and o.mqtt_url:
            raise LoadTestError("give --nats or --mqtt, not both")
        for f in o.faults:
            if f.kind not in LOADTEST_FAULTS:
                raise LoadTestError(f"--fault {f.kind}: loadtest injects {', '.join(LOADTEST_FAULTS[1:])}")
            if f.kind in ("broker-restart", "host-reboot") and (o.nats_url or o.mqtt_url):
                raise LoadTestError(f"--fault {f.kind}: only the embedded backbone can be restarted")
            if o.mqtt_url:
                raise LoadTestError("--fault needs the backbone (no faults against --mqtt)")
        self.say = o.progress or (lambda _s: None)
        self.copies: int | None = None  # copies of each tag the sites register (run(): registered_copies)
        base = self.scenario.name.replace(" ", "-")
        self.sites = [f"{base}-{i + 1}" if o.sites > 1 else base for i in range(o.sites)]
        for s in self.sites:
            from live_bridge.backbone import token

            try:
                token("site", s)
            except ValueError as exc:
                raise LoadTestError(str(exc)) from None
        self.slos = self._slos()
        # state filled while running
        self.status: dict[str, dict[str, Any]] = {}
        # per site, window end -> the revision of its first positions and their devices: a
        # window's first revision may come in several messages (the backbone's message size
        # limit), each counted at its own receive time; later revisions and repeats are not
        self.seen_windows: dict[str, dict[float, tuple[object, set[str] | None]]] = defaultdict(dict)
        self.a2p: list[tuple[float, int]] = []  # (ms, positions), since the last sample
        self.c2p: list[tuple[float, int]] = []
        self.all_a2p: list[tuple[float, float, int, float]] = []  # (recv time, ms, n, window end) whole run
        self.all_c2p: list[tuple[float, float, int, float]] = []
        self.positions = 0
        self.seen_events: set[tuple[str, str]] = set()
        # per site, the worker loop's wall ms per stage (live_bridge.worker.LoopClock) since the last sample
        self.loop_ms: dict[str, dict[str, Any]] = {}
        self.slow_loops: list[dict[str, Any]] = []  # per worker status, its loop's slowest iteration
        self.drained = True  # False: the drain timed out with sightings still in the stream
        # (receive time, close to alert ms, event time to alert ms, window end, severity)
        self.all_alerts: list[tuple[float, float, float, float, str]] = []
        self.t0 = 0.0

    def _slos(self) -> dict[str, tuple[float, str]]:
        cfg = self.config
        from_scenario = self.scenario.loadtest.slo.model_dump()
        if from_scenario.get("p99_advert_to_position_ms") is None:
            from_scenario["p99_advert_to_position_ms"] = (cfg.window_s + cfg.allowed_lateness_s + 1.0) * 1000
        merged = from_scenario | self.o.slo
        unknown = set(self.o.slo) - set(SLO_NAMES)
        if unknown:
            raise LoadTestError(f"--slo {sorted(unknown)[0]}: expected one of {', '.join(SLO_NAMES)}")
        if self.o.mqtt_url:  # only broker-side figures: nothing downstream of the broker is judged
            merged = {"p99_publish_ack_ms": self.o.slo.get("p99_publish_ack_ms", 250.0)}
        return {k: (float(v), "min" if k == "completeness" else "max") for k, v in merged.items() if v is not None}

    # -- scaling --------------------------------------------------------------------------

    def schedule(self, natural: float) -> Schedule:
        o = self.o
        if o.ramp is not None:
            return Schedule(o.ramp.start / natural, None, o.ramp.factor, o.ramp.step_s)
        if o.rate is not None:
            return Schedule(o.rate / natural, o.duration_s)
        return Schedule(o.multiplier if o.multiplier is not None else 1.0, o.duration_s)

    # -- listeners ------------------------------------------------------------------------

    async def _on_positions(self, msg: Any) -> None:
        recv = time.time()
        site = msg.subject.split(".")[2]
        try:
            positions = json.loads(msg.data)["positions"]
            ends = [float(p["t"]) for p in positions]
            revs = [p.get("rev", 0) for p in positions]
            devs = [str(p["dev"]) for p in positions]
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        cfg = self.config
        fresh: dict[float, int] = defaultdict(int)
        seen = self.seen_windows[site]
        for we, rev, dev in zip(ends, revs, devs, strict=True):
            first = seen.get(we)
            if first is None:
                first = seen[we] = (rev, set())
            if rev != first[0] or first[1] is None or dev in first[1]:  # a revision, or a repeat
                continue
            first[1].add(dev)
            fresh[we] += 1
        for we, n in fresh.items():
            self.positions += n
            a2p = (recv - (we - cfg.step_s)) * 1000
            c2p = (recv - self._closing_tick(we)) * 1000
            self.a2p.append((a2p, n))
            self.c2p.append((c2p, n))
            self.all_a2p.append((recv, a2p, n, we))
            self.all_c2p.append((recv, c2p, n, we))

    def _forget_devices(self, before: float) -> None:
        """Windows that ended before ``before`` keep their first revision, not their devices
        (the controller's memory stays flat; their messages have all arrived)."""
        for seen in self.seen_windows.values():
            for we in [we for we, (_, devs) in seen.items() if devs is not None and we < before]:
                seen[we] = (seen[we][0], None)

    def _closing_tick(self, window_end: float) -> float:
        """The publisher tick whose batch let a window close (its end + allowed lateness)."""
        due = window_end + self.config.allowed_lateness_s - self.t0
        return self.t0 + math.ceil(due / self.o.batch_s - 1e-9) * self.o.batch_s

    async def _on_events(self, msg: Any) -> None:
        """Rule events: the first record of each event (revisions and repeats after a
        restart are not deliveries) against the close of the window that decided it."""
        recv = time.time()
        site = msg.subject.split(".")[2]
        try:
            records = json.loads(msg.data)["events"]
        except (ValueError, KeyError, TypeError):
            return
        for r in records:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                if r.get("retracted") or (site, r["key"]) in self.seen_events:
                    continue
                self.seen_events.add((site, r["key"]))
                we = float(r["window"])
                ev = r["event"]
                self.all_alerts.append((recv, (recv - self._closing_tick(we)) * 1000,
                                        (recv - float(ev["t"])) * 1000, we, str(ev.get("severity", ""))))

    async def _on_status(self, msg: Any) -> None:
        with contextlib.suppress(ValueError, KeyError, IndexError, TypeError, AttributeError):
            body = json.loads(msg.data)
            self.status[str(body["site"])] = body
            loop = body.get("loop_ms")
            if isinstance(loop, dict):  # the worker's loop stages since its last status: summed per sample
                add_loop_ms(self.loop_ms.setdefault(str(body["site"]), {}), loop)
                if isinstance(loop.get("slowest"), dict):  # its slowest iteration, with what it did
                    self.slow_loops.append({"site": str(body["site"]), **loop["slowest"]})

    def _worker_totals(self) -> dict[str, int]:
        tot: dict[str, int] = defaultdict(int)
        for st in self.status.values():
            c = st.get("counters", {})
            tot["processed"] += int(c.get("processed", 0))
            tot["duplicates"] += int(c.get("duplicates", 0))
            tot["dead_lettered"] += sum(int(v) for k, v in c.items() if k.startswith("dead_lettered"))
            tot["positions"] += int(c.get("positions", 0))
            lag = st.get("lag") or {}
            tot["lag_batches"] += int(lag.get("pending", 0)) + int(lag.get("ack_pending", 0))
        return dict(tot)

    # -- main -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        o = self.o
        with contextlib.ExitStack() as stack:
            data_dir = o.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tagtwin-load-")))
            return asyncio.run(self._run(Path(data_dir)))

    async def _run(self, data_dir: Path) -> dict[str, Any]:
        o = self.o
        cfg = self.config
        load_start = os.getloadavg()
        loop = min(o.loop_s, self.scenario.duration_s)
        self.say(f"twin: {len(self.sites)} site(s) of {self.scenario.name}, loop {loop:g} s")
        traffic = [site_traffic(self.scenario, s, i, o.loop_s) for i, s in enumerate(self.sites)]
        natural = sum(t.natural_rate for t in traffic)
        if natural <= 0:
            raise LoadTestError(f"{o.scenario}: the twin made no sightings")
        sched = self.schedule(natural)
        self.copies = registered_copies(sched, traffic)
        peak = (o.rate or (o.multiplier or 1.0) * natural) if o.ramp is None else None
        n_gw = sum(len(np.unique(t.gateway)) for t in traffic)
        n_pub = o.publishers or (max(2, os.cpu_count() or 2) if peak is None
                                 else math.ceil(peak / PUBLISHER_CAPACITY))
        n_pub = max(1, min(n_pub, n_gw))
        procs: list[ProcInfo] = [ProcInfo("controller", "controller", psutil.Process())]
        server: EmbeddedNats | None = None
        workers: dict[str, WorkerProcess] = {}
        pubs: list[Any] = []
        ctx = mp.get_context("spawn")
        reports: mp.Queue[TickReport] = ctx.Queue()
        stop_pubs = ctx.Event()
        nc = None
        timeline: list[dict[str, Any]] = []
        fault_log: list[dict[str, object]] = []
        ramp_steps: list[dict[str, Any]] = []
        try:
            url = o.nats_url
            if o.mqtt_url is None and url is None:
                server = EmbeddedNats.on_free_ports(data_dir / "nats", mqtt=False)
                server.start()
                url = server.url
                procs.append(ProcInfo("nats-server", "broker", psutil.Process(server.pid)))
                self.say(f"backbone: embedded nats-server on {url} (pid {server.pid})")
            if o.mqtt_url is None:
                assert url is not None
                nc = await connect(url, name="tagtwin-loadtest")
                js = nc.jetstream()
                for s in self.sites:
                    await ensure_streams(js, s, StreamSettings())
                await nc.subscribe("tagtwin.v1.*.positions", cb=self._on_positions)
                await nc.subscribe("tagtwin.v1.*.events", cb=self._on_events)
                await nc.subscribe("tagtwin.v1.*.status", cb=self._on_status)
                if o.pool:
                    workers = self._pool_workers(data_dir, url, traffic)
                else:
                    workers = {s: self._worker(data_dir, url, s, tr) for s, tr in zip(self.sites, traffic, strict=True)}
                for name, w in workers.items():
                    w.start()
                    assert w.proc is not None
                    procs.append(ProcInfo(f"worker {name}", "worker", psutil.Process(w.proc.pid)))
                await self._wait(lambda: all(s in self.status for s in self.sites), 90, "worker status")
                self.say(f"workers: {len(workers)} ready")
            # publishers start a little ahead so their first tick is on time
            self.t0 = time.time() + 3.0
            for i, share in enumerate(assign_publishers(traffic, n_pub)):
                spec = PublisherSpec(i, o.mqtt_url or url or "", "mqtt" if o.mqtt_url else "nats",
                                     [traffic[si].select(gws) for si, gws in share], sched, self.t0, o.batch_s,
                                     wire=o.wire)
                p = ctx.Process(target=publisher_main, args=(spec, reports, stop_pubs), daemon=True)
                p.start()
                pubs.append(p)
                procs.append(ProcInfo(f"publisher {i + 1}", "publisher", psutil.Process(p.pid)))
            self.say(f"publishers: {len(pubs)} processes, {natural:,.0f} sightings/s at scale 1")
            for info in procs:
                info.sample()
            fault_tasks = [asyncio.create_task(self._fault(f, server, workers, fault_log)) for f in o.faults]
            pub_state: dict[int, TickReport] = {}
            ack_ms: list[float] = []
            ack_recent: list[float] = []
            await asyncio.sleep(max(0.0, self.t0 - time.time()))
            last_t, last_gen, last_pub, last_proc = time.time(), 0, 0, 0
            step_marks: list[tuple[int, float, int, int]] = []  # (step, wall start, generated, processed)
            cur_step = -1
            max_pass_rate: float | None = None
            stopping = False
            while True:
                await asyncio.sleep(o.sample_s)
                self._forget_devices(time.time() - 60.0)
                for r in drain_reports(reports):
                    pub_state[r.index] = r
                    ack_ms += r.ack_ms
                    ack_recent += r.ack_ms
                now = time.time()
                run_t = now - self.t0
                gen = sum(r.generated for r in pub_state.values())
                pub = sum(r.published for r in pub_state.values())
                tot = self._worker_totals()
                proc_n = tot.get("processed", 0) + tot.get("dead_lettered", 0)
                dt = max(now - last_t, 1e-6)
                row: dict[str, Any] = {
                    "t": round(run_t, 2),
                    "scale": sched.scale_at(max(run_t, 0.0)),
                    "offered_per_s": round((gen - last_gen) / dt),
                    "achieved_per_s": round((pub - last_pub) / dt),
                    "processed_per_s": round((proc_n - last_proc) / dt) if o.mqtt_url is None else None,
                    "lag_batches": tot.get("lag_batches"),
                    "lag_s": self._lag_s(now),
                    "publisher_behind_s": round(max((r.behind_s for r in pub_state.values()), default=0.0), 3),
                    "advert_to_position_ms": weighted_percentiles(self.a2p),
                    "close_to_position_ms": weighted_percentiles(self.c2p),
                    "publish_ack_ms": percentiles(ack_recent),
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                    "worker_loop_ms": self.loop_ms,
                    "cpu_pct": {}, "rss_mb": {},
                }
                self.loop_ms = {}
                for info in procs:
                    c, m = info.sample()
                    if c is not None:
                        row["cpu_pct"][info.name] = c
                        row["rss_mb"][info.name] = m
                timeline.append(row)
                self.a2p, self.c2p, ack_recent = [], [], []
                last_t, last_gen, last_pub, last_proc = now, gen, pub, proc_n
                self.say(self._progress_line(row))
                # the ramp: judge each finished step, stop at the first that fails
                if o.ramp is not None and not stopping:
                    step = sched.step_of(max(run_t, 0.0))
                    if step != cur_step:
                        if cur_step >= 0:
                            verdict = self._judge_step(cur_step, sched, traffic, step_marks[-1], gen, proc_n, now)
                            ramp_steps.append(verdict)
                            self.say(f"ramp step {cur_step}: {verdict['offered_per_s']:,.0f}/s "
                                     f"{'PASS' if verdict['pass'] else 'FAIL: ' + verdict['failed']}")
                            if verdict["pass"]:
                                max_pass_rate = verdict["offered_per_s"]
                            else:
                                stopping = True
                                stop_pubs.set()
                        cur_step = step
                        step_marks.append((step, now, gen, proc_n))
                if sched.duration_s is not None and run_t > sched.duration_s + 90 and not stopping:
                    log.warning("publishers still running 90 s after the end of the load: stopping them")
                    stopping = True
                    stop_pubs.set()
                done = len(pub_state) == len(pubs) and all(r.done for r in pub_state.values())
                hung = sched.duration_s is not None and run_t > sched.duration_s + 120
                if done or all(not p.is_alive() for p in pubs) or hung:
                    for r in drain_reports(reports):
                        pub_state[r.index] = r
                    break
            for t in fault_tasks:
                await t
            gen = sum(r.generated for r in pub_state.values())
            pub = sum(r.published for r in pub_state.values())
            publish_end = time.time() - self.t0
            # drain: every acknowledged sighting accounted for, every window closed
            if o.mqtt_url is None:
                self.say("publishers done; draining")
                last_event = self.t0 + publish_end
                need_closed = last_event - cfg.step_s - o.batch_s * 2 - 1.0
                deadline = time.monotonic() + o.drain_timeout_s

                def drained() -> bool:
                    tot = self._worker_totals()
                    closed = [st.get("closed_through_t") for st in self.status.values()]
                    return (tot.get("processed", 0) + tot.get("dead_lettered", 0) >= pub
                            and all(isinstance(c, int | float) and c >= need_closed for c in closed))

                while not drained() and time.monotonic() < deadline:
                    await asyncio.sleep(0.25)
                self.drained = drained()
                await asyncio.sleep(1.0)  # the last positions reach us
            tot = self._worker_totals()
            for info in procs:
                info.sample()
        finally:
            stop_pubs.set()
            for p in pubs:
                p.join(10)
                if p.is_alive():
                    p.kill()
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
            for w in workers.values():
                w.stop()
            if server is not None:
                server.stop()
        return self._report(traffic, natural, n_pub, gen, pub, tot, publish_end, timeline, procs, ack_ms,
                            ramp_steps, max_pass_rate, fault_log, load_start)

    def _lag_s(self, now: float) -> float | None:
        marks = [float(m) for st in self.status.values() if isinstance(m := st.get("watermark"), int | float)]
        return round(now - min(marks), 2) if marks else None

    def _progress_line(self, row: dict[str, Any]) -> str:
        a = row["advert_to_position_ms"]["p99"]
        c = row["close_to_position_ms"]["p99"]
        return (f"t={row['t']:6.1f}s offered {row['offered_per_s']:>9,}/s achieved {row['achieved_per_s']:>9,}/s "
                f"processed {row['processed_per_s'] or 0:>9,}/s lag {row['lag_batches'] or 0} batches "
                f"{row['lag_s'] if row['lag_s'] is not None else '-'} s  p99 advert->pos {a} ms close->pos {c} ms "
                f"load {row['load_avg_1m']}")

    def _judge_step(self, step: int, sched: Schedule, traffic: list[SiteTraffic],
                    mark: tuple[int, float, int, int], gen: int, proc_n: int, now: float) -> dict[str, Any]:
        """A ramp step passes when its latencies meet the SLOs and the worker kept up with it."""
        _, start, gen0, proc0 = mark
        scale = sched.scale_at(step * sched.step_s) or 0.0
        offered = sum(t.offered_at(scale) for t in traffic)
        # judge positions of windows that began inside the step (not the previous step's tail)
        lo = start + self.config.window_s
        a2p = [(v, n) for t, v, n, _ in self.all_a2p if lo <= t <= now]
        c2p = [(v, n) for t, v, n, _ in self.all_c2p if lo <= t <= now]
        pa, pc = weighted_percentiles(a2p), weighted_percentiles(c2p)
        kept_up = (proc_n - proc0) >= 0.9 * (gen - gen0)  # in flight at the step's edges: ~1 s
        failed = []
        for name, (bound, _kind) in self.slos.items():
            val = {"p99_advert_to_position_ms": pa["p99"], "p99_close_to_position_ms": pc["p99"]}.get(name)
            if name in ("p99_advert_to_position_ms", "p99_close_to_position_ms") and (val is None or val > bound):
                failed.append(f"{name} {val} > {bound:g}")
        if not kept_up:
            failed.append(f"worker processed {proc_n - proc0:,} of {gen - gen0:,} generated in the step")
        return {"step": step, "offered_per_s": round(offered), "generated": gen - gen0,
                "processed": proc_n - proc0, "advert_to_position_ms": pa, "close_to_position_ms": pc,
                "load_avg_1m": round(os.getloadavg()[0], 2), "pass": not failed, "failed": "; ".join(failed)}

    async def _wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up waiting for {what} after {timeout:g} s")
            await asyncio.sleep(0.05)

    def _copy_settings(self) -> dict[str, Any]:
        """The site registers the tag copies the run sends (a real site at that rate knows
        its tags): :func:`registered_copies`."""
        return {} if self.copies is None else {"registered_copies": self.copies}

    def _worker(self, data_dir: Path, url: str, site: str, traffic: SiteTraffic) -> WorkerProcess:
        from tagtwin.worker import worker_command

        keys_path = data_dir / f"keys-{site}.toml"
        keys_path.write_text("[keys]\n" + "".join(f'"{g}" = "{k.hex()}"\n' for g, k in traffic.keys.items()))
        settings = {"site": site, "status_every_s": 0.5, "idle_s": 2.0} | self._copy_settings()
        settings |= self.o.worker_settings
        cmd = [*worker_command(self.o.scenario), "--nats", url, "--keys", str(keys_path),
               "--settings", json.dumps(settings)]
        return WorkerProcess(cmd, data_dir / f"worker-{site}.log")

    def _pool_workers(self, data_dir: Path, url: str, traffic: list[SiteTraffic]) -> dict[str, WorkerProcess]:
        """``--pool N``: N worker processes sharing every site's partition (dealt round-robin)."""
        from tagtwin.pool_worker import pool_command

        for tr in traffic:
            (data_dir / f"keys-{tr.site}.toml").write_text(
                "[keys]\n" + "".join(f'"{g}" = "{k.hex()}"\n' for g, k in tr.keys.items()))
        settings = {"status_every_s": 0.5, "idle_s": 2.0} | self._copy_settings() | self.o.worker_settings
        n = self.o.pool or 1
        return {f"w{i + 1}": WorkerProcess(pool_command(self.o.scenario, url, data_dir, self.sites, f"w{i + 1}",
                                                        settings, min_members=n), data_dir / f"pool-w{i + 1}.log")
                for i in range(n)}

    async def _fault(self, f: Fault, server: EmbeddedNats | None, workers: dict[str, WorkerProcess],
                     out: list[dict[str, object]]) -> None:
        await asyncio.sleep(max(0.0, self.t0 + f.at_s - time.time()))
        t = time.time() - self.t0
        # with a pool, worker-kill takes out one worker: its partitions move to the others
        # when its leases expire, and come back when it restarts
        victims = list(workers.values())[:1] if self.o.pool and f.kind == "worker-kill" else list(workers.values())
        if f.kind in ("worker-kill", "host-reboot"):
            for w in victims:
                w.kill()
        if f.kind in ("broker-restart", "host-reboot") and server is not None:
            server.kill()
        await asyncio.sleep(f.down_s)
        if f.kind in ("broker-restart", "host-reboot") and server is not None:
            await asyncio.to_thread(server.start)
        if f.kind in ("worker-kill", "host-reboot"):
            for w in victims:
                w.start()
        out.append({"fault": f.kind, "at_s": round(t, 2), "down_s": f.down_s})
        self.say(f"fault {f.kind} at {t:.1f} s, {f.down_s:g} s down: restored")

    # -- report ---------------------------------------------------------------------------

    def _report(self, traffic: list[SiteTraffic], natural: float, n_pub: int, gen: int, pub: int,
                tot: dict[str, int], publish_end: float, timeline: list[dict[str, Any]], procs: list[ProcInfo],
                ack_ms: list[float], ramp_steps: list[dict[str, Any]], max_pass_rate: float | None,
                fault_log: list[dict[str, object]], load_start: tuple[float, float, float]) -> dict[str, Any]:
        o, cfg = self.o, self.config
        # From the first full window to the last that closed on traffic: a window whose
        # closing tick (end + allowed lateness, up to the next tick) came after the last tick
        # of traffic closes only when the worker finds every gateway idle, ~idle_s later, and
        # was measured from a tick that never came. Bounded by the publishers' finishing time
        # (a batch or more after the last tick), such a window was judged in some runs and
        # not others (as the windows fell against the ticks) and alone made the whole run's
        # p99 1.2-1.9 s while every per-second p99 stayed under 280 ms.
        warm = self.t0 + cfg.window_s
        last = self.t0 + publish_end - cfg.allowed_lateness_s
        last_tick = self.t0 + last_traffic_tick(publish_end, o.batch_s, self.o.duration_s if self.o.ramp is None
                                                else None)
        judged = functools.partial(closed_on_traffic, lateness=cfg.allowed_lateness_s, t0=self.t0,
                                   batch_s=o.batch_s, last_tick=last_tick)
        a2p = [(v, n) for t, v, n, we in self.all_a2p if t >= warm and judged(we)]
        c2p = [(v, n) for t, v, n, we in self.all_c2p if t >= warm and judged(we)]
        lat, close = weighted_percentiles(a2p), weighted_percentiles(c2p)
        # every event decided on traffic (a window of partial data decides events as it is)
        alerts = [(c, e, sev) for _, c, e, we, sev in self.all_alerts if judged(we)]
        alert_close = percentiles([c for c, _, _ in alerts])
        processed = tot.get("processed", 0)
        dead = tot.get("dead_lettered", 0)
        unprocessed = reconcile(gen, pub, processed, dead, self.drained)["unprocessed"]
        span = max(publish_end, 1e-6)
        from twin.run import scenario_sha256, tool_version

        report: dict[str, Any] = {
            # what made it (design.md's output conventions); wall-clock facts: perf.json
            "tool": {"name": "tagtwin", "version": tool_version()},
            "scenario": self.scenario.name,
            "scenario_sha256": scenario_sha256(self.scenario),
            "seed": self.scenario.seed,  # site i draws its traffic from seed + i (site_traffic)
            "sites": self.sites,
            "tags_per_site": [len(t.device_ids) for t in traffic],
            "gateways_per_site": [len(t.gateway_ids) for t in traffic],
            "natural_per_s": round(natural),
            "backbone": "mqtt " + o.mqtt_url if o.mqtt_url else ("nats " + o.nats_url if o.nats_url else "embedded"),
            "publishers": n_pub,
            "wire": o.wire,
            "workers": 0 if o.mqtt_url else (o.pool or len(self.sites)),
            "duration_s": round(publish_end, 2),
            "offered_per_s": round(gen / span),
            "achieved_per_s": round(pub / span),
            "generated": gen,
            "published": pub,
        }
        if o.mqtt_url:
            report |= {"processed": None, "lost": None, "latency_ms": None,
                       "publish_ack_ms": percentiles(ack_ms),
                       "note": "--mqtt: only broker-side figures (acknowledged rate, PUBACK latency)"}
        else:
            report |= {
                "processed": processed, "dead_lettered": dead, "duplicates": tot.get("duplicates", 0),
                # stored in the stream (acknowledged to a publisher) and not yet processed when
                # the drain timed out: a backlog the worker had not worked off, not a loss
                "unprocessed": unprocessed, "drained": self.drained,
                "lost": gen - processed - dead - unprocessed, "positions": self.positions,
                "latency_ms": lat, "close_to_position_ms": close, "publish_ack_ms": percentiles(ack_ms),
                "events": len(self.seen_events), "alarms": sum(sev == "alarm" for *_, sev in self.all_alerts),
                "registered_copies": self.copies,
                "alert_delivery_ms": alert_close,
                "event_time_to_alert_ms": percentiles([e for _, e, _ in alerts]),
                "latency_floor": {"window_s": cfg.window_s, "step_s": cfg.step_s,
                                  "allowed_lateness_s": cfg.allowed_lateness_s, "batch_s": o.batch_s},
            }
        values: dict[str, float | None] = {
            "p99_advert_to_position_ms": lat["p99"] if not o.mqtt_url else None,
            "p99_close_to_position_ms": close["p99"] if not o.mqtt_url else None,
            "completeness": processed / gen if gen and not o.mqtt_url else None,
            "p99_alert_delivery_ms": alert_close["p99"] if not o.mqtt_url else None,
            "p99_publish_ack_ms": percentiles(ack_ms)["p99"],
        }
        results = []
        for name, (bound, kind) in self.slos.items():
            note = "no rule event was published in the judged span" \
                if name == "p99_alert_delivery_ms" and values.get(name) is None and not o.mqtt_url else ""
            if name == "completeness" and values[name] is not None:
                values[name] = round(float(values[name]), 6)  # type: ignore[arg-type]
            results.append(SloResult(name, bound, values.get(name), kind, note))
        report["slo"] = {r.name: r.row() for r in results}
        report["pass"] = all(r.passed for r in results)
        if o.ramp is not None:
            report["ramp"] = {"start": o.ramp.start, "factor": o.ramp.factor, "step_s": o.ramp.step_s,
                              "steps": ramp_steps, "max_passing_per_s": max_pass_rate,
                              "stopped_by": next((s["failed"] for s in ramp_steps if not s["pass"]),
                                                 "publishers ended")}
        report["faults"] = fault_log
        report["processes"] = {p.name: p.summary() for p in procs}
        worker_cpu = sum(p.cpu_s or 0.0 for p in procs if p.role == "worker")
        # what survives a busy machine: sightings per CPU-second the worker(s) got
        report["processed_per_worker_cpu_s"] = round(processed / worker_cpu) if worker_cpu and not o.mqtt_url else None
        report["worker_loop_ms"] = loop_totals(timeline)
        report["bottleneck"] = bottleneck(procs, timeline)
        report["machine"] = {"cores": os.cpu_count(), "load_avg_start": [round(x, 2) for x in load_start],
                             "load_avg_end": [round(x, 2) for x in os.getloadavg()]}
        report["close_to_position_by_window"] = self._by_window(warm, judged, last)
        report["timeline"] = timeline
        return report

    def _by_window(self, warm: float, judged: Callable[[float], bool], last: float) -> dict[str, Any]:
        """Per window judged (end time from the run's start), its positions and close->position
        ms; the slowest windows beside the worker loop's slowest iteration that ended before
        their positions arrived (live_bridge.worker.LoopClock): what the loop did then; and
        the windows the earlier bound (end + allowed lateness before the publishers finished)
        judged although their closing tick came after the traffic."""
        after: dict[float, float] = {}
        for recv, c2p, _, we in self.all_c2p:
            if recv >= warm and we <= last and not judged(we):
                after[we] = max(after.get(we, c2p), c2p)
        rows: dict[float, list[float]] = {}
        for recv, c2p, n, we in self.all_c2p:
            if recv >= warm and judged(we):
                r = rows.setdefault(we, [0.0, c2p, recv])
                r[0] += n
                r[1], r[2] = max(r[1], c2p), max(r[2], recv)
        windows = [[round(we - self.t0, 2), int(n), round(c2p, 1)] for we, (n, c2p, _) in sorted(rows.items())]
        slowest = []
        for end, (count, worst, arrived) in sorted(rows.items(), key=lambda kv: -kv[1][1])[:8]:
            loops = [s for s in self.slow_loops if float(s["t"]) <= arrived + 0.05]
            loop = max(loops, key=lambda s: float(s["t"])) if loops else None
            if loop is not None:
                loop = {**loop, "t": round(float(loop["t"]) - self.t0, 2)}
            slowest.append({"window_end_s": round(end - self.t0, 2), "positions": int(count), "close_to_position_ms":
                            round(worst, 1), "received_s": round(arrived - self.t0, 2), "worker_loop": loop})
        return {"windows": windows, "slowest": slowest,
                "closed_after_traffic": [[round(we - self.t0, 2), round(v, 1)] for we, v in sorted(after.items())]}


def last_traffic_tick(publish_end: float, batch_s: float, duration_s: float | None) -> float:
    """Run time of the last publisher tick that carried traffic: the fixed run's duration, or
    (a ramp stopped) the tick before the one that found the schedule ended."""
    if duration_s is not None:
        return min(duration_s, math.floor(publish_end / batch_s + 1e-9) * batch_s)
    return max(0.0, (math.floor(publish_end / batch_s + 1e-9) - 1) * batch_s)


def closed_on_traffic(window_end: float, *, lateness: float, t0: float, batch_s: float, last_tick: float) -> bool:
    """A window whose closing tick (the tick at or after its end + allowed lateness) carried
    traffic: it closed on data, not on the gateways falling idle after the run."""
    due = window_end + lateness - t0
    return t0 + math.ceil(due / batch_s - 1e-9) * batch_s <= last_tick + 1e-6


def reconcile(generated: int, published: int, processed: int, dead: int, drained: bool) -> dict[str, int]:
    """Where the generated sightings went. After a drain that timed out, what the stream
    stored (acknowledged to a publisher) and the worker had not processed is
    ``unprocessed`` (a backlog still in the stream); ``lost`` is the rest of the shortfall."""
    unprocessed = 0 if drained else max(0, published - processed - dead)
    return {"unprocessed": unprocessed, "lost": generated - processed - dead - unprocessed}


def loop_totals(timeline: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per site, the worker loop's wall ms per stage over the run (live_bridge.worker.LoopClock):
    total, longest, the numbers of closes and checkpoints: where the close-to-position time went."""
    out: dict[str, dict[str, Any]] = {}
    for row in timeline:
        for site, stages in (row.get("worker_loop_ms") or {}).items():
            add_loop_ms(out.setdefault(site, {}), stages)
    return out


def add_loop_ms(acc: dict[str, Any], stages: dict[str, Any]) -> None:
    """``stages`` (stage -> {total, max} ms, and counts of closes and checkpoints) added into ``acc``."""
    for stage, v in stages.items():
        if stage == "slowest":  # one iteration's record, not a stage
            continue
        if isinstance(v, dict):
            a = acc.setdefault(stage, {"total": 0.0, "max": 0.0})
            a["total"] = round(a["total"] + float(v["total"]), 1)
            a["max"] = max(a["max"], float(v["max"]))
        elif isinstance(v, int | float):
            acc[stage] = acc.get(stage, 0) + v


def bottleneck(procs: list[ProcInfo], timeline: list[dict[str, Any]]) -> dict[str, object]:
    """Name the part that limits the run: a process pinned near one core, publishers behind
    their schedule, or a machine with more runnable work than cores."""
    busiest = max((p for p in procs if p.cpu), key=lambda p: float(np.percentile(p.cpu, 90)), default=None)
    behind = max((r.get("publisher_behind_s") or 0.0 for r in timeline), default=0.0)
    cores = os.cpu_count() or 1
    load = max((r.get("load_avg_1m") or 0.0 for r in timeline), default=0.0)
    out: dict[str, object] = {}
    if busiest is not None:
        out["busiest_process"] = busiest.name
        out["busiest_cpu_pct_p90"] = round(float(np.percentile(busiest.cpu, 90)), 1)
    if busiest is not None and float(np.percentile(busiest.cpu, 90)) >= 85:
        out["verdict"] = (f"{busiest.name} ({busiest.role}) runs at "
                          f"{out['busiest_cpu_pct_p90']}% of a core: it is CPU-bound")
    elif load > cores:
        slip = f"; publishers fell {behind:.1f} s behind their schedule" if behind > 1.0 else ""
        out["verdict"] = f"the machine: load average {load:.1f} on {cores} cores (other work shares the CPUs){slip}"
    elif behind > 1.0:
        out["verdict"] = f"publishers fell {behind:.1f} s behind their schedule: the load generator is the limit"
    else:
        out["verdict"] = "none: no process was CPU-bound and the machine had spare cores"
    out["max_load_avg_1m"] = load
    return out


def run_loadtest(options: LoadTestOptions) -> dict[str, Any]:
    return LoadTest(options).run()


def write_outputs(report: dict[str, Any], json_path: Path | None, out_dir: Path | None) -> list[Path]:
    """report.json and index.html (plots over time) as asked."""
    written = []
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        written.append(json_path)
    if out_dir is not None:
        from tagtwin.loadtest_report import write_html

        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        # design.md: wall-clock facts (when, on what load) in perf.json beside report.json
        perf = {"created_utc": datetime.now(UTC).isoformat(timespec="seconds"), "machine": report.get("machine")}
        (out_dir / "perf.json").write_text(json.dumps(perf, indent=2) + "\n")
        written += [out_dir / "report.json", out_dir / "perf.json", write_html(report, out_dir)]
    return written
