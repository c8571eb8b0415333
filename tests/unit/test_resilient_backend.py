"""ResilientBackend's pure logic, as tables: error classification, full-jitter backoff, the
circuit breaker's state machine, and the retry loop (budget, attempts, fail-fast) driven by a
fake clock around a scripted inner backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from gateway.backends.base import BackendUnavailable, BlobInfo
from gateway.backends.resilient import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    Failure,
    ReplicaObserver,
    ResilientBackend,
    backoff_delay,
    call_budget,
    classify,
)
from gateway.config import BackendConfig


def client_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


# -- classification -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (client_error(503, "SlowDown"), Failure("throttle", retry=True, answered=False)),
        (client_error(429, "TooManyRequests"), Failure("throttle", retry=True, answered=False)),
        (client_error(400, "RequestTimeout"), Failure("throttle", retry=True, answered=False)),
        (client_error(500, "InternalError"), Failure("5xx", retry=True, answered=False)),
        (client_error(502, "BadGateway"), Failure("5xx", retry=True, answered=False)),
        (client_error(404, "NoSuchKey"), Failure("not_found", retry=False, answered=True)),
        (client_error(403, "AccessDenied"), Failure("client", retry=False, answered=True)),
        (client_error(400, "InvalidArgument"), Failure("client", retry=False, answered=True)),
        (FileNotFoundError("packs/x"), Failure("not_found", retry=False, answered=True)),
        (TimeoutError(), Failure("timeout", retry=True, answered=False)),
        (ReadTimeoutError(endpoint_url="http://b"), Failure("timeout", retry=True, answered=False)),
        (ConnectTimeoutError(endpoint_url="http://b"), Failure("timeout", retry=True, answered=False)),
        (ConnectionClosedError(endpoint_url="http://b"), Failure("reset", retry=True, answered=False)),
        (EndpointConnectionError(endpoint_url="http://b"), Failure("reset", retry=True, answered=False)),
        (ConnectionResetError(), Failure("reset", retry=True, answered=False)),
        (ValueError("a bug of ours"), Failure("other", retry=False, answered=False)),
    ],
)
def test_classify(exc: BaseException, expected: Failure) -> None:
    assert classify(exc) == expected


# -- backoff --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "rand", "expected"),
    [
        (0, 0.05, 1.0, 1.0, 0.05),
        (1, 0.05, 1.0, 1.0, 0.1),
        (3, 0.05, 1.0, 1.0, 0.4),
        (5, 0.05, 1.0, 1.0, 1.0),  # capped
        (500, 0.05, 1.0, 1.0, 1.0),  # no overflow
        (3, 0.05, 1.0, 0.5, 0.2),  # full jitter: uniform in [0, ceiling)
        (3, 0.05, 1.0, 0.0, 0.0),
    ],
)
def test_backoff_delay(attempt: int, base: float, cap: float, rand: float, expected: float) -> None:
    assert backoff_delay(attempt, base, cap, lambda: rand) == pytest.approx(expected)


def test_call_budget_grows_with_the_bytes_moved() -> None:
    config = BackendConfig(connect_timeout=1.0, read_timeout=2.0)
    assert call_budget(config) == 3.0
    assert call_budget(config, 16 * 1024 * 1024) == 7.0


# -- circuit breaker ------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


# Each step: (advance the clock by, event, expected allow() result or None, state after).
BREAKER_TABLE: list[tuple[str, list[tuple[float, str, bool | None, str]]]] = [
    (
        "opens after 3 consecutive failures, a success in between resets the count",
        [
            (0, "failure", None, CLOSED),
            (0, "failure", None, CLOSED),
            (0, "success", None, CLOSED),
            (0, "failure", None, CLOSED),
            (0, "failure", None, CLOSED),
            (0, "allow", True, CLOSED),
            (0, "failure", None, OPEN),
            (0, "allow", False, OPEN),
        ],
    ),
    (
        "half-open after the reset time, one probe, success closes",
        [
            *[(0.0, "failure", None, CLOSED)] * 2,
            (0, "failure", None, OPEN),
            (4.9, "allow", False, OPEN),
            (0.2, "allow", True, HALF_OPEN),  # the probe
            (0, "allow", False, HALF_OPEN),  # only one
            (0, "success", None, CLOSED),
            (0, "allow", True, CLOSED),
        ],
    ),
    (
        "a failed probe opens again, with a fresh reset timer",
        [
            *[(0.0, "failure", None, CLOSED)] * 2,
            (0, "failure", None, OPEN),
            (5, "allow", True, HALF_OPEN),
            (0, "failure", None, OPEN),
            (4, "allow", False, OPEN),
            (1, "allow", True, HALF_OPEN),
        ],
    ),
    (
        "a released probe (cancelled, no verdict) lets the next call probe",
        [
            *[(0.0, "failure", None, CLOSED)] * 2,
            (0, "failure", None, OPEN),
            (5, "allow", True, HALF_OPEN),
            (0, "release", None, HALF_OPEN),
            (0, "allow", True, HALF_OPEN),
            (0, "success", None, CLOSED),
        ],
    ),
]


@pytest.mark.parametrize(("title", "steps"), BREAKER_TABLE, ids=[t for t, _ in BREAKER_TABLE])
def test_breaker_state_machine(title: str, steps: list[tuple[float, str, bool | None, str]]) -> None:
    clock = FakeClock()
    changes: list[str] = []
    breaker = CircuitBreaker(3, 5.0, clock, changes.append)
    expected_changes: list[str] = []
    for advance, event, allowed, state in steps:
        clock.now += advance
        before = breaker.state
        result = getattr(breaker, event)()
        if allowed is not None:
            assert result is allowed, (title, event)
        assert breaker.state == state, (title, event)
        if state != before:
            expected_changes.append(state)
    assert changes == expected_changes


def test_rejects_takes_no_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 5.0, clock)
    breaker.failure()
    assert breaker.rejects()
    clock.now += 5
    assert not breaker.rejects()
    assert breaker.state == OPEN  # rejects() does not move the state
    assert breaker.allow() and breaker.state == HALF_OPEN


# -- the retry loop ---------------------------------------------------------------------------


@dataclass
class Recorder:
    requests: list[tuple[str, bool, str | None]] = field(default_factory=list)
    states: list[str] = field(default_factory=list)

    def request(self, op: str, seconds: float, ok: bool, error_type: str | None) -> None:
        self.requests.append((op, ok, error_type))

    def breaker(self, state: str) -> None:
        self.states.append(state)


class ScriptedWriter:
    def __init__(self, inner: Scripted) -> None:
        self.inner = inner
        self.data = bytearray()
        self.aborted = False

    async def write(self, data: bytes | memoryview) -> None:
        self.data += data

    async def write_all(self, pieces: Sequence[bytes | memoryview]) -> None:
        for p in pieces:
            self.data += p

    async def commit(self) -> None:
        await self.inner.outcome()

    async def abort(self) -> None:
        self.aborted = True


class Scripted:
    """A fake inner backend: each call takes the next outcome (an exception to raise, or a
    value to return); ``calls`` counts the calls that reached it."""

    def __init__(self, outcomes: Sequence[Any] = ()) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0
        self.writers: list[ScriptedWriter] = []
        self.listings: list[list[Any]] = []

    async def outcome(self) -> Any:
        self.calls += 1
        result = self.outcomes.pop(0) if self.outcomes else b"ok"
        if isinstance(result, BaseException):
            raise result
        return result

    async def read_range(self, name: str, offset: int, length: int) -> bytes:
        return await self.outcome()  # type: ignore[no-any-return]

    async def size(self, name: str) -> int:
        return await self.outcome()  # type: ignore[no-any-return]

    async def delete(self, name: str) -> None:
        await self.outcome()

    async def open_writer(self, name: str) -> ScriptedWriter:
        self.writers.append(ScriptedWriter(self))
        return self.writers[-1]

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        for item in self.listings.pop(0):
            if isinstance(item, BaseException):
                raise item
            yield item

    async def list_info(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        async for name in self.list(prefix):
            yield BlobInfo(name, 1, 0.0)

    async def close(self) -> None:
        pass


CONFIG = BackendConfig(
    connect_timeout=1.0, read_timeout=9.0, max_attempts=4, backoff_base=0.1, backoff_max=1.0,
    breaker_failures=5, breaker_reset_seconds=5.0,
)  # fmt: skip
SLOW = client_error(503, "SlowDown")


def resilient(
    inner: Scripted, config: BackendConfig = CONFIG
) -> tuple[ResilientBackend, FakeClock, Recorder]:
    clock, rec = FakeClock(), Recorder()
    backend = ResilientBackend(inner, config, rec, clock=clock, sleep=clock.sleep, rand=lambda: 1.0)  # type: ignore[arg-type]
    return backend, clock, rec


# (outcomes, expected result or exception type, attempts, sleeps, error types seen)
RETRY_TABLE: list[tuple[str, list[Any], Any, int, list[float], list[str | None]]] = [
    ("success", [b"data"], b"data", 1, [], [None]),
    ("503 burst absorbed", [SLOW, SLOW, b"data"], b"data", 3, [0.1, 0.2], ["throttle", "throttle", None]),
    (
        "resets and 5xx absorbed",
        [ConnectionResetError(), client_error(500, "InternalError"), b"x"],
        b"x",
        3,
        [0.1, 0.2],
        ["reset", "5xx", None],
    ),
    ("attempts exhausted", [SLOW] * 4, BackendUnavailable, 4, [0.1, 0.2, 0.4], ["throttle"] * 4),
    ("404 is not retried", [FileNotFoundError("x")], FileNotFoundError, 1, [], ["not_found"]),
    ("403 is not retried", [client_error(403, "AccessDenied")], ClientError, 1, [], ["client"]),
    ("a local bug is not retried", [ValueError("bug")], ValueError, 1, [], ["other"]),
]


@pytest.mark.parametrize(
    ("title", "outcomes", "expected", "attempts", "sleeps", "kinds"),
    RETRY_TABLE,
    ids=[r[0] for r in RETRY_TABLE],
)
async def test_retry_table(
    title: str,
    outcomes: list[Any],
    expected: Any,
    attempts: int,
    sleeps: list[float],
    kinds: list[str | None],
) -> None:
    inner = Scripted(outcomes)
    backend, clock, rec = resilient(inner)
    if isinstance(expected, type):
        with pytest.raises(expected):
            await backend.read_range("packs/p", 0, 4)
    else:
        assert await backend.read_range("packs/p", 0, 4) == expected
    assert inner.calls == attempts
    assert clock.sleeps == pytest.approx(sleeps)
    assert [k for _, _, k in rec.requests] == kinds
    assert backend.breaker.state == CLOSED  # fewer than 5 failures in a row


async def test_budget_stops_retrying_before_it_runs_out() -> None:
    config = BackendConfig(
        connect_timeout=0.5, read_timeout=1.5, max_attempts=10, backoff_base=0.8, backoff_max=5.0
    )
    inner = Scripted([SLOW] * 10)
    backend, clock, _ = resilient(inner, config)
    with pytest.raises(BackendUnavailable):
        await backend.read_range("p", 0, 1)
    # budget 2 s: sleeps 0.8 (t=0.8), 1.6 would end at 2.4 > 2: give up after 2 attempts
    assert inner.calls == 2
    assert clock.sleeps == pytest.approx([0.8])


async def test_breaker_opens_fails_fast_then_probes_and_closes() -> None:
    inner = Scripted([SLOW] * 5)
    backend, clock, rec = resilient(inner)
    with pytest.raises(BackendUnavailable):
        await backend.read_range("p", 0, 1)  # 4 failed attempts
    with pytest.raises(BackendUnavailable):
        await backend.size("p")  # the 5th failure opens the breaker; no more attempts
    assert inner.calls == 5 and backend.breaker.state == OPEN and rec.states == [OPEN]
    for call in (backend.read_range("p", 0, 1), backend.delete("p"), backend.open_writer("p")):
        with pytest.raises(BackendUnavailable, match="circuit breaker open"):
            await call
    assert inner.calls == 5  # failed fast, nothing reached the backend
    clock.now += 5.0
    inner.outcomes = [b"back"]
    assert await backend.read_range("p", 0, 4) == b"back"  # the probe
    assert rec.states == [OPEN, HALF_OPEN, CLOSED]
    assert await backend.read_range("p", 0, 2) == b"ok"


async def test_failed_probe_reopens_without_retrying() -> None:
    inner = Scripted([SLOW] * 6)
    backend, clock, rec = resilient(inner, BackendConfig(breaker_failures=1, max_attempts=4))
    with pytest.raises(BackendUnavailable):
        await backend.read_range("p", 0, 1)
    assert inner.calls == 1  # the first failure opened it: the retry was refused
    clock.now += 5.0
    with pytest.raises(BackendUnavailable):
        await backend.read_range("p", 0, 1)
    assert inner.calls == 2 and rec.states == [OPEN, HALF_OPEN, OPEN]


async def test_not_found_counts_as_the_backend_answering() -> None:
    inner = Scripted([SLOW, SLOW, SLOW, FileNotFoundError("p"), SLOW, SLOW, SLOW, b"x"])
    backend, _, _ = resilient(inner)
    with pytest.raises(FileNotFoundError):
        await backend.read_range("p", 0, 1)
    assert backend.breaker.failures == 0
    assert await backend.read_range("p", 0, 1) == b"x"
    assert backend.breaker.state == CLOSED


async def test_commit_is_retried_and_a_final_failure_aborts_the_writer() -> None:
    inner = Scripted([SLOW, b""])
    backend, _, rec = resilient(inner)
    writer = await backend.open_writer("packs/a")
    await writer.write(b"abc")
    await writer.write_all([b"de", memoryview(b"f")])
    await writer.commit()
    assert inner.writers[0].data == b"abcdef" and not inner.writers[0].aborted
    assert [(op, ok) for op, ok, _ in rec.requests] == [("put", False), ("put", True)]
    inner.outcomes = [SLOW] * 4
    failing = await backend.open_writer("packs/b")
    with pytest.raises(BackendUnavailable):
        await failing.commit()
    assert inner.writers[1].aborted


async def test_a_hanging_backend_times_out_within_the_budget() -> None:
    class Hanging(Scripted):
        async def read_range(self, name: str, offset: int, length: int) -> bytes:
            self.calls += 1
            await asyncio.sleep(3600)
            return b""

    inner = Hanging()
    rec = Recorder()
    config = BackendConfig(connect_timeout=0.05, read_timeout=0.15, max_attempts=4, backoff_base=0.01)
    backend = ResilientBackend(inner, config, rec)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        await backend.read_range("p", 0, 1)
    assert time.monotonic() - started < 2.0
    assert inner.calls >= 1 and all(kind == "timeout" for _, _, kind in rec.requests)


@pytest.mark.parametrize("info", [False, True])
async def test_listing_resumes_after_a_failure_without_repeating(info: bool) -> None:
    inner = Scripted()
    inner.listings = [["a", "b", ConnectionResetError()], ["a", "b", "c", "d"]]
    backend, _, rec = resilient(inner)
    listing = backend.list_info("") if info else backend.list("")
    names = [i.name if isinstance(i, BlobInfo) else i async for i in listing]
    assert names == ["a", "b", "c", "d"]
    assert ("list", False, "reset") in rec.requests


def test_replica_observer_prefixes_requests_and_keeps_the_breaker_gauge() -> None:
    rec = Recorder()
    observer = ReplicaObserver(rec)
    observer.request("get", 0.1, False, "timeout")
    observer.breaker(OPEN)
    assert rec.requests == [("replica_get", False, "timeout")] and rec.states == []


async def test_the_metrics_module_is_a_backend_observer() -> None:
    from gateway.observability.metrics import Metrics

    metrics = Metrics()
    clock = FakeClock()
    backend = ResilientBackend(
        Scripted([SLOW, b"x"] + [SLOW] * 5),  # type: ignore[arg-type]
        BackendConfig(breaker_failures=3),
        metrics,
        clock=clock,
        sleep=clock.sleep,
    )
    assert await backend.read_range("p", 0, 1) == b"x"
    with pytest.raises(BackendUnavailable):
        await backend.read_range("p", 0, 1)
    text = metrics.exposition().decode()
    assert 'backend_errors_total{error_type="throttle",operation="get"} 4.0' in text
    assert 'backend_request_duration_seconds_count{operation="get"} 5.0' in text
    assert "circuit_breaker_state 2.0" in text  # open
