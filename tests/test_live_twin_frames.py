"""The twin emitting real advertisements: every frame kind decoded end to end in a
scenario (twin -> frame bytes -> gateway decoders -> signed batches -> server -> engine),
including Find Hub tags whose identifiers rotate and are resolved back to the tag."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from engine.contract import UNKNOWN
from live_bridge.server import ServerCore
from live_bridge.tag_frames import FRAME_KINDS, TagFrames
from live_bridge.wire import POSITIONS_TOPIC, verify_and_parse
from tagtwin.live import site_engine_config
from tagtwin.twin_publish import tag_frames_for, twin_batches
from tests.conftest import shortened
from twin.scenario import TagGroup
from twin.sim import WarehouseTwin

# Frames carry Unix time and Find Hub EIDs rotate on it (every 1024 s): start 100 s
# before a rotation so a short run sees two identifiers per tag.
ORIGIN = float((1_780_000_000 // 1024 + 1) * 1024 - 100)
DURATION_S = 240.0
KEY = bytes(range(32))
KINDS = [k for k in FRAME_KINDS if k != "twin"]


def test_scenario_frame_kinds_match_the_emitter():
    assert set(TagGroup.model_fields["frame"].annotation.__args__) == set(FRAME_KINDS)


@pytest.fixture(scope="module")
def framed_run(demo_scenario):
    """A short demo run with one tag group per frame kind (plus the twin's own)."""
    base = demo_scenario.tags[0].model_dump()
    groups = [base | {"name": f"fk-{k}", "count": 2, "frame": k} for k in KINDS]
    sc = shortened(demo_scenario, DURATION_S, tags=[base | {"count": 2}, *groups], movers=[])
    return sc, WarehouseTwin(sc).run()


def _publish(sc, result, frames, core=None, step=5.0):
    keys = dict.fromkeys(result.gateways.ids, KEY)
    sightings = result.sightings[np.argsort(result.sightings["t"], kind="stable")]
    seqs: Counter[str] = Counter()
    ads, out, rows = [], [], []
    for t0 in np.arange(0.0, sc.duration_s, step):
        lo, hi = np.searchsorted(sightings["t"], [t0, t0 + step])
        window = sightings[lo:hi]
        rows += [r for g in np.unique(window["gateway"]) for r in window[window["gateway"] == g]]
        for topic, body in twin_batches(
            sightings,
            gateway_ids=result.gateways.ids,
            device_ids=result.device_ids,
            keys=keys,
            origin=ORIGIN,
            t0=t0,
            t1=t0 + step,
            seqs=seqs,
            frames=frames,
        ):
            ads += verify_and_parse(body, keys).ads
            if core is not None:
                out += core.handle(topic, body, ORIGIN + t0 + step)
        if core is not None:
            out += core.tick(ORIGIN + t0 + step)
    return rows, ads, out  # rows in the order twin_batches sends them


def test_every_frame_kind_decodes_to_the_twins_tag(framed_run):
    sc, result = framed_run
    frames = tag_frames_for(sc, result.device_ids)
    sightings, ads, _ = _publish(sc, result, frames)
    assert len(ads) == len(sightings)
    fleet = set(result.device_ids)
    by_group = Counter((a.dev.rsplit("-", 1)[0], a.fmt) for a in ads)
    assert all(a.dev in fleet for a in ads), "a decoded id did not map back to its tag"
    assert {g for g, _ in by_group} == {t.name for t in sc.tags}
    fmts = {g: {f for gg, f in by_group if gg == g} for g, _ in by_group}
    assert fmts["fk-mibeacon"] == {"mibeacon"}
    assert fmts["fk-mibeacon-encrypted"] == {"mibeacon"}
    assert fmts["fk-ibeacon"] == {"ibeacon"}
    assert fmts["fk-eddystone"] == {"eddystone-uid", "eddystone-tlm"}
    assert fmts["fk-findhub"] == {"findhub"}
    # What the decoders read is what the twin sent: battery, motion, the 32-bit counter.
    code = {d: i for i, d in enumerate(result.device_ids)}
    for row, a in zip(sightings, ads, strict=True):
        assert code[a.dev] == int(row["device"])
        if a.dev.startswith("fk-mibeacon"):
            assert a.bat == (None if row["battery"] == UNKNOWN else int(row["battery"]))
            assert a.mot == (None if row["motion"] == UNKNOWN else int(row["motion"]))
            assert a.seq == int(row["seq"]) & (0xFFFFFFFF if "encrypted" in a.dev else 0xFF)
        if a.dev.startswith(("fk-ibeacon", "fk-eddystone")) and a.fmt != "eddystone-tlm":
            assert a.tx == -59


def test_findhub_tags_rotate_and_are_tracked_with_keys_counted_without(framed_run):
    sc, result = framed_run
    frames = tag_frames_for(sc, result.device_ids)
    hub = [i for i, k in enumerate(frames.kinds) if k == "findhub"]
    # The identifier on the air rotates: two EIDs (and addresses) for one tag in 240 s.
    eids = {frames.frame(hub[0], ORIGIN + t, None, None, None)[2]["feaa"][1:21] for t in range(0, 240, 10)}
    assert len(eids) == 2
    cfg = site_engine_config(sc)
    core = ServerCore(cfg, dict.fromkeys(result.gateways.ids, KEY), clock="event")
    _, _, out = _publish(sc, result, frames, core)
    positions = [json.loads(body)["positions"] for topic, body, _ in out if topic == POSITIONS_TOPIC]
    tracked = {p["dev"] for batch in positions for p in batch}
    assert {result.device_ids[i] for i in hub} <= tracked
    # Without the keys: the same frames are anonymous, counted per zone, never tracked.
    blind = tag_frames_for(sc, result.device_ids, resolve=False)
    core = ServerCore(cfg, dict.fromkeys(result.gateways.ids, KEY), clock="event")
    _publish(sc, result, blind, core)
    assert not any(d.startswith(("fk-findhub", "anon:")) for d in core.devices.ids)
    anon = sum(n for k, n in core.counters.items() if k.startswith("anonymous findhub in "))
    assert anon == int(np.isin(result.sightings["device"], hub).sum())


def test_default_scenario_publishes_exactly_as_before(demo_scenario):
    sc = shortened(demo_scenario, 30.0, movers=[])
    result = WarehouseTwin(sc).run()
    frames = tag_frames_for(sc, result.device_ids)
    assert not frames.active
    _, ads, _ = _publish(sc, result, None)
    _, ads_framed, _ = _publish(sc, result, frames)
    assert ads == ads_framed
    assert {a.fmt for a in ads} == {"twin"}


def test_keys_are_reproducible_from_the_seed():
    a = TagFrames(["t-1", "t-2"], ["mibeacon-encrypted", "findhub"], seed=7)
    b = TagFrames(["t-1", "t-2"], ["mibeacon-encrypted", "findhub"], seed=7)
    c = TagFrames(["t-1", "t-2"], ["mibeacon-encrypted", "findhub"], seed=8)
    assert a.gateway_keys() == b.gateway_keys() != c.gateway_keys()
    assert len(a.gateway_keys()["findhub"]["t-2"]) == 64
