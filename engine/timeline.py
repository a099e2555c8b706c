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

import hashlib
import io
import json
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engine.eventtime import REVISED_FIX_DTYPE, RevisingWindows
from engine.ingest import IngestCounters, drop_redeliveries
from engine.pipeline import FIX_DTYPE, WINDOWS_PER_CHUNK
from engine.rules.events import ListSink

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from engine.contract import Sightings
    from engine.pipeline import Engine
    from engine.rules.feeder import RuleFeeder

STATE_EVERY = 8  # windows: one saved state per this many, beyond the newest ones
ORIGIN_GRID_S = 60.0  # the rules' clock starts on a whole minute, one minute before the first row


@dataclass(frozen=True)
class EventRevision:
    """One rule event as published: its identity, the window step that decided it (end of
    that window, absolute time), the revision, and the event (None: retracted)."""

    key: str
    step_t: float
    revision: int
    event: dict[str, object] | None

    @property
    def retracted(self) -> bool:
        return self.event is None


def event_key(record: dict[str, object]) -> str:
    """An event's identity: rule, what it is about (tag, else gateway, else zone), event time."""
    about = record.get("tag") or record.get("gateway") or record.get("zone") or ""
    return f"{record['rule']}/{about}/{float(record['t']):.3f}"  # type: ignore[arg-type]


class RevisedTimeline(RevisingWindows):
    """Windows, tracker and rules over the raw rows of the revision horizon, revised together."""

    STATEFUL = True

    def __init__(self, engine: Engine, horizon_s: float = 300.0, feeder: RuleFeeder | None = None) -> None:
        super().__init__(engine, horizon_s)
        self.stateful = engine.stateful  # (a cell worker wraps the engine later: ask now)
        self.feeder = feeder
        self._sink = ListSink()  # the events of the step being run
        if feeder is not None:
            feeder.rules.sinks.append(self._sink)
        self.origin: float | None = None  # absolute time of the rules' t = 0
        self._initial = self._state()
        # (tracking, rules) state after window k, for the last window of each computed run.
        self.states: dict[int, tuple[dict[str, object], dict[str, object] | None]] = {}
        self.digests: dict[int, bytes] = {}  # window -> digest of the fixes last handed out
        # event key -> (window, digest of its JSON) last handed out
        self.published: dict[str, tuple[int, str]] = {}
        self.events_out: list[EventRevision] = []  # filled by advance, taken by the caller
        self._rev = 0

    @property
    def runs_rules(self) -> bool:
        return self.feeder is not None

    def _state(self) -> tuple[dict[str, object], dict[str, object] | None]:
        return self.engine.tracking_state(), None if self.feeder is None else self.feeder.state()

    def take_events(self) -> list[EventRevision]:
        out, self.events_out = self.events_out, []
        return out

    # -- output -------------------------------------------------------------------------

    def advance(self, watermark: float, revision: int | None = None, prune: bool = True) -> NDArray[np.void]:
        """Close what the watermark allows; recompute from the earliest dirty window on, the
        tracker and the rules included. Returns the fixes of every window whose fixes
        changed (``revision`` column); rule events go to :attr:`events_out`. ``prune`` as
        in :meth:`RevisingWindows.advance`."""
        if not self.stateful and self.feeder is None:
            return super().advance(watermark, revision, prune)
        self._merge_new()
        if not np.isfinite(watermark) or len(self.rows) == 0:
            return np.zeros(0, REVISED_FIX_DTYPE)
        last = int(np.floor((watermark - self.lateness) / self.step + 1e-9))
        if self.closed_through is None:
            k_from = int(np.floor(self.rows["t"][0] / self.step + 1e-12)) + 1
            if last < k_from:
                return np.zeros(0, REVISED_FIX_DTYPE)
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
            tracking, rules = self.states[k_from - 1]
        else:
            tracking, rules = self._initial if not self.states else self.states[min(self.states)]
            k_from = k_from if not self.states else min(self.states) + 1
        self.engine.set_tracking_state(tracking)
        if self.feeder is not None and rules is not None:
            self.feeder.restore(rules)
        if revision is None:
            self._rev += 1
            revision = self._rev
        out = self._run(k_from, last, revision)
        self.closed_through = max(last, self.closed_through if self.closed_through is not None else last)
        if prune:
            self._prune()
        return out

    def _run(self, k_from: int, last: int, revision: int) -> NDArray[np.void]:
        """Windows k_from..last in runs, the rules one step per window; what changed out."""
        changed: list[NDArray[np.void]] = []
        new_events: dict[str, tuple[int, str]] = {}
        for k0 in range(k_from, last + 1, WINDOWS_PER_CHUNK):
            k1 = min(last, k0 + WINDOWS_PER_CHUNK - 1)
            # the windows' merged events, as RevisingWindows computes them (cached per step)
            events = self.events.between(self.rows, k0 * self.step - self.window, k1 * self.step)
            fixes = self.engine.localize_events(events, k0, k1)
            wins = np.rint(fixes["t"] / self.step).astype(np.int64)
            bounds = np.searchsorted(wins, np.arange(k0, k1 + 2))  # fixes come in window order
            if self.feeder is not None:
                lo, hi = np.searchsorted(self.rows["t"], [(k0 - 1) * self.step, k1 * self.step])
                rows = drop_redeliveries(self.rows[lo:hi], IngestCounters())  # canonical order
                self._feed_rules(rows, fixes, k0, k1, new_events)
            for i, k in enumerate(range(k0, k1 + 1)):
                part = fixes[bounds[i]:bounds[i + 1]]
                digest = hashlib.blake2b(np.ascontiguousarray(part).tobytes(), digest_size=16).digest()
                if self.digests.get(k) != digest and len(part):
                    self.digests[k] = digest
                    changed.append(_with_revision(part, revision))
            self.states[k1] = self._state()
        if self.feeder is not None:
            self._diff_events(k_from, new_events, revision)
        return np.concatenate(changed) if changed else np.zeros(0, REVISED_FIX_DTYPE)

    def _feed_rules(self, rows: Sightings, fixes: NDArray[np.void], k0: int, k1: int,
                    new_events: dict[str, tuple[int, str]]) -> None:
        """Rule steps k0..k1: each window's sightings and fixes, then the clock to its end."""
        assert self.feeder is not None
        assert self.origin is not None
        origin = self.origin
        shifted = rows.copy()
        shifted["t"] -= origin
        moved = fixes.copy()
        moved["t"] -= origin
        self.feeder.add(sightings=shifted, fixes=moved)
        for k in range(k0, k1 + 1):
            self._sink.events.clear()
            self.feeder.step_until(k * self.step - origin)
            for ev in self._sink.events:
                record = ev.to_dict()
                record["t"] = round(float(record["t"]) + origin, 3)  # type: ignore[arg-type]
                # A device's code is the order the worker first heard it in, which a replay
                # changes: the tag id says who it is.
                record["evidence"].pop("device_code", None)  # type: ignore[attr-defined]
                key = event_key(record)
                n = 2
                while key in new_events:  # the same identity twice: number the repeats
                    key = f"{event_key(record)}#{n}"
                    n += 1
                new_events[key] = (k, json.dumps(record, sort_keys=True))
        self._sink.events.clear()

    def _diff_events(self, k_from: int, new: dict[str, tuple[int, str]], revision: int) -> None:
        """Events decided from k_from on: new or changed ones out, vanished ones retracted."""
        old = {key: v for key, v in self.published.items() if v[0] >= k_from}
        for key, (k, text) in new.items():
            digest = _digest(text)
            if old.get(key, (None, None))[1] != digest:
                self.events_out.append(EventRevision(key, k * self.step, revision, json.loads(text)))
            self.published[key] = (k, digest)
        for key in old.keys() - new.keys():
            k = old[key][0]
            self.events_out.append(EventRevision(key, k * self.step, revision, None))
            del self.published[key]

    def note_published(self, key: str, step_t: float, event: dict[str, object] | None) -> None:
        """An event record seen on the output stream after the checkpoint this state came
        from (published before a crash): the next revision retracts or confirms it."""
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
        keep_from = max(older) if older else None
        for k in [k for k in self.states if keep_from is not None and k < keep_from]:
            del self.states[k]
        # Older copies thinned to one per STATE_EVERY windows: late data a few windows back
        # is the common case; further back, recomputing a few more windows costs less memory.
        recent = (self.closed_through or 0) - STATE_EVERY
        newest_of: dict[int, int] = {}
        for k in self.states:
            if k < recent and k != keep_from:
                newest_of[k // STATE_EVERY] = max(newest_of.get(k // STATE_EVERY, k), k)
        for k in [k for k in self.states if k < recent and k != keep_from and newest_of[k // STATE_EVERY] != k]:
            del self.states[k]
        for k in [k for k in self.digests if k < first]:
            del self.digests[k]
        for key in [key for key, (k, _) in self.published.items() if k < first]:
            del self.published[key]

    # -- checkpoint ---------------------------------------------------------------------

    def snapshot_timeline(self) -> tuple[dict[str, object], bytes]:
        """What a checkpoint needs beyond the rows: what was handed out (to diff the next
        revision against) and the state before the oldest revisable window (pickled, read
        back only by :func:`load_state_pickle`)."""
        oldest = min(self.states) if self.states else None
        meta: dict[str, object] = {
            "origin": self.origin, "rev": self._rev, "state_window": oldest,
            "digests": {str(k): v.hex() for k, v in self.digests.items()},
            "published": {key: [k, text] for key, (k, text) in self.published.items()},
        }
        state = self.states[oldest] if oldest is not None else self._initial
        return meta, pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def restore_timeline(self, meta: dict[str, object], state_blob: bytes) -> None:
        """After :meth:`restore`: the next advance recomputes from the saved state on and
        hands out only what differs from what was handed out before."""
        origin = meta.get("origin")
        self.origin = None if origin is None else float(origin)  # type: ignore[arg-type]
        self._rev = int(meta.get("rev", 0))  # type: ignore[call-overload]
        self.digests = {int(k): bytes.fromhex(v) for k, v in dict(meta["digests"]).items()}  # type: ignore[call-overload]
        self.published = {key: (int(k), str(text)) for key, (k, text) in dict(meta["published"]).items()}  # type: ignore[call-overload]
        oldest = meta.get("state_window")
        state = load_state_pickle(state_blob)
        self.states = {}
        if oldest is None:
            self._initial = state  # type: ignore[assignment]
        else:
            self.states[int(oldest)] = state  # type: ignore[call-overload,assignment]
            if self.closed_through is not None and self.closed_through > int(oldest):  # type: ignore[call-overload]
                self.dirty.add(int(oldest) + 1)  # type: ignore[call-overload]


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
