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
device at most once and every update below is a fancy-indexed array operation.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from numpy.typing import NDArray

from engine.contract import UNKNOWN, Sightings
from engine.rules.events import CHECKOUT_DTYPE, Event, EventSink
from siteplan.zones import NO_ZONE, ZoneIndex

if TYPE_CHECKING:
    from collections.abc import Sequence

    from engine.rules.config import RuleSet

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

# -2 ln(0.1): r90 of a circular 2-D Gaussian is sigma * sqrt(CHI2_2DOF_90).
CHI2_2DOF_90 = -2.0 * math.log(0.1)
MIN_SIGMA_M = 0.5
DEFAULT_INTERVAL_S = 10.0  # unknown devices: assume a slow advertiser
SECONDS_PER_DAY = 86_400.0
MAX_LISTED = 20  # ids listed in a cycle-count event's evidence


def _gauss_points(n: int = 32) -> FloatArray:
    """Fixed 2-D standard-normal points (Box-Muller on a Halton sequence): deterministic
    quadrature for the probability mass of a position estimate inside a polygon."""

    def halton(i: NDArray[np.int64], base: int) -> FloatArray:
        f, r = np.ones(len(i)), np.zeros(len(i))
        i = i.copy()
        while (i > 0).any():
            f = f / base
            r = r + f * (i % base)
            i = i // base
        return r

    k = np.arange(1, n + 1)
    u, v = halton(k, 2), halton(k, 3)
    rad = np.sqrt(-2.0 * np.log(u))
    return np.column_stack([rad * np.cos(2 * np.pi * v), rad * np.sin(2 * np.pi * v)])


GAUSS_POINTS = _gauss_points()


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

    def __post_init__(self) -> None:
        if len(self.class_interval_s) != len(self.class_names):
            raise ValueError("class_interval_s needs one interval per class")
        if self.gateway_xy.shape != (len(self.gateway_ids), 2):
            raise ValueError("gateway_xy must be (gateways, 2)")


class _Region:
    """A union of zone polygons and the probability that an uncertain fix lies in it."""

    def __init__(self, polygons: Sequence[shapely.Polygon]) -> None:
        self.geom = shapely.union_all(list(polygons)) if polygons else shapely.Polygon()
        shapely.prepare(self.geom)
        self.bounds = (
            self.geom.bounds if not self.geom.is_empty else (np.inf, np.inf, -np.inf, -np.inf)
        )

    def probability(self, x: FloatArray, y: FloatArray, r90: FloatArray) -> FloatArray:
        """P(true position inside) for Gaussian estimates with the given 90 % radius.

        Fixes farther than 4 sigma from the region's bounding box get 0 without a test.
        """
        out = np.zeros(len(x))
        if self.geom.is_empty or len(x) == 0:
            return out
        sigma = np.maximum(np.nan_to_num(r90, nan=10.0) / math.sqrt(CHI2_2DOF_90), MIN_SIGMA_M)
        minx, miny, maxx, maxy = self.bounds
        reach = 4.0 * sigma
        near = np.flatnonzero(
            (x > minx - reach) & (x < maxx + reach) & (y > miny - reach) & (y < maxy + reach)
        )
        if len(near) == 0:
            return out
        px = x[near, None] + sigma[near, None] * GAUSS_POINTS[None, :, 0]
        py = y[near, None] + sigma[near, None] * GAUSS_POINTS[None, :, 1]
        inside = shapely.intersects_xy(self.geom, px.ravel(), py.ravel()).reshape(px.shape)
        out[near] = inside.mean(axis=1)
        return out


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
    "misp": (0.0, "f8"),
    "misp_t": (np.nan, "f8"),
    "misp_done": (False, "?"),
    "reg_t": (-np.inf, "f8"),
    "ah_t": (-np.inf, "f8"),
}


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


@dataclass(frozen=True)
class CycleCount:
    """One zone's count at one time (kept for scoring count accuracy)."""

    t: float
    zone: int
    expected: int
    seen: int


class RuleEngine:
    """Feed it sightings, fixes and checkouts, advance its clock, get events back."""

    def __init__(
        self, rules: RuleSet, context: RuleContext, sinks: Sequence[EventSink] = ()
    ) -> None:
        self.rules = rules
        self.ctx = context
        self.sinks = list(sinks)
        self.tags = _Tags()
        zones = context.zones
        self._exit_zone_ids = sorted({i for z in rules.exit.exit_zones for i in zones.resolve(z)})
        self.exit_region = _Region([zones.polygons[i] for i in self._exit_zone_ids])
        # Misplacement: one forbidden region per class (zones whose role is not allowed).
        self._forbidden: list[_Region] = []
        for name in context.class_names:
            allowed = set(
                rules.misplaced.allowed_roles.get(name, rules.misplaced.default_allowed_roles)
            )
            self._forbidden.append(
                _Region(
                    [
                        p
                        for p, r in zip(zones.polygons, zones.roles, strict=True)
                        if r not in allowed
                    ]
                )
            )
        interval = context.class_interval_s.astype(float).copy()
        for i, name in enumerate(context.class_names):
            interval[i] = rules.missing.expected_interval_s.get(name, interval[i])
        self._class_interval = interval
        self._class_fa_rate = np.array(
            [
                rules.missing.false_alarms_by_class.get(
                    n, rules.missing.false_alarms_per_day_per_1000_tags
                )
                for n in context.class_names
            ],
            dtype=float,
        )
        drain = np.array(
            [
                rules.battery.nominal_drain_pct_per_day.get(
                    n, rules.battery.default_drain_pct_per_day
                )
                for n in context.class_names
            ],
            dtype=float,
        )
        self._class_drain_per_s = drain / SECONDS_PER_DAY
        self._dwell_limit = np.full(len(zones), np.inf)
        for key, limit in rules.dwell.limits_s.items():
            for i in zones.resolve(key):
                self._dwell_limit[i] = limit
        self._hours = rules.after_hours.intervals_s()
        # Gateways covering the exits: their health discounts a tag's silence there.
        if self._exit_zone_ids and len(context.gateway_ids):
            d = shapely.distance(self.exit_region.geom, shapely.points(context.gateway_xy))
            self._exit_gateways = np.flatnonzero(d <= rules.exit.exit_gateway_radius_m)
        else:
            self._exit_gateways = np.zeros(0, np.int64)
        n_gw = len(context.gateway_ids)
        self.gw_heard_t = np.full(n_gw, np.nan)
        self.gw_baseline = np.zeros(n_gw)  # sightings per second, exponentially weighted
        self.gw_state = np.zeros(n_gw, np.int8)  # 0 ok, 1 silent, 2 degraded
        self.gw_low_streak = np.zeros(n_gw, np.int32)
        self._gw_buckets: dict[int, NDArray[np.int64]] = {}
        self._gw_next_bucket = 0
        self.checkout_watermark = -np.inf
        self.g_heard = np.zeros((0, n_gw), np.int32)  # (tag, gateway) distinct frames heard
        self.g_sent = np.zeros(0, np.int64)  # frames sent since the tag last moved
        self.g_missed = np.zeros(0, np.int64)  # of those, frames no gateway heard
        # Site-wide burst statistics from the frame counters: adverts missed in closed runs
        # of misses (each run capped at max_missed) and how many of them followed a miss.
        self.burst_missed = 0
        self.burst_continued = 0
        self.burst_deep = 0
        self.burst_deeper = 0
        self._common_cache: tuple[int, float] | None = None
        self._obs_version = 0
        self.now = -np.inf
        self._next_count_t = rules.missing.cycle_count_every_s
        self._next_forecast_t = rules.battery.forecast_every_s
        self.cycle_counts: list[CycleCount] = []
        self.counters = {
            "fixes": 0,
            "sightings": 0,
            "checkouts": 0,
            "events": 0,
            "rejected_rows": 0,
        }

    # -- helpers ------------------------------------------------------------------------

    def _grow(self, n: int) -> None:
        old = self.tags.grow(n)
        if n <= old:
            return
        cap = len(self.tags["cls"])
        if cap > len(self.g_sent):
            extra = cap - len(self.g_sent)
            self.g_sent = np.concatenate([self.g_sent, np.zeros(extra, np.int64)])
            self.g_missed = np.concatenate([self.g_missed, np.zeros(extra, np.int64)])
            self.g_heard = np.vstack(
                [self.g_heard, np.zeros((extra, self.g_heard.shape[1]), np.int32)]
            )
        new = np.arange(old, n)
        known = new < len(self.ctx.device_class)
        self.tags["cls"][new[known]] = self.ctx.device_class[new[known]]
        revoked = set(self.rules.registry.revoked)
        if revoked:
            ids = self.ctx.device_ids
            self.tags["revoked"][new] = [int(c) < len(ids) and ids[int(c)] in revoked for c in new]

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

    def _q_gw(self, d: IntArray) -> FloatArray:
        """prod_g (1 - h_g) over gateways now up: the tag's loss if gateways failed
        independently (fading, scanner channel, sensitivity are per gateway)."""
        g_sent = self.g_sent[d].astype(float)
        h = (self.g_heard[d] + 0.5) / (g_sent[:, None] + 1.0)
        up = (self.gw_state == 0).astype(float)
        return np.asarray(np.exp(np.log1p(-np.minimum(h, 1 - 1e-12)) @ up))

    def common_loss(self) -> float:
        """q_c, the share of adverts lost at every gateway at once beyond what independent
        per-gateway losses explain (collisions that no gateway captures, bodies, Wi-Fi):
        pooled over tags at rest, (sum missed - sum sent x prod_g (1 - h_g) + 1/2) /
        (sum sent + 1). Cached until new sightings arrive."""
        if self._common_cache is not None and self._common_cache[0] == self._obs_version:
            return self._common_cache[1]
        n = self.tags.n
        sent = self.g_sent[:n]
        d = np.flatnonzero(sent >= self.rules.missing.min_adverts)
        q_c = 0.5
        if len(d) and self.g_heard.shape[1]:
            s = float(sent[d].sum())
            excess = float(self.g_missed[d].sum()) - float((self._q_gw(d) * sent[d]).sum())
            q_c = (max(excess, 0.0) + 0.5) / (s + 1.0)
        self._common_cache = (self._obs_version, q_c)
        return q_c

    def burst_continuation(self) -> tuple[float, float, float]:
        """(rho1, rho2, rho3), pooled over the site's frame counters: P(an advert is missed |
        the previous one was) = (misses that followed a miss + 1/2) / (misses in closed runs
        + 1), P(missed | the previous two were) = (misses after two + 1/2) / (misses after
        one + 1), and the same one level deeper for every later miss. Collisions repeat (two
        tags drift apart by only the 0-10 ms advDelay per event), so rho1 is far above q; and
        runs that got further are likelier still to go on (some tags and pairs are stuck in
        a bad state for a while): on the demo twin 0.07, 0.10, then 0.17-0.2 per step, so one
        geometric tail from the second miss on underestimated runs of 6-8 up to 20x."""
        rho1 = (self.burst_continued + 0.5) / (self.burst_missed + 1.0)
        rho2 = (self.burst_deep + 0.5) / (self.burst_continued + 1.0)
        rho3 = (self.burst_deeper + 0.5) / (self.burst_deep + 1.0)
        return rho1, rho2, rho3

    def miss_rate(self, d: IntArray) -> FloatArray:
        """Probability q that one advertisement of the tag is heard by no gateway.

        From the frame counter: the posterior mean (missed + prior/2) / (sent + prior).
        That needs ~1/q clean adverts to resolve a small q, so for a tag at rest (since its
        last motion, at least ``min_adverts`` sent) the per-gateway rates are used instead:
        q = max(prod_g (1 - h_g), loss_floor) + q_c over gateways now up,
        h_g = (heard by g + 1/2) / (sent + 1), q_c the site's common-mode loss
        (:meth:`common_loss`): per-gateway losses alone would say 2e-5 where collisions
        make it ~5e-3 (docs/rules.md).
        """
        cfg = self.rules.missing
        prior = cfg.prior_adverts
        missed = self.tags["n_missed"][d].astype(float)
        sent = missed + self.tags["n_heard"][d]
        q = (missed + prior / 2.0) / (sent + prior)
        if not cfg.per_gateway or len(d) == 0 or self.g_heard.shape[1] == 0:
            return q
        settled = self.g_sent[d] >= cfg.min_adverts
        q_rest = np.maximum(self._q_gw(d), cfg.loss_floor) + self.common_loss()
        return np.where(settled, np.minimum(q_rest, 1.0), q)

    def tag_continuation(
        self, d: IntArray, q: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """(rho1, rho2, rho3) of each tag: its own runs of misses shrunk toward the site's
        (:meth:`burst_continuation`) with the weight of ``burst_prior_misses`` misses;
        rho1 at least q, each deeper continuation at least the one before. A tag heard by
        one or two gateways inherits their bursts, which the site-wide values average away."""
        w = self.rules.missing.burst_prior_misses
        tg = self.tags
        site = self.burst_continuation()
        counts = ("b_missed", "b_cont", "b_deep", "b_deeper")
        rho: list[FloatArray] = []
        floor = q
        for level, s in enumerate(site):
            own = (tg[counts[level + 1]][d] + w * s) / (tg[counts[level]][d] + w)
            floor = np.clip(np.maximum(own, floor), 1e-12, 1 - 1e-12)
            rho.append(np.asarray(floor))
        return rho[0], rho[1], rho[2]

    def silent_probability(self, d: IntArray, m: FloatArray) -> FloatArray:
        """P(a present tag misses m adverts in a row from a given one) =
        q x rho1 x rho2 x rho3^(m-3) (the chain cut at m): per-tag q and the continuations of
        :meth:`tag_continuation`."""
        q = np.clip(self.miss_rate(d), 1e-12, 1.0)
        rho1, rho2, rho3 = self.tag_continuation(d, q)
        return np.asarray(
            q
            * np.where(m >= 2, rho1, 1.0)
            * np.where(m >= 3, rho2, 1.0)
            * rho3 ** np.maximum(m - 3.0, 0.0)
        )

    def false_alarm_risk(self, d: IntArray) -> FloatArray:
        """alpha per advertisement: the design rate R (per day per 1,000 tags; the class's
        own if it has one) spread over the adverts a tag sends in a day,
        alpha = R / 1000 x interval / 86,400 s."""
        rate = self._per_class(
            d, self._class_fa_rate, self.rules.missing.false_alarms_per_day_per_1000_tags
        )
        return rate / 1000.0 * self._interval(d) / SECONDS_PER_DAY

    def silence_threshold(self, d: IntArray) -> tuple[FloatArray, FloatArray]:
        """theta = k * (interval + advDelay max) + latency, k the fewest misses in a row with
        P(silent for k | present) <= alpha.

        A present tag stays silent past theta only if its next k advertisements were all
        missed (BLE Core Vol 6 Part B 4.4.2.2.1: events are advInterval + advDelay apart,
        advDelay <= 10 ms), which happens with :meth:`silent_probability` (not q^k: losses
        come in bursts); with alpha from :meth:`false_alarm_risk` the expected false
        missing-tag alarms stay below the design rate. A tag that last reported a cell at or
        below ``dying_battery_pct`` is expected to fall silent: k = min_missed.
        """
        cfg = self.rules.missing
        q = np.clip(self.miss_rate(d), 1e-12, 1 - 1e-12)
        rho1, rho2, rho3 = self.tag_continuation(d, q)
        alpha = self.false_alarm_risk(d)
        # fewest k with q rho1 rho2 rho3^(k-3) <= alpha: the chain for k = 1, 2, 3, then the
        # geometric tail solved in closed form (2.0000000000000004 is 2)
        head = q * rho1 * rho2
        tail = 3.0 + np.ceil(np.maximum(np.log(head / alpha), 0.0) / -np.log(rho3) - 1e-9)
        k = np.where(q <= alpha, 1.0, np.where(q * rho1 <= alpha, 2.0, np.where(head <= alpha, 3.0, tail)))
        bat = self.tags["battery"][d]
        dying = (bat >= 0) & (bat <= cfg.dying_battery_pct)
        k = np.where(dying, cfg.min_missed, np.clip(k, cfg.min_missed, cfg.max_missed))
        return k * (self._interval(d) + cfg.jitter_s) + cfg.latency_s, k

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
        tg = self.tags
        if d is not None:
            z = int(tg["zone"][d]) if zone is None else zone
            return Event(
                rule=rule,
                t=float(t),
                ruleset_version=self.rules.version,
                tag=self._tag_id(d),
                x=float(tg["x"][d]),
                y=float(tg["y"][d]),
                r90=float(tg["r90"][d]),
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
        self.counters["rejected_rows"] += int((~ok).sum())
        rows = rows[ok]
        if len(rows) == 0:
            return []
        self.counters["sightings"] += len(rows)
        self._obs_version += 1
        tg = self.tags
        dev = rows["device"].astype(np.int64)
        self._grow(int(dev.max()) + 1)
        t = rows["t"].astype(float)
        # Newest time per device: sort by time, keep the last occurrence of each device.
        order = np.argsort(t, kind="stable")
        rev_dev = dev[order][::-1]
        u_dev, last_idx = np.unique(rev_dev, return_index=True)
        newest = t[order][::-1][last_idx]
        first_dev, first_idx = np.unique(dev[order], return_index=True)
        first_t = t[order][first_idx]
        events: list[Event] = []
        # Tags that were missing, pending or exited and are heard again.
        back = u_dev[(tg["missing"][u_dev] | tg["pending"][u_dev] | tg["exited"][u_dev])]
        if len(back):
            tb = first_t[np.searchsorted(first_dev, back)]
            for d, tt in zip(back.tolist(), tb.tolist(), strict=True):
                rule = "exit_case_cleared" if tg["pending"][d] else "tag_found"
                events.append(
                    self._event(
                        rule,
                        tt,
                        d,
                        silent_since=float(tg["heard_t"][d]),
                        was="pending exit"
                        if tg["pending"][d]
                        else ("exited" if tg["exited"][d] else "missing"),
                    )
                )
            tg["missing"][back] = False
            tg["pending"][back] = False
            tg["exited"][back] = False
        prev = tg["heard_t"][u_dev]
        tg["heard_t"][u_dev] = np.fmax(prev, newest)

        # Frame counters: distinct (device, seq) pairs; gaps are missed advertisements.
        has = rows["seq"] >= 0
        if has.any():
            key = dev[has] * (1 << 32) + rows["seq"][has].astype(np.int64)
            uk = np.unique(key)
            kd, ks = uk >> 32, uk & ((1 << 32) - 1)
            dd, start, count = np.unique(kd, return_index=True, return_counts=True)
            first, last = ks[start], ks[start + count - 1]
            prev_seq = tg["last_seq"][dd]
            fresh = first > prev_seq  # counters that went backwards (reset, late rows): no gap
            gap = np.where(fresh & (prev_seq >= 0), first - prev_seq - 1, 0)
            span_missed = np.where(fresh, last - first + 1 - count, 0)
            tg["n_missed"][dd] += gap + span_missed
            tg["n_heard"][dd] += np.where(fresh, count, 0)
            self.g_sent[dd] += gap + np.where(fresh, last - first + 1, 0)
            self.g_missed[dd] += gap + span_missed
            # Runs of misses closed by this batch (the gap before each heard frame), for the
            # site-wide burst statistics; runs still open (a silent tag) are not counted.
            runs = np.diff(ks) - 1
            runs[np.diff(kd) != 0] = 0
            fresh_row = np.repeat(fresh, count)
            runs = np.where(fresh_row[1:], runs, 0)
            cap = self.rules.missing.max_missed
            all_runs = np.minimum(np.concatenate([gap, runs]), cap)
            run_dev = np.concatenate([dd, kd[1:]])
            has_run = all_runs > 0
            all_runs, run_dev = all_runs[has_run], run_dev[has_run]
            self.burst_missed += int(all_runs.sum())
            self.burst_continued += int((all_runs - 1).sum())
            self.burst_deep += int(np.maximum(all_runs - 2, 0).sum())
            self.burst_deeper += int(np.maximum(all_runs - 3, 0).sum())
            np.add.at(tg["b_missed"], run_dev, all_runs)
            np.add.at(tg["b_cont"], run_dev, all_runs - 1)
            np.add.at(tg["b_deep"], run_dev, np.maximum(all_runs - 2, 0))
            np.add.at(tg["b_deeper"], run_dev, np.maximum(all_runs - 3, 0))
            tg["last_seq"][dd] = np.maximum(prev_seq, last)
            # Per (tag, gateway): distinct frames heard (channels of one frame count once).
            cell = dev[has] * n_gw + rows["gateway"][has].astype(np.int64)
            uc = np.unique(cell * (1 << 32) + rows["seq"][has].astype(np.int64)) >> 32
            cells, hits = np.unique(uc, return_counts=True)
            self.g_heard.ravel()[cells] += hits.astype(np.int32)

        # Gateways: newest time and counts per time bucket.
        gw = rows["gateway"].astype(np.int64)
        rev_gw = gw[order][::-1]
        ug, gi = np.unique(rev_gw, return_index=True)
        self.gw_heard_t[ug] = np.fmax(self.gw_heard_t[ug], t[order][::-1][gi])
        bucket = np.floor(t / self.rules.gateway.bucket_s).astype(np.int64)
        for b in np.unique(bucket).tolist():
            if b < self._gw_next_bucket:
                continue  # bucket already judged: a late row, counted in rejected_rows
            counts = np.bincount(gw[bucket == b], minlength=n_gw)
            acc = self._gw_buckets.get(b)
            self._gw_buckets[b] = counts if acc is None else acc + counts
        return self._out(events)

    # -- checkouts ----------------------------------------------------------------------

    def ingest_checkouts(
        self, rows: NDArray[np.void], watermark: float | None = None
    ) -> list[Event]:
        """Record checkout (POS) events. ``watermark``: the feed is complete up to this event
        time (default: its newest record)."""
        if rows.dtype != CHECKOUT_DTYPE:
            raise TypeError("checkouts must use engine.rules.events.CHECKOUT_DTYPE")
        ok = (rows["device"] >= 0) & np.isfinite(rows["t"])
        self.counters["rejected_rows"] += int((~ok).sum())
        rows = rows[ok]
        if len(rows):
            self.counters["checkouts"] += len(rows)
            d = rows["device"].astype(np.int64)
            self._grow(int(d.max()) + 1)
            order = np.argsort(rows["t"], kind="stable")
            # Newest checkout per device wins (fancy assignment in time order).
            self.tags["checkout_t"][d[order]] = np.fmax(
                self.tags["checkout_t"][d[order]], rows["t"][order]
            )
            mark = float(rows["t"].max())
            self.checkout_watermark = max(self.checkout_watermark, mark)
        if watermark is not None:
            self.checkout_watermark = max(self.checkout_watermark, float(watermark))
        return []

    # -- fixes --------------------------------------------------------------------------

    def process_fixes(self, fixes: NDArray[np.void]) -> list[Event]:
        """Apply the position rules to a batch of fixes (any order, any mix of times)."""
        if len(fixes) == 0:
            return []
        fixes = fixes[np.argsort(fixes["t"], kind="stable")]
        self.counters["fixes"] += len(fixes)
        self._grow(int(fixes["device"].max()) + 1)
        times, starts = np.unique(fixes["t"], return_index=True)
        bounds = [*starts.tolist(), len(fixes)]
        events: list[Event] = []
        for i, t in enumerate(times.tolist()):  # one iteration per window time, not per row
            rows = fixes[bounds[i] : bounds[i + 1]]
            d_all = rows["device"].astype(np.int64)
            _, last = np.unique(d_all[::-1], return_index=True)
            rows = rows[::-1][last]  # one fix per device and time: the last given
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
        # A moved tag has new gateways: its per-gateway reception history starts again.
        self.g_heard[d[motion == 1]] = 0
        self.g_sent[d[motion == 1]] = 0
        self.g_missed[d[motion == 1]] = 0
        cls = tg["cls"][d]

        if rules.registry.enabled:
            unknown = (cls < 0) & rules.registry.alert_unknown
            revoked = tg["revoked"][d]
            due = (unknown | revoked) & (t - tg["reg_t"][d] >= rules.registry.cooldown_s)
            for j in np.flatnonzero(due).tolist():
                dj = int(d[j])
                events.append(
                    self._event(
                        "revoked_tag" if revoked[j] else "unknown_tag", t, dj, device_code=dj
                    )
                )
            tg["reg_t"][d[due]] = t

        if rules.exit.enabled:
            p = self.exit_region.probability(x, y, r90)
            prev_t = tg["pz_t"][d]
            decay = np.where(
                np.isfinite(prev_t),
                np.exp(-(t - np.nan_to_num(prev_t)) / rules.exit.zone_memory_s),
                0.0,
            )
            tg["pz"][d] = np.maximum(tg["pz"][d] * decay, p)
            tg["pz_t"][d] = t

        if rules.zone_transition.enabled:
            cand, same = tg["cand"][d], tg["cand"][d] == z
            n = np.where(same, tg["cand_n"][d] + 1, 1)
            tg["cand"][d], tg["cand_n"][d] = z, n
            old = tg["conf"][d]
            change = (n >= rules.zone_transition.confirm_fixes) & (z != old)
            for j in np.flatnonzero(change).tolist():
                dj = int(d[j])
                if old[j] != NO_ZONE:
                    events.append(
                        self._event(
                            "zone_exit",
                            t,
                            dj,
                            zone=int(old[j]),
                            stayed_s=t - float(tg["zone_since"][dj]),
                        )
                    )
                if z[j] != NO_ZONE:
                    events.append(
                        self._event(
                            "zone_enter",
                            t,
                            dj,
                            zone=int(z[j]),
                            fixes_in_zone=int(n[j]),
                            previous=self._zone_name(int(old[j])),
                        )
                    )
            dc = d[change]
            tg["conf"][dc], tg["zone_since"][dc], tg["dwell_done"][dc] = z[change], t, False
            del cand

        if rules.battery.enabled:
            self._battery(t, d, rows["battery"].astype(np.int64), events)

        if rules.misplaced.enabled and len(self._forbidden):
            self._misplaced(t=t, d=d, cls=cls, x=x, y=y, r90=r90, motion=motion, events=events)

        if rules.after_hours.enabled:
            cfg = rules.after_hours
            tod = (t + cfg.time_offset_s) % SECONDS_PER_DAY
            working = any(
                a <= tod <= b + 59.999 if a <= b else (tod >= a or tod <= b + 59.999)
                for a, b in self._hours
            )
            if not working:
                due = (motion == 1) & (t - tg["ah_t"][d] >= cfg.cooldown_s)
                events.extend(
                    self._event("after_hours_movement", t, int(d[j]), time_of_day_s=tod)
                    for j in np.flatnonzero(due).tolist()
                )
                tg["ah_t"][d[due]] = t

    def _battery(self, t: float, d: IntArray, b: IntArray, events: list[Event]) -> None:
        cfg, tg = self.rules.battery, self.tags
        known = b >= 0
        d, b = d[known], b[known].astype(float)
        if len(d) == 0:
            return
        tg["battery"][d] = b
        # A reading well above the first one means a new cell: restart the fit.
        new_cell = np.isnan(tg["bat_b0"][d]) | (b > tg["bat_b0"][d] + 20)
        tg["bat_t0"][d[new_cell]], tg["bat_b0"][d[new_cell]] = t, b[new_cell]
        tg["bat_t1"][d], tg["bat_b1"][d] = t, b
        tg["bat_done"][d[b > cfg.rearm_pct]] = False
        low = (b <= cfg.low_pct) & ~tg["bat_done"][d]
        if low.any():
            dl = d[low]
            days = self.days_to_empty(dl)
            for j, dj in enumerate(dl.tolist()):
                events.append(
                    self._event(
                        "battery_low",
                        t,
                        dj,
                        battery_pct=float(tg["battery"][dj]),
                        days_to_empty=float(days[j]),
                        empty_at_t=t + float(days[j]) * SECONDS_PER_DAY,
                    )
                )
            tg["bat_done"][dl] = True

    def drain_per_s(self, d: IntArray) -> FloatArray:
        """Per-tag drain (percent per second): the two-point slope once the history spans
        ``min_fit_span_s`` and shows a drain, else the class's nominal drain."""
        tg, cfg = self.tags, self.rules.battery
        span = tg["bat_t1"][d] - tg["bat_t0"][d]
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = (tg["bat_b0"][d] - tg["bat_b1"][d]) / span
        nominal = self._per_class(
            d, self._class_drain_per_s, cfg.default_drain_pct_per_day / SECONDS_PER_DAY
        )
        fitted = (span >= cfg.min_fit_span_s) & (slope > 0)
        return np.where(fitted, slope, nominal)

    def days_to_empty(self, d: IntArray) -> FloatArray:
        return np.asarray(self.tags["bat_b1"][d] / self.drain_per_s(d) / SECONDS_PER_DAY)

    def _misplaced(
        self,
        *,
        t: float,
        d: IntArray,
        cls: NDArray[np.int32],
        x: FloatArray,
        y: FloatArray,
        r90: FloatArray,
        motion: NDArray[np.int8],
        events: list[Event],
    ) -> None:
        cfg, tg = self.rules.misplaced, self.tags
        p = np.zeros(len(d))
        for c in np.unique(cls[cls >= 0]).tolist():
            sel = cls == c
            p[sel] = self._forbidden[c].probability(x[sel], y[sel], r90[sel])
        prev_t = tg["misp_t"][d]
        dt = np.where(np.isfinite(prev_t), t - np.nan_to_num(prev_t), 1.0)
        alpha = 1.0 - np.exp(-np.minimum(dt, 5 * cfg.time_constant_s) / cfg.time_constant_s)
        ewma = tg["misp"][d] + alpha * (p - tg["misp"][d])
        ewma = np.where(motion == 1, 0.0, ewma)  # a carried tag is not misplaced (yet)
        tg["misp"][d], tg["misp_t"][d] = ewma, t
        tg["misp_done"][d[ewma < cfg.rearm]] = False
        fire = (ewma >= cfg.threshold) & ~tg["misp_done"][d] & (cls >= 0)
        for j in np.flatnonzero(fire).tolist():
            dj = int(d[j])
            events.append(
                self._event(
                    "misplaced",
                    t,
                    dj,
                    confidence=float(ewma[j]),
                    p_forbidden_smoothed=float(ewma[j]),
                    p_forbidden_now=float(p[j]),
                    tag_class=self.ctx.class_names[int(cls[j])],
                )
            )
        tg["misp_done"][d[fire]] = True

    # -- the clock ------------------------------------------------------------------------

    def advance(self, now: float) -> list[Event]:
        """Decide everything that depends on absence of data up to event time ``now``."""
        self.now = max(self.now, now)
        now = self.now
        events: list[Event] = []
        if self.rules.missing.enabled or self.rules.exit.enabled:
            self._presence(now, events)
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

    def _presence(self, now: float, events: list[Event]) -> None:
        tg, cfg = self.tags, self.rules.exit
        n = tg.n
        if n == 0:
            return
        idx = np.arange(n)
        watch = (
            np.isfinite(tg["heard_t"][:n])
            & ~tg["missing"][:n]
            & ~tg["pending"][:n]
            & ~tg["exited"][:n]
        )
        d = idx[watch]
        # Only tags silent for at least the smallest possible theta need their q.
        d = d[now - tg["heard_t"][d] >= self.rules.missing.min_missed * self._interval(d)]
        theta, k = self.silence_threshold(d)
        silent = now - tg["heard_t"][d] >= theta
        d, theta, k = d[silent], theta[silent], k[silent]
        if len(d):
            t_v = tg["heard_t"][d] + theta
            near_exit = cfg.enabled & (tg["pz"][d] >= cfg.candidate_probability)
            co = tg["checkout_t"][d]
            checked = (co >= tg["heard_t"][d] - cfg.checkout_before_s) & (
                co <= tg["heard_t"][d] + cfg.checkout_after_s
            )
            pend = d[near_exit]
            tg["pending"][pend], tg["vanish_t"][pend] = True, t_v[near_exit]
            tg["exit_t"][pend] = np.fmax(tg["fix_t"][pend], tg["heard_t"][pend])
            gone = ~near_exit & checked
            for dj, tv in zip(d[gone].tolist(), t_v[gone].tolist(), strict=True):
                events.append(
                    self._event(
                        "exit_checked_out",
                        tv,
                        dj,
                        checkout_t=float(tg["checkout_t"][dj]),
                        note="checked out, then left out of sight away from an exit",
                    )
                )
            tg["exited"][d[gone]] = True
            lost = ~near_exit & ~checked
            if self.rules.missing.enabled:
                for j in np.flatnonzero(lost).tolist():
                    dj = int(d[j])
                    events.append(
                        self._missing_event(dj, float(t_v[j]), float(theta[j]), int(k[j]))
                    )
                tg["missing"][d[lost]] = True
        if cfg.enabled:
            self._pending_exits(now, events)

    def _missing_event(self, d: int, t: float, theta: float, k: int, **extra: Any) -> Event:
        tg = self.tags
        dd = np.array([d])
        q = float(self.miss_rate(dd)[0])
        p_silent = float(self.silent_probability(dd, np.array([float(k)]))[0])
        return self._event(
            "missing_tag",
            t,
            d,
            confidence=1.0 - p_silent,
            last_heard_t=float(tg["heard_t"][d]),
            silence_threshold_s=theta,
            missed_in_a_row=k,
            miss_rate=q,
            burst_continuation=[float(r[0]) for r in self.tag_continuation(dd, np.array([q]))],
            p_silent_if_present=p_silent,
            battery_pct=float(tg["battery"][d]),
            expected_interval_s=float(self._interval(np.array([d]))[0]),
            **extra,
        )

    def _pending_exits(self, now: float, events: list[Event]) -> None:
        tg, cfg = self.tags, self.rules.exit
        d = np.flatnonzero(tg["pending"][: tg.n])
        if len(d) == 0:
            return
        exit_t, co = tg["exit_t"][d], tg["checkout_t"][d]
        window = cfg.checkout_before_s + cfg.checkout_after_s
        matched = (co >= exit_t - cfg.checkout_before_s) & (co <= exit_t + cfg.checkout_after_s)
        near = (
            ~matched
            & (co >= exit_t - cfg.checkout_before_s - window)
            & (co <= exit_t + cfg.checkout_after_s + window)
        )
        ready = self.checkout_watermark >= exit_t + cfg.checkout_after_s
        stalled = ~matched & ~ready & (now - tg["vanish_t"][d] >= cfg.max_wait_s)
        decide_t = np.maximum(tg["vanish_t"][d], exit_t + cfg.checkout_after_s)
        for j in np.flatnonzero(matched).tolist():
            dj = int(d[j])
            events.append(
                self._event(
                    "exit_checked_out",
                    float(max(tg["vanish_t"][dj], co[j])),
                    dj,
                    checkout_t=float(co[j]),
                    exit_t=float(exit_t[j]),
                    p_zone=float(tg["pz"][dj]),
                )
            )
        tg["exited"][d[matched]] = True
        scored = ~matched & ready
        if scored.any():
            ds = d[scored]
            conf, parts = self.exit_confidence(ds, near[scored])
            theta, k = self.silence_threshold(ds)
            for j, dj in enumerate(ds.tolist()):
                c = float(conf[j])
                ev: dict[str, Any] = {name: float(v[j]) for name, v in parts.items()}
                ev |= {
                    "exit_t": float(tg["exit_t"][dj]),
                    "last_heard_t": float(tg["heard_t"][dj]),
                    "checkout_t": float(tg["checkout_t"][dj]),
                }
                t_dec = float(decide_t[scored][j])
                if c >= cfg.alarm_confidence:
                    events.append(
                        self._event("exit_without_checkout", t_dec, dj, confidence=c, **ev)
                    )
                    tg["exited"][dj] = True
                elif c >= cfg.review_confidence:
                    events.append(
                        self._event(
                            "exit_unresolved",
                            t_dec,
                            dj,
                            confidence=c,
                            reason="evidence between review and alarm confidence",
                            **ev,
                        )
                    )
                    tg["exited"][dj] = True
                else:
                    # Not an exit after all: a tag that fell silent near the door.
                    events.append(
                        self._missing_event(
                            dj, t_dec, float(theta[j]), int(k[j]), exit_confidence=c
                        )
                    )
                    tg["missing"][dj] = True
        for j in np.flatnonzero(stalled).tolist():
            dj = int(d[j])
            conf, parts = self.exit_confidence(np.array([dj]), near[j : j + 1])
            factors: dict[str, Any] = {name: float(v[0]) for name, v in parts.items()}
            events.append(
                self._event(
                    "exit_unresolved",
                    now,
                    dj,
                    confidence=float(conf[0]),
                    reason="checkout feed has not caught up",
                    checkout_watermark=float(self.checkout_watermark),
                    exit_t=float(exit_t[j]),
                    **factors,
                )
            )
            tg["exited"][dj] = True
        tg["pending"][d[matched | scored | stalled]] = False

    def exit_confidence(
        self, d: IntArray, near_checkout: NDArray[np.bool_]
    ) -> tuple[FloatArray, dict[str, FloatArray]]:
        """Confidence that tag ``d`` left through an exit without checkout, and its factors:

        P(zone)    decaying max over recent fixes of P(position inside an exit zone);
        P(vanish)  1 - q^m: m advertisements missed in a row since last heard, q the
                   tag's miss rate; times the share of exit-covering gateways that are up;
        P(motion)  1 if the tag reported motion within motion_window_s, else still_factor;
        battery    low_battery_factor if the last reading was low (silence may be death);
        checkout   near_miss_factor if a checkout lies just outside the window, else 1.
        """
        tg, cfg = self.tags, self.rules.exit
        p_zone = tg["pz"][d]
        missed = np.floor((tg["vanish_t"][d] - tg["heard_t"][d]) / self._interval(d))
        gw_ok = 1.0
        if len(self._exit_gateways):
            gw_ok = float(np.mean(self.gw_state[self._exit_gateways] == 0))
        p_vanish = (1.0 - self.silent_probability(d, np.maximum(missed, 1.0))) * gw_ok
        p_motion = np.where(
            tg["exit_t"][d] - tg["moving_t"][d] <= cfg.motion_window_s, 1.0, cfg.still_factor
        )
        bat = tg["battery"][d]
        p_batt = np.where((bat >= 0) & (bat <= cfg.low_battery_pct), cfg.low_battery_factor, 1.0)
        p_co = np.where(near_checkout, cfg.near_miss_factor, 1.0)
        conf = p_zone * p_vanish * p_motion * p_batt * p_co
        return conf, {
            "p_zone": p_zone,
            "p_vanish": p_vanish,
            "p_motion": p_motion,
            "battery_factor": p_batt,
            "checkout_factor": p_co,
        }

    def _gateways(self, now: float, events: list[Event]) -> None:
        cfg = self.rules.gateway
        n_gw = len(self.ctx.gateway_ids)
        half = cfg.baseline_halflife_s
        last = math.floor(now / cfg.bucket_s) - 1  # newest complete bucket
        while self._gw_next_bucket <= last:
            b = self._gw_next_bucket
            counts = self._gw_buckets.pop(b, np.zeros(n_gw, np.int64))
            rate = counts / cfg.bucket_s
            t_end = (b + 1) * cfg.bucket_s
            judged = (t_end > cfg.warmup_s) & (self.gw_baseline >= cfg.min_baseline_per_s)
            low = judged & (rate < cfg.degraded_fraction * self.gw_baseline)
            self.gw_low_streak = np.where(low, self.gw_low_streak + 1, 0)
            for g in np.flatnonzero(
                (self.gw_low_streak >= cfg.degraded_buckets) & (self.gw_state == 0)
            ).tolist():
                events.append(
                    self._event(
                        "gateway_degraded",
                        t_end,
                        gateway=g,
                        rate_per_s=float(rate[g]),
                        baseline_per_s=float(self.gw_baseline[g]),
                        buckets_low=int(self.gw_low_streak[g]),
                    )
                )
                self.gw_state[g] = 2
            good = ~low
            for g in np.flatnonzero(good & (self.gw_state != 0) & (rate > 0)).tolist():
                events.append(
                    self._event(
                        "gateway_recovered",
                        t_end,
                        gateway=g,
                        rate_per_s=float(rate[g]),
                        baseline_per_s=float(self.gw_baseline[g]),
                    )
                )
                self.gw_state[g] = 0
            # The baseline learns only from healthy buckets, so an outage does not become normal.
            w = 1.0 - 0.5 ** (cfg.bucket_s / half)
            learn = good & (self.gw_state == 0)
            self.gw_baseline = np.where(
                learn,
                np.where(
                    self.gw_baseline > 0, self.gw_baseline + w * (rate - self.gw_baseline), rate
                ),
                self.gw_baseline,
            )
            self._gw_next_bucket = b + 1
        silent = (
            (self.gw_state == 0)
            & (now > cfg.warmup_s)
            & (self.gw_baseline >= cfg.min_baseline_per_s)
            & (now - np.nan_to_num(self.gw_heard_t, nan=-np.inf) >= cfg.silent_s)
        )
        for g in np.flatnonzero(silent).tolist():
            events.append(
                self._event(
                    "gateway_silent",
                    float(self.gw_heard_t[g]) + cfg.silent_s,
                    gateway=g,
                    last_heard_t=float(self.gw_heard_t[g]),
                    baseline_per_s=float(self.gw_baseline[g]),
                )
            )
            self.gw_state[g] = 1

    def _dwell(self, now: float, events: list[Event]) -> None:
        tg = self.tags
        n = tg.n
        conf = tg["conf"][:n]
        limit = (
            np.where(conf >= 0, self._dwell_limit[np.maximum(conf, 0)], np.inf)
            if n
            else np.zeros(0)
        )
        due = np.flatnonzero(
            ~tg["dwell_done"][:n]
            & (now - tg["zone_since"][:n] >= limit)
            & ~tg["missing"][:n]
            & ~tg["exited"][:n]
        )
        events.extend(
            self._event(
                "dwell",
                float(tg["zone_since"][dj] + limit[dj]),
                dj,
                zone=int(conf[dj]),
                limit_s=float(limit[dj]),
                since_t=float(tg["zone_since"][dj]),
            )
            for dj in due.tolist()
        )
        tg["dwell_done"][due] = True

    # -- reports --------------------------------------------------------------------------

    def cycle_count(self, t: float) -> list[Event]:
        """Expected tags per zone (last confirmed zone, not gone) against those heard recently."""
        tg = self.tags
        n = min(tg.n, len(self.ctx.device_class))
        d = np.arange(n)
        theta, _ = self.silence_threshold(d)
        present = np.isfinite(tg["heard_t"][:n]) & (t - tg["heard_t"][:n] < theta)
        expected = ~tg["exited"][:n]
        events = []
        for zi, name in enumerate(self.ctx.zones.names):
            in_zone = tg["conf"][:n] == zi
            exp_n = int((in_zone & expected).sum())
            seen = in_zone & present
            miss = d[in_zone & expected & ~present]
            self.cycle_counts.append(CycleCount(t, zi, exp_n, int(seen.sum())))
            events.append(
                Event(
                    rule="cycle_count",
                    t=float(t),
                    ruleset_version=self.rules.version,
                    zone=name,
                    evidence={
                        "expected": exp_n,
                        "seen": int(seen.sum()),
                        "missing": len(miss),
                        "missing_tags": [self._tag_id(int(m)) for m in miss[:MAX_LISTED]],
                    },
                )
            )
        return events

    def battery_forecast(self, t: float) -> list[Event]:
        """Per class: the day (from now) when ``cohort_fraction`` of its tags will be empty."""
        tg, cfg = self.tags, self.rules.battery
        n = min(tg.n, len(self.ctx.device_class))
        d = np.arange(n)
        have = np.isfinite(tg["bat_b1"][:n])
        events = []
        for c, name in enumerate(self.ctx.class_names):
            sel = d[have & (tg["cls"][:n] == c)]
            if len(sel) == 0:
                continue
            days = self.days_to_empty(sel)
            cohort_days = float(np.quantile(days, cfg.cohort_fraction))
            first = int(np.argmin(days))
            events.append(
                Event(
                    rule="battery_forecast",
                    t=float(t),
                    ruleset_version=self.rules.version,
                    evidence={
                        "tag_class": name,
                        "tags": len(sel),
                        "cohort_fraction": cfg.cohort_fraction,
                        "cohort_days_to_empty": cohort_days,
                        "first_empty_tag": self._tag_id(int(sel[first])),
                        "first_empty_days": float(days[first]),
                        "low_now": int((tg["bat_b1"][sel] <= cfg.low_pct).sum()),
                    },
                )
            )
        return events
