"""Rules: positions and presence in, auditable events out (see docs/rules.md)."""

from engine.rules.config import RulesError, RuleSet, load_rules, parse_rules
from engine.rules.core import RuleContext
from engine.rules.counts import CycleCount
from engine.rules.engine import RuleEngine
from engine.rules.events import (
    CHECKOUT_DTYPE,
    RULE_SEVERITY,
    Event,
    EventSink,
    JsonLinesSink,
    ListSink,
    MqttSink,
    read_events,
)

__all__ = [
    "CHECKOUT_DTYPE",
    "RULE_SEVERITY",
    "CycleCount",
    "Event",
    "EventSink",
    "JsonLinesSink",
    "ListSink",
    "MqttSink",
    "RuleContext",
    "RuleEngine",
    "RuleSet",
    "RulesError",
    "load_rules",
    "parse_rules",
    "read_events",
]
