"""Wire format version 2: a gateway batch as columns, for high-rate senders.

Version 1 (live_bridge/wire.py) carries one JSON object per advert, which a consumer
turns into one Python object per advert before it has columns. Version 2 carries the
same fields as one JSON array per field, so a consumer validates lists of numbers and
hands them to numpy. Same envelope (``{"sig":"<hmac-sha256 hex>","batch":{...}}``), same
HMAC over the payload bytes, same bounds per field; a value the advert did not carry is
-1 (battery, motion, frame counter). The worker accepts both; version 1 stays the
default (gateways, twin-publish), and ``tagtwin loadtest --wire 2`` sends version 2.

    {"v":2,"gw":"gw-001","seq":7,"ep":1,"sent":1790000000.25,
     "t":[1790000000.0012,...],"dev":["pallet-00001",...],"rssi":[-71.5,...],
     "ch":[37,...],"bat":[86,...],"mot":[0,...],"aseq":[12,...]}
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from live_bridge.wire import (
    MAX_SEQ,
    T_MAX,
    T_MIN,
    WireModel,
    encode_payload,
    parse_verified,
    split_envelope,
    verified_payload,
)

COLUMNS_VERSION: Literal[2] = 2
COLUMNS_PREFIX = b'{"v":2,'
MAX_ADS = 100_000


class ColumnBatch(WireModel):
    """One gateway's adverts as columns (every list the same length)."""

    v: Literal[2] = Field(default=COLUMNS_VERSION, description="wire format version")
    gw: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    seq: int = Field(ge=0, le=MAX_SEQ, description="batch sequence number, strictly increasing per gateway")
    ep: int = Field(default=0, ge=0, le=MAX_SEQ, description="boot epoch")
    sent: float = Field(ge=T_MIN, le=T_MAX, description="send time, Unix seconds")
    t: list[Annotated[float, Field(ge=T_MIN, le=T_MAX)]] = Field(max_length=MAX_ADS, description="event times")
    dev: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(max_length=MAX_ADS)
    rssi: list[Annotated[float, Field(ge=-130, le=20)]] = Field(max_length=MAX_ADS)
    ch: list[Annotated[int, Field(ge=0, le=39)]] = Field(max_length=MAX_ADS)
    bat: list[Annotated[int, Field(ge=-1, le=100)]] = Field(max_length=MAX_ADS, description="-1: not carried")
    mot: list[Annotated[int, Field(ge=-1, le=1)]] = Field(max_length=MAX_ADS, description="-1: not carried")
    aseq: list[Annotated[int, Field(ge=-1, le=2**32 - 1)]] = Field(
        max_length=MAX_ADS, description="frame counter of each advert, -1: not carried")

    @model_validator(mode="after")
    def _same_length(self) -> ColumnBatch:
        n = len(self.t)
        for name in ("dev", "rssi", "ch", "bat", "mot", "aseq"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"column {name} has {len(getattr(self, name))} values, t has {n}")
        return self


def is_columns(body: bytes) -> bool:
    """Whether a signed body carries a version-2 payload (decided on bytes, before parsing)."""
    sig, payload = split_envelope(body)
    del sig
    return payload.startswith(COLUMNS_PREFIX)


def encode_columns(gw: str, seq: int, epoch: int, sent: float, t: np.ndarray, devices: list[str],
                   rssi: np.ndarray, channel: np.ndarray, battery: np.ndarray, motion: np.ndarray,
                   aseq: np.ndarray, key: bytes) -> bytes:
    """A signed version-2 batch from columns (numbers as JSON by ``json.dumps`` of lists)."""
    import json

    body = {"v": COLUMNS_VERSION, "gw": gw, "seq": seq, "ep": epoch, "sent": round(float(sent), 4),
            "t": np.round(np.asarray(t, float), 4).tolist(), "dev": list(devices),
            "rssi": np.round(np.asarray(rssi, float), 2).tolist(), "ch": np.asarray(channel, int).tolist(),
            "bat": np.asarray(battery, int).tolist(), "mot": np.asarray(motion, int).tolist(),
            "aseq": np.asarray(aseq, np.int64).tolist()}
    return encode_payload(json.dumps(body, separators=(",", ":")).encode(), key)


def verify_columns(body: bytes, gateway: str, keys: tuple[bytes, ...] | bytes) -> ColumnBatch:
    """HMAC over the raw payload first (wire.verified_payload: in place, the key ring, bytes
    compare), then the strict bounded schema (as verify_signed)."""
    return parse_verified(ColumnBatch, verified_payload(body, gateway, keys), gateway)
