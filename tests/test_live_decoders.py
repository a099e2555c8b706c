"""Decoders, filters and privacy hashing: real frames in, fields out; garbage is refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from live_bridge.decoders import (
    APPLE_COMPANY_ID,
    EDDYSTONE_UUID,
    MIBEACON_UUID,
    DecodeError,
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
    with pytest.raises(DecodeError, match="MIC"):
        decode(mac, {}, {MIBEACON_UUID: frame}, {mac: other})
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
    with pytest.raises(DecodeError, match="legacy"):
        decode("AA:BB:CC:DD:EE:FF", {}, {"fe95": legacy}, {"AA:BB:CC:DD:EE:FF": KNOWN_KEY})


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
    assert d.tx_power == tx0 - 41


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
    assert abs(float(d.extra["temp_c"]) - temp) <= 1 / 256
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
def test_garbage_only_raises_decode_error(data, which):
    svc = {which: data} if which != "apple" else {}
    mfr = {APPLE_COMPANY_ID: b"\x02\x15" + data} if which == "apple" else {}
    try:
        d = decode("00:11:22:33:44:55", mfr, svc, {"00:11:22:33:44:55": KNOWN_KEY})
    except DecodeError as exc:
        outcome = exc.reason
    else:
        outcome = d.dev
    assert outcome


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
    with pytest.raises(DecodeError, match="MIC"):
        decode("A4:C1:38:56:53:84", {}, {"fe95": data}, {"A4:C1:38:56:53:84": bytes(16)})
