"""The link budget of a site: path loss + obstacles + shadowing, then per-packet effects.

Everything that does not change over time (obstacle loss and the shadowing field of each
gateway) is baked once into a per-gateway map on a regular grid. A packet then costs one
distance, one map lookup and one fading draw, which keeps the twin's hot path to a few
numpy operations over (events x gateways) arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from radio_models.geometry import Obstacles, crossing_loss_db
from radio_models.pathloss import PathLossModel, three_d_distance
from radio_models.shadowing import correlated_gaussian_field

FloatArray = NDArray[np.float64]

ADVERTISING_CHANNELS = (37, 38, 39)
FADING_LEVELS = 65_536  # quantiles in the fading lookup table (uint16 draws)


@dataclass(frozen=True)
class Grid:
    """A regular grid of cell centres covering the bounding box of a site."""

    x0: float
    y0: float
    cell_m: float
    nx: int
    ny: int

    @classmethod
    def covering(cls, bounds: tuple[float, float, float, float], cell_m: float) -> Grid:
        minx, miny, maxx, maxy = bounds
        nx = max(1, int(np.ceil((maxx - minx) / cell_m)))
        ny = max(1, int(np.ceil((maxy - miny) / cell_m)))
        return cls(minx, miny, cell_m, nx, ny)

    def centres(self) -> FloatArray:
        """Cell centres as (ny * nx, 2), row-major (y outer, x inner)."""
        xs = self.x0 + (np.arange(self.nx) + 0.5) * self.cell_m
        ys = self.y0 + (np.arange(self.ny) + 0.5) * self.cell_m
        gx, gy = np.meshgrid(xs, ys)
        return np.column_stack([gx.ravel(), gy.ravel()])

    def cell_index(self, xy: FloatArray) -> NDArray[np.intp]:
        """Flat index of the cell holding each point (points outside are clamped)."""
        ix = np.clip(((xy[:, 0] - self.x0) / self.cell_m).astype(np.intp), 0, self.nx - 1)
        iy = np.clip(((xy[:, 1] - self.y0) / self.cell_m).astype(np.intp), 0, self.ny - 1)
        return iy * self.nx + ix


@dataclass(frozen=True)
class PacketEffects:
    """Per-packet effects added on top of the static mean RSSI.

    fading: "none", "rayleigh" or "rician" (with ``rician_k_db``); the power gain of a
    Rayleigh channel is exponential with mean 1, Rician is the non-central chi-square
    with K = LoS/scatter power (Rappaport ch. 5). channel_offset_db: mean offset per
    advertising channel, measured on a public BLE 5.1 dataset as about -3/-1/+4 dB for
    37/38/39 (docs/references.md section 1).
    """

    fading: str = "rayleigh"
    rician_k_db: float = 6.0
    channel_offset_db: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @cached_property
    def fading_table_db(self) -> NDArray[np.float32]:
        """The fading gain's quantile function at FADING_LEVELS stratified probabilities
        (u = (i + 1/2) / levels), in dB. Drawing a uniform integer and looking it up is
        inverse-CDF sampling: the CDF is matched to 1 / levels (1.5e-5), far finer than the
        1 dB receivers report, at a third of the cost of an exponential draw."""
        u = (np.arange(FADING_LEVELS) + 0.5) / FADING_LEVELS
        if self.fading == "rayleigh":
            gain = -np.log1p(-u)  # Exp(1) quantile: Rayleigh amplitude, exponential power
        elif self.fading == "rician":
            from scipy.stats import ncx2

            k = 10 ** (self.rician_k_db / 10)
            # |LoS + scatter|^2 with unit mean: ncx2(df 2, nc 2K) / (2 (K + 1)).
            gain = ncx2.ppf(u, 2, 2 * k) / (2 * (k + 1))
        else:
            gain = np.ones_like(u)
        return np.asarray(10 * np.log10(gain), dtype=np.float32)

    def fading_db(
        self,
        shape: tuple[int, ...],
        rng: np.random.Generator,
        dtype: type[np.floating] = np.float64,
    ) -> NDArray[np.floating]:
        """Fast-fading power gain in dB, one independent draw per element."""
        if self.fading == "none":
            return np.zeros(shape, dtype=dtype)
        if self.fading not in ("rayleigh", "rician"):  # pragma: no cover - scenario validation
            raise ValueError(f"unknown fading {self.fading!r}")
        idx = rng.integers(0, FADING_LEVELS, size=shape, dtype=np.uint16)
        return self.fading_table_db.astype(dtype, copy=False)[idx]


@dataclass
class RadioEnvironment:
    """All the radio of one site: gateways, path-loss family, static maps, packet effects."""

    gateway_xyz: FloatArray
    model: PathLossModel
    obstacles: Obstacles
    grid: Grid
    shadowing_sigma_db: float
    decorrelation_m: float
    effects: PacketEffects
    rng: np.random.Generator
    gateway_bias_db: FloatArray = field(default_factory=lambda: np.zeros(0))
    tag_height_m: float = 1.0
    static_db: FloatArray = field(init=False, repr=False)
    walls_db: NDArray[np.float32] = field(init=False, repr=False)
    nlos: NDArray[np.bool_] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n_gw = len(self.gateway_xyz)
        if self.gateway_bias_db.size == 0:
            self.gateway_bias_db = np.zeros(n_gw)
        centres = self.grid.centres()
        # COST 231 multi-wall on top of the family: one loss per wall/rack crossed.
        walls = crossing_loss_db(self.obstacles, centres, self.gateway_xyz[:, :2])  # (cells, gw)
        shadow = self._fields(self.shadowing_sigma_db, n_gw, len(centres))
        static = shadow - walls
        self.nlos = np.zeros(walls.shape, dtype=bool)
        los_probability = getattr(self.model, "los_probability", None)
        if los_probability is not None and getattr(self.model, "condition", "") == "mixed" and n_gw:
            # TR 38.901 7.6.3.3 spatially consistent LoS state: threshold a correlated
            # uniform field (Gaussian field through its CDF) against P_LoS(d_2D).
            from scipy.special import ndtr

            uniform = ndtr(self._fields(1.0, n_gw, len(centres)))
            d2d = np.hypot(
                *(centres[:, None, :] - self.gateway_xyz[None, :, :2]).transpose(2, 0, 1)
            )
            self.nlos = uniform > los_probability(d2d)
            cell_xyz = np.column_stack([centres, np.full(len(centres), self.tag_height_m)])
            penalty = self.model.nlos_penalty_db(three_d_distance(cell_xyz, self.gateway_xyz))  # type: ignore[attr-defined]
            static = static - np.where(self.nlos, penalty, 0.0)
        self.walls_db = walls.astype(np.float32)
        # (cells, gateways): what the site adds to the family's loss at each cell.
        self.static_db = static.astype(np.float32)

    def _fields(self, sigma_db: float, n_gw: int, n_cells: int) -> FloatArray:
        """One independent Gudmundson field per gateway, as (cells, gateways)."""
        if n_gw == 0:
            return np.zeros((n_cells, 0))
        shape = (self.grid.ny, self.grid.nx)
        return np.stack(
            [
                correlated_gaussian_field(
                    shape, self.grid.cell_m, sigma_db, self.decorrelation_m, self.rng
                ).ravel()
                for _ in range(n_gw)
            ],
            axis=1,
        )

    @property
    def n_gateways(self) -> int:
        return len(self.gateway_xyz)

    def mean_rssi(
        self,
        tag_xyz: FloatArray,
        tx_power_1m_dbm: FloatArray,
        dtype: type[np.floating] = np.float64,
    ) -> NDArray[np.floating]:
        """Mean RSSI (no fading) of every tag at every gateway, shape (tags, gateways).

        P_1m - family(d) + static map (walls, LoS state, shadowing) + gateway bias, with
        d clamped at 0.1 m. Written as a few in-place passes over one (tags, gateways)
        array: this is the link-evaluation hot path (benchmarks/bench_links.py)."""
        p = np.asarray(tag_xyz, dtype=dtype)
        g = self.gateway_xyz.astype(dtype)
        d2 = np.subtract.outer(p[:, 0], g[:, 0])
        d2 *= d2
        for axis in (1, 2):
            diff = np.subtract.outer(p[:, axis], g[:, axis])
            diff *= diff
            d2 += diff
        out = self.static_db[self.grid.cell_index(p[:, :2])].astype(dtype, copy=False)
        out -= self.model.excess_loss_db_sq(d2).astype(dtype, copy=False)
        out += np.asarray(tx_power_1m_dbm, dtype=dtype)[:, None]
        out += self.gateway_bias_db.astype(dtype)[None, :]
        return out

    def mean_rssi_cells(
        self, tx_power_1m_dbm: float, cells: NDArray[np.intp] | None = None
    ) -> FloatArray:
        """Mean RSSI at the centres of grid cells (all by default) at tag height, (cells, gw):
        the coverage map a planner looks at."""
        centres = self.grid.centres()
        idx = np.arange(len(centres)) if cells is None else cells
        xyz = np.column_stack([centres[idx], np.full(len(idx), self.tag_height_m)])
        return np.asarray(self.mean_rssi(xyz, np.full(len(idx), tx_power_1m_dbm)), dtype=float)

    def packet_rssi(
        self,
        mean_rssi: NDArray[np.floating],
        channels: NDArray[np.integer],
        rng: np.random.Generator,
    ) -> NDArray[np.floating]:
        """RSSI of individual packets: mean + channel offset + fast fading, quantized to 1 dB
        as receivers report it. ``channels`` holds 37/38/39 per row of ``mean_rssi``; the
        result keeps ``mean_rssi``'s dtype."""
        dtype = mean_rssi.dtype.type
        offsets = np.asarray(self.effects.channel_offset_db, dtype=dtype)[np.asarray(channels) - 37]
        out = self.effects.fading_db(mean_rssi.shape, rng, dtype)
        out += mean_rssi
        out += offsets[:, None]
        return np.round(out, out=out)


@dataclass(frozen=True)
class ReportModel:
    """How a gateway turns packets into reported RSSI (siteplan's ``[radio.report]``).

    Each of ``receivers`` modules draws its own fading, reads in steps of
    ``quantization_db`` and hears only at or above its sensitivity; a report is also
    lost with ``miss_probability`` (scan gaps, CRC errors the model does not resolve).
    The gateway reports the mean of the modules that heard, in mW (``combine`` linear)
    or in dB. One module, 1 dB steps, no misses is what the twin always did.
    """

    receivers: int = 1
    combine: str = "linear"
    quantization_db: float = 1.0
    miss_probability: float = 0.0

    def report(
        self,
        mean_dbm: NDArray[np.floating] | float,
        effects: PacketEffects,
        rng: np.random.Generator,
        sensitivity_dbm: NDArray[np.floating] | float = -np.inf,
    ) -> FloatArray:
        """Reported RSSI for packets with mean RSSI ``mean_dbm`` (any shape), NaN where no
        module heard. Sensitivity broadcasts against ``mean_dbm``."""
        mean = np.asarray(mean_dbm, dtype=float)
        shape = (*mean.shape, self.receivers)
        reading = mean[..., None] + effects.fading_db(shape, rng)
        if self.quantization_db > 0:
            reading = np.round(reading / self.quantization_db) * self.quantization_db
        heard = reading >= np.asarray(sensitivity_dbm, dtype=float)[..., None]
        count = heard.sum(axis=-1)
        if self.miss_probability > 0:  # the whole report is lost, whatever the modules heard
            count = np.where(rng.random(mean.shape) >= self.miss_probability, count, 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.combine == "linear":
                power = np.where(heard, 10 ** (reading / 10), 0.0).sum(axis=-1) / count
                out = 10 * np.log10(power)
            else:
                out = np.where(heard, reading, 0.0).sum(axis=-1) / count
        return np.where(count > 0, out, np.nan)

    def fading_stats(self, fading: str, rician_k_db: float = 6.0, samples: int = 200_000) -> tuple[float, float]:
        """Mean and standard deviation (dB) of what fading and reporting add to the mean
        RSSI, for links well above sensitivity. Drawn with a fixed seed (common random
        numbers, so the result is smooth in K) and a uniform sub-step offset (so
        quantization averages out): a deterministic property of the model."""
        rng = np.random.default_rng(20_211_234)
        shape = (samples, self.receivers)
        step = self.quantization_db
        offset = rng.uniform(-0.5, 0.5, samples) * step if step > 0 else np.zeros(samples)
        scatter = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2)
        if fading == "none":
            gain = np.ones(shape)
        elif fading == "rayleigh":
            gain = np.abs(scatter) ** 2
        else:  # |LoS + scatter|^2 with unit mean power
            k = 10 ** (rician_k_db / 10)
            gain = np.abs(np.sqrt(k / (k + 1)) + scatter / np.sqrt(k + 1)) ** 2
        reading = offset[:, None] + 10 * np.log10(np.maximum(gain, 1e-30))
        if step > 0:
            reading = np.round(reading / step) * step
        if self.combine == "linear":
            values = 10 * np.log10(np.mean(10 ** (reading / 10), axis=1))
        else:
            values = np.mean(reading, axis=1)
        values -= offset
        return float(np.mean(values)), float(np.std(values))
