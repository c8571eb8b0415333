"""Outbox rows -> S3 event records, notification documents, and the relay's bookkeeping.

Pure conversion tables (record fields, key encoding, routing, cursor arithmetic), the
notification document parser (tables, plus hypothesis: any bad document is a clean S3 error),
and the relay's cursor/lease rules against a real SQLite store.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dedup.manifest import EMPTY_MANIFEST
from gateway.config import Config, KafkaConfig
from gateway.events import (
    BucketRouting,
    EventMessage,
    OutboxEvent,
    OutboxRelay,
    PublishError,
    advance_to,
    encode_key,
    expire_outbox_once,
    messages_for,
    s3_record,
    sequencer,
)
from gateway.meta.models import Bucket, ObjectVersion, StagedData
from gateway.meta.sqlite import SqliteMetadataStore
from gateway.s3.errors import S3Error
from gateway.s3.notification import TopicRule, event_matches, parse_config, render_config, topic_from_arn

T0 = 1_795_000_000.25
ISO_T0 = "2026-11-18T11:06:40.250Z"  # T0 in ISO 8601, milliseconds


def row(seq: int, **body: Any) -> OutboxEvent:
    return OutboxEvent(seq, T0, {"time": T0, **body})


# --------------------------------------------------------------------------- records

CREATED = {"size": 11, "eTag": "5eb63bbbe01eeed093cb22bb8f5acdc3"}


@pytest.mark.parametrize(
    ("body", "obj"),
    [
        (
            {"eventName": "ObjectCreated:Put", "bucket": "b", "key": "k", "versionId": "null", **CREATED},
            {"key": "k", **CREATED, "sequencer": "0000000000000007"},
        ),
        (
            {"eventName": "ObjectCreated:Post", "bucket": "b", "key": "k", "versionId": "v1", **CREATED},
            {"key": "k", **CREATED, "versionId": "v1", "sequencer": "0000000000000007"},
        ),
        (
            {"eventName": "ObjectCreated:Copy", "bucket": "b", "key": "k", "versionId": "null", **CREATED},
            {"key": "k", **CREATED, "sequencer": "0000000000000007"},
        ),
        (
            {
                "eventName": "ObjectCreated:CompleteMultipartUpload",
                "bucket": "b",
                "key": "k",
                "versionId": "null",
                "size": 12,
                "eTag": "0123456789abcdef0123456789abcdef-2",
            },
            {
                "key": "k",
                "size": 12,
                "eTag": "0123456789abcdef0123456789abcdef-2",
                "sequencer": "0000000000000007",
            },
        ),
        (
            {"eventName": "ObjectRemoved:Delete", "bucket": "b", "key": "k", "versionId": "null"},
            {"key": "k", "sequencer": "0000000000000007"},
        ),
        (
            {"eventName": "ObjectRemoved:Delete", "bucket": "b", "key": "k", "versionId": "v2"},
            {"key": "k", "versionId": "v2", "sequencer": "0000000000000007"},
        ),
        (
            {"eventName": "ObjectRemoved:DeleteMarkerCreated", "bucket": "b", "key": "k", "versionId": "dm"},
            {"key": "k", "versionId": "dm", "sequencer": "0000000000000007"},
        ),
        (
            {"eventName": "s3:ObjectCreated:Put", "bucket": "b", "key": "k", **CREATED},
            {"key": "k", **CREATED, "sequencer": "0000000000000007"},
        ),
    ],
)
def test_s3_record_fields(body: dict[str, Any], obj: dict[str, Any]) -> None:
    record = s3_record(row(7, **body), region="eu-west-1", owner="alice", configuration_id="cfg")
    assert record == {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "eu-west-1",
        "eventTime": ISO_T0,
        "eventName": body["eventName"].removeprefix("s3:"),
        "userIdentity": {"principalId": "alice"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "cfg",
            "bucket": {"name": "b", "ownerIdentity": {"principalId": "alice"}, "arn": "arn:aws:s3:::b"},
            "object": obj,
        },
    }


def test_request_details_appear_only_when_the_row_has_them() -> None:
    body = {"eventName": "ObjectCreated:Put", "bucket": "b", "key": "k", "sourceIPAddress": "10.0.0.9"}
    record = s3_record(
        row(1, **body, requestId="ABC", principal="bob"), region="r", owner="o", configuration_id="c"
    )
    assert record["requestParameters"] == {"sourceIPAddress": "10.0.0.9"}
    assert record["responseElements"] == {"x-amz-request-id": "ABC"}
    assert record["userIdentity"] == {"principalId": "bob"}
    assert record["s3"]["bucket"]["ownerIdentity"] == {"principalId": "o"}
    bare = s3_record(
        row(1, eventName="ObjectCreated:Put", bucket="b", key="k"),
        region="r",
        owner=None,
        configuration_id="c",
    )
    assert "requestParameters" not in bare and "responseElements" not in bare
    assert bare["userIdentity"] == {"principalId": ""}


@pytest.mark.parametrize(
    ("key", "encoded"),
    [
        ("plain.txt", "plain.txt"),
        ("red flower.jpg", "red+flower.jpg"),
        ("year=2026/month=11/part-0.parquet", "year%3D2026/month%3D11/part-0.parquet"),
        ("a+b", "a%2Bb"),
        ("100%", "100%25"),
        ("é/ü", "%C3%A9/%C3%BC"),
        ("q?x&y#z", "q%3Fx%26y%23z"),
        ("~tilde_under-dash.", "~tilde_under-dash."),
    ],
)
def test_keys_are_url_encoded_as_s3_does(key: str, encoded: str) -> None:
    assert encode_key(key) == encoded


def test_sequencer_is_fixed_width_hex_that_sorts_like_the_seq() -> None:
    seqs = [1, 9, 10, 255, 256, 2**40, 2**63 - 1]
    assert [sequencer(s) for s in seqs] == sorted(sequencer(s) for s in seqs)
    assert sequencer(255) == "00000000000000FF"
    assert all(len(sequencer(s)) == 16 for s in seqs)


# --------------------------------------------------------------------------- routing

JPEGS = TopicRule("jpegs", "arn:aws:sns:us-east-1:1:images", ("s3:ObjectCreated:*",), "img/", ".jpg")
GONE = TopicRule("gone", "arn:aws:sns:us-east-1:1:removals", ("s3:ObjectRemoved:Delete",))


def route(event: OutboxEvent, routing: BucketRouting | None) -> list[tuple[str, bytes | None, Any]]:
    return [
        (m.topic, m.key, json.loads(m.value))
        for m in messages_for(event, routing, default_topic="dflt", region="r")
    ]


@pytest.mark.parametrize(
    ("name", "key", "rules", "expected"),
    [
        ("ObjectCreated:Put", "img/a.jpg", None, [("dflt", "strata-default")]),
        ("ObjectCreated:Put", "img/a.jpg", (JPEGS, GONE), [("images", "jpegs")]),
        ("ObjectCreated:Copy", "img/a.jpg", (JPEGS, GONE), [("images", "jpegs")]),
        ("ObjectCreated:Put", "img/a.png", (JPEGS, GONE), []),
        ("ObjectCreated:Put", "doc/a.jpg", (JPEGS, GONE), []),
        ("ObjectRemoved:Delete", "img/a.jpg", (JPEGS, GONE), [("removals", "gone")]),
        ("ObjectRemoved:DeleteMarkerCreated", "img/a.jpg", (JPEGS, GONE), []),
    ],
)
def test_routing_by_notification_rules(
    name: str, key: str, rules: tuple[TopicRule, ...] | None, expected: list[tuple[str, str]]
) -> None:
    event = row(3, eventName=name, bucket="b", key=key, versionId="null")
    got = route(event, BucketRouting("alice", rules))
    assert [(topic, body["Records"][0]["s3"]["configurationId"]) for topic, _, body in got] == expected
    assert all(k == f"b/{key}".encode() for _, k, _ in got)


def test_other_kinds_go_to_the_default_topic_unchanged() -> None:
    audit = {"kind": "audit", "time": T0, "action": "GetObject", "bucket": "b", "key": "k", "status": 200}
    assert route(OutboxEvent(5, T0, audit), BucketRouting("alice", (GONE,))) == [("dflt", b"b/k", audit)]
    login = {"kind": "audit", "time": T0, "action": "ListBuckets", "bucket": None, "key": None}
    assert route(OutboxEvent(6, T0, login), None) == [("dflt", b"audit", login)]


@pytest.mark.parametrize(
    ("counts", "acked", "expected"),
    [
        ([1, 1, 1], 0, None),
        ([1, 1, 1], 2, 11),
        ([1, 1, 1], 3, 12),
        ([0, 2, 1], 0, 10),  # a row with no messages (filtered out) is done once reached
        ([0, 2, 1], 1, 10),  # half of row 11's messages: row 11 is not done
        ([0, 2, 0, 1], 2, 12),
        ([2, 0, 0], 2, 12),
    ],
)
def test_cursor_advances_past_fully_acknowledged_rows_only(
    counts: list[int], acked: int, expected: int | None
) -> None:
    rows = [row(10 + i, eventName="ObjectCreated:Put", bucket="b", key="k") for i in range(len(counts))]
    assert advance_to(rows, counts, acked) == expected


# --------------------------------------------------------------------------- notification documents


def doc(*rules: str) -> bytes:
    inner = "".join(rules)
    return f'<NotificationConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{inner}</NotificationConfiguration>'.encode()


def topic(
    arn: str = "arn:aws:sns:us-east-1:123456789012:photos",
    events: Sequence[str] = ("s3:ObjectCreated:*",),
    rules: str = "",
    rule_id: str | None = None,
) -> str:
    parts = [f"<Id>{rule_id}</Id>" if rule_id is not None else "", f"<Topic>{arn}</Topic>"]
    parts += [f"<Event>{e}</Event>" for e in events]
    if rules:
        parts.append(f"<Filter><S3Key>{rules}</S3Key></Filter>")
    return f"<TopicConfiguration>{''.join(parts)}</TopicConfiguration>"


def filter_rule(name: str, value: str) -> str:
    return f"<FilterRule><Name>{name}</Name><Value>{value}</Value></FilterRule>"


def test_parse_and_render_round_trip() -> None:
    rules = parse_config(
        doc(
            topic(rules=filter_rule("Prefix", "img/") + filter_rule("suffix", ".jpg"), rule_id="one"),
            topic(
                "arn:aws-cn:sns:cn-north-1:1:gone.topic_v2",
                ("s3:ObjectRemoved:Delete", "s3:ObjectRemoved:Delete"),
            ),
        )
    )
    assert rules[0] == TopicRule(
        "one", "arn:aws:sns:us-east-1:123456789012:photos", ("s3:ObjectCreated:*",), "img/", ".jpg"
    )
    assert rules[0].topic == "photos"
    assert rules[1].events == ("s3:ObjectRemoved:Delete",) and rules[1].topic == "gone.topic_v2"
    assert rules[1].id.startswith("strata-")  # derived, and stable:
    assert parse_config(render_config(rules)) == rules
    assert (
        parse_config(doc(topic("arn:aws-cn:sns:cn-north-1:1:gone.topic_v2", ("s3:ObjectRemoved:Delete",))))[
            0
        ].id
        == rules[1].id
    )
    assert parse_config(doc()) == ()
    assert parse_config(b"<NotificationConfiguration/>") == ()


@pytest.mark.parametrize(
    ("pattern", "event", "matches"),
    [
        ("s3:ObjectCreated:*", "ObjectCreated:Put", True),
        ("s3:ObjectCreated:*", "ObjectCreated:CompleteMultipartUpload", True),
        ("s3:ObjectCreated:*", "ObjectRemoved:Delete", False),
        ("s3:ObjectRemoved:*", "ObjectRemoved:DeleteMarkerCreated", True),
        ("s3:ObjectRemoved:Delete", "ObjectRemoved:DeleteMarkerCreated", False),
        ("s3:ObjectCreated:Put", "ObjectCreated:Put", True),
        ("s3:ObjectCreated:Put", "ObjectCreated:Post", False),
    ],
)
def test_event_wildcards(pattern: str, event: str, matches: bool) -> None:
    assert event_matches(pattern, event) is matches


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not xml", "MalformedXML"),
        (b"<Other/>", "MalformedXML"),
        (doc("<Bogus/>"), "MalformedXML"),
        (doc("<TopicConfiguration><Event>s3:ObjectCreated:*</Event></TopicConfiguration>"), "MalformedXML"),
        (doc("<TopicConfiguration><Topic>arn:aws:sns:r:1:t</Topic></TopicConfiguration>"), "MalformedXML"),
        (doc(topic(events=("s3:ObjectCreated:Nope",))), "InvalidArgument"),
        (doc(topic(events=("ObjectCreated:*",))), "InvalidArgument"),
        (doc(topic(arn="arn:aws:sqs:us-east-1:1:q")), "InvalidArgument"),
        (doc(topic(arn="photos")), "InvalidArgument"),
        (doc(topic(arn="arn:aws:sns:us-east-1:1:bad/topic")), "InvalidArgument"),
        (doc(topic(arn="arn:aws:sns:us-east-1:1:..")), "InvalidArgument"),
        (doc(topic(arn="arn:aws:sns:us-east-1:1:" + "t" * 250)), "InvalidArgument"),
        (doc(topic(rules=filter_rule("middle", "x"))), "InvalidArgument"),
        (doc(topic(rules=filter_rule("prefix", "a") + filter_rule("Prefix", "b"))), "InvalidArgument"),
        (doc(topic(rules=filter_rule("suffix", "x" * 1025))), "InvalidArgument"),
        (doc(topic(rules="<FilterRule><Name>prefix</Name></FilterRule>")), "MalformedXML"),
        (doc(topic(rule_id="x" * 256)), "InvalidArgument"),
        (
            doc(topic(rule_id="same"), topic(events=("s3:ObjectRemoved:*",), rule_id="same")),
            "InvalidArgument",
        ),
        # overlapping: shared event type, overlapping prefixes and suffixes
        (doc(topic(), topic(events=("s3:ObjectCreated:Put",))), "InvalidArgument"),
        (
            doc(topic(rules=filter_rule("prefix", "a/")), topic(rules=filter_rule("prefix", "a/b"))),
            "InvalidArgument",
        ),
        (
            doc(
                "<QueueConfiguration><Queue>arn:aws:sqs:r:1:q</Queue><Event>s3:ObjectCreated:*</Event></QueueConfiguration>"
            ),
            "NotImplemented",
        ),
        (doc("<EventBridgeConfiguration/>"), "NotImplemented"),
        (b"<NotificationConfiguration>" + b"x" * 70_000 + b"</NotificationConfiguration>", "MalformedXML"),
        (b'<!DOCTYPE x [<!ENTITY a "b">]><NotificationConfiguration/>', "MalformedXML"),
    ],
)
def test_bad_documents_are_refused(body: bytes, code: str) -> None:
    with pytest.raises(S3Error) as err:
        parse_config(body)
    assert err.value.code == code


@pytest.mark.parametrize(
    "rules",
    [
        # same event family but disjoint prefixes, or disjoint suffixes: allowed (S3 examples)
        (filter_rule("prefix", "images/"), filter_rule("prefix", "logs/")),
        (
            filter_rule("prefix", "a/") + filter_rule("suffix", ".jpg"),
            filter_rule("prefix", "a/") + filter_rule("suffix", ".png"),
        ),
    ],
)
def test_non_overlapping_rules_are_accepted(rules: tuple[str, str]) -> None:
    assert len(parse_config(doc(topic(rules=rules[0]), topic(rules=rules[1])))) == 2


def test_topic_from_arn() -> None:
    assert topic_from_arn("arn:aws:sns:us-east-1:123456789012:strata-events") == "strata-events"
    with pytest.raises(S3Error):
        topic_from_arn("arn:aws:sns:us-east-1:123456789012:a:b")


ALLOWED = {"MalformedXML", "InvalidArgument", "NotImplemented"}
VALID = doc(
    topic(rules=filter_rule("prefix", "img/") + filter_rule("suffix", ".jpg"), rule_id="a"),
    topic("arn:aws:sns:us-east-1:1:other", ("s3:ObjectRemoved:*",), rule_id="b"),
)
FRAGMENTS = st.sampled_from(
    [
        "<TopicConfiguration>", "</TopicConfiguration>", "<Topic>", "</Topic>", "<Event>", "</Event>",
        "<Id>", "</Id>", "<Filter>", "</Filter>", "<S3Key>", "</S3Key>", "<FilterRule>", "</FilterRule>",
        "<Name>", "</Name>", "<Value>", "</Value>", "prefix", "suffix", "s3:ObjectCreated:*",
        "s3:ObjectRemoved:Delete", "arn:aws:sns:us-east-1:1:t", "arn:aws:sns::", "img/", "&amp;", "&bogus;",
        "<![CDATA[x]]>", "<!-- c -->", "\x00", "é", "<QueueConfiguration>", "<a b='c'>", " ", "*",
    ]
)  # fmt: skip


def _check_parse(body: bytes) -> None:
    try:
        rules = parse_config(body)
    except S3Error as err:
        assert err.code in ALLOWED, err
        return
    assert parse_config(render_config(rules)) == rules  # whatever is accepted is stored faithfully


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_are_a_clean_error(body: bytes) -> None:
    _check_parse(body)


@settings(max_examples=300, deadline=None)
@given(st.lists(FRAGMENTS, max_size=40))
def test_random_documents_are_a_clean_error_or_round_trip(fragments: list[str]) -> None:
    _check_parse(doc("".join(fragments)))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.integers(0, 12), st.binary(max_size=8))
def test_damaged_valid_documents_are_a_clean_error_or_round_trip(at: int, cut: int, insert: bytes) -> None:
    _check_parse(VALID[:at] + insert + VALID[at + cut :])


# --------------------------------------------------------------------------- the store's relay rows


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteMetadataStore]:
    s = SqliteMetadataStore(tmp_path / "meta.sqlite")
    await s.open()
    await s.create_bucket(Bucket("bkt", "alice", "us-east-1", 0.0))
    yield s
    await s.close()


def version(key: str, etag: str) -> ObjectVersion:
    return ObjectVersion("bkt", key, "null", 0, etag, T0, EMPTY_MANIFEST)


async def put(store: SqliteMetadataStore, key: str, etag: str) -> None:
    await store.put_object(version(key, etag), StagedData([], []))


async def test_cursor_starts_at_zero_and_never_moves_back(store: SqliteMetadataStore) -> None:
    assert await store.outbox_shards() == 1
    assert await store.get_relay_cursor(0) == 0
    await store.advance_relay_cursor(0, 5)
    await store.advance_relay_cursor(0, 3)
    assert await store.get_relay_cursor(0) == 5


async def test_lease_is_exclusive_until_released_or_expired(store: SqliteMetadataStore) -> None:
    assert await store.claim_relay(0, "a", 30)
    assert await store.claim_relay(0, "a", 30)  # renewal
    assert not await store.claim_relay(0, "b", 30)
    await store.release_relay(0, "b")  # not b's to release
    assert not await store.claim_relay(0, "b", 30)
    await store.release_relay(0, "a")
    assert await store.claim_relay(0, "b", -1)  # taken, but already expired:
    assert await store.claim_relay(0, "a", 30)
    await store.advance_relay_cursor(0, 9)  # the cursor is kept across owners
    assert await store.get_relay_cursor(0) == 9


async def test_trim_removes_only_published_rows(store: SqliteMetadataStore) -> None:
    for i in range(5):
        await put(store, f"k{i}", f"{i:032x}")
    seqs = [e.seq for e in await store.read_outbox(0, 10)]
    assert await store.trim_outbox(0, seqs[-1] + 1, 100) == 0  # nothing published yet
    await store.advance_relay_cursor(0, seqs[2])
    assert await store.trim_outbox(0, seqs[-1] + 1, 2) == 2  # limit
    assert await store.trim_outbox(0, seqs[-1] + 1, 100) == 1
    assert [e.seq for e in await store.read_outbox(0, 10)] == seqs[3:]


async def test_expiry_removes_rows_past_retention_in_batches(store: SqliteMetadataStore) -> None:
    for i in range(5):
        await put(store, f"k{i}", f"{i:032x}")
    rows = await store.read_outbox(0, 10)
    now = rows[-1].created
    assert await expire_outbox_once(store, 60.0, False, now=now) == 0  # all younger than a minute
    assert await expire_outbox_once(store, 60.0, True, now=now + 61) == 0  # none published
    await store.advance_relay_cursor(0, rows[1].seq)
    assert await expire_outbox_once(store, 60.0, True, now=now + 61, batch=1) == 2  # published ones
    assert await expire_outbox_once(store, 60.0, False, now=now + 61, batch=2) == 3  # two rounds
    assert await store.read_outbox(0, 10) == []


async def test_expiry_job_keeps_the_outbox_to_its_retention(
    store: SqliteMetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The serve-time job: expired rows go at once and on every later round; an error is
    logged and retried; a retention of 0 keeps everything."""
    import asyncio

    from gateway import events

    monkeypatch.setattr(events, "EXPIRY_INTERVAL", 0.05)
    real, failures = store.expire_outbox, [0]

    async def fails_once(*args: Any) -> int:
        if not failures[0]:
            failures[0] += 1
            raise OSError("database is locked")
        return await real(*args)

    monkeypatch.setattr(store, "expire_outbox", fails_once)
    await put(store, "old", "0" * 32)
    assert await events.expire_outbox_periodically(store, KafkaConfig(outbox_retention=0)) is None  # off
    assert len(await store.read_outbox(0, 10)) == 1
    job = asyncio.ensure_future(events.expire_outbox_periodically(store, KafkaConfig(outbox_retention=0.01)))
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not await store.read_outbox(0, 10):
                break
        assert await store.read_outbox(0, 10) == []
        await put(store, "later", "1" * 32)  # expired by a later round
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not await store.read_outbox(0, 10):
                break
        assert await store.read_outbox(0, 10) == []
        assert failures == [1] and not job.done()  # the failed round was retried
    finally:
        job.cancel()


# --------------------------------------------------------------------------- the relay loop


class ScriptedSink:
    """A sink that acknowledges everything, except that the publish calls listed in
    ``fail_at`` (call number -> acked prefix length) fail after acknowledging a prefix."""

    def __init__(self, fail_at: dict[int, int]) -> None:
        self.fail_at = fail_at
        self.calls = 0
        self.delivered: list[EventMessage] = []

    async def publish(self, messages: Sequence[EventMessage]) -> None:
        self.calls += 1
        acked = self.fail_at.get(self.calls)
        if acked is not None:
            self.delivered.extend(messages[:acked])
            raise PublishError(acked, ConnectionError("broker went away"))
        self.delivered.extend(messages)

    async def close(self) -> None:
        return None


def relay_for(store: SqliteMetadataStore, sink: ScriptedSink, owner: str, batch: int = 3) -> OutboxRelay:
    config = Config(kafka=KafkaConfig(bootstrap="unused:9092", topic="dflt", relay_batch=batch))
    return OutboxRelay(store, sink, config, owner=owner)


def etags(messages: Sequence[EventMessage]) -> list[str]:
    return [json.loads(m.value)["Records"][0]["s3"]["object"]["eTag"] for m in messages]


async def test_relay_resumes_at_the_first_unacknowledged_row(store: SqliteMetadataStore) -> None:
    written = [f"{i:032x}" for i in range(7)]
    for i, etag in enumerate(written):
        await put(store, f"k{i % 2}", etag)
    sink = ScriptedSink({1: 2, 2: 0})
    relay = relay_for(store, sink, "me")
    with pytest.raises(PublishError):
        await relay.relay_once()  # rows 1-2 acked, row 3 not
    first = await store.get_relay_cursor(0)
    with pytest.raises(PublishError):
        await relay.relay_once()  # nothing acked: the cursor stays
    assert await store.get_relay_cursor(0) == first
    while await relay.relay_once():
        pass
    assert etags(sink.delivered) == written  # every row once, in order, none skipped
    assert await store.get_relay_cursor(0) == (await store.read_outbox(0, 100))[-1].seq


async def test_only_the_lease_holder_relays(store: SqliteMetadataStore) -> None:
    await put(store, "k", "0" * 32)
    a, b = ScriptedSink({}), ScriptedSink({})
    relay_a, relay_b = relay_for(store, a, "a"), relay_for(store, b, "b")
    assert await relay_a.relay_once()
    await put(store, "k", "1" * 32)
    assert not await relay_b.relay_once()
    assert b.delivered == []
    await relay_a._shutdown()  # releases the lease
    assert await relay_b.relay_once()
    assert etags(a.delivered) == ["0" * 32] and etags(b.delivered) == ["1" * 32]
