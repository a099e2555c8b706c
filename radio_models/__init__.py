"""Propagation and air-interface physics: vectorized numpy, no SimPy, no IO.

Every model here takes arrays of positions and returns arrays of dB values, so the
twin can evaluate thousands of tag-gateway links per call. docs/radio-models.md
describes each model, its parameters and its source.
"""

from radio_models.airinterface import aloha_survival, packet_air_time_s
from radio_models.calibration import Calibration, fit_log_distance
from radio_models.crb import crlb_map, crlb_rmse
from radio_models.environment import RadioEnvironment
from radio_models.geometry import Obstacles, crossing_loss_db
from radio_models.pathloss import (
    ItuP1238,
    ItuP1238Classic,
    LogDistance,
    PathLossModel,
    Tr38901,
    effective_exponent,
    three_d_distance,
)
from radio_models.shadowing import correlated_gaussian_field

__all__ = [
    "Calibration",
    "ItuP1238",
    "ItuP1238Classic",
    "LogDistance",
    "Obstacles",
    "PathLossModel",
    "RadioEnvironment",
    "Tr38901",
    "aloha_survival",
    "correlated_gaussian_field",
    "crlb_map",
    "crlb_rmse",
    "crossing_loss_db",
    "effective_exponent",
    "fit_log_distance",
    "packet_air_time_s",
    "three_d_distance",
]
