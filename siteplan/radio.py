"""The site file's radio section: path-loss family, shadowing, fading, air interface, and
what a calibration walk measured (reference power, per-gateway offsets, how a gateway
reports RSSI, the radio map's smoothing) with 1-sigma uncertainties.

Scenarios use the same section (``[radio]``): the twin of a real site is its site file
plus tags and movers. Every field added for calibration defaults to what the twin did
before, so an existing scenario runs unchanged.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from siteplan.schema import Strict


class LogDistanceParams(Strict):
    """Rappaport eq. 4.68: RSSI = P0 - 10 n log10(d)."""

    kind: Literal["log-distance"] = "log-distance"
    exponent: float = Field(2.0, gt=0.5, le=6.0, description="path-loss exponent n")


class ItuP1238Params(Strict):
    """ITU-R P.1238-11 site-general model, Table 2."""

    kind: Literal["itu-p1238"]
    environment: Literal["office", "corridor", "industrial"] = "industrial"
    los: bool = True
    frequency_ghz: float = Field(2.44, gt=0.3, le=100)


class ItuP1238ClassicParams(Strict):
    """ITU-R P.1238 classic form, N = 28 residential, 30 office, 22 commercial."""

    kind: Literal["itu-p1238-classic"]
    distance_power_coefficient: float = Field(22.0, gt=5, le=60, description="N")
    frequency_mhz: float = Field(2440.0, gt=300, le=100_000)


class Tr38901Params(Strict):
    """3GPP TR 38.901 Table 7.4.1-1 InH-Office or InF; condition mixed draws LoS per link."""

    kind: Literal["3gpp-38.901"]
    scenario: Literal["inh-office", "inf-sl", "inf-dl", "inf-sh", "inf-dh"] = "inf-sl"
    condition: Literal["los", "nlos", "mixed"] = "mixed"
    frequency_ghz: float = Field(2.44, gt=0.5, le=100)
    d_clutter_m: float | None = Field(
        None, gt=0, description="InF clutter size; default per scenario"
    )
    clutter_ratio: float | None = Field(None, gt=0, lt=1, description="InF clutter density r")


PathLossParams = Annotated[
    LogDistanceParams | ItuP1238Params | ItuP1238ClassicParams | Tr38901Params,
    Field(discriminator="kind"),
]


class WifiParams(Strict):
    """A Wi-Fi access point or client that occupies part of the 2.4 GHz band."""

    x: float
    y: float
    channel: int = Field(1, ge=1, le=13)
    power_1m_dbm: float = Field(-20.0, ge=-80, le=10, description="received power at 1 m")
    duty_cycle: float = Field(0.3, ge=0, le=1, description="fraction of time on the air")


class AirInterfaceParams(Strict):
    """BLE air interface: PHY, collisions with capture, Wi-Fi interferers."""

    phy: Literal["1M", "2M", "coded-s2", "coded-s8"] = "1M"
    collisions: bool = Field(True, description="packets overlapping on one channel collide")
    capture: bool = Field(True, description="false: any overlap destroys both packets")
    capture_db: float = Field(
        8.0, ge=0, le=40, description="C/I at which the stronger packet still decodes"
    )

    wifi: list[WifiParams] = Field(default_factory=list)

    @property
    def capture_threshold_db(self) -> float | None:
        return self.capture_db if self.capture else None


class GatewayReport(Strict):
    """How a gateway turns packets into the RSSI it reports. Some gateways carry several
    receiver modules and report the mean of what they heard (the Kolakowski anchors
    average two modules in linear power); most round to whole dBm first."""

    receivers: int = Field(1, ge=1, le=8, description="receiver modules per gateway, each with its own fading")
    combine: Literal["linear", "db"] = Field(
        "linear", description="how the modules' readings are averaged: in mW or in dB"
    )
    quantization_db: float = Field(1.0, ge=0, le=10, description="reading step of one module; 0: exact")
    miss_probability: float = Field(
        0.0, ge=0, lt=1, description="reports lost at any level (scan gaps, errors)"
    )


class RadioUncertainty(Strict):
    """1-sigma uncertainties of the calibrated values (parametric bootstrap, see
    radio_models/calibration.py); absent when the section was written by hand."""

    p0_db: float = Field(0.0, ge=0, description="of p0_dbm")
    exponent: float = Field(0.0, ge=0, description="of the log-distance exponent")
    shadowing_sigma_db: float = Field(0.0, ge=0)
    decorrelation_m: float = Field(0.0, ge=0)
    rician_k_db: float = Field(0.0, ge=0)
    temporal_sigma_db: float = Field(0.0, ge=0)
    temporal_coherence_s: float = Field(0.0, ge=0)
    gateway_offsets_db: dict[str, float] = Field(default_factory=dict, description="gateway id -> 1-sigma")


class TrackerTuning(Strict):
    """One estimator/tracker at one fix interval and window, as cross-validation on the
    calibration walk tuned it (tagtwin.evaluation.choose_tracking): the motion model's
    speed, how much the tracker widens the map's likelihood, the lag of its fixed-lag
    smoother if it has one, the HMM's shared-offset spread, the radio map's bandwidth
    if cross-validation chose another than the site's, and the factor that makes its r90 cover 90 % of held-out
    errors."""

    localizer: str = Field(description="estimator, as evaluate --localizer")
    tracker: str = Field("none", description="tracker, as evaluate --tracker")
    step_s: float = Field(gt=0, le=60, description="fix interval")
    window_s: float = Field(gt=0, le=60, description="window of readings per fix")
    speed_mps: float = Field(1.5, gt=0, le=10, description="HMM / particle motion model speed")
    inflation: float | None = Field(None, gt=0, le=20, description="likelihood widening; none: the map's own")
    r90_scale: float = Field(1.0, gt=0, le=20, description="factor on the tracker's r90 (HMM, particle, smoothers)")
    smoother_lag_s: float = Field(
        0.0, ge=0, le=60, description="fixed-lag smoother's lag (kalman, hmm, particle); 0: the filter")
    offset_sigma_db: float = Field(
        0.0, ge=0, le=30, description="HMM: spread of an offset shared by a window's gateways, integrated out")
    map_bandwidth_m: float | None = Field(
        None, gt=0, le=20, description="radio map kernel bandwidth for this entry; none: the site's")
    chosen: bool = Field(False, description="the combination cross-validation ranked first")


class RadioMapSettings(Strict):
    """A surveyed radio map: the calibration walk (a capture with truth, path relative
    to the site file) and the kernel smoothing chosen from its point spacing."""

    survey: str | None = Field(None, description="capture file of the calibration walk")
    bandwidth_m: float = Field(0.5, gt=0, le=20, description="Gaussian kernel bandwidth")
    reach_m: float = Field(0.35, gt=0, le=50, description="cells farther from any survey point are not free")
    cell_m: float = Field(0.2, gt=0.02, le=5, description="map cell size")
    tuning: list[TrackerTuning] = Field(
        default_factory=list, description="trackers tuned by cross-validation on the survey")


class Radio(Strict):
    model: PathLossParams = Field(default_factory=LogDistanceParams)
    shadowing_sigma_db: float = Field(4.0, ge=0, le=20, description="static log-normal shadowing per gateway")
    decorrelation_m: float = Field(6.0, ge=0, le=100, description="Gudmundson decorrelation distance of the shadowing")
    fading: Literal["none", "rayleigh", "rician"] = Field("rayleigh", description="per-packet fast fading")
    rician_k_db: float = Field(6.0, description="Rician K factor (LoS / scattered power) when fading = rician")
    channel_offset_db: tuple[float, float, float] = Field(
        (0.0, 0.0, 0.0), description="mean RSSI offset on channels 37, 38, 39"
    )
    gateway_bias_sigma_db: float = Field(0.0, ge=0, le=10, description="spread of per-gateway RSSI bias")
    grid_m: float = Field(0.5, gt=0.05, le=5.0, description="resolution of the static loss maps")
    channel_spacing_ms: float = Field(0.4, gt=0, lt=10, description="gap between the 37/38/39 packets")
    air: AirInterfaceParams = Field(default_factory=AirInterfaceParams, description="PHY, collisions, Wi-Fi")
    temporal_sigma_db: float = Field(
        0.0, ge=0, le=20, description="RSSI variation lasting seconds at one place (people, the carrier); "
        "a Gauss-Markov process per link in time (radio_models.shadowing.TemporalVariation)")
    temporal_coherence_s: float = Field(5.0, gt=0, le=3600, description="its coherence time")
    p0_dbm: float | None = Field(
        None, ge=-120, le=20,
        description="calibrated mean link budget at 1 m before fading (the twin's tx power "
        "of the calibration tag); none: each tag group's tx_power_1m_dbm")
    gateway_offsets_db: dict[str, float] = Field(
        default_factory=dict, description="gateway id -> fixed RSSI offset (antenna, housing, mounting)")
    report: GatewayReport = Field(default_factory=GatewayReport, description="how a gateway reports RSSI")
    uncertainty: RadioUncertainty | None = Field(None, description="1-sigma of the calibrated values")
    radio_map: RadioMapSettings | None = Field(None, description="surveyed radio map and its smoothing")

    @model_validator(mode="after")
    def _offsets_finite(self) -> Radio:
        for gw, v in self.gateway_offsets_db.items():
            if not -40.0 <= v <= 40.0:
                raise ValueError(f"gateway_offsets_db.{gw}: {v} dB is outside -40..40")
        return self
