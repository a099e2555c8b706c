"""``tagtwin provision``: identities, keys and broker authorization for a site, from its
gateway list, so every hop is encrypted and every sender can do only its own job.

What it writes (secrets created mode 0600, in a directory of mode 0700)::

    ca.pem, ca.key                 the site's certificate authority (keep ca.key offline)
    broker/broker.pem, broker.key  the broker's TLS certificate (for --host names/addresses)
    broker/passwd                  one login per identity (PBKDF2-SHA512, mosquitto's $7$ form)
    broker/acl                     what each identity may publish and read
    broker/mosquitto.conf          a TLS-only listener using the three files above; sessions
                                   kept in broker/store/ across a restart
    keys.toml                      each gateway's HMAC key (the server verifies with it)
    creds/<identity>.toml          login + CA path for `--creds` (gateways, engine, dashboard)
    gateways/<gateway>.toml        a ready gateway.toml: id, HMAC key, mqtts:// broker
    nats/nats-server.conf          the backbone's TLS listener and per-identity permissions
                                   (issue 12's subjects; passwords in it: mode 0600)

Least privilege (docs/security.md): a gateway may publish only its own batch and status
topics and read nothing; the engine (``tagtwin serve``) reads batches and statuses (and the
adapters' topics) and publishes only the server's outputs; a dashboard reads outputs only.
The broker refuses everything else. Over TLS clients speak MQTT 5, so a refused publish
comes back to the publisher as PUBACK reason 0x87 (Not authorized).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from live_bridge.backbone import mqtt_topic, third_party_filters, third_party_gateway_subjects
from live_bridge.config import new_keys_toml, write_secret_file
from live_bridge.wire import (
    DEADLETTER_TOPIC,
    EVENTS_TOPIC,
    POSITIONS_TOPIC,
    SERVER_STATUS_TOPIC,
    TOPIC_ROOT,
    batch_topic,
    status_topic,
)

ENGINE_USER = "tagtwin-engine"
DASHBOARD_USER = "tagtwin-dashboard"
CERT_DAYS = 825  # the longest TLS server certificate lifetime browsers accept
PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default for $7$ (PBKDF2-SHA512)


@dataclass(frozen=True)
class Provisioned:
    out: Path
    identities: tuple[str, ...]
    broker_conf: Path
    ca: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TagTwin site"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def make_ca(cn: str = "TagTwin site CA") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed P-256 CA certificate and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn)).issuer_name(_name(cn))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str, hosts: tuple[str, ...] = (),
    server: bool = True,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate signed by the CA: a server one for ``hosts`` (DNS names or IPs), or a client one."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                              else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def mosquitto_hash(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """mosquitto's password-file hash ``$7$<iterations>$<salt b64>$<PBKDF2-SHA512 b64>``
    (mosquitto 2.0 src/password_mosq.c), so no mosquitto_passwd is needed to provision."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def acl_text(gateway_ids: list[str]) -> str:
    """mosquitto ACL: per-gateway publish rights, the engine's and the dashboard's."""
    lines = ["# Generated by tagtwin provision: each identity may do only its own job.", ""]
    for gw in gateway_ids:
        third_party = [mqtt_topic(t).replace("*", "+") for t in third_party_gateway_subjects(gw)]
        lines += [f"user {gw}", f"topic write {batch_topic(gw)}", f"topic write {status_topic(gw)}",
                  *(f"topic write {t}" for t in third_party), ""]
    outputs = (POSITIONS_TOPIC, EVENTS_TOPIC, DEADLETTER_TOPIC, SERVER_STATUS_TOPIC)
    lines += [f"user {ENGINE_USER}", f"topic read {TOPIC_ROOT}/gw/+/batch", f"topic read {TOPIC_ROOT}/gw/+/status",
              "topic read espresense/devices/+/+", "topic read +/+/BTtoMQTT/+",
              *(f"topic write {t}" for t in outputs), ""]
    lines += [f"user {DASHBOARD_USER}", *(f"topic read {t}" for t in outputs),
              f"topic read {TOPIC_ROOT}/gw/+/status", ""]
    return "\n".join(lines)


def mosquitto_conf(broker_dir: Path, port: int, bind: str = "127.0.0.1") -> str:
    return "\n".join([
        "# Generated by tagtwin provision: TLS only, a login per identity, the ACL enforced.",
        f"listener {port} {bind}",
        f"cafile {broker_dir / 'ca.pem'}",
        f"certfile {broker_dir / 'broker.pem'}",
        f"keyfile {broker_dir / 'broker.key'}",
        "tls_version tlsv1.2",
        "allow_anonymous false",
        f"password_file {broker_dir / 'passwd'}",
        f"acl_file {broker_dir / 'acl'}",
        # The server's persistent session (tagtwin serve) and what is queued for it survive a
        # broker restart: without this, batches the gateways' spools drain before the server
        # is back are acknowledged to no one and lost (docs/live-bridge.md, store and forward).
        # Written on a clean stop and every minute; the directory must be writable by the user
        # mosquitto runs as (it drops root for user mosquitto unless told `user root`).
        "persistence true",
        f"persistence_location {broker_dir / 'store'}/",
        "autosave_interval 60",
        # Queued for the server while it is away: 1,000 batches (mosquitto's default) is 20 s
        # of ten busy gateways; 256 MB is about 10,000 full batches.
        "max_queued_messages 100000",
        "max_queued_bytes 268435456",
        "",
    ])


def provision(
    gateway_ids: list[str], out: Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    port: int = 8883, broker_host: str = "127.0.0.1", site: str = "site", nats_port: int = 4222,
    nats_mqtt_port: int | None = 8884,
) -> Provisioned:
    """Write everything a TLS deployment of the site needs into ``out`` (which must not exist)."""
    out = Path(out)
    out.mkdir(mode=0o700, parents=True)
    broker_dir = out / "broker"
    for sub in ("broker", "broker/store", "creds", "gateways"):
        (out / sub).mkdir(mode=0o700)
    ca_key, ca_cert = make_ca()
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    (out / "ca.pem").write_text(ca_pem)
    (broker_dir / "ca.pem").write_text(ca_pem)
    write_secret_file(out / "ca.key", _pem_key(ca_key))
    b_key, b_cert = issue(ca_key, ca_cert, "tagtwin broker", hosts)
    (broker_dir / "broker.pem").write_text(b_cert.public_bytes(serialization.Encoding.PEM).decode())
    write_secret_file(broker_dir / "broker.key", _pem_key(b_key))
    keys_toml = new_keys_toml(gateway_ids)
    write_secret_file(out / "keys.toml", keys_toml)
    hmac_keys = {line.split(" = ")[0].strip('"'): line.split(" = ")[1].strip('"')
                 for line in keys_toml.splitlines() if " = " in line}
    identities = [*gateway_ids, ENGINE_USER, DASHBOARD_USER]
    passwd = []
    for ident in identities:
        password = secrets.token_urlsafe(24)
        passwd.append(f"{ident}:{mosquitto_hash(password)}")
        write_secret_file(out / "creds" / f"{ident}.toml",
                          f'username = "{ident}"\npassword = "{password}"\nca_file = "{out.resolve() / "ca.pem"}"\n')
    write_secret_file(broker_dir / "passwd", "\n".join(passwd) + "\n")
    (broker_dir / "acl").write_text(acl_text(gateway_ids))
    conf = broker_dir / "mosquitto.conf"
    conf.write_text(mosquitto_conf(broker_dir.resolve(), port))
    for gw in gateway_ids:
        write_secret_file(out / "gateways" / f"{gw}.toml",
                          f'id = "{gw}"\nkey_hex = "{hmac_keys[gw]}"\nbroker = "mqtts://{broker_host}:{port}"\n'
                          f'# run: tagtwin gateway --config gateways/{gw}.toml --creds creds/{gw}.toml\n')
    os.chmod(out, 0o700)
    prov = Provisioned(out, tuple(identities), conf, out / "ca.pem")
    provision_nats(prov, site, gateway_ids, nats_port, nats_mqtt_port)
    return prov


# -- the NATS backbone (issue 12's subjects: tagtwin.v1.<site>.raw.<gateway> ...) --------

NATS_ROOT = "tagtwin.v1"


def nats_permissions(site: str, gateway_ids: list[str]) -> dict[str, dict[str, dict[str, list[str]]]]:
    """Per identity, the subjects it may publish to and subscribe to. Every identity gets
    its own reply inbox (``_INBOX.<identity>.>``, set with nats-py's ``inbox_prefix``), so no
    one can read another's JetStream acknowledgements or requests."""
    root = f"{NATS_ROOT}.{site}"
    outputs = [f"{root}.positions", f"{root}.events", f"{root}.deadletter", f"{root}.status"]
    perms = {
        gw: {"publish": {"allow": [f"{root}.raw.{gw}", f"{root}.gateway.{gw}.status",
                                   *third_party_gateway_subjects(gw)]},
             "subscribe": {"allow": [f"_INBOX.{gw}.>"]}}
        for gw in gateway_ids
    }
    # The engine runs durable consumers, checkpoints (KV / object store) and publishes outputs.
    perms[ENGINE_USER] = {
        "publish": {"allow": ["$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>", "$O.>", *outputs]},
        "subscribe": {"allow": [f"_INBOX.{ENGINE_USER}.>", f"{root}.raw.>", f"{root}.gateway.*.status",
                                *third_party_filters(("theengs", "espresense")), "$KV.>", "$O.>"]},
    }
    perms[DASHBOARD_USER] = {
        "publish": {"allow": ["$JS.API.CONSUMER.INFO.>", "$JS.API.STREAM.INFO.>"]},
        "subscribe": {"allow": [f"_INBOX.{DASHBOARD_USER}.>", *outputs, f"{root}.gateway.*.status"]},
    }
    return perms


def nats_conf(
    broker_dir: Path, port: int, store_dir: Path, users: dict[str, str],
    perms: dict[str, dict[str, dict[str, list[str]]]], bind: str = "127.0.0.1", mqtt_port: int | None = None,
) -> str:
    """A nats-server config: TLS only (the site CA), JetStream syncing every write, one user
    per identity with :func:`nats_permissions`, and (``mqtt_port``) the MQTT listener for
    third-party gateways over TLS with the same users. JSON is valid nats-server config."""
    import json

    tls = {"cert_file": str(broker_dir / "broker.pem"), "key_file": str(broker_dir / "broker.key"),
           "ca_file": str(broker_dir / "ca.pem"), "timeout": 5}
    conf: dict[str, object] = {
        "server_name": "tagtwin",
        "listen": f"{bind}:{port}",
        "tls": tls,
        "jetstream": {"store_dir": str(store_dir), "sync_interval": "always"},
        "authorization": {"users": [{"user": u, "password": pw, "permissions": perms[u]} for u, pw in users.items()]},
    }
    if mqtt_port is not None:
        conf["mqtt"] = {"listen": f"{bind}:{mqtt_port}", "tls": tls}
    return json.dumps(conf, indent=2) + "\n"


def provision_nats(
    prov: Provisioned, site: str, gateway_ids: list[str], port: int, mqtt_port: int | None = None
) -> Path:
    """Add the backbone's config to a provisioned directory; the logins are the ones in
    ``creds/`` (one identity, one password, whether it speaks MQTT or NATS)."""
    from live_bridge.mqtt import load_creds

    users = {}
    for ident in prov.identities:
        creds = load_creds(prov.out / "creds" / f"{ident}.toml")
        users[ident] = creds.password or ""
    (prov.out / "nats").mkdir(mode=0o700, exist_ok=True)
    path = prov.out / "nats" / "nats-server.conf"
    write_secret_file(path, nats_conf((prov.out / "broker").resolve(), port, (prov.out / "nats" / "store").resolve(),
                                      users, nats_permissions(site, gateway_ids), mqtt_port=mqtt_port))
    return path


def nats_options(creds_path: Path | str) -> dict[str, object]:
    """nats-py ``connect`` keyword arguments for a provisioned identity: its login, TLS that
    trusts the site CA, and its own reply inbox (the permissions allow no other)."""
    import ssl

    from live_bridge.mqtt import load_creds

    creds = load_creds(creds_path)
    ctx = ssl.create_default_context(cafile=creds.ca_file)
    return {"user": creds.username, "password": creds.password, "tls": ctx,
            "inbox_prefix": f"_INBOX.{creds.username}"}
