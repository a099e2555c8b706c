"""The engine on several cores: one :class:`Engine` per device partition, in worker processes.

Every per-device computation of the engine (windows, localization, trackers, zone
hysteresis, last-known state) depends only on that device's sightings, so the devices
can be split between engines that never talk to each other. Only the watermark is
shared: each partition closes a window when the *global* watermark passes it, and
rejects as late what the single engine would have rejected, so the partitioned engine
returns the same fixes as one engine, in the same order (by window, then device). The
exception is the particle tracker, whose random draws are shared across devices.

Why processes and not threads: the engine is many short numpy operations, and two
threads spend their time handing the GIL to each other (measured: two threads were
slower than one). A worker holds its engine's state; batches go to it through a pipe
(about 30 bytes a sighting) and fixes come back. The engines stay sans-IO; this module
is only the plumbing that runs them side by side on one machine.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine._canonical import order_by_time
from engine.contract import SIGHTING_DTYPE, Sightings, concat_rows, take_rows
from engine.ingest import IngestCounters
from engine.pipeline import FIX_DTYPE, Engine, EngineConfig


def _serve(conn: Connection, config: EngineConfig, tx_power: NDArray[np.float64] | None) -> None:
    """A worker: one engine, driven by (operation, argument) messages until "stop"."""
    engine = Engine(config, tx_power)
    failed: Exception | None = None  # from an ingest, which has no reply: told on the next call
    while True:
        op, arg = conn.recv()
        try:
            if op == "stop":
                break
            if op == "ingest":
                if failed is None:
                    engine.ingest(arg)
                continue
            if failed is not None:
                raise failed
            if op == "advance_parts":  # each group of windows as it is done, then None
                for part in engine.advance_parts(arg):
                    conn.send(part)
                conn.send(None)
                continue
            if op == "watermark":
                reply: Any = engine.watermark
            elif op == "advance":
                reply = engine.advance(arg)
            elif op == "flush":
                reply = engine.flush(arg)
            elif op == "counters":
                reply = engine.counters
            else:
                raise ValueError(f"unknown operation {op!r}")
        except Exception as exc:  # the caller re-raises it; the worker keeps serving
            if op == "ingest":
                failed = exc
                continue
            reply, failed = exc, None
        conn.send(reply)
    conn.close()


class PartitionedEngine:
    """The :class:`Engine` interface (ingest, advance, flush, counters) over ``workers``
    engines in worker processes, devices split by ``device % workers``."""

    def __init__(
        self, config: EngineConfig, tx_power_1m_dbm: NDArray[np.float64] | None = None,
        workers: int | None = None,
    ) -> None:
        self.config = config
        self.workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
        methods = mp.get_all_start_methods()
        ctx: Any = mp.get_context("fork" if "fork" in methods else "spawn")
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for _ in range(self.workers):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(there, config, tx_power_1m_dbm), daemon=True)
            proc.start()
            there.close()
            self._conns.append(here)
            self._procs.append(proc)

    # -- the Engine interface ---------------------------------------------------------

    def ingest(self, batch: Sightings) -> None:
        if batch.dtype != SIGHTING_DTYPE:
            raise TypeError("sightings must use engine.contract.SIGHTING_DTYPE")
        part = batch["device"] % self.workers  # negative codes too: validation rejects them there
        for i, conn in enumerate(self._conns):  # a mask per worker: linear, where a sort is not
            conn.send(("ingest", take_rows(batch, np.flatnonzero(part == i))))

    @property
    def watermark(self) -> float:
        return max(self._ask_all("watermark", None))

    def advance(self, watermark: float | None = None) -> NDArray[np.void]:
        """Close the windows the global watermark (the newest event time in any partition,
        or the one given) allows, in every partition; fixes by window, then device."""
        self.start_advance(watermark)
        return self.finish_advance()

    def start_advance(self, watermark: float | None = None, parts: bool = False) -> None:
        """:meth:`advance` in two halves, so the caller can work (apply rules to the last
        fixes) while the workers localize; :meth:`finish_advance` returns the fixes, or
        with ``parts`` :meth:`finish_advance_parts` yields them a group of windows at a
        time (``Engine.advance_parts``), so the caller can use each group while the
        workers compute the next."""
        mark = self.watermark if watermark is None else max(self.watermark, watermark)
        for conn in self._conns:
            conn.send(("advance_parts" if parts else "advance", mark))

    def finish_advance(self) -> NDArray[np.void]:
        return self._merge(self._replies())

    def finish_advance_parts(self) -> Iterator[NDArray[np.void]]:
        """After ``start_advance(parts=True)``: the fixes of each group of windows, merged
        over the workers, in time order; together :meth:`finish_advance`'s fixes. Every
        partition closes the same windows in the same groups (a partition without rows
        closes none), so the i-th group of each worker covers the same windows. Run it
        to its end before calling this engine again."""
        open_conns = list(self._conns)
        failure: Exception | None = None
        while open_conns:
            parts, still = [], []
            for conn in open_conns:
                reply = conn.recv()
                if isinstance(reply, Exception):
                    failure = failure or reply  # the worker's parts end there
                elif reply is not None:
                    parts.append(reply)
                    still.append(conn)
            open_conns = still
            if parts and failure is None:
                yield self._merge(parts)
        if failure is not None:
            raise failure

    def flush(self, end_t: float) -> NDArray[np.void]:
        return self._merge(self._ask_all("flush", end_t))

    @property
    def counters(self) -> IngestCounters:
        total = IngestCounters()
        for c in self._ask_all("counters", None):
            total.received += c.received
            total.accepted += c.accepted
            total.duplicates += c.duplicates
            total.merged_channels += c.merged_channels
            total.rejected = Counter(total.rejected) + c.rejected
        return total

    def close(self) -> None:
        for conn, proc in zip(self._conns, self._procs, strict=True):
            with contextlib.suppress(BrokenPipeError, OSError):  # a worker that already died
                conn.send(("stop", None))
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
            conn.close()
        self._conns, self._procs = [], []

    def __enter__(self) -> PartitionedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------

    def _ask_all(self, op: str, arg: object) -> list[Any]:
        for conn in self._conns:
            conn.send((op, arg))
        return self._replies()

    def _replies(self) -> list[Any]:
        replies = [conn.recv() for conn in self._conns]
        for r in replies:
            if isinstance(r, Exception):
                raise r
        return replies

    @staticmethod
    def _merge(parts: list[NDArray[np.void]]) -> NDArray[np.void]:
        """The workers' fixes by time, then device (stable). Each worker's are in that
        order already, so two of them are merged in one pass (``order_by_time``, the
        identity check and a merge) instead of a lexsort of both."""
        fixes = concat_rows(parts, FIX_DTYPE)
        if len(parts) == 2:
            order = order_by_time(fixes["t"], fixes["device"], sorted_runs=len(parts[0]))
        else:
            order = np.lexsort((fixes["device"], fixes["t"]))
        return take_rows(fixes, order)
