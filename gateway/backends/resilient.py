"""Retries, timeouts and a circuit breaker around any blob backend, and the observer that
sees every backend request.

This module owns how the gateway behaves when its backend misbehaves:

* **Per-call time budget.** Every call (each attempt, the backoff sleeps between attempts,
  and the attempts after them) ends within ``connect_timeout + read_timeout`` seconds, plus
  one second per :data:`MIN_RATE` bytes the call moves (a 16 MiB pack upload gets 4 s more).
  A black-holed backend therefore costs a client at most that long before the gateway
  answers 503 ``SlowDown`` (:class:`BackendUnavailable`); it never hangs.
* **Retries.** A failure that another attempt may cure (:func:`classify`: timeouts,
  connection resets and refusals, 5xx, throttling) is retried up to ``max_attempts`` in
  all, after a sleep of full jitter: uniform in ``[0, min(backoff_max, backoff_base * 2**n))``
  (:func:`backoff_delay`). A definite answer (404, 403, 400…) is not retried. When the
  attempts or the budget run out, the call raises :class:`BackendUnavailable`.
* **Circuit breaker** (:class:`CircuitBreaker`): ``breaker_failures`` consecutive failed
  attempts open it; while open every call fails at once with :class:`BackendUnavailable`
  (opening a writer too: nothing is spooled that could not be stored). After
  ``breaker_reset_seconds`` it is half-open: exactly one call goes through as a probe (one
  attempt); success closes it, failure opens it again. Definite answers (404…) count as
  successes: the backend is up.
* **Writers**: writes go to the inner writer (for S3 a local spool file) untouched;
  ``commit`` is the retried call. A commit that finally fails aborts the inner writer, so
  nothing is left behind, and raises.
* **Listings** are retried by restarting the inner listing and skipping the names already
  yielded (listings come sorted by name), each item bounded by the attempt timeout.

:class:`BackendObserver` is told of every attempt (operation, seconds, ok, error type from a
small fixed set: :data:`ERROR_TYPES`) and of every breaker state change; the metrics module
implements it (``backend_request_duration_seconds``, ``backend_errors_total``,
``circuit_breaker_state``). Operations are ``put``, ``get``, ``head``, ``delete``, ``list``
and ``ping``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from gateway.backends.base import BackendUnavailable, BlobBackend, BlobInfo, BlobWriter
from gateway.config import BackendConfig

log = logging.getLogger(__name__)

T = TypeVar("T")
L = TypeVar("L", str, BlobInfo)
MIN_RATE = 4 * 1024 * 1024  # bytes per second a healthy backend moves at least, per request
ERROR_TYPES = ("timeout", "reset", "5xx", "throttle", "not_found", "client", "other")
THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
     "TooManyRequestsException", "ServiceUnavailable", "RequestThrottled", "RequestTimeout"}
)  # fmt: skip
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class BackendObserver(Protocol):
    def request(self, op: str, seconds: float, ok: bool, error_type: str | None) -> None: ...
    def breaker(self, state: str) -> None: ...  # "closed" | "open" | "half_open"


class NullObserver:
    """The default observer: sees nothing."""

    def request(self, op: str, seconds: float, ok: bool, error_type: str | None) -> None:
        pass

    def breaker(self, state: str) -> None:
        pass


# -- classification and backoff: pure functions ---------------------------------------------


@dataclass(frozen=True)
class Failure:
    """What a failed attempt says about the backend.

    ``retry``: the backend is in trouble (another attempt may work; counts against the
    breaker). Otherwise ``answered`` tells whether the backend gave a definite answer (it is
    up: counts as a success for the breaker) or the error was not about the backend at all.
    """

    kind: str  # one of ERROR_TYPES
    retry: bool
    answered: bool


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def classify(exc: BaseException) -> Failure:
    """Sort a backend exception into retryable trouble, a definite answer, or neither."""
    if isinstance(exc, (TimeoutError, ReadTimeoutError, ConnectTimeoutError, aiohttp.ServerTimeoutError)):
        return Failure("timeout", retry=True, answered=False)
    if isinstance(exc, ClientError):
        status, code = _status(exc), str(exc.response.get("Error", {}).get("Code", ""))
        if code in THROTTLE_CODES or status in (429, 503):
            return Failure("throttle", retry=True, answered=False)
        if status >= 500:
            return Failure("5xx", retry=True, answered=False)
        if status == 404:
            return Failure("not_found", retry=False, answered=True)
        return Failure("client", retry=False, answered=True)
    if isinstance(exc, FileNotFoundError):  # the inner backend's "no such blob"
        return Failure("not_found", retry=False, answered=True)
    connection_errors = (
        ConnectionClosedError, EndpointConnectionError, BotoConnectionError, HTTPClientError,
        ConnectionError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
    )  # fmt: skip
    if isinstance(exc, connection_errors):
        return Failure("reset", retry=True, answered=False)
    return Failure("other", retry=False, answered=False)


def backoff_delay(attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Full jitter: the sleep after failed attempt ``attempt`` (0-based) is uniform in
    ``[0, min(cap, base * 2**attempt))``."""
    return rand() * min(cap, base * (2 ** min(attempt, 62)))


def call_budget(config: BackendConfig, nbytes: int = 0) -> float:
    """Seconds one call may take in all (attempts and backoff): the timeouts, plus time to
    move ``nbytes`` at :data:`MIN_RATE`."""
    return config.connect_timeout + config.read_timeout + nbytes / MIN_RATE


# -- circuit breaker ------------------------------------------------------------------------


class CircuitBreaker:
    """closed -> open after ``failures`` consecutive failures -> half-open after
    ``reset_seconds`` (one probe) -> closed on the probe's success, open on its failure."""

    def __init__(
        self,
        failures: int,
        reset_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str], None] = lambda state: None,
    ) -> None:
        self.threshold = max(1, failures)
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._on_change = on_change
        self.state = CLOSED
        self.failures = 0  # consecutive, while closed
        self._opened_at = 0.0
        self._probing = False

    def _move(self, state: str) -> None:
        if state != self.state:
            log.warning("backend circuit breaker %s -> %s", self.state, state)
            self.state = state
            self._on_change(state)

    def rejects(self) -> bool:
        """True while calls must fail fast (open and not yet due for a probe). Takes no
        probe slot: for refusing new work early (writers)."""
        return self.state == OPEN and self._clock() - self._opened_at < self.reset_seconds

    def allow(self) -> bool:
        """May an attempt go to the backend now? In half-open state only the one probe may
        (the caller must then report :meth:`success`, :meth:`failure` or :meth:`release`)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self._clock() - self._opened_at < self.reset_seconds:
                return False
            self._move(HALF_OPEN)
        if self._probing:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self.failures = 0
        self._probing = False
        self._move(CLOSED)

    def failure(self) -> None:
        self._probing = False
        if self.state == CLOSED:
            self.failures += 1
            if self.failures < self.threshold:
                return
        self.failures = 0
        self._opened_at = self._clock()
        self._move(OPEN)

    def release(self) -> None:
        """The attempt ended without a verdict on the backend (cancelled, a local error):
        free the probe slot, change nothing else."""
        self._probing = False


# -- the wrapper ----------------------------------------------------------------------------


class ResilientBackend:
    """``inner`` behind per-call budgets, retries with backoff, and a circuit breaker."""

    def __init__(
        self,
        inner: BlobBackend,
        config: BackendConfig,
        observer: BackendObserver | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.inner = inner
        self.config = config
        self.observer: BackendObserver = observer or NullObserver()
        self.breaker = CircuitBreaker(
            config.breaker_failures, config.breaker_reset_seconds, clock, self.observer.breaker
        )
        self._clock = clock
        self._sleep = sleep
        self._rand = rand

    async def call(self, op: str, attempt: Callable[[], Awaitable[T]], nbytes: int = 0) -> T:
        """Run ``attempt`` (a fresh awaitable each time) under the budget, retries and breaker."""
        budget = call_budget(self.config, nbytes)
        deadline = self._clock() + budget
        tries = max(1, self.config.max_attempts)
        for n in range(tries):
            if not self.breaker.allow():
                raise BackendUnavailable(f"backend {op}: circuit breaker open")
            started = self._clock()
            try:
                result = await asyncio.wait_for(attempt(), max(0.0, deadline - started))
            except asyncio.CancelledError:
                self.breaker.release()
                raise
            except Exception as exc:
                failure = classify(exc)
                self.observer.request(op, self._clock() - started, False, failure.kind)
                if not failure.retry:
                    if failure.answered:
                        self.breaker.success()
                    else:
                        self.breaker.release()
                    raise
                self.breaker.failure()
                delay = backoff_delay(n, self.config.backoff_base, self.config.backoff_max, self._rand)
                if n + 1 >= tries or self._clock() + delay >= deadline:
                    log.warning("backend %s failed after %d attempt(s): %s: %s", op, n + 1, failure.kind, exc)
                    raise BackendUnavailable(
                        f"backend {op} failed ({failure.kind}) after {n + 1} attempt(s)"
                    ) from exc
                log.info(
                    "backend %s attempt %d failed (%s), retrying in %.3fs", op, n + 1, failure.kind, delay
                )
                await self._sleep(delay)
            else:
                self.observer.request(op, self._clock() - started, True, None)
                self.breaker.success()
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    # -- BlobBackend ----------------------------------------------------------------------
    async def open_writer(self, name: str) -> ResilientWriter:
        if self.breaker.rejects():  # spool nothing that could not be stored
            raise BackendUnavailable("backend put: circuit breaker open")
        return ResilientWriter(self, name, await self.inner.open_writer(name))

    async def read_range(self, name: str, offset: int, length: int) -> bytes:
        return await self.call("get", lambda: self.inner.read_range(name, offset, length), length)

    async def size(self, name: str) -> int:
        return await self.call("head", lambda: self.inner.size(name))

    async def delete(self, name: str) -> None:
        await self.call("delete", lambda: self.inner.delete(name))

    async def ping(self) -> None:
        ping = getattr(self.inner, "ping", None)
        if callable(ping):
            await self.call("ping", ping)

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        async for name in self._listing(lambda: self.inner.list(prefix)):
            yield name

    async def list_info(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        async for info in self._listing(lambda: self.inner.list_info(prefix)):
            yield info

    async def _listing(self, start: Callable[[], AsyncIterator[L]]) -> AsyncIterator[L]:
        """Items of a sorted listing, each fetched as one call; after a failure the
        listing restarts and skips the names already yielded."""
        last: str | None = None
        listing: AsyncIterator[L] | None = None

        async def next_new() -> L | None:
            nonlocal listing
            if listing is None:
                listing = start()
            while True:
                try:
                    item = await anext(listing)
                except StopAsyncIteration:
                    return None
                except BaseException:
                    await aclose(listing)
                    listing = None
                    raise
                if last is None or _name(item) > last:
                    return item

        try:
            while (item := await self.call("list", next_new)) is not None:
                last = _name(item)
                yield item
        finally:
            if listing is not None:
                await aclose(listing)

    async def close(self) -> None:
        await self.inner.close()


class ResilientWriter:
    """Writes go straight to the inner writer; ``commit`` is retried as one call."""

    def __init__(self, backend: ResilientBackend, name: str, inner: BlobWriter) -> None:
        self._backend = backend
        self._name = name
        self._inner = inner
        self._size = 0

    async def write(self, data: bytes | memoryview) -> None:
        await self._inner.write(data)
        self._size += len(data)

    async def write_all(self, pieces: Sequence[bytes | memoryview]) -> None:
        await self._inner.write_all(pieces)
        self._size += sum(len(p) for p in pieces)

    async def commit(self) -> None:
        try:
            await self._backend.call("put", self._inner.commit, self._size)
        except BaseException:
            await self._inner.abort()
            raise

    async def abort(self) -> None:
        await self._inner.abort()


def _name(item: Any) -> str:
    return item.name if isinstance(item, BlobInfo) else str(item)


async def aclose(iterator: AsyncIterator[Any]) -> None:
    """Close an async generator (best effort: a broken one may fail to close)."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):  # it already failed; the caller reports that
            await close()


class ReplicaObserver:
    """Reports a replica's requests as ``replica_<op>`` to ``inner``, and keeps its breaker
    out of the (single) ``circuit_breaker_state`` gauge, which is the primary's."""

    def __init__(self, inner: BackendObserver) -> None:
        self._inner = inner

    def request(self, op: str, seconds: float, ok: bool, error_type: str | None) -> None:
        self._inner.request(f"replica_{op}", seconds, ok, error_type)

    def breaker(self, state: str) -> None:
        log.info("replica circuit breaker: %s", state)
