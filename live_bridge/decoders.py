"""Advertisement decoders: bytes a scanner saw -> one :class:`Decoded` record.

Chosen by what the advertisement carries (docs/references.md section 4):

* Xiaomi MiBeacon, service data 0xFE95: frame control (LE u16; bit 3 encrypted, 4 MAC
  included, 5 capability included, 6 object included, bits 12-15 version), product id,
  frame counter, reversed MAC, capability, objects ``[type u16 LE][len u8][data]``.
  v4/v5 encryption is AES-CCM (RFC 3610) with the 16-byte bindkey, a 12-byte nonce
  (reversed MAC + product id + frame counter + 3-byte extended counter), associated
  data ``0x11`` and a 4-byte MIC, as the xiaomi-ble package and ble_monitor do it.
* iBeacon: Apple manufacturer data 0x004C, ``02 15`` + UUID + major + minor + power.
* Eddystone, service data 0xFEAA: UID (0x00), URL (0x10), TLM (0x20: battery mV,
  temperature 8.8 fixed point, PDU count), EID (0x30).
* anything else: a raw record that keeps the service and manufacturer data as hex.

The ``build_*`` functions write the same frames; tests, the twin publisher and the
benchmarks use them so that what goes through bleak is a real payload.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

if TYPE_CHECKING:
    from collections.abc import Mapping

BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"  # Bluetooth base UUID: 16-bit ids live here
MIBEACON_UUID = "0000fe95-0000-1000-8000-00805f9b34fb"
EDDYSTONE_UUID = "0000feaa-0000-1000-8000-00805f9b34fb"
APPLE_COMPANY_ID = 0x004C

FC_ENCRYPTED = 0x0008
FC_MAC = 0x0010
FC_CAPABILITY = 0x0020
FC_OBJECT = 0x0040
CAP_IO = 0x20  # capability byte: two IO-capability bytes follow

OBJ_MOTION = 0x0003
OBJ_MOTION_LIGHT = 0x000F
OBJ_NO_MOTION = 0x1017
OBJ_BATTERY = 0x100A

CCM_AAD = b"\x11"
MIC_LEN = 4
EXT_COUNTER_LEN = 3

# TLM battery: a CR2032 reads ~3.0 V full and ~2.0 V empty; linear in between is the
# usual beacon-vendor mapping (and what the engine's percent column needs).
TLM_FULL_MV = 3000
TLM_EMPTY_MV = 2000


class DecodeError(ValueError):
    """A frame that claims a format but breaks it; ``reason`` is a short counter key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Decoded:
    """What the gateway forwards about one advertisement."""

    fmt: str
    dev: str
    battery: int | None = None
    motion: int | None = None
    seq: int | None = None
    tx_power: float | None = None
    extra: dict[str, float | int | str] = field(default_factory=dict)


def norm_uuid(uuid: str) -> str:
    """Full lower-case 128-bit form of a 16-bit ('fe95') or full UUID string."""
    u = uuid.lower()
    return f"0000{u}{BASE_UUID_SUFFIX}" if len(u) == 4 else u


def norm_mac(addr: str) -> str:
    return addr.upper()


def _mac_from_reversed(b: bytes) -> str:
    return ":".join(f"{x:02X}" for x in reversed(b))


# -- MiBeacon -----------------------------------------------------------------------


def decode_mibeacon(data: bytes, address: str, bindkeys: Mapping[str, bytes]) -> Decoded:
    """Parse (and, with the device's bindkey, decrypt) a MiBeacon service-data frame."""
    if len(data) < 5:
        raise DecodeError("mibeacon: frame shorter than 5 bytes")
    fc, pid, counter = struct.unpack_from("<HHB", data, 0)
    version = fc >> 12
    i = 5
    mac_rev = b""
    if fc & FC_MAC:
        if len(data) < i + 6:
            raise DecodeError("mibeacon: truncated MAC")
        mac_rev = data[i : i + 6]
        i += 6
    mac = _mac_from_reversed(mac_rev) if mac_rev else norm_mac(address)
    if fc & FC_CAPABILITY:
        if len(data) < i + 1:
            raise DecodeError("mibeacon: truncated capability")
        cap = data[i]
        i += 1 + (2 if cap & CAP_IO else 0)
    out = Decoded("mibeacon", mac, seq=counter, extra={"pid": pid})
    if not fc & FC_OBJECT:
        return out
    body = data[i:]
    if fc & FC_ENCRYPTED:
        if version < 4:
            raise DecodeError("mibeacon: legacy (v2/v3) encryption not supported")
        key = bindkeys.get(mac)
        if key is None:
            out.extra["encrypted"] = 1
            return out  # forwarded for RSSI; its objects stay unreadable without the key
        if len(body) < EXT_COUNTER_LEN + MIC_LEN + 1:
            raise DecodeError("mibeacon: truncated encrypted payload")
        if not mac_rev:
            mac_rev = bytes.fromhex(mac.replace(":", ""))[::-1]
        ext = body[-(EXT_COUNTER_LEN + MIC_LEN) : -MIC_LEN]
        nonce = mac_rev + data[2:5] + ext
        try:
            body = AESCCM(key, tag_length=MIC_LEN).decrypt(
                nonce, body[: -(EXT_COUNTER_LEN + MIC_LEN)] + body[-MIC_LEN:], CCM_AAD
            )
        except InvalidTag:
            raise DecodeError("mibeacon: MIC check failed (wrong bindkey?)") from None
        # 32-bit frame counter: extended counter (high 3 bytes) and the frame counter byte.
        out.seq = (int.from_bytes(ext, "little") << 8) | counter
    _parse_objects(body, out)
    return out


def _parse_objects(body: bytes, out: Decoded) -> None:
    j = 0
    while j + 3 <= len(body):
        otype, olen = struct.unpack_from("<HB", body, j)
        j += 3
        value = body[j : j + olen]
        if len(value) < olen:
            raise DecodeError("mibeacon: truncated object")
        j += olen
        if otype == OBJ_BATTERY and olen >= 1:
            out.battery = min(value[0], 100)
        elif otype in (OBJ_MOTION, OBJ_MOTION_LIGHT):
            out.motion = 1
        elif otype == OBJ_NO_MOTION and olen >= 1:
            out.motion = 0 if int.from_bytes(value, "little") > 0 else 1
    if j != len(body):
        raise DecodeError("mibeacon: trailing bytes after objects")


def build_mibeacon(
    mac: str,
    counter: int,
    *,
    pid: int = 0x0AF2,
    battery: int | None = None,
    motion: int | None = None,
    bindkey: bytes | None = None,
    ext_counter: int = 0,
    include_mac: bool = True,
) -> bytes:
    """A v5 MiBeacon frame (encrypted when a bindkey is given)."""
    objects = b""
    if battery is not None:
        objects += struct.pack("<HBB", OBJ_BATTERY, 1, battery)
    if motion is not None:
        objects += (
            struct.pack("<HBI", OBJ_NO_MOTION, 4, 60)
            if motion == 0
            else struct.pack("<HBB", OBJ_MOTION, 1, 1)
        )
    fc = (5 << 12) | (FC_OBJECT if objects else 0) | (FC_MAC if include_mac else 0)
    mac_rev = bytes.fromhex(mac.replace(":", ""))[::-1]
    head = struct.pack("<HHB", fc | (FC_ENCRYPTED if bindkey else 0), pid, counter & 0xFF)
    frame = head + (mac_rev if include_mac else b"")
    if bindkey and objects:
        ext = (ext_counter & 0xFFFFFF).to_bytes(3, "little")
        sealed = AESCCM(bindkey, tag_length=MIC_LEN).encrypt(
            mac_rev + head[2:5] + ext, objects, CCM_AAD
        )
        return frame + sealed[:-MIC_LEN] + ext + sealed[-MIC_LEN:]
    return frame + objects


# -- iBeacon and Eddystone --------------------------------------------------------------


def decode_ibeacon(data: bytes) -> Decoded:
    if len(data) != 23:
        raise DecodeError("ibeacon: expected 23 bytes after the company id")
    uuid = data[2:18].hex()
    major, minor, power = struct.unpack_from(">HHb", data, 18)
    dev = f"ibeacon:{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:]}:{major}:{minor}"
    return Decoded("ibeacon", dev, tx_power=float(power))


def build_ibeacon(uuid: str, major: int, minor: int, power: int = -59) -> bytes:
    return (
        b"\x02\x15"
        + bytes.fromhex(uuid.replace("-", ""))
        + struct.pack(">HHb", major, minor, power)
    )


def decode_eddystone(data: bytes, address: str) -> Decoded:
    """Eddystone frames; the 1 m power is the frame's 0 m power less 41 dB (the spec's note)."""
    if not data:
        raise DecodeError("eddystone: empty frame")
    kind = data[0]
    if kind == 0x00:
        if len(data) < 18:
            raise DecodeError("eddystone-uid: expected 18+ bytes")
        tx0 = struct.unpack_from("b", data, 1)[0]
        return Decoded(
            "eddystone-uid",
            f"eddystone:{data[2:12].hex()}:{data[12:18].hex()}",
            tx_power=tx0 - 41.0,
        )
    if kind == 0x20:
        if len(data) != 14 or data[1] != 0:
            raise DecodeError("eddystone-tlm: expected 14 bytes, version 0 (unencrypted)")
        mv, temp_raw, adv_cnt, sec_cnt = struct.unpack_from(">HhII", data, 2)
        out = Decoded(
            "eddystone-tlm",
            norm_mac(address),
            seq=adv_cnt & 0x7FFFFFFF,
            extra={"battery_mv": mv, "temp_c": temp_raw / 256.0, "uptime_s": sec_cnt / 10.0},
        )
        if mv:
            pct = (mv - TLM_EMPTY_MV) * 100 // (TLM_FULL_MV - TLM_EMPTY_MV)
            out.battery = int(min(max(pct, 0), 100))
        return out
    if kind == 0x30:
        if len(data) != 10:
            raise DecodeError("eddystone-eid: expected 10 bytes")
        tx0 = struct.unpack_from("b", data, 1)[0]
        return Decoded("eddystone-eid", f"eddystone-eid:{data[2:10].hex()}", tx_power=tx0 - 41.0)
    if kind == 0x10:
        if len(data) < 3:
            raise DecodeError("eddystone-url: expected 3+ bytes")
        tx0 = struct.unpack_from("b", data, 1)[0]
        return Decoded(
            "eddystone-url",
            norm_mac(address),
            tx_power=tx0 - 41.0,
            extra={"url_hex": data[2:].hex()},
        )
    raise DecodeError(f"eddystone: unknown frame type 0x{kind:02x}")


def build_eddystone_uid(namespace: bytes, instance: bytes, tx0: int = -18) -> bytes:
    return b"\x00" + struct.pack("b", tx0) + namespace + instance + b"\x00\x00"


def build_eddystone_tlm(battery_mv: int, temp_c: float, adv_cnt: int, uptime_s: float) -> bytes:
    return b"\x20\x00" + struct.pack(
        ">HhII", battery_mv, round(temp_c * 256), adv_cnt, round(uptime_s * 10)
    )


def build_eddystone_eid(eid: bytes, tx0: int = -18) -> bytes:
    return b"\x30" + struct.pack("b", tx0) + eid


# -- dispatch -------------------------------------------------------------------------


def decode(
    address: str,
    manufacturer_data: Mapping[int, bytes],
    service_data: Mapping[str, bytes],
    bindkeys: Mapping[str, bytes] | None = None,
) -> Decoded:
    """The first decoder that recognises the advertisement, else the raw fallback.

    Raises DecodeError when a frame claims a format but breaks it: the gateway counts
    those by reason instead of forwarding garbage.
    """
    services = {norm_uuid(k): v for k, v in service_data.items()}
    if MIBEACON_UUID in services:
        return decode_mibeacon(services[MIBEACON_UUID], address, bindkeys or {})
    apple = manufacturer_data.get(APPLE_COMPANY_ID)
    if apple is not None and apple[:2] == b"\x02\x15":
        return decode_ibeacon(apple)
    if EDDYSTONE_UUID in services:
        return decode_eddystone(services[EDDYSTONE_UUID], address)
    extra: dict[str, float | int | str] = {
        f"svc:{k[4:8] if k.endswith(BASE_UUID_SUFFIX) else k}": v.hex()
        for k, v in sorted(services.items())
    }
    extra.update({f"mfr:{cid:04x}": v.hex() for cid, v in sorted(manufacturer_data.items())})
    return Decoded("raw", norm_mac(address), extra=extra)
