"""What the server knows of a site: the scenario's plan and gateways, and the gateway keys."""

from __future__ import annotations

import secrets
from pathlib import Path

from live_bridge.gateway import ConfigError
from siteplan.config_file import load_toml


def load_keys(path: Path | str) -> dict[str, bytes]:
    """keys.toml: ``[keys]`` gateway id = hex key (>= 16 bytes)."""
    path = Path(path)
    data = load_toml(path, ConfigError)
    table = data.get("keys")
    if not isinstance(table, dict) or not table:
        raise ConfigError(path, ["keys: expected a [keys] table of gateway id = hex key"])
    out, problems = {}, []
    for gw, key in table.items():
        try:
            raw = bytes.fromhex(key) if isinstance(key, str) else b""
        except ValueError:
            raw = b""
        if len(raw) < 16:
            problems.append(f"keys.{gw}: expected at least 32 hex characters")
        out[gw] = raw
    if problems:
        raise ConfigError(path, problems)
    return out


def new_keys_toml(gateway_ids: list[str]) -> str:
    """A keys file with a fresh random 32-byte key per gateway."""
    lines = [
        "# HMAC-SHA256 keys shared by each gateway and the server; keep this file secret.",
        "[keys]",
    ]
    lines += [f'"{g}" = "{secrets.token_hex(32)}"' for g in gateway_ids]
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
