"""The control plane's own state in ClickHouse: API keys (hashed), policy versions, alert
acknowledgements and silences, and the webhook delivery log (migrations 30-33).

A thin adapter over the store's single ClickHouse thread; the API and the notifier call it,
the pure cores never do.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

from flyball.stream_processors.ports import ControlStore

from .auth import KeyRecord, Principal, Role
from .policy import Policies
from .policy_file import dump_policies, load_policies, parse_policies, revise

KEY_COLUMNS = ["key_hash", "key_id", "role", "tenant_id", "name", "created_by", "created_at", "revoked_at",
               "updated_at"]
MARK_COLUMNS = ["mark_id", "at", "alert_id", "alert_key", "mark", "actor", "until", "note"]
VERSION_COLUMNS = ("version", "at", "actor", "source", "sha256", "body")
VERSION_TABLES = ("policy_versions", "slo_versions")
D = TypeVar("D")
DELIVERY_COLUMNS = ["delivery_id", "at", "target", "format", "event", "dedupe_key", "attempt", "status_code", "ok",
                    "error"]


def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class DocumentVersion:
    """One stored version of a versioned document (the policies, the SLOs)."""

    version: int
    at: datetime
    actor: str
    source: str
    sha256: str
    body: str


@dataclass(frozen=True, slots=True)
class Mark:
    """An acknowledgement or a silence on an alert (silences match the alert key: kind|scope)."""

    alert_id: str
    alert_key: str
    mark: str  # ack | silence | unsilence
    actor: str
    at: datetime
    until: datetime | None = None
    note: str = ""


class ControlState:
    def __init__(self, store: ControlStore) -> None:
        self.store = store

    def _insert(self, table: str, rows: Sequence[Sequence[Any]], columns: list[str]) -> None:
        if rows:
            self.store.insert(table, rows, columns)  # runs on the store's ClickHouse thread

    async def _query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return list(await self.store.run(self.store.query, sql, params or {}))

    # -------------------------------------------------------------- keys
    async def save_key(self, record: KeyRecord, *, now: datetime) -> None:
        p = record.principal
        row = [record.key_hash, p.key_id, str(p.role), p.tenant_id, p.name, record.created_by,
               record.created_at or now, record.revoked_at, now]
        await self.store.run(self._insert, "api_keys", [row], KEY_COLUMNS)

    async def load_keys(self) -> list[KeyRecord]:
        rows = await self._query(f"SELECT {', '.join(KEY_COLUMNS)} FROM api_keys FINAL")
        out = []
        for key_hash, key_id, role, tenant_id, name, created_by, created_at, revoked_at, _ in rows:
            out.append(KeyRecord(key_hash=key_hash, principal=Principal(key_id=key_id, role=Role(role),
                                                                        tenant_id=tenant_id, name=name),
                                 created_at=utc(created_at), created_by=created_by, revoked_at=utc(revoked_at)))
        return out

    # -------------------------------------------------------------- document versions
    async def save_version(self, table: str, version: DocumentVersion) -> None:
        """Store a version of a document in its table (``policy_versions``, ``slo_versions``)."""
        row = [version.version, version.at, version.actor, version.source, version.sha256, version.body]
        await self.store.run(self._insert, table, [row], list(VERSION_COLUMNS))

    async def versions(self, table: str, limit: int = 100) -> list[DocumentVersion]:
        """The stored versions of a document, newest first."""
        if table not in VERSION_TABLES:
            raise ValueError(f"{table}: not a table of document versions")
        rows = await self._query(f"SELECT {', '.join(VERSION_COLUMNS)} FROM {table} "
                                 "ORDER BY version DESC, at DESC LIMIT {limit:UInt32}", {"limit": limit})
        return [DocumentVersion(int(v), utc(at) or at, actor, source, digest, body)
                for v, at, actor, source, digest, body in rows]

    async def policy_versions(self, limit: int = 100) -> list[DocumentVersion]:
        return await self.versions("policy_versions", limit)

    # -------------------------------------------------------------- alert marks
    async def save_mark(self, mark: Mark) -> None:
        row = [str(uuid.uuid4()), mark.at, mark.alert_id, mark.alert_key, mark.mark, mark.actor, mark.until, mark.note]
        await self.store.run(self._insert, "alert_marks", [row], MARK_COLUMNS)

    async def load_marks(self) -> list[Mark]:
        rows = await self._query("SELECT alert_id, alert_key, mark, actor, at, until, note FROM alert_marks "
                                 "ORDER BY at")
        return [Mark(a, k, m, actor, utc(at) or at, utc(until), note) for a, k, m, actor, at, until, note in rows]

    # -------------------------------------------------------------- webhook deliveries
    def write_deliveries(self, rows: Sequence[Sequence[Any]]) -> None:
        """Synchronous, for ``store.run``: one row per delivery attempt."""
        self._insert("webhook_deliveries", rows, DELIVERY_COLUMNS)

    async def deliveries(self, *, limit: int = 200, dedupe_key: str | None = None) -> list[dict[str, Any]]:
        where, params = "1", dict[str, Any]({"limit": limit})
        if dedupe_key:
            where = "dedupe_key = {key:String}"
            params["key"] = dedupe_key
        rows = await self._query(f"SELECT {', '.join(DELIVERY_COLUMNS)} FROM webhook_deliveries WHERE {where} "
                                 "ORDER BY at DESC LIMIT {limit:UInt32}", params)
        out = []
        for row in rows:
            item = dict(zip(DELIVERY_COLUMNS, row, strict=True))
            item["at"] = (utc(item["at"]) or item["at"]).isoformat()
            item["ok"] = bool(item["ok"])
            out.append(item)
        return out


class AlertMarks:
    """Acknowledgements (by alert id) and silences (by alert key, until a time), in memory,
    rebuilt from ``alert_marks`` at start."""

    def __init__(self) -> None:
        self.acks: dict[str, Mark] = {}
        self.silences: dict[str, Mark] = {}

    def add(self, mark: Mark) -> None:
        if mark.mark == "ack":
            self.acks[mark.alert_id] = mark
        elif mark.mark == "silence":
            self.silences[mark.alert_key] = mark
        elif mark.mark == "unsilence":
            self.silences.pop(mark.alert_key, None)

    def silenced(self, alert_key: str, *, now: datetime) -> Mark | None:
        found = self.silences.get(alert_key)
        return found if found is not None and found.until is not None and found.until > now else None

    def annotate(self, alert: dict[str, Any], *, alert_key: str, now: datetime) -> dict[str, Any]:
        ack = self.acks.get(alert.get("alert_id", ""))
        silence = self.silenced(alert_key, now=now)
        return {**alert,
                "acknowledged_by": ack.actor if ack else None,
                "acknowledged_at": ack.at.isoformat() if ack else None,
                "silenced_until": silence.until.isoformat() if silence and silence.until else None}


class VersionedRegistry(Generic[D]):
    """A document in force (the policies, the SLOs), versioned in its table and audited in
    ``actions`` (decision ``<name>_updated``).

    At start the file is in force unless it is unchanged since it was last loaded, in which case
    the latest stored version (perhaps a ``PUT`` through the API) stays in force: API changes
    survive restarts until someone edits the file. A subclass names the document and its table
    and says how to load, parse, dump and revise it.
    """

    name: ClassVar[str]  # "policies", "slos": the audit's decision and policy_id prefix
    title: ClassVar[str]  # "policies", "SLOs": in the audit's reasons
    table: ClassVar[str]

    def __init__(self, state: ControlState, current: D, on_change: Callable[[D], None] = lambda _: None) -> None:
        self.state = state
        self.current = current
        self.on_change = on_change

    def load(self, text: str) -> D:
        raise NotImplementedError

    def parse(self, data: Any) -> D:
        raise NotImplementedError

    def dump(self, document: D) -> dict[str, Any]:
        raise NotImplementedError

    def revise(self, old: D, new: D) -> D:
        raise NotImplementedError

    def version_of(self, document: D) -> int:
        raise NotImplementedError

    async def versions(self, limit: int = 100) -> list[DocumentVersion]:
        return await self.state.versions(self.table, limit)

    async def bootstrap(self, text: str, *, source: str, now: datetime) -> D:
        versions = await self.versions(limit=500)
        digest = sha256(text)
        last_file = next((v for v in versions if v.actor.startswith("file:")), None)
        if versions and last_file is not None and last_file.sha256 == digest:
            self.current = self.parse(json.loads(versions[0].body))
        else:
            loaded = self.load(text)
            if versions:
                loaded = self.revise(self.parse(json.loads(versions[0].body)), loaded)
            await self._save(loaded, actor=f"file:{source}", source=source, digest=digest, now=now,
                             before=None, reason=f"loaded from {source}")
        self.on_change(self.current)
        return self.current

    async def put(self, new: D, *, actor: str, text: str, now: datetime) -> D:
        before = self.current
        await self._save(self.revise(before, new), actor=actor, source="api", digest=sha256(text), now=now,
                         before=before, reason=f"{self.title} replaced through the API")
        self.on_change(self.current)
        return self.current

    async def _save(self, document: D, *, actor: str, source: str, digest: str, now: datetime,
                    before: D | None, reason: str) -> None:
        body = json.dumps(self.dump(document))
        version = self.version_of(document)
        await self.state.save_version(self.table, DocumentVersion(version, now, actor, source, digest, body))
        row = (str(uuid.uuid4()), now, f"{self.name}_updated", "", "", "", "", f"{self.name}@v{version}", actor,
               reason, json.dumps(self.dump(before)) if before is not None else "", body, "")
        await self.state.store.run(self.state.store.write_actions, [row])  # in force once stored, then audited
        self.current = document


class PolicyRegistry(VersionedRegistry[Policies]):
    """The policies in force, versioned in ``policy_versions``."""

    name = "policies"
    title = "policies"
    table = "policy_versions"

    def load(self, text: str) -> Policies:
        return load_policies(text)

    def parse(self, data: Any) -> Policies:
        return parse_policies(data)

    def dump(self, document: Policies) -> dict[str, Any]:
        return dump_policies(document)

    def revise(self, old: Policies, new: Policies) -> Policies:
        return revise(old, new)

    def version_of(self, document: Policies) -> int:
        return document.version
