"""Scale-out: 1, 2 and 3 worker processes draining the same pre-filled partitions.

``--partitions`` sites (the scenario's twin, one seed each) get ``--seconds`` of traffic
each in their raw streams before any worker runs (publishers off, so they do not share
the cores). Then ``n`` pool workers (python -m tagtwin.pool_worker, live_bridge/pool.py)
share the partitions and drain them; the clock runs from the first processed sighting
to the last. Each ``n`` gets a fresh nats-server and the same bytes. Prints JSON: per n,
sightings/s, speed-up over one worker, CPU per worker and the machine load.

``--nodes 3`` runs each drain on a 3-node nats-server cluster on loopback instead, with
every stream, consumer, checkpoint and the pool bucket replicated (``--replicas``, 3 by
default there); ``--kill-node-at S`` kills (SIGKILL) the node leading the first
partition's raw stream S seconds into the drain, and ``lost`` (sent - processed -
dead-lettered, 0 expected) says whether the other two carried on without it.

    .venv/bin/python benchmarks/scaleout_drain.py [--partitions 6] [--seconds 10] [--workers 1,2,3]
    .venv/bin/python benchmarks/scaleout_drain.py --nodes 3 --workers 1,2 [--kill-node-at 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit

from live_bridge.backbone import StreamSettings, connect, ensure_streams, publish_batch, raw_stream
from live_bridge.faults import WorkerProcess
from live_bridge.natsserver import EmbeddedNats, cluster_of, start_cluster
from tagtwin.loadgen import PublisherSpec, Schedule, TickBuilder
from tagtwin.loadtest import site_traffic
from tagtwin.pool_worker import pool_command
from twin.scenario import load_scenario

REPO = Path(__file__).resolve().parents[1]


def build(scenario: Path, partitions: int, seconds: float, scale: float) -> tuple[list, dict, int, float]:
    sc = load_scenario(scenario)
    t0 = time.time() - seconds - 30
    items, keys, total = [], {}, 0
    for i in range(partitions):
        site = f"drain-{i + 1}"
        tr = site_traffic(sc, site, i, 60.0)
        keys[site] = tr.keys
        b = TickBuilder(PublisherSpec(0, "", "nats", [tr], Schedule(scale, seconds), t0, 0.5))
        for k in range(int(seconds / 0.5)):
            for subject, _gw, body, n in b.build(k * 0.5, (k + 1) * 0.5, scale):
                items.append((k, subject, body))
                total += n
    items.sort(key=lambda x: x[0])  # time order across sites and gateways
    return items, keys, total, t0 + seconds


async def drain(n: int, scenario: Path, items: list, keys: dict, total: int, t_last: float,
                d: Path, nodes: int = 1, replicas: int = 1, kill_node_at: float | None = None) -> dict[str, object]:
    if nodes == 1:
        servers = [EmbeddedNats.on_free_ports(d / "nats", mqtt=False)]
        servers[0].start()
    else:
        servers = cluster_of(d / "cluster", nodes)
        start_cluster(servers)
    urls = ",".join(s.url for s in servers)
    workers: list[WorkerProcess] = []
    try:
        nc = await connect(urls, name="drain")
        js = nc.jetstream()
        for site in keys:
            await ensure_streams(js, site, StreamSettings(replicas=replicas))
        t = time.monotonic()
        for i in range(0, len(items), 256):
            await asyncio.gather(*(publish_batch(js, s, b) for _, s, b in items[i: i + 256]))
        fill_s = time.monotonic() - t
        status: dict[str, dict] = {}

        async def on_status(msg: object) -> None:
            body = json.loads(msg.data)  # type: ignore[attr-defined]
            status[body["site"]] = body

        await nc.subscribe("tagtwin.v1.*.status", cb=on_status)
        for site, k in keys.items():
            (d / f"keys-{site}.toml").write_text("[keys]\n" + "".join(f'"{g}" = "{v.hex()}"\n' for g, v in k.items()))
        for w in range(n):
            cmd = [*pool_command(scenario, urls, d, list(keys), f"w{w + 1}", {"status_every_s": 0.5},
                                 min_members=n), "--replicas", str(replicas)]
            workers.append(WorkerProcess(cmd, d / f"w{w + 1}.log"))
            workers[-1].start()
        procs = [psutil.Process(w.proc.pid) for w in workers if w.proc is not None]
        for p in procs:
            p.cpu_percent(None)

        def closed() -> bool:
            return len(status) == len(keys) and all(
                isinstance(c := st.get("closed_through_t"), int | float) and c >= t_last - 2.0
                for st in status.values())

        def done() -> int:
            return sum(int(s["counters"].get("processed", 0)) + sum(
                int(v) for k, v in s["counters"].items() if k.startswith("dead_lettered")) for s in status.values())

        brokers = [psutil.Process(s.pid) for s in servers]

        def cpu_s(p: psutil.Process) -> float:
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:  # the node killed mid-drain: its CPU until then is lost
                return 0.0
            return t.user + t.system

        killed: dict[str, object] = {}

        t_first = None
        cpu0: list[float] = []
        deadline = time.monotonic() + 900
        cpu: list[list[float]] = [[] for _ in procs]
        load: list[float] = []
        while (done() < total or not closed()) and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            if t_first is None and done() > 0:
                t_first = time.monotonic()
                cpu0 = [cpu_s(p) for p in [*procs, *brokers]]
            if kill_node_at is not None and not killed and t_first is not None \
                    and time.monotonic() - t_first >= kill_node_at:
                killed = await kill_leader(js, servers, next(iter(keys)), done())
            if t_first is not None and len(load) < 10_000:
                for j, p in enumerate(procs):
                    cpu[j].append(p.cpu_percent(None))
                load.append(os.getloadavg()[0])
        t_end = time.monotonic()
        used = [max(cpu_s(p) - c, 0.0) for p, c in zip([*procs, *brokers], cpu0, strict=True)]
        assert t_first is not None
        drain_s = t_end - t_first
        owners = {s: st.get("partition") for s, st in status.items()}
        await nc.close()
        return {"workers": n, "nodes": nodes, "replicas": replicas, "sightings": total, "processed": done(),
                "lost": total - done(), "node_killed": killed or None, "all_windows_closed": closed(),
                "drain_s": round(drain_s, 2),
                "sightings_per_s": round(total / drain_s), "fill_s": round(fill_s, 2),
                "worker_cpu_pct_mean": [round(sum(c) / max(len(c), 1), 1) for c in cpu],
                "worker_cpu_s": [round(u, 2) for u in used[:n]], "broker_cpu_s": round(sum(used[n:]), 2),
                # what survives a shared machine: sightings per CPU-second the workers got
                "sightings_per_worker_cpu_s": round(total / max(sum(used[:n]), 1e-9)),
                "load_avg_1m": round(sum(load) / max(len(load), 1), 2), "partitions_reporting": len(owners)}
    finally:
        for proc in workers:
            proc.stop()
        for server in servers:
            server.stop()


async def kill_leader(js: object, servers: list[EmbeddedNats], site: str, done: int) -> dict[str, object]:
    """SIGKILL the node leading ``site``'s raw stream (the hardest node to lose: the stream
    must elect a new leader before it serves the consumer again)."""
    info = await js.stream_info(raw_stream(site))  # type: ignore[attr-defined]
    leader = info.cluster.leader if info.cluster is not None else None
    victim = next((s for s in servers if s.config.name == leader), servers[0])
    victim.kill()
    return {"node": victim.config.name, "leader_of": raw_stream(site), "processed_before": done}


async def main(args: argparse.Namespace) -> dict[str, object]:
    items, keys, total, t_last = build(args.scenario, args.partitions, args.seconds, args.scale)
    runs = []
    for n in [int(x) for x in args.workers.split(",")]:
        with tempfile.TemporaryDirectory(prefix=f"tagtwin-drain{n}-") as d:
            replicas = args.replicas or (3 if args.nodes >= 3 else 1)
            runs.append(await drain(n, args.scenario, items, keys, total, t_last, Path(d), args.nodes, replicas,
                                    args.kill_node_at))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    base = runs[0]["sightings_per_s"]
    for r in runs:
        r["speedup"] = round(r["sightings_per_s"] / base, 2)  # type: ignore[operator]
    return {"partitions": args.partitions, "event_time_s": args.seconds, "scale": args.scale, "nodes": args.nodes,
            "cores": os.cpu_count(), "runs": runs}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", type=Path, default=REPO / "scenarios" / "static-open.toml")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--workers", default="1,2,3")
    ap.add_argument("--nodes", type=int, default=1, help="1: one nats-server; 3: a 3-node loopback cluster")
    ap.add_argument("--replicas", type=int, default=0, help="stream replicas (default: 3 on a cluster, else 1)")
    ap.add_argument("--kill-node-at", type=float, default=None,
                    help="seconds into the drain to SIGKILL the first partition's stream leader")
    emit("scaleout_drain", asyncio.run(main(ap.parse_args())))
