"""The audit log: who did what to which resource, from where, and how it ended, for every
mutation (PUT, POST, DELETE, whatever the outcome, including denied attempts) and every
object download (GetObject). HeadObject is not audited (no object data leaves; clients
like s3fs issue one per file they look at); it is in the access log like every request.

Requests never wait for the store: :meth:`AuditLog.record` appends to a bounded in-memory
queue and returns. A background task (:meth:`AuditLog.run`) writes what is queued every
``interval`` (~100 ms), or as soon as ``batch`` records are waiting, with ONE store call
(``append_audit``) per batch, which adds the ``audit`` rows and their outbox rows
(``"kind": "audit"``, relayed to the event stream) in one transaction. When the queue is
full a record is dropped, counted in ``audit_dropped_total`` and logged (at most every
10 s); while the store fails, batches are retried with backoff and kept in the queue.
:meth:`AuditLog.close` writes everything still queued before the store closes.

A process that crashes loses at most the records queued in its last ~100 ms.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Protocol

from gateway.meta.models import AuditRecord
from gateway.observability.metrics import Metrics
from gateway.observability.record import RequestRecord

log = logging.getLogger("strata.audit")

DROP_LOG_INTERVAL = 10.0  # seconds between "dropped audit records" warnings
RETRY_MAX = 5.0  # seconds, backoff ceiling while the store fails


class AuditStore(Protocol):
    async def append_audit(self, records: list[AuditRecord]) -> None: ...


class AuditLog:
    """Batches audit records into the metadata store (and thereby its outbox)."""

    def __init__(
        self,
        store: AuditStore,
        metrics: Metrics,
        *,
        enabled: bool = True,
        capacity: int = 10_000,
        batch: int = 500,
        interval: float = 0.1,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self.enabled = enabled
        self._capacity = capacity
        self._batch = batch
        self._interval = interval
        self._queue: collections.deque[AuditRecord] = collections.deque()
        self._pending = asyncio.Event()  # something is queued
        self._full = asyncio.Event()  # a whole batch is queued: write now
        self._closing = False
        self._running = False
        self._stopped = asyncio.Event()
        self._dropped_unlogged = 0
        self._last_drop_log = 0.0
        metrics.audit_queue.set_function(lambda: len(self._queue))

    # -- producers (request path: never blocks) ---------------------------------------------
    def finish(self, rec: RequestRecord) -> None:
        """Request finisher: audit ``rec`` if it was a mutation or an object download."""
        if self.enabled and rec.audited:
            for record in rec.audit_records():
                self.record(record)

    def record(self, record: AuditRecord) -> None:
        if len(self._queue) >= self._capacity:
            self._drop(1, "audit queue full")
            return
        self._queue.append(record)
        self._pending.set()
        if len(self._queue) >= self._batch:
            self._full.set()

    def _drop(self, count: int, why: str) -> None:
        if count <= 0:
            return
        self._metrics.audit_dropped.inc(count)
        self._dropped_unlogged += count
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL:
            log.warning("dropped %d audit records (%s)", self._dropped_unlogged, why)
            self._dropped_unlogged = 0
            self._last_drop_log = now

    # -- the writer -------------------------------------------------------------------------
    async def run(self) -> None:
        """Write queued records until :meth:`close` (run it as a background task)."""
        self._running = True
        failures = 0
        try:
            while not (self._closing and not self._queue):
                await self._pending.wait()
                if not self._closing:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self._interval)
                self._pending.clear()
                self._full.clear()
                try:
                    await self.flush()
                    failures = 0
                except Exception as exc:
                    if self._closing:
                        self._drop(len(self._queue), f"store failing at shutdown: {exc!r}")
                        self._queue.clear()
                        break
                    failures += 1
                    delay = min(RETRY_MAX, self._interval * 2**failures)
                    log.warning("writing audit records failed (%r); retrying in %.1fs", exc, delay)
                    self._pending.set()
                    await asyncio.sleep(delay)
        finally:
            self._running = False
            self._stopped.set()

    async def flush(self) -> None:
        """Write every queued record, ``batch`` at a time; a failed batch goes back to the
        front of the queue (as far as there is room) and the error propagates."""
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
            try:
                await self._store.append_audit(batch)
            except BaseException:
                room = self._capacity - len(self._queue)
                if room < len(batch):
                    self._drop(len(batch) - room, "queue full while the store fails")
                    batch = batch[len(batch) - room :] if room > 0 else []
                self._queue.extendleft(reversed(batch))
                raise
            self._metrics.audit_records.inc(len(batch))

    async def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (the writer finishes its queue, then stops)."""
        self._closing = True
        if not self._running:
            try:
                await asyncio.wait_for(self.flush(), timeout)
            except Exception as exc:
                self._drop(len(self._queue), f"store failing at shutdown: {exc!r}")
                self._queue.clear()
            return
        self._pending.set()
        self._full.set()
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except TimeoutError:
            log.error("audit log: %d records not written at shutdown", len(self._queue))
