"""The planner's logic, free of Streamlit: layouts, coverage maps, run views, comparisons.

app.py only draws what this module computes, so everything a planner decides on (the
maps, the metrics table, which layout wins) is tested without a browser.

Coverage maps are the *expected* link budget: the scenario's path-loss family plus the
wall and rack losses of the site plan (COST 231 multi-wall, radio_models.geometry), with
no shadowing or fading (both are zero-mean in dB). A gateway "hears" a cell when that
mean RSSI reaches its sensitivity. The accuracy bound is the Cramér-Rao bound of RSSI
localization (Patwari et al. 2003, radio_models/crb.py) over the gateways that hear.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
import tomli_w
from numpy.typing import NDArray
from pydantic import ValidationError

from engine.roi import RoiInputs
from engine.rules.scoring import NEGATIVE_DELAY_NOTE
from engine.truth import GroundTruth
from live_bridge.wire import EVENTS_TOPIC, POSITIONS_TOPIC, PositionBatch
from live_bridge.wire import Event as WireEvent
from planner.layouts import GatewayRow
from radio_models.crb import crlb_rmse
from radio_models.environment import Grid
from radio_models.geometry import crossing_loss_db
from radio_models.pathloss import effective_exponent, three_d_distance
from siteplan.model import SiteModel
from twin.scenario import Scenario, parse_scenario
from twin.sweep import pareto_front as sweep_pareto_front

if TYPE_CHECKING:
    from pathlib import Path

FloatArray = NDArray[np.float64]

# Coverage maps need no finer than ~120 cells along the long side to read well; the
# cost is (cells x gateways) crossing tests, so this keeps the large site interactive.
MAP_CELLS_LONG_SIDE = 120
# Simulations started by run_view in this process: lets tests prove the app's caching.
simulations_started = 0


# -- layouts -----------------------------------------------------------------------------



def gateway_rows(scenario: Scenario, site: SiteModel | None = None) -> list[GatewayRow]:
    """Every gateway the scenario places (listed ones and the grid), as editable rows."""
    from twin.sim import resolve_gateways

    info, _ = resolve_gateways(scenario, site or SiteModel.from_scenario(scenario))
    return [
        {"id": gid, "x": float(x), "y": float(y), "z": float(z)}
        for gid, (x, y, z) in zip(info.ids, info.xyz, strict=True)
    ]


def grid_rows(
    scenario: Scenario, spacing_m: float, height_m: float, margin_m: float = 2.0, prefix: str = "gw"
) -> list[GatewayRow]:
    """A regular grid layout, placed by the same rule the scenario's [gateways.grid] uses."""
    data = scenario_dict(scenario)
    data["gateways"] = {
        "defaults": {**data["gateways"].get("defaults", {}), "z_m": height_m},
        "grid": {"spacing_m": spacing_m, "margin_m": margin_m, "prefix": prefix},
    }
    return gateway_rows(scenario_from_dict(data, "<grid layout>"))


def clean_rows(
    rows: Iterable[Mapping[str, Any]], default_z: float
) -> tuple[list[GatewayRow], list[str]]:
    """Rows from a table editor -> typed rows and problems. Fully blank rows are dropped;
    a row with an id but a missing coordinate is a problem naming the row and field."""
    out: list[GatewayRow] = []
    problems: list[str] = []
    for i, row in enumerate(rows):
        gid = row.get("id")
        vals = {k: row.get(k) for k in ("x", "y", "z")}
        missing = [
            k for k, v in vals.items() if v is None or (isinstance(v, float) and math.isnan(v))
        ]
        blank_id = (
            gid is None or (isinstance(gid, float) and math.isnan(gid)) or not str(gid).strip()
        )
        if blank_id and len(missing) >= 2:
            continue
        if blank_id:
            problems.append(f"gateway row {i + 1}: id is empty")
            continue
        if "x" in missing or "y" in missing:
            empty = " and ".join(m for m in missing if m != "z")
            problems.append(f"gateway row {i + 1} ({gid}): {empty} is empty")
            continue
        z = default_z if "z" in missing else float(vals["z"])  # type: ignore[arg-type]
        out.append({"id": str(gid).strip(), "x": float(vals["x"]), "y": float(vals["y"]), "z": z})  # type: ignore[arg-type]
    ids = [r["id"] for r in out]
    dupes = sorted({g for g in ids if ids.count(g) > 1})
    if dupes:
        problems.append(f"gateway ids must be unique; repeated: {', '.join(dupes)}")
    return out, problems


def outside_outline(scenario: Scenario, rows: Sequence[GatewayRow]) -> list[str]:
    """Ids of gateways placed outside the site outline (allowed, but usually a typo)."""
    if not rows:
        return []
    outline = shapely.Polygon(scenario.site.outline)
    xs = np.array([r["x"] for r in rows], dtype=float)
    ys = np.array([r["y"] for r in rows], dtype=float)
    inside = shapely.intersects_xy(outline, xs, ys)
    return [r["id"] for r, ok in zip(rows, inside, strict=True) if not ok]


def with_gateways(
    scenario: Scenario,
    rows: Sequence[GatewayRow],
    name: str | None = None,
    duration_s: float | None = None,
) -> Scenario:
    """The scenario with exactly these gateways (the grid, if any, is replaced by its
    units), optionally renamed and with a shorter or longer simulated duration. A gateway
    keeps its own scan and sensitivity settings, found by id, when it is moved."""
    data = scenario_dict(scenario)
    if duration_s is not None:
        data["duration_s"] = float(duration_s)
    gws = {k: v for k, v in data["gateways"].items() if k not in ("grid", "list")}
    own = unit_settings(scenario)
    gws["list"] = [
        {
            **own.get(r["id"], {}),
            "id": r["id"],
            "x": float(r["x"]),
            "y": float(r["y"]),
            "z": float(r["z"]),
        }
        for r in rows
    ]
    data["gateways"] = gws
    if name:
        data["name"] = name
    return scenario_from_dict(data, f"<layout {name or scenario.name}>")


def unit_settings(scenario: Scenario) -> dict[str, dict[str, float]]:
    """Per-gateway overrides (scan window, interval, sensitivity) of listed gateways, by id."""
    keys = ("scan_window_ms", "scan_interval_ms", "sensitivity_dbm")
    return {
        g.id: {k: getattr(g, k) for k in keys if getattr(g, k) is not None}
        for g in scenario.gateways.units
    }


def scenario_dict(scenario: Scenario) -> dict[str, Any]:
    """Plain TOML-ready data of a scenario (file aliases, no None values)."""
    return scenario.model_dump(mode="json", by_alias=True, exclude_none=True)


def scenario_toml(scenario: Scenario) -> str:
    """A scenario file for this scenario; ``parse_scenario`` reads it back to an equal object."""
    header = f"# {scenario.name}: written by the TagTwin planner\n"
    return header + tomli_w.dumps(scenario_dict(scenario))


def scenario_from_dict(data: Mapping[str, Any], source: str) -> Scenario:
    """Validate through the file path so errors read exactly as for a scenario file."""
    return parse_scenario(tomli_w.dumps(dict(data)), source)


def save_scenario(scenario: Scenario, path: Path) -> Path:
    """Write the scenario as TOML, refusing to write anything that would not load back."""
    text = scenario_toml(scenario)
    parse_scenario(text, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- coverage maps -----------------------------------------------------------------------


@dataclass(frozen=True)
class CoverageMaps:
    """Per-cell maps (ny, nx) over the site; NaN outside the outline."""

    grid: Grid
    best_rssi_dbm: FloatArray
    n_heard: FloatArray
    crb_m: FloatArray  # inf where fewer than 2 gateways hear (no bound exists)
    inside: NDArray[np.bool_]
    heard: NDArray[np.bool_]  # (ny * nx, gateways): which gateways hear each cell
    link_dbm: NDArray[np.float32]  # (ny * nx, gateways): mean RSSI of each gateway per cell

    def xs(self) -> FloatArray:
        return np.asarray(self.grid.x0 + (np.arange(self.grid.nx) + 0.5) * self.grid.cell_m, float)

    def ys(self) -> FloatArray:
        return np.asarray(self.grid.y0 + (np.arange(self.grid.ny) + 0.5) * self.grid.cell_m, float)

    def summary(self) -> dict[str, float]:
        """Area fractions and bound quantiles over the floor inside the outline."""
        n = self.n_heard[self.inside]
        crb = self.crb_m[self.inside]
        finite = crb[np.isfinite(crb)]
        return {
            "area_3plus": round(float(np.mean(n >= 3)), 4) if n.size else 0.0,
            "area_heard": round(float(np.mean(n >= 1)), 4) if n.size else 0.0,
            "crb_median_m": round(float(np.median(finite)), 3) if finite.size else math.inf,
            "crb_p90_m": round(float(np.quantile(finite, 0.9)), 3) if finite.size else math.inf,
        }


def map_cell_m(scenario: Scenario) -> float:
    minx, miny, maxx, maxy = shapely.Polygon(scenario.site.outline).bounds
    return max(scenario.radio.grid_m, max(maxx - minx, maxy - miny) / MAP_CELLS_LONG_SIDE)


def representative_tx_power(scenario: Scenario) -> float:
    """Count-weighted mean calibrated 1 m RSSI of the scenario's tags."""
    counts = np.array([g.count for g in scenario.tags], dtype=float)
    powers = np.array([g.tx_power_1m_dbm for g in scenario.tags], dtype=float)
    return float(np.average(powers, weights=counts)) if counts.sum() > 0 else float(powers.mean())


def coverage_maps(
    scenario: Scenario,
    rows: Sequence[GatewayRow],
    site: SiteModel | None = None,
    cell_m: float | None = None,
) -> CoverageMaps:
    """Best mean RSSI, gateways hearing and the CRB on a grid, vectorized over (cells, gateways)."""
    site = site or SiteModel.from_scenario(scenario)
    grid, inside = map_grid(scenario, site, cell_m)
    gw = np.array([[r["x"], r["y"], r["z"]] for r in rows], dtype=float).reshape(-1, 3)
    default = scenario.gateways.defaults.sensitivity_dbm
    own = unit_settings(scenario)
    sensitivity = np.array([own.get(r["id"], {}).get("sensitivity_dbm", default) for r in rows])
    return maps_from_links(scenario, grid, inside, gw, link_budget(scenario, site, grid, gw), sensitivity)


def map_grid(
    scenario: Scenario, site: SiteModel, cell_m: float | None = None
) -> tuple[Grid, NDArray[np.bool_]]:
    """The maps' grid over the site and which of its cells lie inside the outline."""
    grid = Grid.covering(site.outline.bounds, cell_m or map_cell_m(scenario))
    centres = grid.centres()
    return grid, shapely.intersects_xy(site.outline, centres[:, 0], centres[:, 1])


def link_budget(scenario: Scenario, site: SiteModel, grid: Grid, gw_xyz: FloatArray) -> FloatArray:
    """Mean RSSI (cells, gateways) at tag height: the scenario's path loss plus the site's
    wall and rack losses (COST 231 multi-wall), no shadowing or fading."""
    from twin.sim import path_loss_model

    centres = grid.centres()
    if len(gw_xyz) == 0:
        return np.zeros((len(centres), 0))
    pts = np.column_stack([centres, np.full(len(centres), scenario.site.tag_height_m)])
    model = path_loss_model(scenario)
    return np.asarray(
        representative_tx_power(scenario)
        - model.excess_loss_db(three_d_distance(pts, gw_xyz))
        - crossing_loss_db(site.obstacles(), centres, gw_xyz[:, :2]),
        dtype=float,
    )


def maps_from_links(
    scenario: Scenario,
    grid: Grid,
    inside: NDArray[np.bool_],
    gw_xyz: FloatArray,
    rssi: FloatArray,
    sensitivity: FloatArray,
) -> CoverageMaps:
    """The maps of one set of gateways from their link budgets (so a search over many
    candidate sets computes each candidate's link budget once)."""
    from twin.sim import path_loss_model

    shape = (grid.ny, grid.nx)
    centres = grid.centres()
    if len(gw_xyz) == 0:
        return CoverageMaps(
            grid,
            np.full(shape, np.nan),
            np.where(inside, 0.0, np.nan).reshape(shape),
            np.where(inside, np.inf, np.nan).reshape(shape),
            inside.reshape(shape),
            np.zeros((len(centres), 0), dtype=bool),
            np.zeros((len(centres), 0), dtype=np.float32),
        )
    pts = np.column_stack([centres, np.full(len(centres), scenario.site.tag_height_m)])
    heard = rssi >= np.asarray(sensitivity, dtype=float)[None, :]
    best = np.where(inside, rssi.max(axis=1), np.nan)
    n_heard = np.where(inside, heard.sum(axis=1), np.nan)
    # Any path-loss family enters the log-distance bound through its effective exponent.
    exponent = effective_exponent(path_loss_model(scenario))
    crb = crlb_rmse(pts, gw_xyz, exponent, max(scenario.radio.shadowing_sigma_db, 0.5), heard)
    crb = np.where(inside, crb, np.nan)
    return CoverageMaps(
        grid,
        best.reshape(shape),
        n_heard.reshape(shape),
        crb.reshape(shape),
        inside.reshape(shape),
        heard & inside[:, None],
        rssi.astype(np.float32),
    )


# -- a run, reduced to what the planner shows ----------------------------------------------


STALE_AFTER_S = 30.0  # playback keeps a tag's last-known estimate this long


@dataclass
class RunView:
    """A simulation run without its raw sightings: small enough to cache and pickle."""

    name: str
    scenario_toml: str
    gateway_ids: list[str]
    gateway_xyz: FloatArray
    device_ids: list[str]
    fixes: NDArray[np.void]
    true_xy: FloatArray  # ground truth at each fix's (device, t)
    error_m: FloatArray
    metrics: dict[str, Any]
    report: dict[str, Any]
    timings_s: dict[str, float]
    events: list[dict[str, Any]] = field(default_factory=list)  # Event.to_dict() per event
    rule_scores: dict[str, Any] = field(default_factory=dict)  # metrics["rules"]
    incidents: list[dict[str, Any]] = field(default_factory=list)  # injected, with their t
    truth: GroundTruth | None = None  # segments: exact truth at any time, a few kB a tag

    def score_table(self) -> list[dict[str, Any]]:
        """Per-rule precision and recall against the injected incidents (rules the run
        scored: those with a target incident kind or with alarms)."""
        return score_rows(self.rule_scores)

    @property
    def times(self) -> FloatArray:
        return np.unique(self.fixes["t"])

    def frame(self, t: float) -> dict[str, FloatArray]:
        """True and estimated positions (with r90) of every tag located at fix time ``t``."""
        times = self.times
        if len(times) == 0:
            empty = np.zeros(0)
            return {
                "t": empty,
                "device": empty,
                "x": empty,
                "y": empty,
                "r90": empty,
                "true_x": empty,
                "true_y": empty,
                "error_m": empty,
            }
        tk = float(times[np.argmin(np.abs(times - t))])
        # Each tag's newest estimate at or before tk (a tag no gateway heard in the last
        # window keeps its last-known position for up to STALE_AFTER_S), against where the
        # tag truly is at tk: what an operator's screen shows at that moment.
        all_t, all_dev = self.fixes["t"], self.fixes["device"]
        cand = np.flatnonzero((all_t <= tk) & (all_t > tk - STALE_AFTER_S))
        order = cand[np.lexsort((all_t[cand], all_dev[cand]))]
        dev = all_dev[order]
        sel = order[np.r_[dev[1:] != dev[:-1], True]] if len(order) else order
        f = self.fixes[sel]
        if self.truth is not None:
            true = self.truth.position_at(f["device"], np.full(len(sel), tk))
        else:
            true = self.true_xy[sel]
        return {
            "t": f["t"].astype(float),
            "device": f["device"].astype(float),
            "x": f["x"],
            "y": f["y"],
            "r90": f["r90"].astype(float),
            "true_x": true[:, 0],
            "true_y": true[:, 1],
            "error_m": np.hypot(f["x"] - true[:, 0], f["y"] - true[:, 1]),
        }

    def track(self, device: int) -> dict[str, FloatArray]:
        """One tag over the whole run: fix times, estimates, r90 and the truth."""
        sel = np.flatnonzero(self.fixes["device"] == device)
        f = self.fixes[sel]
        return {
            "t": f["t"],
            "x": f["x"],
            "y": f["y"],
            "r90": f["r90"].astype(float),
            "true_x": self.true_xy[sel, 0],
            "true_y": self.true_xy[sel, 1],
            "error_m": self.error_m[sel],
        }

    def error_map(self, grid: Grid) -> FloatArray:
        """RMSE of the measured error binned by true position, (ny, nx); NaN where no fix.

        RMSE (not median) so it compares directly with the Cramér-Rao bound on RMSE.
        """
        ok = np.isfinite(self.error_m) & np.all(np.isfinite(self.true_xy), axis=1)
        cells = grid.cell_index(self.true_xy[ok])
        n = np.bincount(cells, minlength=grid.nx * grid.ny)
        s = np.bincount(cells, weights=self.error_m[ok] ** 2, minlength=grid.nx * grid.ny)
        with np.errstate(invalid="ignore", divide="ignore"):
            rmse = np.where(n > 0, np.sqrt(s / np.maximum(n, 1)), np.nan)
        return rmse.reshape(grid.ny, grid.nx)


def run_view(scenario: Scenario, progress: Callable[[float], None] | None = None) -> RunView:
    """Simulate with twin.run.simulate and keep only what the planner draws."""
    from engine.evaluate import position_errors
    from twin.run import simulate

    global simulations_started  # noqa: PLW0603 - a process-wide counter, read by tests
    simulations_started += 1
    run = simulate(scenario, progress)
    truth = run.twin.truth
    fixes = run.fixes
    true_xy = truth.position_at(fixes["device"], fixes["t"])
    rules = run.metrics.get("rules")
    scores: dict[str, Any] = dict(rules) if isinstance(rules, dict) else {}
    return RunView(
        name=scenario.name,
        scenario_toml=scenario_toml(scenario),
        gateway_ids=list(run.twin.gateways.ids),
        gateway_xyz=run.twin.gateways.xyz.copy(),
        device_ids=list(run.twin.device_ids),
        fixes=fixes,
        true_xy=true_xy,
        error_m=position_errors(fixes, truth),
        metrics=dict(run.metrics),
        report=json.loads(json.dumps(run.report(), default=str)),
        timings_s=dict(run.timings_s),
        events=[ev.to_dict() for ev in run.events],
        rule_scores=json.loads(json.dumps(scores, default=str)),
        incidents=[rec.to_dict() for rec in run.incidents.records],
        truth=truth,
    )


# The delay column's title says what a negative delay is, so a bare −26 s never reads as an
# error (issue 18; the scoring code's note, docs/rules.md "Negative delays are warnings").
DELAY_COLUMN = "median delay (s; < 0: warned before the incident)"


def score_rows(rules: Mapping[str, Any]) -> list[dict[str, Any]]:
    """metrics["rules"] as table rows: one per scored rule, with precision (share of its
    alarms an injected incident explains), recall (share of the incidents it is meant to
    catch that it caught), the median delay (docs/rules.md, scoring) and, for a rule whose
    alarms came before the incidents they warn of, a note saying so."""
    rows = []
    for rule, entry in rules.items():
        if not isinstance(entry, dict) or "precision" not in entry:
            continue
        delay = entry.get("delay_s") or {}
        early = int(entry.get("negative_delays") or 0)
        rows.append(
            {
                "rule": rule,
                "alarms": entry.get("events", 0),
                "true_positives": entry.get("true_positives", 0),
                "precision": entry.get("precision"),
                "incidents": entry.get("incidents"),
                "detected": entry.get("detected"),
                "recall": entry.get("recall"),
                "median_delay_s": delay.get("median") if isinstance(delay, dict) else None,
                "delay_note": f"{early} of {entry.get('detected') or 0} before the incident: "
                "a warning, counted as detected"
                if early
                else "",
            }
        )
    return rows


def negative_delay_caption(rules: Mapping[str, Any]) -> str | None:
    """A line under the scores naming the rules with negative delays and why (the scoring
    code's own note), or None when no delay is negative."""
    early = [
        rule
        for rule, entry in rules.items()
        if isinstance(entry, dict) and int(entry.get("negative_delays") or 0) > 0
    ]
    if not early:
        return None
    return f"Negative delays ({', '.join(early)}): {NEGATIVE_DELAY_NOTE}."


def injected_incidents(rules: Mapping[str, Any]) -> int:
    """How many incidents the scenario injected (0: nothing to score against)."""
    kinds = rules.get("incidents")
    return int(sum(kinds.values())) if isinstance(kinds, dict) else 0


# -- comparing layouts -------------------------------------------------------------------

ROI_FIELDS_SHOWN = tuple(RoiInputs.model_fields)


def roi_inputs(base: RoiInputs, changes: Mapping[str, Any]) -> RoiInputs:
    """The scenario's [roi] with the planner's edits, validated by the model's own bounds."""
    return RoiInputs.model_validate(base.model_dump() | dict(changes))


def pareto_front(rows: Sequence[Mapping[str, Any]], error_key: str = "p90_error_m") -> list[str]:
    """Layouts no other layout beats on both cost and error: the ones worth considering
    (the sweep's rule, twin.sweep.pareto_front, over the comparison table's rows)."""
    return sweep_pareto_front(rows, "cost", error_key, name_key="layout")


# -- live view ---------------------------------------------------------------------------

LIVE_TOPICS = (POSITIONS_TOPIC, EVENTS_TOPIC)  # what `tagtwin serve` publishes
LIVE_EVENTS_KEPT = 200


def parse_live(topic: str, payload: bytes | bytearray | str) -> tuple[str, list[dict[str, Any]]]:
    """One message from `tagtwin serve`, validated by the wire models the server itself uses
    (live_bridge.wire: a PositionBatch on the positions topic, an Event on the events topic).

    Returns ("positions", one dict per position) or ("event", [the event]); anything else
    raises ValueError with a short reason, so the panel can count it and keep going."""
    try:
        if topic == POSITIONS_TOPIC:
            batch = PositionBatch.model_validate_json(payload)
            return "positions", [p.model_dump() for p in batch.positions]
        if topic == EVENTS_TOPIC:
            return "event", [WireEvent.model_validate_json(payload).model_dump()]
    except ValidationError as exc:
        kind = "position batch" if topic == POSITIONS_TOPIC else "event"
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "message"
        raise ValueError(f"bad {kind}: {where}: {first['msg']}") from None
    raise ValueError(f"unexpected topic: {topic}")


class LiveFeed:
    """Last known position per device and the latest events from `tagtwin serve`
    (paho-mqtt, QoS 1, the server's positions and events topics).

    paho's network thread calls :meth:`on_message`; the app reads :meth:`snapshot` and
    :meth:`recent_events`. Bad messages are counted with their reason and never stop the feed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.latest: dict[str, dict[str, Any]] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=LIVE_EVENTS_KEPT)
        self.messages = 0
        self.events_seen = 0
        self.rejected: dict[str, int] = {}
        self._client: Any = None

    def on_message(self, topic: str, payload: bytes | bytearray | str) -> None:
        try:
            kind, recs = parse_live(topic, payload)
        except ValueError as exc:
            with self._lock:
                reason = str(exc).split(":")[0]
                self.rejected[reason] = self.rejected.get(reason, 0) + 1
            return
        with self._lock:
            self.messages += 1
            if kind == "event":
                self.events.extend(recs)
                self.events_seen += 1
            for r in recs if kind == "positions" else ():
                self.latest[r["dev"]] = r

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(v) for v in self.latest.values()]

    def recent_events(self) -> list[dict[str, Any]]:
        """The newest events first by event time (up to LIVE_EVENTS_KEPT): they arrive in
        the order the server publishes them, which late data can reorder."""
        with self._lock:
            return sorted((dict(e) for e in self.events), key=lambda e: -float(e.get("t") or 0.0))

    def connect(
        self, host: str, port: int, topics: Sequence[str] = LIVE_TOPICS, timeout_s: float = 5.0,
        tls: bool = False,
    ) -> None:
        """Connect and subscribe; raises ConnectionError with the broker's reason.

        The login (the dashboard identity of `tagtwin provision`) comes from
        $TAGTWIN_MQTT_CREDS or $TAGTWIN_MQTT_USERNAME/PASSWORD, as for every TagTwin
        client; ``tls`` connects with mqtts:// (the site CA from the credentials file)."""
        from live_bridge.mqtt import BrokerUrl, CredsError, make_client

        ready = threading.Event()
        result: dict[str, Any] = {}

        def on_connect(
            client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any = None
        ) -> None:
            result["reason"] = reason
            if not reason.is_failure:
                client.subscribe([(t, 1) for t in topics])
            ready.set()

        try:
            broker = BrokerUrl.parse(f"{'mqtts' if tls else 'mqtt'}://{host}:{port}")
        except (ValueError, CredsError) as exc:
            raise ConnectionError(str(exc)) from None
        client = make_client(f"tagtwin-planner-{id(self)}", broker)
        client.on_connect = on_connect
        client.on_message = lambda _c, _u, msg: self.on_message(msg.topic, msg.payload)
        try:
            client.connect(broker.host, broker.port, keepalive=30)
        except OSError as exc:  # ssl.SSLError included: an untrusted or wrong certificate
            raise ConnectionError(f"cannot reach broker {host}:{port}: {exc}") from None
        client.loop_start()
        if not ready.wait(timeout_s) or result["reason"].is_failure:
            client.loop_stop()
            raise ConnectionError(
                f"broker {host}:{port} refused: {result.get('reason', 'timed out')}"
            )
        self._client = client

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
