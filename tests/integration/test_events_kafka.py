"""Events reach Kafka: a real ``strata serve`` with ``STRATA_KAFKA_BOOTSTRAP`` set, and a real
noida-db broker (stopped and restarted in the outage test).

Every check waits until the gateway's relay has published the whole outbox (its cursor in the
SQLite ``relay_state`` row has reached the last outbox row), then reads each topic from the
beginning to its end offsets, so "exactly these records" is exact and not a matter of timing.
Audit rows (``"kind": "audit"``) share the default topic; only S3 records are compared.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest
import requests
from aiokafka import AIOKafkaConsumer, TopicPartition
from botocore.exceptions import ClientError
from support.kafka import KafkaBroker
from support.s3 import error_code, make_client, md5_hex
from support.server import StrataServer

REGION = "us-east-1"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    base = tmp_path_factory.mktemp("kafka")
    with KafkaBroker(base / "data", log_path=base / "broker.log") as b:
        yield b


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def events_server(
    strata_factory: Callable[..., StrataServer], broker: KafkaBroker
) -> tuple[StrataServer, str, Any]:
    """A gateway publishing to ``broker`` with its own default topic, and a boto3 client."""
    topic = unique("events")
    server = strata_factory(
        extra_env={
            "STRATA_KAFKA_BOOTSTRAP": broker.bootstrap,
            "STRATA_KAFKA_TOPIC": topic,
            "STRATA_KAFKA_RELAY_INTERVAL": "0.05",
        }
    )
    return server, topic, make_client(server)


# --------------------------------------------------------------------------- helpers


def relay_lag(server: StrataServer) -> int:
    """Outbox rows the gateway's relay has not published yet."""
    with sqlite3.connect(f"file:{server.data_dir / 'meta.sqlite'}?mode=ro", uri=True) as db:
        (last,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()
        row = db.execute("SELECT cursor FROM relay_state WHERE shard = 0").fetchone()
    return int(last) - (int(row[0]) if row else 0)


def wait_relayed(server: StrataServer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (lag := relay_lag(server)) > 0:
        assert server.is_running(), server.stderr_text()
        assert time.monotonic() < deadline, f"relay still {lag} rows behind after {timeout}s"
        time.sleep(0.05)


async def _drain(bootstrap: str, topic: str) -> list[tuple[bytes | None, dict[str, Any]]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return []
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[tuple[bytes | None, dict[str, Any]]] = []
        deadline = time.monotonic() + 30
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            assert time.monotonic() < deadline, "could not read the topic to its end"
            batches = await consumer.getmany(*tps, timeout_ms=500)
            for tp in tps:
                out.extend((m.key, json.loads(m.value)) for m in batches.get(tp, []))
        return out
    finally:
        await consumer.stop()


def drain(bootstrap: str, topic: str) -> list[tuple[bytes | None, dict[str, Any]]]:
    """Every message of ``topic`` (partition by partition), as (key, decoded JSON)."""
    return asyncio.run(_drain(bootstrap, topic))


def s3_records(messages: list[tuple[bytes | None, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The S3 event records among ``messages`` (one per message), ordered by sequencer."""
    records = []
    for key, body in messages:
        if "Records" not in body:
            continue  # audit and other kinds share the default topic
        (record,) = body["Records"]
        obj = record["s3"]["object"]
        assert key == f"{record['s3']['bucket']['name']}/{unquote_plus(obj['key'])}".encode()
        records.append(record)
    return sorted(records, key=lambda r: r["s3"]["object"]["sequencer"])


def summary(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["eventName"], r["s3"]["object"]["key"]) for r in records]


# --------------------------------------------------------------------------- records


def test_object_changes_become_s3_records_on_the_default_topic(
    events_server: tuple[StrataServer, str, Any], broker: KafkaBroker
) -> None:
    server, topic, s3 = events_server
    bucket = unique("ev")
    s3.create_bucket(Bucket=bucket)

    body = b"hello events\n" * 50
    s3.put_object(Bucket=bucket, Key="dir/red flower=1.txt", Body=body)
    s3.copy_object(
        Bucket=bucket, Key="copy.txt", CopySource={"Bucket": bucket, "Key": "dir/red flower=1.txt"}
    )
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp.bin")
    part = s3.upload_part(
        Bucket=bucket, Key="mp.bin", UploadId=upload["UploadId"], PartNumber=1, Body=b"m" * 1000
    )
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="mp.bin",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    post = s3.generate_presigned_post(bucket, "form.txt")
    resp = requests.post(post["url"], data=post["fields"], files={"file": ("f", b"from a form")}, timeout=60)
    assert resp.status_code == 204, resp.text
    s3.delete_object(Bucket=bucket, Key="copy.txt")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    marker = s3.delete_object(Bucket=bucket, Key="mp.bin")
    assert marker["DeleteMarker"] is True

    wait_relayed(server)
    records = s3_records(drain(broker.bootstrap, topic))
    assert summary(records) == [
        ("ObjectCreated:Put", "dir/red+flower%3D1.txt"),
        ("ObjectCreated:Copy", "copy.txt"),
        ("ObjectCreated:CompleteMultipartUpload", "mp.bin"),
        ("ObjectCreated:Post", "form.txt"),
        ("ObjectRemoved:Delete", "copy.txt"),
        ("ObjectRemoved:DeleteMarkerCreated", "mp.bin"),
    ]
    put, copy, complete, form, delete, delete_marker = records
    for r in records:
        assert r["eventVersion"] == "2.1" and r["eventSource"] == "aws:s3" and r["awsRegion"] == REGION
        assert r["eventTime"].endswith("Z") and len(r["eventTime"]) == len("2026-01-01T00:00:00.000Z")
        assert r["userIdentity"]["principalId"] == "root"
        assert r["s3"]["s3SchemaVersion"] == "1.0"
        assert r["s3"]["configurationId"] == "strata-default"
        assert r["s3"]["bucket"] == {
            "name": bucket,
            "ownerIdentity": {"principalId": "root"},
            "arn": f"arn:aws:s3:::{bucket}",
        }
    assert put["s3"]["object"]["size"] == len(body) and put["s3"]["object"]["eTag"] == md5_hex(body)
    assert copy["s3"]["object"]["eTag"] == md5_hex(body)
    mp_etag = hashlib.md5(bytes.fromhex(md5_hex(b"m" * 1000))).hexdigest() + "-1"
    assert complete["s3"]["object"] == {
        "key": "mp.bin",
        "size": 1000,
        "eTag": mp_etag,
        "sequencer": complete["s3"]["object"]["sequencer"],
    }  # no versionId: the bucket was not versioned yet
    assert form["s3"]["object"]["size"] == len(b"from a form")
    assert set(delete["s3"]["object"]) == {"key", "sequencer"}
    assert delete_marker["s3"]["object"]["versionId"] == marker["VersionId"]
    assert "size" not in delete_marker["s3"]["object"]
    sequencers = [r["s3"]["object"]["sequencer"] for r in records]
    assert len(set(sequencers)) == len(sequencers)


def test_notification_configuration_picks_topics_and_filters(
    events_server: tuple[StrataServer, str, Any], broker: KafkaBroker
) -> None:
    server, default_topic, s3 = events_server
    bucket, other = unique("nt"), unique("nt")
    s3.create_bucket(Bucket=bucket)
    s3.create_bucket(Bucket=other)
    images, removals = unique("images"), unique("removals")
    config = {
        "TopicConfigurations": [
            {
                "Id": "jpegs",
                "TopicArn": f"arn:aws:sns:{REGION}:000000000000:{images}",
                "Events": ["s3:ObjectCreated:*"],
                "Filter": {
                    "Key": {
                        "FilterRules": [
                            {"Name": "prefix", "Value": "img/"},
                            {"Name": "suffix", "Value": ".jpg"},
                        ]
                    }
                },
            },
            {
                "Id": "gone",
                "TopicArn": f"arn:aws:sns:{REGION}:000000000000:{removals}",
                "Events": ["s3:ObjectRemoved:Delete"],
            },
        ]
    }
    assert s3.get_bucket_notification_configuration(Bucket=bucket).get("TopicConfigurations") is None
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=config)
    stored = s3.get_bucket_notification_configuration(Bucket=bucket)["TopicConfigurations"]
    assert [(c["Id"], c["TopicArn"], c["Events"]) for c in stored] == [
        (c["Id"], c["TopicArn"], c["Events"]) for c in config["TopicConfigurations"]
    ]
    assert stored[0]["Filter"]["Key"]["FilterRules"] == [
        {"Name": "Prefix", "Value": "img/"},
        {"Name": "Suffix", "Value": ".jpg"},
    ]

    # A bad configuration is refused and changes nothing.
    bad_event = {"TopicConfigurations": [{**config["TopicConfigurations"][1], "Events": ["s3:ObjectNope:*"]}]}
    overlapping = {
        "TopicConfigurations": [
            {**config["TopicConfigurations"][1], "Id": "a"},
            {**config["TopicConfigurations"][1], "Id": "b", "Events": ["s3:ObjectRemoved:*"]},
        ]
    }
    for bad in (bad_event, overlapping):
        with pytest.raises(ClientError) as err:
            s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=bad)
        assert error_code(err.value) == "InvalidArgument"
    assert s3.get_bucket_notification_configuration(Bucket=bucket)["TopicConfigurations"] == stored

    for key in ("img/a.jpg", "img/b.png", "doc/c.jpg", "img/d.jpg"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    s3.copy_object(Bucket=bucket, Key="img/e.jpg", CopySource={"Bucket": bucket, "Key": "doc/c.jpg"})
    s3.delete_object(Bucket=bucket, Key="img/a.jpg")
    s3.put_object(Bucket=other, Key="img/x.jpg", Body=b"x")

    wait_relayed(server)
    on_images = s3_records(drain(broker.bootstrap, images))
    assert summary(on_images) == [
        ("ObjectCreated:Put", "img/a.jpg"),
        ("ObjectCreated:Put", "img/d.jpg"),
        ("ObjectCreated:Copy", "img/e.jpg"),
    ]
    assert {r["s3"]["configurationId"] for r in on_images} == {"jpegs"}
    on_removals = s3_records(drain(broker.bootstrap, removals))
    assert summary(on_removals) == [("ObjectRemoved:Delete", "img/a.jpg")]
    assert on_removals[0]["s3"]["configurationId"] == "gone"
    # The configured bucket publishes nothing to the default topic; others still do.
    on_default = s3_records(drain(broker.bootstrap, default_topic))
    assert [(r["s3"]["bucket"]["name"], r["s3"]["object"]["key"]) for r in on_default] == [
        (other, "img/x.jpg")
    ]

    # An empty configuration removes it: the bucket's events go to the default topic again.
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={})
    assert "TopicConfigurations" not in s3.get_bucket_notification_configuration(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="img/f.jpg", Body=b"f")
    wait_relayed(server)
    on_default = s3_records(drain(broker.bootstrap, default_topic))
    assert [(r["s3"]["bucket"]["name"], r["s3"]["object"]["key"]) for r in on_default][-1] == (
        bucket,
        "img/f.jpg",
    )
    assert len(s3_records(drain(broker.bootstrap, images))) == 3


# --------------------------------------------------------------------------- outages


def _delivered_in_order(records: list[dict[str, Any]], written: dict[str, list[str]]) -> None:
    """Every written version's event arrived, and per key the first arrivals are in write order."""
    seen: dict[str, list[str]] = {}
    for r in records:
        obj = r["s3"]["object"]
        etags = seen.setdefault(obj["key"], [])
        if obj["eTag"] not in etags:
            etags.append(obj["eTag"])
    assert seen == written


def test_broker_outage_delays_events_and_loses_none(
    events_server: tuple[StrataServer, str, Any], broker: KafkaBroker
) -> None:
    server, topic, s3 = events_server
    bucket = unique("outage")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="warmup", Body=b"w")
    wait_relayed(server)  # the relay's producer is connected

    broker.stop()
    try:
        written: dict[str, list[str]] = {}
        for i in range(50):
            key, body = f"k{i % 7}", f"version {i} of k{i % 7}".encode()
            started = time.monotonic()
            etag = s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')
            assert time.monotonic() - started < 10, "a PUT waited for the broker"
            written.setdefault(key, []).append(etag)
        assert relay_lag(server) >= 50  # nothing could be published
    finally:
        broker.start()

    wait_relayed(server, timeout=120)
    records = [r for r in s3_records(drain(broker.bootstrap, topic)) if r["s3"]["object"]["key"] != "warmup"]
    _delivered_in_order(records, written)
    assert len({r["s3"]["object"]["sequencer"] for r in records}) == 50


def test_events_written_before_the_broker_exists_are_published_when_it_starts(
    strata_factory: Callable[..., StrataServer], tmp_path: Path
) -> None:
    late = KafkaBroker(tmp_path / "late-broker", log_path=tmp_path / "late-broker.log")
    topic = unique("late")
    server = strata_factory(extra_env={"STRATA_KAFKA_BOOTSTRAP": late.bootstrap, "STRATA_KAFKA_TOPIC": topic})
    s3 = make_client(server)
    bucket = unique("late")
    s3.create_bucket(Bucket=bucket)
    written = {"a": [s3.put_object(Bucket=bucket, Key="a", Body=b"1")["ETag"].strip('"')]}
    written["a"].append(s3.put_object(Bucket=bucket, Key="a", Body=b"2")["ETag"].strip('"'))
    assert relay_lag(server) >= 2
    with late:
        wait_relayed(server, timeout=120)
        _delivered_in_order(s3_records(drain(late.bootstrap, topic)), written)


def test_unpublished_events_survive_a_gateway_restart(broker: KafkaBroker, tmp_path: Path) -> None:
    topic = unique("restart")
    env = {"STRATA_KAFKA_BOOTSTRAP": broker.bootstrap, "STRATA_KAFKA_TOPIC": topic}
    data = tmp_path / "data"
    first = StrataServer(data, log_path=tmp_path / "first.log", extra_env=env).start()
    try:
        s3 = make_client(first)
        bucket = unique("restart")
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="warmup", Body=b"w")
        wait_relayed(first)
        broker.stop()
        try:
            written = {
                "r": [
                    s3.put_object(Bucket=bucket, Key="r", Body=b"%d" % i)["ETag"].strip('"') for i in range(5)
                ]
            }
        finally:
            first.stop()  # with the events still in the outbox
            broker.start()
        assert relay_lag(first) >= 5
    finally:
        first.stop()
    with StrataServer(data, log_path=tmp_path / "second.log", extra_env=env) as second:
        wait_relayed(second, timeout=120)
        records = [r for r in s3_records(drain(broker.bootstrap, topic)) if r["s3"]["object"]["key"] == "r"]
        _delivered_in_order(records, written)
