"""The SimPy warehouse: tags advertise, movers carry them, gateways listen.

SimPy runs the *agents* (movers and their trips, one process each) and a single radio
process that wakes every ``tick_s`` of simulated time and generates every advertisement
of every tag in that tick as numpy arrays. One SimPy process per tag and one Python call
per packet would be the obvious design and is roughly a hundred times slower (see
benchmarks/); here the per-packet work is inlined into array operations on purpose.

Timing is exact in continuous time: a mover plans a whole trip when it starts it (where
and when it picks items up, the path, where and when it drops them), so the radio tick
can place a carried tag on its mover's path at the instant of each advertisement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import shapely
import simpy
from numpy.typing import NDArray

from engine.contract import SIGHTING_DTYPE, GatewayInfo, Sightings
from engine.truth import MOVEMENT_DTYPE, SEGMENT_DTYPE, GroundTruth
from radio_models.airinterface import (
    ADV_DELAY_MAX_S,
    WifiInterferer,
    first_per_bucket,
    interference_mw,
    listened_packets,
    packet_air_time_s,
    survives,
)
from radio_models.environment import ADVERTISING_CHANNELS, Grid, PacketEffects, RadioEnvironment, ReportModel
from radio_models.pathloss import ItuP1238, ItuP1238Classic, LogDistance, PathLossModel, Tr38901
from radio_models.shadowing import TemporalVariation
from siteplan.model import SiteModel
from siteplan.radio import ItuP1238ClassicParams, ItuP1238Params, LogDistanceParams, Tr38901Params
from twin.navigation import Navigator
from twin.scenario import Scenario, ScenarioError

FloatArray = NDArray[np.float64]

SECONDS_PER_DAY = 86_400.0
# How far from its stop a mover sets a carried item down (on its side of any wall).
DROP_REACH_M = 1.5
# Fading upper tail ignored when pruning out-of-range links: a Rayleigh power gain
# exceeds +10 dB with probability e^-10 = 4.5e-5, so links whose mean RSSI is more than
# this far below sensitivity are skipped without drawing a packet.
FADING_MARGIN_DB = 10.0


def path_loss_model(scenario: Scenario) -> PathLossModel:
    """The path-loss family a scenario asks for."""
    p = scenario.radio.model
    match p:
        case LogDistanceParams():
            return LogDistance(exponent=p.exponent, sigma_db=scenario.radio.shadowing_sigma_db)
        case ItuP1238Params():
            return ItuP1238(environment=p.environment, los=p.los, frequency_ghz=p.frequency_ghz)
        case ItuP1238ClassicParams():
            return ItuP1238Classic(
                distance_power_coefficient=p.distance_power_coefficient,
                frequency_mhz=p.frequency_mhz,
                sigma_db=scenario.radio.shadowing_sigma_db,
            )
        case Tr38901Params():
            return Tr38901(
                scenario=p.scenario, condition=p.condition, frequency_ghz=p.frequency_ghz,
                d_clutter_m=p.d_clutter_m, clutter_ratio=p.clutter_ratio,
            )
    raise AssertionError(f"unhandled path-loss model {p!r}")  # pragma: no cover - union is closed


def resolve_gateways(scenario: Scenario, site: SiteModel) -> tuple[GatewayInfo, FloatArray]:
    """Gateway ids and positions (listed ones first, then the grid), plus per-gateway
    (scan window s, scan interval s, sensitivity dBm) as an (M, 3) array."""
    ids, rows = scenario.gateways.resolve(site.outline)
    arr = np.array(rows, dtype=float).reshape(-1, 6)
    return GatewayInfo(tuple(ids), arr[:, :3].copy()), arr[:, 3:].copy()


def tag_ids(group_name: str, count: int) -> list[str]:
    """The device ids of a tag group: ``<group name>-<5 digits>``, numbered from 1."""
    return [f"{group_name}-{i + 1:05d}" for i in range(count)]


def floor_problems(scenario: Scenario, site: SiteModel) -> list[str]:
    """Places the twin must put tags or people in that have no free floor (racks cover
    them): one line per field, instead of a ValueError halfway through a run."""
    problems = []

    def empty(zone_index: int) -> bool:
        return bool(site.zones.polygons[zone_index].intersection(site.free_space).is_empty)

    for gi, g in enumerate(scenario.tags):
        zi = [site.zones.names.index(z) for z in g.placement.zones]
        zi += site.zones.indices_with_role(*g.placement.roles)
        if g.count and (all(empty(i) for i in zi) if zi else site.free_space.is_empty):
            where = ", ".join([*g.placement.zones, *g.placement.roles]) or "the site"
            problems.append(f"tags[{gi}].placement: no free floor in {where} (racks cover it)")
    stops = [(f"movers[{i}].route", stop) for i, m in enumerate(scenario.movers) for stop in m.route]
    for i, inc in enumerate(scenario.incidents):
        stops += [(f"incidents[{i}]", z) for z in [*inc.from_zones, *([inc.to_zone] if inc.to_zone else [])]]
    for field_name, stop in stops:
        bad = [site.zones.names[i] for i in site.zones.resolve(stop) if empty(i)]
        if bad:
            problems.append(f"{field_name}: zone {bad[0]!r} ({stop}) has no free floor (racks cover it)")
    return problems


@dataclass
class Fleet:
    """Per-tag arrays (index = device code)."""

    ids: list[str]
    group: NDArray[np.int32]
    xy: FloatArray
    adv_interval_s: FloatArray
    tx_power_1m_dbm: FloatArray
    battery0_pct: FloatArray
    drain_pct_per_s: FloatArray
    adv_interval_moving_s: FloatArray = field(default_factory=lambda: np.zeros(0))
    payload_bytes: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @classmethod
    def place(cls, scenario: Scenario, site: SiteModel, rng: np.random.Generator) -> Fleet:
        ids: list[str] = []
        parts: dict[str, list[FloatArray]] = {
            k: [] for k in ("group", "xy", "adv", "tx", "bat", "drain", "adv_moving", "payload")
        }
        for gi, g in enumerate(scenario.tags):
            zone_idx = [site.zones.names.index(z) for z in g.placement.zones]
            zone_idx += site.zones.indices_with_role(*g.placement.roles)
            area = shapely.union_all([site.zones.polygons[i] for i in sorted(set(zone_idx))]) if zone_idx else None
            parts["xy"].append(site.random_free_points(g.count, rng, area))
            parts["group"].append(np.full(g.count, gi))
            parts["adv"].append(np.full(g.count, g.adv_interval_ms / 1000))
            parts["tx"].append(np.full(g.count, g.tx_power_1m_dbm))
            parts["bat"].append(rng.uniform(*g.battery_pct, size=g.count))
            parts["drain"].append(np.full(g.count, g.battery_drain_pct_per_day / SECONDS_PER_DAY))
            moving_ms = g.adv_interval_moving_ms or g.adv_interval_ms
            parts["adv_moving"].append(np.full(g.count, moving_ms / 1000))
            parts["payload"].append(np.full(g.count, g.payload_bytes))
            ids += tag_ids(g.name, g.count)
        cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
        return cls(
            ids, cat["group"].astype(np.int32), cat["xy"].reshape(-1, 2), cat["adv"], cat["tx"],
            cat["bat"], cat["drain"], cat["adv_moving"], cat["payload"].astype(np.int64),
        )

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class TwinResult:
    """Everything one run produced: sightings, ground truth and what it cost."""

    scenario: Scenario
    gateways: GatewayInfo
    device_ids: list[str]
    tx_power_1m_dbm: FloatArray
    sightings: Sightings
    truth: GroundTruth
    site: SiteModel
    stats: dict[str, int] = field(default_factory=dict)


@dataclass
class _Trip:
    """A planned carry: which tags, along which timed path, dropped where."""

    tags: NDArray[np.int64]
    path_t: FloatArray
    path_xy: FloatArray
    t_pick: float
    t_drop: float
    drop_xy: FloatArray


class WarehouseTwin:
    """One scenario, ready to run. All randomness comes from ``scenario.seed``."""

    def __init__(
        self,
        scenario: Scenario,
        site: SiteModel | None = None,
        sink: Callable[[Sightings], None] | None = None,
    ) -> None:
        """``sink`` receives each tick's sightings instead of the run keeping them all
        (an hour of a large site is more sightings than fit in memory)."""
        self.scenario = scenario
        streams = np.random.SeedSequence(scenario.seed).spawn(8)  # children 0-6 as before 7 existed
        self.rng_place, self.rng_radio_static, self.rng_adv, self.rng_packet, self.rng_movers, self.rng_gw = (
            np.random.default_rng(s) for s in streams[:6]
        )
        self.rng_air = np.random.default_rng(streams[6])
        self.sink = sink
        self.site = site or SiteModel.from_scenario(scenario)
        self.gateways, scan = resolve_gateways(scenario, self.site)
        self.scan_window_s, self.scan_interval_s, self.sensitivity_dbm = scan.T
        self.scan_phase_s = self.rng_gw.uniform(0, self.scan_interval_s)
        problems = floor_problems(scenario, self.site)
        if problems:
            raise ScenarioError(scenario.name, problems)
        self.fleet = Fleet.place(scenario, self.site, self.rng_place)
        radio = scenario.radio
        self.radio = RadioEnvironment(
            gateway_xyz=self.gateways.xyz,
            model=path_loss_model(scenario),
            obstacles=self.site.obstacles(),
            grid=Grid.covering(self.site.outline.bounds, radio.grid_m),
            shadowing_sigma_db=radio.shadowing_sigma_db,
            decorrelation_m=radio.decorrelation_m,
            effects=PacketEffects(radio.fading, radio.rician_k_db, radio.channel_offset_db),
            rng=self.rng_radio_static,
            gateway_bias_db=self.rng_gw.normal(0, radio.gateway_bias_sigma_db, len(self.gateways.ids))
            if radio.gateway_bias_sigma_db > 0 else np.zeros(0),
            tag_height_m=scenario.site.tag_height_m,
        )
        # The slow part of a link's RSSI that a calibration walk measures (temporal_sigma_db
        # over temporal_coherence_s); its own stream, so a site without it draws as before.
        self.temporal = (
            TemporalVariation(radio.temporal_sigma_db, radio.temporal_coherence_s, len(self.gateways.ids),
                              np.random.default_rng(streams[7]))
            if radio.temporal_sigma_db > 0 else None
        )
        if radio.gateway_offsets_db:  # calibrated per-gateway offsets of a site file
            self.radio.gateway_bias_db = self.radio.gateway_bias_db + np.array(
                [radio.gateway_offsets_db.get(g, 0.0) for g in self.gateways.ids])
        rep = radio.report
        self.report = (
            None if (rep.receivers, rep.quantization_db, rep.miss_probability) == (1, 1.0, 0.0)
            else ReportModel(rep.receivers, rep.combine, rep.quantization_db, rep.miss_probability)
        )
        self.tag_z = scenario.site.tag_height_m
        air = radio.air
        self.air_time_s = packet_air_time_s(self.fleet.payload_bytes, air.phy)
        uniform = len(self.air_time_s) and np.all(self.air_time_s == self.air_time_s[0])
        self._uniform_air_time = np.float32(self.air_time_s[0]) if uniform else None
        self._sensitivity32 = self.sensitivity_dbm.astype(np.float32)
        gw_defaults = scenario.gateways.defaults
        self.switch_gap_s = gw_defaults.channel_switch_ms / 1000
        self.max_reports_per_s = gw_defaults.max_reports_per_s
        self._report_credit = np.zeros(len(self.gateways.ids))
        # Links whose mean RSSI is this far below sensitivity are never drawn (see
        # FADING_MARGIN_DB); float32 to compare against the float32 mean cache.
        reach = self.sensitivity_dbm - max(radio.channel_offset_db) - FADING_MARGIN_DB
        self._reach_dbm = reach.astype(np.float32)
        # Wi-Fi: the interferer's mean power at each gateway, through the same walls and
        # path loss as the tags (it is just another transmitter on the floor).
        self.wifi = [
            WifiInterferer(w.x, w.y, w.channel, w.power_1m_dbm, w.duty_cycle) for w in air.wifi
        ]
        self._wifi_dbm = [
            self.radio.mean_rssi(np.array([[w.x, w.y, self.tag_z]]), np.array([w.power_1m_dbm]))[0]
            for w in self.wifi
        ]
        n = len(self.fleet)
        # Mutable per-tag state.
        self.xy = self.fleet.xy.copy()
        self.next_adv = self.rng_adv.uniform(0, self.fleet.adv_interval_s) if n else np.zeros(0)
        self.seq = np.zeros(n, dtype=np.int32)
        self.trip_of = np.full(n, -1, dtype=np.int64)  # index into self._trips, -1 at rest
        self.pick_t = np.full(n, np.inf)  # carried during [pick_t, drop_t) of the current trip
        self.drop_t = np.full(n, -np.inf)
        self.rest_since = np.zeros(n)
        # Hooks for incidents and faults: a dead or removed tag stops advertising; a gateway
        # that is down hears nothing. Agents flip these; the radio tick honours them.
        self.tag_alive = np.ones(n, dtype=bool)
        self.gateway_up = np.ones(len(self.gateways.ids), dtype=bool)
        self._trips: list[_Trip] = []
        # Mean RSSI of every tag at rest, gateway-major (gateways, tags) so that a tick's
        # links come out grouped by gateway and in time order with no sort.
        self._mean_cache = np.ascontiguousarray(self._mean_rssi_at_rest(np.arange(n)).T)
        self._segments: list[NDArray[np.void]] = []
        self._movements: list[NDArray[np.void]] = []
        self._sightings: list[Sightings] = []
        self.stats = {
            "advertising_events": 0, "packets_on_air": 0, "links_evaluated": 0,
            "packets_listened": 0, "below_sensitivity": 0, "lost_to_collisions": 0,
            "lost_to_wifi": 0, "dropped_by_report_limit": 0,
            "sightings": 0,
        }
        self._navigator: Navigator | None = None
        self._radio_t = 0.0  # the radio has generated every advertisement before this time
        # Extra SimPy agents (incidents, traffic) that run() starts next to the movers.
        self.agents: list[Callable[[simpy.Environment], simpy.events.ProcessGenerator]] = []

    # -- radio ------------------------------------------------------------------------

    def _mean_rssi_at_rest(self, tags: NDArray[np.int64]) -> NDArray[np.float32]:
        xyz = np.column_stack([self.xy[tags], np.full(len(tags), self.tag_z)])
        return self.radio.mean_rssi(xyz, self.fleet.tx_power_1m_dbm[tags]).astype(np.float32)

    def _positions(self, tags: NDArray[np.int64], t: FloatArray) -> tuple[FloatArray, NDArray[np.bool_]]:
        """Where each tag is at each time, and whether it is being carried then."""
        xy = self.xy[tags].copy()
        moving = np.zeros(len(tags), dtype=bool)
        trip_ids = self.trip_of[tags]
        for trip_id in np.unique(trip_ids[trip_ids >= 0]):  # loop over active trips, not packets
            trip = self._trips[trip_id]
            sel = np.flatnonzero(trip_ids == trip_id)
            ts = t[sel]
            carried = (ts >= trip.t_pick) & (ts < trip.t_drop)
            on = sel[carried]
            xy[on, 0] = np.interp(ts[carried], trip.path_t, trip.path_xy[:, 0])
            xy[on, 1] = np.interp(ts[carried], trip.path_t, trip.path_xy[:, 1])
            moving[on] = True
            dropped = sel[ts >= trip.t_drop]
            xy[dropped] = trip.drop_xy[np.searchsorted(trip.tags, tags[dropped])]
        return xy, moving

    def _carried(self, tags: NDArray[np.int64], t: FloatArray) -> NDArray[np.bool_]:
        return (t >= self.pick_t[tags]) & (t < self.drop_t[tags])

    def _due_events(self, t1: float) -> tuple[NDArray[np.int64], FloatArray, NDArray[np.int32]]:
        """Every advertising event starting before t1, sorted by time. A carried tag with a
        motion-triggered interval advertises faster (its next event uses that interval)."""
        tag_parts, t_parts, seq_parts = [], [], []
        while True:
            due = np.flatnonzero(self.next_adv < t1)
            if len(due) == 0:
                break
            t_due = self.next_adv[due]
            tag_parts.append(due)
            t_parts.append(t_due.copy())
            seq_parts.append(self.seq[due].copy())
            self.seq[due] += 1
            interval = np.where(self._carried(due, t_due), self.fleet.adv_interval_moving_s[due],
                                self.fleet.adv_interval_s[due])
            delay = self.rng_adv.uniform(0, ADV_DELAY_MAX_S, len(due))
            self.next_adv[due] = t_due + interval + delay
        if not tag_parts:
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int32)
        tags, t, seq = np.concatenate(tag_parts), np.concatenate(t_parts), np.concatenate(seq_parts)
        alive = self.tag_alive[tags]
        tags, t, seq = tags[alive], t[alive], seq[alive]
        order = np.argsort(t, kind="stable")
        return tags[order], t[order], seq[order]

    def _radio_tick(self, t0: float, t1: float) -> None:
        """Every advertisement sent in [t0, t1), heard or not, in a handful of array ops.

        The hot path, inlined on purpose. Order of the steps and why:
        1. events sorted by time; mean RSSI from the per-tag cache (resting tags) or the
           static maps (carried tags);
        2. prune links that cannot reach sensitivity even with a strong fade;
        3. keep only packets a scanner is listening for (channel rotation, window), so
           fading is drawn for those alone;
        4. collisions per (gateway, channel) among packets overlapping in air time, with
           capture, and Wi-Fi hits; 5. sensitivity, report limit, rows in time order.
        Collisions are judged within a tick; a pile-up straddling a tick boundary (a
        fraction air_time / tick_s of packets, < 0.1 %) is missed.
        """
        ev_tag, ev_t, ev_seq = self._due_events(t1)
        if len(ev_tag) == 0:
            return
        n_ch = len(ADVERTISING_CHANNELS)
        self.stats["advertising_events"] += len(ev_tag)
        self.stats["packets_on_air"] += len(ev_tag) * n_ch

        # 1. Mean RSSI (gateways, events), float32.
        mean = np.take(self._mean_cache, ev_tag, axis=1)  # C-contiguous: ravel is a view
        carried = np.flatnonzero(self.trip_of[ev_tag] >= 0)
        moving = np.zeros(len(ev_tag), dtype=bool)
        if len(carried):
            xy, moving_c = self._positions(ev_tag[carried], ev_t[carried])
            moving[carried] = moving_c
            xyz = np.column_stack([xy, np.full(len(carried), self.tag_z)])
            tx = self.fleet.tx_power_1m_dbm[ev_tag[carried]]
            mean[:, carried] = self.radio.mean_rssi(xyz, tx).T
        if self.temporal is not None:
            mean = mean + self.temporal.offsets(ev_tag, ev_t).astype(np.float32)

        # 2. Prune. Gateway-major order: links come out grouped by gateway, each group in
        # time order, which is what the collision step needs.
        reach = mean >= self._reach_dbm[:, None]
        if not self.gateway_up.all():
            reach &= self.gateway_up[:, None]
        flat = np.flatnonzero(reach)  # 1-D nonzero + divmod: 3x faster than 2-D nonzero
        gw_i, ev_i = np.divmod(flat, len(ev_tag))
        link_mean = mean.ravel()[flat]
        # Times relative to the tick in float32: exact to 0.1 us, half the memory traffic.
        link_t = (ev_t - t0).astype(np.float32)[ev_i]
        self.stats["links_evaluated"] += len(ev_i) * n_ch

        # 3. Which packet of each link a scanner is listening for. Packets stay sorted by
        # (gateway, time), what the collision step needs.
        spacing = float(self.scenario.radio.channel_spacing_ms / 1000)
        interval = self.scan_interval_s
        cycle0 = np.floor((t0 - self.scan_phase_s) / interval).astype(np.int64) % n_ch
        li, ch = listened_packets(
            link_t, gw_i, ((self.scan_phase_s - t0) % interval).astype(np.float32),
            self.scan_window_s.astype(np.float32), interval.astype(np.float32),
            cycle0=cycle0, spacing_s=spacing, switch_gap_s=self.switch_gap_s, n_channels=n_ch,
        )
        n_pkt = len(li)
        self.stats["packets_listened"] += n_pkt
        if n_pkt == 0:
            return
        gw = gw_i[li]
        t_pkt = link_t[li] + ch * np.float32(spacing)
        offsets = np.asarray(self.scenario.radio.channel_offset_db, dtype=np.float32)
        fading = self.radio.effects.fading_db((n_pkt,), self.rng_packet, np.float32)
        rssi = link_mean[li] + offsets[ch] + fading
        if self.report is None:
            rssi_q = np.round(rssi)  # receivers report integer dBm
            audible = rssi_q >= self._sensitivity32[gw]
        else:  # a calibrated gateway: several modules, their own fading, averaged
            rssi_q = self.report.report(
                link_mean[li] + offsets[ch], self.radio.effects, self.rng_packet, self._sensitivity32[gw]
            ).astype(np.float32)
            audible = np.isfinite(rssi_q)
        self.stats["below_sensitivity"] += int(n_pkt - audible.sum())
        ok = audible

        # 4. Collisions (already sorted by channel, gateway, time) and Wi-Fi. A packet
        # below sensitivity still interferes, so the interference sum runs over all.
        air = self.scenario.radio.air
        if air.collisions:
            air_time: NDArray[np.floating]
            if self._uniform_air_time is not None:  # one payload length for all: no gather
                air_time = np.broadcast_to(self._uniform_air_time, (n_pkt,))
            else:
                air_time = self.air_time_s[ev_tag[ev_i[li]]]
            interf = interference_mw(gw, t_pkt, rssi, air_time, ch)
            lost = ok & ~survives(rssi, interf, air.capture_threshold_db)
            self.stats["lost_to_collisions"] += int(lost.sum())
            ok &= ~lost
        for wifi, wifi_dbm in zip(self.wifi, self._wifi_dbm, strict=True):
            hit_k = [k for k, c in enumerate(ADVERTISING_CHANNELS) if c in wifi.hit_channels()]
            if not hit_k:
                continue
            exposed = np.isin(ch, hit_k) & (wifi_dbm[gw] >= self._reach_dbm[gw])
            on_air = self.rng_air.random(n_pkt) < wifi.duty_cycle
            lost = exposed & on_air & ok
            if air.capture_threshold_db is not None:
                lost &= rssi - wifi_dbm[gw] < air.capture_threshold_db
            self.stats["lost_to_wifi"] += int(lost.sum())
            ok &= ~lost

        # 5. Rows in time order, then the gateway's report limit.
        keep = np.flatnonzero(ok)
        keep = keep[np.argsort(t_pkt[keep], kind="stable")]
        if self.max_reports_per_s is not None:
            self._report_credit += self.max_reports_per_s * (t1 - t0)
            allowed = np.floor(self._report_credit).astype(np.int64)
            forwarded = first_per_bucket(gw[keep], allowed)
            self._report_credit -= np.bincount(gw[keep[forwarded]], minlength=len(allowed))
            self._report_credit = np.minimum(self._report_credit, self.max_reports_per_s)
            self.stats["dropped_by_report_limit"] += int((~forwarded).sum())
            keep = keep[forwarded]

        e = ev_i[li[keep]]
        tags = ev_tag[e]
        rows = np.empty(len(keep), dtype=SIGHTING_DTYPE)
        rows["t"] = t0 + t_pkt[keep].astype(np.float64)
        rows["gateway"] = gw[keep]
        rows["device"] = tags
        rows["rssi"] = rssi_q[keep]
        rows["channel"] = np.asarray(ADVERTISING_CHANNELS, dtype=np.uint8)[ch[keep]]
        battery = self.fleet.battery0_pct[tags] - self.fleet.drain_pct_per_s[tags] * rows["t"]
        rows["battery"] = np.clip(np.round(battery), 0, 100)
        rows["motion"] = moving[e]
        rows["seq"] = ev_seq[e]
        self.stats["sightings"] += len(rows)
        if self.sink is not None:
            self.sink(rows)
        else:
            self._sightings.append(rows)

    def _finish_trips(self, now: float) -> None:
        """Tags whose drop time has passed come to rest at their drop point."""
        active = np.flatnonzero(self.trip_of >= 0)
        for trip_id in np.unique(self.trip_of[active]):
            trip = self._trips[trip_id]
            if trip.t_drop <= now:
                self.xy[trip.tags] = trip.drop_xy
                self.trip_of[trip.tags] = -1
                self.pick_t[trip.tags] = np.inf
                self.drop_t[trip.tags] = -np.inf
                self.rest_since[trip.tags] = trip.t_drop
                self._mean_cache[:, trip.tags] = self._mean_rssi_at_rest(trip.tags).T

    def _radio_process(
        self, env: simpy.Environment, progress: Callable[[float], None] | None
    ) -> simpy.events.ProcessGenerator:
        tick = self.scenario.tick_s
        duration = self.scenario.duration_s
        while self._radio_t < duration:
            t_end = min(self._radio_t + tick, duration)
            yield env.timeout(t_end - self._radio_t)
            self._advance_radio(t_end, progress)

    def _advance_radio(self, t_end: float, progress: Callable[[float], None] | None) -> None:
        # Runs at the *end* of the tick, so every trip starting inside it is known.
        self._radio_tick(self._radio_t, t_end)
        self._finish_trips(t_end)
        self._radio_t = t_end
        if progress is not None:
            progress(t_end)

    # -- movers -----------------------------------------------------------------------

    @property
    def navigator(self) -> Navigator:
        if self._navigator is None:
            self._navigator = Navigator(self.site)
        return self._navigator

    def _stop_point(self, stop: str, rng: np.random.Generator) -> FloatArray:
        zones = self.site.zones.resolve(stop)
        zone = self.site.zones.polygons[zones[int(rng.integers(len(zones)))]]
        return self.site.random_free_points(1, rng, zone)[0]

    def _timed_path(
        self, start: FloatArray, goal: FloatArray, t_start: float, speed: float
    ) -> tuple[FloatArray, FloatArray]:
        pts = self.navigator.path(start, goal)
        legs = np.hypot(*np.diff(pts, axis=0).T)
        return t_start + np.r_[0.0, np.cumsum(legs)] / speed, pts

    def _mover_process(self, env: simpy.Environment, mover_id: int, group_idx: int) -> simpy.events.ProcessGenerator:
        cfg = self.scenario.movers[group_idx]
        rng = np.random.default_rng(self.rng_movers.integers(2**63))
        yield env.timeout(cfg.start_s + rng.uniform(0, max(cfg.dwell_s, 1.0)))
        here = self._stop_point(cfg.route[0], rng)
        stop_i = 0
        while True:
            # Pick items at rest near this stop (in its zone), carry them to the next stop.
            zones = self.site.zones.resolve(cfg.route[stop_i])
            nxt = (stop_i + 1) % len(cfg.route)
            goal = self._stop_point(cfg.route[nxt], rng)
            t_pick = env.now + cfg.dwell_s / 2
            path_t, path_xy = self._timed_path(here, goal, t_pick, cfg.speed_mps)
            t_drop = float(path_t[-1])
            free = np.flatnonzero(self.trip_of < 0)
            in_zone = np.isin(self.site.zones.assign(self.xy[free, 0], self.xy[free, 1]), zones)
            candidates = free[in_zone]
            k = int(rng.integers(cfg.items_per_trip[0], cfg.items_per_trip[1] + 1))
            if k and len(candidates):
                nearest = np.argsort(np.hypot(*(self.xy[candidates] - here).T), kind="stable")[:k]
                tags = np.sort(candidates[nearest])
                drop = self.site.random_free_points(len(tags), rng, self.site.within_reach(goal, DROP_REACH_M))
                self._plan_trip(_Trip(tags, path_t, path_xy, t_pick, t_drop, drop), mover_id)
            if t_drop - env.now > 0:
                yield env.timeout(t_drop - env.now)
            here = goal
            stop_i = nxt
            yield env.timeout(cfg.dwell_s / 2)

    def _plan_trip(self, trip: _Trip, mover_id: int) -> None:
        trip_id = len(self._trips)
        self._trips.append(trip)
        tags = trip.tags
        self.trip_of[tags] = trip_id
        self.pick_t[tags] = trip.t_pick
        self.drop_t[tags] = trip.t_drop
        n = len(tags)
        # Ground truth: rest until pick-up, each path leg, then rest from the drop on.
        rest = np.empty(n, dtype=SEGMENT_DTYPE)
        rest["device"], rest["t0"], rest["t1"] = tags, self.rest_since[tags], trip.t_pick
        rest["x0"], rest["y0"] = self.xy[tags].T
        rest["x1"], rest["y1"] = self.xy[tags].T
        k = len(trip.path_t) - 1
        legs = np.empty(n * k, dtype=SEGMENT_DTYPE)
        legs["device"] = np.repeat(tags, k)
        legs["t0"] = np.tile(trip.path_t[:-1], n)
        legs["t1"] = np.tile(trip.path_t[1:], n)
        legs["x0"], legs["y0"] = np.tile(trip.path_xy[:-1], (n, 1)).T
        legs["x1"], legs["y1"] = np.tile(trip.path_xy[1:], (n, 1)).T
        # The last leg ends at the mover's stop; the item lands at its own drop point.
        last = np.arange(n) * k + (k - 1)
        legs["x1"][last], legs["y1"][last] = trip.drop_xy.T
        self._segments += [rest, legs]
        self.rest_since[tags] = trip.t_drop
        mv = np.empty(2 * n, dtype=MOVEMENT_DTYPE)
        mv["t"] = np.r_[np.full(n, trip.t_pick), np.full(n, trip.t_drop)]
        mv["device"] = np.r_[tags, tags]
        mv["mover"] = mover_id
        mv["kind"] = ["pickup"] * n + ["drop"] * n
        xy = np.vstack([self.xy[tags], trip.drop_xy])
        mv["x"], mv["y"] = xy.T
        mv["zone"] = self.site.zones.assign(xy[:, 0], xy[:, 1])
        self._movements.append(mv)

    # -- run ----------------------------------------------------------------------------

    def run(self, progress: Callable[[float], None] | None = None) -> TwinResult:
        env = simpy.Environment()
        env.process(self._radio_process(env, progress))
        mover_id = 0
        for gi, group in enumerate(self.scenario.movers):
            for _ in range(group.count):
                env.process(self._mover_process(env, mover_id, gi))
                mover_id += 1
        for agent in self.agents:
            env.process(agent(env))
        env.run(until=self.scenario.duration_s)
        # SimPy stops *before* events at ``until``, so the last tick is run here.
        if self._radio_t < self.scenario.duration_s:
            self._advance_radio(self.scenario.duration_s, progress)
        return TwinResult(
            scenario=self.scenario,
            gateways=self.gateways,
            device_ids=self.fleet.ids,
            tx_power_1m_dbm=self.fleet.tx_power_1m_dbm,
            sightings=np.concatenate(self._sightings) if self._sightings else np.zeros(0, SIGHTING_DTYPE),
            truth=self._ground_truth(),
            site=self.site,
            stats=dict(self.stats),
        )

    def _ground_truth(self) -> GroundTruth:
        end = self.scenario.duration_s
        # Trips still under way at the end: keep their legs, the tags rest afterwards.
        n = len(self.fleet)
        final_xy = self.xy.copy()
        for trip_id in np.unique(self.trip_of[self.trip_of >= 0]):
            trip = self._trips[trip_id]
            final_xy[trip.tags] = trip.drop_xy
        rest = np.empty(n, dtype=SEGMENT_DTYPE)
        rest["device"] = np.arange(n)
        rest["t0"] = self.rest_since
        rest["t1"] = np.maximum(self.rest_since, end)
        rest["x0"], rest["y0"] = final_xy.T
        rest["x1"], rest["y1"] = final_xy.T
        segments = np.concatenate([*self._segments, rest])
        movements = np.concatenate(self._movements) if self._movements else np.zeros(0, MOVEMENT_DTYPE)
        return GroundTruth.build(segments, movements)


def run_twin(scenario: Scenario, progress: Callable[[float], None] | None = None) -> TwinResult:
    """Simulate a scenario and return its sightings and ground truth."""
    return WarehouseTwin(scenario).run(progress)
