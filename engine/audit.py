"""The audit log of money-relevant events: each keeps its own copy of the evidence.

An alarm that costs or saves money (a theft, a missing tag, an unresolved exit that may
be shrink) must be explainable long after the raw sightings are gone (they are deleted
after the site's retention period). So each such event is written, once, to an
append-only JSON-lines file together with:

* the evidence it rests on: the tag's sightings and fixes in the ``evidence_s`` before the
  event (and a short margin after, for decisions made on absence of data);
* what the rules needed to know: the rule set (in full, with its version), the zones,
  the gateways, the tag's registry class and its advertising interval;
* the model version: tool version and the engine settings that made the fixes.

Each line carries ``id`` (sha256 of the record, so an edited record no longer matches
its id) and ``prev`` (the previous line's id: a hash chain, so a deleted or reordered
line is detected, as in Schneier and Kelsey's secure audit logs, 1999).

:func:`rederive` replays the evidence into a fresh rule engine with the recorded rule
set and context and reports whether the same rule fires for the same tag at the same
time. Pure functions plus one small file adapter (:class:`AuditLog`), like the sinks in
engine/rules/events.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.contract import SIGHTING_DTYPE
from engine.pipeline import FIX_DTYPE
from engine.rules import CHECKOUT_DTYPE, Event, RuleContext, RuleEngine, RuleSet
from siteplan.zones import ZoneIndex

# Which rule events are money-relevant, and what they are in money terms.
MONEY_RULES: dict[str, str] = {
    "exit_without_checkout": "theft",
    "exit_unresolved": "shrink",  # left through an exit, undecided: a possible loss, reviewed
    "missing_tag": "missing",
}
EVIDENCE_S = 1800.0  # the tag's history kept with each event
AFTER_S = 120.0  # and this much after it (decisions on silence look ahead of the fact)
MAX_EVIDENCE_ROWS = 50_000
AUDIT_VERSION = 1


class AuditError(ValueError):
    """An audit log or record that cannot be used: names the file, line or event id."""


@dataclass(frozen=True)
class AuditContext:
    """What a replay needs besides the evidence: rules, site facts, versions."""

    ruleset: RuleSet
    zones: ZoneIndex
    gateway_ids: tuple[str, ...]
    gateway_xy: NDArray[np.float64]
    class_names: tuple[str, ...]
    class_interval_s: NDArray[np.float64]
    device_class: NDArray[np.int32]  # class code per registered device code
    device_ids: Sequence[str]
    step_s: float
    feed_max_delay_s: float | None  # None: no checkout feed (a live server without POS records)
    model: Mapping[str, object]


def site_state(rules: RuleEngine) -> dict[str, object]:
    """The site-wide figures a tag's decision reads besides its own history: the pooled
    common-mode loss and burst continuations (engine/rules/presence.py) and which gateways
    are up. A one-tag replay cannot pool them, so the record freezes them as they were."""
    return {
        "common_loss": float(rules.common_loss()),
        "burst_continuation": [float(v) for v in rules.burst_continuation()],
        "gw_state": rules.gw_state.tolist(),
    }


class SiteStateRecorder:
    """A rule-engine sink that notes :func:`site_state` when a money-relevant event is
    decided (add it to ``rules.sinks``); :func:`money_records` stores it with the event."""

    def __init__(self, rules: RuleEngine) -> None:
        self.rules = rules
        self.states: dict[tuple[str, str | None, float], dict[str, object]] = {}

    def emit(self, events: Sequence[Event]) -> None:
        for ev in events:
            if ev.rule in MONEY_RULES:
                self.states[(ev.rule, ev.tag, ev.t)] = site_state(self.rules)

    def close(self) -> None:
        return None


def _columns(rows: NDArray[np.void]) -> dict[str, list[object]]:
    return {name: rows[name].tolist() for name in rows.dtype.names or ()}


def _rows(columns: Mapping[str, Sequence[object]], dtype: np.dtype) -> NDArray[np.void]:
    n = len(next(iter(columns.values()))) if columns else 0
    out = np.zeros(n, dtype)
    for name in dtype.names or ():
        out[name] = np.asarray(columns[name])
    return out


def _canonical(record: Mapping[str, object]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def record_id(record: Mapping[str, object]) -> str:
    """sha256 of the record without its ``id``: the event's audit id."""
    body = {k: v for k, v in record.items() if k != "id"}
    return hashlib.sha256(_canonical(body)).hexdigest()[:32]


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def build_record(
    event: Event,
    device: int,
    sightings: NDArray[np.void],
    fixes: NDArray[np.void],
    ctx: AuditContext,
    state: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """One audit record: the event, its evidence (this device's rows around it) and context.

    ``sightings`` and ``fixes`` may be the whole run's: only this device's rows within
    [t - EVIDENCE_S, t + AFTER_S] are copied (the newest MAX_EVIDENCE_ROWS)."""
    lo, hi = event.t - EVIDENCE_S, event.t + AFTER_S
    s = sightings[(sightings["device"] == device) & (sightings["t"] >= lo) & (sightings["t"] <= hi)]
    f = fixes[(fixes["device"] == device) & (fixes["t"] >= lo) & (fixes["t"] <= hi)]
    s, f = s[-MAX_EVIDENCE_ROWS:], f[-MAX_EVIDENCE_ROWS:]
    cls = int(ctx.device_class[device]) if device < len(ctx.device_class) else -1
    record: dict[str, object] = {
        "audit_version": AUDIT_VERSION,
        "kind": MONEY_RULES[event.rule],
        "event": event.to_dict(),
        "device_code": device,
        "evidence": {"sightings": _columns(s), "fixes": _columns(f), "from_t": lo, "to_t": hi},
        "ruleset": ctx.ruleset.model_dump(mode="json"),
        "ruleset_version": ctx.ruleset.version,
        "site_state": dict(state) if state is not None else None,
        "model": dict(ctx.model),
        "context": {
            "zones": [
                [n, r, [list(c) for c in p.exterior.coords]]
                for n, r, p in zip(ctx.zones.names, ctx.zones.roles, ctx.zones.polygons, strict=True)
            ],
            "gateway_ids": list(ctx.gateway_ids),
            "gateway_xy": ctx.gateway_xy.tolist(),
            "class_names": list(ctx.class_names),
            "class_interval_s": ctx.class_interval_s.tolist(),
            "device_class": cls,
            "step_s": ctx.step_s,
            "feed_max_delay_s": ctx.feed_max_delay_s,
        },
    }
    record = _finite(record)  # type: ignore[assignment]
    record["id"] = record_id(record)
    return record


def money_records(
    events: Sequence[Event],
    sightings: NDArray[np.void],
    fixes: NDArray[np.void],
    ctx: AuditContext,
    states: Mapping[tuple[str, str | None, float], Mapping[str, object]] | None = None,
) -> list[dict[str, object]]:
    """An audit record for every money-relevant event of a run, in event order."""
    code = {d: i for i, d in enumerate(ctx.device_ids)}
    out = []
    for ev in events:
        if ev.rule in MONEY_RULES and ev.tag in code:
            state = (states or {}).get((ev.rule, ev.tag, ev.t))
            out.append(build_record(ev, code[ev.tag], sightings, fixes, ctx, state))
    return out


class _FrozenSiteRules(RuleEngine):
    """A rule engine whose site-wide figures are the recorded ones (see :func:`site_state`)."""

    frozen: Mapping[str, Any]

    def common_loss(self) -> float:
        return float(self.frozen["common_loss"])

    def burst_continuation(self) -> tuple[float, float, float]:
        a, b, c = self.frozen["burst_continuation"]
        return float(a), float(b), float(c)


class LiveAudit:
    """The live server's audit: the last EVIDENCE_S + AFTER_S of sightings and fixes in
    memory (columnar, pruned as time passes), and each money-relevant event the rules decide
    written with its evidence. Attach it to the server's rule engine; feed it what the
    rules are fed; hand it the events they return."""

    def __init__(self, rules: RuleEngine, log: AuditLog, step_s: float, model: Mapping[str, object]) -> None:
        self.log = log
        self.recorder = SiteStateRecorder(rules)
        rules.sinks.append(self.recorder)
        c = rules.ctx
        self.ctx = AuditContext(
            ruleset=rules.rules, zones=c.zones, gateway_ids=c.gateway_ids, gateway_xy=c.gateway_xy,
            class_names=c.class_names, class_interval_s=c.class_interval_s, device_class=c.device_class,
            device_ids=c.device_ids, step_s=step_s, feed_max_delay_s=None, model=model,
        )
        self._sightings: list[NDArray[np.void]] = []
        self._fixes: list[NDArray[np.void]] = []
        self._newest = -math.inf
        self.written: list[str] = []

    def observe(self, sightings: NDArray[np.void] | None = None, fixes: NDArray[np.void] | None = None) -> None:
        for rows, store in ((sightings, self._sightings), (fixes, self._fixes)):
            if rows is not None and len(rows):
                store.append(rows.copy())
                self._newest = max(self._newest, float(rows["t"].max()))
        keep_from = self._newest - EVIDENCE_S - AFTER_S
        for store in (self._sightings, self._fixes):
            while store and float(store[0]["t"].max()) < keep_from:
                store.pop(0)

    def record(self, events: Sequence[Event], origin: float | None = None) -> list[str]:
        """Write the money-relevant ones among ``events``; returns their audit ids. Times in
        the record are the engine's; ``origin`` (Unix seconds of engine time 0) goes with them."""
        money = [e for e in events if e.rule in MONEY_RULES]
        if not money:
            return []
        s = np.concatenate(self._sightings) if self._sightings else np.zeros(0, SIGHTING_DTYPE)
        f = np.concatenate(self._fixes) if self._fixes else np.zeros(0, FIX_DTYPE)
        ctx = replace(self.ctx, model={**self.ctx.model, "time_origin": origin})
        ids = self.log.append(money_records(money, s, f, ctx, self.recorder.states))
        self.written += ids
        return ids


# -- replay -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rederived:
    reproduced: bool
    event: dict[str, object] | None  # the re-derived event of the same rule, if any
    note: str


def rederive(record: Mapping[str, Any]) -> Rederived:
    """Replay the record's evidence into a fresh rule engine (one device, code 0) with the
    recorded rule set and context; reproduced when the same rule fires for the same tag
    at the recorded event time."""
    try:
        ev = record["event"]
        ctx = record["context"]
        ruleset = RuleSet.model_validate(record["ruleset"])
        zones = ZoneIndex.from_points([(n, r, [tuple(c) for c in pts]) for n, r, pts in ctx["zones"]])
        sightings = _rows(record["evidence"]["sightings"], SIGHTING_DTYPE)
        fixes = _rows(record["evidence"]["fixes"], FIX_DTYPE)
        rule_ctx = RuleContext(
            zones=zones,
            device_ids=[str(ev["tag"])],
            device_class=np.array([int(ctx["device_class"])], np.int32),
            class_names=tuple(ctx["class_names"]),
            class_interval_s=np.asarray(ctx["class_interval_s"], float),
            gateway_ids=tuple(ctx["gateway_ids"]),
            gateway_xy=np.asarray(ctx["gateway_xy"], float).reshape(-1, 2),
        )
        step = float(ctx["step_s"])
        delay = None if ctx["feed_max_delay_s"] is None else float(ctx["feed_max_delay_s"])
        t_event, end = float(ev["t"]), float(record["evidence"]["to_t"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise AuditError(f"event {record.get('id', '?')}: record incomplete or damaged: {exc}") from None
    sightings["device"] = 0
    fixes["device"] = 0
    state = record.get("site_state")
    if state:
        # Gateway health is site-wide too: with one tag's sightings every gateway would look
        # silent, so the rule is off in the replay and the recorded up/down state is used.
        data = ruleset.model_dump(mode="json")
        data["gateway"]["enabled"] = False
        rules: RuleEngine = _FrozenSiteRules(RuleSet.model_validate(data), rule_ctx, [])
        rules.frozen = state  # type: ignore[attr-defined]
        rules.gw_state[:] = np.asarray(state["gw_state"], np.int8)
    else:
        rules = RuleEngine(ruleset, rule_ctx, [])
    events = _replay(rules, sightings, fixes, step, delay, end)
    same = [e.to_dict() | {"tag": ev["tag"]} for e in events if e.rule == ev["rule"]]
    # Recorded figures are rounded as Event.to_dict rounds them: compare like with like.
    match = [e for e in same if e["t"] == t_event]
    if match:
        conf = (match[0]["confidence"], ev.get("confidence"))
        note = "same rule, same tag, same time" + (", same confidence" if conf[0] == conf[1] else
                                                   f", confidence {conf[0]} (recorded {conf[1]})")
        return Rederived(True, match[0], note)
    if same:
        return Rederived(False, same[0], f"{ev['rule']} fires at t={same[0]['t']}, recorded t={t_event}")
    return Rederived(False, None, f"the evidence does not make {ev['rule']} fire")


def _replay(
    rules: RuleEngine, sightings: NDArray[np.void], fixes: NDArray[np.void], step: float, delay: float | None,
    end: float,
) -> list[Event]:
    """The evidence, one engine step at a time, as twin/run.py feeds a run's rules."""
    sightings = sightings[np.argsort(sightings["t"], kind="stable")]
    fixes = fixes[np.argsort(fixes["t"], kind="stable")]
    start = min([float(a["t"].min()) for a in (sightings, fixes) if len(a)], default=end)
    first = math.floor(start / step) * step + step
    steps = np.arange(first, end + 1e-9, step)
    s_edge = np.searchsorted(sightings["t"], steps, side="left")
    f_edge = np.searchsorted(fixes["t"], steps + 1e-9, side="right")
    none = np.zeros(0, CHECKOUT_DTYPE)
    events: list[Event] = []
    s0 = f0 = 0
    for i, now in enumerate(steps.tolist()):
        events += rules.observe_sightings(sightings[s0 : s_edge[i]])
        events += rules.process_fixes(fixes[f0 : f_edge[i]])
        if delay is not None:
            events += rules.ingest_checkouts(none, watermark=now - delay)
        events += rules.advance(now)
        s0, f0 = int(s_edge[i]), int(f_edge[i])
    return events


# -- the append-only file ---------------------------------------------------------------


class AuditLog:
    """Append-only JSON lines, each with ``prev`` = the previous line's id (a hash chain).

    Opened with O_APPEND and created 0600: writes only ever add to the end, and the
    evidence of an alarm is no one else's to read."""

    GENESIS = "0" * 32

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._last = self.GENESIS
        if self.path.exists():
            for rec in read_audit(self.path):
                self._last = str(rec["id"])

    def append(self, records: Sequence[dict[str, object]]) -> list[str]:
        ids = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            for rec in records:
                chained = {k: v for k, v in rec.items() if k != "id"} | {"prev": self._last}
                chained["id"] = record_id(chained)
                fh.write(_canonical(chained).decode() + "\n")
                self._last = str(chained["id"])
                ids.append(self._last)
        return ids


def read_audit(path: Path | str) -> Iterator[dict[str, Any]]:
    """Records of an audit log, checking each line's id and the chain; AuditError naming the
    file and line at the first damaged, edited, removed or reordered record."""
    path = Path(path)
    prev = AuditLog.GENESIS
    try:
        fh = path.open(encoding="utf-8", errors="replace")  # bad bytes fail as a bad record, by line
    except OSError as exc:
        raise AuditError(f"{path}: cannot read: {exc.strerror}") from None
    with fh:
        for n, line in enumerate(fh, start=1):
            try:
                rec = json.loads(line)
            except ValueError:
                raise AuditError(f"{path}: line {n}: not a JSON record") from None
            if not isinstance(rec, dict) or rec.get("id") != record_id(rec):
                raise AuditError(f"{path}: line {n}: record does not match its id (edited?)")
            if rec.get("prev") != prev:
                raise AuditError(f"{path}: line {n}: chain broken (a record before it was removed or moved)")
            prev = str(rec["id"])
            yield rec


def find_event(path: Path | str, event_id: str) -> dict[str, Any]:
    """The record whose id starts with ``event_id`` (at least 8 characters)."""
    if len(event_id) < 8:
        raise AuditError(f"event id {event_id!r}: give at least 8 characters")
    found = [r for r in read_audit(path) if str(r["id"]).startswith(event_id)]
    if not found:
        raise AuditError(f"{path}: no event {event_id}")
    if len(found) > 1:
        raise AuditError(f"{path}: {event_id} is ambiguous ({len(found)} events)")
    return found[0]
