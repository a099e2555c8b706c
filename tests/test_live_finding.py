"""Find Hub (FMDN) EIDs and Find My keys: rotating identifiers resolved to stable tags.

The EID arithmetic is checked against a second, independent implementation written
here from the curve's published constants (SEC 2 v1.0, secp160r1) with plain affine
double-and-add, so the production path (the ``ecdsa`` package) is not its own judge.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from live_bridge.decoders import APPLE_COMPANY_ID, build_findhub, build_findmy, decode
from live_bridge.finding import ROTATION_PERIOD_S, Resolver, eid_block, eid_scalar, fmdn_eid

# SEC 2 v1.0, section 2.4.2: secp160r1 (p, a, b, G, n), big-endian hex.
P = int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF7FFFFFFF", 16)
A = int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF7FFFFFFC", 16)
B = int("1C97BEFC54BD7A8B65ACF89F81D4D4ADC565FA45", 16)
GX = int("4A96B5688EF573284664698968C38BB913CBFC82", 16)
GY = int("23A628553168947D59DCC912042351377AC5FB32", 16)
N = int("0100000000000000000001F4C8F927AED3CA752257", 16)


def _add(p1, p2):
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2 and (y1 + y2) % P == 0:
        return None
    # tangent slope when doubling, chord slope otherwise
    num, den = (3 * x1 * x1 + A, 2 * y1) if p1 == p2 else (y2 - y1, x2 - x1)
    lam = num * pow(den, -1, P) % P
    x3 = (lam * lam - x1 - x2) % P
    return x3, (lam * (x1 - x3) - y1) % P


def _mul(k, point):
    out = None
    while k:
        if k & 1:
            out = _add(out, point)
        point = _add(point, point)
        k >>= 1
    return out


def test_curve_constants_are_a_curve_of_order_n():
    assert (GY * GY - (GX**3 + A * GX + B)) % P == 0
    assert _mul(N, (GX, GY)) is None


def test_eid_block_layout():
    # Spec: 11 x 0xFF, K, TS (BE u32), 11 x 0x00, K, TS; TS with its low K bits cleared.
    block = eid_block(0x12345678)
    assert block == bytes([0xFF] * 11 + [10]) + bytes.fromhex("12345400") + bytes(11) + b"\x0a" + bytes.fromhex(
        "12345400"
    )
    assert len(block) == 32


@settings(max_examples=25, deadline=None)
@given(eik=st.binary(min_size=32, max_size=32), ts=st.integers(0, 2**32 - 1))
def test_eid_matches_independent_arithmetic(eik, ts):
    r = eid_scalar(eik, ts)
    assert 0 <= r < N
    point = _mul(r, (GX, GY))
    expected = b"\x00" * 20 if point is None else point[0].to_bytes(20, "big")
    assert fmdn_eid(eik, ts) == expected
    # The EID holds for the whole rotation period and changes with the next one.
    start = ts >> 10 << 10
    assert fmdn_eid(eik, start + ROTATION_PERIOD_S - 1) == expected
    if start + ROTATION_PERIOD_S < 2**32:
        assert fmdn_eid(eik, start + ROTATION_PERIOD_S) != expected


EIK = bytes.fromhex("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
NOW = 1_780_000_000.0


def _heard(resolver, eid, now, address="5A:00:00:00:00:01"):
    return decode(address, {}, {"feaa": build_findhub(eid)}, resolver=resolver, now=now)


def test_resolver_maps_rotating_eids_and_learns_clock_offset():
    offset = 123_456.0  # tag clock runs from provisioning, far from Unix time
    r = Resolver({"pallet-7": EIK}, clock_offsets={"pallet-7": offset})
    for k in range(5):  # an hour and more: five rotation periods, five different EIDs
        now = NOW + k * ROTATION_PERIOD_S
        d = _heard(r, fmdn_eid(EIK, int(now + offset)), now)
        assert (d.fmt, d.dev) == ("findhub", "pallet-7")
        assert "eid" in d.extra
    # The tag's clock has drifted two periods ahead: found in a neighbouring period,
    # its offset is corrected and remembered, so the next frame is found at the centre.
    drifted = offset + 2 * ROTATION_PERIOD_S
    now = NOW + 10 * ROTATION_PERIOD_S
    d = _heard(r, fmdn_eid(EIK, int(now + drifted)), now)
    assert d.dev == "pallet-7"
    assert r.tags[0].offset_s == pytest.approx(drifted, abs=ROTATION_PERIOD_S)
    assert r.counters["findhub clock corrected"] == 1
    later = now + 3 * ROTATION_PERIOD_S
    assert _heard(r, fmdn_eid(EIK, int(later + drifted)), later).dev == "pallet-7"
    assert r.counters["findhub clock corrected"] == 1


def test_unknown_keys_are_anonymous():
    r = Resolver({"pallet-7": EIK})
    stranger = fmdn_eid(bytes(32), int(NOW))
    d = _heard(r, stranger, NOW)
    assert d.dev == "anon:findhub"
    assert "eid" not in d.extra
    assert r.counters["resolved findhub"] == 0
    # With no resolver at all (a Theengs gateway, a site with no keys) the same.
    assert decode("5A:00:00:00:00:02", {}, {"feaa": build_findhub(stranger)}).dev == "anon:findhub"


def test_findmy_keys_resolve_by_full_key_and_by_address():
    key = bytes(range(28))
    other = bytes(range(1, 29))
    r = Resolver(findmy={"cart-3": [key]})
    address, payload = build_findmy(key)
    d = decode(address, {APPLE_COMPANY_ID: payload}, {}, resolver=r, now=NOW)
    assert (d.fmt, d.dev) == ("findmy", "cart-3")
    # Near its owner a tag sends the short frame: only the address carries key bytes.
    d = decode(address, {APPLE_COMPANY_ID: bytes([0x12, 0x02, 0x00, 0x01])}, {}, resolver=r, now=NOW)
    assert d.dev == "cart-3"
    address, payload = build_findmy(other)
    assert decode(address, {APPLE_COMPANY_ID: payload}, {}, resolver=r, now=NOW).dev == "anon:findmy"


def test_server_counts_anonymous_per_zone_without_tracking():
    from live_bridge.server import ServerCore
    from live_bridge.wire import Advert, Batch, batch_topic, encode_batch
    from tests.test_live_server import KEY, T0, site_config

    core = ServerCore(site_config(), {"gw-a": KEY}, clock="event")
    ads = [Advert(t=T0, dev="anon:findhub", rssi=-70.0, fmt="findhub"), Advert(t=T0, dev="tag-1", rssi=-60.0)]
    assert core.handle(batch_topic("gw-a"), encode_batch(Batch(gw="gw-a", seq=0, sent=T0, ads=ads), KEY), T0) == []
    core.flush()
    assert core.devices.ids == ["tag-1"]
    (key,) = [k for k in core.counters if k.startswith("anonymous findhub in ")]
    assert core.counters[key] == 1


def test_clock_offset_found_from_one_frame():
    from live_bridge.finding import find_clock_offset

    tag_clock = 37 * ROTATION_PERIOD_S + 100  # 37 periods after provisioning
    eid = fmdn_eid(EIK, tag_clock)
    offset = find_clock_offset(EIK, eid, NOW, max_clock_s=64 * ROTATION_PERIOD_S)
    assert offset is not None
    assert abs((NOW + offset) - tag_clock) <= ROTATION_PERIOD_S  # within the same period
    r = Resolver({"t": EIK}, clock_offsets={"t": offset}, search_periods=0)
    assert _heard(r, eid, NOW).dev == "t"
    assert find_clock_offset(bytes(32), eid, NOW, max_clock_s=8 * ROTATION_PERIOD_S) is None


def test_gateway_config_resolves_findhub_tags(tmp_path):
    from live_bridge.gateway import Gateway, GatewayConfig

    cfg = GatewayConfig(
        id="gw-a",
        key_hex=(b"k" * 32).hex(),
        spool={"path": tmp_path / "g.sqlite"},
        findhub={"pallet-7": {"eik_hex": EIK.hex(), "clock_offset_s": 0}},
        findmy={"cart-3": [bytes(range(28)).hex()]},
        privacy={"enabled": True, "salt_hex": "00ff"},
    )
    gw = Gateway(cfg)
    gw.on_advertisement("5A:00:00:00:00:01", -70, {}, {"feaa": build_findhub(fmdn_eid(EIK, int(NOW)))}, t=NOW)
    gw.on_advertisement("5A:00:00:00:00:02", -71, {}, {"feaa": build_findhub(bytes(20))}, t=NOW)
    devs = [a.dev for a in gw._pending]
    assert devs[0].startswith("h:")  # the tag id, hashed like any other in privacy mode
    assert devs[1] == "anon:findhub"  # never hashed: the server counts it per zone
    counters = gw.status_counters()
    assert (counters["resolved findhub"], counters["anonymous findhub"]) == (1, 1)
    with pytest.raises(ValueError, match="28 bytes"):
        GatewayConfig(id="g", key_hex=(b"k" * 32).hex(), findmy={"x": ["abcd"]})
    gw.spool.close()


def test_eids_match_an_independent_implementation():
    """21 EIDs computed by GoogleFindMyTools' own generator (tests/data/README.md)."""
    import json
    from pathlib import Path

    data = json.loads((Path(__file__).parent / "data" / "vectors" / "fmdn_eid.json").read_text())
    for v in data["vectors"]:
        assert fmdn_eid(bytes.fromhex(v["eik"]), v["ts"]).hex() == v["eid"], v


def test_32_byte_eid_frame_is_read_whole_and_stays_anonymous():
    frame = bytes([0x40]) + bytes(range(32)) + b"\x07"
    d = decode("5A:00:00:00:00:03", {}, {"feaa": frame}, resolver=Resolver({"t": EIK}), now=NOW)
    assert (d.fmt, d.dev) == ("findhub", "anon:findhub")
