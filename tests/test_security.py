"""Cheap rejection, new-id cap, key rotation and revocation in the server core (sans-IO),
and the keys file commands (issue 13)."""

from __future__ import annotations

import json
import stat
import tracemalloc
from pathlib import Path

import pytest

from engine.ingest import NewDeviceCap
from live_bridge.config import (
    ConfigError,
    check_secret_file,
    load_key_ring,
    new_keys_toml,
    retire_old_key,
    revoke,
    rotate_key,
)
from live_bridge.server import ServerCore
from live_bridge.wire import (
    DEADLETTER_TOPIC,
    EVENTS_TOPIC,
    SIG_HEX_LEN,
    SIG_PREFIX,
    Advert,
    Batch,
    batch_topic,
    encode_batch,
    encode_payload,
)
from tests.test_live_server import GW_IDS, KEY, T0, site_config


def reasons(out: list[tuple[str, bytes, bool]]) -> list[str]:
    return [json.loads(p)["reason"] for t, p, _ in out if t == DEADLETTER_TOPIC]


def ads_for(n: int, prefix: str = "new", t: float = T0) -> list[Advert]:
    return [Advert(t=t, dev=f"{prefix}-{i}", rssi=-70.0, ch=37) for i in range(n)]


def big_forged_body(n_ads: int) -> bytes:
    """A well-formed batch of ``n_ads`` adverts (about 130 bytes each) with a wrong signature."""
    pad = b"-padding" * 8
    ads = b",".join(b'{"t":%.1f,"dev":"attacker-%09d%s","rssi":-70.0,"ch":37}' % (T0, i, pad) for i in range(n_ads))
    payload = b'{"v":1,"gw":"gw-a","seq":1,"sent":%.1f,"ads":[%s]}' % (T0, ads)
    return encode_payload(payload, b"x" * 32)


def test_oversized_message_is_refused_unread() -> None:
    core = ServerCore(site_config(), dict.fromkeys(GW_IDS, KEY))
    body = big_forged_body(99_000)
    assert len(body) > 12_500_000  # the 13 MB batch of the issue
    tracemalloc.start()
    out = core.handle(batch_topic("gw-a"), body, T0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert reasons(out) == ["message too large"]
    assert peak < 1_000_000, peak  # parsing 13 MB of JSON costs tens of MB


def test_bad_signature_is_found_before_any_parsing() -> None:
    """Even under a raised size cap, a forged 13 MB batch costs one HMAC pass: the payload is
    never parsed (a payload that is not even JSON still gets 'bad signature', and the
    memory peak stays far below what parsing allocates)."""
    core = ServerCore(site_config(), dict.fromkeys(GW_IDS, KEY), max_message_bytes=64 << 20)
    body = big_forged_body(99_000)
    tracemalloc.start()
    out = core.handle(batch_topic("gw-a"), body, T0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert reasons(out) == ["bad signature"]
    assert peak < 1_000_000, peak
    not_json = SIG_PREFIX + b"0" * SIG_HEX_LEN + b'","batch":' + b"\xff{[" * 1000 + b"}"
    assert reasons(core.handle(batch_topic("gw-a"), not_json, T0)) == ["bad signature"]
    assert core.status()["devices"] == 0


def test_a_flood_of_new_ids_does_not_grow_the_device_table() -> None:
    """99,000 signed adverts with new ids from one gateway within a minute: the table grows
    by the cap; the rest are counted in the gateway's zone, anonymously."""
    cap = NewDeviceCap(per_minute=500)
    core = ServerCore(site_config(), dict.fromkeys(GW_IDS, KEY), new_id_cap=cap)
    known = ads_for(3, prefix="tag")
    assert core.handle(batch_topic("gw-a"), encode_batch(Batch(gw="gw-a", seq=0, sent=T0, ads=known), KEY), T0) == []
    for seq in range(1, 100):  # 99 batches of 1,000: each well under the size cap
        body = encode_batch(Batch(gw="gw-a", seq=seq, sent=T0, ads=ads_for(1000, prefix=f"b{seq}")), KEY)
        assert reasons(core.handle(batch_topic("gw-a"), body, T0 + seq * 0.1)) == []
    core.tick(T0 + 20)
    status = core.status()
    assert status["devices"] == 500  # 3 known tags + 497 admitted new ids
    new_ids = status["new_ids"]
    assert isinstance(new_ids, dict)
    assert new_ids["refused_ids"] == 99_000 - 497
    assert new_ids["anonymous_sightings_by_zone"] == {"west": 99_000 - 497}  # gw-a is at (0, 0)
    # known ids are never capped, and next minute the gateway may register new ones again
    again = encode_batch(Batch(gw="gw-a", seq=200, sent=T0, ads=[*known, *ads_for(2, prefix="late")]), KEY)
    core.handle(batch_topic("gw-a"), again, T0 + 10)
    assert core.status()["devices"] == 500
    core.handle(batch_topic("gw-a"), encode_batch(Batch(gw="gw-a", seq=201, sent=T0, ads=ads_for(2, "late")), KEY),
                T0 + 61)
    assert core.status()["devices"] == 502


def test_the_cap_is_per_gateway() -> None:
    cap = NewDeviceCap(per_minute=10)
    assert len(cap.admit("a", [str(i) for i in range(25)], 0.0)) == 10
    assert len(cap.admit("b", [str(i) for i in range(25)], 0.0)) == 10
    assert cap.admit("a", ["x"], 59.0) == []
    assert cap.admit("a", ["x"], 60.0) == ["x"]


def _keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(new_keys_toml(list(GW_IDS)))
    path.chmod(0o600)
    return path


def test_rotation_accepts_old_and_new_during_the_overlap(tmp_path: Path) -> None:
    path = _keys_file(tmp_path)
    old = load_key_ring(path).keys["gw-a"][0]
    new = bytes.fromhex(rotate_key(path, "gw-a"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    core = ServerCore(site_config(), load_key_ring(path))
    batch = Batch(gw="gw-a", seq=1, sent=T0, ads=ads_for(1, "tag"))
    assert core.handle(batch_topic("gw-a"), encode_batch(batch, old), T0) == []  # spooled, signed before
    batch2 = batch.model_copy(update={"seq": 2})
    assert core.handle(batch_topic("gw-a"), encode_batch(batch2, new), T0) == []
    assert core.counters["batches_accepted"] == 2
    retire_old_key(path, "gw-a")
    core.reload_keys(load_key_ring(path))
    batch3 = batch.model_copy(update={"seq": 3})
    assert reasons(core.handle(batch_topic("gw-a"), encode_batch(batch3, old), T0)) == ["bad signature"]
    assert load_key_ring(path).keys["gw-a"] == (new,)


def test_revoked_gateway_and_tag_are_refused_with_an_event(tmp_path: Path) -> None:
    path = _keys_file(tmp_path)
    ring = load_key_ring(path)
    core = ServerCore(site_config(), ring)
    revoke(path, gateway="gw-b")
    revoke(path, tag="tag-1")
    core.reload_keys(load_key_ring(path))
    body = encode_batch(Batch(gw="gw-b", seq=1, sent=T0, ads=ads_for(1, "tag")), ring.keys["gw-b"][0])
    out = core.handle(batch_topic("gw-b"), body, T0)
    assert reasons(out) == ["revoked gateway"]
    events = [json.loads(p) for t, p, _ in out if t == EVENTS_TOPIC]
    assert [(e["kind"], e["detail"]["revoked"], e["detail"]["gateway"]) for e in events] == [
        ("revoked-traffic", "gateway", "gw-b")]
    assert "gw-b" not in load_key_ring(path).keys  # its key is gone from the file too
    body = encode_batch(Batch(gw="gw-a", seq=1, sent=T0, ads=ads_for(3, "tag")), ring.keys["gw-a"][0])
    out = core.handle(batch_topic("gw-a"), body, T0)
    assert [json.loads(p)["dev"] for t, p, _ in out if t == EVENTS_TOPIC] == ["tag-1"]
    assert core.counters["sightings"] == 2 and core.counters["rejected: revoked tag"] == 1
    # one event a minute per revoked sender, however much it sends
    body = encode_batch(Batch(gw="gw-b", seq=2, sent=T0, ads=ads_for(1, "tag")), ring.keys["gw-b"][0])
    assert [t for t, _, _ in core.handle(batch_topic("gw-b"), body, T0 + 1)] == [DEADLETTER_TOPIC]


def test_secret_files_must_be_private(tmp_path: Path) -> None:
    path = _keys_file(tmp_path)
    check_secret_file(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 0644: other users can read it"):
        check_secret_file(path)


def test_backbone_worker_accepts_both_keys_during_a_rotation(tmp_path: Path) -> None:
    """The engine worker on the backbone verifies with the key ring too: a batch still in a
    spool, signed with the old key, and one signed with the new key are both accepted; a
    third key is not."""
    import time as _time

    from live_bridge.backbone import raw_subject
    from live_bridge.worker import WorkerCore, WorkerSettings

    path = _keys_file(tmp_path)
    old = load_key_ring(path).keys["gw-a"][0]
    new = bytes.fromhex(rotate_key(path, "gw-a"))
    core = WorkerCore(site_config(), load_key_ring(path).keys, WorkerSettings(site="s"))
    now = _time.time()
    out = []
    for seq, key in ((1, old), (2, new), (3, b"z" * 32)):
        body = encode_batch(Batch(gw="gw-a", seq=seq, sent=now, ads=[Advert(t=now, dev="tag", rssi=-60.0)]), key)
        out.append(core.handle(raw_subject("s", "gw-a"), body, seq, now))
    assert out[0] == [] and out[1] == []
    assert json.loads(out[2][0][1])["reason"] == "bad signature"
