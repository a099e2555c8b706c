"""Event time that survives outages: per-gateway watermarks, batch dedup, revised windows.

Sans-IO like the rest of the engine: no clock is read here, the caller passes receive
times (the backbone passes the time the stream stored a batch, so a replay from the
stream decides exactly as the first pass did).

State transitions, all in this module:

* :class:`GatewayWatermarks` -- each gateway's watermark is the newest event time it
  sent. The site watermark is the *minimum* over active gateways, so the first gateway
  to drain a spool cannot push windows shut under the others; a gateway that has sent
  nothing for ``idle_s`` of receive time stops holding the watermark back (idle
  handling, as in Flink's ``withIdleness``), and holds it again when it speaks. The site
  watermark never goes backwards. A sighting stamped more than ``max_skew_s`` after its
  batch was received is *future*: the caller dead-letters it and it never moves a
  watermark (one bad clock cannot make every good sighting late).
* :class:`BatchDedup` -- a batch is identified by (gateway, boot epoch, batch seq); the
  recent ids of each (gateway, epoch) are remembered in arrival order, so a repeat is
  dropped, a re-provisioned gateway (new epoch, seq from 0) is accepted, and a huge seq
  jump locks nobody out (there is no "highest seq" to fall behind).
* :class:`RevisingWindows` -- keeps the raw sightings of the last ``horizon_s`` of event
  time. A window closes when the site watermark passes its end by the allowed lateness
  and is published as revision 0. A sighting that arrives after its windows closed (a
  spool replay after an outage) marks them dirty; the next ``advance`` recomputes them
  from all their raw rows and publishes them again with revision + 1. A window's fixes
  depend only on the *set* of its rows (rows are put in canonical order first), so the
  latest revision equals what a fault-free run computes. Sightings older than the
  horizon are returned to the caller, never dropped silently: the backbone worker reads
  their windows' rows back from the raw stream and calls :meth:`RevisingWindows.recompute`.
  The rows held are exactly the accepted rows at or after :meth:`RevisingWindows.prune_start`,
  so a worker can rebuild them from the raw stream (:meth:`RevisingWindows.add_history`)
  instead of copying them into its checkpoint.
"""

from __future__ import annotations

import bisect
import json
from collections import deque
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np

from engine.contract import SIGHTING_DTYPE, Sightings, compress_rows, concat_rows, take_rows
from engine.ingest import IngestCounters, canonical_order, drop_redeliveries, merge_channels_by_time, with_partners
from engine.pipeline import FIX_DTYPE, WINDOWS_PER_CHUNK

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from engine.pipeline import Engine

REVISED_FIX_DTYPE = np.dtype([*FIX_DTYPE.descr, ("revision", "i4")])
# Channel copies of one advertising event are merged; copies are milliseconds apart, so
# rows this far outside a window's span are read too and every event merges the same way
# whichever windows are computed together.
MERGE_MARGIN_S = 1.0
STORE_FILL = 0.75  # the row store grows when its live rows would fill more than this of it
STORE_GROWTH = 1.5  # and then to this many times the live rows
STORE_MIN_ROWS = 1024


@dataclass
class GatewayWatermarks:
    """Per-gateway event-time watermarks and the site watermark they allow."""

    idle_s: float = 5.0
    max_skew_s: float = 30.0
    event: dict[str, float] = field(default_factory=dict)  # newest event time per gateway
    heard: dict[str, float] = field(default_factory=dict)  # receive time of its last batch
    mark: float = -np.inf  # the site watermark: monotone

    def future(self, t: NDArray[np.float64], received: float) -> NDArray[np.bool_]:
        """Rows stamped beyond the allowed clock skew of their receive time."""
        return np.asarray(t > received + self.max_skew_s)

    def observe(self, gateway: str, t_max: float, received: float) -> None:
        """A batch from ``gateway`` (future rows already removed) arrived at ``received``."""
        self.event[gateway] = max(self.event.get(gateway, -np.inf), t_max)
        self.heard[gateway] = max(self.heard.get(gateway, -np.inf), received)

    def all_idle(self, now: float) -> bool:
        """Every gateway silent for ``idle_s``: nothing more is coming for now."""
        return bool(self.event) and all(now - h > self.idle_s for h in self.heard.values())

    def idle_clock(self, now: float) -> float:
        """The site's event time now, while every gateway is idle (-inf otherwise): the newest
        sighting's time plus the receive time since the newest batch, i.e. the site's clock
        taken to run on at the receive clock's rate through a total silence. Relative to
        the stream's own times, so a gateway clock offset or a replay of old event times
        does not move it by the offset. The rules' clock follows it (live_bridge.worker),
        so silence alarms fire during a site-wide outage; the site watermark does not."""
        if not self.all_idle(now):
            return -np.inf
        return max(self.event.values()) + (now - max(self.heard.values()))

    def site_watermark(self, now: float) -> float:
        """Minimum over gateways heard within ``idle_s`` of ``now``; the maximum if all are
        idle (then nothing more is coming, close what there is). Never decreases."""
        if self.event:
            active = [e for g, e in self.event.items() if now - self.heard[g] <= self.idle_s]
            candidate = min(active) if active else max(self.event.values())
            self.mark = max(self.mark, candidate)
        return self.mark

    def to_json(self) -> dict[str, object]:
        return {"idle_s": self.idle_s, "max_skew_s": self.max_skew_s, "event": self.event,
                "heard": self.heard, "mark": None if not np.isfinite(self.mark) else self.mark}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> GatewayWatermarks:
        mark = d.get("mark")
        return cls(float(d["idle_s"]), float(d["max_skew_s"]),  # type: ignore[arg-type]
                   dict(d["event"]), dict(d["heard"]),  # type: ignore[call-overload]
                   -np.inf if mark is None else float(mark))  # type: ignore[arg-type]


@dataclass
class BatchDedup:
    """Which (gateway, epoch, seq) batches were already taken, remembered in arrival order."""

    remember: int = 8192  # ids per (gateway, epoch): far more than a spool replays twice
    epochs_per_gateway: int = 4
    recent: dict[str, dict[int, deque[int]]] = field(default_factory=dict)
    _sets: dict[tuple[str, int], set[int]] = field(default_factory=dict, repr=False)

    def first_time(self, gateway: str, epoch: int, seq: int) -> bool:
        """True (and remembered) the first time an id is seen; False for a repeat."""
        key = (gateway, epoch)
        seen = self._sets.get(key)
        if seen is None:
            epochs = self.recent.setdefault(gateway, {})
            if len(epochs) >= self.epochs_per_gateway:  # forget the oldest epoch
                old = min(epochs)
                del epochs[old]
                self._sets.pop((gateway, old), None)
            epochs[epoch] = deque()
            seen = self._sets[key] = set()
        if seq in seen:
            return False
        order = self.recent[gateway][epoch]
        order.append(seq)
        seen.add(seq)
        if len(order) > self.remember:
            seen.discard(order.popleft())
        return True

    def to_json(self) -> dict[str, object]:
        """Ids as runs ``[first, count]`` of consecutive seqs in arrival order: a gateway's
        batches mostly arrive in order, so this stays a few numbers whatever the rate."""
        return {"remember": self.remember, "epochs_per_gateway": self.epochs_per_gateway,
                "runs": {g: {str(e): _seq_runs(q) for e, q in eps.items()} for g, eps in self.recent.items()}}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> BatchDedup:
        out = cls(int(d["remember"]), int(d["epochs_per_gateway"]))  # type: ignore[call-overload]
        for g, eps in dict(d["runs"]).items():  # type: ignore[call-overload]
            out.recent[g] = {int(e): deque(q for first, n in runs for q in range(first, first + n))
                             for e, runs in eps.items()}
            for e, q in out.recent[g].items():
                out._sets[(g, e)] = set(q)
        return out


class RevisingWindows:
    """Sliding windows over the raw rows of the last ``horizon_s``, closed by a watermark and
    recomputed (revision + 1) when late rows arrive for windows already published."""

    # Only the dirty windows are recomputed here, so a window's fixes must depend on its own
    # rows alone; engine.timeline.RevisedTimeline runs trackers and rules over every later one.
    STATEFUL = False

    def __init__(self, engine: Engine, horizon_s: float = 300.0) -> None:
        cfg = engine.config
        if engine.stateful and not self.STATEFUL:
            raise ValueError("revised windows need stateless fixes: tracker 'none', no zone hysteresis "
                             "(engine.timeline.RevisedTimeline runs trackers)")
        self.engine = engine
        self.step = cfg.step_s
        self.window = cfg.window_s
        self.lateness = cfg.allowed_lateness_s
        self.per = int(np.ceil(self.window / self.step))
        self.horizon_s = horizon_s
        # The rows, time-sorted, live in _store[_lo:_hi]: rows are appended at the end and
        # pruned from the front without copying the whole horizon at every advance.
        self._store: Sightings = np.zeros(0, SIGHTING_DTYPE)
        self._lo = self._hi = 0
        self._new: list[Sightings] = []
        self.closed_through: int | None = None  # last window index published
        self.events = EventSlices(self.step, MERGE_MARGIN_S)  # merged events, reused across windows
        self.revisions: dict[int, int] = {}
        self.dirty: set[int] = set()

    # -- input ----------------------------------------------------------------------

    def horizon_start(self) -> float:
        """Rows older than this cannot be placed any more (their windows were forgotten)."""
        if self.closed_through is None:
            return -np.inf
        return (self.closed_through + 1) * self.step - self.window - self.horizon_s

    def prune_start(self) -> float:
        """Rows at or after this are held (a margin below the horizon, for merging)."""
        return self.horizon_start() - MERGE_MARGIN_S

    def add(self, rows: Sightings) -> NDArray[np.bool_]:
        """Keep the rows inside the horizon; returns the mask of rows too old to place here
        (their windows are gone from memory: the caller recomputes them from the raw log).
        Rows in the merge margin below the horizon are held too, so that what is held is
        every accepted row from :meth:`prune_start` on, however late it came."""
        too_old = rows["t"] < self.horizon_start()
        self.add_history(compress_rows(rows, too_old))
        keep = compress_rows(rows, ~too_old)
        if len(keep):
            self._new.append(keep)
            if self.closed_through is not None:
                # Only a row before the end of the last closed window can touch it.
                k = self._windows_of(keep["t"][keep["t"] < (self.closed_through + 1) * self.step])
                self.dirty.update(int(w) for w in np.unique(k[k <= self.closed_through]))
        return np.asarray(too_old)

    def add_history(self, rows: Sightings) -> None:
        """Rows read back from the raw log (a restore): held if at or after :meth:`prune_start`,
        marking nothing dirty (their windows were published with them already)."""
        keep = compress_rows(rows, rows["t"] >= self.prune_start())
        if len(keep):
            self._new.append(keep)

    def windows_of(self, t: NDArray[np.float64]) -> NDArray[np.int64]:
        """The distinct windows the given event times fall in."""
        return np.unique(self._windows_of(np.asarray(t, float)))

    def spans(self, windows: list[int]) -> NDArray[np.float64]:
        """The event-time ranges (n x 2, disjoint, in order) of the rows that computing
        ``windows`` reads: windows close together share one range."""
        k = np.asarray(sorted(set(windows)), float)
        lo, hi = k * self.step - self.window - MERGE_MARGIN_S, k * self.step + MERGE_MARGIN_S
        starts = np.r_[True, lo[1:] > hi[:-1]] if len(k) else np.zeros(0, bool)
        ends = np.r_[starts[1:], True] if len(k) else starts
        return np.column_stack([lo[starts], hi[ends]])

    def recompute(self, rows: Sightings, windows: list[int], revision: int) -> NDArray[np.void]:
        """Fixes of ``windows`` computed from ``rows`` (every row of their span, read back from
        the raw log), numbered ``revision``: late data older than the horizon. The rows go to
        a scratch instance, so the rows held here are untouched."""
        scratch = RevisingWindows(self.engine, self.horizon_s)
        scratch.restore({"closed_through": None, "revisions": {}, "dirty": []}, rows)
        out = [scratch._compute(run, revision) for run in _runs(sorted(set(windows)), WINDOWS_PER_CHUNK)]
        for w in windows:
            self.revisions[w] = max(self.revisions.get(w, -1), revision)
        return concat_rows(out, REVISED_FIX_DTYPE)

    def _windows_of(self, t: NDArray[np.float64]) -> NDArray[np.int64]:
        """Every window index each time falls in (flattened): [k*step - window, k*step)."""
        base = np.floor(t / self.step + 1e-12).astype(np.int64) + 1
        k = base[:, None] + np.arange(self.per)[None, :]
        inside = np.repeat(t, self.per).reshape(k.shape) >= k * self.step - self.window
        return k[inside]

    # -- output ---------------------------------------------------------------------

    def advance(self, watermark: float, revision: int | None = None, prune: bool = True) -> NDArray[np.void]:
        """Close the windows the watermark allows and recompute the dirty ones; returns their
        fixes with a ``revision`` column, in window order. Revisions count 0, 1, 2 ... per
        window, or are ``revision`` when given (the backbone passes the stream sequence the
        state covers: it only grows, across restarts too). With ``prune=False`` the rows of
        the windows just computed are still held until :meth:`prune` (a spatial cell decides
        which fixes it owns from them: a close can reach past the horizon)."""
        self._merge_new()
        if not np.isfinite(watermark) or len(self.rows) == 0:
            return np.zeros(0, REVISED_FIX_DTYPE)
        last = int(np.floor((watermark - self.lateness) / self.step + 1e-9))
        first_new = (self.closed_through + 1) if self.closed_through is not None else -(2**62)
        todo = set(self.dirty)
        if last >= first_new:
            # Rows before the first new window's start belong to closed windows only.
            t = self.rows["t"]
            lo, hi = sorted_search(t, [first_new * self.step - self.window, last * self.step])
            k = np.unique(self._windows_of(_last_per_step(t[lo:hi], self.step)))
            todo.update(int(w) for w in k[(k >= first_new) & (k <= last)])
            self.closed_through = last
        self.dirty = set()
        out = [self._compute(run, revision) for run in _runs(sorted(todo), WINDOWS_PER_CHUNK)]
        if prune:
            self._prune()
        return concat_rows(out, REVISED_FIX_DTYPE)

    def _merge_new(self) -> None:
        """The rows added since the last advance joined to the held ones (canonical order)."""
        if self._new:
            new = concat_rows(self._new, SIGHTING_DTYPE)
            self._append(new)
            self.events.invalidate(new["t"])
            self._new = []

    def _compute(self, run: tuple[int, int], revision: int | None) -> NDArray[np.void]:
        k0, k1 = run
        events = self.events.between(self.rows, k0 * self.step - self.window, k1 * self.step)
        fixes = self.engine.localize_events(events, k0, k1)
        out = np.empty(len(fixes), REVISED_FIX_DTYPE)
        for name in FIX_DTYPE.names or ():
            out[name] = fixes[name]
        wins = np.rint(fixes["t"] / self.step).astype(np.int64)
        revs = np.zeros(len(fixes), np.int32)
        for w in range(k0, k1 + 1):
            rev = self.revisions.get(w, -1) + 1 if revision is None else max(revision, self.revisions.get(w, -1))
            self.revisions[w] = rev
            revs[wins == w] = rev
        out["revision"] = revs
        return out

    def prune(self) -> None:
        """Let go of the rows and revisions behind the horizon (after ``advance(prune=False)``)."""
        self._prune()

    def _prune(self) -> None:
        start = self.horizon_start() - MERGE_MARGIN_S
        if len(self.rows) and self.rows["t"][0] < start:
            self._lo += sorted_search(self.rows["t"], [start])[0]
        if self.closed_through is not None:  # steps no window still open reads
            self.events.forget_before((self.closed_through + 1) * self.step - self.window)
        oldest = int(np.floor(self.horizon_start() / self.step))
        for w in [w for w in self.revisions if w < oldest]:
            del self.revisions[w]

    # -- checkpoint -------------------------------------------------------------------

    def snapshot(self) -> tuple[dict[str, object], Sightings]:
        rows = concat_rows([self.rows, *self._new], SIGHTING_DTYPE) if self._new else self.rows
        meta: dict[str, object] = {
            "closed_through": self.closed_through,
            "revisions": {str(k): v for k, v in self.revisions.items()},
            "dirty": sorted(self.dirty),
            "horizon_s": self.horizon_s,
        }
        return meta, rows

    def restore(self, meta: dict[str, object], rows: Sightings) -> None:
        ct = meta["closed_through"]
        self.closed_through = None if ct is None else int(ct)  # type: ignore[call-overload]
        self.revisions = {int(k): int(v) for k, v in dict(meta["revisions"]).items()}  # type: ignore[call-overload]
        self.dirty = {int(k) for k in meta["dirty"]}  # type: ignore[attr-defined]
        self.rows = take_rows(rows, canonical_order(rows))
        self._new = []
        self.events = EventSlices(self.step, MERGE_MARGIN_S)

    # -- the row store ------------------------------------------------------------------

    @property
    def rows(self) -> Sightings:
        """The raw rows held, in canonical order (by event time first; see _append)."""
        return self._store[self._lo:self._hi]

    @rows.setter
    def rows(self, rows: Sightings) -> None:
        self._store = concat_rows([rows], SIGHTING_DTYPE)
        self._lo, self._hi = 0, len(rows)

    def _append(self, new: Sightings) -> None:
        """Merge ``new`` into the rows, kept in canonical order (drop_redeliveries' order:
        time, gateway, device, seq, channel, rssi; arrival order among equal rows), so
        recomputing a window finds its rows already sorted. Only the tail the new rows
        reach is touched: the new rows are sorted on their own and merged into it.

        The buffer keeps its size once the horizon has filled: pruned rows leave room at
        the front, and when the end is reached the live rows move back to the front of the
        same buffer. It grows (by half) only when the live rows would fill more than
        ``STORE_FILL`` of it, and a new buffer is written whole at once, so the process's
        memory is what the buffer holds, not a slow climb as fresh pages are touched."""
        t = self.rows["t"]
        cut = self._lo + sorted_search(t, [new["t"].min()])[0]
        tail = self._store[cut:self._hi]
        new = concat_rows([tail, new], SIGHTING_DTYPE)
        new = take_rows(new, canonical_order(new, sorted_runs=len(tail)))
        if cut + len(new) > len(self._store):
            live = cut - self._lo
            if live + len(new) <= STORE_FILL * len(self._store):  # room at the front: reuse it
                raw = _raw(self._store)
                raw[:live] = raw[self._lo:cut]  # numpy copies overlapping ranges correctly
            else:
                store = np.empty(max(int(STORE_GROWTH * (live + len(new))), STORE_MIN_ROWS), SIGHTING_DTYPE)
                store.view(np.uint8)[live * store.itemsize:] = 0  # touched now, not while it fills
                _raw(store)[:live] = _raw(self._store[self._lo:cut])
                self._store = store
            self._lo, cut = 0, live
        need = cut + len(new)
        _raw(self._store)[cut:need] = _raw(new)
        self._hi = need


class EventSlices:
    """The held rows as events (re-deliveries dropped, channel copies merged, by time), one
    step of event time at a time, each computed once and read by every window over it.

    Step j holds the events whose time (earliest copy) is in [j*step, (j+1)*step), made
    from the rows within ``margin`` of that span, so an event whose copies straddle a
    step boundary merges as it would from any wider span (copies are milliseconds
    apart). Rows added near a step make it stale; it is made again when next read.
    Recomputing every window from its raw rows did this work about six times a row.
    """

    def __init__(self, step: float, margin: float) -> None:
        self.step = step
        self.margin = margin
        self.cached: dict[int, Sightings] = {}

    def invalidate(self, t: NDArray[np.float64]) -> None:
        """Forget the steps whose rows span (``[j*step - margin, (j+1)*step + margin)``) holds
        one of the times ``t``: steps floor((t - margin)/step) .. floor((t + margin)/step),
        widened by a millionth of a step against rounding. One step either side more (as
        before) threw away, at every batch, the step just computed: each window made its
        previous step's events again, twice the merging of a steady close."""
        if not self.cached or len(t) == 0:
            return
        eps = 1e-6
        lo = np.floor((t - self.margin) / self.step - eps).astype(np.int64)
        hi = np.floor((t + self.margin) / self.step + eps).astype(np.int64)
        width = hi - lo  # a few steps at most
        for d in np.unique(width).tolist():
            for a in np.unique(lo[width == d]).tolist():
                for i in range(a, a + d + 1):
                    self.cached.pop(i, None)

    def forget_before(self, t: float) -> None:
        first = int(np.floor(t / self.step))
        for j in [j for j in self.cached if j < first]:
            del self.cached[j]

    def between(self, rows: Sightings, t0: float, t1: float) -> Sightings:
        """Events of the steps covering [t0, t1) from the time-sorted ``rows``."""
        j0, j1 = int(np.floor(t0 / self.step)), int(np.ceil(t1 / self.step)) - 1
        missing = [j for j in range(j0, j1 + 1) if j not in self.cached]
        for a, b in _runs(missing, 1 << 30):
            lo, c0, c1, hi = sorted_search(rows["t"], [a * self.step - self.margin, a * self.step,
                                                       (b + 1) * self.step, (b + 1) * self.step + self.margin])
            span = with_partners(rows[lo:hi], c0 - lo, c1 - lo)  # the margins' rows these merge with
            events, _ = merge_channels_by_time(drop_redeliveries(span, IngestCounters()))
            edges = np.searchsorted(events["t"], np.arange(a, b + 2) * self.step)
            for j, (e0, e1) in zip(range(a, b + 1), pairwise(edges.tolist()), strict=True):
                self.cached[j] = events[e0:e1]
        return concat_rows([self.cached[j] for j in range(j0, j1 + 1)], SIGHTING_DTYPE)


def sorted_search(t: NDArray[np.float64], values: list[float]) -> list[int]:
    """``np.searchsorted(t, values)`` (side left) on the held rows' sorted times without
    copying them: ``rows["t"]`` is a strided view of the structured rows, which
    ``np.searchsorted`` copies whole on every call (55 MB at 7 M rows: 22 ms, several
    times a tick once a busy site's horizon has filled); a bisection reads ~23 of them."""
    return [bisect.bisect_left(t, float(v)) for v in values]


def _raw(rows: Sightings) -> NDArray[np.void]:
    """The rows' bytes as one opaque value each: copied without numpy's per-field loop."""
    return rows.view(np.dtype((np.void, rows.dtype.itemsize)))


def _last_per_step(t: NDArray[np.float64], step: float) -> NDArray[np.float64]:
    """The last of the sorted times ``t`` in each step they fall in: the windows of those
    times are the windows of all of them (a later time in the same step is inside at
    least every window an earlier one is), from one row a step instead of every row."""
    if len(t) == 0:
        return t
    base = np.floor(t / step + 1e-12)
    return t[np.r_[np.flatnonzero(base[1:] != base[:-1]), len(t) - 1]]


def _seq_runs(seqs: deque[int]) -> list[list[int]]:
    """[first, count] runs of +1 steps, in order (the inverse is a flat expansion)."""
    runs: list[list[int]] = []
    for q in seqs:
        if runs and q == runs[-1][0] + runs[-1][1]:
            runs[-1][1] += 1
        else:
            runs.append([q, 1])
    return runs


def _runs(windows: list[int], longest: int) -> list[tuple[int, int]]:
    """Consecutive window indices grouped into (first, last) runs of at most ``longest``."""
    runs: list[tuple[int, int]] = []
    for w in windows:
        if runs and w == runs[-1][1] + 1 and w - runs[-1][0] < longest:
            runs[-1] = (runs[-1][0], w)
        else:
            runs.append((w, w))
    return runs


def snapshot_bytes(meta: dict[str, object], rows: Sightings) -> bytes:
    """One checkpoint blob: a JSON header line, then the rows' raw bytes (SIGHTING_DTYPE)."""
    header = json.dumps({**meta, "n_rows": len(rows), "dtype": str(SIGHTING_DTYPE.descr)}).encode()
    return header + b"\n" + np.ascontiguousarray(rows).tobytes()


def parse_snapshot(blob: bytes) -> tuple[dict[str, object], Sightings]:
    header, _, body = blob.partition(b"\n")
    meta = json.loads(header)
    if meta.pop("dtype") != str(SIGHTING_DTYPE.descr):
        raise ValueError("checkpoint was written with another sighting layout")
    n = int(meta.pop("n_rows"))
    rows = np.frombuffer(body, SIGHTING_DTYPE, count=n).copy()
    return meta, rows
