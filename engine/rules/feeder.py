"""Feeding the rule engine in event time, one engine step at a time, from its three
sources (sightings, fixes, the checkout feed): the twin's runs (twin/run.py), the
benchmarks and the backbone worker (live_bridge/worker.py) all step the rules this way.

:meth:`RuleFeeder.state` and :meth:`RuleFeeder.restore` copy what the rules decided so far,
so a caller that learns of late data can go back to the step before it and step again
(engine/timeline.py does, when the backbone revises windows).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from engine.contract import SIGHTING_DTYPE, concat_rows, take_rows
from engine.pipeline import FIX_DTYPE
from engine.rules.core import is_sorted
from engine.rules.events import CHECKOUT_DTYPE

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from engine.rules.engine import RuleEngine

# The checkout (POS) feed as it arrives: when the sale was (t), when its record reached
# the rules (arrival), and the tag.
FEED_DTYPE = np.dtype([("t", "f8"), ("arrival", "f8"), ("device", "i4")])


def checkout_rows(feed: NDArray[np.void]) -> NDArray[np.void]:
    """POS feed rows in the engine's checkout dtype."""
    out = np.zeros(len(feed), CHECKOUT_DTYPE)
    out["t"], out["device"] = feed["t"], feed["device"]
    return out


def _by_time(rows: NDArray[np.void]) -> NDArray[np.void]:
    """Rows stably sorted by time; rows already in order (no NaN) as they are, not copied:
    a stable sort would leave them so, and the sightings arrive in order (a copy of half a
    minute of a large site's sightings at every step cost the rules a fifth of their time)."""
    if is_sorted(rows["t"]):
        return rows
    return take_rows(rows, np.argsort(rows["t"], kind="stable"))


def _appended(buffer: NDArray[np.void], rows: NDArray[np.void], dtype: np.dtype[np.void]) -> NDArray[np.void]:
    """``buffer`` then ``rows``; ``rows`` itself when the buffer is empty (no copy)."""
    if len(buffer) == 0 and rows.dtype == dtype:
        return rows
    return concat_rows([buffer, rows], dtype)


class RuleFeeder:
    """Replays the three sources into the rule engine one engine step at a time, in event
    time, as a live deployment would deliver them, while they arrive: at each step
    ``now``, sightings of [now - step, now), fixes of windows ending by now, POS records
    that have *arrived* by now (the feed is complete up to now - feed_max_delay_s), then
    the clock advances to now. Give it data with :meth:`add` in event-time order and let
    it step with :meth:`step_until` once every source is complete up to that time."""

    def __init__(self, rules: RuleEngine, *, step_s: float, feed_max_delay_s: float = 0.0) -> None:
        self.rules = rules
        self.step_s = step_s
        self.feed_max_delay_s = feed_max_delay_s
        self._sightings = np.zeros(0, SIGHTING_DTYPE)
        self._fixes = np.zeros(0, FIX_DTYPE)
        self._feed = np.zeros(0, FEED_DTYPE)
        self._next = 0  # index i of the next step, now = step_s + i * step_s

    def add(
        self, sightings: NDArray[np.void] | None = None, fixes: NDArray[np.void] | None = None,
        feed: NDArray[np.void] | None = None,
    ) -> None:
        """Rows to step through. Added to an empty buffer, they are kept as given, not
        copied (a group of fixes is usually stepped through whole before the next comes):
        a caller must leave them unchanged until their steps are done."""
        if sightings is not None and len(sightings):
            self._sightings = _appended(self._sightings, sightings, SIGHTING_DTYPE)
        if fixes is not None and len(fixes):
            self._fixes = _appended(self._fixes, fixes, FIX_DTYPE)
        if feed is not None and len(feed):
            self._feed = np.concatenate([self._feed, feed])

    def step_until(self, t: float, on_step: Callable[[int], None] | None = None) -> None:
        """Every step with now <= t (and the data it covers) goes to the rules; ``on_step(i)``
        after step i (now = step_s + i * step_s), so that a caller stepping many windows in
        one call (sorting the buffers once) still tells each step's events apart."""
        last = int(np.floor((t + 1e-9) / self.step_s)) - 1
        if last < self._next:
            return
        # The same arithmetic as np.arange(step_s, end, step_s): start + i * step.
        steps = self.step_s + np.arange(self._next, last + 1) * self.step_s
        sightings, fixes = _by_time(self._sightings), _by_time(self._fixes)
        s_edge = np.searchsorted(sightings["t"], steps, side="left")
        f_edge = np.searchsorted(fixes["t"], steps + 1e-9, side="right")
        c_edge = np.searchsorted(self._feed["arrival"], steps, side="right")
        co = checkout_rows(self._feed)
        s0 = f0 = c0 = 0
        for i, now in enumerate(steps.tolist()):
            self.rules.observe_sightings(sightings[s0:s_edge[i]])
            self.rules.process_fixes(fixes[f0:f_edge[i]])
            self.rules.ingest_checkouts(co[c0:c_edge[i]], watermark=now - self.feed_max_delay_s)
            self.rules.advance(now)
            if on_step is not None:
                on_step(self._next + i)
            s0, f0, c0 = int(s_edge[i]), int(f_edge[i]), int(c_edge[i])
        self._sightings, self._fixes, self._feed = sightings[s0:], fixes[f0:], self._feed[c0:]
        self._next = last + 1

    def state(self) -> dict[str, object]:
        """A copy of the rules' decisions so far and of this feeder's clock and buffers."""
        return {"rules": self.rules.state(), "next": self._next, "sightings": self._sightings.copy(),
                "fixes": self._fixes.copy(), "feed": self._feed.copy()}

    def restore(self, state: dict[str, object]) -> None:
        """Back to a :meth:`state` (itself left untouched, so it can be restored again)."""
        self.rules.load_state(state["rules"])  # type: ignore[arg-type]
        self._next = int(state["next"])  # type: ignore[call-overload]
        self._sightings = np.array(state["sightings"], copy=True)
        self._fixes = np.array(state["fixes"], copy=True)
        self._feed = np.array(state["feed"], copy=True)

    def flush(self, end_t: float) -> None:
        """End of input: the steps up to ``end_t``, whatever is left, then the rules' flush."""
        self.step_until(end_t)
        co = checkout_rows(self._feed)
        self.rules.observe_sightings(self._sightings)
        self.rules.process_fixes(self._fixes)
        self.rules.ingest_checkouts(co if len(co) else np.zeros(0, CHECKOUT_DTYPE))
        self.rules.flush(end_t)
        self._sightings, self._fixes, self._feed = self._sightings[:0], self._fixes[:0], self._feed[:0]


def feed_rules(
    rules: RuleEngine, sightings: NDArray[np.void], fixes: NDArray[np.void], feed: NDArray[np.void],
    *, end_t: float, step_s: float, feed_max_delay_s: float = 0.0,
) -> None:
    """A whole run's sources into the rule engine at once (:class:`RuleFeeder`)."""
    feeder = RuleFeeder(rules, step_s=step_s, feed_max_delay_s=feed_max_delay_s)
    feeder.add(sightings, fixes, feed)
    feeder.flush(end_t)


