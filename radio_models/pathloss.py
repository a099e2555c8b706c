"""Distance-dependent path-loss families behind one interface.

A model returns the *excess* loss over the 1 m reference, so that RSSI follows from a
tag's calibrated "measured power at 1 m" (what BLE tags advertise and datasheets give):

    RSSI(d) = P_1m - excess_loss_db(d) - walls + shadowing + fading

Models that are published as absolute path loss (ITU-R P.1238, 3GPP TR 38.901) fit the
same interface as PL(d) - PL(1 m).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

# Distances below this are clamped: the far-field formulas diverge at d -> 0 and no
# tag sits closer than a few centimetres to a gateway antenna.
MIN_DISTANCE_M = 0.1


def three_d_distance(points: FloatArray, anchors: FloatArray) -> FloatArray:
    """Pairwise 3-D distances, shape (len(points), len(anchors)), clamped at 0.1 m."""
    diff = points[:, None, :] - anchors[None, :, :]
    dist = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    return np.maximum(dist, MIN_DISTANCE_M)


class PathLossModel(ABC):
    """A path-loss family: excess loss over 1 m, plus its published shadowing sigma."""

    name: str
    sigma_db: float

    @abstractmethod
    def excess_loss_db(self, distance_m: FloatArray) -> FloatArray:
        """Loss in dB relative to the 1 m reference, for any array of distances."""

    def excess_loss_db_sq(self, distance_sq_m2: NDArray[np.floating]) -> NDArray[np.floating]:
        """Excess loss from squared distances (skips a square root on the hot path);
        families override it when they can keep the caller's dtype."""
        return self.excess_loss_db(np.sqrt(distance_sq_m2))

    def slope_db_per_decade(self, distance_m: FloatArray) -> FloatArray:
        """d(loss)/d(log10 d); used by localizers and the Cramér-Rao bound."""
        eps = 1e-3
        d = np.asarray(distance_m, dtype=float)
        hi = self.excess_loss_db(d * (1 + eps))
        lo = self.excess_loss_db(d / (1 + eps))
        return (hi - lo) / (2 * np.log10(1 + eps))


@dataclass(frozen=True)
class LogDistance(PathLossModel):
    """Log-distance path loss, d0 = 1 m: PL(d) - PL(d0) = 10 n log10(d / d0).

    Rappaport, *Wireless Communications*, 2nd ed., eq. 4.68; (n, sigma) for 2.4 GHz
    sites in the table after Anderson et al. 1995 (docs/references.md section 1).
    Defaults n = 2.0, sigma = 4 dB: a factory with mostly line of sight.
    """

    exponent: float = 2.0
    sigma_db: float = 4.0
    name: str = "log-distance"

    def excess_loss_db(self, distance_m: FloatArray) -> FloatArray:
        d = np.maximum(np.asarray(distance_m, dtype=float), MIN_DISTANCE_M)
        return 10.0 * self.exponent * np.log10(d)

    def excess_loss_db_sq(self, distance_sq_m2: NDArray[np.floating]) -> NDArray[np.floating]:
        # 10 n log10(d) = 5 n log10(d^2), in the caller's dtype (float32 on the hot path).
        d2 = np.maximum(distance_sq_m2, distance_sq_m2.dtype.type(MIN_DISTANCE_M**2))
        out = np.log10(d2, out=d2)
        out *= out.dtype.type(5.0 * self.exponent)
        return out

    def slope_db_per_decade(self, distance_m: FloatArray) -> FloatArray:
        return np.full_like(np.asarray(distance_m, dtype=float), 10.0 * self.exponent)


def _log10(d: FloatArray) -> FloatArray:
    return np.log10(np.maximum(np.asarray(d, dtype=float), MIN_DISTANCE_M))


# ITU-R P.1238-11 Table 2, site-general coefficients (alpha, beta, gamma, sigma dB).
P1238_SITE_GENERAL: dict[tuple[str, bool], tuple[float, float, float, float]] = {
    ("office", True): (1.46, 34.62, 2.03, 3.76),
    ("office", False): (2.46, 29.53, 2.38, 5.04),
    ("corridor", True): (1.63, 28.12, 2.25, 4.07),
    ("corridor", False): (2.77, 29.27, 2.48, 7.63),
    ("industrial", True): (2.31, 24.52, 2.06, 2.69),
    ("industrial", False): (3.79, 21.01, 1.34, 9.05),
}


@dataclass(frozen=True)
class ItuP1238(PathLossModel):
    """ITU-R P.1238-11 site-general model (Table 2):

        PL(d, f) = 10 alpha log10(d) + beta + 10 gamma log10(f_GHz)   [dB], d in m

    Fitted on measurements in offices, corridors and industrial halls; valid roughly
    2-100 m (see the table). The excess over 1 m is 10 alpha log10 d. Choose it when the
    site matches one of those environments and no local fit exists.
    """

    environment: str = "industrial"
    los: bool = True
    frequency_ghz: float = 2.44
    name: str = "itu-p1238"

    def __post_init__(self) -> None:
        if (self.environment, self.los) not in P1238_SITE_GENERAL:
            raise ValueError(f"ITU-R P.1238 has no site-general row for {self.environment!r}")

    @property
    def coefficients(self) -> tuple[float, float, float, float]:
        return P1238_SITE_GENERAL[(self.environment, self.los)]

    @property
    def sigma_db(self) -> float:  # type: ignore[override]
        return self.coefficients[3]

    def path_loss_db(
        self, distance_m: FloatArray, frequency_ghz: float | None = None
    ) -> FloatArray:
        alpha, beta, gamma, _ = self.coefficients
        f = self.frequency_ghz if frequency_ghz is None else frequency_ghz
        return 10 * alpha * _log10(distance_m) + beta + 10 * gamma * np.log10(f)

    def excess_loss_db(self, distance_m: FloatArray) -> FloatArray:
        return 10 * self.coefficients[0] * _log10(distance_m)


# 3GPP TR 38.901 V17 Table 7.4.1-1 (d = 3-D distance in m, f in GHz) and shadowing sigma.
TR38901_SCENARIOS = ("inh-office", "inf-sl", "inf-dl", "inf-sh", "inf-dh")
TR38901_SIGMA_DB: dict[tuple[str, bool], float] = {
    ("inh-office", True): 3.0,
    ("inh-office", False): 8.03,
    ("inf-sl", True): 4.3,
    ("inf-sl", False): 5.7,
    ("inf-dl", True): 4.3,
    ("inf-dl", False): 7.2,
    ("inf-sh", True): 4.3,
    ("inf-sh", False): 5.9,
    ("inf-dh", True): 4.3,
    ("inf-dh", False): 4.0,
}
# Table 7.4.2-1 InF examples: sparse clutter (SL, SH) d_clutter 10 m, r 0.2; dense (DL,
# DH) d_clutter 2 m, r 0.6 (docs/references.md section 1).
TR38901_CLUTTER: dict[str, tuple[float, float]] = {
    "inf-sl": (10.0, 0.2),
    "inf-sh": (10.0, 0.2),
    "inf-dl": (2.0, 0.6),
    "inf-dh": (2.0, 0.6),
}


@dataclass(frozen=True)
class Tr38901(PathLossModel):
    """3GPP TR 38.901 indoor path loss (Table 7.4.1-1), f in GHz, d 3-D in m:

        InH-Office LoS  32.4 + 17.3 log d + 20 log f
        InH-Office NLoS max(LoS, 17.3 + 38.3 log d + 24.9 log f)
        InF LoS         31.84 + 21.5 log d + 19 log f
        InF-SL NLoS     max(LoS, 33 + 25.5 log d + 20 log f)
        InF-DL NLoS     max(LoS, 18.6 + 35.7 log d + 20 log f, InF-SL NLoS)
        InF-SH NLoS     max(LoS, 32.4 + 23 log d + 20 log f)
        InF-DH NLoS     max(LoS, 33.63 + 21.9 log d + 20 log f)

    ``condition`` "los" or "nlos" fixes the state of every link; "mixed" draws it per
    link from the LoS probability (Table 7.4.2-1): InF exp(-d/k), k = -d_clutter /
    ln(1 - r); InH-Mixed office 1 (d <= 1.2), exp(-(d-1.2)/4.7) (1.2 < d < 6.5),
    0.32 exp(-(d-6.5)/32.6) beyond. In "mixed" mode ``excess_loss_db`` is the LoS loss and
    :meth:`nlos_penalty_db` the extra loss where a link is NLoS. Choose InF for factory
    and warehouse halls (SL/SH sparse, DL/DH dense clutter; L/H: low/high receivers).
    """

    scenario: str = "inf-sl"
    condition: str = "mixed"
    frequency_ghz: float = 2.44
    d_clutter_m: float | None = None
    clutter_ratio: float | None = None
    name: str = "3gpp-38.901"

    def __post_init__(self) -> None:
        if self.scenario not in TR38901_SCENARIOS:
            raise ValueError(
                f"TR 38.901 scenario must be one of {TR38901_SCENARIOS}, got {self.scenario!r}"
            )
        if self.condition not in ("los", "nlos", "mixed"):
            raise ValueError(f"condition must be los, nlos or mixed, got {self.condition!r}")

    @property
    def sigma_db(self) -> float:  # type: ignore[override]
        return TR38901_SIGMA_DB[(self.scenario, self.condition == "los")]

    def los_loss_db(self, distance_m: FloatArray, frequency_ghz: float | None = None) -> FloatArray:
        lf = np.log10(self.frequency_ghz if frequency_ghz is None else frequency_ghz)
        ld = _log10(distance_m)
        if self.scenario == "inh-office":
            return 32.4 + 17.3 * ld + 20 * lf
        return 31.84 + 21.5 * ld + 19 * lf

    def nlos_loss_db(
        self, distance_m: FloatArray, frequency_ghz: float | None = None
    ) -> FloatArray:
        lf = np.log10(self.frequency_ghz if frequency_ghz is None else frequency_ghz)
        ld = _log10(distance_m)
        los = self.los_loss_db(distance_m, frequency_ghz)
        sl = np.maximum(los, 33.0 + 25.5 * ld + 20 * lf)
        match self.scenario:
            case "inh-office":
                return np.maximum(los, 17.3 + 38.3 * ld + 24.9 * lf)
            case "inf-sl":
                return sl
            case "inf-dl":
                return np.maximum(sl, 18.6 + 35.7 * ld + 20 * lf)
            case "inf-sh":
                return np.maximum(los, 32.4 + 23.0 * ld + 20 * lf)
            case _:
                return np.maximum(los, 33.63 + 21.9 * ld + 20 * lf)

    def path_loss_db(
        self, distance_m: FloatArray, frequency_ghz: float | None = None
    ) -> FloatArray:
        """Absolute loss of the fixed condition ("mixed" gives the LoS value)."""
        if self.condition == "nlos":
            return self.nlos_loss_db(distance_m, frequency_ghz)
        return self.los_loss_db(distance_m, frequency_ghz)

    def excess_loss_db(self, distance_m: FloatArray) -> FloatArray:
        one = np.ones(1)
        return np.asarray(self.path_loss_db(distance_m) - self.path_loss_db(one)[0], dtype=float)

    def nlos_penalty_db(self, distance_m: FloatArray) -> FloatArray:
        """NLoS minus LoS loss (>= 0): what a blocked link loses in "mixed" mode."""
        return np.asarray(self.nlos_loss_db(distance_m) - self.los_loss_db(distance_m), dtype=float)

    def los_probability(self, distance_2d_m: FloatArray) -> FloatArray:
        d = np.asarray(distance_2d_m, dtype=float)
        if self.condition != "mixed":
            return np.full(d.shape, 1.0 if self.condition == "los" else 0.0)
        if self.scenario == "inh-office":
            return np.where(
                d <= 1.2,
                1.0,
                np.where(d < 6.5, np.exp(-(d - 1.2) / 4.7), 0.32 * np.exp(-(d - 6.5) / 32.6)),
            )
        d_clutter, r = TR38901_CLUTTER[self.scenario]
        d_clutter = self.d_clutter_m if self.d_clutter_m is not None else d_clutter
        r = self.clutter_ratio if self.clutter_ratio is not None else r
        k = -d_clutter / np.log(1.0 - r)
        return np.exp(-d / k)


@dataclass(frozen=True)
class ItuP1238Classic(PathLossModel):
    """ITU-R P.1238 classic form: L = 20 log10(f_MHz) + N log10(d) + Lf(n) - 28 dB, with
    N = 28 residential, 30 office, 22 commercial; the excess over 1 m is N log10 d. The
    floor term Lf is left to the multi-wall obstacles (single-floor sites here)."""

    distance_power_coefficient: float = 22.0
    frequency_mhz: float = 2440.0
    sigma_db: float = 8.0
    name: str = "itu-p1238-classic"

    def path_loss_db(
        self, distance_m: FloatArray, frequency_mhz: float | None = None
    ) -> FloatArray:
        f = self.frequency_mhz if frequency_mhz is None else frequency_mhz
        return 20 * np.log10(f) + self.distance_power_coefficient * _log10(distance_m) - 28.0

    def excess_loss_db(self, distance_m: FloatArray) -> FloatArray:
        return self.distance_power_coefficient * _log10(distance_m)


def free_space_loss_db(distance_m: FloatArray, frequency_ghz: float) -> FloatArray:
    """Friis free-space loss 20 log10(4 pi d f / c), the L_FS term of COST 231."""
    return 20 * _log10(distance_m) + 20 * np.log10(frequency_ghz * 1e9) - 147.55


def cost231_floor_loss_db(
    n_floors: int | FloatArray, floor_loss_db: float = 18.3, b: float = 0.46
) -> FloatArray:
    """COST 231 multi-wall floor term n_f^((n_f+2)/(n_f+1) - b) L_f (Damosso 1999, ch. 4),
    L_f = 18.3 dB and b = 0.46 at about 1.8 GHz. Floors are not crossed in single-storey
    sites, but a planner may stack gateways on a mezzanine."""
    n = np.asarray(n_floors, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(n > 0, n ** ((n + 2) / (n + 1) - b) * floor_loss_db, 0.0)
    return np.asarray(out, dtype=float)


def effective_exponent(model: PathLossModel, near_m: float = 2.0, far_m: float = 30.0) -> float:
    """The log-distance exponent that matches ``model`` between two distances: what a
    localizer that assumes log-distance should use for any family."""
    loss = model.excess_loss_db(np.array([near_m, far_m]))
    return float((loss[1] - loss[0]) / (10 * np.log10(far_m / near_m)))
