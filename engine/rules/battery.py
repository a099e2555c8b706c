"""Battery: battery_low per tag (armed -> at or below ``low_pct`` -> re-armed above
``rearm_pct``), the per-tag drain (two-point fit, else the class's nominal drain) and the
per-class battery_forecast."""

from __future__ import annotations

import numpy as np

from engine.rules.core import SECONDS_PER_DAY, FloatArray, IntArray, RuleCore
from engine.rules.events import Event


class BatteryRules(RuleCore):
    """battery_low, battery_forecast."""

    def _setup(self) -> None:
        super()._setup()
        cfg = self.rules.battery
        drain = np.array(
            [
                cfg.nominal_drain_pct_per_day.get(n, cfg.default_drain_pct_per_day)
                for n in self.ctx.class_names
            ],
            dtype=float,
        )
        self._class_drain_per_s = drain / SECONDS_PER_DAY
        self._next_forecast_t = cfg.forecast_every_s

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
