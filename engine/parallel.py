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

Calls can be made ahead: ``ingest``, ``start_advance`` and ``start_flush`` while an
advance's (or a flush's) fixes are still coming back are held here (a batch already split
and pickled) and sent the moment the last of those fixes has been read, before the caller
has worked on them, so the workers go straight on instead of waiting for the caller. A
worker takes its messages in order, so the fixes are those of the same calls made one
after the other. They are not sent earlier because a worker writing fixes does not read,
and this process writing a batch of sightings would then wait for it forever.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from collections import Counter, deque
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
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
    engines in worker processes, devices split by ``device % workers``.

    Besides :meth:`advance` and :meth:`flush`, each in two halves (``start_*`` sends,
    ``finish_*`` returns the fixes) so the caller can work while the workers localize.
    The halves pair up in order: each ``finish_*`` returns the oldest started call's
    fixes. ``ingest`` and ``start_*`` made while fixes are outstanding are held and sent
    as soon as those have been read (module docstring)."""

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
        # The reply the workers owe and this process has not read yet ("parts", "advance"
        # or "flush"; at most one: every call after it is held), and the calls held behind it.
        self._due: str | None = None
        self._held: deque[tuple[str, Any]] = deque()
        for _ in range(self.workers):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(there, config, tx_power_1m_dbm), daemon=True)
            proc.start()
            there.close()
            self._conns.append(here)
            self._procs.append(proc)

    # -- the Engine interface ---------------------------------------------------------

    def ingest(self, batch: Sightings) -> None:
        """Each worker's devices' rows to it; held (split and pickled now) while fixes
        are outstanding."""
        if batch.dtype != SIGHTING_DTYPE:
            raise TypeError("sightings must use engine.contract.SIGHTING_DTYPE")
        part = batch["device"] % self.workers  # negative codes too: validation rejects them there
        # A mask per worker: linear, where a sort is not. Sent as each is split, so the
        # first worker validates its rows while the next are split.
        rows = (take_rows(batch, np.flatnonzero(part == i)) for i in range(self.workers))
        if self._due is None:
            for conn, mine in zip(self._conns, rows, strict=True):
                conn.send(("ingest", mine))
        else:
            self._held.append(("ingest", [ForkingPickler.dumps(("ingest", mine)) for mine in rows]))

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
        workers compute the next. Made while fixes are outstanding, it is held, and the
        watermark is taken when it is sent (after the batches ingested before it)."""
        self._submit("advance_parts" if parts else "advance", watermark)

    def finish_advance(self) -> NDArray[np.void]:
        return self._finish("advance")

    def finish_advance_parts(self) -> Iterator[NDArray[np.void]]:
        """After ``start_advance(parts=True)``: the fixes of each group of windows, merged
        over the workers, in time order; together :meth:`finish_advance`'s fixes. Every
        partition closes the same windows in the same groups (a partition without rows
        closes none), so the i-th group of each worker covers the same windows. Run it
        to its end before finishing the next call.

        A worker sends its end marker right after its last group, so the marker is
        usually here by the time that group is merged: the calls held behind this
        advance are then sent before the last group is yielded, and the workers start
        on them while the caller uses it."""
        self._expect("advance_parts")
        live = list(self._conns)
        ahead: dict[Connection, Any] = {}  # a worker's next reply, read before it was needed
        failure: Exception | None = None
        while live:
            parts, still = [], []
            for conn in live:
                reply = ahead.pop(conn) if conn in ahead else conn.recv()
                if isinstance(reply, Exception):
                    failure = failure or reply  # the worker's parts end there
                elif reply is not None:
                    parts.append(reply)
                    still.append(conn)
            live = still
            for conn in live:  # the replies already here, without waiting
                if conn.poll(0):
                    ahead[conn] = conn.recv()
            if all(conn in ahead and not isinstance(ahead[conn], np.ndarray) for conn in live):
                for conn in live:  # every worker has ended (end marker, or a failure)
                    reply = ahead.pop(conn)
                    failure = failure or (reply if isinstance(reply, Exception) else None)
                live = []
                self._done(failure)
            if parts and failure is None:
                yield self._merge(parts)

    def flush(self, end_t: float) -> NDArray[np.void]:
        self.start_flush(end_t)
        return self.finish_flush()

    def start_flush(self, end_t: float) -> None:
        """:meth:`flush` in two halves (held while fixes are outstanding, like
        :meth:`start_advance`); :meth:`finish_flush` returns the fixes."""
        self._submit("flush", end_t)

    def finish_flush(self) -> NDArray[np.void]:
        return self._finish("flush")

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
            if self._due is not None:  # it may be writing fixes nobody will read
                proc.terminate()
            with contextlib.suppress(BrokenPipeError, OSError):  # a worker that already died
                conn.send(("stop", None))
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
            conn.close()
        self._conns, self._procs = [], []
        self._due, self._held = None, deque()

    def __enter__(self) -> PartitionedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------

    def _submit(self, op: str, arg: object) -> None:
        """Send a call that has a reply, or hold it while another reply is outstanding."""
        if self._due is None:
            self._send(op, arg)
        else:
            self._held.append((op, arg))

    def _send(self, op: str, arg: Any) -> None:
        if op == "ingest":  # pickled when it was held
            for conn, data in zip(self._conns, arg, strict=True):
                conn.send_bytes(data)
            return
        if op in ("advance", "advance_parts"):
            arg = self.watermark if arg is None else max(self.watermark, arg)
        for conn in self._conns:
            conn.send((op, arg))
        self._due = op

    def _expect(self, op: str) -> None:
        if self._due != op:
            raise RuntimeError(f"no {op!r} is outstanding (the oldest is {self._due!r})")

    def _finish(self, op: str) -> NDArray[np.void]:
        self._expect(op)
        replies = [conn.recv() for conn in self._conns]
        self._done(next((r for r in replies if isinstance(r, Exception)), None))
        return self._merge(replies)

    def _done(self, failure: Exception | None) -> None:
        """Every worker's reply to the outstanding call has been read: send the calls held
        behind it, up to the next that has a reply. After a failure they are dropped and
        the failure raised (the caller hears of it, not of calls made after it)."""
        self._due = None
        if failure is not None:
            self._held.clear()
            raise failure
        while self._held and self._due is None:
            self._send(*self._held.popleft())

    def _ask_all(self, op: str, arg: object) -> list[Any]:
        if self._due is not None:
            raise RuntimeError(f"finish the outstanding {self._due!r} first")
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
