"""What the server knows of a site: the scenario's plan and gateways, and the gateway keys.

keys.toml holds each gateway's HMAC key, and during a rotation its new and old key (the
first one signs, every one listed verifies), plus what is revoked::

    [keys]
    gw-01 = "<64 hex>"
    gw-02 = ["<new 64 hex>", "<old 64 hex>"]   # rotating: both accepted until the old is retired
    [revoked]
    gateways = ["gw-07"]                      # refused from then on, with an event
    tags = ["ibeacon:...:1:2"]
"""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from live_bridge.gateway import ConfigError
from siteplan.config_file import check_private, load_toml

KEY_BYTES = 32


@dataclass(frozen=True)
class KeyRing:
    """Verification keys per gateway (newest first) and the revoked gateways and tags."""

    keys: dict[str, tuple[bytes, ...]]
    revoked_gateways: frozenset[str] = field(default_factory=frozenset)
    revoked_tags: frozenset[str] = field(default_factory=frozenset)

    def signing_keys(self) -> dict[str, bytes]:
        """The key each gateway signs with: the newest."""
        return {gw: ring[0] for gw, ring in self.keys.items()}


def _parse_key(value: object) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    return raw


def load_key_ring(path: Path | str) -> KeyRing:
    """Read keys.toml (see the module docstring); ConfigError names file and field."""
    path = Path(path)
    data = load_toml(path, ConfigError)
    table = data.get("keys")
    if not isinstance(table, dict) or not (table or data.get("revoked")):
        raise ConfigError(path, ["keys: expected a [keys] table of gateway id = hex key"])
    out: dict[str, tuple[bytes, ...]] = {}
    problems = []
    for gw, value in table.items():
        values = value if isinstance(value, list) else [value]
        ring = tuple(_parse_key(v) for v in values)
        if not ring or len(ring) > 2 or any(len(k) < 16 for k in ring):
            problems.append(f"keys.{gw}: expected at least 32 hex characters (or a list of two such keys)")
        out[gw] = ring
    revoked = data.get("revoked", {})
    gateways: list[str] = []
    tags: list[str] = []
    if not isinstance(revoked, dict):
        problems.append("revoked: expected a table with gateways = [...] and tags = [...]")
    else:
        for name, target in (("gateways", gateways), ("tags", tags)):
            items = revoked.get(name, [])
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                problems.append(f"revoked.{name}: expected a list of ids")
            else:
                target.extend(items)
        extra = sorted(set(revoked) - {"gateways", "tags"})
        if extra:
            problems.append(f"revoked: unknown entries {extra}")
    if problems:
        raise ConfigError(path, problems)
    return KeyRing(out, frozenset(gateways), frozenset(tags))


def load_keys(path: Path | str) -> dict[str, bytes]:
    """keys.toml as each gateway's signing key (the newest of a rotating pair)."""
    return load_key_ring(path).signing_keys()


def new_keys_toml(gateway_ids: list[str]) -> str:
    """A keys file with a fresh random 32-byte key per gateway."""
    lines = [
        "# HMAC-SHA256 keys shared by each gateway and the server; keep this file secret.",
        "[keys]",
    ]
    lines += [f'"{g}" = "{secrets.token_hex(KEY_BYTES)}"' for g in gateway_ids]
    return "\n".join(lines) + "\n"


def check_keys_match(keys: dict[str, bytes], gateway_ids: tuple[str, ...] | list[str], path: Path | str) -> None:
    """ConfigError when the keys file names a gateway the site does not have (a typo, or the
    keys of another site): such a key would let traffic in that the site never placed."""
    known = set(gateway_ids)
    stray = [gw for gw in keys if gw not in known]
    if stray:
        raise ConfigError(
            path, [f"keys.{gw}: no gateway {gw!r} in the site (it has {len(known)} gateways)" for gw in stray]
        )


# -- secrets on disk -------------------------------------------------------------------


def check_secret_file(path: Path | str) -> None:
    """ConfigError unless the file is private to its owner (mode 0600 or stricter)."""
    check_private(path, ConfigError)


def write_secret_file(path: Path | str, text: str) -> None:
    """Write a secret file created 0600 (never world-readable, not even for a moment)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _raw_document(path: Path) -> dict[str, object]:
    return tomllib.loads(path.read_text())


def rotate_key(path: Path | str, gateway: str) -> str:
    """Give ``gateway`` a new key, keeping the old one for the overlap; returns the new hex.

    The server accepts both until :func:`retire_old_key`; the gateway switches to the new
    key whenever it is redeployed, and batches signed with either arrive (no data lost)."""
    path = Path(path)
    ring = load_key_ring(path)
    if gateway not in ring.keys:
        raise ConfigError(path, [f"keys.{gateway}: no such gateway"])
    doc = _raw_document(path)
    new = secrets.token_hex(KEY_BYTES)
    keys = doc["keys"]
    assert isinstance(keys, dict)
    keys[gateway] = [new, ring.keys[gateway][0].hex()]
    write_secret_file(path, tomli_w.dumps(doc))
    return new


def retire_old_key(path: Path | str, gateway: str) -> None:
    """End a rotation's overlap: only the newest key verifies from now on."""
    path = Path(path)
    ring = load_key_ring(path)
    if gateway not in ring.keys:
        raise ConfigError(path, [f"keys.{gateway}: no such gateway"])
    doc = _raw_document(path)
    keys = doc["keys"]
    assert isinstance(keys, dict)
    keys[gateway] = ring.keys[gateway][0].hex()
    write_secret_file(path, tomli_w.dumps(doc))


def revoke(path: Path | str, *, gateway: str | None = None, tag: str | None = None) -> None:
    """Revoke a gateway (its keys are deleted too) or a tag: refused from the next reload."""
    path = Path(path)
    load_key_ring(path)  # the file must be valid before it is edited
    doc = _raw_document(path)
    revoked = doc.setdefault("revoked", {})
    assert isinstance(revoked, dict)
    if gateway is not None:
        keys = doc["keys"]
        assert isinstance(keys, dict)
        if gateway not in keys and gateway not in revoked.get("gateways", []):
            raise ConfigError(path, [f"keys.{gateway}: no such gateway"])
        keys.pop(gateway, None)
        revoked["gateways"] = sorted({*revoked.get("gateways", []), gateway})
    if tag is not None:
        revoked["tags"] = sorted({*revoked.get("tags", []), tag})
    write_secret_file(path, tomli_w.dumps(doc))
