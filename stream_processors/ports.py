"""The ports of the worker and the control plane: what they need from the outside, as
Protocols, so that component tests hand them fakes (``tests/fakes.py``) and the adapters live in
one place each (ClickHouse: ``sinks/clickhouse.py``; aiokafka: ``kafka.py``).

The budget seeds port is :class:`flyball.stream_processors.budgets.BudgetSeeds` (owned by the
pure core that asks for seeds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

T = TypeVar("T")
Row = Sequence[Any]


class Store(Protocol):
    """ClickHouse behind one thread: ``run`` (async) / ``call`` (sync) execute a method of the
    store there; driver errors come out as ``PermanentError`` / ``TemporaryError``."""

    async def run(self, fn: Callable[..., T], *args: Any) -> T: ...

    def call(self, fn: Callable[..., T], *args: Any) -> T: ...

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]: ...

    def insert(self, table: str, rows: Sequence[Row], columns: Sequence[str]) -> None: ...

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any: ...


class EventSink(Protocol):
    """Where priced events go (``events``; ReplacingMergeTree on event_id)."""

    def write_events(self, rows: Sequence[Row]) -> None: ...


class AlertLog(Protocol):
    """Where raised and resolved alerts are recorded (``alerts``)."""

    def write_alerts(self, rows: Sequence[Row]) -> None: ...


class AuditLog(Protocol):
    """Where the control plane's decisions are recorded (``actions``)."""

    async def run(self, fn: Callable[..., T], *args: Any) -> T: ...

    def write_actions(self, rows: Sequence[Row]) -> None: ...


class ControlStore(Store, AuditLog, Protocol):
    """The store of the control plane: its state, the audit log, finance and the API's reads."""

    async def run(self, fn: Callable[..., T], *args: Any) -> T: ...


class WorkerStore(Store, EventSink, AlertLog, Protocol):
    """The store the ingest service writes to and keeps its detector checkpoints in."""


class KafkaClientFactory(Protocol):
    """Builds a process's consumers and (started) producers (``kafka.KafkaClients``)."""

    def consumer(self, *topics: str, **config: Any) -> AIOKafkaConsumer: ...

    async def producer(self, **config: Any) -> AIOKafkaProducer: ...
