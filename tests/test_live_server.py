"""Wire format, spool, server verification and adapters, without a broker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.contract import GatewayInfo
from engine.pipeline import EngineConfig
from live_bridge.config import KeyRing, load_keys, new_keys_toml
from live_bridge.gateway import ConfigError, Gateway, GatewayConfig, load_gateway_config
from live_bridge.server import ServerCore, ZoneChangeSink
from live_bridge.spool import Spool
from live_bridge.wire import (
    DEADLETTER_TOPIC,
    POSITIONS_TOPIC,
    Advert,
    Batch,
    WireError,
    batch_topic,
    encode_batch,
    encode_payload,
    json_schemas,
    verify_and_parse,
)
from siteplan.zones import ZoneIndex

KEY = bytes(range(32))
GW_XYZ = np.array([[0, 0, 1.0], [12, 0, 1.0], [12, 12, 1.0], [0, 12, 1.0]])
GW_IDS = ("gw-a", "gw-b", "gw-c", "gw-d")
T0 = 1_700_000_000.0


def site_config(**kw) -> EngineConfig:
    zones = ZoneIndex.from_points(
        [
            ("west", "storage", [(0, 0), (6, 0), (6, 12), (0, 12)]),
            ("east", "packing", [(6, 0), (12, 0), (12, 12), (6, 12)]),
        ]
    )
    return EngineConfig(
        gateways=GatewayInfo(GW_IDS, GW_XYZ),
        zones=zones,
        bounds=(0, 0, 12, 12),
        obstacle_map=None,
        **kw,
    )


def rssi_at(xy: tuple[float, float], tx: float = -59.0, n: float = 2.0) -> np.ndarray:
    """Log-distance mean RSSI (docs/references.md section 1) from a tag at 1 m height."""
    d = np.hypot(GW_XYZ[:, 0] - xy[0], GW_XYZ[:, 1] - xy[1])
    return tx - 10 * n * np.log10(np.maximum(d, 0.1))


def make_batch(gw: str, seq: int, ads: list[Advert]) -> Batch:
    return Batch(gw=gw, seq=seq, sent=T0, ads=ads)


def test_sign_verify_and_tamper():
    body = encode_batch(make_batch("gw-a", 0, [Advert(t=T0, dev="d1", rssi=-70.0)]), KEY)
    assert json.loads(body)["batch"]["gw"] == "gw-a"  # the envelope is plain JSON
    assert verify_and_parse(body, {"gw-a": KEY}).ads[0].dev == "d1"
    tampered = body.replace(b"-70.0", b"-40.0")
    with pytest.raises(WireError, match="bad signature"):
        verify_and_parse(tampered, {"gw-a": KEY})
    with pytest.raises(WireError, match="unknown gateway"):
        verify_and_parse(body, {"gw-b": KEY})
    with pytest.raises(WireError, match="malformed envelope"):
        verify_and_parse(b'{"batch":{}}', {"gw-a": KEY})
    bad_schema = encode_payload(b'{"v":1,"gw":"gw-a","seq":-1,"sent":0,"ads":[]}', KEY)
    with pytest.raises(WireError, match=r"schema violation: seq"):
        verify_and_parse(bad_schema, {"gw-a": KEY})


@settings(max_examples=200)
@given(body=st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_verification(body):
    with pytest.raises(WireError):
        verify_and_parse(body, {"gw-a": KEY})


def feed(
    core: ServerCore,
    positions: dict[str, tuple[float, float]],
    seconds: int,
    t0: float = T0,
    seq0: int = 0,
) -> list[tuple[str, bytes, bool]]:
    """Ten adverts a second per device per gateway, one batch per gateway per second."""
    out = []
    for s in range(seconds):
        for g, gw in enumerate(GW_IDS):
            ads = [
                Advert(
                    t=t0 + s + k / 10, dev=dev, rssi=float(rssi_at(xy)[g]), seq=s * 10 + k, bat=80
                )
                for dev, xy in positions.items()
                for k in range(10)
            ]
            out += core.handle(
                batch_topic(gw), encode_batch(make_batch(gw, seq0 + s, ads), KEY), t0 + s + 1
            )
            if core.clock == "event":
                out += core.tick(t0 + s + 1)
    return out


def test_server_core_locates_and_rejects_with_reasons():
    keys = dict.fromkeys(GW_IDS, KEY)
    core = ServerCore(site_config(), keys, clock="event", sink=ZoneChangeSink())
    truth = {"tag-1": (3.0, 4.0), "tag-2": (9.0, 8.0)}
    out = feed(core, truth, 10)
    positions = [
        p
        for topic, body, _ in out
        if topic == POSITIONS_TOPIC
        for p in json.loads(body)["positions"]
    ]
    assert positions, "no positions published"
    for p in positions:
        x, y = truth[p["dev"]]
        assert np.hypot(p["x"] - x, p["y"] - y) < 0.5
        assert p["zone"] == ("west" if p["dev"] == "tag-1" else "east")
        assert p["bat"] == 80
        assert abs(p["t"] - round(p["t"])) < 1e-6
        assert p["t"] > T0
    # Rejections: replayed sequence, wrong key, gateway not in the plan, topic spoofing.
    replay = encode_batch(make_batch("gw-a", 3, [Advert(t=T0 + 20, dev="tag-1", rssi=-60.0)]), KEY)
    dead = core.handle(batch_topic("gw-a"), replay, T0 + 20)
    assert dead[0][0] == DEADLETTER_TOPIC
    assert json.loads(dead[0][1])["reason"] == "replayed batch sequence"
    forged = encode_batch(
        make_batch("gw-a", 99, [Advert(t=T0 + 20, dev="tag-1", rssi=-60.0)]), b"x" * 32
    )
    assert (
        json.loads(core.handle(batch_topic("gw-a"), forged, T0)[0][1])["reason"] == "bad signature"
    )
    stranger = encode_batch(make_batch("gw-z", 0, []), KEY)
    core.reload_keys(KeyRing({**core.ring.keys, "gw-z": (KEY,)}))
    assert (
        json.loads(core.handle(batch_topic("gw-z"), stranger, T0)[0][1])["reason"]
        == "gateway not in site plan"
    )
    spoof = encode_batch(make_batch("gw-b", 500, []), KEY)
    assert (
        "topic does not match"
        in json.loads(core.handle(batch_topic("gw-c"), spoof, T0)[0][1])["reason"]
    )
    c = core.counters
    assert c["rejected: replayed batch sequence"] == 1
    assert c["rejected: bad signature"] == 1
    assert c["batches_accepted"] == 40
    assert c["sightings"] == 40 * 20
    # Reordering inside the replay window is fine; the same sequence twice is not.
    late = encode_batch(make_batch("gw-a", 12, []), KEY)
    early = encode_batch(make_batch("gw-a", 11, []), KEY)
    assert core.handle(batch_topic("gw-a"), late, T0) == []
    assert core.handle(batch_topic("gw-a"), early, T0) == []
    assert core.handle(batch_topic("gw-a"), early, T0)[0][0] == DEADLETTER_TOPIC


def test_zone_change_events_and_wall_clock():
    core = ServerCore(
        site_config(), dict.fromkeys(GW_IDS, KEY), clock="wall", sink=ZoneChangeSink()
    )
    feed(core, {"mover": (3.0, 6.0)}, 6)
    first = core.tick(T0 + 6)
    assert first
    assert first[0][0] == POSITIONS_TOPIC
    feed(core, {"mover": (9.5, 6.0)}, 8, t0=T0 + 6, seq0=6)
    out = core.tick(T0 + 30)  # wall clock closes the windows even with no new data
    events = [json.loads(b) for t, b, _ in out if t.endswith("/events")]
    assert [(e["kind"], e["detail"]["from"], e["detail"]["to"]) for e in events] == [
        ("zone-change", "west", "east")
    ]


def test_adapters_theengs_and_espresense():
    from live_bridge.decoders import build_ibeacon, build_mibeacon

    core = ServerCore(site_config(), {}, clock="event", adapters=["theengs", "espresense"])
    frame = build_mibeacon("AA:BB:CC:DD:EE:01", 5, battery=44)
    theengs = json.dumps(
        {
            "id": "AA:BB:CC:DD:EE:01",
            "rssi": -71,
            "servicedatauuid": "0xfe95",
            "servicedata": frame.hex(),
        }
    ).encode()
    assert core.handle("home/gw-a/BTtoMQTT/AABBCCDDEE01", theengs, T0) == []
    ib = (b"\x4c\x00" + build_ibeacon("e5ca1ade-f007-ba11-0000-000000000000", 1, 2, -65)).hex()
    assert (
        core.handle(
            "home/gw-b/BTtoMQTT/112233445566",
            json.dumps({"id": "11:22:33:44:55:66", "rssi": -80, "manufacturerdata": ib}).encode(),
            T0,
        )
        == []
    )
    esp = json.dumps(
        {"id": "iBeacon:e5ca1ade-f007-ba11-0000-000000000000-1-2", "rssi": -75, "rssi@1m": -61}
    )
    assert core.handle("espresense/devices/iBeacon:e5ca/gw-c", esp.encode(), T0) == []
    core.flush()  # adverts reach the engine (and the id table) once per inbox drain
    tx = {d: core.engine.tx_power[core.devices.code(d)] for d in core.devices.ids}
    # One id per physical tag whatever the source: ESPresense's iBeacon id is translated,
    # so its rssi@1m (-61, the last one ingested) lands on the same device as the frame's.
    assert tx == {
        "AA:BB:CC:DD:EE:01": -59.0,  # MiBeacon: the engine's default
        "ibeacon:e5ca1ade-f007-ba11-0000-000000000000:1:2": -61.0,
    }
    # ESPresense's "flora:<mac>" is the same LYWSD03MMC/flower sensor a TagTwin gateway
    # names by MAC; its battery field is mapped.
    esp = json.dumps({"id": "flora:aabbccddee01", "mac": "aabbccddee01", "rssi": -70, "batt": 77})
    assert core.handle("espresense/devices/flora:aabbccddee01/gw-c", esp.encode(), T0 + 1) == []
    core.flush()
    assert len(core.devices) == 2
    assert core.engine.tx_power.shape[0] == 2
    bad = core.handle("espresense/devices/x/kitchen", esp.encode(), T0)
    assert json.loads(bad[0][1])["reason"] == "gateway not in site plan"
    bad = core.handle("espresense/devices/x/gw-a", b'{"id":"x","rssi":500}', T0)
    assert "rssi" in json.loads(bad[0][1])["detail"]
    off = ServerCore(site_config(), {}, clock="event")
    assert (
        json.loads(off.handle("espresense/devices/x/gw-a", esp.encode(), T0)[0][1])["reason"]
        == "unexpected topic"
    )


def test_spool_order_cap_policy_and_persistent_seq(tmp_path: Path):
    sp = Spool(tmp_path / "s.sqlite", max_bytes=1000)
    assert [sp.next_seq() for _ in range(3)] == [0, 1, 2]
    for i in range(10):
        assert sp.put("t", bytes([i]) * 150)
    assert sp.bytes <= 1000
    assert sp.dropped == 4
    rows = sp.peek(0, 100)
    assert [r[2][0] for r in rows] == list(range(4, 10))
    sp.ack(rows[0][0])
    sp.close()
    again = Spool(tmp_path / "s.sqlite", max_bytes=1000, full_policy="drop-newest")
    assert again.next_seq() == 3
    assert again.rows == 5
    assert again.put("t", b"x" * 150)
    assert not again.put("t", b"y" * 150)
    assert again.dropped == 1
    assert [r[2][:1] for r in again.peek(0, 100)][-1] == b"x"


def test_gateway_core_filters_decodes_hashes(tmp_path: Path):
    from live_bridge.decoders import build_ibeacon, build_mibeacon

    key = bytes(range(16))
    cfg = GatewayConfig(
        id="gw-a",
        key_hex=KEY.hex(),
        spool={"path": tmp_path / "g.sqlite"},
        filter={"service_uuids": ["fe95"]},
        bindkeys={"AA:BB:CC:DD:EE:01": key.hex()},
        privacy={"enabled": True, "salt_hex": "00ff"},
        batch={"max_size": 3},
    )
    gw = Gateway(cfg)
    frame = build_mibeacon("AA:BB:CC:DD:EE:01", 9, battery=61, bindkey=key)
    gw.on_advertisement("AA:BB:CC:DD:EE:01", -70, {}, {"fe95": frame}, t=T0)
    gw.on_advertisement("AA:BB:CC:DD:EE:01", -71, {}, {"fe95": b"\x00"}, t=T0)  # broken frame
    gw.on_advertisement(
        "00:00:00:00:00:09",
        -60,
        {76: build_ibeacon("e5ca1ade-f007-ba11-0000-000000000000", 1, 1)},
        {},
    )
    gw.on_advertisement("AA:BB:CC:DD:EE:01", 127, {}, {"fe95": frame}, t=T0)  # RSSI n/a
    gw.on_advertisement("AA:BB:CC:DD:EE:01", -72, {}, {"fe95": frame}, t=T0 + 1)  # third: full
    assert gw.counters["filtered_out"] == 1
    # The broken frame is counted and still forwarded (raw, same address): never dropped.
    assert gw.counters["decode_error: mibeacon: frame shorter than 5 bytes"] == 1
    assert gw.counters["invalid advert: rssi"] == 1
    assert gw.spool.rows == 1
    assert gw.counters["batches"] == 1
    ((_, topic, body),) = gw.spool.peek(0, 10)
    batch = verify_and_parse(body, {"gw-a": KEY})
    assert topic == batch_topic("gw-a")
    assert batch.seq == 0
    assert [a.bat for a in batch.ads] == [61, None, 61]
    assert [a.fmt for a in batch.ads] == ["mibeacon", "raw", "mibeacon"]
    assert [a.rssi for a in batch.ads] == [
        -70,
        -71,
        -72,
    ]
    assert len({a.dev for a in batch.ads}) == 1
    assert batch.ads[0].dev.startswith("h:")
    assert "AA:BB" not in body.decode()
    gw.spool.close()


def test_config_errors_name_file_and_field(tmp_path: Path):
    p = tmp_path / "gateway.toml"
    p.write_text('id = "gw 1"\nkey_hex = "zz"\n[batch]\nmax_size = 0\n')
    with pytest.raises(ConfigError) as err:
        load_gateway_config(p)
    text = str(err.value)
    assert str(p) in text
    assert "id:" in text
    assert "key_hex:" in text
    assert "batch.max_size" in text
    k = tmp_path / "keys.toml"
    k.write_text('[keys]\n"gw-a" = "abcd"\n')
    with pytest.raises(ConfigError, match=r"keys\.gw-a: expected at least 32 hex"):
        load_keys(k)
    k.write_text(new_keys_toml(["gw-a", "gw-b"]))
    assert set(load_keys(k)) == {"gw-a", "gw-b"}


def test_wire_format_doc_is_generated_from_code():
    from live_bridge.wire import wire_format_markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "wire-format.md"
    text = doc.read_text()
    assert text == wire_format_markdown(), "docs/wire-format.md is stale: regenerate it"
    for name, schema in json_schemas().items():
        assert json.dumps(schema, indent=2, sort_keys=True) in text, (
            f"{name} schema in docs is stale"
        )


def test_positions_json_matches_model():
    from live_bridge.wire import PositionBatch

    core = ServerCore(site_config(), dict.fromkeys(GW_IDS, KEY), clock="event")
    out = feed(core, {"tag-1": (5.0, 5.0)}, 8)
    body = next(b for t, b, _ in out if t == POSITIONS_TOPIC)
    PositionBatch.model_validate_json(body)
    assert time.time() > 0


def test_keys_command_writes_one_key_per_gateway_and_never_overwrites(tmp_path: Path):
    from typer.testing import CliRunner

    from tagtwin.cli import DEMO_SCENARIO, app

    out = tmp_path / "keys.toml"
    first = CliRunner().invoke(app, ["keys", str(DEMO_SCENARIO), "--out", str(out)])
    assert first.exit_code == 0, first.output
    keys = load_keys(out)
    assert len(keys) == 10
    assert all(len(k) == 32 for k in keys.values())
    assert len(set(keys.values())) == 10
    again = CliRunner().invoke(app, ["keys", str(DEMO_SCENARIO), "--out", str(out)])
    assert again.exit_code == 2
    assert load_keys(out) == keys


def test_passive_scanning_monitor_patterns_follow_the_filter(tmp_path: Path):
    """BlueZ passive scanning only reports what an advertisement monitor matches."""
    from live_bridge.gateway import BleakSource

    cfg = GatewayConfig(
        id="gw-a",
        key_hex=KEY.hex(),
        spool={"path": tmp_path / "g.sqlite"},
        scan={"mode": "passive", "adapter": "hci1"},
        filter={
            "service_uuids": ["fe95", "0000feaa-0000-1000-8000-00805f9b34fb"],
            "manufacturer_ids": [0x004C],
        },
    )
    gw = Gateway(cfg)
    kw = BleakSource(gw).scanner_kwargs()
    gw.spool.close()
    bluez = kw["bluez"]
    assert kw["scanning_mode"] == "passive"
    assert bluez["adapter"] == "hci1"
    assert [(p.ad_data_type, p.content_of_pattern) for p in bluez["or_patterns"]] == [
        (0x16, b"\x95\xfe"),
        (0x16, b"\xaa\xfe"),
        (0xFF, b"\x4c\x00"),
    ]
    active = GatewayConfig(id="gw-b", key_hex=KEY.hex(), spool={"path": tmp_path / "h.sqlite"})
    gw2 = Gateway(active)
    assert BleakSource(gw2).scanner_kwargs()["bluez"] == {"filters": {"DuplicateData": True}}
    gw2.spool.close()


def test_example_gateway_config_in_docs_is_valid():
    example = Path(__file__).resolve().parents[1] / "docs" / "gateway.example.toml"
    cfg = load_gateway_config(example)
    assert cfg.scan.mode == "active"
    assert cfg.filter.manufacturer_ids == [0x004C]
    assert cfg.spool.full_policy == "drop-oldest"
    resolver = cfg.resolver()
    assert resolver is not None and resolver.lookup_findmy(bytes(range(28))) == "cart-03"
    defaults = GatewayConfig(id="x", key_hex=KEY.hex())
    assert cfg.batch == defaults.batch
    assert cfg.mqtt == defaults.mqtt
    assert cfg.scan.model_dump(exclude={"adapter"}) == defaults.scan.model_dump(exclude={"adapter"})


def test_seconds_to_next_close_follows_step_and_lateness():
    core = ServerCore(site_config(step_s=0.1, allowed_lateness_s=0.05), {}, clock="wall")
    assert core.seconds_to_next_close(T0) == float("inf")  # no origin before the first batch
    core.origin = T0
    assert abs(core.seconds_to_next_close(T0 + 10.0) - 0.05) < 1e-6  # window ending at 10.0
    assert abs(core.seconds_to_next_close(T0 + 10.06) - 0.09) < 1e-6  # next: 10.1 + 0.05


def test_non_ascii_signature_is_refused_not_a_crash():
    """Found by benchmarks/fuzz_decoders.py: a non-hex byte in the signature made
    hmac.compare_digest raise TypeError instead of a counted 'bad signature'."""
    body = bytearray(encode_batch(make_batch("gw-a", 0, [Advert(t=T0, dev="tag-1", rssi=-60.0)]), KEY))
    body[20] = 0xF2
    with pytest.raises(WireError, match="bad signature"):
        verify_and_parse(bytes(body), {"gw-a": KEY})


@pytest.mark.parametrize(
    ("source_id", "canonical"),
    [
        ("flora:a4c1380283f4", "A4:C1:38:02:83:F4"),  # ESPresense's LYWSD03MMC (0xFE95)
        ("a4c1380283f4", "A4:C1:38:02:83:F4"),  # a bare MAC id
        ("a4:c1:38:02:83:f4", "A4:C1:38:02:83:F4"),  # Theengs' id
        ("known:a4c1380283f4", "A4:C1:38:02:83:F4"),
        ("miTherm:a4c1380283f4", "A4:C1:38:02:83:F4"),
        ("iBeacon:E5CA1ADE-F007-BA11-0000-000000000000-1-2", "ibeacon:e5ca1ade-f007-ba11-0000-000000000000:1:2"),
        # ESPresense prints namespace byte 4 twice (BleFingerprint.cpp): 11 bytes, fixed here
        ("eddy:0102030405050607080910-aabbccddeeff", "eddystone:01020304050607080910:aabbccddeeff"),
        ("eddy:01020304050607080910-aabbccddeeff", "eddystone:01020304050607080910:aabbccddeeff"),
        ("apple:findmy", "anon:findmy"),
        ("name:front-door-tag", "name:front-door-tag"),  # a fingerprint: passed through
        ("sd:0xfd5a-20", "sd:0xfd5a-20"),
    ],
)
def test_canonical_ids_across_sources(source_id, canonical):
    from live_bridge.adapters import canonical_id

    assert canonical_id(source_id) == canonical


def test_one_lywsd03mmc_one_device_from_all_three_sources():
    """The issue's example: the same sensor from a TagTwin gateway, Theengs and
    ESPresense is one device, with ESPresense's battery on it."""
    from live_bridge.adapters import parse_espresense, parse_theengs
    from live_bridge.decoders import build_mibeacon, decode

    mac = "A4:C1:38:02:83:F4"
    frame = build_mibeacon(mac, 5, battery=44)
    ours = decode(mac, {}, {"fe95": frame}).dev
    _, (theengs,) = parse_theengs(
        "home/gw-a/BTtoMQTT/A4C1380283F4",
        json.dumps({"id": mac, "rssi": -70, "servicedatauuid": "0xfe95", "servicedata": frame.hex()}).encode(),
        T0,
    )
    _, (esp,) = parse_espresense(
        "espresense/devices/flora:a4c1380283f4/gw-b",
        json.dumps({"id": "flora:a4c1380283f4", "mac": "a4c1380283f4", "rssi": -72, "batt": 44}).encode(),
        T0,
    )
    assert ours == theengs.dev == esp.dev == mac
    assert theengs.bat == esp.bat == 44


def test_live_positions_name_every_method_the_engine_uses() -> None:
    """A position says what made it (a Kalman site's positions say kalman, not centroid)."""
    import typing

    from engine.localize import METHOD_NAMES
    from live_bridge.wire import Position

    assert set(typing.get_args(Position.model_fields["method"].annotation)) == set(METHOD_NAMES)
