"""The decoders against public test frames: xiaomi-ble's and the Theengs decoder's own.

Each vector carries the values that project's tests expect (tests/data/vectors/, see
tests/data/README.md). A field TagTwin reads must agree; a field it does not read is
counted, not failed. ``python -m tests.test_live_vectors --json FILE`` prints the
figures quoted in tests/data/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

from live_bridge.decoders import APPLE_COMPANY_ID, Decoded, decode

VECTORS = Path(__file__).parent / "data" / "vectors"

# xiaomi-ble entity key -> (TagTwin field, tolerance); fields on the record itself are
# "battery" and "motion", the rest live in ``extra``.
XIAOMI_BLE_FIELDS: dict[str, tuple[str, float]] = {
    "KEY_TEMPERATURE": ("temperature_c", 0.11),
    "KEY_HUMIDITY": ("humidity_pct", 1.0),  # xiaomi-ble truncates LYWSD03MMC to whole %
    "KEY_BATTERY": ("battery", 0),
    "KEY_ILLUMINANCE": ("illuminance_lux", 1.0),
    "KEY_BINARY_MOTION": ("motion", 0),
    "KEY_EVENT_MOTION": ("motion", 0),
    "KEY_BINARY_OCCUPANCY": ("occupancy", 0),
    "KEY_BINARY_OPENING": ("door_open", 0),
    "KEY_BINARY_DOOR": ("door_open", 0),
    "KEY_BINARY_DOOR_LEFT_OPEN": ("door_left_open", 0),
    "KEY_BINARY_LIGHT": ("light", 0),
    "KEY_MASS": ("weight_kg", 0.01),
    "KEY_MASS_NON_STABILIZED": ("weight_kg", 0.01),
    "KEY_MOISTURE": ("moisture_pct", 0),
    "KEY_CONDUCTIVITY": ("conductivity_us_cm", 0),
    "KEY_FORMALDEHYDE": ("formaldehyde_mg_m3", 0.001),
    "KEY_SMOKE": ("smoke", 0),
    "KEY_EVENT_BUTTON": ("button", 0),
    "KEY_EVENT_DIMMER": ("button", 0),
    "KEY_HEART_RATE": ("heart_rate_bpm", 0),
    "KEY_IMPEDANCE_LOW": ("impedance_ohm", 0.01),
    "KEY_IMPEDANCE_HIGH": ("impedance_ohm", 0.01),
    "KEY_PROFILE_ID": ("profile_id", 0),
    "KEY_BINARY_FINGERPRINT": ("fingerprint_match", 0),
    "KEY_BINARY_ARMED": ("armed", 0),
    "KEY_BINARY_DEVICE_FORCIBLY_REMOVED": ("removed", 0),
    "KEY_BINARY_TOOTHBRUSH": ("toothbrush_on", 0),
}
# Theengs decoder JSON key -> (TagTwin field, scale to apply to Theengs' value, tolerance)
THEENGS_FIELDS: dict[str, tuple[str, float, float]] = {
    "tempc": ("temperature_c", 1, 0.011),
    "hum": ("humidity_pct", 1, 0.011),
    "batt": ("battery", 1, 0),
    "lux": ("illuminance_lux", 1, 0),
    "moi": ("moisture_pct", 1, 0),
    "fer": ("conductivity_us_cm", 1, 0),
    "motion": ("motion", 1, 0),
    "volt": ("battery_mv", 1000, 0.5),
    "accx": ("acc_x_mg", 1, 0),
    "accy": ("acc_y_mg", 1, 0),
    "accz": ("acc_z_mg", 1, 0),
    "major": ("ibeacon_major", 1, 0),  # iBeacons: identity and power only; vendors that
    # put readings in the iBeacon fields (BM2, ABTemp, Tilt) are counted as not read
    "minor": ("ibeacon_minor", 1, 0),
    "txpower": ("tx", 1, 0),
}
IBEACON_KEYS = {"major", "minor", "txpower"}
SKIPPED = {"KEY_SIGNAL_STRENGTH", "KEY_VOLTAGE"}  # RSSI, and a voltage derived from battery


def field_of(d: Decoded, name: str) -> object:
    if name == "battery":
        return d.battery
    if name == "motion":
        return d.motion
    if name == "tx":
        return d.tx_power
    if name.startswith("ibeacon_"):
        parts = d.dev.split(":")
        return int(parts[2 if name.endswith("major") else 3]) if d.fmt == "ibeacon" else None
    return d.extra.get(name)


def agrees(got: object, want: object, tol: float) -> bool:
    if isinstance(want, bool):
        return got == int(want)
    if isinstance(want, int | float) and isinstance(got, int | float):
        return math.isclose(float(got), float(want), abs_tol=tol + 1e-9)
    return got == want


def _load(name: str) -> dict[str, object]:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def score_xiaomi_ble() -> dict[str, object]:
    figures: Counter[str] = Counter()
    wrong: list[str] = []
    unread: Counter[str] = Counter()
    for v in _load("xiaomi_ble.json")["vectors"]:  # type: ignore[union-attr]
        addr = v["address"]
        keys = {addr: bytes.fromhex(v["bindkey"])} if v["bindkey"] else {}
        d = decode(addr, {}, {"fe95": bytes.fromhex(v["frame"])}, keys)
        figures["frames"] += 1
        if "bindkey_wrong" in v["test"]:  # xiaomi-ble's wrong-key cases: must be refused
            figures["wrong-key frames refused"] += d.error is not None and "eid" not in d.extra
        else:
            figures["frames decoded"] += d.fmt == "mibeacon" and not d.error
        figures["identity right"] += d.dev == addr
        for key, want in v["expect"].items():
            if key in SKIPPED:
                continue
            if key not in XIAOMI_BLE_FIELDS:
                unread[key] += 1
                figures["fields not read"] += 1
                continue
            name, tol = XIAOMI_BLE_FIELDS[key]
            if key == "KEY_MOISTURE" and isinstance(want, bool):
                name = "leak"  # the binary moisture sensor, not soil moisture
            if key == "KEY_EVENT_MOTION":
                want = want == "motion_detected"  # noqa: PLW2901 - an event becomes a reading
            figures["fields"] += 1
            if agrees(field_of(d, name), want, tol):
                figures["fields right"] += 1
            else:
                wrong.append(f"{v['test']}: {key} want {want!r} got {field_of(d, name)!r}")
    return {**figures, "wrong": wrong, "not read": dict(unread)}


def score_theengs() -> dict[str, object]:
    figures: Counter[str] = Counter()
    wrong: list[str] = []
    unread: Counter[str] = Counter()
    for v in _load("theengs.json")["vectors"]:  # type: ignore[union-attr]
        exp = v["expect"]
        addr = exp.get("mac", "AA:BB:CC:DD:EE:FF")
        if "service" in v:
            d = decode(addr, {}, {v["service"]: bytes.fromhex(v["data"])})
            kind = "mibeacon" if v["service"] == "fe95" else "eddystone"
        else:
            raw = bytes.fromhex(v["manufacturer"])
            d = decode(addr, {APPLE_COMPANY_ID: raw[2:]}, {})
            kind = "ibeacon"
        figures[f"{kind} frames"] += 1
        figures[f"{kind} frames decoded"] += d.fmt != "raw" and not d.error
        if "mac" in exp:
            figures[f"{kind} identity"] += 1
            figures[f"{kind} identity right"] += d.dev == exp["mac"]
        if kind == "ibeacon" and "uuid" in exp:
            figures[f"{kind} identity"] += 1
            figures[f"{kind} identity right"] += exp["uuid"] == d.dev.split(":")[1].replace("-", "")
        for key, want in exp.items():
            if key not in THEENGS_FIELDS or (kind == "ibeacon" and key not in IBEACON_KEYS):
                if key not in (
                    "brand",
                    "model",
                    "model_id",
                    "type",
                    "mac",
                    "mfid",
                    "uuid",
                    "tempf",
                    "track",
                    "cidc",
                    "acts",
                    "cont",
                    "device",
                    "prmac",
                ):
                    unread[f"{kind}:{key}"] += 1
                    figures[f"{kind} fields not read"] += 1
                continue
            name, scale, tol = THEENGS_FIELDS[key]
            figures[f"{kind} fields"] += 1
            got = field_of(d, name)
            if agrees(got, want * scale if not isinstance(want, bool) else want, tol):
                figures[f"{kind} fields right"] += 1
            else:
                wrong.append(f"{v['name']} {v.get('data') or v.get('manufacturer')}: {key} want {want!r} got {got!r}")
    return {**figures, "wrong": wrong, "not read": dict(unread)}


def test_xiaomi_ble_vectors():
    s = score_xiaomi_ble()
    assert s["frames"] >= 80
    assert s["frames decoded"] + s["wrong-key frames refused"] == s["frames"]
    assert s["identity right"] == s["frames"]
    assert s["wrong"] == []
    assert s["fields right"] == s["fields"] >= 60


def test_theengs_vectors():
    s = score_theengs()
    assert s["wrong"] == []
    assert s["mibeacon frames decoded"] == s["mibeacon frames"]
    assert s["eddystone frames decoded"] == s["eddystone frames"]
    assert s["ibeacon identity right"] == s["ibeacon identity"]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = {"xiaomi-ble": score_xiaomi_ble(), "theengs": score_theengs()}
    text = json.dumps(out, indent=1)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    print(text)
