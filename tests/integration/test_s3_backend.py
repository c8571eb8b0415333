"""Real ``strata serve`` processes whose packs live in SeaweedFS, reached through the fault
proxy: round trips are exact and packs land in the bucket (not the data dir), 503 bursts and
connection resets are absorbed by retries, a black-holed or stopped backend gives clients a
503 SlowDown within a bound and commits nothing, the breaker closes after recovery, and with
a replica configured reads survive the primary losing a pack or going away, and a restart
backfills the replica."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from awscrt import checksums
from botocore.exceptions import ClientError, ResponseStreamingError
from support.faultproxy import FaultProxy
from support.s3 import error_code, http_status, make_client, unique_bucket
from support.seaweed import ACCESS_KEY, REGION, SECRET_KEY, Seaweed
from support.server import StrataServer

from gateway.backends.s3 import MiB, S3BlobBackend, S3Settings

BOUND = 10.0  # seconds: a liveness bound for a client request while the backend is gone
BREAKER_RESET = 1.0


@pytest.fixture
def proxy(seaweed: Seaweed) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", seaweed.s3_port) as p:
        yield p


def backend_env(proxy: FaultProxy, bucket: str, **extra: str) -> dict[str, str]:
    env = {
        "STRATA_BACKEND_ENDPOINT": proxy.endpoint,
        "STRATA_BACKEND_BUCKET": bucket,
        "STRATA_BACKEND_ACCESS_KEY": ACCESS_KEY,
        "STRATA_BACKEND_SECRET_KEY": SECRET_KEY,
        "STRATA_BACKEND_REGION": REGION,
        "STRATA_BACKEND_CONNECT_TIMEOUT": "1",
        "STRATA_BACKEND_READ_TIMEOUT": "2",
        "STRATA_BACKEND_MAX_ATTEMPTS": "4",
        "STRATA_BACKEND_BACKOFF_BASE": "0.05",
        "STRATA_BACKEND_BACKOFF_MAX": "0.3",
        "STRATA_BACKEND_BREAKER_FAILURES": "5",
        "STRATA_BACKEND_BREAKER_RESET_SECONDS": str(BREAKER_RESET),
    }
    env.update(extra)
    return env


def replica_env(seaweed: Seaweed, bucket: str) -> dict[str, str]:
    """A replica bucket on the same SeaweedFS, reached directly (not through the proxy)."""
    return {
        "STRATA_BACKEND_REPLICA_ENDPOINT": seaweed.endpoint,
        "STRATA_BACKEND_REPLICA_BUCKET": bucket,
        "STRATA_BACKEND_REPLICA_ACCESS_KEY": ACCESS_KEY,
        "STRATA_BACKEND_REPLICA_SECRET_KEY": SECRET_KEY,
    }


def client(server: StrataServer) -> Any:
    """A boto3 client that never retries: what it sees is what the gateway answered."""
    return make_client(server, retries={"total_max_attempts": 1})


def started(factory: Callable[..., StrataServer], env: dict[str, str]) -> tuple[StrataServer, Any, str]:
    server = factory(extra_env=env)
    s3 = client(server)
    bucket = unique_bucket()
    s3.create_bucket(Bucket=bucket)
    return server, s3, bucket


def get(s3: Any, bucket: str, key: str) -> bytes:
    data: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def pack_files(server: StrataServer) -> list[Path]:
    return list(server.data_dir.rglob("*.pack"))


def wait_until(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        time.sleep(0.2)


def assert_slowdown(call: Callable[[], object]) -> float:
    """``call`` fails with 503 SlowDown within :data:`BOUND`; returns how long it took."""
    t0 = time.monotonic()
    with pytest.raises(ClientError) as failed:
        call()
    elapsed = time.monotonic() - t0
    assert error_code(failed.value) == "SlowDown" and http_status(failed.value) == 503
    assert elapsed < BOUND, f"503 took {elapsed:.1f}s"
    return elapsed


def assert_fails_fast(call: Callable[[], object]) -> None:
    """``call`` fails within :data:`BOUND`: a 503, or (a GET whose headers were out) a body
    cut short. Never a hang, never wrong bytes."""
    t0 = time.monotonic()
    with pytest.raises((ClientError, ResponseStreamingError)):
        call()
    assert time.monotonic() - t0 < BOUND


def test_round_trip_packs_live_in_the_bucket(
    seaweed: Seaweed, proxy: FaultProxy, strata_factory: Callable[..., StrataServer]
) -> None:
    hot = seaweed.create_bucket(unique_bucket("hot"))
    server, s3, bucket = started(strata_factory, backend_env(proxy, hot))
    big = os.urandom(20 * MiB)
    s3.put_object(Bucket=bucket, Key="big", Body=big)
    assert get(s3, bucket, "big") == big
    rng = random.Random(7)
    small = {f"small/{i:03d}": rng.randbytes(rng.randint(1, 200_000)) for i in range(60)}
    with ThreadPoolExecutor(8) as pool:  # concurrent small PUTs share group-committed packs
        list(pool.map(lambda kv: s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), small.items()))
        got = dict(zip(small, pool.map(lambda k: get(s3, bucket, k), small), strict=True))
    assert got == small
    packs = seaweed.keys(hot, "packs/")
    assert packs and all(k.endswith(".pack") for k in packs)
    assert pack_files(server) == []  # nothing in data_dir/blobs
    assert [p for p in (server.data_dir / "spool").rglob("*") if p.is_file()] == []
    # on the wire: our CRC32C on every upload, no SDK checksums, no checksum mode on reads
    puts = [h.lower() for h in proxy.heads() if h.startswith(b"PUT /" + hot.encode() + b"/packs/")]
    gets = [h.lower() for h in proxy.heads() if h.startswith(b"GET ")]
    assert puts and all(b"x-amz-checksum-crc32c:" in h and b"x-amz-trailer" not in h for h in puts)
    assert gets and all(b"x-amz-checksum-mode" not in h for h in gets)


def test_503_bursts_and_resets_are_absorbed(
    seaweed: Seaweed, proxy: FaultProxy, strata_factory: Callable[..., StrataServer]
) -> None:
    hot = seaweed.create_bucket(unique_bucket("hot"))
    server, s3, bucket = started(strata_factory, backend_env(proxy, hot))
    data = os.urandom(3 * MiB)
    proxy.fail_next(3)  # shorter than max_attempts (4)
    s3.put_object(Bucket=bucket, Key="after-503s", Body=data)
    assert proxy.faults_injected == 3
    proxy.fail_next(3)
    assert get(s3, bucket, "after-503s") == data
    assert proxy.faults_injected == 6
    proxy.reset_next(2)
    s3.put_object(Bucket=bucket, Key="after-resets", Body=data[::-1])
    proxy.reset_next(2)
    assert get(s3, bucket, "after-resets") == data[::-1]
    assert proxy.faults_injected == 10
    assert "circuit breaker" not in server.stderr_text()  # never opened


def test_blackholed_backend_gives_503_in_bounded_time_and_commits_nothing(
    seaweed: Seaweed, proxy: FaultProxy, strata_factory: Callable[..., StrataServer]
) -> None:
    hot = seaweed.create_bucket(unique_bucket("hot"))
    server, s3, bucket = started(strata_factory, backend_env(proxy, hot))
    kept = os.urandom(MiB)
    s3.put_object(Bucket=bucket, Key="kept", Body=kept)
    packs_before = seaweed.keys(hot)
    proxy.blackhole()
    assert_slowdown(lambda: s3.put_object(Bucket=bucket, Key="lost", Body=os.urandom(2 * MiB)))
    assert_slowdown(lambda: s3.put_object(Bucket=bucket, Key="lost-small", Body=os.urandom(40_000)))
    assert_fails_fast(lambda: get(s3, bucket, "kept"))
    proxy.passthrough()
    assert seaweed.keys(hot) == packs_before  # no pack of the failed PUTs reached the bucket
    for key in ("lost", "lost-small"):
        with pytest.raises(ClientError) as missing:
            s3.head_object(Bucket=bucket, Key=key)
        assert http_status(missing.value) == 404
    assert get(s3, bucket, "kept") == kept
    s3.put_object(Bucket=bucket, Key="lost", Body=b"now it works")
    assert get(s3, bucket, "lost") == b"now it works"
    assert pack_files(server) == []


def test_stopped_backend_opens_the_breaker_then_recovers(
    seaweed: Seaweed, proxy: FaultProxy, strata_factory: Callable[..., StrataServer]
) -> None:
    hot = seaweed.create_bucket(unique_bucket("hot"))
    server, s3, bucket = started(strata_factory, backend_env(proxy, hot))
    data = os.urandom(MiB)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    proxy.refuse()  # every connection is reset at once, as a stopped backend's would be
    for key in ("down0", "down1"):  # 4 attempts each: the breaker opens after 5 failures in a row
        assert_slowdown(lambda k=key: s3.put_object(Bucket=bucket, Key=k, Body=os.urandom(MiB)))  # type: ignore[misc]
    assert "closed -> open" in server.stderr_text()
    seen = proxy.connections
    fast = assert_slowdown(lambda: s3.put_object(Bucket=bucket, Key="k2", Body=os.urandom(MiB)))
    assert fast < 1.0 and proxy.connections == seen  # refused before reaching the backend
    assert_fails_fast(lambda: get(s3, bucket, "k"))
    assert proxy.connections == seen
    proxy.passthrough()
    time.sleep(BREAKER_RESET + 0.2)
    assert get(s3, bucket, "k") == data  # the probe succeeds and closes the breaker
    s3.put_object(Bucket=bucket, Key="k2", Body=data[::-1])
    assert get(s3, bucket, "k2") == data[::-1]
    log = server.stderr_text()
    assert "open -> half_open" in log and "half_open -> closed" in log
    for i in range(2):
        with pytest.raises(ClientError) as missing:
            s3.head_object(Bucket=bucket, Key=f"down{i}")
        assert http_status(missing.value) == 404


def test_get_with_the_backend_down_answers_503(
    seaweed: Seaweed, proxy: FaultProxy, strata_factory: Callable[..., StrataServer]
) -> None:
    hot = seaweed.create_bucket(unique_bucket("hot"))
    _, s3, bucket = started(strata_factory, backend_env(proxy, hot))
    s3.put_object(Bucket=bucket, Key="k", Body=os.urandom(MiB))
    proxy.refuse()
    assert_slowdown(lambda: get(s3, bucket, "k"))


def test_reads_fall_back_to_the_replica(
    seaweed: Seaweed, proxy: FaultProxy, strata_factory: Callable[..., StrataServer]
) -> None:
    hot = seaweed.create_bucket(unique_bucket("hot"))
    replica = seaweed.create_bucket(unique_bucket("rep"))
    server, s3, bucket = started(strata_factory, {**backend_env(proxy, hot), **replica_env(seaweed, replica)})
    rng = random.Random(11)
    objects = {
        "big": os.urandom(6 * MiB),
        **{f"s{i}": rng.randbytes(rng.randint(1, 50_000)) for i in range(10)},
    }
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    wait_until(lambda: sorted(seaweed.keys(replica)) == sorted(seaweed.keys(hot)), what="replication")
    assert seaweed.keys(replica, "packs/")
    proxy.blackhole()  # the primary is unreachable: reads come from the replica
    t0 = time.monotonic()
    assert get(s3, bucket, "big") == objects["big"]
    assert get(s3, bucket, "s3") == objects["s3"]
    assert time.monotonic() - t0 < 2 * BOUND
    proxy.passthrough()
    time.sleep(BREAKER_RESET + 0.2)
    hot_client = seaweed.client()
    for key in seaweed.keys(hot, "packs/"):  # the primary loses every pack
        hot_client.delete_object(Bucket=hot, Key=key)
    for key, data in objects.items():
        assert get(s3, bucket, key) == data
    assert pack_files(server) == []


def test_a_restart_backfills_the_replica(seaweed: Seaweed, proxy: FaultProxy, tmp_path: Path) -> None:
    hot = seaweed.create_bucket(unique_bucket("hot"))
    replica = seaweed.create_bucket(unique_bucket("rep"))
    data_dir = tmp_path / "data"
    first = StrataServer(data_dir, log_path=tmp_path / "first.log", extra_env=backend_env(proxy, hot))
    with first:  # no replica configured yet
        s3 = client(first)
        bucket = unique_bucket()
        s3.create_bucket(Bucket=bucket)
        for i in range(5):
            s3.put_object(Bucket=bucket, Key=f"o{i}", Body=os.urandom(100_000 * (i + 1)))
    packs = sorted(seaweed.keys(hot))
    assert packs and seaweed.keys(replica) == []
    env = {**backend_env(proxy, hot), **replica_env(seaweed, replica)}
    with StrataServer(data_dir, log_path=tmp_path / "second.log", extra_env=env):
        wait_until(lambda: sorted(seaweed.keys(replica)) == packs, what="backfill")


async def test_seaweedfs_checks_the_crc32c_we_send(seaweed: Seaweed, tmp_path: Path) -> None:
    bucket = seaweed.create_bucket(unique_bucket("crc"))
    settings = S3Settings(bucket, seaweed.endpoint, REGION, ACCESS_KEY, SECRET_KEY)
    backend = S3BlobBackend(settings, tmp_path / "spool")
    blob = tmp_path / "blob"
    blob.write_bytes(b"payload")
    try:
        with pytest.raises(ClientError) as refused:
            await backend.upload("packs/aa/bad.pack", blob, 7, checksums.crc32c(b"tampered"))
        assert error_code(refused.value) in ("BadDigest", "InvalidRequest", "XAmzContentChecksumMismatch")
        with pytest.raises(FileNotFoundError):
            await backend.size("packs/aa/bad.pack")
        await backend.upload("packs/aa/bad.pack", blob, 7, checksums.crc32c(b"payload"))
        assert await backend.read_range("packs/aa/bad.pack", 0, 7) == b"payload"
    finally:
        await backend.close()
