"""The engine: a sans-IO pipeline from sighting columns to positions, zones and state.

Like h11, it owns no sockets, files or clocks. A source calls :meth:`Engine.ingest`
with sighting arrays and :meth:`Engine.advance` with its watermark; the engine returns
:class:`Fixes` (arrays). All state transitions live here:

* windows: fix k summarises sightings with event time in [k*step - window, k*step);
* a window closes once the watermark (the newest event time ingested) passes its end
  by ``allowed_lateness_s``; a sighting older than the start of the oldest open window
  is *late*: it is rejected, counted, and the raw log still holds it for recomputation;
* last-known state per device is updated from each closed window, in time order.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from itertools import pairwise

import numpy as np
from numpy.typing import NDArray

from engine._heard import heard_cells, window_cells
from engine._order import member_of
from engine.contract import SIGHTING_DTYPE, UNKNOWN, GatewayInfo, Sightings, compress_rows, concat_rows, take_rows
from engine.ingest import IngestCounters, drop_redeliveries, merge_channels_by_time, validate
from engine.localize import (
    CHI2_2DOF_90,
    Estimates,
    Heard,
    ObstacleMap,
    RadioMap,
    SolvedRows,
    centroid_localize,
    knn_localize,
    knn_r90,
    radio_map_localize,
    strongest_gateway,
    wls_localize_heard,
)
from engine.track import (
    FixedLagGridSmoother,
    FixedLagKalmanSmoother,
    FixedLagParticleSmoother,
    FixedLagSmoother,
    FloorPlan,
    GridFilter,
    KalmanTracker,
    ParticleFilter,
    Smoothed,
    Tracker,
    ZoneHysteresis,
)
from radio_models.crb import crlb_rmse
from siteplan.zones import NO_ZONE, ZoneIndex

FloatArray = NDArray[np.float64]

FIX_DTYPE = np.dtype(
    [
        ("t", "f8"),
        ("device", "i4"),
        ("x", "f8"),
        ("y", "f8"),
        ("r90", "f4"),
        ("zone", "i4"),
        ("n_gateways", "i2"),
        ("method", "i1"),
        ("battery", "i1"),
        ("motion", "i1"),
    ]
)
# Windows localized per batch: bounds memory at (windows x devices x gateways).
WINDOWS_PER_CHUNK = 16


@dataclass(frozen=True)
class EngineConfig:
    gateways: GatewayInfo
    zones: ZoneIndex
    bounds: tuple[float, float, float, float]
    path_loss_exponent: float = 2.0
    sigma_db: float = 4.0
    default_tx_power_1m_dbm: float = -59.0
    tag_height_m: float = 1.0
    window_s: float = 4.0
    step_s: float = 1.0
    allowed_lateness_s: float = 2.0
    min_gateways: int = 3
    obstacle_map: ObstacleMap | None = None  # walls and racks of the site plan, if known
    # wls with an obstacle map: the Newton loop jumps to obstacle-cell edges and slides
    # along them instead of creeping towards them (engine._newton.newton_rows); off by default.
    wls_cell_edges: bool = False
    # wls with an obstacle map: the strongest gateways' starts only for rows whose centroid
    # start leaves a mean squared residual above this many sigma_db^2 (0: always).
    wls_gateway_starts_above: float = 0.0
    # wls with an obstacle map: a tag's fix before each block of WINDOWS_PER_CHUNK windows
    # (aligned to the window index) replaces the strongest gateways' starts for the tag's
    # rows in that block (one warm start instead of two); off by default: changes positions.
    wls_warm_start: bool = False
    localizer: str = "wls"  # one of LOCALIZERS
    tracker: str = "none"  # one of TRACKERS
    radio_map: RadioMap | None = None  # for knn, radio-map, hmm and particle
    floor_plan: FloorPlan | None = None  # for hmm and particle; open floor if absent
    particles: int = 128
    tracker_speed_mps: float = 1.5
    zone_hysteresis: bool = False
    seed: int = 0
    # Calibrated fixed RSSI offset of each gateway (site file radio.gateway_offsets_db):
    # subtracted from every window's RSSI before any estimator or tracker sees it, so
    # radio maps must be built from corrected readings too.
    gateway_offset_db: FloatArray | None = None
    kalman_fix_inflation: float = 1.0  # KalmanTracker.fix_inflation
    # Factor on a tracker's r90, chosen so it covers 90 % of errors on held-out survey
    # walks (tagtwin.evaluation.choose_tracking); 1 leaves it as the filter computes it.
    tracker_r90_scale: float = 1.0
    # Fixed-lag smoothing (kalman, hmm, particle): each fix is the estimate given the readings up
    # to this many seconds after its window, and leaves that much later (0: the filter).
    smoother_lag_s: float = 0.0
    # HMM: spread of an offset shared by all gateways of a window, integrated out of its
    # emission (engine.track.common_offset_log_likelihood); 0: the map's own likelihood.
    tracker_offset_sigma_db: float = 0.0

    def __post_init__(self) -> None:
        if self.localizer not in LOCALIZERS:
            raise ValueError(f"localizer {self.localizer!r} is not one of {LOCALIZERS}")
        if self.tracker not in TRACKERS:
            raise ValueError(f"tracker {self.tracker!r} is not one of {TRACKERS}")
        if self.smoother_lag_s < 0 or (self.smoother_lag_s > 0 and self.tracker == "none"):
            raise ValueError(f"smoother_lag_s {self.smoother_lag_s}: a lag >= 0, for tracker kalman, hmm or particle")
        needs_map = self.localizer in ("knn", "radio-map") or self.tracker in ("hmm", "particle")
        if needs_map and self.radio_map is None:
            raise ValueError(
                f"localizer {self.localizer!r} / tracker {self.tracker!r} need a radio_map"
            )


KNN_K = 4  # neighbours for kNN on a dense (0.5 m) radio map
# Fraction of the single-shot radius a tracker may shrink a moving tag's radius to.
MOVING_R90_FLOOR = 0.5

LOCALIZERS = ("wls", "centroid", "strongest", "knn", "radio-map")
TRACKERS = ("none", "kalman", "hmm", "particle")


def make_tracker(cfg: EngineConfig) -> Tracker | None:
    """The tracker a config asks for (None for single-shot fixes)."""
    if cfg.tracker == "none":
        return None
    lag = cfg.smoother_lag_s
    if cfg.tracker == "kalman":
        if lag > 0:
            return FixedLagKalmanSmoother(bounds=cfg.bounds, fix_inflation=cfg.kalman_fix_inflation,
                                          lag_s=lag, step_s=cfg.step_s)
        return KalmanTracker(bounds=cfg.bounds, fix_inflation=cfg.kalman_fix_inflation)
    assert cfg.radio_map is not None  # checked in EngineConfig
    plan = cfg.floor_plan or FloorPlan.open_floor(cfg.bounds)
    if cfg.tracker == "hmm":
        if lag > 0:
            return FixedLagGridSmoother(cfg.radio_map, plan, step_s=cfg.step_s, speed_mps=cfg.tracker_speed_mps,
                                        offset_sigma_db=cfg.tracker_offset_sigma_db, lag_s=lag)
        return GridFilter(cfg.radio_map, plan, step_s=cfg.step_s, speed_mps=cfg.tracker_speed_mps,
                          offset_sigma_db=cfg.tracker_offset_sigma_db)
    if lag > 0:
        return FixedLagParticleSmoother(cfg.radio_map, plan, particles=cfg.particles,
                                        max_speed_mps=2 * cfg.tracker_speed_mps, seed=cfg.seed,
                                        lag_s=lag, step_s=cfg.step_s)
    return ParticleFilter(
        cfg.radio_map,
        plan,
        particles=cfg.particles,
        max_speed_mps=2 * cfg.tracker_speed_mps,
        seed=cfg.seed,
    )


@dataclass
class LastKnown:
    """Per-device arrays (index = device code) of the newest fix."""

    t: FloatArray = field(default_factory=lambda: np.zeros(0))
    x: FloatArray = field(default_factory=lambda: np.zeros(0))
    y: FloatArray = field(default_factory=lambda: np.zeros(0))
    r90: FloatArray = field(default_factory=lambda: np.zeros(0))
    zone: NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, np.int32))
    battery: NDArray[np.int8] = field(default_factory=lambda: np.zeros(0, np.int8))

    def grow(self, n: int) -> None:
        have = len(self.t)
        if n <= have:
            return
        extra = n - have
        self.t = np.r_[self.t, np.full(extra, np.nan)]
        self.x = np.r_[self.x, np.full(extra, np.nan)]
        self.y = np.r_[self.y, np.full(extra, np.nan)]
        self.r90 = np.r_[self.r90, np.full(extra, np.nan)]
        self.zone = np.r_[self.zone, np.full(extra, NO_ZONE, np.int32)]
        self.battery = np.r_[self.battery, np.full(extra, UNKNOWN, np.int8)]

    def update(self, fixes: NDArray[np.void]) -> None:
        if len(fixes) == 0:
            return
        self.grow(int(fixes["device"].max()) + 1)
        # Fixes arrive in time order; the last write per device wins.
        d = fixes["device"]
        self.t[d], self.x[d], self.y[d] = fixes["t"], fixes["x"], fixes["y"]
        self.r90[d], self.zone[d] = fixes["r90"], fixes["zone"]
        known = fixes["battery"] != UNKNOWN
        self.battery[d[known]] = fixes["battery"][known]


def _event_key(rows: Sightings) -> NDArray[np.int64]:
    """A hash of what identifies an advertising event at a gateway (gateway, device and
    event counter, or the exact time when there is no counter). Collisions only make a
    few extra rows go through deduplication again, which is harmless."""
    t_bits = np.ascontiguousarray(rows["t"]).view(np.int64) * (rows["seq"] == UNKNOWN)
    return (
        rows["gateway"].astype(np.int64) * 73_856_093
        ^ rows["device"].astype(np.int64) * 19_349_663
        ^ rows["seq"].astype(np.int64) * 83_492_791
        ^ t_bits
    )


def _row_bytes(rows: Sightings) -> NDArray[np.void]:
    """Each row as one opaque value, for exact set membership between row arrays."""
    return np.ascontiguousarray(rows).view(np.dtype((np.void, rows.dtype.itemsize)))


def _rank(keys: NDArray[np.int64], n_keys: int) -> tuple[NDArray[np.int64], NDArray[np.intp]]:
    """``np.unique(keys, return_inverse=True)`` for keys in [0, n_keys): by a presence
    table when that is smaller than sorting the keys would be, else by sorting."""
    if n_keys > 4 * len(keys) + 4096:
        uniq, inverse = np.unique(keys, return_inverse=True)
        return uniq, inverse.reshape(-1)
    present = np.zeros(n_keys, dtype=bool)
    present[keys] = True
    rank = np.cumsum(present) - 1
    return np.flatnonzero(present).astype(np.int64), rank[keys]


def _window_cells_sorted(
    rows: Sightings, k_first: int, k_last: int, step_s: float, window_s: float, per: int,
) -> tuple[int, NDArray[np.int64], NDArray[np.intp], NDArray[np.intp], FloatArray, NDArray[np.int8],
           NDArray[np.int8]]:
    """:func:`engine._heard.window_cells` with the window rows ranked by np.unique, for
    device codes too sparse for its presence table: each sighting's index replicated over
    its windows, in numpy."""
    base = np.floor(rows["t"] / step_s + 1e-12).astype(np.int64) + 1
    win = (base[:, None] + np.arange(per)[None, :]).ravel()
    src = np.repeat(np.arange(len(rows)), per)
    ok = (win >= k_first) & (win <= k_last) & (rows["t"][src] >= win * step_s - window_s)
    win, src = win[ok], src[ok]
    dev = rows["device"][src].astype(np.int64)
    n_dev = int(dev.max()) + 1
    uniq_rows, row_idx = _rank((win - k_first) * n_dev + dev, (k_last - k_first + 1) * n_dev)
    cells = heard_cells(row_idx.astype(np.intp), rows["gateway"][src].astype(np.int64),
                        rows["rssi"][src].astype(np.float64), len(uniq_rows))
    # Newest battery and motion flag per row (rows are time-sorted, last write wins).
    battery = np.full(len(uniq_rows), UNKNOWN, np.int8)
    motion = np.full(len(uniq_rows), UNKNOWN, np.int8)
    b_src, m_src = rows["battery"][src], rows["motion"][src]
    has_b, has_m = b_src != UNKNOWN, m_src != UNKNOWN
    battery[row_idx[has_b]] = b_src[has_b]
    motion[row_idx[has_m]] = m_src[has_m]
    return n_dev, uniq_rows, *cells, battery, motion


class Engine:
    """Feed it sightings, advance its watermark, get fixes back."""

    def __init__(self, config: EngineConfig, tx_power_1m_dbm: FloatArray | None = None) -> None:
        self.config = config
        self.counters = IngestCounters()
        self.state = LastKnown()
        self.tx_power = np.asarray(
            tx_power_1m_dbm if tx_power_1m_dbm is not None else [], dtype=float
        )
        self._buffer: list[Sightings] = []  # ingested since the last close, raw
        # Raw rows still needed by open windows, re-deliveries dropped, time-sorted; channel
        # copies are merged per window, so a copy or re-delivery arriving late still matches.
        self._clean: Sightings = np.zeros(0, SIGHTING_DTYPE)
        self._next_window = 1  # index k of the next window to close (ends at k*step)
        self.watermark = -np.inf
        self.tracker = make_tracker(config)
        # A fixed-lag smoother's fixes wait here until it has made them final (_release).
        self._smoother: FixedLagSmoother | None = (
            self.tracker
            if isinstance(self.tracker, FixedLagGridSmoother | FixedLagKalmanSmoother | FixedLagParticleSmoother)
            else None)
        self._held = np.zeros(0, FIX_DTYPE)
        self._held_lower = np.zeros(0)  # each held fix's r90 floor, before the r90 scale
        # Gateways that have heard each device since it last moved: the static-shadowing
        # floor of a still tag's radius is the bound over all of them (see _still_floor).
        self._still_heard = np.zeros((0, len(config.gateways.ids)), dtype=bool)
        self.hysteresis = ZoneHysteresis(config.zones) if config.zone_hysteresis else None
        # The ML estimator's rows of its last call with their answers: equal rows later take
        # them (same bits) instead of being solved again.
        self._solved = SolvedRows.empty()
        # wls_warm_start: each device's newest fix (x, y, window index), and the block of
        # windows now being closed with the fixes that were newest when it began.
        self._warm: dict[str, object] = {"block": -1, "last": np.zeros((0, 3)), "start": np.zeros((0, 3))}
        gw_xy = config.gateways.xyz[:, :2]
        # The strongest-gateway radius: 90 % of the floor is at most this far from a gateway.
        if config.radio_map is not None:
            free = config.radio_map.free_xy
        else:
            minx, miny, maxx, maxy = config.bounds
            gx, gy = np.meshgrid(np.linspace(minx, maxx, 40), np.linspace(miny, maxy, 40))
            free = np.column_stack([gx.ravel(), gy.ravel()])
        nearest = np.sqrt(np.min(np.sum((free[:, None, :] - gw_xy[None]) ** 2, axis=2), axis=1))
        self._strongest_r90 = float(np.quantile(nearest, 0.9)) if len(nearest) else 10.0
        self._knn_r90 = 0.5
        if config.localizer == "knn" and config.radio_map is not None:
            rm = config.radio_map
            ref, floor = self._fingerprints()
            self._knn_r90 = knn_r90(rm.free_xy, ref, float(np.median(rm.sigma_db)), KNN_K, floor,
                                    np.random.default_rng(config.seed))

    def _still_floor(
        self, device: NDArray[np.int32], heard: NDArray[np.bool_], still: NDArray[np.bool_],
        x: FloatArray, y: FloatArray,
    ) -> FloatArray:
        """The 90 % radius that static shadowing alone leaves a still tag.

        Averaging windows removes fading and fills in the gateways one short window
        missed, but not the shadowing, which is fixed in space. Its limit is the
        Cramér-Rao bound (Patwari et al. 2003) over every gateway that has heard the tag
        since it last moved, at sigma = the shadowing sigma. A single window's radius
        would overstate it: in one second each scanner hears only some of a tag's packets.
        """
        cfg = self.config
        if len(device) and device.max() >= len(self._still_heard):
            grow = int(device.max()) + 1 - len(self._still_heard)
            self._still_heard = np.vstack([self._still_heard, np.zeros((grow, heard.shape[1]), bool)])
        union = np.where(still[:, None], self._still_heard[device] | heard, heard)
        self._still_heard[device] = union
        xyz = np.column_stack([x, y, np.full(len(x), cfg.tag_height_m)])
        rmse = crlb_rmse(xyz, cfg.gateways.xyz, cfg.path_loss_exponent, cfg.sigma_db, heard=union)
        # RMSE^2 = trace of the covariance; circular approximation as the localizers use.
        return np.asarray(rmse * np.sqrt(CHI2_2DOF_90 / 2.0))

    def _fingerprints(self) -> tuple[FloatArray, float]:
        """The radio map's free cells as kNN fingerprints; below the floor counts as unheard."""
        rm = self.config.radio_map
        assert rm is not None
        floor = rm.floor_dbm if rm.floor_dbm is not None else -100.0
        return np.maximum(rm.mean_dbm[rm.free].astype(float), floor), floor

    @property
    def stateful(self) -> bool:
        """A tracker, zone hysteresis or warm starts: a window's fixes depend on the windows
        before it."""
        return self.tracker is not None or self.hysteresis is not None or self._warm_starts_on

    @property
    def _warm_starts_on(self) -> bool:
        """wls_warm_start where it acts: the ML estimator with an obstacle map (whose
        strongest-gateway starts it replaces)."""
        cfg = self.config
        return cfg.wls_warm_start and cfg.localizer == "wls" and cfg.obstacle_map is not None

    def tracking_state(self) -> dict[str, object]:
        """A copy of what carries from one window to the next (tracker, zone hysteresis, the
        gateways that heard each still tag): :meth:`set_tracking_state` goes back to it, so
        the backbone can run the tracker again from before a window late data revised."""
        parts: dict[str, object] = {"still_heard": self._still_heard.copy(),
                                    "held": (self._held.copy(), self._held_lower.copy())}
        if self._warm_starts_on:
            parts["warm"] = copy.deepcopy(self._warm)
        for name, obj in (("tracker", self.tracker), ("hysteresis", self.hysteresis)):
            if obj is not None:
                parts[name] = {k: copy.deepcopy(getattr(obj, k)) for k in type(obj).STATE}  # type: ignore[union-attr]
        return parts

    def set_tracking_state(self, state: dict[str, object]) -> None:
        """Back to a :meth:`tracking_state` (which stays untouched)."""
        self._still_heard = np.array(state["still_heard"], copy=True)
        held: tuple[NDArray[np.void], FloatArray] = state.get(  # type: ignore[assignment]
            "held", (np.zeros(0, FIX_DTYPE), np.zeros(0)))
        self._held, self._held_lower = held[0].copy(), held[1].copy()
        if "warm" in state:
            self._warm = copy.deepcopy(state["warm"])  # type: ignore[arg-type]
        for name, obj in (("tracker", self.tracker), ("hysteresis", self.hysteresis)):
            if obj is not None:
                for k, v in dict(state[name]).items():  # type: ignore[call-overload]
                    setattr(obj, k, copy.deepcopy(v))

    # -- input ---------------------------------------------------------------------

    def ingest(self, batch: Sightings) -> None:
        """Validate and buffer a batch. Late rows are rejected and counted, not lost silently."""
        if batch.dtype != SIGHTING_DTYPE:
            raise TypeError("sightings must use engine.contract.SIGHTING_DTYPE")
        self.counters.received += len(batch)
        good = validate(batch, len(self.config.gateways.ids), self.counters)
        oldest_open = self._next_window * self.config.step_s - self.config.window_s
        late = good["t"] < oldest_open
        if late.any():
            self.counters.rejected["late: window already closed"] += int(late.sum())
            good = compress_rows(good, ~late)
        self.counters.accepted += len(good)
        if len(good):
            self._buffer.append(good)
            self.watermark = max(self.watermark, float(good["t"].max()))

    # -- output --------------------------------------------------------------------

    def advance(self, watermark: float | None = None) -> NDArray[np.void]:
        """Close every window whose end is at least ``allowed_lateness_s`` behind the
        watermark (the newest event time seen, or the one given) and return its fixes."""
        return concat_rows(list(self.advance_parts(watermark)), FIX_DTYPE)

    def flush(self, end_t: float) -> NDArray[np.void]:
        """Close every window ending at or before ``end_t`` (end of a run or a replay);
        a smoother's waiting fixes leave with what it has seen."""
        fixes = self._close_until(int(np.floor(end_t / self.config.step_s + 1e-9)))
        if self._smoother is None:
            return fixes
        rest = self._release(np.zeros(0, FIX_DTYPE), np.zeros(0), self._smoother.finish())
        self.state.update(rest)
        return np.concatenate([fixes, rest])

    def _release(self, fixes: NDArray[np.void], lower: FloatArray, done: Smoothed) -> NDArray[np.void]:
        """Hold a smoother's new fixes; return the held ones it made final, with its
        smoothed position and r90 (scaled and floored as the filter's), zones re-assigned."""
        cfg = self.config
        held = np.concatenate([self._held, fixes])
        low = np.r_[self._held_lower, lower]

        def key(t: FloatArray, device: NDArray[np.int32]) -> NDArray[np.int64]:
            return np.rint(t / cfg.step_s).astype(np.int64) * (1 << 32) + device.astype(np.int64)

        kd = key(done.t, done.device)
        order = np.argsort(kd, kind="stable")
        kh = key(held["t"], held["device"])
        pos = np.minimum(np.searchsorted(kd[order], kh), max(len(kd) - 1, 0))
        hit = kd[order][pos] == kh if len(kd) else np.zeros(len(held), bool)
        out = held[hit]
        src = order[pos[hit]]
        out["x"], out["y"] = done.est.x[src], done.est.y[src]
        out["r90"] = cfg.tracker_r90_scale * np.maximum(done.est.r90[src], low[hit])
        out = out[np.argsort(out["t"], kind="stable")]
        if self.hysteresis is None:
            out["zone"] = cfg.zones.assign(out["x"], out["y"])
        else:  # one call per fix time: hysteresis takes distinct devices in time order
            edges = np.flatnonzero(np.diff(out["t"])) + 1
            for g in np.split(np.arange(len(out)), edges):
                if len(g):
                    out["zone"][g] = self.hysteresis.assign(
                        out["device"][g], out["x"][g], out["y"][g], out["motion"][g])
        self._held, self._held_lower = held[~hit], low[~hit]
        return out

    def advance_parts(self, watermark: float | None = None) -> Iterator[NDArray[np.void]]:
        """:meth:`advance`, its fixes yielded a group of windows (``WINDOWS_PER_CHUNK``) at a
        time, in time order, each as soon as it is computed: a caller can use the first
        group's fixes (apply rules to them) while the next are computed elsewhere
        (engine.parallel). The groups concatenated are :meth:`advance`'s fixes. Run it to
        its end before calling the engine again."""
        mark = self.watermark if watermark is None else max(self.watermark, watermark)
        if not math.isfinite(mark):  # nothing seen yet (watermark -inf): no window is due
            return
        yield from self._close_parts(
            int(np.floor((mark - self.config.allowed_lateness_s) / self.config.step_s + 1e-9)))

    def _close_until(self, last_window: int) -> NDArray[np.void]:
        return concat_rows(list(self._close_parts(last_window)), FIX_DTYPE)

    def _close_parts(self, last_window: int) -> Iterator[NDArray[np.void]]:
        """Close the windows up to ``last_window``, a group of windows at a time. The
        window bookkeeping is settled before the first group is computed."""
        cfg = self.config
        if last_window < self._next_window or not (self._buffer or len(self._clean)):
            self._next_window = max(self._next_window, last_window + 1)
            return
        buf, fresh = self._merge_new_rows()
        # One sighting per advertising event and gateway, over everything buffered (so a
        # copy arriving late, or straddling two chunks of windows, joins its event), with
        # the copies that just arrived counted once.
        events, merged_now = merge_channels_by_time(buf, fresh)
        self.counters.merged_channels += merged_now
        k = self._next_window
        self._next_window = last_window + 1
        keep_from = self._next_window * cfg.step_s - cfg.window_s
        self._clean = buf[np.searchsorted(buf["t"], keep_from):]  # buf is time-sorted
        while k <= last_window:
            k_end = min(last_window, k + WINDOWS_PER_CHUNK - 1)
            if self._warm_starts_on:  # groups within one aligned block (its warm starts)
                k_end = min(k_end, (k // WINDOWS_PER_CHUNK + 1) * WINDOWS_PER_CHUNK - 1)
            lo = np.searchsorted(events["t"], k * cfg.step_s - cfg.window_s, side="left")
            hi = np.searchsorted(events["t"], k_end * cfg.step_s, side="left")
            fixes = self._localize_windows(events[lo:hi], k, k_end)
            self.state.update(fixes)  # in time order, so the same as once over them all
            yield fixes
            k = k_end + 1

    def _merge_new_rows(self) -> tuple[Sightings, NDArray[np.bool_]]:
        """The window buffer with the rows ingested since the last close merged in, and
        which rows are new (re-checked buffered rows count as old).

        Only the new rows are checked for re-deliveries, together with the buffered rows
        they may repeat (same gateway, device and event counter, or the same instant when
        there is no counter); the rest of the buffer is not compared again.
        """
        new = concat_rows(self._buffer, SIGHTING_DTYPE)
        self._buffer = []
        clean = self._clean
        touched = np.zeros(len(clean), dtype=bool)
        if len(clean) and len(new):
            touched = member_of(_event_key(clean), _event_key(new))
        old_rows = compress_rows(clean, touched)
        fresh = drop_redeliveries(concat_rows([old_rows, new], SIGHTING_DTYPE), self.counters)
        # A touched row that survived deduplication is still in ``fresh``: it is old. Only
        # rows with an old row's event key can be one, so only those are compared whole.
        was_old = np.zeros(len(fresh), bool)
        if len(old_rows):
            maybe = np.flatnonzero(member_of(_event_key(fresh), _event_key(old_rows)))
            was_old[maybe] = np.isin(_row_bytes(take_rows(fresh, maybe)), _row_bytes(old_rows))
        buf = concat_rows([compress_rows(clean, ~touched), fresh], SIGHTING_DTYPE)
        is_new = np.r_[np.zeros(len(clean) - len(old_rows), bool), ~was_old]
        order = np.argsort(buf["t"], kind="stable")
        return take_rows(buf, order), is_new[order]

    def localize_windows(self, rows: Sightings, k_first: int, k_last: int) -> NDArray[np.void]:
        """Fixes of windows k_first..k_last from exactly these rows, without touching the
        window bookkeeping: what engine.eventtime recomputes revised windows with. Pure for
        a stateless config (no tracker, no hysteresis) given rows in a canonical order.
        Channel copies among ``rows`` are merged here, as the engine merges its buffer."""
        return self._localize_windows(merge_channels_by_time(rows)[0], k_first, k_last)

    def localize_events(self, events: Sightings, k_first: int, k_last: int) -> NDArray[np.void]:
        """:meth:`localize_windows` from rows already merged into events and sorted by
        time (``merge_channels_by_time``), for callers that keep merged events."""
        return self._localize_windows(events, k_first, k_last)

    def _localize_windows(self, rows: Sightings, k_first: int, k_last: int) -> NDArray[np.void]:
        """Fixes for windows k_first..k_last from the (merged, time-sorted) sightings that
        fall in them."""
        cfg = self.config
        n_gw = len(cfg.gateways.ids)
        if len(rows) == 0:
            return np.zeros(0, FIX_DTYPE)
        if self._warm_starts_on and k_first // WINDOWS_PER_CHUNK != k_last // WINDOWS_PER_CHUNK:
            # Warm starts come block by block (aligned groups of windows), whoever chunks
            # the windows (engine.timeline reruns them from a saved state).
            parts, k = [], k_first
            while k <= k_last:
                k_end = min(k_last, (k // WINDOWS_PER_CHUNK + 1) * WINDOWS_PER_CHUNK - 1)
                lo = np.searchsorted(rows["t"], k * cfg.step_s - cfg.window_s, side="left")
                hi = np.searchsorted(rows["t"], k_end * cfg.step_s, side="left")
                parts.append(self._localize_windows(rows[lo:hi], k, k_end))
                k = k_end + 1
            return concat_rows(parts, FIX_DTYPE)
        per = int(np.ceil(cfg.window_s / cfg.step_s))
        # Each sighting belongs to up to `per` sliding windows. The window rows (window,
        # device), the mean RSSI of each heard (row, gateway) cell (the bits of a dense
        # bincount) and each row's newest battery and motion come from one compiled pass
        # (engine._heard.window_cells); the dense matrix is made only for the estimators
        # and trackers that read it, not for the ML estimator, which works on the ~4
        # heard gateways of a row out of the site's dozens.
        n_dev, uniq_rows, cell_row, cell_col, cell_rssi, battery, motion = window_cells(
            rows["t"], rows["device"], rows["gateway"], rows["rssi"], rows["battery"], rows["motion"],
            k_first, k_last, cfg.step_s, cfg.window_s, per, UNKNOWN)
        if n_dev == 0:
            return np.zeros(0, FIX_DTYPE)
        if n_dev < 0:  # device codes too sparse for a presence table: rank by sorting
            n_dev, uniq_rows, cell_row, cell_col, cell_rssi, battery, motion = _window_cells_sorted(
                rows, k_first, k_last, cfg.step_s, cfg.window_s, per)
        heard = Heard(len(uniq_rows), n_gw, cell_row, cell_col, cell_rssi)

        row_dev = (uniq_rows % n_dev).astype(np.int32)
        row_win = uniq_rows // n_dev
        row_t = (row_win + k_first) * cfg.step_s
        if cfg.gateway_offset_db is not None:
            heard = replace(heard, rssi=heard.rssi - cfg.gateway_offset_db[heard.col])
        dense = cfg.localizer != "wls" or self.tracker is not None
        matrix = heard.matrix() if dense else np.zeros((0, n_gw))
        tx = self._tx_power(row_dev)
        warm = self._warm_starts(row_dev, row_win + k_first) if self._warm_starts_on else None
        est = self._localize(matrix, tx, heard, warm)
        if warm is not None:
            self._keep_warm(row_dev, row_win + k_first, est)
        zone = (
            cfg.zones.assign(est.x, est.y)
            if self.hysteresis is None
            else np.zeros(len(row_dev), np.int32)
        )
        if self.tracker is not None or self.hysteresis is not None:
            # Trackers and hysteresis carry state from one window to the next: windows go
            # in time order, the devices of one window together (rows are sorted by window).
            bounds = np.searchsorted(row_win, np.arange(row_win.max(initial=-1) + 2))
            xs, ys, r90, meth = est.x.copy(), est.y.copy(), est.r90.copy(), est.method.copy()
            lower = np.zeros(len(xs))
            for lo, hi in pairwise(bounds):
                if lo == hi:
                    continue
                sl = slice(int(lo), int(hi))
                part = est.take(sl)
                if self.tracker is not None:
                    single_r90 = part.r90
                    part = self.tracker.step(
                        float(row_t[lo]), row_dev[sl], matrix[sl], part, motion[sl], tx[sl]
                    )
                    # Static shadowing floor: a tag that stays put sees the same shadowing in
                    # every window, which no filter can average away; a moving tag samples
                    # fresh shadowing, so it may shrink to a fraction of the single shot.
                    still = motion[sl] == 0  # unknown motion (captures): judged as moving
                    floor = self._still_floor(row_dev[sl], ~np.isnan(matrix[sl]), still, part.x, part.y)
                    floor = np.where(np.isfinite(floor), floor, single_r90)
                    xs[sl], ys[sl], meth[sl] = part.x, part.y, part.method
                    lower[sl] = np.where(still, floor, MOVING_R90_FLOOR * single_r90)
                    r90[sl] = cfg.tracker_r90_scale * np.maximum(part.r90, lower[sl])
                if self.hysteresis is not None and self._smoother is None:
                    zone[sl] = self.hysteresis.assign(row_dev[sl], part.x, part.y, motion[sl])
            est = Estimates(xs, ys, r90, est.n_gateways, meth)
            if self.hysteresis is None:
                zone = cfg.zones.assign(est.x, est.y)
        fixes = np.empty(len(uniq_rows), FIX_DTYPE)
        fixes["t"], fixes["device"] = row_t, row_dev
        fixes["x"], fixes["y"], fixes["r90"] = est.x, est.y, est.r90
        fixes["zone"] = zone
        fixes["n_gateways"], fixes["method"] = est.n_gateways, est.method
        fixes["battery"], fixes["motion"] = battery, motion
        if self._smoother is not None:
            return self._release(fixes, lower, self._smoother.smoothed())
        return fixes

    def _tx_power(self, device: NDArray[np.int32]) -> FloatArray:
        tx = np.full(len(device), self.config.default_tx_power_1m_dbm)
        known = device < len(self.tx_power)
        tx[known] = self.tx_power[device[known]]
        return tx

    def _warm_starts(self, device: NDArray[np.int32], window: NDArray[np.int64]) -> FloatArray:
        """Each row's warm start (NaN: none): its device's newest fix when the row's block
        of windows began, if that fix is from the block before. Rows of an older block
        (windows recomputed out of order) start cold."""
        out = np.full((len(device), 2), np.nan)
        if len(device) == 0:
            return out
        block = int(window.max()) // WINDOWS_PER_CHUNK
        last: FloatArray = self._warm["last"]  # type: ignore[assignment]
        if block != self._warm["block"]:  # a new block: the fixes newest now are its starts
            self._warm["block"], self._warm["start"] = block, last.copy()
        start: FloatArray = self._warm["start"]  # type: ignore[assignment]
        rows = np.flatnonzero((window // WINDOWS_PER_CHUNK == block) & (device < len(start)))
        fresh = start[device[rows], 2] >= block * WINDOWS_PER_CHUNK - WINDOWS_PER_CHUNK
        rows = rows[fresh]
        out[rows] = start[device[rows], :2]
        return out

    def _keep_warm(self, device: NDArray[np.int32], window: NDArray[np.int64], est: Estimates) -> None:
        """Each device's newest fix (rows are by window, then device), for later blocks."""
        last: FloatArray = self._warm["last"]  # type: ignore[assignment]
        if len(device) and int(device.max()) >= len(last):
            grow = np.full((int(device.max()) + 1 - len(last), 3), np.nan)
            last = np.vstack([last, grow])
        order = np.argsort(device, kind="stable")
        newest = order[np.r_[device[order][1:] != device[order][:-1], True]] if len(order) else order
        ok = newest[np.isfinite(est.x[newest]) & np.isfinite(est.y[newest])]
        last[device[ok], 0], last[device[ok], 1], last[device[ok], 2] = est.x[ok], est.y[ok], window[ok]
        self._warm["last"] = last

    def _localize(self, matrix: FloatArray, tx: FloatArray, heard: Heard, warm: FloatArray | None = None) -> Estimates:
        """Single-shot fixes with the configured estimator (``matrix`` is ``heard`` dense,
        or empty for the ML estimator, which reads ``heard``)."""
        cfg = self.config
        gw = cfg.gateways.xyz
        if cfg.localizer == "strongest":
            return strongest_gateway(matrix, gw[:, :2], self._strongest_r90)
        if cfg.localizer == "centroid":
            return centroid_localize(matrix, gw[:, :2], cfg.path_loss_exponent)
        if cfg.localizer in ("knn", "radio-map"):
            rm = cfg.radio_map
            assert rm is not None  # checked in EngineConfig
            if cfg.localizer == "radio-map":
                return radio_map_localize(matrix, rm, tx)
            # Fingerprints are the map's free cells; a row is shifted onto the map's power.
            shifted = matrix + (rm.tx_ref_dbm - tx)[:, None]
            ref, floor = self._fingerprints()
            return knn_localize(shifted, rm.free_xy, ref, KNN_K, floor, self._knn_r90)
        return wls_localize_heard(
            heard,
            gw,
            tx,
            cfg.path_loss_exponent,
            cfg.sigma_db,
            cfg.tag_height_m,
            cfg.bounds,
            cfg.min_gateways,
            obstacle_map=cfg.obstacle_map,
            cell_edges=cfg.wls_cell_edges,
            gateway_starts_above=cfg.wls_gateway_starts_above * cfg.sigma_db**2,
            warm_xy=warm,
            solved=self._solved,
        )
