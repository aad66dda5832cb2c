"""Webhooks: Slack-compatible and PagerDuty Events v2 notifications on alert open/resolve and
on every automatic action, with a dedupe key, retries with backoff, and a delivery log.

Formatting is pure (``render``); ``WebhookNotifier`` is the I/O edge: ``alert()``/``action()``
never block the control loop (they enqueue), a background task delivers to every target
concurrently, retries 5xx/408/429/network errors with exponential backoff (honouring
``Retry-After``), gives up on other 4xx at once, and appends one row per attempt to the
delivery log. The same (target, dedupe key, event) is delivered once per process.

PagerDuty: an alert is an incident (``trigger`` on open, ``resolve`` on resolve, dedup_key =
``flyball:alert:<alert_id>``); an automatic action is an ``info`` incident that resolves when
the directive is reverted or expires (dedup_key = ``flyball:directive:<directive_id>``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlparse

import httpx
import structlog
from pydantic import BaseModel, Field, SecretStr

from flyball.schemas import Alert

from .escaping import plain_text, slack_text
from .policy import Action, Outcome

log = structlog.get_logger(__name__)

PD_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}
ENDS = (Outcome.REVERTED, Outcome.EXPIRED)


class WebhookTarget(BaseModel):
    """One receiver, e.g. ``{"url": "https://hooks.slack.com/services/...", "format": "slack"}``."""

    url: str = Field(pattern=r"^https?://")
    format: Literal["slack", "pagerduty"] = "slack"
    routing_key: SecretStr | None = None  # PagerDuty integration key
    name: str = ""
    events: list[Literal["alert", "action"]] = Field(default_factory=lambda: list[Literal["alert", "action"]](
        ["alert", "action"]))

    def label(self) -> str:
        """How the target appears in logs: never the URL path (Slack URLs embed a secret)."""
        return self.name or f"{self.format}@{urlparse(self.url).netloc}"


@dataclass(frozen=True, slots=True)
class Notice:
    """One thing to tell the receivers, before formatting."""

    event: str  # alert.open | alert.resolved | action.<decision>
    dedupe_key: str
    title: str
    severity: str
    kind: str  # alert kind (for the runbook link)
    at: datetime
    details: dict[str, Any]
    resolves: bool = False


def runbook_url(base: str, kind: str) -> str:
    return f"{base.rstrip('/')}/{kind}.md"


def alert_notice(alert: Alert, transition: str) -> Notice:
    scope = ", ".join(f"{k}={v}" for k, v in alert.scope.compact().items())
    title = f"[{alert.severity}] {alert.kind} {transition}: {scope}"
    if alert.summary:
        title += f" — {alert.summary}"
    return Notice(event=f"alert.{transition}", dedupe_key=f"flyball:alert:{alert.alert_id}", title=title,
                  severity=alert.severity, kind=str(alert.kind), at=alert.last_seen, resolves=transition == "resolved",
                  details={"alert_id": alert.alert_id, "kind": str(alert.kind), "scope": alert.scope.compact(),
                           "metric": alert.metric, "observed": alert.observed, "baseline": alert.baseline,
                           "threshold": alert.threshold, "window_s": alert.window_s,
                           "first_seen": alert.first_seen.isoformat(), "last_seen": alert.last_seen.isoformat(),
                           "sample_event_ids": list(alert.sample_event_ids)})


def action_notice(action: Action, *, now: datetime) -> Notice:
    d = action.directive
    kind = str(action.alert.kind) if action.alert else ((d.alert_key or "").split("|", 1)[0] if d else "")
    target = action.scope.key() or "(no scope)"
    what = str(d.action) if d else "action"
    if d is not None and d.to_model:
        what += f" -> {d.to_model}"
    if d is not None and d.pin_field:
        what += f" {d.pin_field}={d.pin_value}"
    title = f"flyball {action.decision}: {what} on {target} ({action.reason})"
    return Notice(event=f"action.{action.decision}", dedupe_key=f"flyball:directive:{d.directive_id if d else uuid.uuid4()}",
                  title=title, severity="info", kind=kind, at=now,
                  resolves=action.decision in ENDS,
                  details={"decision": str(action.decision), "directive_id": d.directive_id if d else None,
                           "scope": action.scope.compact(), "policy_id": action.policy.ref if action.policy else None,
                           "alert_id": action.alert.alert_id if action.alert else (d.alert_id if d else None),
                           "actor": action.actor, "reason": action.reason,
                           "expires_at": d.expires_at.isoformat() if d else None})


def render(notice: Notice, target: WebhookTarget, *, runbook_base: str) -> dict[str, Any]:
    """The JSON body for one target: Slack incoming-webhook or PagerDuty Events v2."""
    runbook = runbook_url(runbook_base, notice.kind) if notice.kind else None
    if target.format == "pagerduty":
        body: dict[str, Any] = {
            "routing_key": target.routing_key.get_secret_value() if target.routing_key else "",
            "event_action": "resolve" if notice.resolves else "trigger",
            "dedup_key": notice.dedupe_key,
            "client": "flyball",
        }
        if not notice.resolves:
            body["payload"] = {"summary": plain_text(notice.title)[:1024], "source": "flyball", "severity": PD_SEVERITY.get(
                notice.severity, "info"), "timestamp": notice.at.isoformat(), "component": notice.kind,
                "class": notice.event, "custom_details": notice.details}
            if runbook:
                body["links"] = [{"href": runbook, "text": f"Runbook: {notice.kind}"}]
        return body
    context = f"dedupe key `{notice.dedupe_key}`"
    if runbook:
        context += f" · <{runbook}|Runbook: {notice.kind}>"
    fields = "\n".join(f"*{k}*: {slack_text(str(v))}" for k, v in notice.details.items() if v not in (None, [], {}))
    title = slack_text(notice.title)
    return {"text": title, "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": fields[:2900] or "-"}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
    ], "metadata": {"event_type": notice.event, "event_payload": {"dedupe_key": notice.dedupe_key}}}


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            return None


DeliveryLog = Callable[[Sequence[Sequence[Any]]], Awaitable[None]]


class WebhookNotifier:
    def __init__(self, targets: Sequence[WebhookTarget], *, runbook_base: str, delivery_log: DeliveryLog | None = None,
                 silenced: Callable[[Alert], bool] = lambda _: False, max_attempts: int = 5,
                 base_delay_s: float = 0.5, max_delay_s: float = 30.0, timeout_s: float = 5.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.targets = list(targets)
        self.runbook_base = runbook_base
        self.delivery_log = delivery_log
        self.silenced = silenced
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.timeout_s = timeout_s
        self.clock = clock
        self.sent = 0
        self.failed = 0
        self._queue: asyncio.Queue[Notice] = asyncio.Queue(maxsize=10_000)
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self._runner: asyncio.Task[None] | None = None

    # the control loop's side: never blocks, never raises
    def alert(self, alert: Alert, transition: str) -> None:
        if self.silenced(alert):
            log.info("notification_silenced", alert_id=alert.alert_id)
            return
        self._put(alert_notice(alert, transition))

    def action(self, action: Action) -> None:
        self._put(action_notice(action, now=self.clock()))

    def _put(self, notice: Notice) -> None:
        if not self.targets:
            return
        try:
            self._queue.put_nowait(notice)
        except asyncio.QueueFull:
            log.warning("notification_dropped", dedupe_key=notice.dedupe_key, reason="queue full")

    # the delivery side
    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.timeout_s)
        self._runner = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self, *, drain_s: float = 2.0) -> None:
        deadline = time.monotonic() + drain_s
        while (not self._queue.empty() or self._tasks) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._runner is not None:
            self._runner.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *([self._runner] if self._runner else []), return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    async def idle(self) -> None:
        """Wait until everything queued has been delivered or given up (tests, shutdown)."""
        while not self._queue.empty() or self._tasks:
            await asyncio.sleep(0.02)

    async def _run(self) -> None:
        while True:
            notice = await self._queue.get()
            for target in self.targets:
                if notice.event.split(".", 1)[0] not in target.events:
                    continue
                seen = (target.label(), notice.dedupe_key, notice.event)
                if seen in self._seen:
                    continue
                self._seen[seen] = None
                if len(self._seen) > 50_000:
                    self._seen.popitem(last=False)
                task = asyncio.create_task(self._deliver_safely(notice, target))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _deliver_safely(self, notice: Notice, target: WebhookTarget) -> None:
        try:
            await self._deliver(notice, target)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in one delivery must not kill the notifier
            self.failed += 1
            log.exception("webhook_delivery_crashed", target=target.label(), dedupe_key=notice.dedupe_key)

    async def _deliver(self, notice: Notice, target: WebhookTarget) -> None:
        assert self._client is not None
        body = render(notice, target, runbook_base=self.runbook_base)
        delivery_id = str(uuid.uuid4())
        delay = self.base_delay_s
        for attempt in range(1, self.max_attempts + 1):
            status, error, wait = 0, "", None
            try:
                response = await self._client.post(target.url, json=body)
                status = response.status_code
                if 200 <= status < 300:
                    await self._log(delivery_id, notice, target, attempt, status, True, "")
                    self.sent += 1
                    return
                error = f"HTTP {status}"
                wait = retry_after(response)
                retryable = status >= 500 or status in (408, 429)
            except httpx.HTTPError as exc:
                error, retryable = f"{type(exc).__name__}: {exc}"[:300], True
            await self._log(delivery_id, notice, target, attempt, status, False, error)
            if not retryable or attempt == self.max_attempts:
                break
            await asyncio.sleep(min(wait if wait is not None else delay, self.max_delay_s))
            delay = min(delay * 2, self.max_delay_s)
        self.failed += 1
        log.warning("webhook_gave_up", target=target.label(), dedupe_key=notice.dedupe_key, notice=notice.event)

    async def _log(self, delivery_id: str, notice: Notice, target: WebhookTarget, attempt: int, status: int,
                   ok: bool, error: str) -> None:
        log.info("webhook_delivered" if ok else "webhook_failed", target=target.label(), notice=notice.event,
                 dedupe_key=notice.dedupe_key, attempt=attempt, status=status)
        if self.delivery_log is None:
            return
        row = [delivery_id, self.clock(), target.label(), target.format, notice.event, notice.dedupe_key, attempt,
               status, int(ok), error]
        try:
            await self.delivery_log([row])
        except Exception as exc:  # noqa: BLE001 - a lost log row must not stop deliveries
            log.warning("delivery_log_failed", error=str(exc)[:200])
