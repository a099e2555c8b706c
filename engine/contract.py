"""The contract between sources (twin, live bridge, replay) and the engine.

A sighting is one advertisement received by one gateway. The engine never sees one
Python object per sighting: sources hand it *columns*, a numpy structured array with
:data:`SIGHTING_DTYPE`, where gateways and devices are integer codes into id tables
(:class:`IdTable`) that the source and the engine share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

CONTRACT_VERSION = 1

UNKNOWN = -1  # battery, motion: the advertisement did not carry it

SIGHTING_DTYPE = np.dtype(
    [
        ("t", "f8"),  # event time, seconds (twin: since scenario start; live: Unix time)
        ("gateway", "i4"),  # code into the gateway IdTable
        ("device", "i4"),  # code into the device IdTable
        ("rssi", "f4"),  # dBm as reported by the receiver
        ("channel", "u1"),  # 37, 38, 39; 0 when the receiver does not say
        ("battery", "i1"),  # percent, or UNKNOWN
        ("motion", "i1"),  # 1 moving, 0 still, or UNKNOWN
        ("seq", "i4"),  # advertising-event (frame) counter, or UNKNOWN
    ]
)

Sightings = NDArray[np.void]


def empty_sightings(n: int = 0) -> Sightings:
    return np.zeros(n, dtype=SIGHTING_DTYPE)


def sightings_from_columns(**columns: NDArray[np.generic] | float | int) -> Sightings:
    """Build a sighting array from equal-length columns; missing optional ones get defaults."""
    lengths = {np.size(v) for v in columns.values() if np.ndim(v) > 0}
    if len(lengths) > 1:
        raise ValueError(f"columns differ in length: {sorted(lengths)}")
    n = lengths.pop() if lengths else 1
    out = empty_sightings(n)
    out["battery"] = UNKNOWN
    out["motion"] = UNKNOWN
    out["seq"] = UNKNOWN
    for name, values in columns.items():
        if name not in SIGHTING_DTYPE.names:  # type: ignore[operator]
            raise ValueError(f"unknown sighting column {name!r}")
        out[name] = values
    return out


def copy_id(device_id: str, copy: int) -> str:
    """The id of copy ``copy`` of a device, as a load test multiplies a site's traffic
    (tagtwin/loadgen.py) and the registry names the copies it knows (twin.run.registry_ids):
    ``<id>~<copy>``; copy 0 is the device itself."""
    return device_id if copy == 0 else f"{device_id}~{copy}"


@dataclass
class IdTable:
    """A growing, order-preserving map between string ids and integer codes."""

    ids: list[str] = field(default_factory=list)
    _codes: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._codes = {s: i for i, s in enumerate(self.ids)}
        if len(self._codes) != len(self.ids):
            raise ValueError("ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    def code(self, ident: str) -> int:
        """The code of ``ident``, registering it if new."""
        code = self._codes.get(ident)
        if code is None:
            code = len(self.ids)
            self.ids.append(ident)
            self._codes[ident] = code
        return code

    def codes(self, idents: NDArray[np.str_] | list[str], register: bool = True) -> NDArray[np.int32]:
        """Codes of many ids: a dict look-up per element (no sort of the strings); new ids
        are registered in sorted order, as ``np.unique`` would list them."""
        names = idents.tolist() if isinstance(idents, np.ndarray) else list(idents)
        get = self._codes.get
        found = [get(s) for s in names]  # ids are str: anything else is not found here
        if None in found:
            names = [str(s) for s in names]
            new = sorted({s for s, c in zip(names, found, strict=True) if c is None})
            if register:
                for s in new:
                    self.code(s)
                found = [get(s) for s in names]
            else:
                found = [UNKNOWN if c is None else c for c in found]
        return np.array(found, dtype=np.int32) if found else np.zeros(0, dtype=np.int32)

    def lookup(self, codes: NDArray[np.integer]) -> NDArray[np.str_]:
        return np.asarray(self.ids, dtype=str)[np.asarray(codes)]


@dataclass(frozen=True)
class GatewayInfo:
    """What the engine knows of its gateways: ids and positions (metres)."""

    ids: tuple[str, ...]
    xyz: NDArray[np.float64]

    def __post_init__(self) -> None:
        if self.xyz.shape != (len(self.ids), 3):
            raise ValueError(f"gateway positions must be ({len(self.ids)}, 3), got {self.xyz.shape}")


# numpy copies a packed structured array (SIGHTING_DTYPE: 27 bytes, unaligned fields)
# field by field, element by element: indexing, masking, ``copy`` and ``concatenate``
# cost 60-200 ns a row. ``np.take``, ``np.compress`` and copies of a void view of the
# same bytes cost 6-16 ns, and give the same bytes. Hot paths move rows with these.
def take_rows(rows: NDArray[np.void], idx: NDArray[np.integer]) -> NDArray[np.void]:
    """``rows[idx]`` for integer indices, as raw bytes."""
    return np.take(rows, idx)


def compress_rows(rows: NDArray[np.void], mask: NDArray[np.bool_]) -> NDArray[np.void]:
    """``rows[mask]`` for a boolean mask, as raw bytes."""
    return np.compress(mask, rows)


def concat_rows(parts: list[NDArray[np.void]], dtype: np.dtype[np.void]) -> NDArray[np.void]:
    """``np.concatenate(parts)`` of arrays of ``dtype``, as raw bytes (another dtype among
    the parts: plain ``np.concatenate``, which converts or refuses as numpy does)."""
    raw = np.dtype((np.void, dtype.itemsize))
    if not parts:
        return np.zeros(0, dtype)
    if any(p.dtype != dtype for p in parts):
        return np.concatenate(parts)
    return np.concatenate([np.ascontiguousarray(p).view(raw) for p in parts]).view(dtype)
