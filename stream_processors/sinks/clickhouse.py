"""ClickHouse port: migrations, batched writes, and the queries the API needs.

The same code talks to the embedded chDB engine (``chdb:///path``, clickhouse-connect's own
chdb backend) and to a ClickHouse server (``http://host:8123``). clickhouse-connect is
synchronous and chDB allows one process per data directory, so every call goes through one
dedicated thread (``run``) and the owner of a store is the only user of its path.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import clickhouse_connect
import structlog
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

from flyball.stream_processors.errors import PermanentError, TemporaryError
from flyball.stream_processors.migrations import MIGRATIONS as WORKER_MIGRATIONS
from flyball.stream_processors.pipeline import EVENT_COLUMNS

from .ddl import DdlOptions, transform, ttl_statements

log = structlog.get_logger(__name__)
T = TypeVar("T")

_SCHEMA_MIGRATIONS = """
    CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, applied_at DateTime64(3, 'UTC'))
    ENGINE = MergeTree ORDER BY version
    """
def connect(url: str) -> Any:
    """A clickhouse-connect client for ``chdb:///path`` or ``http(s)://[user:pass@]host:port[/db]``."""
    if url.startswith("chdb:"):
        path = url.removeprefix("chdb://")
        Path(path).mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=url)
    parsed = urlparse(url)
    return clickhouse_connect.get_client(
        host=parsed.hostname or "localhost", port=parsed.port or 8123,
        username=parsed.username or "default", password=parsed.password or "",
        database=(parsed.path or "/").strip("/") or "default", secure=parsed.scheme == "https",
    )


# ClickHouse server error codes that mean "not now" (src/Common/ErrorCodes.cpp): timeouts,
# network, overload, too many parts or queries, memory, a read-only or restarting replica.
TEMPORARY_CODES = frozenset({
    3, 159, 160, 164, 198, 202, 209, 210, 241, 242, 252, 285, 319, 425, 439, 999, 1000,
})


def classify(exc: BaseException) -> PermanentError | TemporaryError | None:
    """The flyball error for a clickhouse-connect / chDB failure, or None if ``exc`` is not one.

    Network trouble (``OperationalError``) and the server codes in :data:`TEMPORARY_CODES` are
    temporary; a server or engine error with any other code (unknown column, type mismatch,
    decimal overflow, ...) is permanent, as is a row the driver cannot serialise (``TypeError``,
    ``ValueError``, ``OverflowError``, ``struct.error`` raised from an insert). A database error
    with no code (the HTTP transport can lose it) counts as temporary: the retries are bounded.
    """
    if isinstance(exc, (PermanentError, TemporaryError)):
        return exc
    if isinstance(exc, OperationalError):
        return TemporaryError(f"clickhouse unavailable: {exc}")
    if isinstance(exc, DatabaseError):
        code = getattr(exc, "code", None)
        if code is None or code in TEMPORARY_CODES:
            return TemporaryError(f"clickhouse: {exc}")
        return PermanentError(f"clickhouse refused (code {code}): {exc}")
    if isinstance(exc, ClickHouseError):
        return PermanentError(f"clickhouse: {exc}")
    return None


def _serialisation_error(exc: Exception) -> PermanentError:
    return PermanentError(f"clickhouse: row not insertable ({type(exc).__name__}: {exc})")


class ClickHouseStore:
    def __init__(self, url: str, ddl: DdlOptions | None = None) -> None:
        self.url = url
        self.ddl = ddl or DdlOptions()  # cluster form and TTLs of the migrations (sinks/ddl.py)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._client: Any = self._pool.submit(connect, url).result()

    # -------------------------------------------------------------- plumbing
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the ClickHouse thread; driver errors come out classified
        (:class:`PermanentError` / :class:`TemporaryError`, the driver's error as the cause)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except ClickHouseError as exc:
            raise (classify(exc) or exc) from exc

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the ClickHouse thread from synchronous code (errors classified as in ``run``)."""
        try:
            return self._pool.submit(fn, *args).result()
        except ClickHouseError as exc:
            raise (classify(exc) or exc) from exc

    def close(self) -> None:
        try:
            self.call(self._client.close)
        except (ClickHouseError, OSError) as exc:  # closing is best effort
            log.warning("clickhouse_close_failed", error=str(exc)[:300])
        self._pool.shutdown(wait=True)

    # -------------------------------------------------------------- schema
    def migrate(self, migrations: Sequence[tuple[int, str]] = WORKER_MIGRATIONS) -> list[int]:
        """Apply the migrations not applied yet (the worker's by default; a whole deployment's:
        ``flyball.control_plane.migrations.ALL_MIGRATIONS``); returns the versions applied."""
        return self.call(self._migrate, migrations)

    def _migrate(self, migrations: Sequence[tuple[int, str]]) -> list[int]:
        c = self._client
        for stmt in transform(_SCHEMA_MIGRATIONS, self.ddl):
            c.command(stmt)
        done = {row[0] for row in c.query("SELECT version FROM schema_migrations").result_rows}
        applied = []
        for version, sql in migrations:
            if version in done:
                continue
            for stmt in transform(sql, self.ddl):
                c.command(stmt)
            c.insert("schema_migrations", [[version, datetime.now(UTC)]], column_names=["version", "applied_at"])
            applied.append(version)
            log.info("migration_applied", version=version)
        for table, stmt in zip(sorted(self.ddl.ttl_days), ttl_statements(self.ddl), strict=True):
            local = table + (self.ddl.local_suffix if self.ddl.cluster else "")
            current = c.query("SELECT create_table_query FROM system.tables WHERE database = currentDatabase() "
                              "AND name = {t:String}", parameters={"t": local}).result_rows
            if not current:
                continue  # a table of another package's migrations, not created here (yet)
            if f"toIntervalDay({self.ddl.ttl_days[table]})" not in current[0][0]:
                c.command(stmt)  # only when it changes: MODIFY TTL rewrites the table's parts
                log.info("ttl_set", table=table, days=self.ddl.ttl_days[table])
        return applied

    # -------------------------------------------------------------- writes
    def write_events(self, rows: Sequence[Sequence[Any]]) -> None:
        self.insert("events", rows, EVENT_COLUMNS)

    def write_alerts(self, rows: Sequence[Sequence[Any]]) -> None:
        self.insert("alerts", rows, ("alert_id", "kind", "scope_key", "scope", "severity", "status",
                                     "first_seen", "last_seen", "body", "recorded_at"))

    def write_actions(self, rows: Sequence[Sequence[Any]]) -> None:
        self.insert("actions", rows, ("action_id", "at", "decision", "directive_id", "scope_key", "tenant_id",
                                      "alert_id", "policy_id", "actor", "reason", "before", "after", "evidence"))

    def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> None:
        """Insert rows into any flyball table (call on the ClickHouse thread: ``run``/``call``).
        A row the driver cannot serialise raises :class:`PermanentError`."""
        if not rows:
            return
        # clickhouse-connect's InsertContext is a reference cycle (it keeps a bound method of itself)
        # that keeps the list of rows it was given: the rows of every insert stayed alive until
        # the collector's next pass, which the worker makes rare (``tune_gc_for_batches``): about
        # 45 s of inserts, 40 MB at 1,000 events/s, and the heap grew as that garbage came and
        # went (docs/RELIABILITY.md, "The soak"). It gets a list of its own, emptied afterwards.
        batch = list(rows)
        try:
            self._client.insert(table, batch, column_names=list(columns))
        except (TypeError, ValueError, OverflowError, struct.error) as exc:
            raise _serialisation_error(exc) from exc
        finally:
            batch.clear()

    def purge_allocator(self) -> None:
        """chDB only: return jemalloc's dirty pages to the system now (``SYSTEM JEMALLOC PURGE``,
        4 ms in the soak's ``memory_tidied`` logs) rather than when jemalloc gets round to it. A ClickHouse server's memory is
        its own business: nothing is sent to one."""
        if self.url.startswith("chdb:"):
            self._client.command("SYSTEM JEMALLOC PURGE")

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return self._client.command(sql, parameters=parameters or {})

    # -------------------------------------------------------------- reads
    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return list(self._client.query(sql, parameters=parameters or {}).result_rows)


def as_decimal(value: Any) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))
