"""Helpers shared by the benchmark scripts: peak memory, JSON output, engine variants."""

from __future__ import annotations

import json
import platform
import resource
import sys
import tomllib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twin.scenario import Scenario


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(name: str, figures: dict[str, Any]) -> None:
    """Print one JSON object: the benchmark's name, its figures and the machine."""
    out = {"benchmark": name, **figures, "python": platform.python_version(), "machine": platform.machine()}
    json.dump(out, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def engine_variant(scenario: Scenario, overrides: Sequence[str]) -> Scenario:
    """The scenario with ``[engine]`` settings replaced, each ``KEY=VALUE`` (the value read as
    a TOML scalar, else as a string), renamed after them: fixes kept under the scenario's
    name (twin.run.simulate_keeping_fixes) then never stand in for another engine's."""
    if not overrides:
        return scenario
    engine = scenario.engine.model_dump()
    keys = sorted(type(scenario.engine).model_fields)
    for item in overrides:
        if "=" not in item or item.partition("=")[0] not in keys:
            raise SystemExit(f"--engine {item!r}: want KEY=VALUE with KEY one of {keys}")
        key, value = setting("--engine", item)
        engine[key] = value
    name = "+".join([scenario.name, *overrides])
    return _validated("--engine", overrides, scenario.model_dump() | {"name": name, "engine": engine})


def setting(flag: str, item: str) -> tuple[str, Any]:
    """One ``KEY=VALUE`` of a command-line override, the value read as a TOML scalar (else a
    string)."""
    key, sep, text = item.partition("=")
    if not sep:
        raise SystemExit(f"{flag} {item!r}: want KEY=VALUE")
    try:
        return key, tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return key, text


def misplaced_variant(scenario: Scenario, overrides: Sequence[str]) -> Scenario:
    """The scenario with ``[rules.misplaced]`` settings replaced (``KEY=VALUE`` each). The
    name stays: the rules do not change the fixes, so kept fixes are reused."""
    if not overrides:
        return scenario
    rules = scenario.rules.model_dump()
    rules["misplaced"] = rules["misplaced"] | dict(setting("--misplaced", s) for s in overrides)
    return _validated("--misplaced", overrides, scenario.model_dump() | {"rules": rules})


def _validated(flag: str, overrides: Sequence[str], data: dict[str, Any]) -> Scenario:
    """The scenario ``data`` describes, or a one-line exit naming the flag and the field."""
    from pydantic import ValidationError

    from twin.scenario import Scenario as _Scenario

    try:
        return _Scenario.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SystemExit(f"{flag} {' '.join(overrides)}: {where}: {first['msg']}") from None
