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
    sites in the table after Anderson et al. 1995 (shared/references section 1).
    Defaults n = 2.0, sigma = 4 dB: a factory with mostly line of sight.
    """

    exponent: float = 2.0
    sigma_db: float = 4.0
    name: str = "log-distance"

    def excess_loss_db(self, distance_m: FloatArray) -> FloatArray:
        d = np.maximum(np.asarray(distance_m, dtype=float), MIN_DISTANCE_M)
        return 10.0 * self.exponent * np.log10(d)

    def slope_db_per_decade(self, distance_m: FloatArray) -> FloatArray:
        return np.full_like(np.asarray(distance_m, dtype=float), 10.0 * self.exponent)
