"""Real ``strata serve`` processes on a private Redis (never the machine's shared one): the
cache is used, losing Redis mid-run changes no answer and costs no hang, Redis coming back
(empty after a restart, or with its old data after a freeze) serves nothing stale, and two
gateways sharing one metadata store and one Redis read each other's writes at once."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from botocore.exceptions import ClientError
from support.postgres import pg_databases, pg_server, run_async
from support.redis_server import PrivateRedis
from support.s3 import make_client
from support.server import StrataServer

from gateway.config import MetaConfig
from gateway.meta import pg_migrations

__all__ = ["pg_databases", "pg_server"]  # fixtures

PROMPT = 10  # seconds: a liveness bound for every request while Redis is gone


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis").start()
    yield server
    server.stop()


def _env(private_redis: PrivateRedis) -> dict[str, str]:
    return {"STRATA_REDIS_URL": private_redis.url, "STRATA_REDIS_PREFIX": f"it-{uuid.uuid4().hex[:8]}:"}


def _cached_keys(private_redis: PrivateRedis, env: dict[str, str]) -> list[bytes]:
    client = redis.Redis.from_url(private_redis.url, socket_timeout=2)
    try:
        return list(client.scan_iter(match=env["STRATA_REDIS_PREFIX"] + "v:*"))
    finally:
        client.close()


def _body(s3: Any, bucket: str, key: str) -> bytes | None:
    try:
        return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as e:
        if e.response["Error"]["Code"] == "NoSuchKey":
            return None
        raise


def _client(server: StrataServer) -> Any:
    return make_client(server, connect_timeout=PROMPT, read_timeout=PROMPT)  # no retries: prompt or fail


def test_gateway_answers_correctly_while_redis_dies_and_comes_back(
    strata_factory: Callable[..., StrataServer], private_redis: PrivateRedis
) -> None:
    env = _env(private_redis)
    s3 = _client(strata_factory(extra_env=env))
    s3.create_bucket(Bucket="cache")
    s3.put_object(Bucket="cache", Key="k", Body=b"v1")
    assert _body(s3, "cache", "k") == b"v1"
    assert _cached_keys(private_redis, env)  # the gateway caches in this Redis

    private_redis.stop()
    started = time.monotonic()
    s3.put_object(Bucket="cache", Key="k", Body=b"v2")  # overwrite
    assert _body(s3, "cache", "k") == b"v2"
    assert s3.head_object(Bucket="cache", Key="k")["ContentLength"] == 2
    s3.delete_object(Bucket="cache", Key="k")
    assert _body(s3, "cache", "k") is None
    s3.put_object(Bucket="cache", Key="k", Body=b"v3")
    for _ in range(20):
        assert _body(s3, "cache", "k") == b"v3"
    assert time.monotonic() - started < 6 * PROMPT  # each call above was also bounded by PROMPT

    private_redis.start()  # same port, empty
    assert _body(s3, "cache", "k") == b"v3"
    s3.put_object(Bucket="cache", Key="k", Body=b"v4")
    assert _body(s3, "cache", "k") == b"v4"
    deadline = time.monotonic() + PROMPT  # after the back-off the gateway caches again
    while not _cached_keys(private_redis, env) and time.monotonic() < deadline:
        assert _body(s3, "cache", "k") == b"v4"
        time.sleep(0.1)
    assert _cached_keys(private_redis, env)
    assert _body(s3, "cache", "k") == b"v4"
    s3.delete_object(Bucket="cache", Key="k")
    assert _body(s3, "cache", "k") is None


@pytest.fixture(params=["sqlite", "pg2"])
def two_gateways(
    request: pytest.FixtureRequest, tmp_path: Path, private_redis: PrivateRedis
) -> Iterator[tuple[Any, Any]]:
    """Two gateway processes sharing one metadata store (the data dir's SQLite file, or two
    PostgreSQL shards), one blob directory, one keyring and one Redis prefix; started one
    after the other, before any upload."""
    env = _env(private_redis)
    if request.param == "pg2":
        dsns = request.getfixturevalue("pg_databases")(2)
        run_async(pg_migrations.migrate(MetaConfig(dsns=dsns)))
        env["STRATA_META_DSNS"] = ",".join(dsns)
    servers: list[StrataServer] = []
    try:
        for name in ("a", "b"):
            server = StrataServer(tmp_path / "data", log_path=tmp_path / f"{name}.log", extra_env=env)
            servers.append(server.start())
        yield _client(servers[0]), _client(servers[1])
    finally:
        for server in servers:
            server.stop()
    for server in servers:
        assert server.proc is not None and server.proc.returncode in (0, -15), server.stderr_text()


def test_two_gateways_read_each_others_writes(
    two_gateways: tuple[Any, Any], private_redis: PrivateRedis
) -> None:
    a, b = two_gateways
    a.create_bucket(Bucket="shared")
    a.put_object(Bucket="shared", Key="k", Body=b"v0")
    assert _body(a, "shared", "k") == _body(b, "shared", "k") == b"v0"  # cached on both sides

    rng = random.Random(11)
    expected: bytes | None = b"v0"
    for i in range(40):  # each write through one gateway, then a read through the other
        writer, reader = (a, b) if i % 2 else (b, a)
        if rng.random() < 0.25:
            writer.delete_object(Bucket="shared", Key="k")
            expected = None
        else:
            expected = f"v{i + 1}".encode()
            writer.put_object(Bucket="shared", Key="k", Body=expected)
        assert _body(reader, "shared", "k") == expected, f"step {i}"
        assert _body(writer, "shared", "k") == expected, f"step {i}"


def test_two_gateways_stay_consistent_under_concurrent_traffic(two_gateways: tuple[Any, Any]) -> None:
    a, b = two_gateways
    a.create_bucket(Bucket="busy")
    keys = ["x", "y", "z"]

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for n in range(25):
            gw, key = rng.choice((a, b)), rng.choice(keys)
            roll = rng.random()
            if roll < 0.35:
                gw.put_object(Bucket="busy", Key=key, Body=f"{seed}-{n}".encode())
            elif roll < 0.5:
                gw.delete_object(Bucket="busy", Key=key)
            else:
                _body(gw, "busy", key)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(work, range(6)))
    for key in keys:  # the dust has settled: both sides read the same, twice
        first = _body(a, "busy", key)
        assert _body(b, "busy", key) == first == _body(a, "busy", key) == _body(b, "busy", key)
        b.put_object(Bucket="busy", Key=key, Body=b"final-" + key.encode())
        assert _body(a, "busy", key) == b"final-" + key.encode()


def test_two_gateways_never_read_stale_across_a_redis_freeze(
    two_gateways: tuple[Any, Any], private_redis: PrivateRedis
) -> None:
    """Redis stops answering but keeps its data (as in a partition), a write lands meanwhile,
    and Redis comes back still holding the old entry: neither gateway serves it."""
    a, b = two_gateways
    a.create_bucket(Bucket="frozen")
    a.put_object(Bucket="frozen", Key="k", Body=b"old")
    assert _body(a, "frozen", "k") == _body(b, "frozen", "k") == b"old"  # cached
    private_redis.freeze()
    try:
        assert _body(b, "frozen", "k") == b"old"  # Redis times out: from the store
        a.put_object(Bucket="frozen", Key="k", Body=b"new")  # its invalidation cannot land
        assert _body(a, "frozen", "k") == _body(b, "frozen", "k") == b"new"
    finally:
        private_redis.thaw()
    for _ in range(30):  # through and after both gateways' back-off windows
        assert _body(b, "frozen", "k") == b"new"
        assert _body(a, "frozen", "k") == b"new"
        time.sleep(0.1)
    b.put_object(Bucket="frozen", Key="k", Body=b"newer")
    assert _body(a, "frozen", "k") == b"newer"
