"""Edge filters (forward only the site's tags) and privacy hashing of device ids."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING

from live_bridge.decoders import norm_mac, norm_uuid

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


@dataclass(frozen=True)
class AdvertFilter:
    """Pass an advertisement if it matches *any* configured rule; no rules: pass all.

    Matching happens before decoding, on what the radio saw: the address, the service
    UUIDs of its service data, and the company ids of its manufacturer data.
    """

    addresses: frozenset[str] = frozenset()
    service_uuids: frozenset[str] = frozenset()
    manufacturer_ids: frozenset[int] = frozenset()

    @classmethod
    def build(
        cls,
        addresses: Iterable[str] = (),
        service_uuids: Iterable[str] = (),
        manufacturer_ids: Iterable[int] = (),
    ) -> AdvertFilter:
        return cls(
            frozenset(norm_mac(a) for a in addresses),
            frozenset(norm_uuid(u) for u in service_uuids),
            frozenset(int(m) for m in manufacturer_ids),
        )

    @property
    def empty(self) -> bool:
        return not (self.addresses or self.service_uuids or self.manufacturer_ids)

    def accepts(
        self,
        address: str,
        manufacturer_data: Mapping[int, bytes],
        service_data: Mapping[str, bytes],
    ) -> bool:
        if self.empty:
            return True
        if self.addresses and norm_mac(address) in self.addresses:
            return True
        if self.manufacturer_ids and not self.manufacturer_ids.isdisjoint(manufacturer_data):
            return True
        return bool(self.service_uuids) and any(
            norm_uuid(u) in self.service_uuids for u in service_data
        )


def privacy_hash(device_id: str, salt: bytes) -> str:
    """Keyed hash of a device id (HMAC-SHA256, first 16 bytes as hex).

    Stable for one salt, so the server can still track the device; without the salt
    the address cannot be recovered or confirmed by hashing candidate addresses.
    """
    return "h:" + hmac.new(salt, device_id.encode(), hashlib.sha256).hexdigest()[:32]
