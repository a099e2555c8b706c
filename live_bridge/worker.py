"""The engine worker: a durable JetStream consumer of one site's raw stream.

:class:`WorkerCore` is sans-IO (like the engine and :class:`live_bridge.server.ServerCore`):
``handle(subject, body, stream_seq, received)`` and ``tick(now)`` return what to
publish; ``checkpoint()`` and ``restore()`` move its whole state to and from bytes.
:func:`run_worker` is the thin NATS adapter around it.

Each message, wrapped so that nothing it contains can end the worker (any failure is a
dead letter with a reason): size cap; gateway from the subject; HMAC over the raw bytes
(wire.verify_signed) before any parsing; depth-limited, strict, bounded schema; then
(gateway, boot epoch, seq) dedup; then per sighting: event time beyond the allowed skew
of the stream's receive time is dead-lettered ("future event time") and moves no
watermark; older than the revision horizon is dead-lettered too; the rest goes to the
revising windows (engine.eventtime).

Delivery: the adapter publishes outputs and waits for their acks, then writes the
checkpoint (state + the stream sequence it covers) to the JetStream object store, and
only then acks the input messages. A restarted worker (or another one) loads the
checkpoint and resumes at the next stream sequence; anything at or below it is skipped.
A position's revision is the stream sequence of the newest batch its computation saw, so
revisions only grow, across restarts and workers alike, and the highest is the most
complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.contract import UNKNOWN, IdTable, sightings_from_columns
from engine.eventtime import BatchDedup, GatewayWatermarks, RevisingWindows, parse_snapshot, snapshot_bytes
from engine.pipeline import Engine, EngineConfig
from live_bridge.backbone import (
    CHECKPOINT_BUCKET,
    MAX_BATCH_BYTES,
    StreamSettings,
    ensure_streams,
    gateway_of,
    object_get,
    out_subject,
    raw_filter,
    raw_stream,
)
from live_bridge.server import KeysWatch, positions_payload
from live_bridge.wire import DeadLetter, WireError, verify_signed
from live_bridge.wire_columns import is_columns, verify_columns

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from live_bridge.config import KeyRing

log = logging.getLogger("tagtwin.worker")

Outgoing = tuple[str, bytes]  # subject, payload
SEQ_MASK = 0x7FFFFFFF  # the sighting contract's seq is int32
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class WorkerSettings:
    site: str = "default"
    partition: str = "all"
    max_message_bytes: int = MAX_BATCH_BYTES
    max_skew_s: float = 30.0  # event time may lead the receive clock by this much
    idle_s: float = 5.0  # a gateway silent this long stops holding the watermark
    horizon_s: float = 120.0  # late data older than this behind the watermark is dead-lettered
    max_ack_pending: int = 256  # in-flight batches: the backpressure bound
    fetch_batch: int = 64
    checkpoint_every_s: float = 1.0
    status_every_s: float = 2.0
    ack_wait_s: float = 30.0
    # A spatial partition (live_bridge/cells.py) reads only its cell's gateways' subjects;
    # empty: every subject of the site.
    subjects: tuple[str, ...] = ()

    @property
    def durable(self) -> str:
        return f"engine-{self.site}-{self.partition}"

    @property
    def checkpoint_name(self) -> str:
        return f"{self.site}.{self.partition}"


class WorkerCore:
    """Verification, dedup, event time and revised windows for one site partition, no IO."""

    def __init__(
        self, config: EngineConfig, keys: Mapping[str, bytes | tuple[bytes, ...]],
        settings: WorkerSettings | None = None,
    ) -> None:
        self.settings = s = settings or WorkerSettings()
        if config.tracker != "none" or config.zone_hysteresis:
            # A tracker carries state from window to window, so a revised window would change
            # every later one: the backbone publishes each window's own fix (revisable).
            log.warning("site tracker %r / zone hysteresis %s: the backbone publishes single-window fixes",
                        config.tracker, config.zone_hysteresis)
            config = replace(config, tracker="none", zone_hysteresis=False)
        self.config = config
        self.keys = keys
        self.revoked_gateways: frozenset[str] = frozenset()
        self.revoked_tags: frozenset[str] = frozenset()
        self.engine = Engine(config)
        self.windows = RevisingWindows(self.engine, s.horizon_s)
        self.marks = GatewayWatermarks(s.idle_s, s.max_skew_s)
        self.dedup = BatchDedup()
        self.gateways = IdTable(list(config.gateways.ids))
        self.site_gateways = frozenset(config.gateways.ids)
        self.devices = IdTable()
        self.stream_seq = 0  # the newest stream sequence folded into the state
        self.latest_received = -np.inf  # the stream clock: receive time of the newest batch handled
        self.counters: Counter[str] = Counter()
        # A spatial partition publishes only the fixes it owns (engine.cells): (fixes, the
        # rows held) -> mask. None: every fix.
        self.publish_filter: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    def reload_keys(self, ring: KeyRing) -> None:
        """A rotated or revoked keys file (tagtwin rotate-key, tagtwin revoke) takes effect
        from the next message: old and new keys of a rotation both verify; a revoked gateway's
        batches and a revoked tag's sightings are refused, counted and dead-lettered."""
        self.keys = ring.keys
        self.revoked_gateways = ring.revoked_gateways
        self.revoked_tags = ring.revoked_tags
        self.counters["key reloads"] += 1

    # -- input ------------------------------------------------------------------------

    def handle(self, subject: str, body: bytes, stream_seq: int, received: float) -> list[Outgoing]:
        """One stored batch; returns dead letters. A sequence already covered is skipped."""
        if stream_seq <= self.stream_seq:
            self.counters["skipped: already in checkpoint"] += 1
            return []
        self.stream_seq = stream_seq
        self.latest_received = max(self.latest_received, received)
        self.counters["messages"] += 1
        try:
            return self._handle(subject, body, received)
        except WireError as exc:
            return [self._dead_letter(subject, body, exc.reason, exc.detail, received)]
        except Exception as exc:  # per-message isolation: a bug on one message ends nothing
            log.exception("message %d on %s", stream_seq, subject)
            return [self._dead_letter(subject, body, "internal error", f"{type(exc).__name__}: {exc}"[:300],
                                      received)]

    def _handle(self, subject: str, body: bytes, received: float) -> list[Outgoing]:
        if len(body) > self.settings.max_message_bytes:
            raise WireError("oversized", f"{len(body)} bytes > {self.settings.max_message_bytes}")
        gw = gateway_of(subject, self.settings.site)
        if gw is None:
            raise WireError("unexpected subject", subject[:120])
        if gw in self.revoked_gateways:
            raise WireError("revoked gateway", gw)
        key = self.keys.get(gw)
        if key is None:
            raise WireError("unknown gateway", gw)
        if gw not in self.site_gateways:
            raise WireError("gateway not in site plan", gw)
        columns = is_columns(body)
        if columns:  # wire version 2: columns straight into numpy (live_bridge/wire_columns.py)
            cb = verify_columns(body, gw, key)
            epoch, batch_seq, n = cb.ep, cb.seq, len(cb.t)
        else:
            batch = verify_signed(body, gw, key)
            epoch, batch_seq, n = batch.ep, batch.seq, len(batch.ads)
        self.counters["sightings_in"] += n
        if not self.dedup.first_time(gw, epoch, batch_seq):
            self.counters["duplicate_batches"] += 1
            self.counters["duplicates"] += n
            return []
        self.counters["batches"] += 1
        if n == 0:
            return []
        if columns:
            t = np.asarray(cb.t, float)
            aseq = np.asarray(cb.aseq, np.int64)
            dev_ids = cb.dev
            rows = sightings_from_columns(
                t=t, gateway=self.gateways.code(gw), device=self.devices.codes(cb.dev),
                rssi=np.asarray(cb.rssi, np.float32), channel=np.asarray(cb.ch, np.uint8),
                battery=np.asarray(cb.bat, np.int8), motion=np.asarray(cb.mot, np.int8),
                seq=np.where(aseq >= 0, aseq & SEQ_MASK, UNKNOWN).astype(np.int32),
            )
        else:
            ads = batch.ads
            dev_ids = [a.dev for a in ads]
            t = np.fromiter((a.t for a in ads), float, n)
            rows = sightings_from_columns(
                t=t,
                gateway=self.gateways.code(gw),
                device=self.devices.codes(dev_ids),
                rssi=np.fromiter((a.rssi for a in ads), np.float32, n),
                channel=np.fromiter((a.ch for a in ads), np.uint8, n),
                battery=np.fromiter((UNKNOWN if a.bat is None else a.bat for a in ads), np.int8, n),
                motion=np.fromiter((UNKNOWN if a.mot is None else a.mot for a in ads), np.int8, n),
                seq=np.fromiter((UNKNOWN if a.seq is None else a.seq & SEQ_MASK for a in ads), np.int32, n),
            )
        out = []
        if self.revoked_tags:
            revoked = np.isin(np.asarray(dev_ids, dtype=object), list(self.revoked_tags))
            if revoked.any():
                k = int(revoked.sum())
                self.counters["sightings of revoked tags"] += k
                out.append(self._dead_letter(subject, body, "revoked tag", f"{k} of {n} sightings of revoked tags",
                                             received))
                rows, t = rows[~revoked], t[~revoked]
        future = self.marks.future(t, received)
        if future.any():
            k = int(future.sum())
            self.counters["dead_lettered: future event time"] += k
            out.append(self._dead_letter(subject, body, "future event time",
                                         f"{k} of {n} sightings more than {self.marks.max_skew_s:g} s "
                                         "ahead of the receive time", received))
            rows = rows[~future]
        too_old = self.windows.add(rows)
        if too_old.any():
            k = int(too_old.sum())
            self.counters["dead_lettered: older than revision horizon"] += k
            out.append(self._dead_letter(subject, body, "older than revision horizon",
                                         f"{k} of {n} sightings", received))
        placed = rows[~too_old]
        self.counters["processed"] += len(placed)
        if len(rows):
            self.marks.observe(gw, float(rows["t"].max()), received)
        return out

    # -- output -----------------------------------------------------------------------

    def tick(self, now: float, final: bool = False) -> list[Outgoing]:
        """Close what the site watermark allows, recompute what late data touched; ``final``
        closes everything held (the end of a replay or a test run)."""
        mark = self.marks.site_watermark(now)
        if (final or self.marks.all_idle(now)) and self.marks.event:
            # Nothing more is coming: close every window holding a sighting (a late one revises).
            cfg = self.config
            mark = max(mark, max(self.marks.event.values()) + cfg.window_s + cfg.allowed_lateness_s + cfg.step_s)
        fixes = self.windows.advance(mark, revision=self.stream_seq)
        if self.publish_filter is not None and len(fixes):
            fixes = fixes[self.publish_filter(fixes, self.windows.rows)]
        if len(fixes) == 0:
            return []
        self.counters["positions"] += len(fixes)
        names = self.config.zones.names
        return [(out_subject(self.settings.site, "positions"), positions_payload(fixes, self.devices, names, 0.0, now))]

    def _dead_letter(self, subject: str, body: bytes, reason: str, detail: str, now: float) -> Outgoing:
        self.counters[f"rejected: {reason}"] += 1
        msg = DeadLetter(t=now, topic=subject[:200], reason=reason, detail=detail,
                         payload_head=body[:200].decode("latin-1"))
        return out_subject(self.settings.site, "deadletter"), msg.model_dump_json().encode()

    def status(self) -> dict[str, object]:
        return {
            "v": 1,
            "site": self.settings.site,
            "partition": self.settings.partition,
            "stream_seq": self.stream_seq,
            "watermark": self.marks.mark if np.isfinite(self.marks.mark) else None,
            "counters": dict(sorted(self.counters.items())),
            "devices": len(self.devices),
            "rows_held": len(self.windows.rows),
            "closed_through_t": None if self.windows.closed_through is None
            else self.windows.closed_through * self.config.step_s,
        }

    # -- checkpoint ---------------------------------------------------------------------

    def checkpoint(self) -> bytes:
        meta, rows = self.windows.snapshot()
        header = {
            "version": CHECKPOINT_VERSION,
            "stream_seq": self.stream_seq,
            "windows": meta,
            "watermarks": self.marks.to_json(),
            "dedup": self.dedup.to_json(),
            "devices": list(self.devices.ids),
            "counters": dict(self.counters),
        }
        return snapshot_bytes(header, rows)

    def restore(self, blob: bytes) -> None:
        header, rows = parse_snapshot(blob)
        if header.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {header.get('version')!r}, expected {CHECKPOINT_VERSION}")
        self.stream_seq = int(header["stream_seq"])  # type: ignore[call-overload]
        self.windows.restore(dict(header["windows"]), rows)  # type: ignore[call-overload]
        self.marks = GatewayWatermarks.from_json(dict(header["watermarks"]))  # type: ignore[call-overload]
        self.dedup = BatchDedup.from_json(dict(header["dedup"]))  # type: ignore[call-overload]
        self.devices = IdTable(list(header["devices"]))  # type: ignore[call-overload]
        self.counters = Counter(dict(header["counters"]))  # type: ignore[call-overload]


# -- the NATS adapter -------------------------------------------------------------------------


async def open_partition(js: JetStreamContext, core: WorkerCore, streams: StreamSettings | None = None) -> object:
    """Streams ensured, checkpoint loaded, durable consumer placed at the sequence after it.

    The checkpoint is the truth about progress, so the consumer is (re)created to start
    right after it: a worker taking a partition over never waits for another's ack timeout.
    """
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ObjectStoreConfig, StorageType

    s = core.settings
    await ensure_streams(js, s.site, streams)
    with contextlib.suppress(Exception):  # exists already
        await js.create_object_store(CHECKPOINT_BUCKET, config=ObjectStoreConfig(
            storage=StorageType.FILE, replicas=(streams or StreamSettings()).replicas))
    blob = await object_get(js, CHECKPOINT_BUCKET, s.checkpoint_name)
    if blob is not None:
        core.restore(blob)
        log.info("resumed from checkpoint at stream seq %d", core.stream_seq)
    with contextlib.suppress(Exception):
        await js.delete_consumer(raw_stream(s.site), s.durable)
    await js.add_consumer(raw_stream(s.site), ConsumerConfig(
        durable_name=s.durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=core.stream_seq + 1, max_ack_pending=s.max_ack_pending, ack_wait=s.ack_wait_s,
        filter_subject=None if s.subjects else raw_filter(s.site), filter_subjects=list(s.subjects) or None,
        max_deliver=-1,
    ))
    return await js.pull_subscribe_bind(s.durable, raw_stream(s.site))


async def run_worker(
    core: WorkerCore, nc: Client, stop: asyncio.Event, *, streams: StreamSettings | None = None,
    ready: asyncio.Event | None = None, on_status: Callable[[dict[str, object]], None] | None = None,
    keys_path: Path | None = None,
) -> None:
    """Consume, compute, publish, checkpoint, ack; until ``stop``. Survives backbone restarts.
    ``on_status`` sees each status the worker publishes (a command prints a line of it).
    With ``keys_path`` the keys file is re-read when it changes: rotation and revocation
    take effect within a second, with no restart."""
    js = nc.jetstream()
    s = core.settings
    sub = None
    while sub is None and not stop.is_set():
        try:
            sub = await open_partition(js, core, streams)
        except Exception as exc:  # backbone not there yet: keep trying
            log.warning("cannot open partition %s yet: %s", s.durable, exc)
            await asyncio.sleep(0.5)
    if sub is None:
        return
    obs = await js.object_store(CHECKPOINT_BUCKET)
    if ready is not None:
        ready.set()
    unacked: list[Msg] = []
    outbox: list[Outgoing] = []
    last_ckpt = time.monotonic()
    published = False  # outputs out since the last checkpoint
    next_status = time.monotonic()
    keys_watch = KeysWatch(keys_path) if keys_path is not None else None
    while not stop.is_set():
        if keys_watch is not None:
            keys_watch.poll(core)
        try:
            try:
                msgs = await sub.fetch(s.fetch_batch, timeout=0.2)  # type: ignore[attr-defined]
            except Exception as exc:  # a fetch timeout, or the backbone restarting
                msgs = []
                if not isinstance(exc, asyncio.TimeoutError | TimeoutError) and "Timeout" not in type(exc).__name__:
                    log.info("fetch: %s", exc)
                    await asyncio.sleep(0.2)
            for m in msgs:
                md = m.metadata
                outbox += core.handle(m.subject, m.data, md.sequence.stream, md.timestamp.timestamp())
                unacked.append(m)
            # Idle gateways are judged on the stream's clock while a backlog is being worked
            # off (the worker is behind, the gateways are not silent), on the wall clock once
            # caught up (nothing more arrives: close what there is).
            outbox += core.tick(core.latest_received if msgs else time.time())
            if outbox:  # positions go out as soon as computed (stored before the checkpoint, as before)
                await asyncio.gather(*(js.publish(subj, payload, timeout=10) for subj, payload in outbox))
                outbox = []
                published = True
            due = time.monotonic() - last_ckpt >= s.checkpoint_every_s or len(unacked) >= s.max_ack_pending // 2
            if (unacked or published) and due:  # outputs of a tick with no new input (idle close) too
                await _commit(js, obs, core, outbox, unacked)
                outbox, unacked = [], []
                published = False
                last_ckpt = time.monotonic()
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + s.status_every_s
                status = await _publish_status(nc, sub, core)
                if on_status is not None:
                    on_status(status)
        except Exception as exc:  # publish/checkpoint refused: keep state, retry next round
            core.counters[f"commit retried: {type(exc).__name__}"] += 1
            log.warning("commit failed, will retry: %s", exc)
            await asyncio.sleep(0.25)
    # Stopping: what is computed gets published and covered, so a restart repeats nothing.
    with contextlib.suppress(Exception):
        outbox += core.tick(time.time())
        if unacked or outbox:
            await _commit(js, obs, core, outbox, unacked)
        await _publish_status(nc, sub, core, state="offline")


async def _commit(js: JetStreamContext, obs: object, core: WorkerCore, outbox: list[Outgoing],
                  unacked: list[Msg]) -> None:
    """Outputs stored, then the checkpoint, then the input acks: in that order."""
    acks = await asyncio.gather(*(js.publish(subj, payload, timeout=10) for subj, payload in outbox))
    del acks
    outbox.clear()
    await obs.put(core.settings.checkpoint_name, core.checkpoint())  # type: ignore[attr-defined]
    for m in unacked:
        await m.ack()
    unacked.clear()


async def _publish_status(nc: Client, sub: object, core: WorkerCore, state: str = "online") -> dict[str, object]:
    lag: dict[str, int] = {}
    with contextlib.suppress(Exception):
        info = await sub.consumer_info()  # type: ignore[attr-defined]
        lag = {"pending": int(info.num_pending or 0), "ack_pending": int(info.num_ack_pending or 0)}
    body = core.status() | {"state": state, "t": time.time(), "lag": lag}
    await nc.publish(out_subject(core.settings.site, "status"), json.dumps(body, default=str).encode())
    return body

