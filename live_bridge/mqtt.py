"""Thin helpers around paho-mqtt (v2 callback API): broker URLs and client creation."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import paho.mqtt.client as paho


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        """``mqtt://[user:pass@]host[:port]``; ValueError naming the URL otherwise."""
        parts = urlsplit(url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise ValueError(f"broker URL {url!r}: expected mqtt://host[:port]")
        try:
            port = parts.port or 1883
        except ValueError:
            raise ValueError(f"broker URL {url!r}: bad port") from None
        return cls(parts.hostname, port, parts.username, parts.password)


def make_client(client_id: str, broker: BrokerUrl, clean_session: bool = True) -> paho.Client:
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session
    )
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client
