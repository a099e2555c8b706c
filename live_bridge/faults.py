"""Fault injection on the backbone: real processes on loopback, counts reconciled to the unit.

One case = one :class:`Fault` applied to a live run: nats-server (or a 3-node cluster),
an engine worker *process* (``python -m tagtwin.worker``, so it can be killed -9),
and real :class:`~live_bridge.gateway.Gateway` objects with their SQLite spools, each
connected through a :class:`LinkProxy` (a TCP relay that can cut its link). The traffic
is drawn from a seed (device positions, RSSI noise), paced in real time.

Each case reconciles, in sightings: generated (handed to the gateways), stored (in the
raw stream), processed (placed in windows by the worker, once each), duplicates (in
batches the worker dropped as repeats), dead-lettered (with reason), and lost =
generated - processed - dead-lettered, which must be 0. ``positions_match`` compares the
latest revision of every (device, window) position the worker published with the same
sightings run through the same :class:`~live_bridge.worker.WorkerCore` in one pass
without IO (the fault-free answer: the engine is deterministic, so equal means equal);
``events_match`` does the same for the rule events on the events subject: the latest
revision of every event (retracted ones dropped) equals the fault-free run's event set.

``tagtwin loadtest --fault KIND@T`` (issue 14) reuses :class:`Fault` and :class:`Harness`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from live_bridge.backbone import StreamSettings, connect, ensure_streams, out_stream, out_subject, raw_stream
from live_bridge.natsserver import LOOPBACK, EmbeddedNats, cluster_of, start_cluster
from live_bridge.wire import Advert, Batch, encode_batch

if TYPE_CHECKING:
    from collections.abc import Iterable

    from nats.aio.client import Client

    from engine.pipeline import EngineConfig
    from live_bridge.gateway import Gateway
    from live_bridge.worker import WorkerCore, WorkerSettings

REPO = Path(__file__).resolve().parent.parent
FAULT_KINDS = (
    "none",
    "broker-restart",
    "worker-kill",
    "host-reboot",
    "link-cut",
    "worker-kill-during-replay",
    "cluster-node-loss",
    "duplicate-resend",
)


@dataclass(frozen=True)
class Fault:
    """What goes wrong, when (seconds into the run) and for how long."""

    kind: str
    at_s: float = 4.0
    down_s: float = 3.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"KIND {self.kind!r}: expected one of {', '.join(FAULT_KINDS)}")
        for name, value in (("T", self.at_s), ("DOWN", self.down_s)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} {value!r}: expected a time >= 0")

    @classmethod
    def parse(cls, text: str) -> Fault:
        """``KIND@T`` or ``KIND@T+DOWN``, as ``--fault`` takes it; T (default 4 s) and DOWN
        (default 3 s) are times as :func:`parse_seconds` reads them: ``broker-restart@30s``,
        ``link-cut@10+30``, ``worker-kill@1.5m+500ms``. A bad one is a ValueError naming the
        option and the field."""
        kind, at_sign, when = text.partition("@")
        at, _, down = when.partition("+")
        try:
            if at_sign and not at.strip():
                raise ValueError("T '': expected a time such as 30, 30s, 500ms or 2m")
            return cls(kind.strip(), parse_seconds(at, "T") if at_sign else 4.0,
                       parse_seconds(down, "DOWN") if down.strip() else 3.0)
        except ValueError as exc:
            raise ValueError(f"--fault {text!r}: {exc}") from None

    def text(self) -> str:
        """The ``--fault`` text that parses back to this fault exactly."""
        return f"{self.kind}@{seconds_text(self.at_s)}+{seconds_text(self.down_s)}"


# suffix -> seconds per unit; a bare number is seconds. Longest suffix first ("ms" before "s").
TIME_UNITS = (("ms", 0.001), ("s", 1.0), ("m", 60.0))


def seconds_text(value: float) -> str:
    """``value`` seconds as text :func:`parse_seconds` reads back exactly (no '+', which
    separates a fault's T from its DOWN)."""
    return repr(float(value)).replace("e+", "e") + "s"


def parse_seconds(text: str, field_name: str) -> float:
    """A time in seconds from ``30``, ``30s``, ``1.5s``, ``500ms`` or ``2m`` (minutes): a finite
    number >= 0 with an optional unit; ValueError naming ``field_name`` otherwise."""
    raw = text.strip()
    number, scale = raw, 1.0
    for suffix, factor in TIME_UNITS:
        if raw.lower().endswith(suffix):
            number, scale = raw[: -len(suffix)], factor
            break
    try:
        value = float(number) * scale
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0) or number.strip() != number or not number:
        raise ValueError(f"{field_name} {text!r}: expected a time >= 0 such as 30, 30s, 500ms or 2m")
    return value


@dataclass(frozen=True)
class Load:
    """The traffic of a case: ``gateways`` x ``devices`` x ``hz`` sightings per second."""

    gateways: int = 10
    devices: int = 50
    hz: float = 2.0  # adverts per device per second, each heard by every gateway in range
    duration_s: float = 12.0
    seed: int = 7
    batch_age_s: float = 0.25
    t_base: float = 1_790_000_000.0  # event time of the first advert (in the past: no skew)


@dataclass
class FaultResult:
    fault: str
    generated: int = 0
    stored: int = 0
    processed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    lost: int = 0
    recovery_s: float = 0.0
    positions_match: bool = False
    revised_positions: int = 0
    positions: int = 0
    events_match: bool = False
    events: int = 0  # rule events in the latest revision (retracted ones dropped)
    revised_events: int = 0  # event records that revised or retracted an earlier one
    resent: int = 0  # sightings in batches the fault published a second time
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0

    def row(self) -> dict[str, object]:
        return {
            "fault": self.fault, "generated": self.generated, "stored": self.stored,
            "processed": self.processed, "duplicates": self.duplicates, "dead_lettered": self.dead_lettered,
            "lost": self.lost, "recovery_s": round(self.recovery_s, 2), "positions_match": self.positions_match,
            "revised_positions": self.revised_positions, "positions": self.positions,
            "events_match": self.events_match, "events": self.events, "revised_events": self.revised_events,
            "resent": self.resent,
            "dead_letter_reasons": self.dead_letter_reasons, "wall_s": round(self.wall_s, 1),
        }


def traffic(config: EngineConfig, load: Load) -> dict[str, list[Advert]]:
    """Per gateway, its adverts in event-time order (seeded; the same load gives the same bytes).

    Log-distance path loss (exponent and shadowing sigma of the site config), one draw of
    noise per (advert, gateway); below -100 dBm the gateway does not hear it.
    """
    rng = np.random.default_rng(np.random.SeedSequence(load.seed))
    minx, miny, maxx, maxy = config.bounds
    xy = np.column_stack([rng.uniform(minx, maxx, load.devices), rng.uniform(miny, maxy, load.devices)])
    gw_ids = config.gateways.ids[: load.gateways]
    gw_xyz = config.gateways.xyz[: load.gateways]
    period = 1.0 / load.hz
    offset = rng.uniform(0, period, load.devices)
    n_ticks = int(load.duration_s * load.hz)
    out: dict[str, list[Advert]] = {}
    for g, gid in enumerate(gw_ids):
        t = (load.t_base + np.arange(n_ticks)[:, None] * period + offset[None, :]).ravel()
        dev = np.tile(np.arange(load.devices), n_ticks)
        seq = np.repeat(np.arange(n_ticks), load.devices)
        dist = np.sqrt(np.sum((xy[dev] - gw_xyz[g, :2]) ** 2, axis=1) + (gw_xyz[g, 2] - config.tag_height_m) ** 2)
        rssi = (config.default_tx_power_1m_dbm - 10 * config.path_loss_exponent * np.log10(np.maximum(dist, 0.1))
                + rng.normal(0, config.sigma_db, len(t)))
        order = np.argsort(t, kind="stable")
        heard = order[rssi[order] >= -100]
        out[gid] = [
            Advert(t=round(float(t[i]), 4), dev=f"tag-{int(dev[i]):04d}", rssi=round(float(rssi[i]), 2), ch=37,
                   fmt="twin", seq=int(seq[i]))
            for i in heard
        ]
    return out


CoreFactory = Callable[[dict[str, bytes], "WorkerSettings"], "WorkerCore"]


def reference_outputs(make_core: CoreFactory, keys: dict[str, bytes], adverts: dict[str, list[Advert]],
                      site: str) -> tuple[dict[tuple[str, float], tuple[object, ...]], dict[str, object], float]:
    """The fault-free answer: every advert through one WorkerCore in one pass, no IO; its
    positions, rule events (latest revisions) and the end of the last window it closed
    (rule steps after it are the live worker's idle clock once the traffic stops: see
    :func:`latest_events`' ``through``)."""
    from live_bridge.backbone import raw_subject
    from live_bridge.worker import WorkerSettings

    core = make_core(keys, WorkerSettings(site=site, horizon_s=1e9))
    seq = 0
    for gw, ads in adverts.items():
        for i in range(0, len(ads), 5000):
            part = ads[i : i + 5000]
            seq += 1
            body = encode_batch(Batch(gw=gw, seq=i, ep=1, sent=part[-1].t, ads=part), keys[gw])
            core.handle(raw_subject(site, gw), body, seq, part[-1].t)
    out = core.tick(time.time(), final=True)
    positions = latest_positions(p for subject, p in out if subject.endswith(".positions"))[0]
    closed = core.windows.closed_through
    closed_t = -np.inf if closed is None else closed * core.config.step_s
    return positions, latest_events(p for subject, p in out if subject.endswith(".events"))[0], closed_t


def latest_events(payloads: Iterable[bytes], through: float = np.inf) -> tuple[dict[str, object], int]:
    """Event key -> the event of its highest revision, retracted ones dropped (what a consumer
    that keeps the latest revision holds), and how many records revised or retracted one.
    Equal revisions: the later record wins (the stream's order). Records of rule steps
    after ``through`` are left out: when a run's traffic ends the site falls silent, and the
    live worker's rules go on deciding on the receive clock (missing_tag, gateway_silent)
    what a one-pass reference, which stops at its last window, never decides."""
    best: dict[str, dict[str, object]] = {}
    revised = 0
    for payload in payloads:
        for e in json.loads(payload)["events"]:
            if float(e["window"]) > through + 1e-6:
                continue
            key = e["key"]
            if key in best:
                revised += 1
                if int(e["rev"]) < int(best[key]["rev"]):  # type: ignore[call-overload]
                    continue
            best[key] = e
    return {k: e["event"] for k, e in best.items() if not e.get("retracted")}, revised


def latest_positions(payloads: object) -> tuple[dict[tuple[str, float], tuple[object, ...]], int]:
    """(device, window end) -> the position of its highest revision, and how many keys were revised."""
    best: dict[tuple[str, float], tuple[int, tuple[object, ...]]] = {}
    revised: set[tuple[str, float]] = set()
    for payload in payloads:  # type: ignore[attr-defined]
        for p in json.loads(payload)["positions"]:
            key = (p["dev"], p["t"])
            rev = int(p.get("rev", 0))
            value = (p["x"], p["y"], p["r90"], p["zone"], p["n_gw"])
            if key in best:
                if best[key][1] != value:
                    revised.add(key)
                if rev < best[key][0]:
                    continue
            best[key] = (rev, value)
    return {k: v for k, (_, v) in best.items()}, len(revised)


class LinkProxy:
    """A TCP relay between one gateway and the server; ``cut()`` drops the link until ``restore()``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.is_cut = False
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_cut:
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            with contextlib.suppress(Exception):
                w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        self._writers -= {writer, up_w}

    def cut(self) -> None:
        self.is_cut = True
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.is_cut = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)


@dataclass
class WorkerProcess:
    """A worker process (``python -m tagtwin.worker SITE ...``), killed by pid."""

    command: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command, env=env,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


class Harness:
    """Servers, one worker process and the gateways of one case; ``run`` applies the fault.

    ``config`` is the site's engine configuration and ``worker_command`` starts a worker
    process for the same site (tagtwin.worker.worker_command): the harness lives below the
    CLI room, so whoever calls it loads the site."""

    def __init__(self, data_dir: Path, fault: Fault, load: Load | None = None, *,
                 config: EngineConfig, worker_command: list[str], site: str = "faults", idle_s: float = 1.5,
                 cluster: bool | None = None, worker_settings: dict[str, object] | None = None,
                 make_core: CoreFactory | None = None) -> None:
        self.dir = data_dir
        self.worker_settings = worker_settings or {}
        self.fault = fault
        self.load = load or Load()
        self.worker_command = worker_command
        self.site = site
        self.idle_s = idle_s
        self.cluster = fault.kind == "cluster-node-loss" if cluster is None else cluster
        self.config = config
        # The worker core the worker process runs (its rules included), for the one-pass reference.
        self.make_core: CoreFactory = make_core or _positions_only(config)
        if self.load.gateways > len(self.config.gateways.ids):
            have = len(self.config.gateways.ids)
            raise ValueError(f"the site has {have} gateways, the load asks for {self.load.gateways}")
        rng = np.random.default_rng(np.random.SeedSequence([self.load.seed, 1]))
        self.keys = {g: rng.bytes(32) for g in self.config.gateways.ids}
        self.servers: list[EmbeddedNats] = []
        self.proxies: dict[str, LinkProxy] = {}
        self.gateways: dict[str, Gateway] = {}
        self.status: dict[str, object] = {}
        self.status_seen = asyncio.Event()
        self.worker: WorkerProcess | None = None
        self.generated = 0
        self.resent = 0
        self.js: object = None

    # -- processes ----------------------------------------------------------------------

    @property
    def urls(self) -> str:
        return ",".join(s.url for s in self.servers)

    def _start_servers(self) -> None:
        if self.cluster:
            self.servers = cluster_of(self.dir / "nats", 3)
            start_cluster(self.servers)
        else:
            self.servers = [EmbeddedNats.on_free_ports(self.dir / "nats", mqtt=False)]
            self.servers[0].start()

    def _worker(self) -> WorkerProcess:
        keys_path = self.dir / "keys.toml"
        keys_path.write_text("[keys]\n" + "".join(f'"{g}" = "{k.hex()}"\n' for g, k in self.keys.items()))
        settings = {"site": self.site, "idle_s": self.idle_s, "status_every_s": 0.2, "checkpoint_every_s": 0.25,
                    **self.worker_settings}
        args = ["--nats", self.urls, "--keys", str(keys_path),
                "--settings", json.dumps(settings), "--replicas", "3" if self.cluster else "1"]
        return WorkerProcess([*self.worker_command, *args], self.dir / "worker.log")

    def _gateway_config_url(self, gid: str) -> str:
        return self.proxies[gid].url if gid in self.proxies else self.urls

    async def _start_gateways(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        from live_bridge.gateway import BatchConfig, Gateway, GatewayConfig, MqttConfig, SpoolConfig

        tasks = []
        for gid in self.config.gateways.ids[: self.load.gateways]:
            if not self.cluster:
                proxy = LinkProxy(self.servers[0].config.port)
                await proxy.start()
                self.proxies[gid] = proxy
            cfg = GatewayConfig(
                id=gid, key_hex=self.keys[gid].hex(), broker=self._gateway_config_url(gid), site=self.site,
                spool=SpoolConfig(path=self.dir / "spool" / f"{gid}.sqlite"),
                batch=BatchConfig(max_age_s=self.load.batch_age_s, max_size=1000),
                mqtt=MqttConfig(max_inflight=16),
            )
            gw = Gateway(cfg)
            self.gateways[gid] = gw
            tasks.append(asyncio.create_task(gw.run(stop)))
        return tasks

    # -- the case -------------------------------------------------------------------------

    async def run(self) -> FaultResult:
        wall0 = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        adverts = traffic(self.config, self.load)
        self._start_servers()
        nc = await connect(self.urls, name="tagtwin-faults")
        result = FaultResult(self.fault.kind)
        try:
            js = nc.jetstream()
            self.js = js
            await ensure_streams(js, self.site, StreamSettings(replicas=3 if self.cluster else 1))
            await nc.subscribe(out_subject(self.site, "status"), cb=self._on_status)
            self.worker = self._worker()
            self.worker.start()
            await self._wait(lambda: bool(self.status), 60, "worker status")
            stop = asyncio.Event()
            tasks = await self._start_gateways(stop)
            fault_end: list[float] = []
            fault_task = asyncio.create_task(self._inject(fault_end))
            await self._generate(adverts)
            await fault_task
            gen_at_end = self.generated
            total = sum(len(a) for a in adverts.values())
            assert self.generated == total
            # Everything accounted for, and every window holding a sighting closed.
            last_t = max(a[-1].t for a in adverts.values() if a)
            need_closed = last_t + self.config.window_s - self.config.step_s
            await self._wait(lambda: self._accounted() >= total and self._closed_t() >= need_closed, 120,
                             "the worker to account for every sighting")
            result.recovery_s = self._recovery_s if fault_end else 0.0
            del gen_at_end
            stop.set()
            await asyncio.gather(*tasks)
            self.worker.stop()
            counters = dict(self.status.get("counters", {}))  # type: ignore[call-overload]
            result.generated = total
            result.processed = int(counters.get("processed", 0))
            result.duplicates = int(counters.get("duplicates", 0))
            reasons = {k.split(": ", 1)[1]: int(v) for k, v in counters.items() if k.startswith("dead_lettered: ")}
            result.dead_letter_reasons = reasons
            result.dead_lettered = sum(reasons.values())
            result.lost = result.generated - result.processed - result.dead_lettered
            result.resent = self.resent
            result.stored = await self._stored(js)
            live, result.revised_positions = latest_positions(await self._read(js, out_stream(self.site),
                                                                               out_subject(self.site, "positions")))
            want_positions, want_events, closed_t = reference_outputs(self.make_core, self.keys, adverts, self.site)
            events, result.revised_events = latest_events(await self._read(js, out_stream(self.site),
                                                                            out_subject(self.site, "events")),
                                                          through=closed_t)
            result.positions = len(live)
            result.positions_match = live == want_positions
            result.events = len(events)
            result.events_match = events == want_events
            self.event_sets = (events, want_events)
        finally:
            await self._teardown(nc)
        result.wall_s = time.monotonic() - wall0
        return result

    _recovery_s = 0.0

    async def _on_status(self, msg: object) -> None:
        with contextlib.suppress(ValueError):
            self.status = json.loads(msg.data)  # type: ignore[attr-defined]
        self.status_seen.set()

    def _accounted(self) -> int:
        c = self.status.get("counters", {})
        assert isinstance(c, dict)
        return int(c.get("processed", 0)) + sum(int(v) for k, v in c.items() if k.startswith("dead_lettered: "))

    def _closed_t(self) -> float:
        t = self.status.get("closed_through_t")
        return float(t) if isinstance(t, int | float) else -np.inf

    async def _wait(self, cond: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise TimeoutError(f"fault {self.fault.kind}: gave up waiting for {what} after {timeout:g} s "
                                   f"(status {json.dumps(self.status)[:600]})")
            await asyncio.sleep(0.05)

    async def _generate(self, adverts: dict[str, list[Advert]]) -> None:
        """Hand each gateway its adverts when their event time comes (real-time pacing)."""
        start = time.monotonic()
        pos = dict.fromkeys(adverts, 0)
        while any(pos[g] < len(a) for g, a in adverts.items()):
            now_t = self.load.t_base + (time.monotonic() - start)
            for g, ads in adverts.items():
                i = pos[g]
                gw = self.gateways[g]
                while i < len(ads) and ads[i].t <= now_t:
                    gw.add(ads[i])
                    i += 1
                self.generated += i - pos[g]
                pos[g] = i
            await asyncio.sleep(0.02)

    async def _inject(self, fault_end: list[float]) -> None:
        f = self.fault
        if f.kind == "none":
            return
        await asyncio.sleep(f.at_s)
        assert self.worker is not None
        half = list(self.proxies.values())[: max(1, len(self.proxies) // 2)]
        if f.kind == "broker-restart":
            self.servers[0].kill()
            await asyncio.sleep(f.down_s)
            await asyncio.to_thread(self.servers[0].start)
        elif f.kind == "worker-kill":
            self.worker.kill()
            await asyncio.sleep(f.down_s)
            self.worker.start()
        elif f.kind == "host-reboot":
            self.worker.kill()
            self.servers[0].kill()
            await asyncio.sleep(f.down_s)
            await asyncio.to_thread(self.servers[0].start)
            self.worker.start()
        elif f.kind in ("link-cut", "worker-kill-during-replay"):
            for p in half:
                p.cut()
            await asyncio.sleep(f.down_s)
            for p in half:
                p.restore()
            if f.kind == "worker-kill-during-replay":
                await asyncio.sleep(0.3)  # the spools are draining into the stream now
                self.worker.kill()
                await asyncio.sleep(1.0)
                self.worker.start()
        elif f.kind == "duplicate-resend":
            # Batches already stored come again with new message ids (a spool restored from a
            # backup, a gateway re-sending after the stream's duplicate window): only the
            # worker's (gateway, epoch, seq) dedup stands between them and a double count.
            self.resent = await self._resend(100)
        elif f.kind == "cluster-node-loss":
            self.servers[0].kill()  # stays down: two of three keep the quorum
        end = time.monotonic()
        fault_end.append(end)
        target = self.generated
        await self._wait(lambda: self._accounted() >= target, 180, "recovery")
        self._recovery_s = time.monotonic() - end

    async def _read(self, js: object, stream: str, subject: str) -> list[bytes]:
        """Every message on ``subject`` in ``stream`` (an ephemeral pull consumer)."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        sub = await js.pull_subscribe(  # type: ignore[attr-defined]
            subject, stream=stream,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL,
                                  inactive_threshold=30.0),
        )
        out: list[bytes] = []
        deadline = time.monotonic() + 60.0
        while True:
            try:
                msgs = await sub.fetch(500, timeout=1.0)
            except Exception:
                # A fetch that times out is the end only when the consumer has nothing pending:
                # on a cluster that just lost a node, a fetch can time out mid-stream.
                pending = 1
                with contextlib.suppress(Exception):
                    pending = int((await sub.consumer_info()).num_pending or 0)
                if pending == 0 or time.monotonic() > deadline:
                    break
                continue
            out += [m.data for m in msgs]
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        return out

    async def _resend(self, n: int) -> int:
        """Publish the first ``n`` stored batches again under fresh message ids; sightings re-sent."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        sub = await self.js.pull_subscribe(  # type: ignore[attr-defined]
            f"tagtwin.v1.{self.site}.raw.>", stream=raw_stream(self.site),
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
        )
        msgs = await sub.fetch(n, timeout=5.0)
        await sub.unsubscribe()
        sightings = 0
        for i, m in enumerate(msgs):
            await self.js.publish(m.subject, m.data, headers={"Nats-Msg-Id": f"resend-{i}"})  # type: ignore[attr-defined]
            sightings += len(json.loads(m.data)["batch"]["ads"])
        return sightings

    async def _stored(self, js: object) -> int:
        """Sightings in the raw stream (every stored batch, repeats included)."""
        n = 0
        for body in await self._read(js, raw_stream(self.site), f"tagtwin.v1.{self.site}.raw.>"):
            with contextlib.suppress(ValueError, KeyError):
                n += len(json.loads(body)["batch"]["ads"])
        return n

    async def _teardown(self, nc: Client) -> None:
        with contextlib.suppress(Exception):
            await nc.close()
        if self.worker is not None:
            self.worker.stop(5)
        for p in self.proxies.values():
            await p.close()
        for s in self.servers:
            s.stop()


QUICK = {"broker-restart": 3.0, "worker-kill": 2.0, "host-reboot": 4.0, "link-cut": 6.0, "duplicate-resend": 0.0,
         "worker-kill-during-replay": 6.0, "cluster-node-loss": 0.0, "none": 0.0}
FULL = {"broker-restart": 3.0, "worker-kill": 3.0, "host-reboot": 10.0, "link-cut": 30.0, "duplicate-resend": 0.0,
        "worker-kill-during-replay": 30.0, "cluster-node-loss": 0.0, "none": 0.0}


def suite_case(kind: str, quick: bool, load: Load | None = None) -> tuple[Fault, Load]:
    """The suite's standard case for a fault kind: quick (seconds) or the issue's durations."""
    down = (QUICK if quick else FULL)[kind]
    base = load or Load()
    at = 4.0 if quick else 10.0
    duration = max(base.duration_s if quick else 40.0, at + down + 4.0)
    return Fault(kind, at, down), replace(base, duration_s=duration)


def run_case(data_dir: Path, fault: Fault, load: Load | None, *, config: EngineConfig, worker_command: list[str],
             **kw: object) -> FaultResult:
    """One case end to end (its own event loop)."""
    harness = Harness(data_dir, fault, load, config=config, worker_command=worker_command, **kw)  # type: ignore[arg-type]
    return asyncio.run(harness.run())


def summary(results: list[FaultResult]) -> Counter[str]:
    return Counter({"cases": len(results), "lost": sum(r.lost for r in results),
                    "mismatched": sum(not (r.positions_match and r.events_match) for r in results)})


def _positions_only(config: EngineConfig) -> CoreFactory:
    from live_bridge.worker import WorkerCore

    return lambda keys, settings: WorkerCore(config, keys, settings)
