"""Decoders, filters and privacy hashing: real frames in, fields out; garbage is refused."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from live_bridge.decoders import (
    APPLE_COMPANY_ID,
    EDDYSTONE_UUID,
    EXTRA_FIELDS,
    MIBEACON_OBJECTS,
    MIBEACON_UUID,
    Decoded,
    build_eddystone_eid,
    build_eddystone_tlm,
    build_eddystone_uid,
    build_ibeacon,
    build_mibeacon,
    decode,
)
from live_bridge.filters import AdvertFilter, privacy_hash

macs = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02X}" for x in b))
keys = st.binary(min_size=16, max_size=16)

# A fixed bindkey for the byte-layout check below (the frame is ours, not a vendor capture).
KNOWN_KEY = bytes.fromhex("814aac74c4f17b6c1581e1ab87816b99")


@settings(max_examples=150, deadline=None)
@given(
    mac=macs,
    counter=st.integers(0, 255),
    ext=st.integers(0, 2**24 - 1),
    battery=st.integers(0, 100),
    motion=st.sampled_from([None, 0, 1]),
    key=keys,
    include_mac=st.booleans(),
)
def test_mibeacon_encrypted_roundtrip(mac, counter, ext, battery, motion, key, include_mac):
    frame = build_mibeacon(
        mac,
        counter,
        battery=battery,
        motion=motion,
        bindkey=key,
        ext_counter=ext,
        include_mac=include_mac,
    )
    d = decode("11:22:33:44:55:66" if include_mac else mac, {}, {"fe95": frame}, {mac: key})
    assert (d.fmt, d.dev, d.battery, d.motion) == ("mibeacon", mac, battery, motion)
    assert d.seq == (ext << 8) | counter


@settings(max_examples=50, deadline=None)
@given(mac=macs, key=keys, other=keys)
def test_mibeacon_wrong_key_is_refused_not_misread(mac, key, other):
    frame = build_mibeacon(mac, 7, battery=50, bindkey=key)
    if key == other:
        return
    # A wrong key never yields readings; the sighting still counts, with its identity.
    bad = decode(mac, {}, {MIBEACON_UUID: frame}, {mac: other})
    assert (bad.fmt, bad.dev, bad.battery) == ("mibeacon", mac, None)
    assert bad.error is not None and "MIC" in bad.error
    # Without any key the advertisement still counts for RSSI, its objects unread.
    d = decode(mac, {}, {MIBEACON_UUID: frame}, {})
    assert d.battery is None
    assert d.extra["encrypted"] == 1
    assert d.seq == 7


def test_mibeacon_known_layout():
    frame = build_mibeacon("A4:C1:38:00:11:22", 0x42, battery=93, bindkey=KNOWN_KEY, ext_counter=1)
    # frame control 0x5058 (v5, object, MAC, encrypted) and product id 0x0AF2, little-endian.
    assert frame[:5].hex() == "5850f20a42"
    assert frame[5:11].hex() == "22110038c1a4"
    assert len(frame) == 11 + 4 + 3 + 4  # header+MAC, 4-byte object, ext counter, MIC
    d = decode(
        "A4:C1:38:00:11:22",
        {},
        {"0000fe95-0000-1000-8000-00805f9b34fb": frame},
        {"a4:c1:38:00:11:22".upper(): KNOWN_KEY},
    )
    assert d.battery == 93
    assert d.seq == 0x142


def test_mibeacon_plain_objects_and_legacy_encryption():
    d = decode(
        "AA:BB:CC:DD:EE:FF",
        {},
        {"fe95": build_mibeacon("AA:BB:CC:DD:EE:FF", 3, battery=12, motion=1)},
    )
    assert (d.battery, d.motion, d.seq) == (12, 1, 3)
    legacy = bytes([0x58, 0x30, 0xF2, 0x0A, 1]) + bytes(6) + b"\x01\x02\x03"  # version 3, encrypted
    d = decode("00:00:00:00:00:00", {}, {"fe95": legacy}, {"00:00:00:00:00:00": KNOWN_KEY})
    assert (d.fmt, d.dev, d.battery, d.extra["encrypted"]) == ("mibeacon", "00:00:00:00:00:00", None, 1)
    assert d.error is not None
    # Without a key a legacy frame is forwarded like a v4/v5 one: identity, counter, RSSI.
    d = decode("AA:BB:CC:DD:EE:FF", {}, {"fe95": legacy})
    assert (d.fmt, d.seq, d.extra["encrypted"], d.error) == ("mibeacon", 1, 1, None)


@given(
    uuid=st.uuids(),
    major=st.integers(0, 65535),
    minor=st.integers(0, 65535),
    power=st.integers(-100, 0),
)
def test_ibeacon_roundtrip(uuid, major, minor, power):
    d = decode(
        "00:00:00:00:00:01", {APPLE_COMPANY_ID: build_ibeacon(str(uuid), major, minor, power)}, {}
    )
    assert d.dev == f"ibeacon:{uuid}:{major}:{minor}"
    assert d.tx_power == power
    assert d.fmt == "ibeacon"


@given(
    ns=st.binary(min_size=10, max_size=10),
    inst=st.binary(min_size=6, max_size=6),
    tx0=st.integers(-100, 20),
)
def test_eddystone_uid_roundtrip(ns, inst, tx0):
    d = decode("00:00:00:00:00:02", {}, {EDDYSTONE_UUID: build_eddystone_uid(ns, inst, tx0)})
    assert d.dev == f"eddystone:{ns.hex()}:{inst.hex()}"
    # the wire's 1 m power range is -100..20 dBm: anything the frame puts outside is dropped
    assert d.tx_power == (tx0 - 41 if tx0 - 41 >= -100 else None)


@given(
    mv=st.integers(0, 65535),
    temp=st.floats(-40, 85),
    cnt=st.integers(0, 2**32 - 1),
    up=st.floats(0, 4e8),
)
def test_eddystone_tlm_roundtrip(mv, temp, cnt, up):
    d = decode("aa:bb:cc:00:00:03", {}, {"feaa": build_eddystone_tlm(mv, temp, cnt, up)})
    assert d.fmt == "eddystone-tlm"
    assert d.dev == "AA:BB:CC:00:00:03"
    assert d.extra["battery_mv"] == mv
    assert abs(float(d.extra["temperature_c"]) - temp) <= 1 / 256
    assert d.seq == cnt & 0x7FFFFFFF
    assert d.battery is None if mv == 0 else 0 <= d.battery <= 100


def test_tlm_battery_scale_and_eid():
    assert decode("x", {}, {"feaa": build_eddystone_tlm(3000, 20, 1, 1)}).battery == 100
    assert decode("x", {}, {"feaa": build_eddystone_tlm(2500, 20, 1, 1)}).battery == 50
    assert decode("x", {}, {"feaa": build_eddystone_tlm(1800, 20, 1, 1)}).battery == 0
    d = decode("x", {}, {"feaa": build_eddystone_eid(bytes.fromhex("0102030405060708"))})
    assert d.dev == "eddystone-eid:0102030405060708"
    assert d.fmt == "eddystone-eid"


def test_raw_fallback_keeps_bytes():
    d = decode(
        "de:ad:be:ef:00:01",
        {0x0157: b"\x01\x02"},
        {"0000180f-0000-1000-8000-00805f9b34fb": b"\x55"},
    )
    assert d.fmt == "raw"
    assert d.dev == "DE:AD:BE:EF:00:01"
    assert d.extra == {"svc:180f": "55", "mfr:0157": "0102"}


@settings(max_examples=300)
@given(data=st.binary(max_size=40), which=st.sampled_from(["fe95", "feaa", "apple"]))
def test_garbage_is_never_dropped(data, which):
    """Any bytes give a record with an identity: the frame's own, or the address (raw)."""
    svc = {which: data} if which != "apple" else {}
    mfr = {APPLE_COMPANY_ID: b"\x02\x15" + data} if which == "apple" else {}
    d = decode("00:11:22:33:44:55", mfr, svc, {"00:11:22:33:44:55": KNOWN_KEY})
    assert d.dev
    if d.fmt == "raw":
        assert d.dev == "00:11:22:33:44:55"
        assert d.extra.get(f"svc:{which}", d.extra.get("mfr:004c")) is not None


def test_filters_match_any_rule():
    f = AdvertFilter.build(
        addresses=["aa:bb:cc:dd:ee:ff"], service_uuids=["fe95"], manufacturer_ids=[0x004C]
    )
    assert f.accepts("AA:BB:CC:DD:EE:FF", {}, {})
    assert f.accepts("00:00:00:00:00:00", {}, {MIBEACON_UUID: b""})
    assert f.accepts("00:00:00:00:00:00", {0x004C: b""}, {})
    assert not f.accepts("00:00:00:00:00:00", {0x0006: b""}, {"feaa": b""})
    assert AdvertFilter.build().accepts("x", {}, {})


def test_privacy_hash_is_keyed_and_stable():
    a = privacy_hash("AA:BB:CC:DD:EE:FF", b"salt-1")
    assert a == privacy_hash("AA:BB:CC:DD:EE:FF", b"salt-1")
    assert a != privacy_hash("AA:BB:CC:DD:EE:FF", b"salt-2")
    assert "AA" not in a
    assert a.startswith("h:")
    assert len(a) == 34


def test_mibeacon_public_vector_decrypts():
    """xiaomi-ble's published v5 test vector: the MIC only verifies with the right nonce."""
    data = bytes.fromhex("5858e4162c84535638c1a42b6ef2e91200006c884d9e")
    key = bytes.fromhex("a115210eed7a88e50ad52662e732a9fb")
    d = decode("A4:C1:38:56:53:84", {}, {"fe95": data}, {"A4:C1:38:56:53:84": key})
    assert d.dev == "A4:C1:38:56:53:84"
    assert d.extra["pid"] == 0x16E4
    assert d.seq == (0x12 << 8) | 0x2C  # extended counter 0x000012, frame counter 0x2c
    assert "MIC" in str(
        decode("A4:C1:38:56:53:84", {}, {"fe95": data}, {"A4:C1:38:56:53:84": bytes(16)}).error
    )


# -- MiBeacon objects, tolerant parsing, legacy encryption, raw fallback -----------------


def _obj(otype: int, value: bytes) -> bytes:
    return otype.to_bytes(2, "little") + bytes([len(value)]) + value


def _plain(objects: bytes, mac: str = "A4:C1:38:00:00:01", pid: int = 0x0AF2) -> Decoded:
    frame = build_mibeacon(mac, 9, pid=pid, objects=objects)
    return decode(mac, {}, {"fe95": frame})


@pytest.mark.parametrize(
    ("otype", "value", "battery"),
    [(0x4803, b"\x57", 87), (0x4C03, b"\x32", 50), (0x5003, b"\x64", 100), (0x100A, b"\x09", 9)],
)
def test_battery_objects(otype, value, battery):
    assert _plain(_obj(otype, value)).battery == battery


def test_body_thermometer_battery_0x2000():
    # MMC-T201 frame from xiaomi-ble's tests: body temperature fit and battery 81 %.
    d = decode(
        "00:81:F9:DD:6F:C1",
        {},
        {"fe95": bytes.fromhex("7022db00 6f c16fddf98100 09 0020 05 c60d630d51".replace(" ", ""))},
    )
    assert d.battery == 81
    assert abs(float(d.extra["temperature_c"]) - 36.87) < 0.05


@pytest.mark.parametrize(
    ("objects", "motion", "extra"),
    [
        (_obj(0x4818, (0).to_bytes(2, "little")), 1, {"no_motion_s": 0}),
        (_obj(0x4818, (120).to_bytes(2, "little")), 0, {"no_motion_s": 120}),
        (_obj(0x1017, (3).to_bytes(4, "little")), 1, {"no_motion_s": 3}),  # 3 s after motion
        (_obj(0x1017, (30).to_bytes(4, "little")), 1, {"no_motion_s": 30}),
        (_obj(0x1017, (31).to_bytes(4, "little")), 0, {"no_motion_s": 31}),
        (_obj(0x101B, b"\x00"), 0, {}),
        (_obj(0x4A08, struct.pack("<f", 123.0)), 1, {"illuminance_lux": 123.0}),
        (_obj(0x0003, b"\x01"), 1, {}),
    ],
)
def test_motion_objects(objects, motion, extra):
    d = _plain(objects)
    assert d.motion == motion
    for k, v in extra.items():
        assert d.extra[k] == v


def test_sensor_readings_carry_units():
    d = _plain(
        _obj(0x100D, struct.pack("<hH", 215, 563))
        + _obj(0x1007, (812).to_bytes(3, "little"))
        + _obj(0x1019, b"\x00")
        + _obj(0x4E16, struct.pack("<BII", 2, 7215, 0))
        + _obj(0x1001, bytes([1, 0, 1]))
    )
    assert d.extra["temperature_c"] == 21.5
    assert d.extra["humidity_pct"] == 56.3
    assert d.extra["illuminance_lux"] == 812
    assert d.extra["door_open"] == 1
    assert d.extra["weight_kg"] == 72.15
    assert (d.extra["button"], d.extra["button_index"]) == ("double_press", 1)


def test_trailing_byte_is_counted_not_fatal():
    # MMC-W505 frame (xiaomi-ble tests): one byte after its only object.
    frame = bytes.fromhex("70229103 0fdbab531824d0 09 0a00 02 750d 07".replace(" ", ""))
    d = decode("D0:24:18:53:AB:DB", {}, {"fe95": frame})
    assert (d.dev, d.error, d.extra["temperature_c"], d.extra["trailing_bytes"]) == (
        "D0:24:18:53:AB:DB",
        None,
        34.45,
        1,
    )
    # Theengs' MiLamp sample: motion object then a stray zero.
    d = decode("AA:BB:CC:DD:EE:FF", {}, {"fe95": bytes.fromhex("4030dd031d0300010100")})
    assert (d.motion, d.extra["trailing_bytes"]) == (1, 1)


object_ids = st.sampled_from(sorted(MIBEACON_OBJECTS))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.one_of(object_ids, st.integers(0, 0xFFFF)), st.binary(max_size=12)), max_size=5),
    st.binary(max_size=3),
    st.integers(0, 0xFFFF),
)
def test_any_objects_decode_with_documented_names(objects, tail, pid):
    """Whatever objects a frame carries: no exception, every extra name documented."""
    body = b"".join(_obj(t, v) for t, v in objects) + tail
    d = _plain(body, pid=pid)
    assert d.fmt == "mibeacon"
    for name in d.extra:
        assert name in EXTRA_FIELDS or (name.startswith("obj_") and len(name) == 8), name
    assert d.battery is None or 0 <= d.battery <= 100
    assert d.motion in (None, 0, 1)


@settings(max_examples=100, deadline=None)
@given(
    mac=macs,
    counter=st.integers(0, 255),
    ext=st.integers(0, 2**24 - 1),
    battery=st.integers(0, 100),
    key=st.binary(min_size=12, max_size=12),
    version=st.sampled_from([2, 3]),
)
def test_legacy_encryption_roundtrip(mac, counter, ext, battery, key, version):
    frame = build_mibeacon(mac, counter, battery=battery, bindkey=key, ext_counter=ext, version=version)
    d = decode(mac, {}, {"fe95": frame}, {mac: key})
    assert (d.dev, d.battery, d.extra["unauthenticated"]) == (mac, battery, 1)
    assert d.seq == (ext << 8) | counter
    # Without the key: forwarded, marked encrypted, nothing misread.
    d = decode(mac, {}, {"fe95": frame})
    assert (d.battery, d.extra["encrypted"], d.error) == (None, 1, None)


def test_legacy_public_vector_decrypts():
    """xiaomi-ble's YLKG07YL (v3, 12-byte key) frame: a dimmer press, one press."""
    frame = bytes.fromhex("5830b603d28b98c54124f8c3491476757e00000099")
    mac = "F8:24:41:C5:98:8B"
    d = decode(mac, {}, {"fe95": frame}, {mac: bytes.fromhex("b853075158487ca39a5b5ea9")})
    assert (d.extra["button"], d.extra["button_value"], d.error) == ("press", 1, None)
    wrong = decode(mac, {}, {"fe95": frame}, {mac: bytes.fromhex("b853075158487aa39a5b5ea9")})
    assert wrong.error is not None and "button" not in wrong.extra


@pytest.mark.parametrize(
    ("mfr", "svc", "fmt"),
    [
        ({}, {"feaa": bytes.fromhex("22000102")}, "raw"),  # unknown Eddystone frame type
        ({}, {"feaa": bytes.fromhex("2001") + bytes(16)}, "eddystone-tlm"),  # encrypted TLM
        ({APPLE_COMPANY_ID: b"\x02\x15" + bytes(20)}, {}, "raw"),  # iBeacon too short
        ({}, {"fe95": b"\x50\x20"}, "raw"),  # MiBeacon shorter than its header
    ],
)
def test_not_understood_frames_fall_back_to_raw(mfr, svc, fmt):
    d = decode("C0:FF:EE:00:00:01", mfr, svc)
    assert d.fmt == fmt
    assert d.dev == "C0:FF:EE:00:00:01"


def test_ibeacon_24_byte_payload_and_bad_power():
    payload = build_ibeacon("fda50693-a4e2-4fb1-afcf-c6eb07647825", 1, 2, -59) + b"\x1a"
    d = decode("x", {APPLE_COMPANY_ID: payload}, {})
    assert (d.fmt, d.tx_power, d.extra["trailing_bytes"]) == ("ibeacon", -59, 1)
    # BM2 battery monitors put +100 in the power byte: identity kept, no power claimed.
    bm2 = bytes.fromhex("0215655f83caae16a10a702e31f30d58dd82f644000064")
    d = decode("x", {APPLE_COMPANY_ID: bm2}, {})
    assert (d.fmt, d.tx_power, d.extra["tx_raw"]) == ("ibeacon", None, 100)


def test_kkm_sensor_frame():
    # BlueCharm BC08 sample from the Theengs decoder tests.
    d = decode("DD:34:02:00:00:01", {}, {"feaa": bytes.fromhex("21010b0c1318000021fffdfc12")})
    assert d.extra["battery_mv"] == 3091
    assert d.extra["temperature_c"] == 24.0
    assert (d.extra["acc_x_mg"], d.extra["acc_y_mg"], d.extra["acc_z_mg"]) == (33, -3, -1006)
    assert d.dev == "DD:34:02:00:00:01"
