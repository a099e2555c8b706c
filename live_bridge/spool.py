"""Store and forward: every signed batch is written to an SQLite spool before it is sent.

A row leaves the spool only when the broker has acknowledged it (QoS 1 PUBACK), so a
broker outage, a network cut or a gateway restart loses nothing while the spool has
room; rows are sent in insertion order. The spool also keeps the next batch sequence
number, so a restarted gateway never reuses one (the server would reject it as a replay).

When full (``max_bytes`` of payload) the policy decides, and a counter records it:

* ``drop-oldest`` (default): delete the oldest unsent batches to make room; the site
  keeps current positions at the price of a gap in history;
* ``drop-newest``: refuse the new batch; history is kept, the present is lost.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Literal

FullPolicy = Literal["drop-oldest", "drop-newest"]


class Spool:
    def __init__(
        self, path: Path | str, max_bytes: int = 64 * 2**20, full_policy: FullPolicy = "drop-oldest"
    ) -> None:
        self.path = str(path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.full_policy = full_policy
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "topic TEXT NOT NULL, payload BLOB NOT NULL, size INTEGER NOT NULL)"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
        row = self.db.execute("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM batches").fetchone()
        self.bytes, self.rows = int(row[0]), int(row[1])
        self.dropped = 0

    def next_seq(self) -> int:
        """Reserve and return the next batch sequence number (persisted)."""
        row = self.db.execute("SELECT v FROM meta WHERE k = 'seq'").fetchone()
        seq = int(row[0]) if row else 0
        self.db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('seq', ?)", (seq + 1,))
        return seq

    def epoch(self) -> int:
        """The boot epoch of this spool (ms since 1970 when it was created, persisted): a
        re-provisioned gateway gets a new spool, so its seq restarting at 0 is not a replay."""
        row = self.db.execute("SELECT v FROM meta WHERE k = 'epoch'").fetchone()
        if row is not None:
            return int(row[0])
        epoch = time.time_ns() // 1_000_000
        self.db.execute("INSERT INTO meta (k, v) VALUES ('epoch', ?)", (epoch,))
        return epoch

    def put(self, topic: str, payload: bytes) -> bool:
        """Store a batch; False if the drop-newest policy refused it."""
        size = len(payload)
        if self.bytes + size > self.max_bytes:
            if self.full_policy == "drop-newest" or size > self.max_bytes:
                self.dropped += 1
                return False
            self._evict(self.bytes + size - self.max_bytes)
        self.db.execute(
            "INSERT INTO batches (topic, payload, size) VALUES (?, ?, ?)", (topic, payload, size)
        )
        self.bytes += size
        self.rows += 1
        return True

    def _evict(self, need: int) -> None:
        freed = 0
        ids = []
        for rid, size in self.db.execute("SELECT id, size FROM batches ORDER BY id"):
            ids.append(rid)
            freed += size
            if freed >= need:
                break
        self.db.executemany("DELETE FROM batches WHERE id = ?", [(i,) for i in ids])
        self.bytes -= freed
        self.rows -= len(ids)
        self.dropped += len(ids)

    def peek(self, after_id: int, limit: int) -> list[tuple[int, str, bytes]]:
        """Up to ``limit`` stored batches with id > after_id, oldest first."""
        return [
            (int(r[0]), str(r[1]), bytes(r[2]))
            for r in self.db.execute(
                "SELECT id, topic, payload FROM batches WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            )
        ]

    def ack(self, row_id: int) -> None:
        row = self.db.execute(
            "DELETE FROM batches WHERE id = ? RETURNING size", (row_id,)
        ).fetchone()
        if row is not None:
            self.bytes -= int(row[0])
            self.rows -= 1

    def close(self) -> None:
        self.db.close()
