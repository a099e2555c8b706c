"""Advertisement decoders: bytes a scanner saw -> one :class:`Decoded` record, always.

Chosen by what the advertisement carries (docs/references.md section 4):

* Xiaomi MiBeacon, service data 0xFE95: frame control (LE u16; bit 3 encrypted, 4 MAC
  included, 5 capability included, 6 object included, 7 mesh, bits 12-15 version),
  product id, frame counter, reversed MAC, capability, objects ``[type u16 LE][len u8]
  [data]``. v4/v5 encryption is AES-CCM (RFC 3610) with the 16-byte bindkey, a 12-byte
  nonce (reversed MAC + product id + frame counter + 3-byte extended counter),
  associated data ``0x11`` and a 4-byte MIC. Legacy v2/v3 encryption is AES-CCM
  *without a usable MIC*: nonce = frame control + product id + counter + 3-byte
  extended counter + the first 5 bytes of the reversed MAC, key = the 12-byte legacy
  bindkey with ``8d3d3c97`` spliced in after byte 6 (xiaomi-ble ``set_bindkey`` and
  ``_decrypt_mibeacon_legacy``; ble_monitor). A wrong legacy key still "decrypts",
  so a result is accepted only when its objects parse; it is marked ``unauthenticated``.
  Object ids and scales follow Xiaomi's object definitions as xiaomi-ble reads them
  (``parser.py``, ``xiaomi_dataobject_dict``); see :data:`MIBEACON_OBJECTS`.
* iBeacon: Apple manufacturer data 0x004C, ``02 15`` + UUID + major + minor + power.
* Apple Find My (offline finding, type 0x12) and Google Find Hub / FMDN (service
  0xFEAA, frame 0x40/0x41): rotating identities, resolved to a tag by
  :mod:`live_bridge.finding` when the owner's keys are configured.
* Eddystone, service data 0xFEAA: UID (0x00), URL (0x10), TLM (0x20 plain, 0x20 v1
  encrypted), EID (0x30), KKM/BlueCharm sensor frames (0x21, the "KSensor" layout the
  Theengs decoder reads: mask byte then voltage, temperature, humidity, acceleration).
* anything else, and any frame that breaks its format: a raw record that keeps the
  address and the service and manufacturer data as hex, so no sighting is dropped.

The ``build_*`` functions write the same frames; tests, the twin publisher and the
benchmarks use them so that what goes through bleak is a real payload.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

if TYPE_CHECKING:
    from collections.abc import Mapping

    from live_bridge.finding import Resolver

BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"  # Bluetooth base UUID: 16-bit ids live here
MIBEACON_UUID = "0000fe95-0000-1000-8000-00805f9b34fb"
EDDYSTONE_UUID = "0000feaa-0000-1000-8000-00805f9b34fb"
APPLE_COMPANY_ID = 0x004C

FC_ENCRYPTED = 0x0008
FC_MAC = 0x0010
FC_CAPABILITY = 0x0020
FC_OBJECT = 0x0040
FC_MESH = 0x0080
CAP_IO = 0x20  # capability byte: two IO-capability bytes follow

OBJ_MOTION = 0x0003
OBJ_NO_MOTION = 0x1017
OBJ_BATTERY = 0x100A
OBJ_TEMPERATURE = 0x1004
OBJ_HUMIDITY = 0x1006

CCM_AAD = b"\x11"
MIC_LEN = 4
EXT_COUNTER_LEN = 3
LEGACY_KEY_FILL = bytes.fromhex("8d3d3c97")  # spliced into a 12-byte v2/v3 bindkey
MOTION_RECENT_S = 30  # "no motion for N s" with N <= 30 still counts as motion (Mi Home)

FINDHUB_FRAMES = (0x40, 0x41)  # FMDN: normal, unwanted-tracking-protection mode
FINDMY_TYPE = 0x12  # Apple Continuity "offline finding"
ANON_PREFIX = "anon:"  # device id prefix of finding-network frames no key resolves

# TLM battery: a CR2032 reads ~3.0 V full and ~2.0 V empty; linear in between is the
# usual beacon-vendor mapping (and what the engine's percent column needs).
TLM_FULL_MV = 3000
TX_MIN_DBM, TX_MAX_DBM = -100, 20  # the wire's range for a calibrated 1 m power
TLM_EMPTY_MV = 2000

Extra = dict[str, float | int | str]


class DecodeError(ValueError):
    """A frame that claims a format but breaks it; ``reason`` is a short counter key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Decoded:
    """What the gateway forwards about one advertisement.

    ``error`` is set when the frame claimed a format but broke it: the record is still
    forwarded (raw, or with the identity the header gave) and the gateway counts it.
    """

    fmt: str
    dev: str
    battery: int | None = None
    motion: int | None = None
    seq: int | None = None
    tx_power: float | None = None
    extra: Extra = field(default_factory=dict)
    error: str | None = None


def norm_uuid(uuid: str) -> str:
    """Full lower-case 128-bit form of a 16-bit ('fe95') or full UUID string."""
    u = uuid.lower()
    return f"0000{u}{BASE_UUID_SUFFIX}" if len(u) == 4 else u


def norm_mac(addr: str) -> str:
    return addr.upper()


def _mac_from_reversed(b: bytes) -> str:
    return ":".join(f"{x:02X}" for x in reversed(b))


def _mac_bytes(mac: str) -> bytes | None:
    try:
        b = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    except ValueError:
        return None
    return b if len(b) == 6 else None


# -- MiBeacon objects -------------------------------------------------------------------
# One reader per object id: (value bytes, product id, record) -> None, or False when the
# value has a length the object never has (then it counts as unread). Units are in the
# extra names (EXTRA_FIELDS lists them); scales as in xiaomi-ble's parser.py.

# Product ids whose objects mean something model-specific (xiaomi-ble devices.py).
PID_CGPR1 = 0x0A83  # 0x000F carries lux
PID_LIGHT_FLAG = (0x07F6, 0x0A8D)  # MJYD02YL, RTCGQ02LM: 0x000F carries a light flag
PID_LIGHT_100 = (0x07F6, 0x098B)  # MJYD02YL, MCCGQ02HL: 0x1007 is 100 = light, else dark
PID_XMOSB01XS = 0x4683  # 0x484E: 1 occupied, 0 and 2 clear

PRESS = {0: "press", 1: "double_press", 2: "long_press", 5: "press", 6: "long_press"}

ObjectReader = Callable[[bytes, int, Decoded], bool | None]
Reader = Callable[[bytes, Decoded], None]  # value, record (model-independent objects)
PidReader = Callable[[bytes, int, Decoded], None]  # value, product id, record


def _u(v: bytes) -> int:
    return int.from_bytes(v, "little")


def _i(v: bytes) -> int:
    return int.from_bytes(v, "little", signed=True)


def _f32(v: bytes) -> float:
    x = float(struct.unpack("<f", v)[0])
    return x if math.isfinite(x) else float("nan")


def _sized(n: int, fn: Reader) -> ObjectReader:
    """An object whose value has exactly ``n`` bytes (else unread)."""

    def read(v: bytes, _pid: int, out: Decoded) -> bool | None:
        if len(v) != n:
            return False
        fn(v, out)
        return None

    return read


def _any(fn: Reader) -> ObjectReader:
    """An object that needs at least one byte."""

    def read(v: bytes, _pid: int, out: Decoded) -> bool | None:
        if not v:
            return False
        fn(v, out)
        return None

    return read


def _by_model(n: int | None, fn: PidReader) -> ObjectReader:
    """An object whose meaning depends on the product id (``n`` None: any length >= 1)."""

    def read(v: bytes, pid: int, out: Decoded) -> bool | None:
        if (n is not None and len(v) != n) or not v:
            return False
        fn(v, pid, out)
        return None

    return read


def _always(fn: Reader) -> ObjectReader:
    """An object whose presence is the reading (its value may be empty)."""

    def read(v: bytes, _pid: int, out: Decoded) -> bool | None:
        fn(v, out)
        return None

    return read


def _field(name: str, convert: Callable[[bytes], float | int | str]) -> Reader:
    def read(v: bytes, out: Decoded) -> None:
        x = convert(v)
        if not (isinstance(x, float) and math.isnan(x)):
            out.extra[name] = x

    return read


def _first(v: bytes) -> int:
    return v[0]


def _flag(name: str, invert: bool = False) -> Reader:
    return _field(name, lambda v: int((v[0] > 0) != invert))


def _scaled(name: str, scale: float, signed: bool = False) -> Reader:
    return _field(name, lambda v: round((_i(v) if signed else _u(v)) / scale, 3))


def _float32(name: str, digits: int) -> Reader:
    return _field(name, lambda v: round(_f32(v), digits))


def _battery(v: bytes, out: Decoded) -> None:
    out.battery = min(v[0], 100)


def _motion(_v: bytes, out: Decoded) -> None:
    out.motion = 1


def _no_motion(_v: bytes, out: Decoded) -> None:
    out.motion = 0


def _no_motion_for(v: bytes, out: Decoded) -> None:
    # Seconds since the last motion: sent 3-5 s after a detection, then at 60, 120,
    # 300 ... s; Mi Home (and xiaomi-ble) count <= 30 s as motion still present.
    s = _u(v)
    out.extra["no_motion_s"] = s
    out.motion = 1 if s <= MOTION_RECENT_S else 0


def _temp_hum(v: bytes, out: Decoded) -> None:
    _scaled("temperature_c", 10, signed=True)(v[:2], out)
    _scaled("humidity_pct", 10)(v[2:], out)


def _moving_with_light(v: bytes, pid: int, out: Decoded) -> None:
    out.motion = 1
    lux = _u(v)
    if pid == PID_CGPR1:
        out.extra["illuminance_lux"] = lux
    elif pid in PID_LIGHT_FLAG:
        out.extra["light"] = int(lux >= 100)


def _illuminance(v: bytes, pid: int, out: Decoded) -> None:
    lux = _u(v)
    if pid in PID_LIGHT_100:
        out.extra["light"] = int(lux == 100)
    else:
        out.extra["illuminance_lux"] = lux


def _motion_lux(v: bytes, out: Decoded) -> None:
    out.motion = 1
    _float32("illuminance_lux", 1)(v, out)


def _door_1019(v: bytes, out: Decoded) -> None:
    # 0 open, 1 closed, 2 open too long ("door left open"), 3 device reset
    state = v[0]
    if state in (0, 1, 2):
        out.extra["door_open"] = int(state != 1)
        out.extra["door_left_open"] = int(state == 2)


def _opening_1_2(v: bytes, out: Decoded) -> None:
    if v[0] in (1, 2):
        out.extra["door_open"] = int(v[0] == 1)
    if v[0] == 2:  # closing clears "left open" and "removed"
        out.extra["door_left_open"] = 0
        out.extra["removed"] = 0


def _opening_0_1(v: bytes, out: Decoded) -> None:
    if v[0] in (0, 1):
        out.extra["door_open"] = int(v[0] == 0)


def _door_left_open(v: bytes, out: Decoded) -> None:
    if v[0] == 1:
        out.extra["door_open"] = 1
        out.extra["door_left_open"] = 1


def _forcibly_removed(v: bytes, out: Decoded) -> None:
    if v[0] == 1:
        out.extra["door_open"] = 1
        out.extra["removed"] = 1


def _lock_door(v: bytes, out: Decoded) -> None:
    # 0 open, 1 closed, 2 left open, 3 knock, 4 pried open, 5 stuck (xiaomi-ble obj0007)
    if v[0] <= 5:
        out.extra["door_open"] = int(v[0] in (0, 2, 4))
        out.extra["door_event"] = v[0]
    if v[0] in (1, 2):
        out.extra["door_left_open"] = int(v[0] == 2)


def _lock(v: bytes, out: Decoded) -> None:
    out.extra["lock_action"] = v[0] & 0x0F
    out.extra["lock_method"] = v[0] >> 4
    out.extra["key_id"] = _u(v[1:5])


def _fingerprint(v: bytes, out: Decoded) -> None:
    out.extra["key_id"] = _u(v[0:4])
    out.extra["fingerprint_match"] = int(v[4] == 0)


def _button_1001(v: bytes, out: Decoded) -> None:
    # [button index, value, press type]; types 3 and 4 are the dimmers' press and
    # rotation (value = presses or steps; rotation sign in the byte), as xiaomi-ble reads.
    index, value, press = v
    if press == 3:
        kind = "press" if index == 0 else "long_press"
    elif press == 4:
        signed = value if index == 0 else index
        turned = "rotate_right" if signed <= 127 else "rotate_left"
        kind = turned if index == 0 else f"{turned}_pressed"
    else:
        kind = PRESS.get(press, f"type_{press}")
    out.extra["button"] = kind
    out.extra["button_index"] = index
    out.extra["button_value"] = value


def _button(kind: str) -> ObjectReader:
    def read(v: bytes, out: Decoded) -> None:
        out.extra["button"] = kind
        if v:
            out.extra["button_index"] = v[0]

    return _always(read)


def _button_if_one(v: bytes, out: Decoded) -> None:
    if v[0] == 1:
        out.extra["button"] = "press"


def _occupancy(v: bytes, pid: int, out: Decoded) -> None:
    out.extra["occupancy"] = int(v[0] == 1) if pid == PID_XMOSB01XS else int(v[0] > 0)


def _body_temp_battery(v: bytes, out: Decoded) -> None:
    # MMC-T201: two thermistor readings and the battery; body temperature by the
    # empirical fit xiaomi-ble uses (valid around 36.5-37.8 degC, from the Mi Home app).
    t1, t2, bat = struct.unpack("<hhB", v)
    body = 3.71934e-11 * math.exp(0.69314 * t1 / 100) - 1.02801e-8 * math.exp(0.53871 * t2 / 100)
    out.extra["temperature_c"] = round(body + 36.413, 2)
    out.battery = min(bat, 100)


def _power_temp(v: bytes, out: Decoded) -> None:
    out.extra["power_on"] = int(v[0] > 0)
    out.extra["temperature_c"] = v[1]


def _scale_4e16(v: bytes, out: Decoded) -> None:
    profile, raw, _ts = struct.unpack("<BII", v)
    if raw:
        out.extra["weight_kg"] = round(raw / 100, 2)
        out.extra["profile_id"] = profile


def _scale_6e16(v: bytes, out: Decoded) -> None:
    # S400: 11 bits mass (0.1 kg), 7 bits heart rate (+50 bpm), 14 bits impedance (0.1 ohm)
    profile, raw, _ts = struct.unpack("<BII", v)
    out.extra["profile_id"] = profile
    mass, heart, imp = raw & 0x7FF, (raw >> 11) & 0x7F, raw >> 18
    if mass:
        out.extra["weight_kg"] = mass / 10
    if 0 < heart < 127:
        out.extra["heart_rate_bpm"] = heart + 50
    if imp:
        out.extra["impedance_ohm"] = imp / 10


def _charging(v: bytes, out: Decoded) -> None:
    out.extra["charging"] = {0: "charging", 1: "not_charging", 2: "full"}.get(v[0], "unknown")


def _device_reset(_v: bytes, out: Decoded) -> None:
    out.extra["device_reset"] = 1


MIBEACON_OBJECTS: dict[int, tuple[str, ObjectReader]] = {
    0x0003: ("motion", _any(_motion)),
    0x0006: ("fingerprint", _sized(5, _fingerprint)),
    0x0007: ("door (lock)", _any(_lock_door)),
    0x0008: ("armed away", _any(_flag("armed", invert=True))),
    0x000A: ("body temperature", _sized(2, _scaled("temperature_c", 100, signed=True))),
    0x000B: ("lock", _sized(9, _lock)),
    0x000F: ("motion with light", _by_model(3, _moving_with_light)),
    0x0010: ("toothbrush", _any(_flag("toothbrush_on", invert=True))),
    0x1001: ("button", _sized(3, _button_1001)),
    0x1004: ("temperature", _sized(2, _scaled("temperature_c", 10, signed=True))),
    0x1005: ("power and temperature", _sized(2, _power_temp)),
    0x1006: ("humidity", _sized(2, _scaled("humidity_pct", 10))),
    0x1007: ("illuminance", _by_model(3, _illuminance)),
    0x1008: ("soil moisture", _any(_field("moisture_pct", _first))),
    0x1009: ("conductivity", _sized(2, _field("conductivity_us_cm", _u))),
    0x100A: ("battery", _any(_battery)),
    0x100D: ("temperature and humidity", _sized(4, _temp_hum)),
    0x100E: ("lock attribute", _sized(1, _field("lock_attribute", _first))),
    0x1010: ("formaldehyde", _sized(2, _scaled("formaldehyde_mg_m3", 100))),
    0x1012: ("power", _any(_flag("power_on"))),
    0x1013: ("consumable", _any(_field("consumable_pct", _first))),
    0x1014: ("water leak", _any(_flag("leak"))),
    0x1015: ("smoke", _any(_flag("smoke"))),
    0x1017: ("seconds without motion", _sized(4, _no_motion_for)),
    0x1018: ("light", _any(_flag("light"))),
    0x1019: ("door", _any(_door_1019)),
    0x101B: ("no motion (timeout)", _always(_no_motion)),
    0x2000: ("body temperature and battery", _sized(5, _body_temp_battery)),
    0x3003: ("brushing", _any(_flag("toothbrush_on", invert=True))),
    0x4801: ("temperature (float)", _sized(4, _float32("temperature_c", 1))),
    0x4802: ("humidity", _sized(1, _field("humidity_pct", _first))),
    0x4803: ("battery", _any(_battery)),
    0x4804: ("opening state", _any(_opening_1_2)),
    0x4805: ("illuminance (float)", _sized(4, _float32("illuminance_lux", 1))),
    0x4806: ("water leak", _sized(1, _flag("leak"))),
    0x4808: ("humidity (float)", _sized(4, _float32("humidity_pct", 1))),
    0x480C: ("door", _sized(1, _opening_0_1)),
    0x4818: ("seconds without motion", _sized(2, _no_motion_for)),
    0x483C: ("pressure present", _sized(1, _flag("occupancy"))),
    0x483D: ("pressure present for", _sized(4, _field("occupied_s", _u))),
    0x483E: ("pressure absent for", _sized(4, _field("unoccupied_s", _u))),
    0x484E: ("occupancy", _by_model(None, _occupancy)),
    0x4851: ("occupied for", _any(_field("occupied_min", _first))),
    0x4852: ("clear for", _any(_field("unoccupied_min", _first))),
    0x487B: ("water leak (top)", _sized(1, _flag("leak_top"))),
    0x4A01: ("low battery", _any(_flag("battery_low"))),
    0x4A08: ("motion with illuminance", _sized(4, _motion_lux)),
    0x4A0C: ("button press", _button("press")),
    0x4A0D: ("button double press", _button("double_press")),
    0x4A0E: ("button long press", _button("long_press")),
    0x4A0F: ("forcibly removed", _any(_forcibly_removed)),
    0x4A12: ("opening event", _any(_opening_1_2)),
    0x4A13: ("button", _any(_button_if_one)),
    0x4A1A: ("door left open", _any(_door_left_open)),
    0x4A68: ("water event", _sized(1, _field("leak_event", _first))),
    0x4C01: ("temperature (float)", _sized(4, _float32("temperature_c", 2))),
    0x4C02: ("humidity", _sized(1, _field("humidity_pct", _first))),
    0x4C03: ("battery", _any(_battery)),
    0x4C08: ("humidity (float)", _sized(4, _float32("humidity_pct", 2))),
    0x4C14: ("mode", _any(_field("mode", _first))),
    0x4E01: ("low battery", _any(_flag("battery_low"))),
    0x4E0C: ("button press", _button("press")),
    0x4E0D: ("button double press", _button("double_press")),
    0x4E0E: ("button long press", _button("long_press")),
    0x4E16: ("weight (S200)", _sized(9, _scale_4e16)),
    0x4E1C: ("device reset", _always(_device_reset)),
    0x5003: ("battery", _any(_battery)),
    0x5413: ("occupancy (close range)", _any(_flag("occupancy_close"))),
    0x5414: ("mode", _any(_field("mode", _first))),
    0x5422: ("charging state", _sized(1, _charging)),
    0x560C: ("button press", _button("press")),
    0x560D: ("button double press", _button("double_press")),
    0x560E: ("button long press", _button("long_press")),
    0x5810: ("sleep state", _sized(1, _flag("asleep", invert=True))),
    0x6461: ("wearing state", _sized(1, _flag("worn", invert=True))),
    0x6E16: ("body composition (S400)", _sized(9, _scale_6e16)),
}

# Every name a decoder may put in ``extra``, with its unit: docs/wire-format.md lists them.
EXTRA_FIELDS: dict[str, str] = {
    "pid": "MiBeacon product id (integer)",
    "encrypted": "1: objects encrypted and no key configured (identity and counter only)",
    "unauthenticated": "1: legacy v2/v3 decryption (no MIC; accepted because objects parse)",
    "error": "why the frame could not be read in full (also counted by the gateway)",
    "trailing_bytes": "bytes after the last whole object (ignored)",
    "objects_unread": "objects with an unknown id or an impossible length",
    "obj_XXXX": "hex value of an object this decoder does not read (XXXX = object id)",
    "temperature_c": "temperature, degrees Celsius",
    "humidity_pct": "relative humidity, percent",
    "illuminance_lux": "illuminance, lux",
    "light": "1 light, 0 dark (sensors with a light flag only)",
    "moisture_pct": "soil moisture, percent",
    "conductivity_us_cm": "soil conductivity, microsiemens per centimetre",
    "formaldehyde_mg_m3": "formaldehyde, milligrams per cubic metre",
    "consumable_pct": "consumable left, percent",
    "weight_kg": "weight, kilograms",
    "heart_rate_bpm": "heart rate, beats per minute",
    "impedance_ohm": "body impedance, ohm",
    "profile_id": "scale user profile",
    "door_open": "1 open, 0 closed",
    "door_left_open": "1: open longer than the sensor's timeout",
    "door_event": "lock door event code (0 open ... 5 stuck)",
    "removed": "1: sensor forcibly removed",
    "button": "press, double_press, long_press, rotate_left/right[_pressed] (dimmers), type_N",
    "button_index": "which button or key",
    "button_value": "button object value byte (model-specific)",
    "no_motion_s": "seconds since the last motion (motion = 1 when <= 30)",
    "occupancy": "1 occupied, 0 clear",
    "occupancy_close": "1 occupied at close range",
    "occupied_s": "seconds with pressure present",
    "unoccupied_s": "seconds with no pressure",
    "occupied_min": "minutes occupied (as reported)",
    "unoccupied_min": "minutes clear (as reported)",
    "leak": "1 water detected",
    "leak_top": "1 water on the top sensor",
    "leak_event": "water event code",
    "smoke": "1 smoke detected",
    "battery_low": "1 battery low",
    "battery_mv": "battery, millivolts",
    "power_on": "1 on",
    "charging": "charging, not_charging, full, unknown",
    "armed": "1 armed away",
    "lock_action": "lock action code",
    "lock_method": "lock method code",
    "lock_attribute": "lock attribute bits",
    "key_id": "lock key or fingerprint id",
    "fingerprint_match": "1 fingerprint matched",
    "toothbrush_on": "1 brushing",
    "asleep": "1 asleep",
    "worn": "1 worn",
    "mode": "device mode code",
    "device_reset": "1 the device reported a reset",
    "uptime_s": "seconds since the beacon booted (Eddystone TLM)",
    "url_hex": "Eddystone-URL payload, hex",
    "tx_raw": "iBeacon power byte outside -100..20 dBm (not a power; BM2 monitors)",
    "etlm": "encrypted Eddystone TLM, hex (needs the beacon's EID key)",
    "hashed_flags": "Find Hub hashed flags byte (battery and UTP state, keyed)",
    "acc_x_mg": "acceleration X, milli-g (KKM/BlueCharm sensor frame)",
    "acc_y_mg": "acceleration Y, milli-g",
    "acc_z_mg": "acceleration Z, milli-g",
    "eid": "rotating identifier as heard (Find Hub EID, Find My key prefix), hex",
    "clock_offset_s": "tag clock minus gateway clock, seconds (Find Hub, as resolved)",
    "svc:XXXX": "raw service data by UUID, hex (raw records)",
    "mfr:XXXX": "raw manufacturer data by company id, hex (raw records)",
}


def _parse_objects(body: bytes, pid: int, out: Decoded) -> None:
    """Read every whole object; count the unreadable ones and any bytes left over."""
    j = 0
    unread = 0
    while j + 3 <= len(body):
        otype, olen = struct.unpack_from("<HB", body, j)
        value = body[j + 3 : j + 3 + olen]
        if len(value) < olen:
            break  # a truncated last object: what follows is trailing bytes
        j += 3 + olen
        known = MIBEACON_OBJECTS.get(otype)
        if known is None or known[1](value, pid, out) is False:
            unread += 1
            out.extra[f"obj_{otype:04x}"] = value.hex()
    if unread:
        out.extra["objects_unread"] = unread
    if j != len(body):
        out.extra["trailing_bytes"] = len(body) - j


def _legacy_key(key: bytes) -> bytes:
    return key[:6] + LEGACY_KEY_FILL + key[6:] if len(key) == 12 else key


def _ccm_keystream_decrypt(key: bytes, nonce: bytes, data: bytes) -> bytes:
    """AES-CCM payload decryption without the MIC: CTR from counter block 1 (RFC 3610 2.3)."""
    flags = 15 - len(nonce) - 1  # L' = L - 1, L = 15 - nonce length
    start = bytes([flags]) + nonce + (1).to_bytes(15 - len(nonce), "big")
    dec = Cipher(algorithms.AES(key), modes.CTR(start)).decryptor()
    return dec.update(data) + dec.finalize()


def _objects_parse_whole(body: bytes) -> bool:
    """Whether a legacy-decrypted body is a whole run of objects of known ids.

    Without a MIC this is the only check a wrong key fails: random bytes pass it with a
    chance of about (number of known ids / 65536) / 256 per object.
    """
    j = 0
    while j + 3 <= len(body):
        if int.from_bytes(body[j : j + 2], "little") not in MIBEACON_OBJECTS:
            return False
        j += 3 + body[j + 2]
    return j == len(body) and len(body) >= 3


def decode_mibeacon(data: bytes, address: str, bindkeys: Mapping[str, bytes]) -> Decoded:
    """Parse (and, with the device's bindkey, decrypt) a MiBeacon service-data frame.

    Raises DecodeError only when not even the header (and so the identity) is readable;
    past the header, problems are recorded in ``error`` and the identity is kept.
    """
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
    out = Decoded("mibeacon", mac, seq=counter, extra={"pid": pid})
    if fc & FC_MESH or version < 2:
        out.error = "mibeacon: mesh or pre-v2 frame not read"
        return out
    if fc & FC_CAPABILITY:
        if len(data) < i + 1:
            out.error = "mibeacon: truncated capability"
            return out
        cap = data[i]
        i += 1 + (1 if cap & CAP_IO else 0)  # one IO-capability byte (xiaomi-ble, ble_monitor)
    if not fc & FC_OBJECT:
        return out
    body = data[i:]
    if fc & FC_ENCRYPTED:
        key = bindkeys.get(mac)
        if key is None:
            out.extra["encrypted"] = 1
            return out  # forwarded for RSSI; its objects stay unreadable without the key
        if not mac_rev:
            mac_rev = (_mac_bytes(mac) or bytes(6))[::-1]
        if version >= 4:
            if len(body) < EXT_COUNTER_LEN + MIC_LEN + 1:
                out.error = "mibeacon: truncated encrypted payload"
                return out
            ext = body[-(EXT_COUNTER_LEN + MIC_LEN) : -MIC_LEN]
            nonce = mac_rev + data[2:5] + ext
            try:
                body = AESCCM(key, tag_length=MIC_LEN).decrypt(
                    nonce, body[: -(EXT_COUNTER_LEN + MIC_LEN)] + body[-MIC_LEN:], CCM_AAD
                )
            except (InvalidTag, ValueError):
                out.extra["encrypted"] = 1
                out.error = "mibeacon: MIC check failed (wrong bindkey?)"
                return out
            # 32-bit frame counter: extended counter (high 3 bytes) and the frame counter.
            out.seq = (int.from_bytes(ext, "little") << 8) | counter
        else:
            # v2/v3: payload, 3-byte extended counter, 1 byte (not checkable) at the end.
            if len(body) < 4 + 3 or len(key) not in (12, 16):
                out.extra["encrypted"] = 1
                out.error = "mibeacon: truncated legacy payload or key not 12/16 bytes"
                return out
            nonce = data[0:5] + body[-4:-1] + mac_rev[:5]
            plain = _ccm_keystream_decrypt(_legacy_key(key), nonce, body[:-4])
            if not _objects_parse_whole(plain):
                out.extra["encrypted"] = 1
                out.error = "mibeacon: legacy decryption gave no objects (wrong bindkey?)"
                return out
            body = plain
            out.extra["unauthenticated"] = 1
            out.seq = (int.from_bytes(data[-4:-1], "little") << 8) | counter
    _parse_objects(body, pid, out)
    return out


def _object(otype: int, value: bytes) -> bytes:
    return struct.pack("<HB", otype, len(value)) + value


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
    objects: bytes = b"",
    version: int = 5,
) -> bytes:
    """A MiBeacon frame (v4/v5 AES-CCM when a 16-byte bindkey is given; v2/v3 legacy
    encryption when ``version`` < 4). ``objects`` adds pre-built objects after these."""
    body = b""
    if battery is not None:
        body += _object(OBJ_BATTERY, bytes([battery]))
    if motion is not None:
        body += _object(OBJ_NO_MOTION, struct.pack("<I", 60)) if motion == 0 else _object(OBJ_MOTION, b"\x01")
    body += objects
    fc = (version << 12) | (FC_OBJECT if body else 0) | (FC_MAC if include_mac else 0)
    mac_rev = bytes.fromhex(mac.replace(":", ""))[::-1]
    head = struct.pack("<HHB", fc | (FC_ENCRYPTED if bindkey else 0), pid, counter & 0xFF)
    frame = head + (mac_rev if include_mac else b"")
    if bindkey and body:
        ext = (ext_counter & 0xFFFFFF).to_bytes(3, "little")
        if version < 4:
            nonce = head + ext + mac_rev[:5]
            return frame + _ccm_keystream_decrypt(_legacy_key(bindkey), nonce, body) + ext + b"\x00"
        sealed = AESCCM(bindkey, tag_length=MIC_LEN).encrypt(mac_rev + head[2:5] + ext, body, CCM_AAD)
        return frame + sealed[:-MIC_LEN] + ext + sealed[-MIC_LEN:]
    return frame + body


def mibeacon_sensor_objects(temperature_c: float | None = None, humidity_pct: float | None = None) -> bytes:
    """Temperature (0x1004) and humidity (0x1006) objects, 0.1 resolution."""
    out = b""
    if temperature_c is not None:
        out += _object(OBJ_TEMPERATURE, struct.pack("<h", round(temperature_c * 10)))
    if humidity_pct is not None:
        out += _object(OBJ_HUMIDITY, struct.pack("<H", round(humidity_pct * 10)))
    return out


# -- iBeacon, Find My -----------------------------------------------------------------


def decode_ibeacon(data: bytes) -> Decoded:
    """iBeacon; bytes past the 23 the format has (some beacons add one) are counted."""
    if len(data) < 23:
        raise DecodeError("ibeacon: shorter than 23 bytes after the company id")
    uuid = data[2:18].hex()
    major, minor, power = struct.unpack_from(">HHb", data, 18)
    dev = f"ibeacon:{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:]}:{major}:{minor}"
    out = Decoded("ibeacon", dev)
    if TX_MIN_DBM <= power <= TX_MAX_DBM:
        out.tx_power = float(power)
    else:  # e.g. +100 from BM2 battery monitors, which put a reading in that byte
        out.extra["tx_raw"] = power
    if len(data) > 23:
        out.extra["trailing_bytes"] = len(data) - 23
    return out


def build_ibeacon(uuid: str, major: int, minor: int, power: int = -59) -> bytes:
    return b"\x02\x15" + bytes.fromhex(uuid.replace("-", "")) + struct.pack(">HHb", major, minor, power)


def findmy_key_prefix(data: bytes, address: str) -> bytes | None:
    """The advertised Find My public-key bytes: 28 for a full (separated) frame, else 6.

    Offline-finding layout (Heinrich et al., PETS 2021; OpenHaystack): ``12 19`` status,
    key bytes 6..27, the top two bits of key byte 0, hint; key bytes 0..5 are the random
    static address with its top two bits forced to 1. The short ``12 02`` frame (near
    the owner) carries only the address part.
    """
    addr = _mac_bytes(address)
    if addr is None or len(data) < 4 or data[0] != FINDMY_TYPE:
        return None
    if data[1] == 0x19 and len(data) >= 27:
        top = data[25] & 0x03
        return bytes([(addr[0] & 0x3F) | (top << 6)]) + addr[1:] + data[3:25]
    return bytes([addr[0] & 0x3F]) + addr[1:]


def build_findmy(public_key: bytes) -> tuple[str, bytes]:
    """(address, manufacturer data) a Find My tag sends for a 28-byte advertised key."""
    addr = bytes([public_key[0] | 0xC0]) + public_key[1:6]
    payload = bytes([FINDMY_TYPE, 0x19, 0x00]) + public_key[6:28] + bytes([public_key[0] >> 6, 0])
    return ":".join(f"{b:02X}" for b in addr), payload


# -- Eddystone --------------------------------------------------------------------------


def decode_kksensor(data: bytes, address: str) -> Decoded:
    """KKM/BlueCharm "KSensor" frame 0x21: version, mask, then the masked fields, big-endian.

    Mask bits (Theengs decoder BC08/K6P/K9 definitions): 0x01 voltage mV, 0x02
    temperature 8.8, 0x04 humidity 8.8, 0x08 acceleration x/y/z (i16, milli-g).
    """
    if len(data) < 3:
        raise DecodeError("eddystone-sensor: shorter than 3 bytes")
    mask = data[2]
    out = Decoded("eddystone-tlm", norm_mac(address), extra={})
    j = 3
    for bit, size in ((0x01, 2), (0x02, 2), (0x04, 2), (0x08, 6)):
        if not mask & bit:
            continue
        if len(data) < j + size:
            out.error = "eddystone-sensor: truncated field"
            return out
        chunk = data[j : j + size]
        j += size
        if bit == 0x01:
            mv = int.from_bytes(chunk, "big")
            out.extra["battery_mv"] = mv
            out.battery = _tlm_percent(mv)
        elif bit == 0x02:
            out.extra["temperature_c"] = round(int.from_bytes(chunk, "big", signed=True) / 256, 2)
        elif bit == 0x04:
            out.extra["humidity_pct"] = round(int.from_bytes(chunk, "big") / 256, 2)
        else:
            ax, ay, az = struct.unpack(">hhh", chunk)
            out.extra.update(acc_x_mg=ax, acc_y_mg=ay, acc_z_mg=az)
    if j != len(data):
        out.extra["trailing_bytes"] = len(data) - j
    return out


def _tx_1m(tx0: int) -> float | None:
    """Eddystone's 0 m power as a 1 m power (less 41 dB), None when out of range."""
    tx = tx0 - 41.0
    return tx if TX_MIN_DBM <= tx <= TX_MAX_DBM else None


def _tlm_percent(mv: int) -> int | None:
    if not mv:
        return None
    pct = (mv - TLM_EMPTY_MV) * 100 // (TLM_FULL_MV - TLM_EMPTY_MV)
    return int(min(max(pct, 0), 100))


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
            tx_power=_tx_1m(tx0),
        )
    if kind == 0x20:
        if len(data) >= 2 and data[1] == 0x01:
            # Encrypted TLM (ETLM): 12 encrypted bytes, salt, MIC. Only the beacon's EID
            # key opens it; the identity is the address, the gateway links it to the EID.
            return Decoded("eddystone-tlm", norm_mac(address), extra={"encrypted": 1, "etlm": data[2:].hex()})
        if len(data) < 14 or data[1] != 0:
            raise DecodeError("eddystone-tlm: expected 14 bytes, version 0 or 1")
        mv, temp_raw, adv_cnt, sec_cnt = struct.unpack_from(">HhII", data, 2)
        out = Decoded(
            "eddystone-tlm",
            norm_mac(address),
            seq=adv_cnt & 0x7FFFFFFF,
            battery=_tlm_percent(mv),
            extra={"battery_mv": mv, "temperature_c": temp_raw / 256.0, "uptime_s": sec_cnt / 10.0},
        )
        if len(data) > 14:
            out.extra["trailing_bytes"] = len(data) - 14
        return out
    if kind == 0x21:
        return decode_kksensor(data, address)
    if kind == 0x30:
        if len(data) < 10:
            raise DecodeError("eddystone-eid: expected 10 bytes")
        tx0 = struct.unpack_from("b", data, 1)[0]
        return Decoded("eddystone-eid", f"eddystone-eid:{data[2:10].hex()}", tx_power=_tx_1m(tx0))
    if kind == 0x10:
        if len(data) < 3:
            raise DecodeError("eddystone-url: expected 3+ bytes")
        tx0 = struct.unpack_from("b", data, 1)[0]
        return Decoded(
            "eddystone-url",
            norm_mac(address),
            tx_power=_tx_1m(tx0),
            extra={"url_hex": data[2:].hex()},
        )
    raise DecodeError(f"eddystone: unknown frame type 0x{kind:02x}")


def build_eddystone_uid(namespace: bytes, instance: bytes, tx0: int = -18) -> bytes:
    return b"\x00" + struct.pack("b", tx0) + namespace + instance + b"\x00\x00"


def build_eddystone_tlm(battery_mv: int, temp_c: float, adv_cnt: int, uptime_s: float) -> bytes:
    return b"\x20\x00" + struct.pack(">HhII", battery_mv, round(temp_c * 256), adv_cnt, round(uptime_s * 10))


def build_eddystone_eid(eid: bytes, tx0: int = -18) -> bytes:
    return b"\x30" + struct.pack("b", tx0) + eid


def build_findhub(eid: bytes, hashed_flags: int = 0, frame: int = 0x40) -> bytes:
    """FMDN service data (UUID 0xFEAA): frame type, 20-byte EID, hashed flags byte."""
    return bytes([frame]) + eid + bytes([hashed_flags])


# -- dispatch -------------------------------------------------------------------------


def raw_record(
    address: str,
    manufacturer_data: Mapping[int, bytes],
    services: Mapping[str, bytes],
    error: str | None = None,
) -> Decoded:
    """The record for anything not understood: identity = address, data kept as hex."""
    extra: Extra = {
        f"svc:{k[4:8] if k.endswith(BASE_UUID_SUFFIX) else k}": v.hex() for k, v in sorted(services.items())
    }
    extra.update({f"mfr:{cid:04x}": v.hex() for cid, v in sorted(manufacturer_data.items())})
    if error:
        extra["error"] = error
    return Decoded("raw", norm_mac(address), extra=extra, error=error)


def decode(
    address: str,
    manufacturer_data: Mapping[int, bytes],
    service_data: Mapping[str, bytes],
    bindkeys: Mapping[str, bytes] | None = None,
    *,
    resolver: Resolver | None = None,
    now: float | None = None,
) -> Decoded:
    """The first decoder that recognises the advertisement, else the raw record.

    Never raises on frame content: a frame that claims a format but breaks it comes back
    as a raw record (or, for MiBeacon past its header, with its identity) whose
    ``error`` says why; the gateway counts those by reason and still forwards them.
    ``resolver`` maps Find Hub EIDs and Find My keys to the site's tag ids at ``now``.
    """
    services = {norm_uuid(k): v for k, v in service_data.items()}
    try:
        d = _decode(address, manufacturer_data, services, bindkeys or {})
    except DecodeError as exc:
        return raw_record(address, manufacturer_data, services, exc.reason)
    if d.error:
        d.extra["error"] = d.error
    if d.fmt in ("findhub", "findmy"):
        if resolver is None:
            anonymize(d)
        else:
            resolver.resolve(d, now)
    return d


def anonymize(d: Decoded) -> None:
    """A finding-network frame no configured key matches: counted, never tracked.

    Its identifier rotates (a new device id every 15-17 minutes) and belongs to someone
    else's tag: it is forwarded as ``anon:<fmt>`` without the identifier, and the server
    counts it per zone instead of growing its device table.
    """
    d.dev = f"{ANON_PREFIX}{d.fmt}"
    d.extra.pop("eid", None)
    d.extra.pop("hashed_flags", None)


def _decode(
    address: str,
    manufacturer_data: Mapping[int, bytes],
    services: Mapping[str, bytes],
    bindkeys: Mapping[str, bytes],
) -> Decoded:
    if MIBEACON_UUID in services:
        return decode_mibeacon(services[MIBEACON_UUID], address, bindkeys)
    apple = manufacturer_data.get(APPLE_COMPANY_ID)
    if apple is not None and apple[:2] == b"\x02\x15":
        return decode_ibeacon(apple)
    if apple is not None and apple[:1] == bytes([FINDMY_TYPE]):
        key = findmy_key_prefix(apple, address)
        if key is None:
            raise DecodeError("findmy: truncated frame or address not a MAC")
        return Decoded("findmy", f"findmy:{key.hex()}", extra={"eid": key.hex()})
    eddy = services.get(EDDYSTONE_UUID)
    if eddy is not None and eddy[:1] and eddy[0] in FINDHUB_FRAMES:
        if len(eddy) < 21:
            raise DecodeError("findhub: shorter than frame type + 20-byte EID")
        # 20-byte EIDs (SECP160R1); a 34-byte frame carries the spec's optional 32-byte
        # SECP256R1 EID, which no configured key here resolves (it stays anonymous).
        n = 32 if len(eddy) >= 1 + 32 + 1 else 20
        eid = eddy[1 : 1 + n]
        out = Decoded("findhub", f"findhub:{eid.hex()}", extra={"eid": eid.hex()})
        if len(eddy) > 1 + n:
            out.extra["hashed_flags"] = eddy[1 + n]
        return out
    if eddy is not None:
        return decode_eddystone(eddy, address)
    return raw_record(address, manufacturer_data, services)
