"""Adapters for gateways already on the market, so existing hardware can feed the engine.

* Theengs Gateway (``BTtoMQTT``): topic ``<base>/<gateway>/BTtoMQTT/<MAC>``, JSON with
  ``id`` (MAC), ``rssi`` and optionally ``servicedatauuid``/``servicedata``/
  ``manufacturerdata`` as hex; the raw data runs through our decoders so a MiBeacon or
  an iBeacon gets the same device id as from a TagTwin gateway.
* ESPresense: topic ``espresense/devices/<device id>/<room>``, JSON with ``id``,
  ``mac``, ``rssi``, ``rssi@1m`` and, when the firmware read them, ``batt``, ``temp``,
  ``rh``, ``mV``; the room is the gateway id.

One physical tag has one device id whatever the source (:func:`canonical_id`,
docs/wire-format.md): a MAC-identified device is its upper-case colon MAC, an iBeacon
``ibeacon:<uuid>:<major>:<minor>``, an Eddystone-UID ``eddystone:<namespace>:<instance>``,
exactly as the TagTwin gateway's decoders name them. ESPresense ids are translated
(``iBeacon:<uuid>-1-2``, ``eddy:...``, ``flora:<mac>``, ``miTherm:<mac>``, a bare MAC ...);
Theengs sends the raw advertisement, which goes through the same decoders.

Neither format is signed or carries an event time: the arrival time stands in for it,
and the server accepts them only when the adapter is switched on and the gateway (room)
is one of the site's gateways.
"""

from __future__ import annotations

import json
import math
import re

from pydantic import ValidationError

from live_bridge.decoders import ANON_PREFIX, Decoded, decode
from live_bridge.wire import Advert, Format, advert_from

MAX_ID_LEN = 128
_HEX12 = re.compile(r"^[0-9a-fA-F]{12}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
# ESPresense ids that are "<kind>:<12 hex MAC>" (BleFingerprint.cpp): the MAC is the tag.
ESPRESENSE_MAC_KINDS = frozenset(
    {
        "known",
        "tile",
        "sonos",
        "itag",
        "trackr",
        "tractive",
        "vanmoof",
        "meater",
        "nut",
        "flora",
        "miTherm",
        "garmin",
        "iTrack",
        "mifit",
        "samsung",
    }
)


class AdapterError(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _json_object(body: bytes) -> dict[str, object]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise AdapterError("malformed json", str(exc)[:200]) from None
    if not isinstance(data, dict):
        raise AdapterError("schema violation", "expected a JSON object")
    return data


def _rssi(data: dict[str, object], key: str = "rssi") -> float:
    v = data.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not -130 <= v <= 20:
        raise AdapterError("schema violation", f"{key} missing or outside -130..20 dBm")
    return float(v)


def _mac(hex12: str) -> str:
    return ":".join(hex12[i : i + 2] for i in range(0, 12, 2)).upper()


def _uuid(text: str) -> str | None:
    if not _UUID.match(text):
        return None
    h = text.replace("-", "").lower()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def canonical_id(source_id: str) -> str:
    """The device id TagTwin's own gateway would give the tag another gateway calls
    ``source_id`` (an ESPresense id; a MAC in any spelling).

    Ids that name no tag by a stable identity (ESPresense fingerprints ``sd:``, ``md:``,
    ``name:``, aliases) stay as they are; the site's registry names them.
    """
    sid = source_id.strip()
    bare = sid.replace(":", "").replace("-", "")
    if _HEX12.match(bare) and len(sid) in (12, 17):
        return _mac(bare)
    kind, _, rest = sid.partition(":")
    if kind == "iBeacon":
        # "iBeacon:<uuid>-<major>-<minor>"
        head, _, minor = rest.rpartition("-")
        uuid_text, _, major = head.rpartition("-")
        uuid = _uuid(uuid_text)
        if uuid and major.isdigit() and minor.isdigit():
            return f"ibeacon:{uuid}:{int(major)}:{int(minor)}"
    elif kind == "eddy":
        ns, _, inst = rest.partition("-")
        if len(ns) == 22:  # firmware prints namespace byte 4 twice (BleFingerprint.cpp)
            ns = ns[:10] + ns[12:]
        if len(ns) == 20 and len(inst) == 12:
            return f"eddystone:{ns.lower()}:{inst.lower()}"
    elif kind == "apple" and rest == "findmy":
        return f"{ANON_PREFIX}findmy"
    elif kind in ESPRESENSE_MAC_KINDS and _HEX12.match(rest):
        return _mac(rest)
    return sid


def _theengs_decoded_only(mac: str, data: dict[str, object]) -> Decoded:
    """Theengs Gateway set to publish decoded fields only: identity and readings from those."""
    d = Decoded("raw", canonical_id(mac))
    uuid = _uuid(str(data.get("uuid", "")))
    major, minor = data.get("major"), data.get("minor")
    if data.get("model_id") == "IBEACON" and uuid and isinstance(major, int) and isinstance(minor, int):
        d = Decoded("ibeacon", f"ibeacon:{uuid}:{major}:{minor}")
        tx = data.get("txpower")
        if isinstance(tx, int | float) and -100 <= tx <= 20:
            d.tx_power = float(tx)
    for key, name in (("tempc", "temperature_c"), ("hum", "humidity_pct"), ("lux", "illuminance_lux")):
        v = data.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            d.extra[name] = float(v)
    if isinstance(data.get("motion"), bool):
        d.motion = int(bool(data["motion"]))
    return d


TX_MIN_DBM, TX_MAX_DBM = -100.0, 20.0  # Advert.tx's bounds


def _advert(now: float, d: Decoded, rssi: float, fmt: Format, bat: int | None) -> Advert:
    """The wire record, or AdapterError naming the field (never a pydantic error, which
    would stop the server). A 1 m power outside what a radio can send is dropped, not the
    sighting: real BM2 battery monitors and NRF51822 beacons announce iBeacon measured
    power above +20 dBm; the engine's default power takes its place."""
    if d.tx_power is not None and not TX_MIN_DBM <= d.tx_power <= TX_MAX_DBM:
        d.tx_power = None
    try:
        return advert_from(d, t=now, rssi=rssi, fmt=fmt, bat=bat)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise AdapterError("schema violation", f"{where}: {first['msg']}"[:200]) from None


def parse_theengs(topic: str, body: bytes, now: float) -> tuple[str, list[Advert]]:
    parts = topic.split("/")
    if len(parts) != 4 or parts[2] != "BTtoMQTT":
        raise AdapterError("unexpected topic", topic[:120])
    data = _json_object(body)
    mac = data.get("id")
    if not isinstance(mac, str) or not mac or len(mac) > MAX_ID_LEN:
        raise AdapterError("schema violation", f"id missing or longer than {MAX_ID_LEN}")
    rssi = _rssi(data)
    has_raw = any(isinstance(data.get(k), str) for k in ("servicedata", "manufacturerdata"))
    try:
        svc: dict[str, bytes] = {}
        if isinstance(data.get("servicedata"), str) and isinstance(data.get("servicedatauuid"), str):
            svc[str(data["servicedatauuid"]).lower().removeprefix("0x")] = bytes.fromhex(str(data["servicedata"]))
        mfr: dict[int, bytes] = {}
        if isinstance(data.get("manufacturerdata"), str):
            raw = bytes.fromhex(str(data["manufacturerdata"]))
            if len(raw) >= 2:
                mfr[int.from_bytes(raw[:2], "little")] = raw[2:]
        d = decode(canonical_id(mac), mfr, svc) if has_raw else _theengs_decoded_only(mac, data)
    except ValueError as exc:
        raise AdapterError("undecodable advertisement", str(exc)[:200]) from None
    batt = data.get("batt")
    bat = (
        d.battery
        if d.battery is not None
        else (int(batt) if isinstance(batt, int | float) and 0 <= batt <= 100 else None)
    )
    return parts[1], [_advert(now, d, rssi, "theengs", bat)]


def parse_espresense(topic: str, body: bytes, now: float) -> tuple[str, list[Advert]]:
    parts = topic.split("/")
    if len(parts) != 4 or parts[:2] != ["espresense", "devices"] or not parts[3]:
        raise AdapterError("unexpected topic", topic[:120])
    data = _json_object(body)
    dev = data.get("id", parts[2])
    if not isinstance(dev, str) or not dev or len(dev) > MAX_ID_LEN:
        raise AdapterError("schema violation", f"id missing or longer than {MAX_ID_LEN}")
    rssi = _rssi(data)
    d = Decoded("raw", canonical_id(dev))
    tx = data.get("rssi@1m")
    d.tx_power = float(tx) if isinstance(tx, int | float) and -100 <= tx <= 20 else None
    for key, name, scale in (("temp", "temperature_c", 1), ("rh", "humidity_pct", 1), ("mV", "battery_mv", 1)):
        v = data.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            d.extra[name] = float(v) * scale
    batt = data.get("batt")  # 0..100; ESPresense omits it (0xFF internally) when unknown
    bat = int(batt) if isinstance(batt, int | float) and 0 <= batt <= 100 else None
    return parts[3], [_advert(now, d, rssi, "espresense", bat)]
