"""A recorded walk replayed in the calibrated twin: the same gateways, the same true path
and the same instants, with the twin's radio (path loss, walls and racks, shadowing
fields, fading, per-channel offsets, per-gateway offsets) and the gateway's reporting
model from the site file. What ``tagtwin fidelity`` compares the real walk against.

No SimPy here: the walk's timing is given, so there is nothing to schedule; the radio
is the same RadioEnvironment the warehouse twin builds.
"""

from __future__ import annotations

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
) -> FloatArray:
    """Reported RSSI (instants, gateways) of a tag at ``xyz`` (one row per instant the
    real walk had), NaN where the gateway did not report. ``seed`` draws the site's
    shadowing fields, so two walks with one seed cross the same site (a survey and a
    test track); ``walk`` numbers the walks, whose channels, fading and misses are
    independent. With instant times ``t``, the site's temporal part is added too.
    """
    static_seed, packet_seed = np.random.SeedSequence(seed).spawn(2)
    env = walk_environment(site, gateway_xyz, gateway_ids, np.random.default_rng(static_seed))
    rng = np.random.default_rng(packet_seed.spawn(walk + 1)[walk])
    p0 = site.radio.p0_dbm if site.radio.p0_dbm is not None else (-59.0 if tx_power_dbm is None else tx_power_dbm)
    mean = env.mean_rssi(xyz, np.full(len(xyz), p0))
    if site.radio.temporal_sigma_db > 0 and t is not None:
        mean += temporal_process(t, mean.shape[1], site.radio.temporal_sigma_db,
                                 site.radio.temporal_coherence_s, rng)
    channel = rng.integers(0, len(ADVERTISING_CHANNELS), size=mean.shape)
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
