"""Finance operations over ClickHouse: price changes (audited), budgets, re-pricing, minute
rollups (reconciliation with a provider's export: ``reconcile.py``).

The arithmetic lives in the pure cores (``pricing``, ``budgets``, ``forecast``; the
reconciliation in ``reconcile.py``); this class is the thin shell that reads and writes ClickHouse.

Exactly-once money. The ``events`` table is a ReplacingMergeTree keyed by (tenant, day,
event_id), and every spend query reads it ``FINAL``, so an event counts once however often it
was inserted (producer retries, duplicate sends, a worker killed between insert and commit).
Re-pricing inserts a new version of each affected row (same key, new cost and price version);
the latest insert wins under FINAL, so a repriced event still counts once, and running the same
reprice again changes nothing. Minute rollups (``spend_minute``) are never fed by a
materialized view (an MV sees every inserted block, duplicates included, and would count a
replayed batch twice); they are recomputed from ``events FINAL`` for the minutes that received
rows since the last refresh, into a ReplacingMergeTree keyed by the group, so a recompute
replaces the old row instead of adding to it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import structlog

from flyball.stream_processors.errors import PermanentError, TemporaryError
from flyball.stream_processors.budgets import Budget, Period, SeedRequest, make_budget, period_bounds
from flyball.stream_processors.pipeline import EVENT_COLUMNS
from flyball.stream_processors.ports import Store
from flyball.stream_processors.pricing import PriceBook, PriceEntry, Usage, entry_from_dict, entry_to_dict, price

log = structlog.get_logger(__name__)
COL = {name: i for i, name in enumerate(EVENT_COLUMNS)}


def _utc(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _dec(value: Any) -> Decimal | None:
    if value is None:
        return None
    return value if isinstance(value, Decimal) else Decimal(str(value))


@dataclass
class RepriceSummary:
    reprice_id: str
    examined: int = 0
    changed: int = 0
    old_total: Decimal = Decimal(0)
    new_total: Decimal = Decimal(0)
    dry_run: bool = False
    versions: dict[str, int] = field(default_factory=dict)  # new price version -> events

    def as_json(self) -> dict[str, Any]:
        return {"reprice_id": self.reprice_id, "examined": self.examined, "changed": self.changed,
                "old_total_usd": _text(self.old_total), "new_total_usd": _text(self.new_total),
                "delta_usd": _text(self.new_total - self.old_total), "dry_run": self.dry_run,
                "versions": self.versions}


class Finance:
    """Owned by the process that owns the ClickHouse store (``flyball up`` / ``api``)."""

    def __init__(self, store: Store, *, get_book: Callable[[], PriceBook],
                 set_book: Callable[[PriceBook], None] | None = None) -> None:
        self.store = store
        self._get_book = get_book
        self._own_book: PriceBook | None = None
        self._set_book = set_book
        self._budgets: tuple[Budget, ...] = ()
        self._rollup_since: datetime | None = None

    # ---------------------------------------------------------------- prices
    def book(self) -> PriceBook:
        return self._own_book if self._own_book is not None else self._get_book()

    def _swap(self, book: PriceBook) -> None:
        if self._set_book is not None:
            self._set_book(book)
        else:
            self._own_book = book

    def set_prices(self, raws: Sequence[Any], *, actor: str, reason: str = "") -> list[tuple[PriceEntry, PriceEntry | None]]:
        """Validate every entry first (all or nothing), then audit each change and swap the
        live book (the worker reads it through ``lambda: system.book`` per batch)."""
        entries = [entry_from_dict(raw, f"prices[{i}]", source=f"api:{actor}") for i, raw in enumerate(raws)]
        book, changes = self.book().with_entries(entries)
        now = datetime.now(UTC)
        rows = []
        for stored, old in changes:
            rows.append([str(uuid.uuid4()), now, actor, stored.provider, stored.model, stored.effective_from,
                         stored.version, old.version if old else "", orjson.dumps(entry_to_dict(stored)).decode(),
                         orjson.dumps(entry_to_dict(old)).decode() if old else "", reason])
        self.store.call(self._insert, "price_changes", rows, [
            "change_id", "at", "actor", "provider", "model", "effective_from", "version", "previous_version",
            "entry", "previous", "reason"])
        self._swap(book)
        for stored, old in changes:
            log.info("price_changed", version=stored.version, previous=old.version if old else None, actor=actor)
        return changes

    def restore_prices(self, book: PriceBook) -> PriceBook:
        """The file catalog plus every change recorded through the API, in order."""
        rows = self._q("SELECT entry FROM price_changes ORDER BY at, change_id")
        book, _ = book.with_entries(entry_from_dict(orjson.loads(text), "price_changes.entry", limits=False)
                                    for (text,) in rows)
        return book

    def price_history(self, *, provider: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        where, params = ["1"], {}
        for name, value in (("provider", provider), ("model", model)):
            if value:
                where.append(f"lower({name}) = lower({{{name}:String}})")
                params[name] = value
        rows = self._q(
            "SELECT change_id, at, actor, version, previous_version, entry, previous, reason FROM price_changes "
            f"WHERE {' AND '.join(where)} ORDER BY at, change_id", params)
        return [{"change_id": r[0], "at": _utc(r[1]).isoformat(), "actor": r[2], "version": r[3],
                 "previous_version": r[4] or None, "entry": orjson.loads(r[5]),
                 "previous": orjson.loads(r[6]) if r[6] else None, "reason": r[7]} for r in rows]

    # ---------------------------------------------------------------- budgets
    def budget_list(self) -> tuple[Budget, ...]:
        """The live list (a new tuple per change, so the tracker re-indexes on identity)."""
        return self._budgets

    def load_budgets(self) -> None:
        rows = self._q(
            "SELECT tenant_id, feature, period, limit_usd, thresholds FROM budgets FINAL WHERE deleted = 0 ORDER BY budget_id")
        self._budgets = tuple(make_budget(tenant_id=r[0], feature=r[1], period=r[2], limit_usd=_dec(r[3]),
                                          thresholds=[int(t) for t in r[4]]) for r in rows)

    def put_budget(self, budget: Budget, *, actor: str) -> Budget:
        self.store.call(self._insert, "budgets", [[budget.budget_id, budget.tenant_id, budget.feature,
                                                   str(budget.period), budget.limit_usd, list(budget.thresholds),
                                                   actor, datetime.now(UTC), 0]], _BUDGET_COLS)
        self._budgets = (*[b for b in self._budgets if b.budget_id != budget.budget_id], budget)
        log.info("budget_set", budget_id=budget.budget_id, limit_usd=str(budget.limit_usd), actor=actor)
        return budget

    def delete_budget(self, budget_id: str, *, actor: str) -> Budget | None:
        found = next((b for b in self._budgets if b.budget_id == budget_id), None)
        if found is None:
            return None
        self.store.call(self._insert, "budgets", [[found.budget_id, found.tenant_id, found.feature,
                                                   str(found.period), found.limit_usd, list(found.thresholds),
                                                   actor, datetime.now(UTC), 1]], _BUDGET_COLS)
        self._budgets = tuple(b for b in self._budgets if b.budget_id != budget_id)
        log.info("budget_deleted", budget_id=budget_id, actor=actor)
        return found

    def period_spend(self, budget: Budget, start: datetime, end: datetime,
                     exclude: frozenset[str] = frozenset()) -> Decimal:
        """Stored spend of a budget's scope in [start, end), FINAL (each event once). Called
        on the ClickHouse thread (``store.run``/``call``)."""
        where = ["tenant_id = {t:String}", "event_type = 'llm_call'", "ts >= {s:DateTime64(3, 'UTC')}",
                 "ts < {e:DateTime64(3, 'UTC')}"]
        params: dict[str, Any] = {"t": budget.tenant_id, "s": start, "e": end}
        if budget.feature is not None:
            where.append("feature = {f:String}")
            params["f"] = budget.feature
        if exclude:
            where.append("event_id NOT IN {x:Array(UUID)}")
            params["x"] = sorted(exclude)
        rows = self.store.query(f"SELECT toString(sum(ifNull(cost_usd, 0))) FROM events FINAL WHERE {' AND '.join(where)}",
                                params)
        return Decimal(rows[0][0]) if rows and rows[0][0] is not None else Decimal(0)

    async def totals(self, requests: Sequence[SeedRequest]) -> dict[tuple[str, datetime], Decimal]:
        """The worker's budget seeds (the ``BudgetSeeds`` port): each request's stored spend,
        queried on the ClickHouse thread, never on the event loop."""
        return await self.store.run(self._totals, list(requests))

    def _totals(self, requests: list[SeedRequest]) -> dict[tuple[str, datetime], Decimal]:
        return {r.key: self.period_spend(r.budget, r.start, r.end, r.exclude) for r in requests}

    # ---------------------------------------------------------------- spend per day (forecast)
    def daily_spend(self, *, tenant_id: str | None, start: datetime, end: datetime) -> dict[str, dict[date, Decimal]]:
        where = ["event_type = 'llm_call'", "ts >= {s:DateTime64(3, 'UTC')}", "ts < {e:DateTime64(3, 'UTC')}"]
        params: dict[str, Any] = {"s": start, "e": end}
        if tenant_id is not None:
            where.append("tenant_id = {t:String}")
            params["t"] = tenant_id
        rows = self._q(
            "SELECT tenant_id, toDate(ts) AS day, toString(sum(ifNull(cost_usd, 0))) FROM events FINAL "
            f"WHERE {' AND '.join(where)} GROUP BY tenant_id, day ORDER BY tenant_id, day", params)
        out: dict[str, dict[date, Decimal]] = {}
        for tenant, day, cost in rows:
            out.setdefault(tenant, {})[day if isinstance(day, date) else date.fromisoformat(str(day))] = Decimal(cost)
        return out

    # ---------------------------------------------------------------- reprice
    def reprice(self, *, start: datetime, end: datetime, actor: str, provider: str | None = None,
                model: str | None = None, tenant_id: str | None = None, dry_run: bool = False) -> RepriceSummary:
        """Recompute the cost of every llm_call in [start, end) with the current book; write the
        rows whose cost or price version changed (a new version of the same row) and one history
        row each (old/new cost and version, who, when). Idempotent: a second run changes nothing."""
        book = self.book()
        summary = RepriceSummary(reprice_id=str(uuid.uuid4()), dry_run=dry_run)
        now = datetime.now(UTC)
        day = start
        while day < end:  # one day at a time bounds memory
            stop = min(end, datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1))
            rows = self.store.call(self._day_rows, day, stop, provider, model, tenant_id)
            changed_rows, history = [], []
            for row in rows:
                row = [_utc(v) for v in row]
                old_cost, old_version = _dec(row[COL["cost_usd"]]), row[COL["price_version"]]
                priced = price(Usage(row[COL["provider"]], row[COL["model"]], row[COL["ts"]],
                                     int(row[COL["input_tokens"]]), int(row[COL["output_tokens"]]),
                                     int(row[COL["cache_read_tokens"]]), int(row[COL["cache_write_tokens"]]),
                                     int(row[COL["reasoning_tokens"]]), int(row[COL["cache_write_1h_tokens"]]),
                                     row[COL["service_tier"]], int(row[COL["cache_write_12h_tokens"]])), book)
                summary.examined += 1
                summary.old_total += old_cost or 0
                summary.new_total += priced.cost or 0
                if priced.cost == old_cost and priced.price_version == old_version:
                    continue
                summary.changed += 1
                summary.versions[priced.price_version] = summary.versions.get(priced.price_version, 0) + 1
                row[COL["cost_usd"]] = priced.cost
                row[COL["price_version"]] = priced.price_version
                row[COL["unpriced"]] = 1 if priced.cost is None else 0
                changed_rows.append(row)
                history.append([summary.reprice_id, now, actor, row[COL["event_id"]], row[COL["tenant_id"]],
                                row[COL["ts"]], row[COL["model"]], old_cost, priced.cost, old_version,
                                priced.price_version])
            if changed_rows and not dry_run:
                # history first: if the process dies between the two inserts, the next run redoes
                # the rows (their cost still differs) and the history shows both attempts
                self.store.call(self._insert, "reprices", history, _REPRICE_COLS)
                self.store.call(self._insert, "events", changed_rows, list(EVENT_COLUMNS))
            day = stop
        log.info("events_repriced", reprice_id=summary.reprice_id, examined=summary.examined, changed=summary.changed,
                 delta_usd=str(summary.new_total - summary.old_total), actor=actor, dry_run=dry_run)
        return summary

    def _day_rows(self, start: datetime, end: datetime, provider: str | None, model: str | None,
                  tenant_id: str | None) -> list[list[Any]]:
        where = ["event_type = 'llm_call'", "ts >= {s:DateTime64(3, 'UTC')}", "ts < {e:DateTime64(3, 'UTC')}"]
        params: dict[str, Any] = {"s": start, "e": end}
        for name, value in (("provider", provider), ("model", model), ("tenant_id", tenant_id)):
            if value:
                where.append(f"{name} = {{{name}:String}}")
                params[name] = value
        sql = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events FINAL WHERE {' AND '.join(where)}"
        return [list(r) for r in self.store.query(sql, params)]

    # ---------------------------------------------------------------- minute rollups
    def refresh_rollups(self, *, since: datetime | None = None) -> int:
        """Recompute ``spend_minute`` for every (tenant, minute) that received rows since
        ``since`` (default: the previous refresh, with a 10 s overlap). Returns groups written."""
        started = datetime.now(UTC)
        since = since or (self._rollup_since - timedelta(seconds=10) if self._rollup_since else datetime(1970, 1, 1, tzinfo=UTC))
        n = self.store.call(self._refresh, since)
        self._rollup_since = started
        return n

    def _refresh(self, since: datetime) -> int:
        c = self.store
        dirty = ("SELECT DISTINCT tenant_id, toStartOfMinute(ts) FROM events "
                 "WHERE ingested_at >= {since:DateTime64(3, 'UTC')} AND event_type = 'llm_call'")
        lo = c.query(f"SELECT min(m), count() FROM ({dirty.replace('toStartOfMinute(ts)', 'toStartOfMinute(ts) AS m')})",
                     {"since": since})
        if not lo or not lo[0][1]:
            return 0
        c.command(
            "INSERT INTO spend_minute SELECT tenant_id, toStartOfMinute(ts) AS minute, feature, provider, model, "
            "prompt_version, count(), countIf(unpriced = 1), sum(input_tokens), sum(output_tokens), "
            "sum(ifNull(cost_usd, toDecimal128(0, 12))), now64(3) FROM events FINAL "
            "WHERE event_type = 'llm_call' AND ts >= {lo:DateTime('UTC')} "
            f"AND (tenant_id, toStartOfMinute(ts)) IN ({dirty}) "
            "GROUP BY tenant_id, minute, feature, provider, model, prompt_version",
            {"since": since, "lo": _utc(lo[0][0])})
        return int(lo[0][1])

    async def rollup_loop(self, interval_s: float) -> None:
        while True:
            try:
                await asyncio.to_thread(self.refresh_rollups)
            except (TemporaryError, PermanentError) as exc:  # a failed refresh is retried next round
                log.warning("rollup_refresh_failed", error=str(exc)[:300])
            await asyncio.sleep(interval_s)

    # ---------------------------------------------------------------- plumbing
    def _q(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """A query from any thread but the ClickHouse one (which ``store.call`` would deadlock)."""
        return self.store.call(self.store.query, sql, params or {})

    def _insert(self, table: str, rows: list[list[Any]], columns: list[str]) -> None:
        if rows:
            self.store.insert(table, rows, columns)


_BUDGET_COLS = ["budget_id", "tenant_id", "feature", "period", "limit_usd", "thresholds", "actor", "updated_at", "deleted"]
_REPRICE_COLS = ["reprice_id", "at", "actor", "event_id", "tenant_id", "ts", "model", "old_cost", "new_cost",
                 "old_version", "new_version"]


def budget_status(budget: Budget, spent: Decimal, at: datetime) -> dict[str, Any]:
    start, end = period_bounds(budget.period, at)
    return {"budget_id": budget.budget_id, "tenant_id": budget.tenant_id, "feature": budget.feature,
            "period": str(budget.period), "limit_usd": _text(budget.limit_usd), "thresholds": list(budget.thresholds),
            "period_start": start.isoformat(), "period_end": end.isoformat(), "spent_usd": _text(spent),
            "used_pct": _text((spent * 100 / budget.limit_usd).quantize(Decimal("0.01")))}


# -------------------------------------------------------------------- reconciliation (pure)


def _text(d: Decimal) -> str:
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


__all__ = ["Finance", "Period", "RepriceSummary", "budget_status"]
