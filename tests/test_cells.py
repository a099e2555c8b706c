"""Spatial partitions of one large site (engine/cells.py, live_bridge/cells.py): every
(device, window) position published by exactly one cell, equal to one worker's answer.
Sans-IO first, then pool workers on a real nats-server and on a 3-node cluster."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cells import CellPlan, border_distance, max_co_hearing_m, plan_cells
from engine.contract import sightings_from_columns
from live_bridge.backbone import StreamSettings, connect, ensure_streams, out_stream, out_subject, publish_batch
from live_bridge.cells import (
    cell_partitions,
    cell_subjects,
    cell_worker,
    compare_to_single,
    latest_by_partition,
    replay_cells,
)
from live_bridge.faults import WorkerProcess
from live_bridge.natsserver import EmbeddedNats, cluster_of, start_cluster
from live_bridge.worker import WorkerSettings
from tagtwin.live import site_engine_config
from tagtwin.loadgen import stored_batches
from tagtwin.loadtest import site_traffic
from tagtwin.pool_worker import pool_command
from twin.scenario import ScenarioError, load_scenario, parse_scenario

CORRIDOR = Path(__file__).resolve().parent / "data" / "cells-corridor.toml"
SITE = "big"


@cache
def corridor(seconds: float = 30.0, t0: float = 1.7e9):
    sc = load_scenario(CORRIDOR)
    config = site_engine_config(sc)
    tr = site_traffic(sc, SITE, 0, seconds)
    return sc, config, tr, stored_batches(tr, seconds, t0)


def test_grid_cells_read_their_own_gateways_and_the_border_ones_within_the_margin():
    sc, config, _, _ = corridor()
    plan = plan_cells(config, sc.cells)
    assert plan.names == ("g0-0", "g1-0", "g2-0", "g3-0")
    xy = config.gateways.xyz[:, :2]
    assert np.array_equal(plan.home, np.minimum((xy[:, 0] // 30).astype(int), 3))
    for c in range(len(plan)):
        lo, hi = 30 * c, 30 * (c + 1)
        dist = np.maximum(np.maximum(lo - xy[:, 0], xy[:, 0] - hi), 0)
        assert plan.reads[c].tolist() == (dist <= sc.cells.margin_m).tolist()
    tight = CellPlan.grid(config, 4, 1, 0.0)
    assert tight.border_gateways() == [] and sum(len(tight.gateways_of(c)) for c in range(4)) == 40
    assert plan.cell_of(np.array([-5.0, 200.0, 45.0]), np.array([6.0, 6.0, -3.0])).tolist() == [0, 3, 1]
    assert border_distance(plan, np.array([29.0, 45.0]), np.array([6.0, 6.0])).tolist() == [1.0, 15.0]
    assert cell_partitions(SITE, plan) == {"big-g0-0": 0, "big-g1-0": 1, "big-g2-0": 2, "big-g3-0": 3}


def test_cells_settings_are_checked_with_the_field_named():
    text = CORRIDOR.read_text().replace("grid = [4, 1]", "grid = [0, 1]")
    with pytest.raises(ScenarioError, match=r"cells\.grid"):
        parse_scenario(text, "corridor.toml")
    zones = parse_scenario(CORRIDOR.read_text().replace('by = "grid"', 'by = "zones"'))
    assert zones.cells is not None
    plan = plan_cells(site_engine_config(zones), zones.cells)
    assert plan.names == ("west", "east")
    assert plan.cell_of(np.array([50.0, 70.0]), np.array([6.0, 6.0])).tolist() == [0, 1]  # nearest zone


@settings(max_examples=60, deadline=None)
@given(st.floats(-20, 140), st.floats(-10, 25), st.integers(1, 5), st.integers(1, 3))
def test_every_point_gets_the_cell_that_holds_it_or_the_nearest(x, y, cols, rows):
    _, config, _, _ = corridor()
    plan = CellPlan.grid(config, cols, rows, 5.0)
    c = int(plan.cell_of(np.array([x]), np.array([y]))[0])
    import shapely

    d = [shapely.distance(p, shapely.Point(x, y)) for p in plan.polygons]
    assert d[c] == pytest.approx(min(d), abs=1e-9)


def test_with_the_co_hearing_margin_every_window_is_published_once_and_equal_to_one_worker():
    sc, config, tr, batches = corridor()
    stored = [(s, b, r) for s, _, b, _, r in batches]
    rows = sightings_from_columns(t=tr.t, gateway=tr.gateway, device=tr.device, rssi=tr.rssi,
                                  channel=tr.channel, battery=tr.battery, motion=tr.motion, seq=tr.seq)
    extent = max_co_hearing_m(rows, config.gateways.xyz[:, :2], config.window_s, config.step_s)
    assert 10 < extent <= sc.cells.margin_m
    single = {k: v[0][2] for k, v in latest_by_partition(replay_cells(config, tr.keys, None, stored, SITE)).items()}
    plan = plan_cells(config, sc.cells)
    assert all(len(plan.gateways_of(c)) < len(config.gateways.ids) for c in range(len(plan)))  # it does partition
    published = latest_by_partition(replay_cells(config, tr.keys, plan, stored, SITE))
    got = compare_to_single(single, published, plan)
    assert got["windows"] > 1000
    assert got["published_once"] == got["windows"] and got["published_by_several"] == 0
    assert got["missing"] == got["extra"] == got["differ"] == 0
    # tags crossed the borders: several cells published one tag's windows, handed over
    by_tag: dict[str, set[str]] = {}
    for (dev, _), entries in published.items():
        by_tag.setdefault(dev, set()).update(p for _, p, _ in entries)
    assert sum(len(v) > 1 for v in by_tag.values()) >= 4
    # without border gateways the cells disagree near the borders (what the margin buys)
    none = compare_to_single(single, latest_by_partition(
        replay_cells(config, tr.keys, CellPlan.grid(config, 4, 1, 0.0), stored, SITE)), plan)
    assert none["published_by_several"] > 0 and none["differ"] > 0
    assert none["within_10_m_of_a_border"]["differ_share"] > none["farther_than_10_m"]["differ_share"]


def positions_of(out: list[tuple[str, bytes]]) -> list[bytes]:
    return [payload for subject, payload in out if subject.endswith(".positions")]


def test_a_cell_handed_over_with_a_short_horizon_still_publishes_each_window_once():
    """A cell's lease moves mid-stream: the first worker checkpoints with a deep pass pending
    (a border gateway's batches of seconds 5-10 arrive 10 s late, beyond the 2 s horizon),
    the next restores, reads its held batches back (its own gateways only), runs the deep
    pass, takes the rest and closes on idleness. The idle close reaches past the horizon, so
    ownership must be decided on the rows of the windows just computed, before they are let
    go; a deep pass publishes only the cell's own fixes."""
    sc, config, tr, batches = corridor()
    plan = plan_cells(config, sc.cells)
    stored = [(s, b, r) for s, _, b, _, r in batches]
    single = {k: v[0][2] for k, v in latest_by_partition(replay_cells(config, tr.keys, None, stored, SITE)).items()}
    t0, late_gw = batches[0][4], plan.border_gateways()[0]
    is_late = [gw == late_gw and t0 + 5 <= r < t0 + 10 for _, gw, _, _, r in batches]
    on_time = [m for m, late in zip(stored, is_late, strict=True) if not late]
    at = next(i for i, m in enumerate(on_time) if m[2] >= t0 + 20)
    late = [(s, b, on_time[at - 1][2]) for (s, b, _), lt in zip(stored, is_late, strict=True) if lt]
    stream = [(s, b, seq, r) for seq, (s, b, r) in enumerate(on_time[:at] + late + on_time[at:], start=1)]
    handover_seq = at + len(late)  # right after the late batches: their deep pass is in the checkpoint
    published: dict[str, list[bytes]] = {}
    for c in range(len(plan)):
        subjects = set(cell_subjects(SITE, plan, c))
        log = [m for m in stream if m[0] in subjects]
        reads_late = any(m[0].endswith(f".{late_gw}") for m in log)
        first, second = (cell_worker(config, tr.keys, plan, c, WorkerSettings(site=SITE, horizon_s=2.0))
                         for _ in range(2))
        out: list[bytes] = []

        def read_back(w, rb, start, log=log, out=out) -> None:
            for subject, body, seq, received in log:
                if start(seq, received):
                    w.read_back(rb, subject, body, seq, received)
            out += positions_of(w.end_read_back(rb, received))

        for subject, body, seq, received in log:
            w = first if seq <= handover_seq else second
            if w is second and second.stream_seq == 0:  # the lease moved
                second.restore(first.checkpoint())
                history = second.begin_history()
                assert bool(second.deep) == reads_late and history is not None
                read_back(second, history, lambda q, r, w=second: q >= w.history_from)
            w.handle(subject, body, seq, received)
            out += positions_of(w.tick(received))
            if (rb := w.deep_due(received)) is not None:
                read_back(w, rb, lambda q, r, w=w, rb=rb: r >= w.deep_start_time(rb))
        out += positions_of(second.tick(log[-1][3] + 60.0))  # every gateway idle: all windows close
        assert second.windows_open() == 0 and (second.counters["deep recomputations"] >= 1) == reads_late
        published[plan.names[c]] = out
    got = compare_to_single(single, latest_by_partition(published), plan)
    assert got["missing"] == got["extra"] == got["differ"] == got["published_by_several"] == 0, got


# -- on the backbone ------------------------------------------------------------------------


async def read_positions(js, site: str) -> list[bytes]:
    """Every position batch in the site's output stream, oldest first."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    sub = await js.pull_subscribe(out_subject(site, "positions"), stream=out_stream(site), config=ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0))
    bodies: list[bytes] = []
    while True:
        try:
            msgs = await sub.fetch(500, timeout=2.0)
        except Exception:  # no more
            break
        bodies += [m.data for m in msgs]
    await sub.unsubscribe()
    return bodies


async def drain_cells(urls: str, d: Path, workers: int, replicas: int = 1) -> None:
    sc, config, tr, batches = corridor(30.0, time.time() - 60.0)
    plan = plan_cells(config, sc.cells)
    (d / f"keys-{SITE}.toml").write_text("[keys]\n" + "".join(f'"{g}" = "{k.hex()}"\n' for g, k in tr.keys.items()))
    nc = await connect(urls, name="test-cells")
    js = nc.jetstream()
    await ensure_streams(js, SITE, StreamSettings(replicas=replicas))
    for subject, _, body, _, _ in batches:
        await publish_batch(js, subject, body)
    expect = {plan.names[c]: sum(n for _, gw, _, n, _ in batches if gw in set(plan.gateways_of(c)))
              for c in range(len(plan))}
    status: dict[str, dict] = {}

    async def on_status(msg) -> None:
        body = json.loads(msg.data)
        status[body["partition"]] = body

    await nc.subscribe(f"tagtwin.v1.{SITE}.status", cb=on_status)
    procs = []
    try:
        for w in range(workers):
            cmd = [*pool_command(CORRIDOR, urls, d, [SITE], f"w{w + 1}", {"status_every_s": 0.3},
                                 min_members=workers, cells=True), "--replicas", str(replicas)]
            procs.append(WorkerProcess(cmd, d / f"w{w + 1}.log"))
            procs[-1].start()

        def done() -> bool:  # every sighting processed and every window closed (the gateways idle)
            return len(status) == len(plan) and all(
                int(status[p]["counters"].get("processed", 0)) == n and status[p].get("windows_open") == 0
                for p, n in expect.items())

        deadline = time.monotonic() + 180
        while not done():
            if time.monotonic() > deadline:
                logs = {p.log_path.name: p.log_path.read_text()[-600:] for p in procs}
                raise AssertionError(f"cells did not drain: {status} {expect} {logs}")
            await asyncio.sleep(0.2)
        # every worker got a share of the cells (leases per cell)
        kv = await js.key_value("tagtwin-pool")
        owners: dict[str, str] = {}
        for part in cell_partitions(SITE, plan):
            with contextlib.suppress(Exception):
                owners[part] = bytes((await kv.get(f"owner.{part}")).value or b"").decode()
        assert sorted(set(owners.values())) == [f"w{w + 1}" for w in range(workers)], owners
    finally:
        for p in procs:
            p.stop()  # publishes and checkpoints what it computed
    bodies = await read_positions(js, SITE)
    await nc.close()
    stored = [(s, b, r) for s, _, b, _, r in batches]
    single = {k: v[0][2] for k, v in latest_by_partition(replay_cells(config, tr.keys, None, stored, SITE)).items()}
    # the stream's latest revision of every (device, window) equals one worker's answer...
    got = compare_to_single(single, latest_by_partition({"stream": bodies}), plan)
    assert got["windows"] > 1000 and got["missing"] == got["extra"] == got["differ"] == 0, got
    # ...and each revision of it was published once. A window is published again only as a
    # revision (a worker that caught up for a moment on a busy machine closes what it holds,
    # then more of the backlog revises it), never twice at one revision, as two cells
    # sharing a border gateway's last batch would.
    revs: dict[tuple[str, float], list[int]] = {}
    for body in bodies:
        for pos in json.loads(body)["positions"]:
            revs.setdefault((pos["dev"], pos["t"]), []).append(int(pos["rev"]))
    repeated = {k: v for k, v in revs.items() if len(set(v)) != len(v)}
    assert len(revs) == len(single) and not repeated, (len(repeated), sorted(repeated.items())[:5])


@pytest.mark.integration
def test_two_workers_share_four_cells_on_nats_and_publish_each_window_once(tmp_path: Path):
    server = EmbeddedNats.on_free_ports(tmp_path / "nats", mqtt=False)
    server.start()
    try:
        asyncio.run(drain_cells(server.url, tmp_path, 2))
    finally:
        server.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_three_workers_share_the_cells_on_a_three_node_cluster(tmp_path: Path):
    nodes = cluster_of(tmp_path / "cluster", 3)
    start_cluster(nodes)
    try:
        asyncio.run(drain_cells(",".join(n.url for n in nodes), tmp_path, 3, replicas=3))
    finally:
        for n in nodes:
            n.stop()


def test_a_site_file_carries_the_cells_and_a_scenario_section_replaces_them(tmp_path: Path):
    (tmp_path / "site.toml").write_text(
        'name = "corridor"\n[site]\noutline = [[0, 0], [120, 0], [120, 12], [0, 12]]\n'
        '[[zones]]\nname = "west"\npolygon = [[1, 1], [10, 1], [10, 11], [1, 11]]\n'
        '[gateways.grid]\nspacing_m = 6\nmargin_m = 3\n[cells]\ngrid = [4, 1]\nmargin_m = 12\n')
    scenario = 'name = "s"\nsite_file = "site.toml"\nduration_s = 10\nseed = 1\n[[tags]]\nname = "t"\ncount = 1\n'
    (tmp_path / "s.toml").write_text(scenario)
    sc = load_scenario(tmp_path / "s.toml")
    assert sc.cells is not None and (sc.cells.grid, sc.cells.margin_m) == ((4, 1), 12.0)
    (tmp_path / "s.toml").write_text(scenario + '[cells]\nby = "zones"\n')
    replaced = load_scenario(tmp_path / "s.toml").cells
    assert replaced is not None and replaced.by == "zones"
