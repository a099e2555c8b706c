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

Calls are sent as they are made and need not wait for the replies before them: a
worker takes its messages in order, so ``ingest`` and ``start_advance`` for the next
feed, or ``start_flush``, made while the workers still localize the last one give the
fixes of the same calls made one after the other, and the workers go straight on to them
instead of waiting for the caller (who applies rules to the last fixes meanwhile). Three
things make that safe and exact:

* Each side writes through a thread of its own (:class:`_Writer`), so neither ever waits
  for the other to read: a worker sending fixes keeps reading its messages, and this
  process sending a batch keeps reading fixes (with plain pipes each would wait for the
  other forever once the fixes and the batch outgrew the pipe's buffer).
* An advance's watermark is the newest event time over *every* partition after the
  batches before it, which only the workers know when they reach it: each writes its
  own into shared memory and waits at a barrier for the others, instead of a round trip
  through this process.
* Replies are read in the order of the calls (each ``finish_*`` takes the oldest).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import os
import queue
import threading
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


class _Writer:
    """Messages (pickled) to one connection, written in order by a thread, so the one
    sending never waits for the other end to read."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._queue: queue.SimpleQueue[bytes | memoryview | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, daemon=True)
        self._thread.start()

    def put(self, data: bytes | memoryview) -> None:
        self._queue.put(data)

    def send(self, message: object) -> None:
        self._queue.put(ForkingPickler.dumps(message))

    def close(self, timeout: float) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _write(self) -> None:
        while (data := self._queue.get()) is not None:
            with contextlib.suppress(OSError):  # the other end is gone: the reader hears of it
                self._conn.send_bytes(data)


# How long a worker waits at an advance for the others to reach it. They arrive within
# moments of each other (the same calls, partitions of one site); one that never comes
# has died, and the survivors' replies then say so instead of waiting for good.
BARRIER_TIMEOUT_S = 600.0


def _serve(conn: Connection, config: EngineConfig, tx_power: NDArray[np.float64] | None,
           index: int, marks: Any, barrier: Any) -> None:
    """A worker: one engine, driven by (operation, argument) messages until "stop"."""
    engine = Engine(config, tx_power)
    out = _Writer(conn)
    failed: Exception | None = None  # from an ingest, which has no reply: told on the next call
    workers, advances = len(marks) // 2, 0
    while True:
        op, arg = conn.recv()
        try:
            if op == "stop":
                break
            if op == "ingest":
                if failed is None:
                    engine.ingest(arg)
                continue
            if op in ("advance", "advance_parts"):  # every worker, even one that failed
                # The global watermark (or the one given, if later): each worker's own,
                # shared once all have taken the batches before this advance. Alternate
                # halves of ``marks``, so a worker already at the next advance cannot
                # overwrite a value another is still reading.
                half = workers * (advances % 2)
                advances += 1
                marks[half + index] = engine.watermark
                barrier.wait(BARRIER_TIMEOUT_S)  # a partner gone (killed): broken, told as a reply
                mark = max(marks[half:half + workers])
                arg = mark if arg is None else max(mark, arg)
            if failed is not None:
                raise failed
            if op == "advance_parts":  # each group of windows as it is done, then None
                for part in engine.advance_parts(arg):
                    out.send(part)
                out.send(None)
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
        out.send(reply)
    out.close(timeout=10)
    conn.close()


class PartitionedEngine:
    """The :class:`Engine` interface (ingest, advance, flush, counters) over ``workers``
    engines in worker processes, devices split by ``device % workers``. Starting one
    freezes the objects this process holds (``gc.freeze``, see ``__init__``).

    :meth:`advance` and :meth:`flush` also come in two halves (``start_*`` sends,
    ``finish_*`` returns the fixes), so the caller can work while the workers localize
    and make the next calls before the fixes are back (module docstring). Each
    ``finish_*`` returns the oldest started call's fixes."""

    # Rows of a batch split and sent at a time (about 4 MB).
    INGEST_PIECE_ROWS = 131_072

    def __init__(
        self, config: EngineConfig, tx_power_1m_dbm: NDArray[np.float64] | None = None,
        workers: int | None = None,
    ) -> None:
        self.config = config
        self.workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
        methods = mp.get_all_start_methods()
        ctx: Any = mp.get_context("fork" if "fork" in methods else "spawn")
        # What this process holds now (its start-up, the site's config) outlives the
        # engine: frozen, neither this process's cyclic collector nor the forked workers'
        # rescans it, and the workers' collections do not copy its pages (CPython's idiom
        # for fork without exec). A caller that made garbage may gc.collect() first.
        gc.freeze()
        self._barrier = ctx.Barrier(self.workers)
        marks = ctx.RawArray("d", 2 * self.workers)  # each worker's watermark at an advance
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for index in range(self.workers):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(there, config, tx_power_1m_dbm, index, marks, self._barrier),
                               daemon=True)
            proc.start()
            there.close()
            self._conns.append(here)
            self._procs.append(proc)
        self._writers = [_Writer(conn) for conn in self._conns]  # after the forks
        self._due: deque[str] = deque()  # the calls whose replies are still to be read, oldest first

    # -- the Engine interface ---------------------------------------------------------

    def ingest(self, batch: Sightings) -> None:
        if batch.dtype != SIGHTING_DTYPE:
            raise TypeError("sightings must use engine.contract.SIGHTING_DTYPE")
        # In pieces, so the workers take (read, validate) the first while the next are split
        # here: the rows reach each engine in the same order, as one batch would.
        for lo in range(0, len(batch), self.INGEST_PIECE_ROWS):
            rows = batch[lo:lo + self.INGEST_PIECE_ROWS]
            part = rows["device"] % self.workers  # negative codes too: validation rejects them there
            for i, writer in enumerate(self._writers):  # a mask per worker: linear, where a sort is not
                writer.send(("ingest", take_rows(rows, np.flatnonzero(part == i))))

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
        workers compute the next. The watermark is taken when the workers reach it
        (after the batches ingested before this call)."""
        self._start("advance_parts" if parts else "advance", watermark)

    def finish_advance(self) -> NDArray[np.void]:
        return self._finish("advance")

    def finish_advance_parts(self) -> Iterator[NDArray[np.void]]:
        """After ``start_advance(parts=True)``: the fixes of each group of windows, merged
        over the workers, in time order; together :meth:`finish_advance`'s fixes. Every
        partition closes the same windows in the same groups (a partition without rows
        closes none), so the i-th group of each worker covers the same windows. Run it
        to its end before finishing the next call."""
        self._expect("advance_parts")
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
            if not open_conns:  # read to the end: the next reply is the next call's
                self._due.popleft()
            if parts and failure is None:
                yield self._merge(parts)
        if failure is not None:
            raise failure

    def flush(self, end_t: float) -> NDArray[np.void]:
        self.start_flush(end_t)
        return self.finish_flush()

    def start_flush(self, end_t: float) -> None:
        """:meth:`flush` in two halves, like :meth:`start_advance`; :meth:`finish_flush`
        returns the fixes."""
        self._start("flush", end_t)

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
        self._barrier.abort()  # a worker waiting for one that is gone stops waiting
        for writer, conn, proc in zip(self._writers, self._conns, self._procs, strict=True):
            if self._due:  # it may be writing fixes nobody will read
                proc.terminate()
            writer.send(("stop", None))
            writer.close(timeout=10)
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
            conn.close()
        self._writers, self._conns, self._procs, self._due = [], [], [], deque()

    def __enter__(self) -> PartitionedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------

    def _start(self, op: str, arg: object) -> None:
        data = ForkingPickler.dumps((op, arg))
        for writer in self._writers:
            writer.put(data)
        self._due.append(op)

    def _expect(self, op: str) -> None:
        if not self._due or self._due[0] != op:
            raise RuntimeError(f"no {op!r} is the oldest call outstanding ({list(self._due)})")

    def _finish(self, op: str) -> NDArray[np.void]:
        self._expect(op)
        self._due.popleft()
        return self._merge(self._replies())

    def _ask_all(self, op: str, arg: object) -> list[Any]:
        if self._due:
            raise RuntimeError(f"finish the outstanding {self._due[0]!r} first")
        self._start(op, arg)
        self._due.popleft()
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
