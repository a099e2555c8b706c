"""Record what arrives on the broker to a capture file, and play it back later.

A capture is JSON lines: a header ``{"capture": 1, "started": <unix>}``, then one line
per message ``{"t": <arrival unix>, "topic": ..., "b64": <payload>}``. Payloads are kept
byte for byte, so signed batches still verify on replay; a server that saw the
originals rejects the replays as replayed sequences, as it should (use a fresh one,
with ``--clock event`` when the capture is old).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from live_bridge.mqtt import BrokerUrl, make_client
from live_bridge.wire import BATCH_SUBSCRIPTION

if TYPE_CHECKING:
    from pathlib import Path

    import paho.mqtt.client as paho

CAPTURE_VERSION = 1


def record(
    broker_url: str,
    out: Path,
    *,
    topics: list[str] | None = None,
    duration_s: float | None = None,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
    say: Callable[[str], None] | None = None,
    status_every_s: float = 5.0,
) -> int:
    """Append every message on ``topics`` to ``out`` until stop or duration; returns the
    count. ``say`` gets a line of progress every ``status_every_s``."""
    broker = BrokerUrl.parse(broker_url)
    client = make_client(f"tagtwin-rec-{int(time.time() * 1000) % 10**9}", broker)
    stop = stop or threading.Event()
    lock = threading.Lock()
    count = 0
    with out.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps({"capture": CAPTURE_VERSION, "started": time.time()}) + "\n")

        def on_connect(
            c: paho.Client, _u: object, _f: object, _reason: object, _p: object = None
        ) -> None:
            for t in topics or [BATCH_SUBSCRIPTION]:
                c.subscribe(t, qos=1)
            if ready is not None:
                ready.set()

        def on_message(_c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
            nonlocal count
            line = json.dumps(
                {
                    "t": time.time(),
                    "topic": msg.topic,
                    "b64": base64.b64encode(msg.payload).decode(),
                }
            )
            with lock:
                fh.write(line + "\n")
                count += 1

        client.on_connect = on_connect
        client.on_message = on_message
        client.connect(broker.host, broker.port)
        client.loop_start()
        end = None if duration_s is None else time.monotonic() + duration_s
        while not stop.is_set():
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                break
            if stop.wait(status_every_s if left is None else min(status_every_s, left)):
                break
            if say is not None:
                state = "connected" if client.is_connected() else "NOT connected"
                with lock:
                    say(f"record: {count} messages to {out} ({state})")
        client.disconnect()
        client.loop_stop()
    return count


def read_capture(path: Path) -> list[tuple[float, str, bytes]]:
    """(arrival time, topic, payload) of every message; ValueError naming line on damage."""
    out = []
    with path.open(encoding="utf-8", errors="replace") as fh:  # bad bytes fail as bad JSON, by line
        try:
            header = json.loads(fh.readline() or "{}")
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("capture") != CAPTURE_VERSION:
            raise ValueError(f"{path}: line 1: not a version-{CAPTURE_VERSION} capture header")
        for n, line in enumerate(fh, start=2):
            try:
                rec = json.loads(line)
                out.append(
                    (
                        float(rec["t"]),
                        str(rec["topic"]),
                        base64.b64decode(rec["b64"], validate=True),
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}: line {n}: {exc}") from None
    return out


def replay(path: Path, broker_url: str, speed: float = 1.0) -> int:
    """Publish a capture at ``speed`` times the recorded pace (0: as fast as possible)."""
    messages = read_capture(path)
    broker = BrokerUrl.parse(broker_url)
    client = make_client(f"tagtwin-replay-{int(time.time() * 1000) % 10**9}", broker)
    client.connect(broker.host, broker.port)
    client.loop_start()
    start = time.monotonic()
    infos = []
    for t, topic, payload in messages:
        if speed > 0:
            delay = (t - messages[0][0]) / speed - (time.monotonic() - start)
            if delay > 0:
                time.sleep(delay)
        infos.append(client.publish(topic, payload, qos=1))
    for info in infos:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()
    return len(messages)
