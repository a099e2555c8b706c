"""Sweeps: scenarios × gateway layouts × parameter values × seeds, run anywhere, compared
with statistics that say how sure the comparison is.

A *variant* is one combination of axis values; a *run* is one variant at one seed. The
r-th seed is the same for every variant (common random numbers, Law & Kelton 2000,
§11.2), so two variants meet the same tags, movers, shadowing and incidents and their
difference is measured pair by pair. Seeds come from ``numpy.random.SeedSequence``:
run r's seed depends only on the spec's entropy and r, never on which process or
machine ran it, so a process pool and a Dask cluster produce the same table, byte for
byte.

Per variant the summary gives the mean and a 95 % Student-t confidence interval of every
metric over its seeds, the paired difference to the base variant (the first value of
every axis) with its own interval, and the Pareto front of cost against p90 error.

The functions here are the machinery; ``tagtwin sweep`` (tagtwin/sweep.py) is the command,
and the planner (planner/replicates.py) runs its layouts x seeds on the same
:class:`RunBatch` with the seeds of :func:`replicate_seeds` and the intervals of
:func:`mean_ci`.
The spec format is documented in docs/sweeps.md.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.capture import CaptureError, read_gateways
from engine.roi import DESIGN_FALSE_ALARMS, evaluate_case, measured_from_report
from engine.rules.scoring import rate_reading
from siteplan.config_file import ConfigFileError, load_toml, parse_model, read_text, validation_problems
from siteplan.schema import Gateways
from twin.scenario import Scenario, load_scenario

# (metric, lower is better). Every run gets each one; NaN where a run cannot measure it
# (alert recall without incidents, alert precision without alarms).
METRICS: tuple[tuple[str, bool], ...] = (
    ("median_error_m", True),
    ("p90_error_m", True),
    ("zone_accuracy", False),
    ("device_coverage", False),
    ("r90_coverage", False),
    ("alert_precision", False),
    ("alert_recall", False),
    ("theft_recall", False),
    ("false_alarms_per_day_per_1000_tags", True),
    ("count_accuracy", False),
    ("cost", True),
    ("opex_per_month", True),
    ("npv", False),
)
COUNTS = ("tags", "gateways", "sightings", "fixes", "incidents", "alarms", "false_alarms",
          "npv_at_design_false_alarms")  # last: 1 when the run's rate had too little exposure
COST_KEY, ACCURACY_KEY = "cost", "p90_error_m"  # the Pareto front's two axes
LAYOUT_AXIS = "layouts"  # the one reserved key of [axes]: gateway layout files
OWN_LAYOUT = "scenario"  # in axes.layouts: the scenario's own gateways
Executor = Literal["dask", "process", "serial"]
J = TypeVar("J")
R = TypeVar("R")


class SweepError(ConfigFileError):
    """A sweep spec (or a file it names) that cannot be used; one line per problem."""


# -- the spec file ---------------------------------------------------------------------


class _SpecFile(BaseModel):
    """The spec file's shape; values inside [set] and [axes] are checked against the scenario."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("sweep", min_length=1, description="used in reports")
    scenario: str | list[str] = Field(description="base scenario file, or several (an axis)")
    seeds: int | list[int] = Field(description="how many seeds (derived from entropy), or the seeds themselves")
    entropy: int | None = Field(None, ge=0, description="root of the SeedSequence; default: the scenario's seed")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted path -> value for every run")
    axes: dict[str, Any] = Field(default_factory=dict, description="layouts and dotted path -> list of values")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and not 1 <= v <= 100_000:
            raise ValueError("a count of seeds must be 1 to 100000")
        if isinstance(v, list):
            if not v:
                raise ValueError("give at least one seed")
            if any(s < 0 for s in v) or len(set(v)) != len(v):
                raise ValueError("seeds must be distinct integers >= 0")
        return v

    @field_validator("scenario")
    @classmethod
    def _scenarios(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("give at least one scenario file")
        return v


@dataclass(frozen=True)
class Axis:
    """One axis of the sweep: a name (``scenario``, ``layout`` or a dotted path) and the
    labels of its values, in spec order (the first is the base)."""

    name: str
    labels: tuple[str, ...]
    numeric: tuple[float, ...] | None = None  # the values, when they are all numbers


@dataclass(frozen=True)
class Variant:
    index: int
    name: str
    labels: dict[str, str]  # axis name -> value label
    scenario: Scenario  # seed still the base scenario's; each run sets its own


@dataclass(frozen=True)
class SweepSpec:
    name: str
    source: str
    sha256: str
    axes: tuple[Axis, ...]
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]

    @property
    def runs(self) -> int:
        return len(self.variants) * len(self.seeds)


def replicate_seeds(count: int, entropy: int, spawn_key: tuple[int, ...] = ()) -> list[int]:
    """Scenario seeds for ``count`` replicates: the spawned children of
    ``SeedSequence(entropy, spawn_key)``. Seed r depends only on (entropy, key, r), so
    adding replicates keeps the earlier ones and no run's seed depends on where it
    executes; different keys give independent streams from one entropy."""
    children = np.random.SeedSequence(entropy, spawn_key=spawn_key).spawn(count)
    return [int(c.generate_state(1, np.uint32)[0]) for c in children]


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"radio": {"shadowing_sigma_db": [4, 6]}}`` -> ``{"radio.shadowing_sigma_db": [4, 6]}``.
    TOML dotted keys arrive nested; a quoted key ``"tags[0].count"`` arrives as is."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out |= _flatten(value, path)
        else:
            out[path] = value
    return out


def _parts(path: str) -> list[str | int]:
    """``tags[0].count`` or ``tags.0.count`` -> ["tags", 0, "count"]."""
    out: list[str | int] = []
    for raw in path.replace("[", ".").replace("]", "").split("."):
        if raw == "":
            raise ValueError("empty segment")
        out.append(int(raw) if raw.isdigit() else raw)
    return out


def _check_path(data: Mapping[str, Any], path: str) -> str | None:
    """Why ``path`` names no field of the scenario data, or None when it does."""
    try:
        parts = _parts(path)
    except ValueError:
        return f"{path!r} is not a dotted path (like radio.shadowing_sigma_db)"
    if parts[0] == "seed":
        return "seeds come from the file's `seeds`/`entropy` (SeedSequence), not from an override"
    node: Any = data
    walked: list[str] = []
    for part in parts:
        where = ".".join(walked) or "the scenario"
        if isinstance(node, dict) and isinstance(part, str):
            if part not in node:
                return f"{where} has no field {part!r} (it has: {', '.join(sorted(node))})"
        elif isinstance(node, list) and isinstance(part, int):
            if part >= len(node):
                return f"{where} has {len(node)} entries, no [{part}]"
        else:
            kind = "a list (index it: name.0.field)" if isinstance(node, list) else f"{json.dumps(node)}, not a table"
            return f"{where} is {kind}; cannot go into {part!r}"
        node = node[part]
        walked.append(str(part))
    return None


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    parts = _parts(path)
    node: Any = data
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def _label(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _scenario_data(scenario: Scenario) -> dict[str, Any]:
    """Every field, defaults and None included, as the file spells it (aliases)."""
    return scenario.model_dump(mode="json", by_alias=True)


def _validate(data: Mapping[str, Any]) -> Scenario | list[str]:
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        # A cross-field check (model validator) already names its field in the message.
        return [p.removeprefix("(top level): ") for p in validation_problems(exc)]


def with_overrides(scenario: Scenario, table: Mapping[str, Any], where: str = "set") -> Scenario:
    """The scenario with a table of dotted-path overrides (nested TOML tables or quoted
    dotted keys), validated whole. Raises ValueError with one line per problem, each
    starting with ``where`` and the path."""
    data = _scenario_data(scenario)
    flat = _flatten(table)
    problems = [f"{where}.{path}: {why}" for path in flat if (why := _check_path(data, path)) is not None]
    if problems:
        raise ValueError("\n".join(problems))
    for path, value in flat.items():
        _set_path(data, path, value)
    checked = _validate(data)
    if isinstance(checked, list):
        raise ValueError("\n".join(f"{where}: {p}" for p in checked))
    return checked


def _load_layout(path: Path, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A gateway layout: a TOML file with a [gateways] table (a site file, a scenario, or
    just that section), or a gateway-positions table (CSV or Parquet: id, x, y, z) that
    keeps the scenario's gateway defaults. Returns the scenario's ``gateways`` data."""
    if path.suffix.lower() in (".csv", ".parquet"):
        try:
            info = read_gateways(path)
        except (CaptureError, OSError) as exc:
            raise SweepError(path, [str(exc).removeprefix(f"{path}: ")]) from None
        units = [{"id": gid, "x": float(x), "y": float(y), "z": float(z)}
                 for gid, (x, y, z) in zip(info.ids, info.xyz.tolist(), strict=True)]
        return {"defaults": dict(defaults), "list": units}
    data = load_toml(path, SweepError)
    if not isinstance(data.get("gateways"), dict):
        raise SweepError(path, ["gateways: a layout file needs a [gateways] table (defaults, list, grid)"])
    try:
        gateways = Gateways.model_validate(data["gateways"])
    except ValidationError as exc:
        raise SweepError(path, validation_problems(exc, "gateways")) from None
    return gateways.model_dump(mode="json", by_alias=True)


def _unique_labels(paths: Sequence[str], names: Sequence[str]) -> list[str]:
    """Short labels (a scenario's name, a file's stem) unless two collide: then the paths."""
    return list(names) if len(set(names)) == len(names) else list(paths)


def _short_names(paths: Sequence[str]) -> dict[str, str]:
    """Each axis by its last segment (``shadowing_sigma_db``) in variant names, unless two
    axes share it: then by the full dotted path."""
    last = [p.replace("[", ".").replace("]", "").rsplit(".", 1)[-1] for p in paths]
    return {p: (s if last.count(s) == 1 else p) for p, s in zip(paths, last, strict=True)}


def parse_spec(text: str, source: Path | str = "<string>", base_dir: Path | None = None) -> SweepSpec:
    """A sweep spec from TOML text: every file it names read, every path and value
    checked against the scenario model, every variant validated. Errors name ``source``
    (or the layout/scenario file at fault) and the field."""
    spec = parse_model(text, source, _SpecFile, SweepError)
    here = base_dir if base_dir is not None else Path(source).parent
    scenario_files = [spec.scenario] if isinstance(spec.scenario, str) else list(spec.scenario)
    scenarios = [load_scenario(here / f) for f in scenario_files]  # ScenarioError names the file

    problems: list[str] = []
    fixed = _flatten(spec.set)
    axis_values = _flatten({k: v for k, v in spec.axes.items() if k != LAYOUT_AXIS})
    layout_files = spec.axes.get(LAYOUT_AXIS)
    if layout_files is not None and (
        not isinstance(layout_files, list) or not layout_files or not all(isinstance(f, str) for f in layout_files)
    ):
        problems.append(f"axes.{LAYOUT_AXIS}: a non-empty list of layout files (or {OWN_LAYOUT!r})")
        layout_files = None
    base = _scenario_data(scenarios[0])
    problems += [f"set.{path}: {why}" for path in fixed if (why := _check_path(base, path)) is not None]
    for path, values in axis_values.items():
        if (why := _check_path(base, path)) is not None:
            problems.append(f"axes.{path}: {why}")
        elif not isinstance(values, list) or not values:
            problems.append(f"axes.{path}: an axis is a non-empty list of values, got {_label(values)}")
    if problems:
        raise SweepError(source, problems)

    # Each value alone on the base scenario (with [set]), so an error names the value.
    for path, value in fixed.items():
        _set_path(base, path, value)
    if isinstance(checked := _validate(base), list):
        raise SweepError(source, [f"set: {p}" for p in checked])
    for path, values in axis_values.items():
        for i, value in enumerate(values):
            trial = copy.deepcopy(base)
            _set_path(trial, path, value)
            if isinstance(checked := _validate(trial), list):
                problems += [f"axes.{path}[{i}] = {_label(value)}: {p}" for p in checked]
    layouts: list[tuple[str, dict[str, Any] | None]] = []
    if layout_files:
        named = [Path(f).stem if f != OWN_LAYOUT else OWN_LAYOUT for f in layout_files]
        for label, f in zip(_unique_labels(layout_files, named), layout_files, strict=True):
            own = f == OWN_LAYOUT
            layouts.append((label, None if own else _load_layout(here / f, base["gateways"].get("defaults", {}))))
    if problems:
        raise SweepError(source, problems)

    axes: list[Axis] = []
    if len(scenarios) > 1:
        axes.append(Axis("scenario", tuple(_unique_labels(scenario_files, [s.name for s in scenarios]))))
    if layouts:
        axes.append(Axis("layout", tuple(label for label, _ in layouts)))
    for path, values in axis_values.items():
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        axes.append(Axis(path, tuple(_label(v) for v in values), tuple(float(v) for v in values) if numbers else None))
    varying = {a.name for a in axes if len(a.labels) > 1}
    short = _short_names([a.name for a in axes])

    variants: list[Variant] = []
    scenario_choices = list(enumerate(scenarios))
    layout_choices: list[tuple[str, dict[str, Any] | None]] = layouts or [(OWN_LAYOUT, None)]
    value_choices = [list(enumerate(v)) for v in axis_values.values()]
    for (si, sc), (layout_label, gateways), *picked in itertools.product(
        scenario_choices, layout_choices, *value_choices
    ):
        labels: dict[str, str] = {}
        if len(scenarios) > 1:
            labels["scenario"] = axes[0].labels[si]
        if layouts:
            labels["layout"] = layout_label
        values = {path: value for path, (_, value) in zip(axis_values, picked, strict=True)}
        labels |= {path: _label(value) for path, value in values.items()}
        name = ", ".join(f"{short[k]}={v}" for k, v in labels.items() if k in varying) or "base"
        data = _scenario_data(sc)
        if gateways is not None:
            data["gateways"] = copy.deepcopy(gateways)
        # Paths were checked on the first scenario; another scenario may lack one.
        missing = [f"variant {name!r}: {path}: {why}" for path in [*fixed, *values]
                   if (why := _check_path(data, path)) is not None]
        if missing:
            problems += missing
            continue
        for path, value in [*fixed.items(), *values.items()]:
            _set_path(data, path, value)
        checked = _validate(data)
        if isinstance(checked, list):
            problems += [f"variant {name!r}: {p}" for p in checked]
            continue
        variants.append(Variant(len(variants), name, labels, checked))
    if problems:
        raise SweepError(source, problems)

    if isinstance(spec.seeds, list):
        seeds = list(spec.seeds)
    else:
        seeds = replicate_seeds(spec.seeds, spec.entropy if spec.entropy is not None else scenarios[0].seed)
    # The spec and every file it reads: the same digest means the same runs.
    digest = hashlib.sha256(text.encode())
    for f in [*scenario_files, *(f for f in layout_files or () if f != OWN_LAYOUT)]:
        digest.update((here / f).read_bytes())
    return SweepSpec(spec.name, str(source), digest.hexdigest(), tuple(axes), tuple(variants), tuple(seeds))


def load_spec(path: Path | str) -> SweepSpec:
    """Read a sweep spec; files it names are relative to it."""
    path = Path(path)
    return parse_spec(read_text(path, SweepError), path, path.parent)


# -- running ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedRun:
    """One unit of work, small enough to ship to any worker."""

    run: int
    variant: int
    replicate: int
    seed: int
    scenario: Scenario  # with the run's seed


def plan_runs(spec: SweepSpec) -> list[PlannedRun]:
    """Every (variant, seed) pair, variant-major; run numbers fix the table's row order."""
    runs: list[PlannedRun] = []
    for v in spec.variants:
        for r, seed in enumerate(spec.seeds):
            runs.append(PlannedRun(len(runs), v.index, r, seed, v.scenario.model_copy(update={"seed": seed})))
    return runs


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def alert_quality(rules: Mapping[str, Any]) -> dict[str, float]:
    """Precision and recall over every scored rule of ``metrics["rules"]``: the share of
    alarms an injected incident explains, the share of incidents some rule caught.
    NaN where there is nothing to divide (no alarms; no incidents injected)."""
    scored = [e for e in rules.values() if isinstance(e, dict) and "precision" in e]
    alarms = sum(int(e.get("events") or 0) for e in scored)
    hits = sum(int(e.get("true_positives") or 0) for e in scored)
    incidents = sum(int(e.get("incidents") or 0) for e in scored)
    detected = sum(int(e.get("detected") or 0) for e in scored if e.get("incidents"))
    theft = rules.get("exit_without_checkout") or {}
    return {
        "alert_precision": hits / alarms if alarms else math.nan,
        "alert_recall": detected / incidents if incidents else math.nan,
        "theft_recall": _number(theft.get("recall")) if theft.get("incidents") else math.nan,
        "false_alarms_per_day_per_1000_tags": _number(rules.get("false_alarms_per_day_per_1000_tags")),
        "count_accuracy": _number(rules.get("count_accuracy")),
    }


def metrics_row(scenario: Scenario, report: Mapping[str, Any]) -> dict[str, float | int]:
    """The sweep's metrics of one run from its report.json (twin.run): accuracy, alert
    quality, and cost and NPV from the scenario's [roi] on what the run measured."""
    m = report["metrics"]
    rules = m.get("rules") or {}
    measured = measured_from_report(dict(report))  # the too-little-exposure rule prices alarms
    case = evaluate_case(scenario.roi, measured)
    incidents = rules.get("incidents") or {}
    row: dict[str, float | int] = {
        "median_error_m": _number(m.get("median_error_m")),
        "p90_error_m": _number(m.get("p90_error_m")),
        "zone_accuracy": _number(m.get("zone_accuracy")),
        "device_coverage": _number(m.get("device_coverage")),
        "r90_coverage": _number(m.get("r90_coverage")),
        **alert_quality(rules),
        "cost": case.capex,
        "opex_per_month": case.opex_per_month,
        "npv": case.npv,
        "tags": int(report["tags"]),
        "gateways": int(report["gateways"]),
        "sightings": int(m.get("sightings") or 0),
        "fixes": int(m.get("fixes") or 0),
        "incidents": int(sum(incidents.values())) if isinstance(incidents, dict) else 0,
        "alarms": int(rules.get("alarms") or 0),
        "false_alarms": int(rules.get("false_alarms") or 0),
        "npv_at_design_false_alarms": int(measured.false_alarms_from_design or measured.reviews_from_design),
        "thousand_tag_days": _number(rules.get("thousand_tag_days")),  # the false alarms' exposure
    }
    return row


def run_one(planned: PlannedRun) -> dict[str, Any]:
    """Simulate one planned run (twin → engine → rules → evaluation) and reduce it to a
    table row. A run that fails is a row with its error, not a lost sweep."""
    from twin.run import simulate

    cpu = time.process_time()
    try:
        report = simulate(planned.scenario).report()
        row = _head(planned) | metrics_row(planned.scenario, report) | {"error": ""}
        # CPU seconds: for perf figures only (runs_table leaves it out: it depends on the machine)
        return row | {"cpu_s": time.process_time() - cpu}
    except Exception as exc:  # one bad run is reported, the sweep goes on
        return failed_row(planned, exc)


def _head(planned: PlannedRun) -> dict[str, Any]:
    return {"run": planned.run, "variant": planned.variant, "replicate": planned.replicate, "seed": planned.seed}


def failed_row(planned: PlannedRun, exc: BaseException) -> dict[str, Any]:
    """The row of a run that raised, or whose worker died: NaN metrics and the reason."""
    return _head(planned) | {k: math.nan for k, _ in METRICS} | dict.fromkeys(COUNTS, 0) | {
        "thousand_tag_days": math.nan, "error": f"{type(exc).__name__}: {exc}"}


def machine_workers() -> int:
    """One worker process per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class SchedulerError(RuntimeError):
    """The Dask scheduler named by --scheduler cannot be reached."""


class RunBatch(Generic[J, R]):
    """Jobs running on a process pool, a Dask cluster or in this process, polled without
    blocking: ``tagtwin sweep`` waits on it (:func:`execute`) and the planner polls it
    between redraws of its progress bar. ``fn`` must be a module-level function (it is
    pickled to the workers). ``cancel`` ends the workers at once, their memory with them
    (the planner's Cancel button, a user leaving the view); ``close`` waits for them.

    ``dask``: a LocalCluster of ``workers`` single-threaded processes, or the cluster at
    ``scheduler`` (tcp://host:port); ``process``: a spawn-context process pool (fresh
    interpreters, never a fork of a threaded app server); ``serial``: one job per poll,
    in this process (tests, debugging)."""

    def __init__(self, jobs: Sequence[J], fn: Callable[[J], R], executor: Executor = "process", *,
                 scheduler: str | None = None, workers: int | None = None) -> None:
        self.jobs = list(jobs)
        self.fn = fn
        self.executor = executor
        self.workers = max(1, min(workers or machine_workers(), max(len(self.jobs), 1)))
        self._pending: dict[Any, int] = {}  # future (or job index, serial) -> job index
        self._todo = list(range(len(self.jobs)))  # serial: what is left
        self._pool: Any = None
        self._cluster: Any = None
        self._client: Any = None
        if executor == "serial":
            return
        if executor == "process":
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            self._pending = {self._pool.submit(fn, job): i for i, job in enumerate(self.jobs)}
        elif executor == "dask":
            self._start_dask(scheduler)
        else:
            raise ValueError(f"unknown executor {executor!r}: dask, process or serial")

    def _start_dask(self, scheduler: str | None) -> None:
        import logging
        import uuid

        from distributed import Client, LocalCluster

        if scheduler is None:
            self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                         host="127.0.0.1", dashboard_address=None, silence_logs=logging.ERROR)
            self._client = Client(self._cluster)
        else:
            try:
                self._client = Client(scheduler, timeout="15s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise SchedulerError(f"cannot reach the Dask scheduler {scheduler}: {exc}") from None
        batch = uuid.uuid4().hex[:12]
        futures = self._client.map(self.fn, self.jobs, key=[f"tagtwin-{batch}-{i}" for i in range(len(self.jobs))],
                                   pure=False)
        self._pending = {f: i for i, f in enumerate(futures)}

    @property
    def finished(self) -> bool:
        return not self._pending and not self._todo if self.executor == "serial" else not self._pending

    @property
    def done(self) -> int:
        return len(self.jobs) - (len(self._todo) if self.executor == "serial" else len(self._pending))

    def poll(self, timeout: float = 0.0) -> list[tuple[int, R | BaseException]]:
        """The jobs finished since the last poll, waiting up to ``timeout`` s for the first:
        (job index, its result, or the exception it raised or its worker died of)."""
        if self.executor == "serial":
            if not self._todo:
                return []
            i = self._todo.pop(0)
            try:
                return [(i, self.fn(self.jobs[i]))]
            except Exception as exc:
                return [(i, exc)]
        if not self._pending:
            return []
        if self.executor == "process":
            from concurrent.futures import FIRST_COMPLETED
            from concurrent.futures import wait as wait_futures

            finished, _ = wait_futures(list(self._pending), timeout=timeout, return_when=FIRST_COMPLETED)
        else:
            from distributed import wait as wait_dask

            with contextlib.suppress(TimeoutError):
                wait_dask(list(self._pending), timeout=max(timeout, 0.001), return_when="FIRST_COMPLETED")
            finished = {f for f in self._pending if f.done()}
        out: list[tuple[int, R | BaseException]] = []
        for future in finished:
            i = self._pending.pop(future)
            try:
                out.append((i, future.result()))
            except Exception as exc:  # a run that raised, a killed process, a lost Dask worker
                out.append((i, exc))
            if self.executor == "dask":
                future.release()  # type: ignore[attr-defined]
        return sorted(out, key=lambda x: x[0])

    def cancel(self) -> None:
        """Stop every worker now. concurrent.futures has no public terminate before Python
        3.14, so the pool's own process table is used; a LocalCluster is closed (its worker
        processes end), a remote cluster's futures cancelled."""
        self._todo = []
        if self._pool is not None:
            processes = list((getattr(self._pool, "_processes", None) or {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for p in processes:
                p.terminate()
            for p in processes:
                p.join(5)
                if p.is_alive():  # still starting up on a loaded machine: no second chance
                    p.kill()
                    p.join(5)
            self._pool = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.cancel(list(self._pending), force=True)
        self._pending = {}
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def execute(
    runs: Sequence[PlannedRun],
    executor: Executor = "dask",
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every planned run (:class:`RunBatch` with :func:`run_one`) and return their rows
    in run order, whatever order they finished in; a run whose worker died is a failed row."""
    rows: list[dict[str, Any]] = []
    batch: RunBatch[PlannedRun, dict[str, Any]] = RunBatch(runs, run_one, executor, scheduler=scheduler,
                                                            workers=workers)
    ok = False
    try:
        while not batch.finished:
            for i, result in batch.poll(timeout=1.0):
                rows.append(failed_row(runs[i], result) if isinstance(result, BaseException) else result)
                if progress is not None:
                    progress(len(rows), len(runs))
        ok = True
    finally:
        if ok:
            batch.close()
        else:
            batch.cancel()
    return sorted(rows, key=lambda r: int(r["run"]))


# -- the table and the statistics --------------------------------------------------------


def runs_table(spec: SweepSpec, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """One row per run, in run order: ids, each axis's value, the seed, every metric and
    count, and the error of a failed run (empty when it worked)."""
    variants = spec.variants
    cols: dict[str, pa.Array] = {
        "run": pa.array([r["run"] for r in rows], pa.int32()),
        "variant": pa.array([r["variant"] for r in rows], pa.int32()),
        "variant_name": pa.array([variants[r["variant"]].name for r in rows], pa.string()),
    }
    for axis in spec.axes:
        picked = [variants[r["variant"]].labels[axis.name] for r in rows]
        if axis.numeric is not None:
            by_label = dict(zip(axis.labels, axis.numeric, strict=True))
            cols[axis.name] = pa.array([by_label[p] for p in picked], pa.float64())
        else:
            cols[axis.name] = pa.array(picked, pa.string())
    cols["replicate"] = pa.array([r["replicate"] for r in rows], pa.int32())
    cols["seed"] = pa.array([r["seed"] for r in rows], pa.int64())
    for key, _ in METRICS:
        cols[key] = pa.array([float(r[key]) for r in rows], pa.float64())
    for key in COUNTS:
        cols[key] = pa.array([int(r[key]) for r in rows], pa.int64())
    cols["thousand_tag_days"] = pa.array([float(r["thousand_tag_days"]) for r in rows], pa.float64())
    cols["error"] = pa.array([r["error"] for r in rows], pa.string())
    return pa.table(cols)


def mean_ci(values: Iterable[float], level: float = 0.95) -> dict[str, Any]:
    """Mean and two-sided Student-t confidence interval of the finite values; the interval
    is null with fewer than two of them (no spread to estimate)."""
    from scipy.stats import t as student_t

    x = np.array([v for v in values if math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": None, "ci95": None}
    mean = float(x.mean())
    if n < 2:
        return {"n": 1, "mean": _round(mean), "ci95": None}
    half = float(student_t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return {"n": n, "mean": _round(mean), "ci95": [_round(mean - half), _round(mean + half)]}


def _round(v: float) -> float:
    return float(f"{v:.6g}")


def pareto_front(
    rows: Sequence[Mapping[str, Any]], cost_key: str = COST_KEY, error_key: str = ACCURACY_KEY,
    name_key: str = "name",
) -> list[str]:
    """Names of the rows no other row beats on both cost and error (lower is better for
    both; rows missing either are left out): the options worth considering."""
    ok = [r for r in rows if _finite(r.get(cost_key)) and _finite(r.get(error_key))]
    front = []
    for r in ok:
        dominated = any(
            o is not r and o[cost_key] <= r[cost_key] and o[error_key] <= r[error_key]
            and (o[cost_key] < r[cost_key] or o[error_key] < r[error_key])
            for o in ok
        )
        if not dominated:
            front.append(str(r[name_key]))
    return front


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and math.isfinite(float(v))


def summarize(spec: SweepSpec, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per variant: mean and 95 % CI of each metric over its seeds; the paired difference
    to the base variant (variant 0) over the seeds both ran; failed runs; and the Pareto
    front of mean cost against mean p90 error. Deterministic: same rows, same bytes."""
    by_variant: dict[int, dict[int, Mapping[str, Any]]] = {}
    for r in rows:
        if not r["error"]:
            by_variant.setdefault(int(r["variant"]), {})[int(r["replicate"])] = r
    base = by_variant.get(0, {})
    out = []
    for v in spec.variants:
        mine = by_variant.get(v.index, {})
        metrics = {k: mean_ci(float(r[k]) for r in mine.values()) for k, _ in METRICS}
        from_design = sum(int(r.get("npv_at_design_false_alarms", 0)) for r in mine.values())
        exposure = sum(float(r["thousand_tag_days"]) for r in mine.values()
                       if math.isfinite(float(r.get("thousand_tag_days", math.nan))))
        entry: dict[str, Any] = {
            "variant": v.index, "name": v.name, "values": v.labels,
            "runs": len(spec.seeds), "failed": len(spec.seeds) - len(mine),
            "metrics": metrics,
            # design.md's too-little-exposure rule: how many runs' NPV used the design rate
            "npv_at_design_false_alarms": from_design,
            # pooled over the variant's runs, shown by the exposure rule (design.md), never bare
            "false_alarm_rate": rate_reading(sum(int(r.get("false_alarms", 0)) for r in mine.values()),
                                             exposure, DESIGN_FALSE_ALARMS).as_dict() if exposure > 0 else None,
        }
        if from_design:
            entry["npv_note"] = (
                f"NPV prices false alarms at the design rate ({DESIGN_FALSE_ALARMS:g} per day per "
                f"1,000 tags) in {from_design} of {len(mine)} runs: too little exposure to use "
                "the measured rate")
        if v.index != 0:
            shared = sorted(set(mine) & set(base))
            entry["vs_base"] = {
                k: mean_ci(float(mine[i][k]) - float(base[i][k]) for i in shared) for k, _ in METRICS
            }
        out.append(entry)
    means = [{"name": e["name"], **{k: e["metrics"][k]["mean"] for k, _ in METRICS}} for e in out]
    return {
        "sweep": spec.name,
        "spec_sha256": spec.sha256,
        "runs": spec.runs,
        "failed_runs": sum(e["failed"] for e in out),
        "seeds": list(spec.seeds),
        "axes": {a.name: list(a.labels) for a in spec.axes},
        "metrics": [{"name": k, "lower_is_better": low} for k, low in METRICS],
        "base": spec.variants[0].name,
        "variants": out,
        "pareto": {"cost": COST_KEY, "error": ACCURACY_KEY, "front": pareto_front(means)},
    }


def write_outputs(table: pa.Table, summary: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """runs.parquet (every run) and summary.json; both byte-identical for the same spec."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"runs": out_dir / "runs.parquet", "summary": out_dir / "summary.json"}
    pq.write_table(table, paths["runs"])
    paths["summary"].write_text(summary_json(summary))
    return paths


def summary_json(summary: Mapping[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=False, allow_nan=False) + "\n"
