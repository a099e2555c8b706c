"""Adapters for gateways already on the market, so existing hardware can feed the engine.

* Theengs Gateway (``BTtoMQTT``): topic ``<base>/<gateway>/BTtoMQTT/<MAC>``, JSON with
  ``id`` (MAC), ``rssi`` and optionally ``servicedatauuid``/``servicedata``/
  ``manufacturerdata`` as hex; the raw data runs through our decoders so a MiBeacon or
  an iBeacon gets the same device id as from a TagTwin gateway.
* ESPresense: topic ``espresense/devices/<device id>/<room>``, JSON with ``id``,
  ``rssi`` and ``rssi@1m``; the room is the gateway id.

Neither format is signed or carries an event time: the arrival time stands in for it,
and the server accepts them only when the adapter is switched on and the gateway (room)
is one of the site's gateways.
"""

from __future__ import annotations

import json

from live_bridge.decoders import DecodeError, decode
from live_bridge.wire import Advert


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
    if not isinstance(v, int | float) or not -130 <= v <= 20:
        raise AdapterError("schema violation", f"{key} missing or outside -130..20 dBm")
    return float(v)


def parse_theengs(topic: str, body: bytes, now: float) -> tuple[str, list[Advert]]:
    parts = topic.split("/")
    if len(parts) != 4 or parts[2] != "BTtoMQTT":
        raise AdapterError("unexpected topic", topic[:120])
    data = _json_object(body)
    mac = data.get("id")
    if not isinstance(mac, str) or not mac:
        raise AdapterError("schema violation", "id missing")
    rssi = _rssi(data)
    try:
        svc: dict[str, bytes] = {}
        if isinstance(data.get("servicedata"), str) and isinstance(
            data.get("servicedatauuid"), str
        ):
            svc[str(data["servicedatauuid"]).lower().removeprefix("0x")] = bytes.fromhex(
                str(data["servicedata"])
            )
        mfr: dict[int, bytes] = {}
        if isinstance(data.get("manufacturerdata"), str):
            raw = bytes.fromhex(str(data["manufacturerdata"]))
            if len(raw) >= 2:
                mfr[int.from_bytes(raw[:2], "little")] = raw[2:]
        d = decode(mac, mfr, svc)
    except (ValueError, DecodeError) as exc:
        raise AdapterError("undecodable advertisement", str(exc)[:200]) from None
    batt = data.get("batt")
    bat = (
        d.battery
        if d.battery is not None
        else (int(batt) if isinstance(batt, int | float) and 0 <= batt <= 100 else None)
    )
    return parts[1], [
        Advert(
            t=now,
            dev=d.dev,
            rssi=rssi,
            fmt="theengs",
            bat=bat,
            mot=d.motion,
            seq=d.seq,
            tx=d.tx_power,
        )
    ]


def parse_espresense(topic: str, body: bytes, now: float) -> tuple[str, list[Advert]]:
    parts = topic.split("/")
    if len(parts) != 4 or parts[:2] != ["espresense", "devices"] or not parts[3]:
        raise AdapterError("unexpected topic", topic[:120])
    data = _json_object(body)
    dev = data.get("id", parts[2])
    if not isinstance(dev, str) or not dev:
        raise AdapterError("schema violation", "id missing")
    tx = data.get("rssi@1m")
    tx_power = float(tx) if isinstance(tx, int | float) and -100 <= tx <= 20 else None
    return parts[3], [Advert(t=now, dev=dev[:128], rssi=_rssi(data), fmt="espresense", tx=tx_power)]
