"""What every rule family shares: the registry (:class:`RuleContext`), the per-tag state
arrays (:class:`_Tags`), the per-class lookup and event construction (:class:`RuleCore`).

The rule families (engine/rules/presence.py, exits.py, ...) are mixins over
:class:`RuleCore`; :class:`engine.rules.engine.RuleEngine` composes them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from numpy.typing import NDArray

from engine.contract import UNKNOWN
from engine.rules.events import Event, EventSink
from siteplan.zones import NO_ZONE, ZoneIndex

if TYPE_CHECKING:
    from collections.abc import Sequence

    from engine.rules.config import RuleSet
    from engine.rules.rest import RestMap

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

DEFAULT_INTERVAL_S = 10.0  # unknown devices: assume a slow advertiser
SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class RuleContext:
    """What the rules know of the site and the fleet (the registry)."""

    zones: ZoneIndex
    device_ids: Sequence[str]  # code -> id; may grow (a live IdTable's list)
    device_class: NDArray[np.int32]  # class code of each *registered* device
    class_names: tuple[str, ...]
    class_interval_s: FloatArray  # the registry's advertising interval per class
    gateway_ids: tuple[str, ...]
    gateway_xy: FloatArray
    # The building's outline: a tag cannot rest outside it, so zone probabilities that a
    # fix's uncertainty spreads beyond the outer walls are renormalized to it. None: unknown.
    site_outline: shapely.Polygon | None = None
    # Interior walls: a walled zone is entered only through its openings (misplaced reads
    # them). Empty: walls unknown, every zone open on every side.
    site_walls: tuple[shapely.LineString, ...] = ()
    # The localizer's radio map and receiver model, for the misplaced rule's rest check
    # (engine/rules/rest.py). None: the check is off (the look alone decides).
    rest_map: RestMap | None = None

    def __post_init__(self) -> None:
        if len(self.class_interval_s) != len(self.class_names):
            raise ValueError("class_interval_s needs one interval per class")
        if self.gateway_xy.shape != (len(self.gateway_ids), 2):
            raise ValueError("gateway_xy must be (gateways, 2)")


_FILL: dict[str, tuple[object, str]] = {
    # name: (fill value, dtype)
    "cls": (-1, "i4"),
    "revoked": (False, "?"),
    "fix_t": (np.nan, "f8"),
    "x": (np.nan, "f8"),
    "y": (np.nan, "f8"),
    "r90": (np.nan, "f8"),
    "zone": (NO_ZONE, "i4"),
    "battery": (UNKNOWN, "i2"),
    "moving_t": (-np.inf, "f8"),
    "pz": (0.0, "f8"),
    "pz_t": (np.nan, "f8"),
    "cand": (NO_ZONE, "i4"),
    "cand_n": (0, "i4"),
    "conf": (NO_ZONE, "i4"),
    "zone_since": (np.nan, "f8"),
    "dwell_done": (False, "?"),
    "heard_t": (np.nan, "f8"),
    "last_seq": (-1, "i8"),
    "n_heard": (0, "i8"),
    "n_missed": (0, "i8"),
    "b_missed": (0, "i8"),  # adverts missed in the tag's closed runs of misses (capped)
    "b_cont": (0, "i8"),  # of those, misses that followed a miss
    "b_deep": (0, "i8"),  # and misses that followed two misses
    "b_deeper": (0, "i8"),  # and misses that followed three or more
    "missing": (False, "?"),
    "pending": (False, "?"),
    "exited": (False, "?"),
    "exit_t": (np.nan, "f8"),
    "vanish_t": (np.nan, "f8"),
    "checkout_t": (np.nan, "f8"),
    "bat_done": (False, "?"),
    "bat_t0": (np.nan, "f8"),
    "bat_b0": (np.nan, "f8"),
    "bat_t1": (np.nan, "f8"),
    "bat_b1": (np.nan, "f8"),
    "misp_sum": (0.0, "f8"),  # sum of P(forbidden) over the current look's still fixes
    "misp_n": (0, "i4"),  # and how many
    "misp_t": (np.nan, "f8"),  # when the current look began
    "misp_run": (0, "i4"),  # looks in a row at or above the threshold
    "misp_entry": (0.0, "f8"),  # largest P(forbidden) of the recent moving fixes, fading
    "misp_move_t": (np.nan, "f8"),  # the last moving fix
    "misp_run_door": (0, "i4"),  # looks in a row at or above the doorway tier's threshold
    "misp_door": (0.0, "f8"),  # largest P(near an opening of a walled forbidden zone), fading
    "misp_rest_door": (0.0, "f8"),  # sum of P(near an opening) over the current look's still fixes
    "misp_done": (False, "?"),
    "rest_t": (-np.inf, "f8"),  # the tag's last motion (a moving advert or fix): its rest began after it
    "reg_t": (-np.inf, "f8"),
    "ah_t": (-np.inf, "f8"),
}


def sorted_runs(sorted_values: NDArray[Any]) -> tuple[NDArray[Any], NDArray[np.intp], NDArray[np.intp]]:
    """``np.unique(a, return_index=True, return_counts=True)`` of an already sorted array
    without NaN, in one linear pass (np.unique sorts again, with a stable sort when it
    returns indices): the distinct values, where each run starts, and its length."""
    n = len(sorted_values)
    edge = np.ones(n, dtype=bool)
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=edge[1:])
    starts = np.flatnonzero(edge)
    return sorted_values[starts], starts, np.diff(np.r_[starts, n])


def is_sorted(a: NDArray[Any], strictly: bool = False) -> bool:
    """Whether ``a`` is ascending (for a float array: and holds no NaN)."""
    if len(a) < 2:
        return not np.isnan(a).any() if a.dtype.kind == "f" else True
    step = a[1:] > a[:-1] if strictly else a[1:] >= a[:-1]
    return bool(step.all()) and not (a.dtype.kind == "f" and np.isnan(a[0]))


@dataclass
class _Tags:
    """Per-device state arrays (index = device code), grown on demand."""

    n: int = 0
    a: dict[str, NDArray[np.generic]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.a = {k: np.zeros(0, dtype=dt) for k, (_, dt) in _FILL.items()}

    def grow(self, n: int) -> int:
        """Grow to ``n`` devices; returns the old size."""
        old = self.n
        if n > old:
            size = max(n, 2 * old)
            for k, (fill, dt) in _FILL.items():
                self.a[k] = np.concatenate(
                    [self.a[k], np.full(size - len(self.a[k]), fill, dtype=dt)]
                )
            self.n = n
        return old

    def __getitem__(self, k: str) -> NDArray[Any]:
        return self.a[k]


class RuleCore:
    """Shared state of every rule family: rules, registry, sinks, per-tag arrays, clock,
    counters, and the per-class advertising interval. Families add theirs in :meth:`_setup`."""

    def __init__(
        self, rules: RuleSet, context: RuleContext, sinks: Sequence[EventSink] = ()
    ) -> None:
        self.rules = rules
        self.ctx = context
        self.sinks = list(sinks)
        self.tags = _Tags()
        interval = context.class_interval_s.astype(float).copy()
        for i, name in enumerate(context.class_names):
            interval[i] = rules.missing.expected_interval_s.get(name, interval[i])
        self._class_interval = interval
        self.now = -np.inf
        self.counters = {
            "fixes": 0,
            "sightings": 0,
            "checkouts": 0,
            "events": 0,
            "rejected_rows": 0,
        }
        self._setup()

    # What a rule engine is configured with, or derives from it once: not decisions, so
    # :meth:`state` leaves them out (anything else is state, copied).
    _NOT_STATE = frozenset({
        "rules", "ctx", "sinks", "_class_interval", "_hours", "_class_drain_per_s", "_dwell_limit",
        "_exit_zone_ids", "exit_region", "_exit_gateways", "_forbidden", "_doorways", "_class_misp_threshold",
        "_class_misp_walled", "_rest_cells",
        "_class_fa_rate",
        "_carry_reach_m", "_reach_regions",
    })

    def state(self) -> dict[str, object]:
        """A deep copy of everything decided so far (per-tag arrays, clocks, gateway
        buckets, counters): :meth:`load_state` goes back to it, so late data can be
        decided again from the step before it (engine/timeline.py)."""
        return copy.deepcopy({k: v for k, v in vars(self).items() if k not in self._NOT_STATE})

    def load_state(self, state: dict[str, object]) -> None:
        """Back to a :meth:`state` (which stays untouched, so it can be loaded again)."""
        vars(self).update(copy.deepcopy(state))

    def _setup(self) -> None:
        """Each rule family extends this with its own state (calling ``super()._setup()``
        first), so the families share one constructor, :class:`RuleEngine`'s."""

    def _grow(self, n: int) -> int:
        """Grow the per-tag state to ``n`` devices (new ones get their registry class and
        revocation); returns the old size. Families with more per-tag state extend it."""
        old = self.tags.grow(n)
        if n <= old:
            return old
        new = np.arange(old, n)
        known = new < len(self.ctx.device_class)
        self.tags["cls"][new[known]] = self.ctx.device_class[new[known]]
        revoked = set(self.rules.registry.revoked)
        if revoked:
            ids = self.ctx.device_ids
            self.tags["revoked"][new] = [int(c) < len(ids) and ids[int(c)] in revoked for c in new]
        return old

    def _tag_id(self, code: int) -> str:
        ids = self.ctx.device_ids
        return ids[code] if 0 <= code < len(ids) else f"device#{code}"

    def _zone_name(self, z: int) -> str | None:
        return self.ctx.zones.names[z] if z >= 0 else None

    def _interval(self, d: IntArray) -> FloatArray:
        return self._per_class(d, self._class_interval, DEFAULT_INTERVAL_S)

    def _per_class(self, d: IntArray, table: FloatArray, default: float) -> FloatArray:
        """``table``'s value for each tag's class; ``default`` for devices without one."""
        cls = self.tags["cls"][d]
        out = np.full(len(d), default)
        ok = cls >= 0
        out[ok] = table[cls[ok]]
        return out

    def _event(
        self,
        rule: str,
        t: float,
        d: int | None = None,
        confidence: float = 1.0,
        gateway: int | None = None,
        zone: int | None = None,
        **evidence: object,
    ) -> Event:
        if d is not None:
            tg = self.tags.a  # .item: the Python number without a numpy scalar between (every zone entry of a burst)
            z = tg["zone"].item(d) if zone is None else zone
            return Event(
                rule=rule,
                t=float(t),
                ruleset_version=self.rules.version,
                tag=self._tag_id(d),
                x=tg["x"].item(d),
                y=tg["y"].item(d),
                r90=tg["r90"].item(d),
                zone=self._zone_name(z),
                confidence=float(confidence),
                evidence=evidence,
            )
        gx = gy = math.nan
        if gateway is not None:
            gx, gy = (float(v) for v in self.ctx.gateway_xy[gateway])
        return Event(
            rule=rule,
            t=float(t),
            ruleset_version=self.rules.version,
            gateway=self.ctx.gateway_ids[gateway] if gateway is not None else None,
            x=gx,
            y=gy,
            r90=0.0 if gateway is not None else math.nan,
            zone=self._zone_name(zone) if zone is not None else None,
            confidence=float(confidence),
            evidence=evidence,
        )

    def _out(self, events: list[Event]) -> list[Event]:
        if events:
            events.sort(key=lambda e: e.t)
            self.counters["events"] += len(events)
            for sink in self.sinks:
                sink.emit(events)
        return events
