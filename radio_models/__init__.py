"""Propagation and air-interface physics: vectorized numpy, no SimPy, no IO.

Every model here takes arrays of positions and returns arrays of dB values, so the
twin can evaluate thousands of tag-gateway links per call.
"""

from radio_models.environment import RadioEnvironment
from radio_models.geometry import Obstacles, crossing_loss_db
from radio_models.pathloss import LogDistance, PathLossModel, three_d_distance
from radio_models.shadowing import correlated_gaussian_field

__all__ = [
    "LogDistance",
    "Obstacles",
    "PathLossModel",
    "RadioEnvironment",
    "correlated_gaussian_field",
    "crossing_loss_db",
    "three_d_distance",
]
