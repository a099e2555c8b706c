"""Scale-out (live_bridge/pool.py): partitions spread over the worker processes present,
move when one joins or leaves, and resume from checkpoints, so every sighting is
processed exactly once across handovers. Real nats-server, real worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import pytest

from live_bridge.backbone import StreamSettings, connect, ensure_streams, publish_batch
from live_bridge.faults import WorkerProcess
from live_bridge.natsserver import EmbeddedNats, cluster_of, start_cluster
from live_bridge.pool import POOL_BUCKET, assignment
from tagtwin.loadgen import PublisherSpec, Schedule, TickBuilder
from tagtwin.loadtest import site_traffic
from tagtwin.pool_worker import pool_command
from twin.scenario import load_scenario

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "scenarios" / "static-open.toml"


def test_assignment_is_balanced_and_the_same_for_every_member():
    parts = [f"s{i}" for i in range(7)]
    a = assignment(parts, ["w2", "w1", "w3"])
    assert a == assignment(list(reversed(parts)), ["w3", "w1", "w2"])
    counts = sorted(list(a.values()).count(w) for w in ("w1", "w2", "w3"))
    assert counts == [2, 2, 3]
    assert set(assignment(parts, ["w1"]).values()) == {"w1"}
    assert assignment(parts, []) == {}


class Pool:
    """Sites pre-filled in halves, pool workers started and stopped by pid, status and leases read."""

    def __init__(self, urls: str, d: Path, sites: int = 4, replicas: int = 1) -> None:
        sc = load_scenario(SCENARIO)
        self.urls, self.dir, self.replicas = urls, d, replicas
        self.traffic = [site_traffic(sc, f"pool-{i + 1}", i, 12.0) for i in range(sites)]
        self.t0 = time.time() - 20.0
        self.builders = [TickBuilder(PublisherSpec(0, "", "nats", [tr], Schedule(0.25, 12.0), self.t0, 0.5))
                         for tr in self.traffic]
        self.sent: dict[str, int] = {tr.site: 0 for tr in self.traffic}
        self.status: dict[str, dict] = {}
        self.workers: dict[str, WorkerProcess] = {}
        for tr in self.traffic:
            (d / f"keys-{tr.site}.toml").write_text(
                "[keys]\n" + "".join(f'"{g}" = "{k.hex()}"\n' for g, k in tr.keys.items()))

    async def open(self) -> None:
        self.nc = await connect(self.urls, name="test-pool")
        self.js = self.nc.jetstream()
        for tr in self.traffic:
            await ensure_streams(self.js, tr.site, StreamSettings(replicas=self.replicas))

        async def on_status(msg) -> None:
            body = json.loads(msg.data)
            self.status[body["site"]] = body

        await self.nc.subscribe("tagtwin.v1.*.status", cb=on_status)

    async def publish(self, t_from: float, t_to: float) -> None:
        for k in range(int(t_from / 0.5), int(t_to / 0.5)):
            for tr, b in zip(self.traffic, self.builders, strict=True):
                for subject, _gw, body, n in b.build(k * 0.5, (k + 1) * 0.5, 0.25):
                    await publish_batch(self.js, subject, body)
                    self.sent[tr.site] += n

    def start(self, wid: str) -> None:
        cmd = pool_command(SCENARIO, self.urls, self.dir, [tr.site for tr in self.traffic], wid,
                           {"status_every_s": 0.3, "checkpoint_every_s": 0.3}) + ["--replicas", str(self.replicas)]
        self.workers[wid] = WorkerProcess(cmd, self.dir / f"{wid}.log")
        self.workers[wid].start()

    async def owners(self) -> dict[str, str]:
        kv = await self.js.key_value(POOL_BUCKET)
        out = {}
        for tr in self.traffic:
            with contextlib.suppress(Exception):  # no owner (yet)
                out[tr.site] = (await kv.get(f"owner.{tr.site}")).value.decode()
        return out

    def processed(self, site: str) -> int:
        c = self.status.get(site, {}).get("counters", {})
        return int(c.get("processed", 0))

    async def until(self, cond, what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            got = cond() if not asyncio.iscoroutinefunction(cond) else await cond()
            if got:
                return
            if time.monotonic() > deadline:
                logs = {w: (self.dir / f"{w}.log").read_text()[-800:] for w in self.workers}
                raise AssertionError(f"gave up waiting for {what}: status {self.status}, logs {logs}")
            await asyncio.sleep(0.1)

    async def all_processed(self) -> bool:
        return all(self.processed(s) == n for s, n in self.sent.items())

    async def close(self) -> None:
        for w in self.workers.values():
            w.stop()
        await self.nc.close()


async def scenario_join_and_leave(pool: Pool, third: bool = False) -> None:
    await pool.open()
    try:
        await pool.publish(0, 4)
        pool.start("w1")
        await pool.until(lambda: all(pool.processed(s) == n for s, n in pool.sent.items()), "w1 to drain")

        async def spread() -> bool:
            return sorted((await pool.owners()).values()) == ["w1", "w1", "w2", "w2"]

        pool.start("w2")
        await pool.until(spread, "the partitions to spread over w1 and w2")
        await pool.publish(4, 8)
        await pool.until(pool.all_processed, "w1 and w2 to drain the second part")
        survivors = ["w2"]
        if third:
            async def three() -> bool:
                return sorted((await pool.owners()).values()) == ["w1", "w1", "w2", "w3"]

            pool.start("w3")
            await pool.until(three, "the partitions to spread over w1, w2 and w3")
            await pool.publish(8, 10)
            await pool.until(pool.all_processed, "three workers to drain their part")
            survivors = ["w2", "w3"]
        pool.workers["w1"].stop()  # leaves: its partitions go to the others, resumed from checkpoints

        async def all_survivors() -> bool:
            owners = await pool.owners()
            return len(owners) == 4 and sorted(set(owners.values())) == survivors

        await pool.until(all_survivors, f"{survivors} to take every partition")
        await pool.publish(10 if third else 8, 12)
        await pool.until(pool.all_processed, "the survivors to drain the last part")
        for site, n in pool.sent.items():
            c = pool.status[site]["counters"]
            # exactly once across two handovers: nothing re-processed, nothing skipped
            assert int(c["processed"]) == n and int(c.get("duplicates", 0)) == 0, (site, c)
            assert not any(k.startswith("dead_lettered") for k in c), c
    finally:
        await pool.close()


@pytest.mark.integration
def test_workers_join_and_leave_while_running_and_every_sighting_is_processed_once(tmp_path: Path):
    server = EmbeddedNats.on_free_ports(tmp_path / "nats", mqtt=False)
    server.start()
    try:
        asyncio.run(scenario_join_and_leave(Pool(server.url, tmp_path)))
    finally:
        server.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_three_workers_on_a_three_node_cluster(tmp_path: Path):
    nodes = cluster_of(tmp_path / "cluster", 3)
    start_cluster(nodes)
    try:
        urls = ",".join(n.url for n in nodes)
        asyncio.run(scenario_join_and_leave(Pool(urls, tmp_path, replicas=3), third=True))
    finally:
        for n in nodes:
            n.stop()
