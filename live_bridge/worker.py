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
watermark; the rest goes to the revising windows (engine.eventtime). Third-party
gateways (Theengs, ESPresense, when ``WorkerSettings.adapters`` names them) arrive
through the MQTT listener on their own topics in the same raw stream: unsigned, decoded
by live_bridge.adapters, accepted only from gateways the site file lists, stamped with
the stream's receive time.

The raw stream is the log; the worker's memory is a view of it:

* **Checkpoints refer to the stream.** A checkpoint holds the state (watermarks, dedup,
  window revisions, devices, counters) and the stream sequence range of the raw batches
  whose rows the revision horizon still holds -- not the rows. A restored worker reads
  those batches back (:meth:`WorkerCore.begin_history`, verified as on first read) to
  rebuild its rows, then resumes after the covered sequence.
* **Late data beyond the horizon is recomputed from the stream.** Sightings older than
  the in-memory horizon mark their windows for a *deep* recomputation: once the late
  data settles, the worker reads back every raw batch that can hold a row of those
  windows (from the windows' start minus the allowed skew, by receive time) and
  publishes the windows again as revisions. On a tracked or ruled site (a tracker, zone
  hysteresis or rules) the deep pass reads back every row from the saved timeline state
  before the first late window up to the rows held, and reruns tracker and rules from
  that state to the latest window (engine.timeline, ``state_horizon_s``): positions and
  rule events are revised. Only sightings older than the raw stream's retention
  (``raw_retention_s``), ``max_lateness_s`` or, on such a site, the state horizon are
  dead-lettered, with that reason. Which windows wait for a deep pass is part of the
  checkpoint.

Delivery: the adapter publishes outputs as they are due; a commit waits for their acks,
then writes the checkpoint (state + the stream sequence it covers) to the JetStream
object store, and only then acks the input messages (in a task, while the loop goes on).
A restarted worker (or another one) loads the checkpoint and resumes at the next stream
sequence; anything at or below it is skipped.
A position's revision is the stream sequence of the newest batch its computation saw, so
revisions only grow, across restarts and workers alike, and the highest is the most
complete.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.contract import SIGHTING_DTYPE, UNKNOWN, IdTable, Sightings, sightings_from_columns
from engine.eventtime import MERGE_MARGIN_S, REVISED_FIX_DTYPE, BatchDedup, GatewayWatermarks
from engine.pipeline import Engine, EngineConfig
from engine.rules.events import json_scalar
from engine.rules.feeder import RuleFeeder
from engine.timeline import EventRevision, RevisedTimeline
from live_bridge.adapters import AdapterError, parse_espresense, parse_theengs
from live_bridge.backbone import (
    CHECKPOINT_BUCKET,
    MAX_BATCH_BYTES,
    PullFeed,
    StreamSettings,
    ensure_streams,
    gateway_of,
    object_get,
    out_stream,
    out_subject,
    raw_stream,
    raw_subject,
    read_stream,
    third_party_filters,
)
from live_bridge.server import KeysWatch, positions_payloads
from live_bridge.wire import Advert, DeadLetter, WireError, verify_signed
from live_bridge.wire_columns import is_columns, verify_columns

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from numpy.typing import NDArray

    from engine.rules import RuleEngine
    from live_bridge.config import KeyRing

log = logging.getLogger("tagtwin.worker")

Outgoing = tuple[str, bytes]  # subject, payload
SEQ_MASK = 0x7FFFFFFF  # the sighting contract's seq is int32
# An output message's size cap: the streams refuse messages over MAX_BATCH_BYTES, and a
# busy site's window of positions (or a burst of rule events) is larger than that.
MAX_OUTPUT_BYTES = MAX_BATCH_BYTES // 2
# 2: the rows are referred to by stream sequence, not copied; 3: saved timeline states packed
# (engine.timeline.dump_states), the stored blob zlib-compressed (restore reads either).
CHECKPOINT_VERSION = 3
THIRD_PARTY = ("theengs", "espresense")


@dataclass(frozen=True)
class WorkerSettings:
    site: str = "default"
    partition: str = "all"
    max_message_bytes: int = MAX_BATCH_BYTES
    max_skew_s: float = 30.0  # event time may lead the receive clock by this much
    idle_s: float = 5.0  # a gateway silent this long stops holding the watermark
    horizon_s: float = 120.0  # raw rows held in memory; later data is recomputed from the stream
    # A tracked or ruled site keeps saved tracker/rules states (thinned) this far back: late
    # data up to it is rerun from the stream; older rows are dead-lettered.
    state_horizon_s: float = 1800.0
    raw_retention_s: float = 7 * 86400.0  # the raw stream's max age: older rows cannot be read back
    max_lateness_s: float | None = None  # dead-letter rows later than this behind their receive time
    deep_settle_s: float = 1.0  # late data beyond the horizon is recomputed once it pauses this long ...
    deep_max_wait_s: float = 10.0  # ... or this long after the first of it, whichever first
    # During a total silence (every gateway idle) the rules' clock runs on the receive
    # clock, at most this far past the newest sighting (None: half the horizon, so the
    # spool replay of the silent period can still be placed and revise what it decided).
    idle_rules_reach_s: float | None = None
    adapters: tuple[str, ...] = ()  # third-party formats taken from the MQTT listener: theengs, espresense
    theengs_base: str = "home"  # Theengs Gateway's base topic: <base>/<gateway>/BTtoMQTT/<MAC>
    espresense_root: str = "espresense"  # ESPresense's root topic: <root>/devices/<id>/<room>
    # Compute a window as soon as its rows are in (the site watermark past its end by the
    # merge margin) and hold its outputs until the allowed lateness has passed, when they
    # go out: the close publishes what is ready instead of starting the computation then.
    early_close: bool = True
    max_ack_pending: int = 256  # in-flight batches: the backpressure bound
    fetch_batch: int = 64
    checkpoint_every_s: float = 1.0
    status_every_s: float = 2.0
    ack_wait_s: float = 30.0
    # A spatial partition (live_bridge/cells.py) reads only its cell's gateways' subjects;
    # empty: every subject of the site.
    subjects: tuple[str, ...] = ()
    # A load test multiplies the site's tags into copies <tag>~k (tagtwin/loadgen.py): the
    # registry holds copies k < this too, with their tag's class, as a site that size knows
    # its tags (1: the fleet only; every copy would alarm unknown_tag).
    registered_copies: int = 1

    @property
    def durable(self) -> str:
        return f"engine-{self.site}-{self.partition}"

    @property
    def checkpoint_name(self) -> str:
        return f"{self.site}.{self.partition}"

    def __post_init__(self) -> None:
        object.__setattr__(self, "adapters", tuple(self.adapters))  # JSON settings give a list
        if self.max_lateness_s is not None and self.max_lateness_s < self.horizon_s:
            raise ValueError(f"max_lateness_s {self.max_lateness_s:g} is shorter than the horizon {self.horizon_s:g} s")
        unknown = set(self.adapters) - set(THIRD_PARTY)
        if unknown:
            raise ValueError(f"adapters {sorted(unknown)}: expected some of {', '.join(THIRD_PARTY)}")


class CheckpointVersionError(ValueError):
    """A checkpoint this worker cannot read (written by an older version)."""


@dataclass
class Decoded:
    """One raw message made into rows: its gateway, batch id (signed only) and sightings."""

    gateway: str
    rows: Sightings
    dev_ids: list[str]
    n: int
    epoch: int | None = None  # None: unsigned third-party input, no batch id
    batch_seq: int | None = None


@dataclass
class ReadBack:
    """Raw batches read back from the stream, up to ``through_seq``: a history rebuild after a
    restore, or a deep recomputation. Rows are screened as on first read; a fresh dedup
    drops repeats (a repeat holds the same rows as its original)."""

    purpose: str  # "history" | "deep"
    through_seq: int
    lo: float = -np.inf  # event-time span kept
    hi: float = np.inf
    spans: NDArray[np.float64] | None = None  # deep: only rows in these ranges (n x 2) are kept
    dedup: BatchDedup = field(default_factory=BatchDedup)
    parts: list[Sightings] = field(default_factory=list)
    batches: int = 0


class WorkerCore:
    """Verification, dedup, event time and revised windows for one site partition, no IO."""

    def __init__(
        self, config: EngineConfig, keys: Mapping[str, bytes | tuple[bytes, ...]],
        settings: WorkerSettings | None = None, *, rules: RuleEngine | None = None, devices: IdTable | None = None,
    ) -> None:
        """``rules``: the site's rule engine (tagtwin.live.site_rules), whose registry is
        ``devices`` (a table that starts with the site's fleet); None publishes positions only."""
        self.settings = s = settings or WorkerSettings()
        self.config = config
        self.keys = keys
        self.revoked_gateways: frozenset[str] = frozenset()
        self.revoked_tags: frozenset[str] = frozenset()
        self.engine = Engine(config)
        feeder = None if rules is None else RuleFeeder(rules, step_s=config.step_s)
        self.windows = RevisedTimeline(self.engine, s.horizon_s, feeder, state_horizon_s=s.state_horizon_s)
        self.marks = GatewayWatermarks(s.idle_s, s.max_skew_s)
        self.dedup = BatchDedup()
        self.gateways = IdTable(list(config.gateways.ids))
        self.site_gateways = frozenset(config.gateways.ids)
        self.devices = devices if devices is not None else IdTable()
        self.stream_seq = 0  # the newest stream sequence folded into the state
        self.out_seq = 0  # the newest output-stream sequence of what this worker published
        self.latest_received = -np.inf  # the stream clock: receive time of the newest batch handled
        # Messages the stream still held for this consumer after the newest one handled (its
        # delivery's num_pending): more than 0 means a backlog is being worked off.
        self.stream_pending = 0
        self.first_received = np.inf  # receive time of the stream's first batch (retention check)
        self.counters: Counter[str] = Counter()
        # Which stream sequences hold the rows in memory: per batch, its sequence and its
        # newest row (a batch is forgotten once its newest row falls below the held span).
        self._held_seq: list[int] = []
        self._held_tmax: list[float] = []
        self.history_from = 0  # a restored checkpoint's first sequence to read back (0: none)
        # Windows older than the horizon that late data touched, waiting for a deep pass.
        self.deep: set[int] = set()
        self.deep_first = -np.inf  # receive time of the first and the newest late row waiting
        self.deep_last = -np.inf
        # Batches whose oldest rows were dead-lettered for want of a saved state before them:
        # stream sequence -> the event time below which they were (a read-back drops the same).
        self.floor_cut: dict[int, float] = {}
        # Early close: windows computed, not yet due (their messages; events in order), and
        # the last window whose outputs went out (None: none yet).
        self.held: dict[int, tuple[int, list[Outgoing]]] = {}  # window -> (positions, their messages)
        self.held_events: list[EventRevision] = []
        # The live loop sends a close's positions before it writes that close's events as
        # JSON (a start burst of ~10,000 zone entries takes ~100-200 ms to write): True makes
        # tick/release_due keep the released events here for event_messages().
        self.defer_event_messages = False
        self.unsent_events: list[tuple[list[EventRevision], float]] = []
        # The live loop also runs a window's rule step after its positions went out (a cold
        # start's burst decides an event for every tag in one step, ~0.3 CPU-s at 17,000
        # tags, which held up the positions of the window due next): True makes tick only
        # localize (engine.timeline advance(defer_rules=True)) and finish_rules run the rules.
        self.defer_rules = False
        self.released_through: int | None = None
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

    def handle(self, subject: str, body: bytes, stream_seq: int, received: float,
               pending: int | None = None) -> list[Outgoing]:
        """One stored batch; returns dead letters. A sequence already covered is skipped.
        ``pending``: the messages the stream held after this one when it was delivered."""
        if pending is not None:
            self.stream_pending = pending
        if stream_seq <= self.stream_seq:
            self.counters["skipped: already in checkpoint"] += 1
            return []
        self.stream_seq = stream_seq
        self.latest_received = max(self.latest_received, received)
        self.first_received = min(self.first_received, received)
        self.counters["messages"] += 1
        try:
            return self._handle(subject, body, received)
        except (WireError, AdapterError) as exc:
            return [self._dead_letter(subject, body, exc.reason, exc.detail, received)]
        except Exception as exc:  # per-message isolation: a bug on one message ends nothing
            log.exception("message %d on %s", stream_seq, subject)
            return [self._dead_letter(subject, body, "internal error", f"{type(exc).__name__}: {exc}"[:300],
                                      received)]

    def _decode(self, subject: str, body: bytes, received: float) -> Decoded:
        """Verified rows of one raw message, or WireError/AdapterError with the reason."""
        if len(body) > self.settings.max_message_bytes:
            raise WireError("oversized", f"{len(body)} bytes > {self.settings.max_message_bytes}")
        gw = gateway_of(subject, self.settings.site)
        if gw is None:
            return self._decode_third_party(subject, body, received)
        if gw in self.revoked_gateways:
            raise WireError("revoked gateway", gw)
        key = self.keys.get(gw)
        if key is None:
            raise WireError("unknown gateway", gw)
        if gw not in self.site_gateways:
            raise WireError("gateway not in site plan", gw)
        if is_columns(body):  # wire version 2: columns straight into numpy (live_bridge/wire_columns.py)
            cb = verify_columns(body, gw, key)
            n = len(cb.t)
            aseq = np.asarray(cb.aseq, np.int64)
            rows = sightings_from_columns(
                t=np.asarray(cb.t, float), gateway=self.gateways.code(gw), device=self.devices.codes(cb.dev),
                rssi=np.asarray(cb.rssi, np.float32), channel=np.asarray(cb.ch, np.uint8),
                battery=np.asarray(cb.bat, np.int8), motion=np.asarray(cb.mot, np.int8),
                seq=np.where(aseq >= 0, aseq & SEQ_MASK, UNKNOWN).astype(np.int32),
            )
            return Decoded(gw, rows, list(cb.dev), n, cb.ep, cb.seq)
        batch = verify_signed(body, gw, key)
        return Decoded(gw, self._rows_of(gw, batch.ads), [a.dev for a in batch.ads], len(batch.ads),
                       batch.ep, batch.seq)

    def _decode_third_party(self, subject: str, body: bytes, received: float) -> Decoded:
        """Theengs or ESPresense JSON from the MQTT listener: unsigned, so only from gateways
        the site file lists; the stream's receive time is the event time."""
        s = self.settings
        topic = subject.replace(".", "/")
        if "theengs" in s.adapters and subject.startswith(f"{s.theengs_base}.") and ".BTtoMQTT." in subject:
            gw, ads = parse_theengs(topic, body, received)
        elif "espresense" in s.adapters and subject.startswith(f"{s.espresense_root}.devices."):
            gw, ads = parse_espresense(topic.replace(s.espresense_root, "espresense", 1), body, received)
        else:
            raise WireError("unexpected subject", subject[:120])
        if gw in self.revoked_gateways:
            raise WireError("revoked gateway", gw[:64])
        if gw not in self.site_gateways:
            raise WireError("gateway not in site plan", gw[:64])
        return Decoded(gw, self._rows_of(gw, ads), [a.dev for a in ads], len(ads))

    def _rows_of(self, gw: str, ads: list[Advert]) -> Sightings:
        n = len(ads)
        return sightings_from_columns(
            t=np.fromiter((a.t for a in ads), float, n),
            gateway=self.gateways.code(gw),
            device=self.devices.codes([a.dev for a in ads]),
            rssi=np.fromiter((a.rssi for a in ads), np.float32, n),
            channel=np.fromiter((a.ch for a in ads), np.uint8, n),
            battery=np.fromiter((UNKNOWN if a.bat is None else a.bat for a in ads), np.int8, n),
            motion=np.fromiter((UNKNOWN if a.mot is None else a.mot for a in ads), np.int8, n),
            seq=np.fromiter((UNKNOWN if a.seq is None else a.seq & SEQ_MASK for a in ads), np.int32, n),
        )

    def _screen(self, d: Decoded, received: float) -> tuple[Sightings, int, int]:
        """The rows kept: revoked tags' and future sightings removed (as many returned)."""
        rows = d.rows
        revoked_n = 0
        if self.revoked_tags:
            revoked = np.isin(np.asarray(d.dev_ids, dtype=object), list(self.revoked_tags))
            revoked_n = int(revoked.sum())
            rows = rows[~revoked]
        future = self.marks.future(rows["t"], received)
        return rows[~future], revoked_n, int(future.sum())

    def _handle(self, subject: str, body: bytes, received: float) -> list[Outgoing]:
        d = self._decode(subject, body, received)
        n = d.n
        self.counters["sightings_in"] += n
        if d.epoch is None:
            self.counters["sightings_in: unsigned third-party"] += n
        if d.epoch is not None and not self.dedup.first_time(d.gateway, d.epoch, d.batch_seq or 0):
            self.counters["duplicate_batches"] += 1
            self.counters["duplicates"] += n
            return []
        self.counters["batches"] += 1
        if n == 0:
            return []
        rows, revoked_n, future_n = self._screen(d, received)
        out = []
        if revoked_n:
            self.counters["sightings of revoked tags"] += revoked_n
            out.append(self._dead_letter(subject, body, "revoked tag", f"{revoked_n} of {n} sightings of revoked tags",
                                         received))
        if future_n:
            self.counters["dead_lettered: future event time"] += future_n
            out.append(self._dead_letter(subject, body, "future event time",
                                         f"{future_n} of {n} sightings more than {self.marks.max_skew_s:g} s "
                                         "ahead of the receive time", received))
        beyond, reason = self._beyond_reach(rows["t"], received)
        if beyond.any():
            k = int(beyond.sum())
            self.counters[f"dead_lettered: {reason}"] += k
            out.append(self._dead_letter(subject, body, reason, f"{k} of {n} sightings", received))
            rows = rows[~beyond]
        too_old = self.windows.add(rows)
        if too_old.any():  # behind the horizon: their windows are recomputed from the stream
            self.counters["late beyond horizon: recomputed from stream"] += int(too_old.sum())
            self.deep.update(int(w) for w in self.windows.windows_of(rows["t"][too_old]))
            if not np.isfinite(self.deep_first):
                self.deep_first = received
            self.deep_last = max(self.deep_last, received)
        self.counters["processed"] += len(rows)
        if len(rows):
            self._held_seq.append(self.stream_seq)
            self._held_tmax.append(float(rows["t"].max()))
            self.marks.observe(d.gateway, float(rows["t"].max()), received)
        return out

    @property
    def reruns(self) -> bool:
        """A tracked or ruled site: late data reruns the timeline from a saved state."""
        return self.engine.stateful or self.windows.runs_rules

    def _beyond_reach(self, t: NDArray[np.float64], received: float,
                      seq: int | None = None) -> tuple[NDArray[np.bool_], str]:
        """Rows behind the in-memory horizon that cannot be recomputed: later than
        ``max_lateness_s`` behind their receive time (the site's choice), or so old that the
        raw stream may have dropped their windows' neighbours (a neighbour was received at
        most the allowed skew before the row's time; the stream keeps ``raw_retention_s``,
        and has dropped nothing while its first batch is younger than that)."""
        s = self.settings
        old = t < self.windows.horizon_start()
        late = old & (t < received - (np.inf if s.max_lateness_s is None else s.max_lateness_s))
        expired = self.first_received < received - s.raw_retention_s
        gone = old & expired & (t - self.marks.max_skew_s < received - s.raw_retention_s)
        if self.reruns:
            # A tracker's or the rules' later windows were computed from a state this row would
            # change: it is rerun from a saved state before it, kept back to the state horizon.
            # A read-back drops what the first read dropped: the floor used is kept per batch.
            floor = self.windows.state_floor() if seq is None else self.floor_cut.get(seq, -np.inf)
            beyond = old & (t < floor)
            if seq is None and beyond.any():
                self.floor_cut[self.stream_seq] = floor
            if beyond.any() and not (late | gone).any():
                return beyond, "older than state horizon"
            late |= beyond
        return late | gone, "beyond max lateness" if late.any() else "older than raw retention"

    def loop_clock(self, wall: float, *, got_input: bool, held_back: bool = False) -> float:
        """The receive clock a tick judges idle gateways by. While a backlog is worked off
        the gateways are not silent, the worker is behind: the stream's clock (receive time
        of the newest batch handled) -- when input came, when the stream still held messages
        after the newest one handled, or when the server holds delivery back (``held_back``:
        the ack-pending bound reached while a commit is stored). Only once caught up does
        the wall clock run on, so that a real silence closes what there is. Judged on the
        wall clock while behind, a pause in delivery of more than ``idle_s`` made every
        gateway look idle: the site watermark and the rules' clock jumped ahead to the
        newest sighting plus half the horizon, and every later batch dirtied those windows,
        so that each close reran tens of them (the cold-start backlog that never cleared)."""
        behind = got_input or held_back or self.stream_pending > 0
        if behind and np.isfinite(self.latest_received):
            return self.latest_received
        return wall

    # -- reading the raw stream back ----------------------------------------------------

    def begin_history(self) -> ReadBack | None:
        """After :meth:`restore`: the read-back that rebuilds the held rows (batches from
        ``history_from`` through the checkpoint's sequence), or None if nothing is held."""
        if not self.history_from or self.history_from > self.stream_seq:
            return None
        return ReadBack("history", self.stream_seq, lo=self.windows.prune_start())

    def deep_due(self, now: float) -> ReadBack | None:
        """A deep recomputation, once late data beyond the horizon has paused for
        ``deep_settle_s`` of receive time (or waited ``deep_max_wait_s``); None otherwise.
        Its rows are read from the stream starting at :meth:`deep_start_time`."""
        s = self.settings
        if not self.deep or not (now - self.deep_last >= s.deep_settle_s or now - self.deep_first >= s.deep_max_wait_s):
            return None
        w = self.windows
        if self.reruns:
            # Every row from the saved state before the first late window up to the rows held
            # (those are not read again): the rerun goes from that state to the latest window.
            first = min(self.deep)
            start = w.restart_window(first)
            start = first if start is None else start
            lo = start * w.step - w.window - MERGE_MARGIN_S
            return ReadBack("deep", self.stream_seq, lo=lo, hi=float(np.nextafter(w.prune_start(), -np.inf)))
        spans = w.spans(sorted(self.deep))
        return ReadBack("deep", self.stream_seq, lo=float(spans[0, 0]), hi=float(spans[-1, 1]), spans=spans)

    def deep_start_time(self, rb: ReadBack) -> float:
        """The receive time from which the stream can hold rows of the deep windows: a row's
        event time leads its batch's receive time by at most the allowed skew."""
        return rb.lo - self.marks.max_skew_s

    def read_back(self, rb: ReadBack, subject: str, body: bytes, stream_seq: int, received: float) -> None:
        """One raw batch read back: decoded and screened as on first read, nothing counted."""
        if stream_seq > rb.through_seq:
            return
        try:
            d = self._decode(subject, body, received)
        except (WireError, AdapterError, ValueError):
            return  # dead-lettered on first read
        if d.epoch is not None and not rb.dedup.first_time(d.gateway, d.epoch, d.batch_seq or 0):
            return
        rows, _, _ = self._screen(d, received)
        rows = rows[(rows["t"] >= rb.lo) & (rows["t"] <= rb.hi)]
        if rb.spans is not None and len(rows):  # far-apart deep windows: not the rows between them
            i = np.searchsorted(rb.spans[:, 0], rows["t"], side="right") - 1
            rows = rows[(i >= 0) & (rows["t"] <= rb.spans[np.maximum(i, 0), 1])]
        rows = rows[~self._beyond_reach(rows["t"], received, seq=stream_seq)[0]]
        if len(rows):
            rb.parts.append(rows)
            if rb.purpose == "history":
                self._held_seq.append(stream_seq)
                self._held_tmax.append(float(rows["t"].max()))
        rb.batches += 1

    def end_read_back(self, rb: ReadBack, now: float) -> list[Outgoing]:
        """History: the rows are held again. Deep: the windows are published as revisions
        numbered with the stream sequence the read covered."""
        rows = np.concatenate(rb.parts) if rb.parts else np.zeros(0, SIGHTING_DTYPE)
        self.counters[f"read back: {rb.purpose} batches"] += rb.batches
        if rb.purpose == "history":
            self.windows.add_history(rows)
            self.history_from = 0
            return []
        windows = sorted(self.deep)
        self.deep = set()
        self.deep_first = self.deep_last = -np.inf
        if self.reruns:  # tracker and rules rerun from the state before, positions and events revised
            self.windows.splice(rows, windows[0])
            self.counters["deep recomputations"] += 1
            return self.tick(now)
        fixes = self.windows.recompute(rows, windows, revision=rb.through_seq)
        self.counters["deep recomputations"] += 1
        if self.publish_filter is not None and len(fixes):  # a cell: only its own, decided on the rows read back
            fixes = fixes[self.publish_filter(fixes, rows)]
        if len(fixes) == 0:
            return []
        self.counters["positions"] += len(fixes)
        return self._positions_out(fixes, now)

    # -- output -----------------------------------------------------------------------

    def tick(self, now: float, final: bool = False) -> list[Outgoing]:
        """Close what the site watermark allows, recompute what late data touched; ``final``
        closes everything held (the end of a replay or a test run)."""
        mark = self._site_mark(now, final)
        # Early close: compute every window whose rows are in (the watermark past its end by
        # the merge margin: the rows its last events merge with); publish when it is due.
        early = self.settings.early_close and not final and self.config.allowed_lateness_s > MERGE_MARGIN_S
        horizon = mark + self.config.allowed_lateness_s - MERGE_MARGIN_S if early else mark
        if self.publish_filter is None:
            fixes = self.windows.advance(horizon, revision=self.stream_seq, defer_rules=self.defer_rules and not final)
        else:  # ownership is decided on the rows of the windows just computed, before they are let go
            fixes = self.windows.advance(horizon, revision=self.stream_seq, prune=False)
            if len(fixes):
                fixes = fixes[self.publish_filter(fixes, self.windows.rows)]
            self.windows.prune()
        return self._outputs(*self._release(fixes, self.windows.take_events(), mark, now), now)

    def finish_rules(self, now: float, force: bool = False) -> list[Outgoing]:
        """The rule steps tick deferred (``defer_rules``), once the windows they are for have
        gone out (or ``force``: a checkpoint is due): their events released as tick's are."""
        pending = self.windows.rules_pending
        if pending is None:
            return []
        last = pending.chunks[-1][3] if pending.chunks else None
        if not force and last is not None and (self.released_through is None or last > self.released_through):
            return []
        self.windows.finish_rules()
        no_fixes = np.zeros(0, REVISED_FIX_DTYPE)
        return self._outputs(*self._release(no_fixes, self.windows.take_events(), self._site_mark(now), now), now)

    def release_due(self, now: float) -> list[Outgoing]:
        """Early close: the held outputs of the windows the site watermark closes now,
        computing nothing, so that they go out before the next computation starts (the
        batch that makes a window due usually lets the next one be computed)."""
        if not self.held and not self.held_events:
            return []
        return self._outputs(*self._release(np.zeros(0, REVISED_FIX_DTYPE), [], self._site_mark(now), now), now)

    def _site_mark(self, now: float, final: bool = False) -> float:
        """The site watermark, moved on when nothing more is coming (every gateway idle, or
        ``final``) so that every window holding a sighting closes."""
        mark = self.marks.site_watermark(now)
        if (final or self.marks.all_idle(now)) and self.marks.event:
            # Nothing more is coming: close every window holding a sighting (a late one revises).
            cfg = self.config
            newest = max(self.marks.event.values())
            mark = max(mark, newest + cfg.window_s + cfg.allowed_lateness_s + cfg.step_s)
            if not final and self.windows.runs_rules:
                # The whole site is silent (power cut, network down): the rules' clock runs
                # on the receive clock, window + allowed lateness behind it, so gateway_silent
                # and missing_tag fire during the outage. Empty windows close; the spool
                # replay dirties them and the timeline re-runs them from the state before,
                # retracting what the data contradicts. The site watermark stays put.
                s = self.settings
                reach = s.horizon_s / 2 if s.idle_rules_reach_s is None else s.idle_rules_reach_s
                mark = max(mark, min(self.marks.idle_clock(now), newest + reach) - cfg.window_s)
        return mark

    def _outputs(self, n: int, out: list[Outgoing], events: list[EventRevision], now: float) -> list[Outgoing]:
        """Released positions' messages (``n`` positions) and the events' messages, counted."""
        self.counters["positions"] += n
        if events:
            self.counters["events"] += sum(not e.retracted for e in events)
            self.counters["events retracted"] += sum(e.retracted for e in events)
            if self.defer_event_messages:
                self.unsent_events.append((events, now))
            else:
                out += self._event_messages(events, now)
        return out

    def _event_messages(self, events: list[EventRevision], now: float) -> list[Outgoing]:
        subject = out_subject(self.settings.site, "events")
        return [(subject, body) for body in events_payloads(events, now, MAX_OUTPUT_BYTES)]

    def event_messages(self) -> list[Outgoing]:
        """The messages of the events released since the last call (``defer_event_messages``),
        in the order they were released: the same messages tick/release_due return otherwise."""
        out = [m for events, now in self.unsent_events for m in self._event_messages(events, now)]
        self.unsent_events = []
        return out

    def _release(self, fixes: NDArray[np.void], events: list[EventRevision], mark: float, now: float,
                 ) -> tuple[int, list[Outgoing], list[EventRevision]]:
        """What goes out now: outputs of windows the site watermark closes (end + allowed
        lateness passed) and revisions of windows already out; the rest is held, a window's
        newer computation replacing the one held. Positions are written as messages when
        computed, so a close only sends them: (positions, their messages, events)."""
        step = self.config.step_s
        due = int(np.floor((mark - self.config.allowed_lateness_s) / step + 1e-9)) if np.isfinite(mark) else None
        out_through = self.released_through
        if due is not None and (out_through is None or due > out_through):
            out_through = due
        if out_through is None:
            out_through = -(2**62)
        wins = np.rint(fixes["t"] / step).astype(np.int64) if len(fixes) else np.zeros(0, np.int64)
        for k in np.unique(wins).tolist():  # a window computed again replaces the one held
            part = fixes[wins == k]
            self.held[k] = (len(part), self._positions_out(part, now))
        ready = [self.held.pop(k) for k in sorted(k for k in self.held if k <= out_through)]
        self.held_events += events
        go: list[EventRevision] = []
        # The held events are looked through only when some can have become due (a burst holds
        # ~17,000 of them, and release_due runs after every batch of input).
        if events or self.released_through is None or out_through > self.released_through:
            go = [e for e in self.held_events if round(e.step_t / step) <= out_through]
            if go:
                self.held_events = [e for e in self.held_events if round(e.step_t / step) > out_through]
        if due is not None:
            self.released_through = out_through
        return sum(n for n, _ in ready), [m for _, msgs in ready for m in msgs], go

    def _positions_out(self, fixes: NDArray[np.void], now: float) -> list[Outgoing]:
        """Positions messages of at most MAX_OUTPUT_BYTES each."""
        subject = out_subject(self.settings.site, "positions")
        bodies = positions_payloads(fixes, self.devices, self.config.zones.names, 0.0, now, MAX_OUTPUT_BYTES)
        return [(subject, body) for body in bodies]

    def recall_events(self, payload: bytes) -> None:
        """An events message this worker published after its checkpoint (read back from the
        output stream on restart): the next revision confirms, corrects or retracts it."""
        for e in json.loads(payload).get("events", []):
            self.windows.note_published(str(e["key"]), float(e["window"]),
                                        None if e.get("retracted") else e.get("event"))

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
            "deep_windows_pending": len(self.deep),
            "windows_open": self.windows_open(),
            "closed_through_t": None if self.published_through is None
            else self.published_through * self.config.step_s,
            "computed_through_t": None if self.windows.closed_through is None
            else self.windows.closed_through * self.config.step_s,
        }

    @property
    def published_through(self) -> int | None:
        """The last window whose outputs went out (the last closed one, with early close)."""
        closed = self.windows.closed_through
        if self.released_through is None or closed is None:
            return closed
        return min(closed, self.released_through)

    def windows_open(self) -> int:
        """Windows from the first not yet closed through the last holding a sighting (as of the
        last tick): 0 once every gateway is idle. At a stop they wait in the checkpoint for
        whoever holds the partition next."""
        w = self.windows
        if len(w.rows) == 0:
            return 0
        last = int(w.windows_of(w.rows["t"][-1:]).max())  # rows are in event-time order
        done = self.published_through
        first = int(w.windows_of(w.rows["t"][:1]).min()) if done is None else done + 1
        return max(0, last - first + 1)

    # -- checkpoint ---------------------------------------------------------------------

    def held_from(self) -> int:
        """The first stream sequence whose rows the windows still hold (0: none held)."""
        if not self._held_seq:
            return 0
        seq, tmax = np.asarray(self._held_seq, np.int64), np.asarray(self._held_tmax, float)
        keep = tmax >= self.windows.prune_start()
        self._held_seq, self._held_tmax = seq[keep].tolist(), tmax[keep].tolist()
        return int(seq[keep].min()) if keep.any() else 0

    def _floor_cuts(self) -> list[list[float]]:
        """The state-floor cuts a read-back can still meet: a rerun reads from the oldest
        saved state's window on, so older cuts drop nothing it reads."""
        w = self.windows
        if w.states and not w.chain_complete:
            reach = (min(w.states) + 1) * w.step - w.window - MERGE_MARGIN_S
            self.floor_cut = {q: f for q, f in self.floor_cut.items() if f > reach}
        return [[q, f] for q, f in sorted(self.floor_cut.items())]

    def checkpoint(self) -> bytes:
        """The state and the stream range of the rows held, as JSON: no rows, so its size
        does not grow with the sighting rate. Deferred rule steps must have run
        (:meth:`finish_rules` with ``force``: their events sent before the checkpoint)."""
        if self.windows.rules_pending is not None:
            raise RuntimeError("checkpoint with rule steps pending: finish_rules(force=True), their events sent, first")
        meta, _ = self.windows.snapshot()
        header = {
            "version": CHECKPOINT_VERSION,
            "stream_seq": self.stream_seq,
            "history": {"from_seq": self.held_from(), "through_seq": self.stream_seq},
            "windows": meta,
            "deep": sorted(self.deep),
            "floor_cut": self._floor_cuts(),
            "first_received": self.first_received if np.isfinite(self.first_received) else None,
            "watermarks": self.marks.to_json(),
            "dedup": self.dedup.to_json(),
            "devices": list(self.devices.ids),
            "counters": dict(self.counters),
            "out_seq": self.out_seq,
        }
        timeline: dict[str, object] | None = None
        if self.windows.runs_rules or self.engine.stateful:
            timeline, state = self.windows.snapshot_timeline()
            header["timeline"] = timeline
            header["timeline_state"] = base64.b64encode(state).decode()
        self._unreleased_in_checkpoint(meta, timeline)
        return json.dumps(header, separators=(",", ":")).encode()

    def _unreleased_in_checkpoint(self, windows: dict[str, object], timeline: dict[str, object] | None) -> None:
        """Early close: windows computed but held (not yet due) are written as not handed
        out, so a worker restored from this checkpoint computes and publishes them again:
        marked dirty, their fixes' digests and their events' records dropped."""
        done, computed = self.released_through, self.windows.closed_through
        if done is None or computed is None or computed <= done:
            return
        dirty = {int(k) for k in windows["dirty"]}  # type: ignore[attr-defined]
        windows["dirty"] = sorted(dirty | set(range(done + 1, computed + 1)))
        if timeline is not None:
            digests = dict(timeline["digests"])  # type: ignore[call-overload]
            timeline["digests"] = {k: v for k, v in digests.items() if int(k) <= done}
            published = dict(timeline["published"])  # type: ignore[call-overload]
            timeline["published"] = {key: v for key, v in published.items() if int(v[0]) <= done}

    def restore(self, blob: bytes) -> None:
        """State from a checkpoint (as :meth:`checkpoint` wrote it, or zlib-compressed as the
        worker stores it); the held rows come back with :meth:`begin_history`."""
        try:
            header = json.loads(checkpoint_bytes(blob).partition(b"\n")[0])
        except (ValueError, zlib.error):
            header = {}
        if not isinstance(header, dict) or header.get("version") != CHECKPOINT_VERSION:
            version = header.get("version") if isinstance(header, dict) else None
            raise CheckpointVersionError(f"checkpoint version {version!r}, expected {CHECKPOINT_VERSION}")
        self.stream_seq = int(header["stream_seq"])
        self.windows.restore(dict(header["windows"]), np.zeros(0, SIGHTING_DTYPE))
        self.marks = GatewayWatermarks.from_json(dict(header["watermarks"]))
        self.dedup = BatchDedup.from_json(dict(header["dedup"]))
        saved = list(header["devices"])
        if saved[: len(self.devices)] != self.devices.ids[: len(saved)]:
            raise ValueError("checkpoint device table does not start with this worker's registry")
        for dev in saved[len(self.devices):]:  # in place: the rules' registry is this list
            self.devices.code(str(dev))
        self.counters = Counter(dict(header["counters"]))
        self.out_seq = int(header.get("out_seq", 0))
        self.history_from = int(header["history"]["from_seq"])
        self._held_seq, self._held_tmax = [], []
        self.deep = {int(w) for w in header["deep"]}
        self.floor_cut = {int(q): float(f) for q, f in header.get("floor_cut", [])}
        first = header["first_received"]
        self.first_received = np.inf if first is None else float(first)
        if self.deep:  # a deep pass was waiting: run it as soon as the worker is back
            self.deep_first = self.deep_last = -np.inf
        if "timeline" in header:  # after the rows come back, the next close recomputes from it
            self.windows.restore_timeline(dict(header["timeline"]), base64.b64decode(str(header["timeline_state"])))


def checkpoint_bytes(stored: bytes) -> bytes:
    """A checkpoint as :meth:`WorkerCore.checkpoint` wrote it, from the bytes in the object
    store (zlib-compressed by the worker; a JSON one is returned as it is)."""
    return stored if stored[:1] == b"{" else zlib.decompress(stored)


def events_payloads(events: list[EventRevision], now: float, max_bytes: int | None) -> list[bytes]:
    """Rule events as published on ``tagtwin.v1.<site>.events`` (docs/reliability.md, "Rule
    events"): per event its identity ``key``, the ``window`` (end time) that decided it, the
    revision ``rev`` and the ``event`` (engine.rules Event as a dict), or ``retracted``. Cut
    into messages of at most ``max_bytes`` (None: one), events in their order: a burst
    (every tag of a large site entering its zone at start) can pass the backbone's limit."""
    # The event's text as the timeline wrote it (keys sorted at every level, compact); the
    # envelope's keys in this order.
    records = [
        json.dumps({"key": e.key, "window": round(e.step_t, 3), "rev": e.revision, "retracted": True},
                   separators=(",", ":")) if e.text is None
        else f'{{"key":{json_scalar(e.key)},"window":{json_scalar(round(e.step_t, 3))},"rev":{json_scalar(e.revision)},'
             f'"event":{e.text}}}'
        for e in events
    ]
    head = json.dumps({"v": 1, "t": now}, separators=(",", ":"))[:-1] + ',"events":['
    room = None if max_bytes is None else max_bytes - len(head) - 2
    out: list[bytes] = []
    part: list[str] = []
    size = 0
    for r in records:
        n = (len(r) if r.isascii() else len(r.encode())) + 1
        if part and room is not None and size + n > room:
            out.append((head + ",".join(part) + "]}").encode())
            part, size = [], 0
        part.append(r)
        size += n
    out.append((head + ",".join(part) + "]}").encode())
    return out


def warm_up(core: WorkerCore, seconds: float = 8.0) -> float:
    """Run a throwaway core (built like the real one, never used again) over a few seconds
    of made-up traffic, every gateway hearing two tags, through handle and every window's
    close: the compiled kernels load and the lazy imports happen here, not in the first
    live close (which otherwise takes ~100 ms more). Returns the seconds it took."""
    from live_bridge.wire_columns import encode_columns

    started = time.perf_counter()
    t0 = 1_000_000_000.0
    seq = 0
    for k in range(int(seconds * 4)):
        sent = t0 + (k + 1) * 0.25
        for g, gw in enumerate(core.config.gateways.ids):
            key = core.keys.get(gw)
            if key is None:
                continue
            key = key[0] if isinstance(key, tuple) else key
            t = sent - 0.25 + np.array([0.05, 0.1, 0.15])
            # warm-up-1's event heard on two channels: the channel merge's kernels load too
            body = encode_columns(gw, k, 1, sent, t, ["warm-up-1", "warm-up-2", "warm-up-1"],
                                  np.array([-60.0 - g, -70.0 - g, -61.0 - g]), np.array([37, 38, 39]),
                                  np.array([-1, 90, -1]), np.array([-1, 0, -1]), np.array([k, k, k]), key)
            seq += 1
            core.handle(raw_subject(core.settings.site, gw), body, seq, sent)
        core.tick(sent)
    core.tick(t0 + seconds, final=True)
    return time.perf_counter() - started


# -- the NATS adapter -------------------------------------------------------------------------


async def open_partition(js: JetStreamContext, core: WorkerCore, streams: StreamSettings | None = None) -> object:
    """Streams ensured, checkpoint loaded, durable consumer placed at the sequence after it.

    The checkpoint is the truth about progress, so the consumer is (re)created to start
    right after it: a worker taking a partition over never waits for another's ack timeout.
    """
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ObjectStoreConfig, StorageType

    s = core.settings
    third_party = third_party_filters(s.adapters, s.theengs_base, s.espresense_root)
    await ensure_streams(js, s.site, streams, extra_subjects=third_party)
    with contextlib.suppress(Exception):  # exists already
        await js.create_object_store(CHECKPOINT_BUCKET, config=ObjectStoreConfig(
            storage=StorageType.FILE, replicas=(streams or StreamSettings()).replicas))
    blob = await object_get(js, CHECKPOINT_BUCKET, s.checkpoint_name)
    if blob is not None:
        try:
            core.restore(blob)
        except CheckpointVersionError as exc:
            # The raw log is the truth: rebuild the state from the stream's first batch (the
            # dedup state comes back with it; revisions are the same sequences again).
            log.warning("%s: rebuilding the partition's state from the raw stream", exc)
            core.counters["checkpoint unreadable: rebuilt from the stream"] += 1
            blob = None
    if blob is not None:
        rb = core.begin_history()
        if rb is not None:  # the held rows, read back from the raw log
            async for m in read_stream(js, raw_stream(s.site), start_seq=core.history_from, through_seq=rb.through_seq,
                                       subjects=s.subjects):
                core.read_back(rb, m.subject, m.data, m.metadata.sequence.stream, m.metadata.timestamp.timestamp())
            core.end_read_back(rb, time.time())
        log.info("resumed from checkpoint at stream seq %d", core.stream_seq)
        if core.windows.runs_rules:
            recalled = await _recall_events(js, core)
            core.counters["events messages recalled after restart"] += recalled
    with contextlib.suppress(Exception):
        await js.delete_consumer(raw_stream(s.site), s.durable)
    # No filter but a cell's: the raw stream holds the site's signed subjects and its third-party topics.
    await js.add_consumer(raw_stream(s.site), ConsumerConfig(
        durable_name=s.durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=core.stream_seq + 1, max_ack_pending=s.max_ack_pending, ack_wait=s.ack_wait_s,
        filter_subjects=list(s.subjects) or None,
        max_deliver=-1,
    ))
    return await js.pull_subscribe_bind(s.durable, raw_stream(s.site))


class LoopClock:
    """Wall time the worker's loop spends per stage (waiting for input, handling it,
    closing windows, committing), totals and the longest, since the last status: where a
    window's close-to-position time goes, published with the status. Also the slowest
    iteration since the last status, with what the loop did in it (windows computed,
    positions out, checkpoint taken, deep pass, Python's garbage collector): the load
    test lines it up with the windows whose positions came late."""

    STAGES = ("wait", "handle", "close", "publish", "commit")

    def __init__(self) -> None:
        self.gc_s = 0.0  # garbage-collector pauses, summed (gc.callbacks)
        self._gc_start = 0.0
        self.reset()

    def reset(self) -> None:
        self.total: dict[str, float] = dict.fromkeys(self.STAGES, 0.0)
        self.longest: dict[str, float] = dict.fromkeys(self.STAGES, 0.0)
        self.closes = 0
        self.checkpoints = 0
        self.slowest: dict[str, object] | None = None

    def add(self, stage: str, seconds: float) -> None:
        self.total[stage] += seconds
        self.longest[stage] = max(self.longest[stage], seconds)

    def iteration(self, stages: dict[str, float], **did: object) -> None:
        """One pass of the loop (stage -> seconds) and what it did: kept if the slowest."""
        busy = sum(v for k, v in stages.items() if k != "wait")
        if self.slowest is None or busy * 1000 > float(self.slowest["ms"]):  # type: ignore[arg-type]
            self.slowest = {"ms": round(busy * 1000, 1), "t": round(time.time(), 3),
                            "stages": {k: round(v * 1000, 1) for k, v in stages.items()}, **did}

    def on_gc(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        elif self._gc_start:
            self.gc_s += time.perf_counter() - self._gc_start
            self._gc_start = 0.0

    def take(self) -> dict[str, object]:
        out: dict[str, object] = {k: {"total": round(self.total[k] * 1000, 1), "max": round(self.longest[k] * 1000, 1)}
                                  for k in self.STAGES}
        out["closes"] = self.closes
        out["checkpoints"] = self.checkpoints
        if self.slowest is not None:
            out["slowest"] = self.slowest
        self.reset()
        return out


class Outputs:
    """Outputs published without waiting for their acks, so that the loop goes back to its
    input while the stream stores them; a commit takes those sent so far and
    :meth:`settle` waits for every ack before the checkpoint (sending again what was
    refused), keeping the order outputs, checkpoint, input acks."""

    def __init__(self, js: JetStreamContext, core: WorkerCore) -> None:
        self.js = js
        self.core = core
        self.inflight: list[tuple[Outgoing, asyncio.Future[object]]] = []

    def send(self, items: list[Outgoing]) -> None:
        for item in items:
            self.inflight.append((item, asyncio.ensure_future(self.js.publish(item[0], item[1], timeout=10))))

    def take(self) -> list[tuple[Outgoing, asyncio.Future[object]]]:
        """The publishes in flight, for the commit that covers them."""
        out, self.inflight = self.inflight, []
        return out

    async def settle(self, sent: list[tuple[Outgoing, asyncio.Future[object]]]) -> None:
        """Every output of ``sent`` acknowledged, the newest output sequence noted; refused
        ones are sent again (the next commit waits for them) and the first refusal raised."""
        if not sent:
            return
        results = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        failed = [item for (item, _), r in zip(sent, results, strict=True) if isinstance(r, BaseException)]
        seqs = [int(r.seq) for r in results if not isinstance(r, BaseException)]  # type: ignore[attr-defined]
        self.core.out_seq = max([self.core.out_seq, *seqs])
        if failed:
            self.send(failed)
            raise next(r for r in results if isinstance(r, BaseException))


@dataclass
class CheckpointSchedule:
    """When :func:`run_worker` takes a checkpoint, on its monotonic clock: right after a
    close once ``every_s`` less half a step has passed since the last one (closes come a
    step apart, so waiting for the whole interval would often wait a step more), else when
    overdue (twice the interval with no close) or when the input awaiting its ack reaches
    half the backpressure bound. The rule steps a close deferred do not put it off: the
    checkpoint runs them (their events are held until their windows are due, as ever). With
    early close the next window's are pending at every close, so waiting for none pending
    left every checkpoint to the overdue path, at twice the interval."""

    every_s: float
    step_s: float
    max_ack_pending: int
    last: float

    def due(self, now: float, *, closed: bool, unacked: int) -> bool:
        since = now - self.last
        if since >= 2 * self.every_s or unacked >= self.max_ack_pending // 2:
            return True
        return closed and since >= self.every_s - self.step_s / 2

    def taken(self, now: float) -> None:
        self.last = now


class Commits:
    """Checkpoints stored while the loop goes on: the state is serialized at once (it covers
    the input handled so far and the outputs sent so far), then in a task the outputs'
    acks are awaited, the checkpoint stored and the input acked, in that order. One at a
    time; a refused one hands its input back to the next (which covers it, later)."""

    def __init__(self, outputs: Outputs, obs: object, core: WorkerCore) -> None:
        self.outputs = outputs
        self.obs = obs
        self.core = core
        self.task: asyncio.Task[None] | None = None
        self.acks_pending = 0  # input messages the commit in progress will ack

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self, unacked: list[Msg]) -> None:
        """Commit what ``unacked`` holds (emptied; refilled if the commit is refused)."""
        blob = self.core.checkpoint()
        batch = unacked[:]
        unacked.clear()
        self.acks_pending = len(batch)
        self.task = asyncio.create_task(self._store(self.outputs.take(), blob, batch, unacked))

    async def _store(self, sent: list[tuple[Outgoing, asyncio.Future[object]]], blob: bytes, batch: list[Msg],
                     unacked: list[Msg]) -> None:
        try:
            # Compressed off the loop (zlib lets go of the GIL): the JSON of what was handed out
            # and the device table shrink ~4x, so fewer chunks are synced to disk per commit.
            blob = await asyncio.to_thread(zlib.compress, blob, 1)
            self.core.counters["checkpoint bytes (last)"] = len(blob)
            await self.outputs.settle(sent)
            await self.obs.put(self.core.settings.checkpoint_name, blob)  # type: ignore[attr-defined]
        except Exception as exc:  # refused: the next commit covers these messages
            self.core.counters[f"commit retried: {type(exc).__name__}"] += 1
            log.warning("commit failed, will retry: %s", exc)
            unacked[:0] = batch
            self.acks_pending = 0
            return
        for m in batch:
            await m.ack()
        self.acks_pending = 0

    async def wait(self) -> None:
        if self.task is not None:
            with contextlib.suppress(Exception):
                await self.task
            self.task = None


async def run_worker(
    core: WorkerCore, nc: Client, stop: asyncio.Event, *, streams: StreamSettings | None = None,
    ready: asyncio.Event | None = None, on_status: Callable[[dict[str, object]], None] | None = None,
    keys_path: Path | None = None,
) -> None:
    """Consume, compute, publish, checkpoint, ack; until ``stop``. Survives backbone restarts.
    ``on_status`` sees each status the worker publishes (a command prints a line of it).
    With ``keys_path`` the keys file is re-read when it changes: rotation and revocation
    take effect within a second, with no restart.

    The loop never waits on the backbone while there is work: input keeps arriving during
    a close (:class:`live_bridge.backbone.PullFeed`), outputs go out without waiting for
    their acks (:class:`Outputs`), and a checkpoint is taken right after a close's outputs
    went out -- the next close is a step away -- or when overdue (:class:`CheckpointSchedule`),
    and stored while the loop goes on (:class:`Commits`). With early close (``WorkerSettings.early_close``) a
    window is computed once its rows are in and its outputs wait for its close."""
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
    # What exists now (modules, compiled kernels, the warm-up, the restored state) lives as
    # long as the worker: out of the collector's sight, so that a full collection (which
    # walked ~180,000 such objects: 165 ms, 376 ms at load 9, in the middle of a close)
    # looks only at what the loop makes.
    gc.collect()
    gc.freeze()
    obs = await js.object_store(CHECKPOINT_BUCKET)
    feed = await PullFeed(nc, raw_stream(s.site), s.durable, batch=min(s.fetch_batch, s.max_ack_pending)).start()
    outputs = Outputs(js, core)
    core.defer_event_messages = True  # positions out first, then the events' JSON (event_messages)
    core.defer_rules = True  # a window's rule step after its positions (finish_rules)
    commits = Commits(outputs, obs, core)
    clock = LoopClock()
    gc.callbacks.append(clock.on_gc)
    if ready is not None:
        ready.set()
    unacked: list[Msg] = []
    outbox: list[Outgoing] = []
    schedule = CheckpointSchedule(s.checkpoint_every_s, core.config.step_s, s.max_ack_pending, time.monotonic())
    published = False  # outputs out since the last checkpoint

    def send_events() -> bool:
        """The rule events of what was just sent, written as JSON once positions are out."""
        events_out = core.event_messages()
        if events_out:
            outputs.send(events_out)
        return bool(events_out)

    async def release(now: float) -> bool:
        """Held outputs the site watermark made due: positions sent and written to the socket,
        then their events. True if anything went out."""
        due = core.release_due(now)
        if due:
            outputs.send(due)
            await asyncio.sleep(0)
            await nc.flush(timeout=5)
        return send_events() or bool(due)
    next_status = time.monotonic()
    keys_watch = KeysWatch(keys_path) if keys_path is not None else None
    try:
        while not stop.is_set():
            if keys_watch is not None:
                keys_watch.poll(core)
            try:
                t0 = time.monotonic()
                gc0, computed0 = clock.gc_s, core.windows.closed_through
                msgs = await feed.take(timeout=0.2)
                t1 = time.monotonic()
                positions = core.counters["positions"]  # (released between the messages too)
                for i, m in enumerate(msgs, 1):
                    md = m.metadata
                    outbox += core.handle(m.subject, m.data, md.sequence.stream, md.timestamp.timestamp(),
                                          pending=md.num_pending)
                    unacked.append(m)
                    # A window this batch made due goes out now, not after the rest of the fetch
                    # (up to a second of traffic when catching up): judged on the stream's clock,
                    # as the loop's own release below.
                    if i < len(msgs) and (core.held or core.held_events) \
                            and await release(core.loop_clock(time.time(), got_input=True)):
                        published = True
                t2 = time.monotonic()
                # Idle gateways are judged on the stream's clock while a backlog is being worked
                # off (the worker is behind, the gateways are not silent), on the wall clock once
                # caught up (nothing more arrives: close what there is).
                now = core.loop_clock(time.time(), got_input=bool(msgs),
                                      held_back=len(unacked) + commits.acks_pending >= s.max_ack_pending)
                outbox += core.release_due(now)
                if outbox:  # what is due goes out before the next window is computed
                    outputs.send(outbox)
                    outbox = []
                    published = True
                    await asyncio.sleep(0)  # the publishes queued for the socket ...
                    await nc.flush(timeout=5)  # ... and written before the loop computes again
                if send_events():
                    published = True
                # The rule steps of windows that went out (the next tick would run them anyway).
                outbox += core.finish_rules(now)
                if send_events():
                    published = True
                outbox += core.tick(now)
                positions_released = core.counters["positions"] - positions
                rb = core.deep_due(now)
                if rb is not None:  # late data beyond the horizon: its windows from the raw log
                    async for m in read_stream(js, raw_stream(s.site), start_time=core.deep_start_time(rb),
                                               through_seq=rb.through_seq, subjects=s.subjects):
                        core.read_back(rb, m.subject, m.data, m.metadata.sequence.stream,
                                       m.metadata.timestamp.timestamp())
                    outbox += core.end_read_back(rb, now)
                closed = core.counters["positions"] > positions
                t3 = time.monotonic()
                if outbox:  # out as soon as computed; acknowledged before the checkpoint
                    outputs.send(outbox)
                    outbox = []
                    published = True
                    await asyncio.sleep(0)  # the publishes written to the socket now
                if send_events():
                    published = True
                t4 = time.monotonic()
                checkpointed = False
                if (unacked or published or outputs.inflight) and not commits.busy \
                        and schedule.due(t4, closed=closed, unacked=len(unacked)):
                    if core.windows.rules_pending is not None:  # deferred rule steps run now (events held till due)
                        outputs.send(core.finish_rules(now, force=True))
                        send_events()
                        published = True
                    commits.start(unacked)  # outputs of a tick with no new input (idle close) too
                    published = False
                    schedule.taken(time.monotonic())
                    checkpointed = True
                t5 = time.monotonic()
                computed1 = core.windows.closed_through
                clock.iteration(
                    {"wait": t1 - t0, "handle": t2 - t1, "close": t3 - t2, "publish": t4 - t3, "commit": t5 - t4},
                    msgs=len(msgs), windows_computed=0 if computed1 is None else computed1 - (computed0 or computed1),
                    computed_through_t=None if computed1 is None else computed1 * core.config.step_s,
                    positions_released=positions_released, positions_after=core.counters["positions"] - positions,
                    deep=rb is not None, checkpoint=checkpointed, gc_ms=round((clock.gc_s - gc0) * 1000, 1),
                    behind=core.stream_pending)
                clock.add("wait", t1 - t0)
                clock.add("handle", t2 - t1)
                clock.add("close", t3 - t2)
                clock.add("publish", t4 - t3)
                clock.add("commit", t5 - t4)
                clock.closes += closed
                clock.checkpoints += checkpointed
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + s.status_every_s
                    status = await _publish_status(nc, sub, core, loop=clock.take())
                    if on_status is not None:
                        on_status(status)
            except Exception as exc:  # publish/checkpoint refused: keep state, retry next round
                core.counters[f"commit retried: {type(exc).__name__}"] += 1
                log.warning("commit failed, will retry: %s", exc)
                await asyncio.sleep(0.25)
        # Stopping: what is computed gets published and covered, so a restart repeats nothing.
        with contextlib.suppress(Exception):
            await commits.wait()
            outbox += core.tick(time.time())
            outbox += core.finish_rules(time.time(), force=True)
            outbox += core.event_messages()
            if outbox:
                outputs.send(outbox)
            if unacked or published or outputs.inflight:  # an idle close published since the last checkpoint too
                commits.start(unacked)
                await commits.wait()
            await _publish_status(nc, sub, core, state="offline")
    finally:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(clock.on_gc)
        await feed.stop()


async def _recall_events(js: JetStreamContext, core: WorkerCore) -> int:
    """Events this worker published after its checkpoint (a crash between publishing and
    checkpointing): read back from the output stream, so the next revision can retract
    any the restarted computation does not decide again. Returns how many messages."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    s = core.settings
    subject = out_subject(s.site, "events")
    info = await js.stream_info(out_stream(s.site))
    if int(info.state.last_seq or 0) <= core.out_seq:
        return 0
    sub = await js.pull_subscribe(subject, stream=out_stream(s.site), config=ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=core.out_seq + 1,
        inactive_threshold=30.0))
    n = 0
    try:
        while True:
            try:
                msgs = await sub.fetch(256, timeout=0.5)
            except Exception:  # a fetch timeout: nothing more
                break
            for m in msgs:
                core.recall_events(m.data)
                n += 1
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return n


async def _publish_status(nc: Client, sub: object, core: WorkerCore, state: str = "online",
                          loop: dict[str, object] | None = None) -> dict[str, object]:
    lag: dict[str, int] = {}
    with contextlib.suppress(Exception):
        info = await sub.consumer_info()  # type: ignore[attr-defined]
        lag = {"pending": int(info.num_pending or 0), "ack_pending": int(info.num_ack_pending or 0)}
    body = core.status() | {"state": state, "t": time.time(), "lag": lag}
    if loop is not None:  # wall ms per stage of the loop since the last status (LoopClock)
        body["loop_ms"] = loop
    await nc.publish(out_subject(core.settings.site, "status"), json.dumps(body, default=str).encode())
    return body

