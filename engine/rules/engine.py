"""The rule engine: sans-IO, vectorized, event time throughout.

Inputs (each from its own source, each in event time):

* :meth:`RuleEngine.observe_sightings` - raw sighting columns (who was heard, by which
  gateway, with which frame counter): last-heard times, per-tag miss rates, gateway rates;
* :meth:`RuleEngine.process_fixes` - engine.pipeline FIX_DTYPE arrays (positions);
* :meth:`RuleEngine.ingest_checkouts` - checkout (POS) records and the feed's watermark;
* :meth:`RuleEngine.advance` - the clock: decisions that need *absence* of data
  (silence, dwell, checkout windows) are made only up to ``now``.

Every method returns the events it decided and hands them to the sinks. Per-tag state
lives in arrays indexed by device code; a batch of fixes is processed one window time at
a time (a Python loop over distinct times, never over rows), so each step touches each
device at most once and every update is a fancy-indexed array operation.

Where each rule family lives (each a mixin over :class:`engine.rules.core.RuleCore`, which
holds the registry, the per-tag arrays, the per-class lookup and event construction):

* engine/rules/presence.py - missing_tag, tag_found, exit_case_cleared; the burst-loss
  model (frame counters, miss rate, burst continuations) and the silence threshold;
* engine/rules/exits.py - exit_checked_out, exit_without_checkout, exit_unresolved:
  exit evidence, checkouts, pending exits, exit confidence;
* engine/rules/geofence.py - zone_enter, zone_exit, misplaced; the zone-probability
  region both misplacement and exits use;
* engine/rules/dwell.py - dwell;
* engine/rules/battery.py - battery_low, battery_forecast, the per-tag drain;
* engine/rules/gateways.py - gateway_silent, gateway_degraded, gateway_recovered;
* engine/rules/counts.py - cycle_count;
* engine/rules/access.py - unknown_tag, revoked_tag, after_hours_movement.

State transitions, all of them, per tag:

* zone: ``cand`` counts consecutive fixes in one zone; after ``confirm_fixes`` the zone
  becomes ``conf`` (zone_exit of the old, zone_enter of the new; dwell clock restarts).
* presence: heard -> (silent for theta = k intervals, k from the burst loss model) -> either
  *missing* (missing_tag alarm) or, when it vanished near an exit, *pending exit*.
  A pending exit becomes *exited* (checkout matched: exit_checked_out; else scored:
  exit_without_checkout alarm, exit_unresolved review, or a missing_tag fallback),
  or is escalated when the checkout feed stays behind. Any of these states returns to
  *present* when the tag is heard again (tag_found / exit_case_cleared).
* battery: armed -> battery_low (at or below low_pct) -> re-armed above rearm_pct.
* misplaced: armed -> alarm when the smoothed P(forbidden zone) of a still tag crosses
  ``threshold`` -> re-armed below ``rearm``.
* gateways: ok -> silent (no sighting for silent_s) or degraded (rate below a share of
  its baseline for several buckets) -> ok (gateway_recovered).

The order they run in (events of one call are then sorted by time, stably, so this order
breaks ties):

* sightings: returns to present, last-heard times, frame counters, gateway counts;
* each fix time: position and motion (a moved tag's per-gateway history restarts),
  registry, exit evidence, zone transition, battery, misplaced, after hours;
* the clock: silence (missing, pending exit, checked out), pending exits, gateway
  buckets and silence, dwell, due cycle counts, due battery forecasts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from engine.contract import compress_rows
from engine.rules.access import AccessRules
from engine.rules.battery import BatteryRules
from engine.rules.core import is_sorted, sorted_runs
from engine.rules.counts import CycleCountRules
from engine.rules.dwell import DwellRules
from engine.rules.exits import ExitRules
from engine.rules.geofence import GeofenceRules

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from engine.contract import Sightings
    from engine.rules.events import Event


class RuleEngine(ExitRules, CycleCountRules, GeofenceRules, DwellRules, BatteryRules, AccessRules):
    """Feed it sightings, fixes and checkouts, advance its clock, get events back."""

    # -- sightings: presence, miss rates, gateway rates -------------------------------

    def observe_sightings(self, rows: Sightings) -> list[Event]:
        """Last-heard times and frame-counter statistics per tag; sighting counts per gateway."""
        if len(rows) == 0:
            return []
        n_gw = len(self.ctx.gateway_ids)
        ok = (
            (rows["device"] >= 0)
            & (rows["gateway"] >= 0)
            & (rows["gateway"] < n_gw)
            & np.isfinite(rows["t"])
        )
        if not ok.all():  # (masking packed rows copies them field by field: only when needed)
            self.counters["rejected_rows"] += int((~ok).sum())
            rows = compress_rows(rows, ok)
        if len(rows) == 0:
            return []
        self.counters["sightings"] += len(rows)
        dev = rows["device"].astype(np.int64)
        self._grow(int(dev.max()) + 1)
        t = rows["t"].astype(float)
        order = np.arange(len(t)) if is_sorted(t) else np.argsort(t, kind="stable")
        events = self._heard_again(dev, t)
        self._count_frames(rows, dev)
        if self.rules.misplaced.enabled:
            self._rest_observe(rows, dev)
        self._count_gateway_sightings(rows, t, order)
        return self._out(events)

    # -- fixes --------------------------------------------------------------------------

    def process_fixes(self, fixes: NDArray[np.void]) -> list[Event]:
        """Apply the position rules to a batch of fixes (any order, any mix of times)."""
        if len(fixes) == 0:
            return []
        if not is_sorted(fixes["t"]):
            fixes = fixes[np.argsort(fixes["t"], kind="stable")]
        self.counters["fixes"] += len(fixes)
        self._grow(int(fixes["device"].max()) + 1)
        t_all, d_all = fixes["t"], fixes["device"].astype(np.int64)
        if is_sorted(t_all):  # no NaN: equal times are runs
            times, starts, _ = sorted_runs(t_all)
        else:
            times, starts = np.unique(t_all, return_index=True)
        bounds = [*starts.tolist(), len(fixes)]
        # The engine gives each time's fixes by ascending device, each device once: then
        # a step's rows are already what the deduplication below would make of them.
        ascending = d_all[1:] > d_all[:-1]
        ascending[starts[1:] - 1] = True
        each_once = bool(ascending.all())
        events: list[Event] = []
        for i, t in enumerate(times.tolist()):  # one iteration per window time, not per row
            rows = fixes[bounds[i] : bounds[i + 1]]
            if not each_once:
                _, last = np.unique(d_all[bounds[i] : bounds[i + 1]][::-1], return_index=True)
                rows = rows[::-1][last]  # one fix per device and time (by device): the last given
            self._step(t, rows, events)
        return self._out(events)

    def _step(self, t: float, rows: NDArray[np.void], events: list[Event]) -> None:
        tg, rules = self.tags, self.rules
        d = rows["device"].astype(np.int64)
        x, y = rows["x"].astype(float), rows["y"].astype(float)
        r90 = rows["r90"].astype(float)
        z = rows["zone"].astype(np.int32)
        motion = rows["motion"]
        tg["fix_t"][d], tg["x"][d], tg["y"][d], tg["r90"][d], tg["zone"][d] = t, x, y, r90, z
        tg["moving_t"][d[motion == 1]] = t
        self._moved(d[motion == 1])
        cls = tg["cls"][d]
        if rules.registry.enabled:
            self._registry(t, d, cls, events)
        if rules.exit.enabled:
            self._exit_evidence(t, d, x, y, r90)
        if rules.zone_transition.enabled:
            self._zone_transitions(t, d, z, events)
        if rules.battery.enabled:
            self._battery(t, d, rows["battery"].astype(np.int64), events)
        if rules.misplaced.enabled and len(self._forbidden):
            self._misplaced(t=t, d=d, cls=cls, x=x, y=y, r90=r90, motion=motion, events=events)
        if rules.after_hours.enabled:
            self._after_hours(t, d, motion, events)

    # -- the clock ------------------------------------------------------------------------

    def advance(self, now: float) -> list[Event]:
        """Decide everything that depends on absence of data up to event time ``now``."""
        self.now = max(self.now, now)
        now = self.now
        events: list[Event] = []
        if self.rules.missing.enabled or self.rules.exit.enabled:
            self._presence(now, events)
            if self.rules.exit.enabled:
                self._pending_exits(now, events)
        if self.rules.gateway.enabled:
            self._gateways(now, events)
        if self.rules.dwell.enabled:
            self._dwell(now, events)
        if self.rules.missing.enabled:
            while now >= self._next_count_t:
                events += self.cycle_count(self._next_count_t)
                self._next_count_t += self.rules.missing.cycle_count_every_s
        if self.rules.battery.enabled:
            while now >= self._next_forecast_t:
                events += self.battery_forecast(self._next_forecast_t)
                self._next_forecast_t += self.rules.battery.forecast_every_s
        return self._out(events)

    def flush(self, end_t: float) -> list[Event]:
        """End of input: every source is complete, so every pending case is decided now."""
        self.checkout_watermark = np.inf
        events = self.advance(end_t)
        return events + self._out([*self.cycle_count(end_t), *self.battery_forecast(end_t)])
