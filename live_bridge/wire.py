"""The wire format between gateways and the server: versioned pydantic models, signed.

A gateway batch travels as one MQTT message whose body is valid JSON with a fixed
prefix, so that the HMAC covers the *exact* payload bytes (no canonicalisation)::

    {"sig":"<64 hex chars>","batch":<payload JSON>}

``sig`` is HMAC-SHA256 over the payload bytes with the gateway's key (RFC 2104). The
server slices the payload out at fixed offsets, checks the signature, and only then
parses it. The JSON Schema in docs/wire-format.md is generated from these models.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Literal, Protocol, TypeVar, cast

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from live_bridge.decoders import EXTRA_FIELDS, MIBEACON_OBJECTS, Decoded

WIRE_VERSION: Literal[1] = 1
TOPIC_ROOT = "tagtwin/v1"

SIG_PREFIX = b'{"sig":"'
SIG_HEX_LEN = 64
BATCH_INFIX = b'","batch":'
PAYLOAD_START = len(SIG_PREFIX) + SIG_HEX_LEN + len(BATCH_INFIX)
REPLAY_WINDOW = 4096  # batch sequence numbers remembered per gateway by the server

Format = Literal[
    "mibeacon",
    "ibeacon",
    "eddystone-uid",
    "eddystone-tlm",
    "eddystone-eid",
    "eddystone-url",
    "findhub",
    "findmy",
    "raw",
    "twin",
    "theengs",
    "espresense",
]


def batch_topic(gateway: str) -> str:
    return f"{TOPIC_ROOT}/gw/{gateway}/batch"


def status_topic(gateway: str) -> str:
    return f"{TOPIC_ROOT}/gw/{gateway}/status"


POSITIONS_TOPIC = f"{TOPIC_ROOT}/positions"
EVENTS_TOPIC = f"{TOPIC_ROOT}/events"
DEADLETTER_TOPIC = f"{TOPIC_ROOT}/deadletter"
SERVER_STATUS_TOPIC = f"{TOPIC_ROOT}/server/status"
BATCH_SUBSCRIPTION = f"{TOPIC_ROOT}/gw/+/batch"


# Bounds every numeric field has (issue 12): no NaN/Infinity, no string-to-number coercion,
# nothing a numpy column cannot hold. Times are Unix seconds from 2001 to 2286.
T_MIN, T_MAX = 1e9, 1e10
MAX_SEQ = 2**53 - 1  # exact in a float and in JSON everywhere


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _HasGateway(Protocol):
    gw: str


SignedModel = TypeVar("SignedModel", bound=WireModel)


class Advert(WireModel):
    """One advertisement heard by the gateway: a sighting in the engine's contract."""

    t: float = Field(ge=T_MIN, le=T_MAX, description="event time, Unix seconds, when the gateway heard it")
    dev: str = Field(
        min_length=1, max_length=128, description="device id (salted hash in privacy mode)"
    )
    rssi: float = Field(ge=-130, le=20, description="dBm")
    ch: int = Field(
        default=0, ge=0, le=39, description="advertising channel 37/38/39, 0 if the receiver does not say"
    )
    fmt: Format = Field(default="raw", description="decoder that produced this record")
    bat: int | None = Field(default=None, ge=0, le=100, description="battery percent, if carried")
    mot: int | None = Field(default=None, ge=0, le=1, description="1 moving, 0 still, if carried")
    seq: int | None = Field(
        default=None, ge=0, le=2**32 - 1, description="frame counter of the advertisement, if carried"
    )
    tx: float | None = Field(
        default=None, ge=-100, le=20, description="calibrated RSSI at 1 m (iBeacon, Eddystone)"
    )
    extra: dict[str, float | int | str] | None = Field(
        default=None,
        description="decoder fields that have no sighting column (temperature, raw hex ...)",
    )


def advert_from(
    d: Decoded, *, t: float, rssi: float, dev: str | None = None, fmt: str | None = None, bat: int | None = None
) -> Advert:
    """The wire record of a decoded advertisement; ``dev``, ``fmt`` and ``bat`` override
    the decoder's (privacy hash, adapter name, a battery the source reported itself).
    Raises pydantic's ValidationError for values the wire refuses (RSSI 127 ...)."""
    return Advert.model_validate(
        {
            "t": t,
            "dev": d.dev if dev is None else dev,
            "rssi": rssi,
            "fmt": d.fmt if fmt is None else fmt,
            "bat": d.battery if bat is None else bat,
            "mot": d.motion,
            "seq": d.seq,
            "tx": d.tx_power,
            "extra": d.extra or None,
        }
    )


class Batch(WireModel):
    """What one gateway sends at a time: adverts plus the fields replay protection needs."""

    v: Literal[1] = Field(default=WIRE_VERSION, description="wire format version")
    gw: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    seq: int = Field(ge=0, le=MAX_SEQ, description="batch sequence number, strictly increasing per gateway")
    ep: int = Field(
        default=0, ge=0, le=MAX_SEQ,
        description="boot epoch: chosen when the gateway's spool is created, so a re-provisioned "
        "gateway whose seq restarts at 0 is told apart from a replay",
    )
    sent: float = Field(ge=T_MIN, le=T_MAX, description="send time, Unix seconds")
    ads: list[Advert] = Field(max_length=100_000)


class GatewayStatus(WireModel):
    """Retained on the status topic: heartbeats while alive, the last will when not."""

    v: Literal[1] = WIRE_VERSION
    gw: str
    state: Literal["online", "offline"]
    t: float | None = None
    counters: dict[str, int] = Field(default_factory=dict)


class Position(WireModel):
    t: float = Field(description="end of the window, Unix seconds")
    dev: str
    x: float
    y: float
    r90: float = Field(description="radius holding the truth 90 % of the time, metres")
    zone: str | None
    n_gw: int
    method: Literal["wls", "centroid", "strongest", "knn", "radio-map", "kalman", "hmm", "particle"] = Field(
        description="what made this position: the estimator, or the tracker that smoothed it "
        "(engine.localize.METHOD_NAMES); centroid and strongest are fallbacks for fixes heard by too few gateways"
    )
    bat: int | None = None
    mot: int | None = None
    rev: int = Field(
        default=0, ge=0, description="revision of this (device, window): a higher one replaces a lower "
        "(the backbone recomputes windows when late data arrives)",
    )


class PositionBatch(WireModel):
    """Published on ``tagtwin/v1/positions`` each time the engine closes windows."""

    v: Literal[1] = WIRE_VERSION
    t: float = Field(description="server publish time, Unix seconds")
    positions: list[Position]


class Event(WireModel):
    v: Literal[1] = WIRE_VERSION
    t: float
    kind: str
    dev: str | None = None
    detail: dict[str, float | int | str | None] = Field(default_factory=dict)


class DeadLetter(WireModel):
    """A message the server refused: where it came from, why, and its first bytes."""

    v: Literal[1] = WIRE_VERSION
    t: float
    topic: str
    reason: str
    detail: str = ""
    payload_head: str = Field(description="first 200 bytes of the message, latin-1")


class WireError(ValueError):
    """A message that cannot be accepted; ``reason`` is the short counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def sign(payload: bytes | memoryview, key: bytes) -> str:
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def encode_batch(batch: Batch, key: bytes) -> bytes:
    """Serialise and sign a batch into the message body."""
    payload = batch.model_dump_json(exclude_none=True).encode()
    return encode_payload(payload, key)


def encode_payload(payload: bytes, key: bytes) -> bytes:
    return SIG_PREFIX + sign(payload, key).encode() + BATCH_INFIX + payload + b"}"


def split_envelope(body: bytes) -> tuple[str, bytes]:
    """(signature hex, payload bytes) of a message body, or WireError('malformed envelope')."""
    if (
        len(body) <= PAYLOAD_START + 1
        or not body.startswith(SIG_PREFIX)
        or body[len(SIG_PREFIX) + SIG_HEX_LEN : PAYLOAD_START] != BATCH_INFIX
        or not body.endswith(b"}")
    ):
        raise WireError("malformed envelope", 'expected {"sig":"<hex>","batch":{...}}')
    return body[len(SIG_PREFIX) : len(SIG_PREFIX) + SIG_HEX_LEN].decode("latin-1"), body[
        PAYLOAD_START:-1
    ]


def peek_gateway(payload: bytes) -> str:
    """The ``gw`` field of an unverified payload, to choose the key (parses JSON only, with
    pydantic-core's depth limit: a deeply nested payload is an error, not a RecursionError)."""
    try:
        data = pydantic_core.from_json(payload)
    except ValueError as exc:
        raise WireError("malformed json", str(exc)[:200]) from None
    gw = data.get("gw") if isinstance(data, dict) else None
    if not isinstance(gw, str):
        raise WireError("schema violation", "batch.gw missing or not a string")
    return gw


def verify_and_parse(body: bytes, keys: dict[str, bytes]) -> Batch:
    """Check the envelope, the gateway, the signature and the schema, in that order."""
    sig, payload = split_envelope(body)
    gw = peek_gateway(payload)
    key = keys.get(gw)
    if key is None:
        raise WireError("unknown gateway", gw[:64])
    return check_and_parse(sig, payload, gw, key)


def check_and_parse(sig: str, payload: bytes, gateway: str, key: bytes) -> Batch:
    """Constant-time HMAC check, then the schema (pydantic-core: depth-limited, strict, bounded)."""
    # bytes, not str: compare_digest refuses non-ASCII str, and the envelope is untrusted
    if not hmac.compare_digest(sign(payload, key).encode(), sig.encode("latin-1")):
        raise WireError("bad signature", gateway[:64])
    try:
        return Batch.model_validate_json(payload, strict=True)  # no string-to-number coercion
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise WireError("schema violation", f"{where}: {first['msg']}"[:300]) from None


def verified_payload(body: bytes, gateway: str, keys: tuple[bytes, ...] | bytes) -> memoryview:
    """The signed payload of an envelope whose HMAC one of ``keys`` verifies, checked over
    the raw bytes in place: nothing is parsed or copied before (a forged 13 MB batch costs
    one SHA-256 pass). During a key rotation a gateway has two keys; either verifies.
    Shared by every wire version's verifier (verify_signed, wire_columns.verify_columns)."""
    if len(body) <= PAYLOAD_START + 1 or not body.endswith(b"}"):
        raise WireError("malformed envelope", 'expected {"sig":"<hex>","batch":{...}}')
    sig, _ = split_envelope(body[: PAYLOAD_START + 1] + b"}")  # the prefix's shape only
    payload = memoryview(body)[PAYLOAD_START:-1]
    expected = sig.encode("latin-1")  # bytes: compare_digest refuses non-ASCII str
    ring = (keys,) if isinstance(keys, bytes) else keys
    if not any(hmac.compare_digest(sign(payload, k).encode(), expected) for k in ring):
        raise WireError("bad signature", gateway[:64])
    return payload


def verify_signed(body: bytes, gateway: str, keys: tuple[bytes, ...] | bytes) -> Batch:
    """The cheap check (the backbone's and the MQTT server's): the gateway comes from the
    subject or topic; :func:`verified_payload` first, then the schema (strict, bounded),
    and the signed ``gw`` must be the subject's."""
    return parse_verified(Batch, verified_payload(body, gateway, keys), gateway)


def parse_verified(model: type[SignedModel], payload: bytes | memoryview, gateway: str) -> SignedModel:
    """A verified payload into its wire model: strict (no string-to-number coercion),
    bounded, and signed by the gateway the subject names. One schema error, one line."""
    try:
        batch = model.model_validate_json(bytes(payload), strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise WireError("schema violation", f"{where}: {first['msg']}"[:300]) from None
    signed_gw = cast("_HasGateway", batch).gw  # Batch and ColumnBatch both sign their gateway
    if signed_gw != gateway:
        raise WireError("topic does not match signed gateway", f"{gateway[:64]} vs {signed_gw}")
    return batch


def json_schemas() -> dict[str, dict[str, object]]:
    """JSON Schema of every message, generated from the models (docs/wire-format.md)."""
    return {
        m.__name__: m.model_json_schema()
        for m in (Batch, GatewayStatus, PositionBatch, Event, DeadLetter)
    }


TOPIC_ROWS = [
    ("topic", "direction", "QoS", "retained", "body"),
    ("---", "---", "---", "---", "---"),
    (
        f"`{TOPIC_ROOT}/gw/<gateway>/batch`",
        "gateway -> server",
        "1",
        "no",
        "signed `Batch` envelope",
    ),
    (
        f"`{TOPIC_ROOT}/gw/<gateway>/status`",
        "gateway -> all",
        "1",
        "yes",
        "`GatewayStatus` (heartbeats; last will `offline`)",
    ),
    (
        f"`{POSITIONS_TOPIC}`",
        "server -> all",
        "1",
        "no",
        "`PositionBatch`, each time windows close",
    ),
    (f"`{EVENTS_TOPIC}`", "server -> all", "1", "no", "`Event` (from the server's event sink)"),
    (
        f"`{DEADLETTER_TOPIC}`",
        "server -> all",
        "1",
        "no",
        "`DeadLetter`: a refused message and why",
    ),
    (
        f"`{SERVER_STATUS_TOPIC}`",
        "server -> all",
        "1",
        "yes",
        "counters: accepted, rejected by reason",
    ),
    (
        "`espresense/devices/<id>/<room>`",
        "ESPresense -> server",
        "any",
        "-",
        "ESPresense JSON (`--adapters espresense`)",
    ),
    (
        "`<base>/<gateway>/BTtoMQTT/<MAC>`",
        "Theengs -> server",
        "any",
        "-",
        "Theengs JSON (`--adapters theengs`)",
    ),
]
TOPIC_TABLE = "\n".join("| " + " | ".join(row) + " |" for row in TOPIC_ROWS)

DEVICE_ID_ROWS = [
    ("tag", "TagTwin gateway and Theengs", "ESPresense id", "`dev`"),
    ("---", "---", "---", "---"),
    ("MiBeacon (Xiaomi sensors)", "MAC in the frame", "`flora:a4c1380283f4`, `miTherm:...`", "`A4:C1:38:02:83:F4`"),
    ("any MAC-identified device", "its address", "`a4c1380283f4`, `known:...`, `tile:...`", "`A4:C1:38:02:83:F4`"),
    ("iBeacon", "UUID, major, minor", "`iBeacon:<uuid>-1-2`", "`ibeacon:<uuid>:1:2`"),
    ("Eddystone-UID", "namespace, instance", "`eddy:<ns>-<instance>`", "`eddystone:<ns>:<instance>`"),
    ("Eddystone-EID", "the 8-byte EID", "-", "`eddystone-eid:<hex>`"),
    ("Find Hub / Find My tag, key configured", "resolved EID or key", "-", "the site's tag id"),
    ("Find Hub / Find My tag, no key", "-", "`apple:findmy`", "`anon:findhub`, `anon:findmy`"),
]
DEVICE_ID_TABLE = "\n".join("| " + " | ".join(row) + " |" for row in DEVICE_ID_ROWS)
EXTRA_TABLE = "| name | meaning |\n| --- | --- |\n" + "\n".join(
    f"| `{name}` | {what} |" for name, what in EXTRA_FIELDS.items()
)
OBJECT_LIST = ", ".join(f"0x{oid:04X} {name}" for oid, (name, _) in sorted(MIBEACON_OBJECTS.items()))

WIRE_DOC_INTRO = f"""# Wire format (version {WIRE_VERSION})

Generated from `live_bridge/wire.py` by `tagtwin wire-schema --markdown --out docs/wire-format.md`;
do not edit by hand (a test fails when this file and the code disagree).

## Topics

{TOPIC_TABLE}

## The signed envelope

A batch message body is JSON with a fixed prefix, so the signature covers the exact
payload bytes and no canonical form is needed:

```
{{"sig":"<64 lower-case hex: HMAC-SHA256(key, payload)>","batch":<payload>}}
```

The server slices `<payload>` at fixed offsets ({PAYLOAD_START} bytes in, one byte before
the end), reads only `gw` to choose the key, checks the HMAC in constant time, and
only then validates the payload against the `Batch` schema. Then it checks that the
topic's gateway is the signed one and that `seq` has not been seen: a sliding window
of {REPLAY_WINDOW} sequence numbers per gateway (reordering inside it is accepted; a
repeat, or anything older, is a replay). Gateways persist `seq` in their spool, so a
restart never reuses one. The replay window lives in the server's memory: a restarted
server starts with an empty one, so a captured batch re-published then would be
accepted once. Batches carry no expiry on purpose (a spool may deliver hours-old
batches after an outage); restrict who may publish on `{TOPIC_ROOT}/gw/+/batch` with
broker ACLs (docs/live-bridge.md).

On the NATS backbone (docs/reliability.md) the gateway id comes from the subject
(`tagtwin.v1.<site>.raw.<gateway>`), so the worker checks the HMAC over the raw payload
before it parses a byte; repeats are dropped by (gateway, `ep`, `seq`), where `ep` is the
boot epoch a gateway's spool chose when it was created (a re-provisioned gateway starts a
new epoch at seq 0). Every number has bounds and JSON is parsed strictly (no string to
number coercion, no NaN or Infinity) with pydantic-core's nesting limit.

Dead-letter reasons: `malformed envelope`, `malformed json`, `schema violation`,
`unknown gateway`, `bad signature`, `topic does not match signed gateway`,
`replayed batch sequence`, `gateway not in site plan`, `unexpected topic`,
`undecodable advertisement` (adapters).

## Device ids: one per physical tag, whatever the source

The same tag gets the same `dev` from a TagTwin gateway, a Theengs gateway (its raw
advertisement runs through the same decoders) and ESPresense (its ids are translated
by `live_bridge.adapters.canonical_id`):

{DEVICE_ID_TABLE}

ESPresense ids that name a fingerprint rather than a tag (`sd:`, `md:`, `ad:`,
`name:`, `apple:xxxx:n`, `msft:cdp:`, aliases) are passed through unchanged; a site
that tracks such a device names it by that id in its registry. ESPresense's `batt`
becomes `bat`; its `temp`, `rh` and `mV` become `extra.temperature_c`,
`extra.humidity_pct` and `extra.battery_mv`. With privacy mode on, a gateway sends
the salted hash of the id above (`h:` + 32 hex), never for `anon:` ids.

## What `extra` carries

Decoder readings with no sighting column, each name carrying its unit. Only the names
below are produced (a test checks every name a decoder emits against this list):

{EXTRA_TABLE}

MiBeacon objects read (object id: what; scales as xiaomi-ble reads them):
{OBJECT_LIST}.
Any other object id is kept as `obj_XXXX` (hex value) and counted in `objects_unread`.

## Sizes

An advert is about 100-130 bytes of JSON (a MiBeacon advert with battery and frame
counter: 127 bytes); a 200-advert batch about 25 kB. The gateway benchmark forwards
about 19,000 adverts/s through mosquitto in this format (docs/live-bridge.md), four
times the 5,000/s target, and the server's limit is the engine, not parsing, so no
binary encoding is defined in this version.

## JSON Schemas
"""


def wire_format_markdown() -> str:
    """docs/wire-format.md: the fixed text above plus every schema, generated."""
    parts = [WIRE_DOC_INTRO]
    for name, schema in json_schemas().items():
        parts.append(
            f"\n### {name}\n\n```json\n{json.dumps(schema, indent=2, sort_keys=True)}\n```\n"
        )
    return "".join(parts)
