"""Scale-out: a pool of engine workers sharing a backbone's partitions.

A *partition* is one site's raw stream (``TAGTWIN_RAW_<site>``) with its durable consumer
``engine-<site>-all`` and its checkpoint; a very large site's cells are partitions of
their own (``<site>-<cell>``, live_bridge/cells.py). Each worker process runs a :class:`WorkerPool`: it announces
itself in the KV bucket ``tagtwin-pool`` (``member.<id>``, refreshed every heartbeat,
gone ``lease_s`` after the last one), computes from the live members which partitions
are its own, and holds each by a lease key ``owner.<partition>``:

* taking a partition: ``create`` the lease key (refused while another holds it), then
  :func:`live_bridge.worker.run_worker`, which restores the checkpoint and places the
  consumer right after it;
* giving one up (a member joined and the partition is now another's): stop it -- the
  worker publishes what it computed, writes its checkpoint, acks -- then delete the
  lease, and only then can the new owner take it;
* a worker that dies holds its leases until they expire (``lease_s``); its partitions
  resume from their last checkpoint on the survivors.

Assignment is balanced and deterministic: partitions in name order dealt round-robin to
members in id order, so every member computes the same answer without talking.
Not done: fencing (a worker stalled longer than ``lease_s`` could write one more
checkpoint after its successor started; the successor's revisions still only grow).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyWrongLastSequenceError, NoKeysError

from live_bridge.backbone import StreamSettings, token
from live_bridge.worker import WorkerCore, run_worker

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.kv import KeyValue

log = logging.getLogger("tagtwin.pool")

POOL_BUCKET = "tagtwin-pool"


@dataclass(frozen=True)
class PoolSettings:
    lease_s: float = 6.0  # a silent member / an unrefreshed lease is gone after this
    heartbeat_s: float = 1.0
    min_members: int = 1  # take no partition before this many members are present (benchmarks)


def assignment(partitions: list[str], members: list[str]) -> dict[str, str]:
    """partition -> member: sorted partitions dealt round-robin to sorted members."""
    if not members:
        return {}
    ms = sorted(members)
    return {p: ms[i % len(ms)] for i, p in enumerate(sorted(partitions))}


class WorkerPool:
    """The partitions this worker process owns, started and stopped as membership changes."""

    def __init__(self, worker_id: str, partitions: list[str], make_core: Callable[[str], WorkerCore], nc: Client,
                 settings: PoolSettings | None = None, streams: StreamSettings | None = None) -> None:
        self.id = token("worker", worker_id)
        self.partitions = [token("partition", p) for p in partitions]
        self.make_core = make_core
        self.nc = nc
        self.settings = settings or PoolSettings()
        self.streams = streams
        self.running: dict[str, tuple[asyncio.Task[None], asyncio.Event, WorkerCore]] = {}
        self.history: list[tuple[str, str]] = []  # ("take"|"release", partition)

    async def _bucket(self) -> KeyValue:
        js = self.nc.jetstream()
        try:
            return await js.key_value(POOL_BUCKET)
        except Exception:  # not there yet: create it (a race with another member is fine)
            with contextlib.suppress(Exception):
                await js.create_key_value(KeyValueConfig(
                    bucket=POOL_BUCKET, ttl=self.settings.lease_s, storage=StorageType.MEMORY,
                    replicas=(self.streams or StreamSettings()).replicas))
            return await js.key_value(POOL_BUCKET)

    async def members(self, kv: KeyValue) -> list[str]:
        try:
            keys = await kv.keys()
        except NoKeysError:
            return []
        return sorted(k.removeprefix("member.") for k in keys if k.startswith("member."))

    async def run(self, stop: asyncio.Event) -> None:
        kv = await self._bucket()
        try:
            while not stop.is_set():
                try:
                    await self._round(kv)
                except Exception as exc:  # the backbone restarting: keep what runs, retry
                    log.warning("pool round: %s", exc)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.heartbeat_s)
        finally:
            for p in list(self.running):
                await self._release(kv, p)
            with contextlib.suppress(Exception):
                await kv.delete(f"member.{self.id}")

    async def _round(self, kv: KeyValue) -> None:
        await kv.put(f"member.{self.id}", b"1")
        members = await self.members(kv)
        if self.id not in members:
            members.append(self.id)
        mine = assignment(self.partitions, members) if len(members) >= self.settings.min_members else {}
        for p in list(self.running):
            task = self.running[p][0]
            if task.done() or mine.get(p) != self.id:
                await self._release(kv, p)
            else:
                await kv.put(f"owner.{p}", self.id.encode())  # refresh the lease
        for p in self.partitions:
            if mine.get(p) == self.id and p not in self.running:
                try:
                    await kv.create(f"owner.{p}", self.id.encode())
                except KeyWrongLastSequenceError:
                    continue  # its last owner still holds it: next round
                core = self.make_core(p)
                ev = asyncio.Event()
                self.running[p] = (asyncio.create_task(run_worker(core, self.nc, ev, streams=self.streams)), ev, core)
                self.history.append(("take", p))
                log.info("%s took partition %s", self.id, p)

    async def _release(self, kv: KeyValue, p: str) -> None:
        task, ev, _core = self.running.pop(p)
        ev.set()
        with contextlib.suppress(Exception):
            await task  # outputs published, checkpoint written, inputs acked
        with contextlib.suppress(Exception):
            await kv.delete(f"owner.{p}")
        self.history.append(("release", p))
        log.info("%s released partition %s", self.id, p)
