"""Revised windows with state: trackers, zone hysteresis and rule events on the backbone.

:class:`engine.eventtime.RevisingWindows` recomputes only the windows late rows fall in,
which is right for single-window fixes. A tracker (Kalman, HMM, particle), zone
hysteresis or the rules carry state from one window to the next, so late data in window
k can change every window and rule step after it. :class:`RevisedTimeline` keeps, for the
closed windows inside the revision horizon, a copy of that state after each computed run
of windows (the engine's :meth:`~engine.pipeline.Engine.tracking_state` and the rules'
:meth:`~engine.rules.feeder.RuleFeeder.state`). When late data dirties window k it goes
back to the copy before k, runs the engine and the rules over k..latest again, and hands
out what changed:

* the fixes of every window whose fixes differ from what was last handed out (the whole
  window, each fix with the new revision);
* rule events as :class:`EventRevision` records: each event has an identity (rule, the
  tag, gateway or zone it is about, and its event time) and a revision; an event that
  the new computation no longer decides comes back ``retracted``. A consumer that keeps,
  per identity, the record with the highest revision and drops retracted ones holds the
  event set a run without the late data's delay decides.

The rules work on their own clock, counted from ``origin`` (the whole minute before the
first sighting, minus a minute), as the MQTT server's does; events carry absolute times.
Sans-IO: the caller passes watermarks and revision numbers.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import pickle
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from engine.eventtime import MERGE_MARGIN_S, REVISED_FIX_DTYPE, RevisingWindows, sorted_search
from engine.ingest import IngestCounters, drop_redeliveries
from engine.pipeline import FIX_DTYPE, WINDOWS_PER_CHUNK
from engine.rules.events import ListSink, clean, events_json

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from engine.contract import Sightings
    from engine.pipeline import Engine
    from engine.rules.events import Event
    from engine.rules.feeder import RuleFeeder

STATE_EVERY = 8  # windows: one saved state per this many, beyond the newest ones
# Evidence a published event leaves out: a device's code is the order this worker first heard it in.
DROPPED_EVIDENCE = frozenset({"device_code"})
ORIGIN_GRID_S = 60.0  # the rules' clock starts on a whole minute, one minute before the first row


@dataclass(frozen=True)
class EventRevision:
    """One rule event as published: its identity, the window step that decided it (end of
    that window, absolute time), the revision, and the event's record as compact JSON with
    its keys sorted at every level (:func:`engine.rules.events.event_json`; None: retracted),
    written once when the event is decided and copied into the messages as it is."""

    key: str
    step_t: float
    revision: int
    text: str | None

    @property
    def retracted(self) -> bool:
        return self.text is None

    @property
    def event(self) -> dict[str, object] | None:
        """The record as a dict (parsed from its text; None: retracted)."""
        return None if self.text is None else json.loads(self.text)


def absolute_times(events: list[Event], origin: float) -> list[float]:
    """Events' times as published: ``round(float(t) + origin, 3)`` of each record's time
    (rounded to 4 decimals). With a numpy ``origin`` that is numpy's rounding (scaled, to
    the nearest even), one array operation for them all, which rounds as the scalar does."""
    cleaned = [round(t, 4) if type(t) is float and t - t == 0.0 else clean(t) for t in (ev.t for ev in events)]
    if type(origin) is np.float64 and all(type(t) is float for t in cleaned):
        return np.round(np.array(cleaned, dtype=np.float64) + origin, 3).tolist()
    return [round(float(t) + origin, 3) for t in cleaned]  # type: ignore[arg-type]


def event_key(ev: Event, t: float) -> str:
    """An event's identity: rule, what it is about (tag, else gateway, else zone; as its
    record has them), event time ``t`` (absolute, as published)."""
    tag: object = ev.tag
    gateway: object = ev.gateway
    zone: object = ev.zone
    rule: object = ev.rule
    if not (type(rule) is str and type(tag) in _NAMES and type(gateway) in _NAMES and type(zone) in _NAMES):
        tag, gateway, zone, rule = clean(tag), clean(gateway), clean(zone), clean(rule)  # as the record holds them
    return f"{rule}/{tag or gateway or zone or ''}/{t:.3f}"


_NAMES = (str, type(None))  # the types a record holds names in as they are


class RevisedTimeline(RevisingWindows):
    """Windows, tracker and rules over the raw rows of the revision horizon, revised together."""

    STATEFUL = True

    def __init__(self, engine: Engine, horizon_s: float = 300.0, feeder: RuleFeeder | None = None,
                 state_horizon_s: float | None = None) -> None:
        """``state_horizon_s``: how far back (event time behind the last closed window) saved
        states are kept, thinned, beyond the rows of ``horizon_s``: late data that far back
        is recomputed from rows read back from the raw log (:meth:`splice`). None: the
        rows horizon."""
        super().__init__(engine, horizon_s)
        self.state_horizon_s = max(horizon_s, horizon_s if state_horizon_s is None else state_horizon_s)
        # True while the chain reaches back to the first computed window (no state dropped
        # yet): a rerun from before every saved state starts from the initial state.
        self.chain_complete = True
        # The first window ever computed: a rerun from the initial state starts there (the
        # first advance can close several windows in one chunk, saving a state after the last).
        self.first_window: int | None = None
        self.rows_state: int | None = None  # the saved state a rerun from the rows held starts at
        self.stateful = engine.stateful  # (a cell worker wraps the engine later: ask now)
        self.feeder = feeder
        self._sink = ListSink()  # the events of the step being run
        if feeder is not None:
            feeder.rules.sinks.append(self._sink)
        self.origin: float | None = None  # absolute time of the rules' t = 0
        self._initial = self._state()
        # (tracking, rules) state after window k, for the last window of each computed run;
        # older than the newest STATE_EVERY windows, packed (pickled and compressed).
        self.states: dict[int, State | PackedState] = {}
        self.digests: dict[int, bytes] = {}  # window -> digest of the fixes last handed out
        # event key -> (window, digest of its JSON) last handed out
        self.published: dict[str, tuple[int, str]] = {}
        self.events_out: list[EventRevision] = []  # filled by advance, taken by the caller
        self.rules_pending: PendingRules | None = None  # rule steps an advance deferred
        self._rev = 0

    @property
    def runs_rules(self) -> bool:
        return self.feeder is not None

    def _state(self) -> State:
        return self.engine.tracking_state(), None if self.feeder is None else self.feeder.state()

    def _saved(self, k: int) -> State:
        """The state saved after window ``k``, unpacked if it was packed."""
        st = self.states[k]
        return unpack_state(st) if isinstance(st, PackedState) else st

    def take_events(self) -> list[EventRevision]:
        out, self.events_out = self.events_out, []
        return out

    # -- output -------------------------------------------------------------------------

    def advance(self, watermark: float, revision: int | None = None, prune: bool = True,
                defer_rules: bool = False) -> NDArray[np.void]:
        """Close what the watermark allows; recompute from the earliest dirty window on, the
        tracker and the rules included. Returns the fixes of every window whose fixes
        changed (``revision`` column); rule events go to :attr:`events_out`. ``prune`` as
        in :meth:`RevisingWindows.advance`. ``defer_rules``: the rule steps of these windows
        (and the prune) wait for :meth:`finish_rules`, so their positions can go out first;
        anything that reads or reruns the timeline finishes them before (this does)."""
        if not self.stateful and self.feeder is None:
            return super().advance(watermark, revision, prune)
        self.finish_rules()
        self._merge_new()
        if not np.isfinite(watermark) or len(self.rows) == 0:
            return np.zeros(0, REVISED_FIX_DTYPE)
        last = int(np.floor((watermark - self.lateness) / self.step + 1e-9))
        if self.closed_through is None:
            k_from = int(np.floor(self.rows["t"][0] / self.step + 1e-12)) + 1
            if last < k_from:
                return np.zeros(0, REVISED_FIX_DTYPE)
            if self.first_window is None:
                self.first_window = k_from
            if self.origin is None:
                self.origin = (np.floor(self.rows["t"][0] / ORIGIN_GRID_S) - 1) * ORIGIN_GRID_S
        else:
            k_from = min([*self.dirty, self.closed_through + 1])
            last = max(last, self.closed_through)
            if k_from > last:
                return np.zeros(0, REVISED_FIX_DTYPE)
        self.dirty = set()
        before = [k for k in self.states if k < k_from]
        if before:
            k_from = max(before) + 1
            tracking, rules = self._saved(k_from - 1)
        elif self.chain_complete or not self.states:
            tracking, rules = self._initial
            if self.chain_complete and self.first_window is not None:
                k_from = min(k_from, self.first_window)  # the initial state is the one before it
        else:
            tracking, rules = self._saved(min(self.states))
            k_from = min(self.states) + 1
        # States saved at k_from or later were decided without the data that dirtied them;
        # this run's chunks need not end where an earlier run's did, so drop them all here
        # or a later re-run could restore one.
        for k in [k for k in self.states if k >= k_from]:
            del self.states[k]
        self.engine.set_tracking_state(tracking)
        if self.feeder is not None and rules is not None:
            self.feeder.restore(rules)
        if revision is None:
            self._rev += 1
            revision = self._rev
        out = self._run(k_from, last, revision, defer_rules and self.feeder is not None)
        self.closed_through = max(last, self.closed_through if self.closed_through is not None else last)
        if self.rules_pending is not None:
            self.rules_pending.prune = prune
        elif prune:
            self._prune()
        return out

    def finish_rules(self) -> None:
        """The rule steps an ``advance(defer_rules=True)`` left, in window order: each chunk's
        saved state completed with the rules', the events diffed into :attr:`events_out`,
        then the prune it put off. The same steps, states and events as without deferral."""
        pending, self.rules_pending = self.rules_pending, None
        if pending is None:
            return
        assert self.feeder is not None
        new_events: dict[str, tuple[int, str, str]] = {}
        for rows, fixes, k0, k1, tracking in pending.chunks:
            self._feed_rules(rows, fixes, k0, k1, new_events)
            self.states[k1] = (tracking, self.feeder.state())
        self._diff_events(pending.k_from, new_events, pending.revision)
        if pending.prune:
            self._prune()

    def _run(self, k_from: int, last: int, revision: int, defer_rules: bool = False) -> NDArray[np.void]:
        """Windows k_from..last in runs, the rules one step per window; what changed out.
        ``defer_rules``: each chunk's rows (shifted to the rules' clock), fixes and tracking
        state are kept for :meth:`finish_rules` instead."""
        changed: list[NDArray[np.void]] = []
        new_events: dict[str, tuple[int, str, str]] = {}
        pending = PendingRules(k_from, revision) if defer_rules else None
        for k0 in range(k_from, last + 1, WINDOWS_PER_CHUNK):
            k1 = min(last, k0 + WINDOWS_PER_CHUNK - 1)
            # the windows' merged events, as RevisingWindows computes them (cached per step)
            events = self.events.between(self.rows, k0 * self.step - self.window, k1 * self.step)
            fixes = self.engine.localize_events(events, k0, k1)
            wins = np.rint(fixes["t"] / self.step).astype(np.int64)
            bounds = np.searchsorted(wins, np.arange(k0, k1 + 2))  # fixes come in window order
            if self.feeder is not None:
                lo, hi = sorted_search(self.rows["t"], [(k0 - 1) * self.step, k1 * self.step])
                rows = drop_redeliveries(self.rows[lo:hi], IngestCounters())  # canonical order
                if pending is not None:  # copied now: the row store reuses its buffer
                    pending.chunks.append((rows.copy(), fixes.copy(), k0, k1, self.engine.tracking_state()))
                else:
                    self._feed_rules(rows, fixes, k0, k1, new_events)
            for i, k in enumerate(range(k0, k1 + 1)):
                part = fixes[bounds[i]:bounds[i + 1]]
                digest = hashlib.blake2b(np.ascontiguousarray(part).tobytes(), digest_size=16).digest()
                if self.digests.get(k) != digest and len(part):
                    self.digests[k] = digest
                    changed.append(_with_revision(part, revision))
            if pending is None:
                self.states[k1] = self._state()
        if pending is not None:
            self.rules_pending = pending
        elif self.feeder is not None:
            self._diff_events(k_from, new_events, revision)
        return np.concatenate(changed) if changed else np.zeros(0, REVISED_FIX_DTYPE)

    def _feed_rules(self, rows: Sightings, fixes: NDArray[np.void], k0: int, k1: int,
                    new_events: dict[str, tuple[int, str, str]]) -> None:
        """Rule steps k0..k1: each window's sightings and fixes, then the clock to its end.
        One ``step_until`` for the whole run (its buffers sorted once, not once a window:
        a run of k windows cost k sorts of up to k windows' rows), each step's events
        credited to the window whose end it reaches, as k separate calls would."""
        assert self.feeder is not None
        assert self.origin is not None
        origin = self.origin
        shifted = rows.copy()
        shifted["t"] -= origin
        moved = fixes.copy()
        moved["t"] -= origin
        self.feeder.add(sightings=shifted, fixes=moved)
        step = self.feeder.step_s
        # The last feeder step each window's call would run (RuleFeeder.step_until's arithmetic).
        ends = [int(np.floor((k * self.step - origin + 1e-9) / step)) - 1 for k in range(k0, k1 + 1)]

        def credit(i: int) -> None:
            k = k0 + bisect.bisect_left(ends, i)
            events = self._sink.events
            # Each record as Event.to_dict makes it, its time absolute, and without the
            # device's code: that is the order the worker first heard it in, which a replay
            # changes (the tag id says who it is). Written as JSON once: the digest takes the
            # spaced text, the messages the compact one.
            times = absolute_times(events, origin)
            for ev, t, (spaced, compact) in zip(events, times, events_json(events, times, DROPPED_EVIDENCE),
                                                strict=True):
                key = first = event_key(ev, t)
                n = 2
                while key in new_events:  # the same identity twice: number the repeats
                    key = f"{first}#{n}"
                    n += 1
                new_events[key] = (k, spaced, compact)
            events.clear()

        self._sink.events.clear()
        self.feeder.step_until(k1 * self.step - origin, on_step=credit)
        self._sink.events.clear()

    def _diff_events(self, k_from: int, new: dict[str, tuple[int, str, str]], revision: int) -> None:
        """Events decided from k_from on: new or changed ones out, vanished ones retracted.
        Each is handed out as its compact text (the messages copy it as it is); the digest
        is of its spaced text, as checkpoints and :meth:`note_published` have it."""
        old = {key: v for key, v in self.published.items() if v[0] >= k_from}
        published, out, step = self.published, self.events_out, self.step
        for key, (k, spaced, compact) in new.items():
            digest = _digest(spaced)
            if key not in old or old[key][1] != digest:
                out.append(EventRevision(key, k * step, revision, compact))
            published[key] = (k, digest)
        for key in [key for key in old if key not in new]:  # in published order: a set's order is the hash seed's
            k = old[key][0]
            self.events_out.append(EventRevision(key, k * self.step, revision, None))
            del self.published[key]

    def note_published(self, key: str, step_t: float, event: dict[str, object] | None) -> None:
        """An event record seen on the output stream after the checkpoint this state came
        from (published before a crash): the next revision retracts or confirms it."""
        self.finish_rules()
        k = int(np.rint(step_t / self.step))
        if event is None:
            self.published.pop(key, None)
        else:
            self.published[key] = (k, _digest(json.dumps(event, sort_keys=True)))
        self.dirty.add(k)

    def _prune(self) -> None:
        super()._prune()
        # The first window whose rows are all still held: revisions start there at the earliest.
        first = int(np.ceil((self.horizon_start() + self.window) / self.step - 1e-9))
        older = [k for k in self.states if k < first]
        self.rows_state = max(older) if older else None  # what a rerun from the rows held starts at
        # Beyond the rows, states back to the state horizon: a deep pass reads the rows back
        # from the raw log and reruns from one of them.
        reach = int(np.ceil((self.state_horizon_s - self.horizon_s) / self.step))
        first_state = first - max(reach, 0)
        oldest = [k for k in self.states if k < first_state]
        keep_from = max(oldest) if oldest else None
        for k in [k for k in self.states if keep_from is not None and k < keep_from]:
            del self.states[k]
            self.chain_complete = False
        # Older copies thinned to one per STATE_EVERY windows: late data a few windows back
        # is the common case; further back, recomputing a few more windows costs less memory.
        recent = (self.closed_through or 0) - STATE_EVERY
        newest_of: dict[int, int] = {}
        for k in self.states:
            if k < recent and k != keep_from:
                newest_of[k // STATE_EVERY] = max(newest_of.get(k // STATE_EVERY, k), k)
        for k in [k for k in self.states if k < recent and k != keep_from and newest_of[k // STATE_EVERY] != k]:
            del self.states[k]
        # The copies kept beyond the newest windows are packed: a rules state is mostly per-tag
        # arrays still at their initial fill (5 MB at 7,600 tags packs to ~75 kB), and one is
        # kept per STATE_EVERY windows back to the state horizon (30 min: ~230 of them).
        # Only in blocks already complete (a block's newest state is final then): packed once.
        done = (recent // STATE_EVERY) * STATE_EVERY
        for k, st in self.states.items():
            if k < done and not isinstance(st, PackedState):
                self.states[k] = pack_state(st)
        # What was handed out, as far back as a rerun can start (to diff and retract against).
        since = min(self.states) if self.states and not self.chain_complete else None
        if since is not None:
            for k in [k for k in self.digests if k <= since]:
                del self.digests[k]
            for key in [key for key, (k, _) in self.published.items() if k <= since]:
                del self.published[key]

    # -- late data beyond the rows horizon ------------------------------------------------

    def restart_window(self, k: int) -> int | None:
        """The first window a rerun for late data in window ``k`` computes (from the saved
        state before it), or None when no saved state reaches back that far. Deferred rule
        steps are finished first: their prune decides which saved states remain, and the
        splice that follows (which finishes them too) must find the state chosen here."""
        self.finish_rules()
        before = [j for j in self.states if j < k]
        if before:
            return max(before) + 1
        if not self.chain_complete:
            return None
        return k if self.first_window is None else min(k, self.first_window)

    def state_floor(self) -> float:
        """Event time from which late rows can still be recomputed (a saved state precedes
        their windows, and their merge-margin neighbours are read back from after it)."""
        if self.chain_complete or not self.states:
            return -np.inf
        return min(self.states) * self.step + MERGE_MARGIN_S

    def splice(self, rows: Sightings, first_dirty: int) -> None:
        """Rows older than those held, read back from the raw log (every accepted row from
        the restart window's span up to :meth:`prune_start`): held until the next advance,
        which reruns from the state before ``first_dirty`` through the latest window and
        lets them go again."""
        self.finish_rules()
        if len(rows):
            self._new.append(rows)
        self.dirty.add(first_dirty)

    # -- checkpoint ---------------------------------------------------------------------

    def snapshot_timeline(self) -> tuple[dict[str, object], bytes]:
        """What a checkpoint needs beyond the rows: what was handed out (to diff the next
        revision against) and the state before the oldest revisable window (packed states,
        read back only by :func:`load_states`)."""
        self.finish_rules()
        oldest = min(self.states) if self.states else None
        # The oldest state (deep passes rerun from it) and the one the rows held start from
        # (a restore reruns from it); the states between are rebuilt by the next rerun.
        rows_state = self.rows_state
        kept = sorted({k for k in (oldest, rows_state) if k is not None and k in self.states})
        meta: dict[str, object] = {
            "origin": self.origin, "rev": self._rev, "state_window": oldest, "state_windows": kept,
            "rows_state": rows_state if rows_state in self.states else oldest,
            "chain_complete": self.chain_complete,
            "first_window": self.first_window,
            "digests": {str(k): v.hex() for k, v in self.digests.items()},
            "published": {key: [k, text] for key, (k, text) in self.published.items()},
        }
        if not kept:
            return meta, dump_states([self._initial])
        for k in kept:  # packed once, kept packed: the next checkpoint reuses the bytes
            if not isinstance(self.states[k], PackedState):
                self.states[k] = pack_state(self.states[k])  # type: ignore[arg-type]
        return meta, dump_states([self.states[k] for k in kept])

    def restore_timeline(self, meta: dict[str, object], state_blob: bytes) -> None:
        """After :meth:`restore`: the next advance recomputes from the saved state on and
        hands out only what differs from what was handed out before."""
        origin = meta.get("origin")
        # numpy's, as the first advance computed it: a Python float rounds the events' times
        # to the millisecond differently (correctly rounded, not scaled), ~1 in 20 of them
        # (absolute_times), so a restored worker would decide events under other keys.
        self.origin = None if origin is None else np.float64(origin)  # type: ignore[arg-type]
        self._rev = int(meta.get("rev", 0))  # type: ignore[call-overload]
        self.digests = {int(k): bytes.fromhex(v) for k, v in dict(meta["digests"]).items()}  # type: ignore[call-overload]
        self.published = {key: (int(k), str(text)) for key, (k, text) in dict(meta["published"]).items()}  # type: ignore[call-overload]
        self.chain_complete = bool(meta.get("chain_complete", False))
        first = meta.get("first_window")
        self.first_window = None if first is None else int(first)  # type: ignore[call-overload]
        states = load_states(state_blob)
        kept = [int(k) for k in meta["state_windows"]]  # type: ignore[attr-defined]
        self.states = {}
        if not kept:
            if len(states) != 1:
                raise ValueError("checkpoint timeline: expected the initial state")
            self._initial = states[0]
            return
        if len(states) != len(kept):
            raise ValueError("checkpoint timeline states do not match their windows")
        self.states = dict(zip(kept, states, strict=True))
        rows_state = int(meta.get("rows_state", kept[-1]))  # type: ignore[call-overload]
        self.rows_state = rows_state  # (a checkpoint before the next prune keeps it again)
        if self.closed_through is not None and self.closed_through > rows_state:
            self.dirty.add(rows_state + 1)


State = tuple[dict[str, object], dict[str, object] | None]  # (tracking, rules) after a window


@dataclass
class PendingRules:
    """The rule steps of an advance that localized its windows first: per chunk its rows,
    fixes, first and last window and the tracking state after it; the run's first window
    and revision; whether the prune waits too."""

    k_from: int
    revision: int
    chunks: list[tuple[Sightings, NDArray[np.void], int, int, dict[str, object]]] = field(default_factory=list)
    prune: bool = True


@dataclass(frozen=True)
class PackedState:
    """A saved state pickled and zlib-compressed (level 1: ~25 ms for a 5 MB rules state)."""

    blob: bytes


def pack_state(state: State) -> PackedState:
    return PackedState(zlib.compress(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), 1))


def unpack_state(packed: PackedState) -> State:
    return load_state_pickle(zlib.decompress(packed.blob))  # type: ignore[return-value]


def dump_states(states: list[State | PackedState]) -> bytes:
    """Saved states for a checkpoint: each packed (those packed already are not packed
    again), framed by their lengths."""
    blobs = [(st if isinstance(st, PackedState) else pack_state(st)).blob for st in states]
    head = json.dumps([len(b) for b in blobs]).encode()
    return head + b"\n" + b"".join(blobs)


def load_states(blob: bytes) -> list[State]:
    """The states of :func:`dump_states`; each through :func:`load_state_pickle`."""
    head, _, body = blob.partition(b"\n")
    sizes = json.loads(head)
    if not isinstance(sizes, list) or sum(int(n) for n in sizes) != len(body):
        raise ValueError("checkpoint timeline states: bad framing")
    out, at = [], 0
    for n in sizes:
        out.append(unpack_state(PackedState(body[at:at + int(n)])))
        at += int(n)
    return out


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _with_revision(fixes: NDArray[np.void], revision: int) -> NDArray[np.void]:
    out = np.empty(len(fixes), REVISED_FIX_DTYPE)
    for name in FIX_DTYPE.names or ():
        out[name] = fixes[name]
    out["revision"] = revision
    return out


# What a saved state may contain: numpy arrays and generators, the rules' own classes.
_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"), ("numpy.random._pcg64", "PCG64"),
    ("numpy.random._generator", "Generator"), ("builtins", "set"), ("builtins", "frozenset"),
    ("collections", "deque"), ("copyreg", "_reconstructor"), ("builtins", "object"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    ("engine.rules.core", "_Tags"), ("engine.rules.counts", "CycleCount"),
}


class _StateUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"checkpoint state: {module}.{name} is not allowed")
        return super().find_class(module, name)


def load_state_pickle(blob: bytes) -> object:
    """A saved timeline state; refuses anything but arrays, generators and the rules' classes."""
    return _StateUnpickler(io.BytesIO(blob)).load()
