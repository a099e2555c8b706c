"""The stream layout of the backbone and the publish side every TagTwin source shares.

Subjects (NATS; the MQTT listener shows each as the same path with ``/``)::

    tagtwin.v1.<site>.raw.<gateway>     signed batches, stored in stream TAGTWIN_RAW_<site>
    tagtwin.v1.<site>.positions         position batches, revised windows included
    tagtwin.v1.<site>.events            rule events
    tagtwin.v1.<site>.deadletter        what the worker refused, and why
    tagtwin.v1.<site>.status            worker status: counters, lag, watermark
    tagtwin.v1.<site>.gateway.<gw>.status   gateway heartbeats: counters, spool rows

The raw stream is the site's raw log: every batch with its gateway (the subject), its
receive time (the stream's timestamp) and its sequence (the stream's and the batch's).
Its retention (max age) is a site setting. Positions, events and dead letters are also
stored (stream TAGTWIN_OUT_<site>) so a dashboard that was away can catch up. Scale-out
partitions by site; a very large site is cut into cells (live_bridge/cells.py), each a
consumer of the same raw stream filtered on its gateways' subjects.

Publishing (gateways, twin-publish, load-test publishers): a batch leaves its SQLite
spool only when JetStream's publish ack says the stream stored it; the message id
(``Nats-Msg-Id``, a hash of the signed body) lets the stream drop a re-send inside its
duplicate window, and the worker's (gateway, epoch, seq) dedup drops any older one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.errors import Error as JsError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from live_bridge.spool import Spool

log = logging.getLogger("tagtwin.backbone")

SUBJECT_ROOT = "tagtwin.v1"
TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_BATCH_BYTES = 1 << 20  # the stream refuses larger messages; the worker checks again
DUPLICATE_WINDOW_S = 120.0
CHECKPOINT_BUCKET = "tagtwin-checkpoints"
CREDS_ENV = "TAGTWIN_NATS_CREDS"


def token(kind: str, value: str) -> str:
    """A subject token (site, gateway, partition): no dots or wildcards, so it stays one token."""
    if not TOKEN.match(value):
        raise ValueError(f"{kind} {value!r}: a subject token may hold letters, digits, '_' and '-' only")
    return value


def raw_subject(site: str, gateway: str) -> str:
    return f"{SUBJECT_ROOT}.{token('site', site)}.raw.{token('gateway', gateway)}"


def raw_filter(site: str) -> str:
    return f"{SUBJECT_ROOT}.{token('site', site)}.raw.>"


def gateway_of(subject: str, site: str) -> str | None:
    """The gateway a raw subject names (its last token), or None if it is not one of the site's."""
    prefix = f"{SUBJECT_ROOT}.{site}.raw."
    if not subject.startswith(prefix):
        return None
    gw = subject.rsplit(".", 1)[-1]
    return gw if TOKEN.match(gw) else None


def third_party_filters(adapters: tuple[str, ...], theengs_base: str = "home",
                        espresense_root: str = "espresense") -> list[str]:
    """The subjects third-party gateways' MQTT topics become on the listener ('/' -> '.'):
    Theengs ``<base>/<gateway>/BTtoMQTT/<MAC>``, ESPresense ``<root>/devices/<id>/<room>``.
    They carry no site, so one site per backbone takes each base topic."""
    out = []
    if "theengs" in adapters:
        out.append(f"{token('theengs base topic', theengs_base)}.*.BTtoMQTT.*")
    if "espresense" in adapters:
        out.append(f"{token('espresense root topic', espresense_root)}.devices.*.*")
    return out


def out_subject(site: str, kind: str) -> str:
    """positions, events, deadletter, status."""
    return f"{SUBJECT_ROOT}.{token('site', site)}.{kind}"


def gateway_status_subject(site: str, gateway: str) -> str:
    """A gateway's heartbeat (GatewayStatus: counters, spool rows), not stored."""
    return f"{SUBJECT_ROOT}.{token('site', site)}.gateway.{token('gateway', gateway)}.status"


def third_party_gateway_subjects(gateway: str, theengs_base: str = "home",
                                 espresense_root: str = "espresense") -> list[str]:
    """The third-party subjects one gateway may publish (its own Theengs base topic, and
    ESPresense topics whose room is the gateway): least privilege on a provisioned backbone."""
    gw = token("gateway", gateway)
    return [f"{token('theengs base topic', theengs_base)}.{gw}.BTtoMQTT.*",
            f"{token('espresense root topic', espresense_root)}.devices.*.{gw}"]


def mqtt_topic(subject: str) -> str:
    """What MQTT clients of the NATS listener see: the subject with '/' for '.'."""
    return subject.replace(".", "/")


def raw_stream(site: str) -> str:
    return f"TAGTWIN_RAW_{token('site', site)}"


def out_stream(site: str) -> str:
    return f"TAGTWIN_OUT_{token('site', site)}"


@dataclass(frozen=True)
class StreamSettings:
    """Per-site stream limits: retention is the site's raw-data period."""

    raw_max_age_s: float = 7 * 86400.0
    out_max_age_s: float = 86400.0
    raw_max_bytes: int = -1  # -1: bounded by age and the server's store only
    replicas: int = 1  # 3 on a 3-node cluster


async def ensure_streams(js: JetStreamContext, site: str, settings: StreamSettings | None = None,
                         extra_subjects: list[str] | None = None) -> None:
    """Create or update the site's raw and output streams (idempotent). ``extra_subjects``
    (third_party_filters) put third-party gateways' MQTT topics in the same raw log; an
    update keeps the subjects the stream has (a publisher's call does not drop the worker's)."""
    s = settings or StreamSettings()
    configs = [
        StreamConfig(
            name=raw_stream(site), subjects=[raw_filter(site), *(extra_subjects or [])],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, max_age=s.raw_max_age_s, max_bytes=s.raw_max_bytes,
            max_msg_size=MAX_BATCH_BYTES, discard=DiscardPolicy.OLD, num_replicas=s.replicas,
            # JetStream refuses a duplicate window longer than the retention (a retention of
            # seconds, as the retention test uses, would fail to create the stream)
            duplicate_window=min(DUPLICATE_WINDOW_S, s.raw_max_age_s),
        ),
        StreamConfig(
            name=out_stream(site),
            subjects=[out_subject(site, k) for k in ("positions", "events", "deadletter")],
            retention=RetentionPolicy.LIMITS, storage=StorageType.FILE, max_age=s.out_max_age_s,
            discard=DiscardPolicy.OLD, num_replicas=s.replicas,
        ),
    ]
    for cfg in configs:
        try:
            await js.add_stream(cfg)
        except BadRequestError:  # exists with other settings: bring it to these
            have = (await js.stream_info(str(cfg.name))).config.subjects or []
            cfg.subjects = [*(cfg.subjects or []), *(x for x in have if x not in (cfg.subjects or []))]
            await js.update_stream(cfg)


def creds_path(creds: str | None) -> str | None:
    """``--creds FILE`` or $TAGTWIN_NATS_CREDS; never from a URL (design.md conventions)."""
    return creds or os.environ.get(CREDS_ENV) or None


async def connect(url: str, *, name: str, creds: str | None = None, wait_s: float = 30.0) -> Client:
    """A client that reconnects for ever once connected (a backbone restart is an outage, not
    an end) and keeps trying the first connection for ``wait_s``."""
    kwargs: dict[str, object] = {}
    path = creds_path(creds)
    if path and path.endswith(".toml"):
        # An identity `tagtwin provision` wrote: login, the site CA (TLS) and its own reply
        # inbox, the only one its permissions let it read (docs/security.md).
        from live_bridge.provision import nats_options

        kwargs.update(nats_options(path))
    elif path:
        kwargs["user_credentials"] = path  # a NATS .creds file (JWT + nkey seed)

    async def on_error(exc: Exception) -> None:
        log.info("nats: %s", exc)

    servers = [u.strip() for u in url.split(",") if u.strip()]
    deadline = time.monotonic() + wait_s

    async def say_waiting() -> None:
        # Silence is the worst answer to an unreachable address: say so within seconds.
        await asyncio.sleep(min(3.0, wait_s))
        log.warning("still trying to reach the backbone at %s (giving up after %.0f s)", url, wait_s)

    waiting = asyncio.create_task(say_waiting())
    try:
        while True:
            try:
                # With reconnects unlimited, nats-py retries a first connection for ever:
                # the deadline bounds it.
                return await asyncio.wait_for(nats.connect(
                    servers=servers, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.25,
                    connect_timeout=2, allow_reconnect=True, error_cb=on_error, **kwargs,
                ), timeout=max(deadline - time.monotonic(), 0.1))
            except TimeoutError:
                raise ConnectionError(f"cannot reach the backbone at {url} (tried for {wait_s:.0f} s)") from None
            except (OSError, nats.errors.Error) as exc:
                if time.monotonic() > deadline:
                    raise ConnectionError(f"cannot reach the backbone at {url}: {exc}") from None
                await asyncio.sleep(0.25)
    finally:
        waiting.cancel()


def message_id(body: bytes) -> str:
    """Nats-Msg-Id of a signed batch: the same bytes re-sent are the same message."""
    return hashlib.blake2b(body, digest_size=16).hexdigest()


async def publish_batch(js: JetStreamContext, subject: str, body: bytes, timeout: float = 5.0) -> int:
    """Publish and wait for the stream's ack; returns the stream sequence (or raises)."""
    ack = await js.publish(subject, body, timeout=timeout, headers={"Nats-Msg-Id": message_id(body)})
    return int(ack.seq)


PUBLISH_ERRORS = (NatsTimeoutError, NoRespondersError, JsError, ConnectionError, OSError,
                  asyncio.TimeoutError, nats.errors.Error)


async def drain_spool(js: JetStreamContext, spool: Spool, counters: Counter[str], *, max_inflight: int = 32,
                      timeout: float = 5.0) -> int:
    """Publish the spool's rows oldest first, up to ``max_inflight`` at once, deleting each
    row only on its publish ack. Returns how many were stored; stops at the first refusal
    or missing ack (the row stays, the reason is logged and counted) so order is kept."""
    stored = 0
    while True:
        rows = spool.peek(0, max_inflight)
        if not rows:
            return stored
        results = await asyncio.gather(
            *(publish_batch(js, subject, body, timeout) for _, subject, body in rows), return_exceptions=True
        )
        for (row_id, subject, _), res in zip(rows, results, strict=True):
            if isinstance(res, BaseException):
                reason = type(res).__name__
                counters[f"publish not acked: {reason}"] += 1
                log.warning("batch kept in spool: publish to %s not acked (%s: %s)", subject, reason, res)
                continue
            spool.ack(row_id)
            stored += 1
            counters["published"] += 1
        if any(isinstance(r, BaseException) for r in results):
            return stored


async def read_stream(js: JetStreamContext, stream: str, *, through_seq: int, start_seq: int | None = None,
                      start_time: float | None = None, subjects: tuple[str, ...] = (), batch: int = 256,
                      timeout: float = 5.0) -> AsyncIterator[Msg]:
    """The stream's messages from ``start_seq`` (or the first stored at or after
    ``start_time``, Unix seconds) through ``through_seq``, in order, by an ephemeral pull
    consumer that acks nothing and is deleted afterwards; only ``subjects`` when given (a
    spatial cell reads its own gateways). Messages the retention removed are simply not there."""
    import datetime

    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    if start_seq is not None:
        cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(start_seq, 1))
    else:
        when = datetime.datetime.fromtimestamp(max(start_time or 0.0, 0.0), tz=datetime.UTC)
        cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=when)
    cfg.ack_policy = AckPolicy.NONE
    cfg.filter_subjects = list(subjects) or None
    cfg.inactive_threshold = 60.0
    cfg.mem_storage = True
    info = await js.add_consumer(stream, cfg)
    sub = await js.pull_subscribe_bind(info.name, stream)
    try:
        while True:
            try:
                msgs = await sub.fetch(batch, timeout=timeout)
            except (TimeoutError, NatsTimeoutError):
                left = await sub.consumer_info()
                if not left.num_pending:
                    return  # the end of what is stored (the newest wanted was removed)
                continue
            for m in msgs:
                if m.metadata.sequence.stream > through_seq:
                    return
                yield m
                if m.metadata.sequence.stream == through_seq:
                    return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, info.name)


class PullFeed:
    """A durable pull consumer kept fed, so that messages arrive while the worker computes.

    ``PullSubscription.fetch(n, timeout)`` waits until ``n`` messages came or the timeout
    passed (a partial batch is a lingering pull request that the server ends only at its
    expiry), and nothing is requested while the caller computes: at a gateway's pace of
    a few batches a second, each message waited up to the whole timeout in the fetch.
    Here pull requests of ``batch`` messages stay outstanding (a new one goes out once
    fewer than half of what was asked is left), the server delivers into a local queue
    as messages are stored, and :meth:`take` returns whatever has arrived, waiting only
    when nothing has. Each request ends when filled or at its expiry (the server's 408
    says how many it did not deliver); if neither messages nor statuses come for longer
    than an expiry (a reconnect drops the server's requests), the count starts again.
    The server's ``max_ack_pending`` still bounds what is delivered and not acked.
    """

    def __init__(self, nc: Client, stream: str, durable: str, *, batch: int = 256, expires_s: float = 1.0,
                 api_prefix: str = "$JS.API") -> None:
        self.nc = nc
        self.next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.batch = batch
        self.expires_s = expires_s
        self.inbox = nc.new_inbox()
        self.asked = 0  # messages the outstanding requests may still deliver
        self.last_heard = time.monotonic()
        self.requests = 0
        self._got: list[Msg] = []
        self._arrived = asyncio.Event()
        self._sub: object | None = None

    async def start(self) -> PullFeed:
        self._sub = await self.nc.subscribe(self.inbox, cb=self._on_msg)
        return self

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()  # type: ignore[attr-defined]
            self._sub = None

    async def _on_msg(self, msg: Msg) -> None:
        self.last_heard = time.monotonic()
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:  # a stored message
            self.asked -= 1
            self._got.append(msg)
            self._arrived.set()
        elif status == "408":  # a request expired: what it did not deliver
            pending = int((msg.headers or {}).get("Nats-Pending-Messages", "0") or 0)
            self.asked = max(0, self.asked - pending) if pending else 0
        elif status in ("409", "400"):  # consumer deleted or changed, leader change, too many requests
            self.asked = 0
        # 100 (heartbeat) and 404 (no messages, only for no_wait) say nothing about the count

    async def _request(self) -> None:
        if time.monotonic() - self.last_heard > self.expires_s + 1.0:
            self.asked = 0  # nothing heard for longer than a request lives: requests lost (reconnect)
            self.last_heard = time.monotonic()
        if self.asked < self.batch // 2:
            body = f'{{"batch":{self.batch},"expires":{int(self.expires_s * 1e9)}}}'.encode()
            await self.nc.publish(self.next_subject, body, reply=self.inbox)
            self.asked += self.batch
            self.requests += 1

    async def take(self, timeout: float) -> list[Msg]:
        """What has arrived (waiting up to ``timeout`` when nothing has), in stream order."""
        await self._request()
        if not self._got:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
        got, self._got = self._got, []
        if got:
            await self._request()
        return got


async def object_get(js: JetStreamContext, bucket: str, name: str) -> bytes | None:
    """An object's bytes, or None if the bucket or the object does not exist yet."""
    try:
        obs = await js.object_store(bucket)
        res = await obs.get(name)
    except (NotFoundError, nats.js.errors.ObjectNotFoundError, nats.js.errors.BucketNotFoundError):
        return None
    return None if res.data is None else bytes(res.data)


def mosquitto_bridge_config(nats_mqtt_host: str, nats_mqtt_port: int, site: str, *, client_id: str = "edge-1",
                            listener_port: int = 1883) -> str:
    """A mosquitto edge broker that forwards gateway batches into the backbone's MQTT listener.

    The NATS listener speaks MQTT 3.1.1 only (``bridge_protocol_version mqttv311``, protocol
    level 4) and refuses mosquitto's private bridge flag (``try_private false``). Batches go
    out at QoS 1 on ``tagtwin/v1/<site>/raw/<gateway>``; the listener PUBACKs before the
    stream stores them, so this path is at-most-once across a backbone crash
    (docs/reliability.md).
    """
    topic = mqtt_topic(raw_filter(site)).replace(">", "#")
    return "\n".join([
        f"listener {listener_port} 127.0.0.1",
        "allow_anonymous true",
        "persistence false",
        "",
        "connection tagtwin-backbone",
        f"address {nats_mqtt_host}:{nats_mqtt_port}",
        "bridge_protocol_version mqttv311",
        "try_private false",
        "cleansession false",
        f"remote_clientid {client_id}",
        f"topic {topic} out 1",
        "",
    ])
