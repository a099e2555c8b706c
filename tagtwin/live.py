"""Glue between a scenario (twin/) and the live bridge: the engine and rules a live
server runs for a scenario's site, as a twin run of it would."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import cast

from engine.contract import IdTable
from engine.pipeline import EngineConfig
from engine.rules import RuleEngine
from live_bridge.server import RulesSink
from siteplan.model import SiteModel
from twin.run import engine_config_for, registry_context, registry_ids, rest_map_for
from twin.scenario import Scenario
from twin.sim import TwinResult, resolve_gateways


def site_engine_config(
    scenario: Scenario,
    step_s: float | None = None,
    lateness_s: float | None = None,
    window_s: float | None = None,
) -> EngineConfig:
    """The engine configuration a twin run of ``scenario`` would use, without running it."""
    site = SiteModel.from_scenario(scenario)
    gateways, _ = resolve_gateways(scenario, site)
    cfg = engine_config_for(
        scenario, cast("TwinResult", SimpleNamespace(site=site, gateways=gateways))
    )
    changes = {
        k: v
        for k, v in (("step_s", step_s), ("allowed_lateness_s", lateness_s), ("window_s", window_s))
        if v is not None
    }
    return replace(cfg, **changes) if changes else cfg  # type: ignore[arg-type]


def site_rules(scenario: Scenario, config: EngineConfig, copies: int = 1) -> tuple[IdTable, RuleEngine]:
    """The scenario's rule set with its fleet as the registry: the device table a live
    server or backbone worker keeps starts with the fleet's ids, so codes match the rules'
    classes, and the rules see the devices it adds later as unregistered. ``copies`` > 1
    registers a load test's copies of the fleet too (twin.run.registry_ids): a real site
    at that rate knows its tags, so they must not all alarm as unknown."""
    devices = IdTable(registry_ids(scenario, copies)[0])
    context = registry_context(scenario, config.zones, config.gateways, devices.ids, copies,
                               rest_map=rest_map_for(scenario, config, copies=copies))
    return devices, RuleEngine(scenario.rules, context, [])


def rules_sink_for(scenario: Scenario, config: EngineConfig) -> tuple[IdTable, RulesSink]:
    """The scenario's rule set behind the MQTT server (:func:`site_rules`)."""
    devices, rules = site_rules(scenario, config)
    return devices, RulesSink(rules)
