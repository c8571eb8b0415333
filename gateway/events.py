"""Change events: outbox rows, their conversion to S3 event records, the sinks that deliver
them, and the relay that moves them from the outbox to a sink.

Every metadata change writes an outbox row in the transaction that makes it (see the
metadata store), so an acknowledged change always has its event. With
``kafka.bootstrap`` set, :class:`OutboxRelay` runs inside ``strata serve`` and publishes the
rows to Kafka through :class:`KafkaSink`; without it, nothing is published and rows stay in
the outbox (readable through the store) until they expire.

Delivery contract
-----------------
* **At least once, never skipped.** The relay reads rows after its durable cursor, in
  order, publishes them, waits for the broker's acknowledgement (``acks=all``) and only then
  advances the cursor past the acknowledged prefix. On any failure it backs off and
  resumes from the first unacknowledged row; a row is retried until it is published.
* **In order per key.** The Kafka message key is ``bucket/key``, so one key's events share a
  partition. The producer is idempotent, keeps one batch in flight per partition and retries
  transient failures itself (without reordering or duplicating); a failed publish stops
  sending at the failing message and waits until every earlier send has settled before
  anything is sent again. Redeliveries after a crash or a non-retriable error can repeat
  records; the ``sequencer`` (the outbox sequence number in hex, increasing per key) tells
  a consumer which of two records of a key is newer, as in S3.
* **Writes never wait for the broker.** Requests only insert outbox rows; while the broker is
  down rows accumulate and are published when it returns.
* **Rows expire** after ``kafka.outbox_retention`` (7 days): published rows only when a
  broker is configured (an unpublished row is kept however old it is), every row otherwise,
  since then nothing reads them (:func:`expire_outbox_periodically`).
* **One active relay per outbox shard** across processes: a lease row (owner, expiry) is
  claimed and renewed through the store; a process that stops renewing is replaced once its
  lease expires (:data:`LEASE_SECONDS`).

Routing: a bucket with a notification configuration (``PutBucketNotificationConfiguration``,
see :mod:`gateway.s3.notification`) publishes each event to the topic of every rule it
matches, and nothing else; any other bucket publishes to ``kafka.topic``. The configuration
is read (through the metadata cache) once per relayed batch, after the batch's rows were
committed, so an event is not routed by a configuration older than the event as long as the
cache is shared or the configuration was written by the relaying process. Rows of another
kind (``"kind": "audit"`` ...) are published unchanged to ``kafka.topic``.

Event records follow S3's format (``{"Records": [record]}``, eventVersion 2.1). The outbox
row does not record the requester: buckets are private to their owner, so
``userIdentity`` is the bucket's owner; ``requestParameters.sourceIPAddress`` and
``responseElements`` appear only when the row carries them (``sourceIPAddress``,
``requestId``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote_plus

from gateway.config import Config, KafkaConfig
from gateway.meta.models import NULL_VERSION
from gateway.s3.errors import S3Error
from gateway.s3.notification import TopicRule, matching_rules, parse_config
from gateway.s3.xml import iso8601

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from gateway.meta.store import MetadataStore

log = logging.getLogger("strata.events")

LEASE_SECONDS = 30.0  # a relay that stops renewing is replaced after this long
EXPIRY_INTERVAL = 300.0  # seconds between outbox expiry rounds
EXPIRY_BATCH = 1000  # outbox rows deleted per statement
EXPIRY_PAUSE = 0.01  # seconds between two statements of a round, so writes of requests go first
BACKOFF_MAX = 5.0  # seconds between retries while the broker or the store fails
DEFAULT_CONFIGURATION_ID = "strata-default"  # s3.configurationId of default-topic records
NOTIFICATION_CONFIG = "notification"  # the bucket config document name


@dataclass(frozen=True)
class OutboxEvent:
    seq: int
    created: float
    body: dict[str, Any]

    @classmethod
    def from_row(cls, seq: int, created: float, event: str) -> OutboxEvent:
        return cls(seq, created, json.loads(event))


@dataclass(frozen=True)
class EventMessage:
    """One message to publish: topic, partitioning key and the encoded record."""

    topic: str
    key: bytes | None
    value: bytes


class PublishError(Exception):
    """A publish failed after the first ``acked`` messages were acknowledged."""

    def __init__(self, acked: int, cause: BaseException) -> None:
        super().__init__(f"published {acked} messages, then: {cause!r}")
        self.acked = acked


class EventSink(Protocol):
    async def publish(self, messages: Sequence[EventMessage]) -> None:
        """Deliver ``messages`` in order, returning once every one is acknowledged; or raise
        :class:`PublishError` saying how long the acknowledged prefix is."""
        ...

    async def close(self) -> None: ...


class OutboxOnlySink:
    """The embedded default: events stay in the outbox table (readable through the store)
    until they expire (``kafka.outbox_retention``)."""

    async def publish(self, messages: Sequence[EventMessage]) -> None:
        return None

    async def close(self) -> None:
        return None


# --------------------------------------------------------------------------- records


def sequencer(seq: int) -> str:
    """S3's ``sequencer``: hex, fixed width, so later events of a key compare greater."""
    return f"{seq:016X}"


def encode_key(key: str) -> str:
    """An object key as S3 event records carry it: URL-encoded, spaces as ``+``, ``/`` kept."""
    return quote_plus(key, safe="/")


def message_key(body: dict[str, Any]) -> bytes | None:
    """Kafka partitioning key: ``bucket/key`` (one key's events share a partition); rows
    without both fall back to their kind, so a kind's rows stay in order."""
    bucket, key = body.get("bucket"), body.get("key")
    if isinstance(bucket, str) and isinstance(key, str):
        return f"{bucket}/{key}".encode()
    kind = body.get("kind")
    return kind.encode() if isinstance(kind, str) else None


def is_s3_event(body: dict[str, Any]) -> bool:
    """Rows written for object changes (no ``kind``, or ``kind`` "s3") become S3 records."""
    return body.get("kind", "s3") == "s3" and all(
        isinstance(body.get(field), str) for field in ("eventName", "bucket", "key")
    )


def s3_record(event: OutboxEvent, *, region: str, owner: str | None, configuration_id: str) -> dict[str, Any]:
    """The S3 event record (eventVersion 2.1) for one object-change outbox row."""
    body = event.body
    bucket, key = str(body["bucket"]), str(body["key"])
    obj: dict[str, Any] = {"key": encode_key(key)}
    if "size" in body:
        obj["size"] = body["size"]
    if body.get("eTag"):
        obj["eTag"] = body["eTag"]
    version_id = body.get("versionId")
    if version_id and version_id != NULL_VERSION:
        obj["versionId"] = version_id
    obj["sequencer"] = sequencer(event.seq)
    principal = {"principalId": body.get("principal") or owner or ""}
    record: dict[str, Any] = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": iso8601(float(body.get("time", event.created))),
        "eventName": str(body["eventName"]).removeprefix("s3:"),
        "userIdentity": principal,
    }
    if body.get("sourceIPAddress"):
        record["requestParameters"] = {"sourceIPAddress": body["sourceIPAddress"]}
    if body.get("requestId"):
        record["responseElements"] = {"x-amz-request-id": body["requestId"]}
    record["s3"] = {
        "s3SchemaVersion": "1.0",
        "configurationId": configuration_id,
        "bucket": {
            "name": bucket,
            "ownerIdentity": {"principalId": owner or ""},
            "arn": f"arn:aws:s3:::{bucket}",
        },
        "object": obj,
    }
    return record


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class BucketRouting:
    """What the relay needs to know about a bucket: its owner and notification rules
    (``None``: no configuration, so the default topic)."""

    owner: str | None
    rules: tuple[TopicRule, ...] | None


def messages_for(
    event: OutboxEvent, routing: BucketRouting | None, *, default_topic: str, region: str
) -> list[EventMessage]:
    """The messages one outbox row becomes (none when the bucket's rules match nothing)."""
    body = event.body
    key = message_key(body)
    if not is_s3_event(body):
        return [EventMessage(default_topic, key, _encode(body))]
    routing = routing or BucketRouting(None, None)
    if routing.rules is None:
        targets = [(default_topic, DEFAULT_CONFIGURATION_ID)]
    else:
        rules = matching_rules(routing.rules, str(body["eventName"]).removeprefix("s3:"), str(body["key"]))
        targets = [(rule.topic, rule.id) for rule in rules]
    owner = routing.owner
    return [
        EventMessage(
            topic,
            key,
            _encode({"Records": [s3_record(event, region=region, owner=owner, configuration_id=cid)]}),
        )
        for topic, cid in targets
    ]


@functools.lru_cache(maxsize=1024)
def _parsed_rules(document: str) -> tuple[TopicRule, ...]:
    return parse_config(document.encode())


def rules_from_document(bucket: str, document: str | None) -> tuple[TopicRule, ...] | None:
    """A stored notification document's rules (``None``: none stored, or empty)."""
    if document is None:
        return None
    try:
        rules = _parsed_rules(document)
    except S3Error:  # stored documents were validated on the way in
        log.error("unreadable notification configuration stored for bucket %s", bucket)
        return None
    return rules or None


# --------------------------------------------------------------------------- Kafka


# aiokafka loggers that repeat themselves several times a second while a broker is down.
_CHATTY_LOGGERS = ("aiokafka", "aiokafka.conn", "aiokafka.cluster", "aiokafka.producer.sender")


class RepeatFilter(logging.Filter):
    """Passes each distinct message at most once per ``window`` seconds."""

    def __init__(self, window: float = 60.0, max_entries: int = 1000) -> None:
        super().__init__()
        self._window = window
        self._max = max_entries
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message, now = record.getMessage(), time.monotonic()
        if now - self._last.get(message, -self._window) < self._window:
            return False
        if len(self._last) >= self._max:
            self._last.clear()
        self._last[message] = now
        return True


def quiet_kafka_client_logs() -> None:
    """Rate-limit aiokafka's per-retry errors (once per logger, however often called)."""
    for name in _CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(RepeatFilter())


class KafkaSink:
    """Publishes to Kafka with an idempotent producer (``acks=all``).

    The producer is created on first use and again after a failed publish (once all its
    sends have settled, so an abandoned producer can never deliver an old message after a
    newer one). A producer that cannot reach the broker makes :meth:`publish` raise; one
    that lost the broker mid-publish keeps retrying (idempotent producers never expire a
    batch), so :meth:`publish` returns when the broker is back.
    """

    def __init__(self, config: KafkaConfig, client_id: str = "strata") -> None:
        assert config.bootstrap, "KafkaSink needs kafka.bootstrap"
        self._bootstrap = config.bootstrap
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        # Imported here, at start-up, not at the first publish: importing it mid-traffic
        # would hold the event loop for ~70 ms.
        from aiokafka import AIOKafkaProducer

        self._producer_class = AIOKafkaProducer
        quiet_kafka_client_logs()

    async def _open(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = self._producer_class(
                bootstrap_servers=self._bootstrap,
                client_id=self._client_id,
                enable_idempotence=True,
                acks="all",
                request_timeout_ms=15_000,
                retry_backoff_ms=200,
            )
            try:
                await producer.start()
            except BaseException:
                await _stop_quietly(producer)
                raise
            self._producer = producer
        return self._producer

    async def publish(self, messages: Sequence[EventMessage]) -> None:
        try:
            producer = await self._open()
        except Exception as exc:
            raise PublishError(0, exc) from exc
        sent: list[asyncio.Future[Any]] = []
        failure: BaseException | None = None
        for m in messages:
            try:
                sent.append(await producer.send(m.topic, m.value, key=m.key))
            except Exception as exc:  # not queued (e.g. no metadata): stop here, keep order
                failure = exc
                break
        if sent:
            # Never cancel these: queued sends are retried by the producer until they land.
            await asyncio.wait(sent)
        acked = 0
        for fut in sent:
            if fut.exception() is not None:
                failure = fut.exception()
                break
            acked += 1
        if failure is not None:
            await self.close()  # every send has settled: a fresh producer cannot be overtaken
            raise PublishError(acked, failure) from failure

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer)


async def _stop_quietly(producer: AIOKafkaProducer, timeout: float = 5.0) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout)
    except Exception as exc:  # stopping a producer whose broker is gone
        log.debug("kafka producer stop: %r", exc)


def open_sink(config: Config) -> EventSink:
    """The event sink the config asks for: Kafka with ``kafka.bootstrap``, else the outbox
    alone."""
    if config.kafka.bootstrap:
        return KafkaSink(config.kafka)
    return OutboxOnlySink()


# --------------------------------------------------------------------------- the relay


def relay_owner() -> str:
    """A lease owner id unique to this process (and this relay)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def advance_to(rows: Sequence[OutboxEvent], counts: Sequence[int], acked: int) -> int | None:
    """The seq the cursor may advance to when the first ``acked`` messages (``counts[i]``
    of them for ``rows[i]``) were acknowledged: the last row all of whose messages were."""
    last: int | None = None
    for row, count in zip(rows, counts, strict=True):
        if count > acked:
            break
        acked -= count
        last = row.seq
    return last


async def expire_outbox_once(
    store: MetadataStore,
    retention: float,
    published_only: bool,
    *,
    now: float | None = None,
    batch: int = EXPIRY_BATCH,
) -> int:
    """Delete the outbox rows of every shard created more than ``retention`` seconds before
    ``now`` (only those the relay published, with ``published_only``), oldest first, in
    statements of at most ``batch`` rows; how many went."""
    cutoff = (time.time() if now is None else now) - retention
    total = 0
    for shard in range(await store.outbox_shards()):
        while True:
            gone = await store.expire_outbox(shard, cutoff, batch, published_only)
            total += gone
            if gone < batch:  # the oldest rows left are newer (or unpublished)
                break
            await asyncio.sleep(EXPIRY_PAUSE)
    return total


async def expire_outbox_periodically(store: MetadataStore, config: KafkaConfig) -> None:
    """Keep the outbox to ``config.outbox_retention`` seconds, a round every
    :data:`EXPIRY_INTERVAL` (runs inside ``strata serve``; several processes may run it)."""
    if config.outbox_retention <= 0:
        return
    while True:
        try:
            gone = await expire_outbox_once(store, config.outbox_retention, bool(config.bootstrap))
            if gone:
                log.info("outbox: %d rows older than %.0f s expired", gone, config.outbox_retention)
        except Exception as exc:  # the store is down: try again next round
            log.warning("outbox expiry: %s; retrying in %.0f s", exc, EXPIRY_INTERVAL)
        await asyncio.sleep(EXPIRY_INTERVAL)


class OutboxRelay:
    """Moves outbox rows to an :class:`EventSink`, one shard at a time, under a lease."""

    def __init__(
        self,
        store: MetadataStore,
        sink: EventSink,
        config: Config,
        *,
        owner: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.store = store
        self.sink = sink
        self.owner = owner or relay_owner()
        self._default_topic = config.kafka.topic
        self._batch = config.kafka.relay_batch
        self._interval = config.kafka.relay_interval
        self._region = config.server.region
        self._lease_seconds = lease_seconds
        self._leases: dict[int, float] = {}  # shard -> monotonic time our lease runs out

    async def run(self) -> None:
        """Relay until cancelled; failures are logged and retried with backoff."""
        failures = 0
        try:
            while True:
                try:
                    busy = await self.relay_once()
                    failures = 0
                except Exception as exc:
                    failures += 1
                    delay = min(BACKOFF_MAX, self._interval * 2**failures)
                    log.warning("event relay: %s; retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    continue
                if not busy:
                    await asyncio.sleep(self._interval)
        finally:
            await self._shutdown()

    async def relay_once(self) -> bool:
        """Publish one batch from every shard whose lease this relay holds; True if any rows
        were published (so the caller should not wait before the next round)."""
        busy = False
        for shard in range(await self.store.outbox_shards()):
            if await self._hold(shard):
                busy = await self._relay_shard(shard) or busy
        return busy

    async def _hold(self, shard: int) -> bool:
        """Claim or renew the shard's lease when less than half of it is left."""
        now = time.monotonic()
        if self._leases.get(shard, 0.0) - now > self._lease_seconds / 2:
            return True
        if await self.store.claim_relay(shard, self.owner, self._lease_seconds):
            if shard not in self._leases:
                log.info("event relay %s took outbox shard %d", self.owner, shard)
            self._leases[shard] = now + self._lease_seconds
            return True
        self._leases.pop(shard, None)
        return False

    async def _relay_shard(self, shard: int) -> bool:
        cursor = await self.store.get_relay_cursor(shard)
        rows = await self.store.read_outbox(cursor, self._batch, shard=shard)
        if not rows:
            return False
        routing = await self._routing({str(r.body["bucket"]) for r in rows if is_s3_event(r.body)})
        topic, region = self._default_topic, self._region
        per_row = [
            messages_for(r, routing.get(str(r.body.get("bucket"))), default_topic=topic, region=region)
            for r in rows
        ]
        messages = [m for ms in per_row for m in ms]
        try:
            await self._keep_lease(shard, self.sink.publish(messages))
        except PublishError as exc:
            seq = advance_to(rows, [len(ms) for ms in per_row], exc.acked)
            if seq is not None:
                await self.store.advance_relay_cursor(shard, seq)
            raise
        await self.store.advance_relay_cursor(shard, rows[-1].seq)
        return True

    async def _keep_lease(self, shard: int, publish: Awaitable[None]) -> None:
        """Await ``publish`` (which may wait for the broker a long time), renewing the lease."""
        task = asyncio.ensure_future(publish)
        started = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self._lease_seconds / 3)
                if done:
                    return task.result()
                log.warning(
                    "event relay: shard %d waiting %.0fs for the broker", shard, time.monotonic() - started
                )
                if not await self._hold(shard):
                    log.warning("event relay %s lost its lease on shard %d mid-publish", self.owner, shard)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _routing(self, buckets: set[str]) -> dict[str, BucketRouting]:
        """Owner and notification rules of each bucket, read once per batch."""
        found: dict[str, BucketRouting] = {}
        for name in buckets:
            bucket = await self.store.get_bucket(name)
            document = await self.store.get_bucket_config(name, NOTIFICATION_CONFIG)
            found[name] = BucketRouting(
                bucket.owner if bucket is not None else None, rules_from_document(name, document)
            )
        return found

    async def _shutdown(self) -> None:
        await self.sink.close()
        for shard in list(self._leases):
            try:
                await self.store.release_relay(shard, self.owner)
            except Exception as exc:  # the store may already be closing
                log.debug("releasing relay lease on shard %d: %r", shard, exc)
        self._leases.clear()
