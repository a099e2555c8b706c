"""A recorded walk replayed in the calibrated twin: the same gateways, the same true path
and the same instants, with the twin's radio (path loss, walls and racks, shadowing
fields, fading, per-channel offsets, per-gateway offsets) and the gateway's reporting
model from the site file. What ``tagtwin fidelity`` compares the real walk against.

No SimPy here: the walk's timing is given, so there is nothing to schedule; the radio
is the same RadioEnvironment the warehouse twin builds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from radio_models.environment import ADVERTISING_CHANNELS, Grid, PacketEffects, RadioEnvironment, ReportModel
from radio_models.pathloss import LogDistance
from radio_models.shadowing import TemporalVariation
from siteplan.model import SiteModel
from siteplan.radio import LogDistanceParams
from siteplan.sitefile import SiteFile

FloatArray = NDArray[np.float64]


def walk_environment(
    site: SiteFile, gateway_xyz: FloatArray, gateway_ids: tuple[str, ...], rng: np.random.Generator
) -> RadioEnvironment:
    """The site file's radio as the twin builds it, on a grid fine enough for its
    shadowing's decorrelation distance."""
    radio = site.radio
    plan = SiteModel.from_scenario(site)
    exponent = radio.model.exponent if isinstance(radio.model, LogDistanceParams) else 2.0
    cell = min(radio.grid_m, max(radio.decorrelation_m / 4, 0.1))
    offsets = np.array([radio.gateway_offsets_db.get(g, 0.0) for g in gateway_ids])
    return RadioEnvironment(
        gateway_xyz=np.asarray(gateway_xyz, dtype=float),
        model=LogDistance(exponent=exponent, sigma_db=radio.shadowing_sigma_db),
        obstacles=plan.obstacles(),
        grid=Grid.covering(plan.outline.buffer(1.0).bounds, cell),
        shadowing_sigma_db=radio.shadowing_sigma_db,
        decorrelation_m=radio.decorrelation_m,
        effects=PacketEffects(radio.fading, radio.rician_k_db, radio.channel_offset_db),
        rng=rng,
        gateway_bias_db=offsets,
        tag_height_m=site.site.tag_height_m,
    )


@dataclass(frozen=True)
class SurveyReadings:
    """What a site's survey measured (truth positions, reported RSSI per gateway, NaN
    unheard, and instant times), for a twin of that very site rather than of a site
    like it."""

    xyz: FloatArray
    rssi: FloatArray
    t: FloatArray


def condition_on_survey(
    env: RadioEnvironment, site: SiteFile, survey: SurveyReadings, p0_dbm: float, rng: np.random.Generator
) -> None:
    """Condition the twin's static shadowing on what the survey measured (conditional
    simulation by the residual method, Journel & Huijbregts 1978, ch. V.B): per grid
    cell and gateway, the survey's mean discrepancy from the twin's mean d is an
    estimate of the cell's shadowing with noise variance v = per-packet^2 / readings +
    temporal^2 / passes (a pass: readings less than two coherence times apart), so

        S_cond = S + w (d - e),   w = sigma_s^2 / (sigma_s^2 + v),   e ~ N(0, v),

    which keeps S's variance where the survey saw nothing and pins it to the survey
    where it saw a lot. Cells are treated as independent (the grid is a quarter of the
    decorrelation distance), which is what makes this a few array operations."""
    radio = site.radio
    rep = radio.report
    fading_mean, fading_sd = ReportModel(rep.receivers, rep.combine, rep.quantization_db).fading_stats(
        radio.fading, radio.rician_k_db)
    packet_var = fading_sd**2 + float(np.var(radio.channel_offset_db))
    mean = env.mean_rssi(survey.xyz, np.full(len(survey.xyz), p0_dbm)) + fading_mean
    d = survey.rssi - mean
    cell = env.grid.cell_index(survey.xyz[:, :2])
    n_cells, n_gw = env.static_db.shape
    heard = np.isfinite(d)
    order = np.lexsort((survey.t, cell))
    new_pass = np.r_[True, (cell[order][1:] != cell[order][:-1])
                     | (np.diff(survey.t[order]) > 2 * radio.temporal_coherence_s)]
    passes = np.bincount(cell[order][new_pass], minlength=n_cells).astype(float)
    for g in range(n_gw):
        h = heard[:, g]
        n = np.bincount(cell[h], minlength=n_cells).astype(float)
        total = np.bincount(cell[h], weights=d[h, g], minlength=n_cells)
        seen = n > 0
        v = packet_var / np.maximum(n, 1.0) + radio.temporal_sigma_db**2 / np.maximum(passes, 1.0)
        w = np.where(seen, radio.shadowing_sigma_db**2 / (radio.shadowing_sigma_db**2 + v), 0.0)
        e = rng.normal(0.0, 1.0, n_cells) * np.sqrt(v)
        step = w * (np.where(seen, total / np.maximum(n, 1.0), 0.0) - e)
        env.static_db[:, g] += step.astype(np.float32)


def simulate_walk(
    site: SiteFile,
    gateway_xyz: FloatArray,
    gateway_ids: tuple[str, ...],
    sensitivity_dbm: FloatArray,
    xyz: FloatArray,
    seed: int,
    tx_power_dbm: float | None = None,
    walk: int = 0,
    t: FloatArray | None = None,
    survey: SurveyReadings | None = None,
) -> FloatArray:
    """Reported RSSI (instants, gateways) of a tag at ``xyz`` (one row per instant the
    real walk had), NaN where the gateway did not report. ``seed`` draws the site's
    shadowing fields, so two walks with one seed cross the same site (a survey and a
    test track); ``walk`` numbers the walks, whose channels, fading and misses are
    independent. With instant times ``t``, the site's temporal part is added too.
    With the site's ``survey``, the shadowing is conditioned on it (this site, not one
    like it: ``condition_on_survey``).
    """
    static_seed, packet_seed = np.random.SeedSequence(seed).spawn(2)
    env = walk_environment(site, gateway_xyz, gateway_ids, np.random.default_rng(static_seed))
    rng = np.random.default_rng(packet_seed.spawn(walk + 1)[walk])
    p0 = site.radio.p0_dbm if site.radio.p0_dbm is not None else (-59.0 if tx_power_dbm is None else tx_power_dbm)
    if survey is not None:
        condition_on_survey(env, site, survey, p0, np.random.default_rng(static_seed.spawn(1)[0]))
    mean = env.mean_rssi(xyz, np.full(len(xyz), p0))
    if site.radio.temporal_sigma_db > 0 and t is not None:
        mean += temporal_process(t, mean.shape[1], site.radio.temporal_sigma_db,
                                 site.radio.temporal_coherence_s, rng)
    channel = np.asarray(rng.integers(0, len(ADVERTISING_CHANNELS), size=mean.shape), dtype=np.intp)
    mean = mean + np.asarray(site.radio.channel_offset_db)[channel]
    rep = site.radio.report
    model = ReportModel(rep.receivers, rep.combine, rep.quantization_db, rep.miss_probability)
    return model.report(mean, env.effects, rng, np.asarray(sensitivity_dbm, dtype=float)[None, :])


def temporal_process(
    t: FloatArray, n_gateways: int, sigma_db: float, coherence_s: float, rng: np.random.Generator
) -> FloatArray:
    """The site's slow variation (radio_models.shadowing.TemporalVariation, as the
    warehouse twin draws it) for one walk's instants, (instants, gateways)."""
    t = np.asarray(t, dtype=float)
    order = np.argsort(t, kind="stable")
    process = TemporalVariation(sigma_db, coherence_s, n_gateways, rng)
    out = np.empty((len(t), n_gateways))
    out[order] = process.offsets(np.zeros(len(t), np.int64), t[order]).T
    return out


# A calibration walk of the warehouse twin: a surveyor stops stop_s (default 3 s) at every
# spacing_m (default 1 m, rounded to whole radio-grid cells) of walkable floor with a
# reference tag advertising every WALK_ADV_INTERVAL_S, so each gateway hears it about 30
# times a stop.
WALK_ADV_INTERVAL_S = 0.1
WALK_MOVE_S = 2.0  # between stops: the temporal variation (if any) decorrelates meanwhile
WALK_STREAM = 8  # SeedSequence(scenario seed) child; the warehouse twin uses 0-7


@dataclass(frozen=True)
class CalibrationWalk:
    """What a calibration walk recorded: stop positions (radio-grid cell centres), and
    per stop, gateway and advertisement the reported RSSI (NaN unheard) and channel index."""

    xy: FloatArray  # (stops, 2)
    cells: NDArray[np.intp]  # (stops,) radio-grid cell of each stop
    rssi: FloatArray  # (stops, gateways, readings)
    channel: NDArray[np.intp]  # (stops, gateways, readings), 0-2 for channels 37-39
    sensitivity_dbm: FloatArray  # (gateways,)
    tx_power_dbm: float


def walk_stops(site: SiteModel, grid: Grid, spacing_m: float = 1.0) -> NDArray[np.intp]:
    """Radio-grid cells a surveyor stops at: every k-th cell (k cells ~ ``spacing_m``) in x
    and y whose centre is inside the outline and clear of racks and walls (the movers'
    walkable floor, siteplan's ``blocked``)."""
    import shapely

    k = max(1, round(spacing_m / grid.cell_m))
    iy, ix = np.divmod(np.arange(grid.nx * grid.ny), grid.nx)
    on_lattice = (ix % k == k // 2) & (iy % k == k // 2)
    cells = np.flatnonzero(on_lattice)
    xy = grid.centres()[cells]
    ok = shapely.contains_xy(site.outline, xy[:, 0], xy[:, 1])
    ok &= ~shapely.intersects_xy(site.blocked, xy[:, 0], xy[:, 1])
    return np.asarray(cells[ok], dtype=np.intp)


def calibration_walk(
    radio: RadioEnvironment,
    site: SiteModel,
    sensitivity_dbm: FloatArray,
    tx_power_dbm: float,
    seed: int,
    report: ReportModel | None = None,
    temporal: tuple[float, float] | None = None,
    spacing_m: float = 1.0,
    stop_s: float = 3.0,
) -> CalibrationWalk:
    """A surveyor's walk through the twin's own radio: mean RSSI (path loss, walls and
    racks, shadowing, gateway offsets) plus, per reading, a channel, the channel's offset,
    fast fading, the gateway's reporting (1 dB steps, or ``report``) and its sensitivity;
    ``temporal`` (sigma dB, coherence s) adds the site's slow variation. The floor is
    quiet (no collisions: a walk is made out of hours). Draws come from
    ``SeedSequence(seed)``'s child WALK_STREAM, so the walk is deterministic per scenario."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(WALK_STREAM + 1)[WALK_STREAM])
    cells = walk_stops(site, radio.grid, spacing_m)
    xy = radio.grid.centres()[cells]
    n_read = max(1, round(stop_s / WALK_ADV_INTERVAL_S))
    n_stop, n_gw = len(cells), radio.n_gateways
    xyz = np.column_stack([xy, np.full(n_stop, radio.tag_height_m)])
    mean = np.repeat(radio.mean_rssi(xyz, np.full(n_stop, tx_power_dbm))[:, :, None], n_read, axis=2)
    if temporal is not None and temporal[0] > 0:
        t = (np.arange(n_stop)[:, None] * (stop_s + WALK_MOVE_S)
             + np.arange(n_read)[None, :] * WALK_ADV_INTERVAL_S).ravel()
        slow = temporal_process(t, n_gw, temporal[0], temporal[1], rng)  # (instants, gateways)
        mean += slow.reshape(n_stop, n_read, n_gw).transpose(0, 2, 1)
    channel = np.asarray(rng.integers(0, len(ADVERTISING_CHANNELS), size=mean.shape), dtype=np.intp)
    mean += np.asarray(radio.effects.channel_offset_db)[channel]
    sens = np.asarray(sensitivity_dbm, dtype=float)
    if report is None:
        reading = np.round(mean + radio.effects.fading_db(mean.shape, rng))
        rssi = np.where(reading >= sens[None, :, None], reading, np.nan)
    else:
        rssi = report.report(mean, radio.effects, rng, sens[None, :, None])
    return CalibrationWalk(xy, cells, rssi, channel, sens, float(tx_power_dbm))
