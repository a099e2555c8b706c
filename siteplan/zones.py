"""Zone assignment: which named polygon each position falls in, vectorized with shapely."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
from numpy.typing import NDArray

NO_ZONE = -1

# One tint per zone role, shared by every drawing of a site (matplotlib and plotly).
ZONE_COLOURS = {"storage": "#dbe9f6", "packing": "#fde7c8", "checkout": "#e6d7f2", "exit": "#f8d0d0",
                "receiving": "#d9f0d3", "shipping": "#fff3b0", "office": "#eeeeee", "other": "#f4f4f4"}


@dataclass(frozen=True)
class ZoneIndex:
    """Named zone polygons with roles. Overlaps resolve to the zone listed first."""

    names: tuple[str, ...]
    roles: tuple[str, ...]
    polygons: tuple[shapely.Polygon, ...]
    _prepared: bool = field(default=False, init=False, repr=False, compare=False)

    @classmethod
    def from_points(cls, zones: Sequence[tuple[str, str, Sequence[tuple[float, float]]]]) -> ZoneIndex:
        polys = tuple(shapely.Polygon(p) for _, _, p in zones)
        for poly in polys:
            shapely.prepare(poly)
        return cls(tuple(n for n, _, _ in zones), tuple(r for _, r, _ in zones), polys)

    def __len__(self) -> int:
        return len(self.names)

    def assign(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.int32]:
        """Zone index of each point, or NO_ZONE (-1). Boundary points count as inside."""
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        out = np.full(x.shape, NO_ZONE, dtype=np.int32)
        # Few zones, many points: loop over zones, vectorize over points. Reverse order so
        # the first-listed zone wins where zones overlap.
        for i in reversed(range(len(self.polygons))):
            inside = shapely.intersects_xy(self.polygons[i], x, y)
            out[inside] = i
        return out

    def indices_with_role(self, *roles: str) -> list[int]:
        return [i for i, r in enumerate(self.roles) if r in roles]

    def resolve(self, name_or_role: str) -> list[int]:
        """Zones called ``name_or_role``, or else all zones with that role."""
        if name_or_role in self.names:
            return [self.names.index(name_or_role)]
        return self.indices_with_role(name_or_role)
