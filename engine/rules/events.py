"""What the rule engine emits, and where it goes.

Events are small frozen dataclasses (the h11 habit): one per decision, carrying the
tag, event time, position with its 90 % radius, the rule, the rule set's version and
the evidence that led to it, so every alarm can be audited and recomputed. Sinks are
thin adapters: an in-process list, a JSON-lines file, and an MQTT sink that only needs
a ``publish(topic, payload)`` callable, which the live bridge supplies.
"""

from __future__ import annotations

import json
import json.encoder
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Protocol, cast

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


def clean(value: object) -> object:
    """A value as an event record holds it (:meth:`Event.to_dict`): numpy scalars to Python,
    NaN to None, floats rounded to 4 decimals, mappings' keys as str."""
    return _clean(value)


# JSON text of a record value, for the plain types an event's fields and evidence hold: the
# text json.dumps writes for the value _clean makes of it (the C escaper json.dumps uses
# with ensure_ascii, float.__repr__ for a rounded float). Other types take json.dumps.
_ESCAPE = json.encoder.encode_basestring_ascii


def _float_text(value: float) -> str:
    return float.__repr__(round(value, 4)) if math.isfinite(value) else "null"


_LEAF_TEXT: dict[type, Callable[[Any], str]] = {
    str: _ESCAPE,
    float: _float_text,
    int: int.__repr__,
    bool: lambda v: "true" if v else "false",
    type(None): lambda _: "null",
}


def _nested_texts(value: object) -> tuple[str, str]:
    """A value's JSON text as cleaned, keys sorted, with json.dumps's default separators and compact."""
    cleaned = _clean(value)
    return json.dumps(cleaned, sort_keys=True), json.dumps(cleaned, sort_keys=True, separators=(",", ":"))


def json_scalar(value: str | float) -> str:
    """A str, int or float as json.dumps writes it (no rounding), without its setup."""
    if isinstance(value, str):  # (an exact str: json.dumps calls a subclass's own repr nowhere)
        return _ESCAPE(value)
    if type(value) is int:
        return int.__repr__(value)
    if isinstance(value, float) and math.isfinite(value):  # a numpy float too: json.dumps writes float.__repr__
        return float.__repr__(value)
    return json.dumps(value)


def event_json(ev: Event, t: float | None = None, drop: Collection[str] = ()) -> tuple[str, str]:
    """The event's record (:meth:`Event.to_dict`; ``t`` in place of its time when given, the
    evidence keys in ``drop`` left out) as JSON with its keys sorted at every level, twice:
    with json.dumps's default separators (``json.dumps(record, sort_keys=True)``, the text
    files and digests hold) and compact (``separators=(",", ":")``, the backbone's messages).
    :func:`events_json` for one event."""
    return events_json([ev], None if t is None else [t], drop)[0]


class _NotPlainError(Exception):
    """A field or evidence key :func:`events_json` leaves to the reference path."""


def events_json(events: Sequence[Event], t: Sequence[float] | None = None,
                drop: Collection[str] = ()) -> list[tuple[str, str]]:
    """:func:`event_json` of each event (``t``: their times in place of theirs), in one loop
    that writes the text from the fields, without the record dict and json.dumps's setup
    per event: a cold start decides an event for every tag (~17,000 zone entries at 200,000
    sightings/s), and the dict round trip and two json.dumps were ~20 CPU-µs of each.
    Fields and evidence values of the plain types (str, int, bool, None, float) are written
    here; anything else (numpy scalars, nested containers) as :meth:`Event.to_dict` cleans
    it and json.dumps writes it, which stays the definition (tests/test_event_json.py)."""
    leaf = _LEAF_TEXT
    escape = _ESCAPE
    write_float = float.__repr__
    out: list[tuple[str, str]] = []
    # Per call, written once: each rule's name and severity, each rule-set version, and per
    # set of evidence keys their order and written keys (a burst is one rule, one key set).
    rules: dict[object, tuple[str, str]] = {}
    versions: dict[object, str] = {}
    plans: dict[tuple[str, ...], list[tuple[str, str, str]]] = {}

    def text(v: object) -> str:
        return leaf[type(v)](v)

    for i, ev in enumerate(events):
        try:
            named = rules.get(ev.rule)
            if named is None:
                named = rules[ev.rule] = (text(ev.rule), escape(RULE_SEVERITY[ev.rule]))
            rule, severity = named
            version = versions.get(ev.ruleset_version)
            if version is None:
                version = versions[ev.ruleset_version] = text(ev.ruleset_version)
            v: object = ev.confidence
            conf = (write_float(round(v, 4)) if v - v == 0.0 else "null") if type(v) is float else text(v)
            v = ev.r90
            r90 = (write_float(round(v, 4)) if v - v == 0.0 else "null") if type(v) is float else text(v)
            v = ev.x
            x = (write_float(round(v, 4)) if v - v == 0.0 else "null") if type(v) is float else text(v)
            v = ev.y
            y = (write_float(round(v, 4)) if v - v == 0.0 else "null") if type(v) is float else text(v)
            v = ev.tag
            tag = escape(v) if type(v) is str else text(v)
            v = ev.zone
            zone = escape(v) if type(v) is str else text(v)
            v = ev.gateway
            gw = escape(v) if type(v) is str else text(v)
            t_text = text(ev.t) if t is None else json_scalar(t[i])
            evidence = ev.evidence
            if type(evidence) is not dict:
                raise _NotPlainError
            keys = tuple(evidence)
            plan = plans.get(keys)
            if plan is None:
                if any(type(k) is not str for k in keys):
                    raise _NotPlainError
                plan = plans[keys] = [(k, f"{escape(k)}: ", f"{escape(k)}:") for k in sorted(keys) if k not in drop]
            spaced: list[str] = []
            compact: list[str] = []
            for k, sp_key, co_key in plan:
                v = evidence[k]
                write = leaf.get(type(v))
                if write is not None:
                    sp = co = write(v)
                else:
                    sp, co = _nested_texts(v)
                spaced.append(sp_key + sp)
                compact.append(co_key + co)
        except (KeyError, _NotPlainError):  # a numpy scalar field, a non-str key: as to_dict cleans it
            out.append(_reference_json(ev, None if t is None else t[i], drop))
            continue
        out.append((
            f'{{"confidence": {conf}, "evidence": {{{", ".join(spaced)}}}, "gateway": {gw}, "r90": {r90}, '
            f'"rule": {rule}, "ruleset_version": {version}, "severity": {severity}, "t": {t_text}, "tag": {tag}, '
            f'"x": {x}, "y": {y}, "zone": {zone}}}',
            f'{{"confidence":{conf},"evidence":{{{",".join(compact)}}},"gateway":{gw},"r90":{r90},'
            f'"rule":{rule},"ruleset_version":{version},"severity":{severity},"t":{t_text},"tag":{tag},'
            f'"x":{x},"y":{y},"zone":{zone}}}',
        ))
    return out


def _reference_json(ev: Event, t: float | None, drop: Collection[str]) -> tuple[str, str]:
    """:func:`event_json` the plain way: the record dict and json.dumps (its definition)."""
    record = ev.to_dict()
    if t is not None:
        record["t"] = t
    evidence = cast("dict[str, object]", record["evidence"])
    for k in drop:
        evidence.pop(k, None)
    return json.dumps(record, sort_keys=True), json.dumps(record, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, init=False)
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

    def __init__(self, rule: str, t: float, ruleset_version: str, tag: str | None = None, x: float = math.nan,
                 y: float = math.nan, r90: float = math.nan, zone: str | None = None, gateway: str | None = None,
                 confidence: float = 1.0, evidence: Mapping[str, object] | None = None) -> None:
        """The fields above, set in one call: the generated frozen __init__ sets each through
        object.__setattr__, which was half of an event's making in a burst (~17,000 of them).
        tests/test_event_json.py holds this signature to the fields and their defaults."""
        self.__dict__.update(rule=rule, t=t, ruleset_version=ruleset_version, tag=tag, x=x, y=y, r90=r90, zone=zone,
                             gateway=gateway, confidence=confidence, evidence={} if evidence is None else evidence)

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
        self._fh.writelines(spaced + "\n" for spaced, _ in events_json(events))
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
        for ev, (spaced, _) in zip(events, events_json(events), strict=True):
            self.publish(f"{self.prefix}/{ev.severity}/{ev.rule}", spaced.encode())

    def close(self) -> None:
        return None


def read_events(path: Path | str) -> list[dict[str, object]]:
    """Events from a JSON-lines file, as dicts (for audit and scoring of saved runs)."""
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
