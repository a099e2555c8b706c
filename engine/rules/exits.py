"""Exits and theft: exit evidence per fix, checkouts, pending exits and exit confidence.

Each fix updates ``pz``, a decaying max of P(position inside an exit zone)
(:meth:`_exit_evidence`). A tag that falls silent with ``pz`` at or above
``candidate_probability`` becomes a *pending exit* (engine/rules/presence.py); once the
checkout feed is complete past its exit window, :meth:`_pending_exits` decides it:
checkout matched -> exit_checked_out; else scored by :meth:`exit_confidence` ->
exit_without_checkout (alarm), exit_unresolved (review) or a missing_tag fallback; a feed
that stays behind past ``max_wait_s`` -> exit_unresolved. Each decision but the fallback
leaves the tag *exited*.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from numpy.typing import NDArray

from engine.rules.core import FloatArray, IntArray
from engine.rules.events import CHECKOUT_DTYPE
from engine.rules.geofence import ZoneRegion
from engine.rules.presence import PresenceRules

if TYPE_CHECKING:
    from engine.rules.events import Event


class ExitRules(PresenceRules):
    """exit_checked_out, exit_without_checkout, exit_unresolved."""

    def _setup(self) -> None:
        super()._setup()
        cfg, context = self.rules.exit, self.ctx
        zones = context.zones
        self._exit_zone_ids = sorted({i for z in cfg.exit_zones for i in zones.resolve(z)})
        # Renormalized to the outline: a tag carried to the door is inside the building until
        # it leaves, so the half of a door fix's Gaussian beyond the outer wall is no evidence
        # against the exit zone (it held P(zone) at about 0.5 for a fix at the door).
        polygons = [zones.polygons[i] for i in self._exit_zone_ids]
        self.exit_region = ZoneRegion(polygons, within=context.site_outline)
        # A carried tag's reach before its next advertisement: carry speed x its class's
        # interval (as missing_tag takes it; unregistered devices: none). One region per
        # distinct reach, built once.
        self._carry_reach_m = np.round(cfg.carry_speed_mps * self._class_interval, 2)
        self._reach_regions = {
            float(r): ZoneRegion(
                [shapely.union_all(polygons).buffer(float(r))], within=context.site_outline
            )
            for r in np.unique(self._carry_reach_m)
            if r > 0 and polygons
        }
        # Gateways covering the exits: their health discounts a tag's silence there.
        if self._exit_zone_ids and len(context.gateway_ids):
            d = shapely.distance(self.exit_region.geom, shapely.points(context.gateway_xy))
            self._exit_gateways = np.flatnonzero(d <= cfg.exit_gateway_radius_m)
        else:
            self._exit_gateways = np.zeros(0, np.int64)
        self.checkout_watermark = -np.inf

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

    def _exit_evidence(
        self, t: float, d: IntArray, x: FloatArray, y: FloatArray, r90: FloatArray
    ) -> None:
        """``pz``: the decaying max over recent fixes of P(the tag is in an exit zone by its
        next advertisement): P(position inside an exit zone) for a still tag; for a moving
        one (carried), P(position within its carry reach of one)."""
        tg, cfg = self.tags, self.rules.exit
        reach = np.where(
            tg["moving_t"][d] == t, self._per_class(d, self._carry_reach_m, 0.0), 0.0
        )
        # Each fix once, from its own region (a fix's probability depends on it alone).
        still = ~np.isin(reach, list(self._reach_regions))
        p = np.zeros(len(d))
        p[still] = self.exit_region.probability(x[still], y[still], r90[still])
        for r, region in self._reach_regions.items():
            sel = np.flatnonzero(reach == r)
            if len(sel):
                p[sel] = region.probability(x[sel], y[sel], r90[sel])
        prev_t = tg["pz_t"][d]
        decay = np.where(
            np.isfinite(prev_t),
            np.exp(-(t - np.nan_to_num(prev_t)) / cfg.zone_memory_s),
            0.0,
        )
        tg["pz"][d] = np.maximum(tg["pz"][d] * decay, p)
        tg["pz_t"][d] = t

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
