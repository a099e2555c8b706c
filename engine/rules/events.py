"""What the rule engine emits, and where it goes.

Events are small frozen dataclasses (the h11 habit): one per decision, carrying the
tag, event time, position with its 90 % radius, the rule, the rule set's version and
the evidence that led to it, so every alarm can be audited and recomputed. Sinks are
thin adapters: an in-process list, a JSON-lines file, and an MQTT sink that only needs
a ``publish(topic, payload)`` callable, which the live bridge supplies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, Protocol, cast

import numpy as np

Severity = Literal["info", "review", "alarm"]

# Checkout (POS) records: a source of their own, in event time.
CHECKOUT_DTYPE = np.dtype([("t", "f8"), ("device", "i4")])

# Rule names, with the severity each emits. Alarms are what a person must act on;
# review items are escalations (undecided cases); info events are the audit trail.
RULE_SEVERITY: dict[str, Severity] = {
    "zone_enter": "info",
    "zone_exit": "info",
    "dwell": "info",
    "exit_without_checkout": "alarm",
    "exit_unresolved": "review",
    "exit_checked_out": "info",
    "exit_case_cleared": "info",
    "missing_tag": "alarm",
    "tag_found": "info",
    "cycle_count": "info",
    "battery_low": "alarm",
    "battery_forecast": "info",
    "gateway_silent": "alarm",
    "gateway_degraded": "alarm",
    "gateway_recovered": "info",
    "misplaced": "alarm",
    "unknown_tag": "alarm",
    "revoked_tag": "alarm",
    "after_hours_movement": "alarm",
}


def _clean(value: object) -> object:
    """JSON-safe evidence values: numpy scalars to Python, NaN to None, floats rounded."""
    kind = type(value)  # the plain types first: a burst of events (every tag's zone entry) calls this ~15 times each
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        number = cast("float", value)
        return None if not math.isfinite(number) else round(number, 4)
    if kind is dict:
        return {str(k): _clean(v) for k, v in cast("dict[object, object]", value).items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 4)
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


@dataclass(frozen=True)
class Event:
    """One decision of one rule. ``t`` is event time (when the condition became true)."""

    rule: str
    t: float
    ruleset_version: str
    tag: str | None = None
    x: float = math.nan
    y: float = math.nan
    r90: float = math.nan
    zone: str | None = None
    gateway: str | None = None
    confidence: float = 1.0
    evidence: Mapping[str, object] = field(default_factory=dict)

    @property
    def severity(self) -> Severity:
        return RULE_SEVERITY[self.rule]

    def to_dict(self) -> dict[str, object]:
        out = {
            "rule": self.rule,
            "severity": self.severity,
            "t": self.t,
            "tag": self.tag,
            "x": self.x,
            "y": self.y,
            "r90": self.r90,
            "zone": self.zone,
            "gateway": self.gateway,
            "confidence": self.confidence,
            "ruleset_version": self.ruleset_version,
            "evidence": dict(self.evidence),
        }
        cleaned = _clean(out)
        assert isinstance(cleaned, dict)
        return cleaned


class EventSink(Protocol):
    def emit(self, events: Sequence[Event]) -> None: ...

    def close(self) -> None: ...


class ListSink:
    """Keeps events in memory (tests, the twin, the planner app)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, events: Sequence[Event]) -> None:
        self.events.extend(events)

    def close(self) -> None:
        return None


class JsonLinesSink:
    """Appends one JSON object per event to a file; flushed after every batch."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = self.path.open("w", encoding="utf-8")

    def emit(self, events: Sequence[Event]) -> None:
        if self._fh is None:
            raise ValueError(f"{self.path}: sink is closed")
        for ev in events:
            self._fh.write(json.dumps(ev.to_dict(), sort_keys=True) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class MqttSink:
    """Publishes each event as JSON to ``{prefix}/{severity}/{rule}``.

    It owns no socket: the live bridge passes its client's publish function (for
    paho-mqtt, ``lambda topic, payload: client.publish(topic, payload, qos=1)``).
    """

    def __init__(
        self, publish: Callable[[str, bytes], object], prefix: str = "tagtwin/events"
    ) -> None:
        self.publish = publish
        self.prefix = prefix.rstrip("/")

    def emit(self, events: Sequence[Event]) -> None:
        for ev in events:
            payload = json.dumps(ev.to_dict(), sort_keys=True).encode()
            self.publish(f"{self.prefix}/{ev.severity}/{ev.rule}", payload)

    def close(self) -> None:
        return None


def read_events(path: Path | str) -> list[dict[str, object]]:
    """Events from a JSON-lines file, as dicts (for audit and scoring of saved runs)."""
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
