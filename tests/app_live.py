"""The live bridge for the planner's tests: the real server core (`tagtwin serve`'s
ServerCore and serve loop, zone-change events) on a real mosquitto, fed by the twin
publishing signed gateway batches, so the positions and events the Live view receives
are exactly what the server publishes (no hand-written JSON)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

from live_bridge.server import ServerCore, ZoneChangeSink, serve
from siteplan.model import SiteModel
from tagtwin.live import site_engine_config
from tagtwin.twin_publish import publish_twin
from twin.scenario import Scenario, load_scenario
from twin.sim import resolve_gateways, run_twin

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@contextmanager
def live_server(broker_url: str, scenario_path: Path) -> Iterator[ServerCore]:
    """`tagtwin serve --clock event --events zone-change` for the scenario, in a thread
    (stopped on exit; the event clock closes windows as the published event time advances)."""
    sc = load_scenario(scenario_path)
    core = ServerCore(
        site_engine_config(sc, step_s=1.0, lateness_s=0.5),
        keys_for(sc),
        clock="event",
        sink=ZoneChangeSink(),
    )
    stop, ready = threading.Event(), threading.Event()
    th = threading.Thread(
        target=serve, args=(core, broker_url, stop), kwargs={"ready": ready}, daemon=True
    )
    th.start()
    assert ready.wait(60), "server did not connect to the broker"
    try:
        yield core
    finally:
        stop.set()
        th.join(15)


def keys_for(sc: Scenario) -> dict[str, bytes]:
    gws, _ = resolve_gateways(sc, SiteModel.from_scenario(sc))
    return {g: bytes([i + 1]) * 32 for i, g in enumerate(gws.ids)}


def publish_demo(broker_url: str, scenario_path: Path, duration_s: float) -> dict[str, float]:
    """The twin's gateways publish ``duration_s`` of the scenario as fast as possible."""
    sc = load_scenario(scenario_path)
    short = Scenario.model_validate(sc.model_dump(by_alias=True) | {"duration_s": duration_s})
    return publish_twin(run_twin(short), keys_for(sc), broker_url)
