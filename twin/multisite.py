"""Multi-site scenarios: many sites, or one site replicated with different seeds.

A retailer runs many stores; a load test or a scaled-out backbone needs their traffic at
once, one stream partition per site. A multi-site file lists groups of sites, each a
scenario file and a count; the replicas of a group are the same building with their own
seeds (tags, movers, shadowing and incidents all differ), spawned from
``numpy.random.SeedSequence`` so a site's traffic never depends on which worker makes it.

    name = "demo-chain"
    entropy = 7                      # default: the first scenario's seed
    [[sites]]
    scenario = "../demo.toml"        # relative to this file
    count = 4                        # store-01 .. store-04
    id = "store"
    set = { duration_s = 300 }       # dotted-path overrides, as in a sweep's [set]
    [[sites]]
    scenario = "../large.toml"
    id = "dc-north"                  # count 1: the id as given
    seed = 11                        # count 1 only: this seed instead of a spawned one

Site ids are the partition keys of the backbone's subjects, so they are restricted to
letters, digits, ``-`` and ``_``, and unique across the file.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from siteplan.config_file import ConfigFileError, parse_model, read_text
from twin.scenario import Scenario, load_scenario
from twin.sweep import replicate_seeds, with_overrides

SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class MultiSiteError(ConfigFileError):
    """A multi-site file (or a scenario it names) that cannot be used."""


class SiteGroup(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scenario: str = Field(min_length=1, description="scenario file, relative to the multi-site file")
    count: int = Field(1, ge=1, le=100_000, description="replicas of this site, each with its own seed")
    id: str | None = Field(None, description="site id (count 1) or id prefix; default: the scenario's name")
    seed: int | None = Field(None, ge=0, description="count 1 only: this seed instead of a spawned one")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted path -> value for these sites")

    @model_validator(mode="after")
    def _seed_for_one(self) -> SiteGroup:
        if self.seed is not None and self.count != 1:
            raise ValueError("seed is for a single site; replicas get spawned seeds (set entropy instead)")
        return self


class _MultiSiteFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    entropy: int | None = Field(None, ge=0, description="root of the replicas' SeedSequence")
    sites: list[SiteGroup] = Field(min_length=1)


@dataclass(frozen=True)
class SiteRun:
    """One site of a multi-site scenario: its id (the partition key), where it came from,
    and its scenario with its own seed."""

    id: str
    group: int
    replica: int
    scenario: Scenario


@dataclass(frozen=True)
class MultiSite:
    name: str
    source: str
    sites: tuple[SiteRun, ...]

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.sites]


def _site_ids(prefix: str, count: int) -> list[str]:
    if count == 1:
        return [prefix]
    width = max(2, len(str(count)))
    return [f"{prefix}-{i + 1:0{width}d}" for i in range(count)]


def parse_multisite(text: str, source: Path | str = "<string>", base_dir: Path | None = None) -> MultiSite:
    """A multi-site scenario from TOML text; errors name ``source`` (or the scenario file
    at fault) and the field, one line per problem."""
    spec = parse_model(text, source, _MultiSiteFile, MultiSiteError)
    here = base_dir if base_dir is not None else Path(source).parent
    scenarios = [load_scenario(here / g.scenario) for g in spec.sites]  # ScenarioError names the file
    entropy = spec.entropy if spec.entropy is not None else scenarios[0].seed
    problems: list[str] = []
    sites: list[SiteRun] = []
    for g, (group, base) in enumerate(zip(spec.sites, scenarios, strict=True)):
        prefix = group.id if group.id is not None else base.name
        if not SITE_ID.match(prefix):
            problems.append(f"sites[{g}].id: {prefix!r} is not a site id (letters, digits, - and _; at most 64)")
            continue
        try:
            scenario = with_overrides(base, group.set, f"sites[{g}].set")
        except ValueError as exc:
            problems += str(exc).splitlines()
            continue
        seeds = [group.seed] if group.seed is not None else replicate_seeds(group.count, entropy, (g,))
        for r, (site_id, seed) in enumerate(zip(_site_ids(prefix, group.count), seeds, strict=True)):
            sites.append(SiteRun(site_id, g, r, scenario.model_copy(update={"seed": seed})))
    repeated = sorted(i for i, n in Counter(s.id for s in sites).items() if n > 1)
    if repeated:
        problems.append(f"sites: site ids must be unique; repeated: {', '.join(repeated[:5])}"
                        + (f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""))
    if problems:
        raise MultiSiteError(source, problems)
    return MultiSite(spec.name, str(source), tuple(sites))


def load_multisite(path: Path | str) -> MultiSite:
    """Read a multi-site file; scenario files are relative to it."""
    path = Path(path)
    return parse_multisite(read_text(path, MultiSiteError), path, path.parent)
