"""Thin helpers around paho-mqtt (v2 callback API): broker URLs, credentials, TLS, clients.

Secrets never travel in argv or URLs (both are visible to every local user in
/proc/PID/cmdline): a URL is ``mqtt://host[:port]`` or ``mqtts://host[:port]`` (TLS), and
the user name, password and certificate paths come from a credentials file, named by
``--creds FILE`` or ``$TAGTWIN_MQTT_CREDS`` and private to its owner (mode 0600), or from
``$TAGTWIN_MQTT_USERNAME`` / ``$TAGTWIN_MQTT_PASSWORD`` / ``$TAGTWIN_MQTT_CA``. The file::

    username = "gw-01"
    password = "..."
    ca_file = "/etc/tagtwin/ca.pem"        # mqtts: the CA that signed the broker (default: system CAs)
    cert_file = "/etc/tagtwin/gw-01.pem"   # mqtts: this client's certificate, if the broker wants one
    key_file = "/etc/tagtwin/gw-01.key"
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, ValidationError

from siteplan.config_file import ConfigFileError, check_private, load_toml, validation_problems

CREDS_ENV = "TAGTWIN_MQTT_CREDS"
SESSION_EXPIRY_S = 7 * 24 * 3600  # MQTT 5: how long the broker keeps a persistent session of a client away
USERNAME_ENV, PASSWORD_ENV, CA_ENV = "TAGTWIN_MQTT_USERNAME", "TAGTWIN_MQTT_PASSWORD", "TAGTWIN_MQTT_CA"


class CredsError(ConfigFileError):
    """A credentials file that cannot be used, naming file and field."""


class Creds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def load_creds(path: Path | str | None = None) -> Creds:
    """Credentials from ``path`` (or $TAGTWIN_MQTT_CREDS), else from the environment."""
    path = path or os.environ.get(CREDS_ENV) or None
    if path is None:
        return Creds(
            username=os.environ.get(USERNAME_ENV) or None,
            password=os.environ.get(PASSWORD_ENV) or None,
            ca_file=os.environ.get(CA_ENV) or None,
        )
    check_private(path, CredsError)
    data = load_toml(path, CredsError)
    try:
        return Creds.model_validate(data)
    except ValidationError as exc:
        raise CredsError(path, validation_problems(exc)) from None


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def parse(cls, url: str, creds: Creds | None = None) -> BrokerUrl:
        """``mqtt://host[:port]`` or ``mqtts://host[:port]``; ValueError naming the URL
        otherwise, and for any user name or password in it. Credentials: ``creds`` or
        :func:`load_creds` (file named by the environment, or the environment)."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"broker URL {url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                f"broker URL {parts.scheme}://***@{parts.hostname}: credentials in a URL are visible to every "
                f"local user; put them in a --creds file (mode 0600) or ${USERNAME_ENV}/${PASSWORD_ENV}"
            )
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ValueError(f"broker URL {url!r}: bad port") from None
        c = creds if creds is not None else load_creds()
        return cls(parts.hostname, port, c.username, c.password, tls, c.ca_file, c.cert_file, c.key_file)


def make_client(client_id: str, broker: BrokerUrl, clean_session: bool = True) -> paho.Client:
    """A paho client for ``broker``. Over TLS (mqtts://) it speaks MQTT 5: a publish the
    broker's ACL refuses then comes back as a PUBACK with reason 0x87 (Not authorized),
    which the publisher sees; MQTT 3.1.1 PUBACKs it as if it were delivered."""
    if broker.tls:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    else:
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session
        )
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set(ca_certs=broker.ca_file, certfile=broker.cert_file, keyfile=broker.key_file)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


def session_connect_args(broker: BrokerUrl, persistent: bool) -> dict[str, object]:
    """Keyword arguments for ``connect``/``connect_async`` of a :func:`make_client` client.
    MQTT 3.1.1 asks for a persistent session with the client's ``clean_session`` flag (set
    by make_client); MQTT 5 (mqtts://) asks at connect, with clean start off and a session
    expiry (without one the broker drops the session when the client goes)."""
    if not (persistent and broker.tls):
        return {}
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    return {"clean_start": False, "properties": props}
