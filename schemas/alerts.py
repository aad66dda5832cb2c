"""Alert contract: what the detectors publish on ``flyball.alerts.v1`` (key = alert key).

One alert exists per (kind, scope) while it is open; it is re-published with the same
``alert_id`` as evidence grows and finally with ``status="resolved"``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_serializer


class AlertKind(StrEnum):
    COST_SPIKE = "cost_spike"
    TOKEN_SPIKE = "token_spike"
    RUNAWAY_LOOP = "runaway_loop"
    ERROR_RATE = "error_rate"
    LATENCY = "latency"
    TOOL_FAILURE = "tool_failure"
    SAFETY_BURST = "safety_burst"
    RETRIEVAL_FAILURE = "retrieval_failure"
    BUDGET_THRESHOLD = "budget_threshold"
    UNPRICED_MODEL = "unpriced_model"
    SLO_BURN = "slo_burn"
    VERSION_REGRESSION = "version_regression"


MAX_SCOPE_VALUE = 256  # the events' name limit
ScopeValue = Annotated[str, Field(max_length=MAX_SCOPE_VALUE)]
SCOPE_FIELDS = ("tenant_id", "feature", "provider", "model", "tool_name", "category", "index_name", "request_id",
                "version_field", "old_version", "new_version")


class Scope(BaseModel):
    """What an alert or a directive is about. Empty fields mean 'any'."""

    model_config = ConfigDict(frozen=True)

    tenant_id: ScopeValue | None = None
    feature: ScopeValue | None = None
    provider: ScopeValue | None = None
    model: ScopeValue | None = None
    tool_name: ScopeValue | None = None
    category: ScopeValue | None = None
    index_name: ScopeValue | None = None
    request_id: ScopeValue | None = None
    # a release comparison (``version_regression``): which dimension (prompt_version, model,
    # config_version) and the incumbent and candidate values
    version_field: ScopeValue | None = None
    old_version: ScopeValue | None = None
    new_version: ScopeValue | None = None

    @model_serializer(mode="wrap")
    def _drop_empty(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}

    def key(self) -> str:
        """Stable text key, e.g. ``tenant_id=acme``; used as the Kafka message key."""
        return scope_key(**self.model_dump(exclude_none=True))

    def compact(self) -> dict[str, str]:
        return self.model_dump(exclude_none=True)


def scope_key(**fields: str | None) -> str:
    """``name=value`` pairs joined by ``|``, with ``%``, ``|`` and ``=`` inside a value
    percent-encoded, so that two different scopes never share a key (a tenant named
    ``acme|feature=x`` is not tenant ``acme`` with feature ``x``). Ordinary values are unchanged."""
    return "|".join(f"{name}={escape_key_part(value)}" for name in SCOPE_FIELDS
                    if (value := fields.get(name)) is not None)


def escape_key_part(value: str, specials: str = "|=") -> str:
    """``value`` with ``%`` and each of ``specials`` percent-encoded (an injective encoding)."""
    if "%" not in value and not any(c in value for c in specials):
        return value
    value = value.replace("%", "%25")
    for c in specials:
        value = value.replace(c, f"%{ord(c):02X}")
    return value


class Alert(BaseModel):
    model_config = ConfigDict(frozen=True)

    alert_id: str
    kind: AlertKind
    scope: Scope
    severity: Literal["info", "warning", "critical"]
    status: Literal["open", "resolved"] = "open"
    metric: str
    observed: str  # exact decimal text for money, plain number text otherwise
    baseline: str
    threshold: str
    score: float | None = None
    p_value: float | None = None  # the statistical test's p-value, where the detector runs one
    window_s: int
    first_seen: AwareDatetime
    last_seen: AwareDatetime
    opened_at: AwareDatetime | None = None  # event time at which the evidence first crossed the threshold
    sample_event_ids: list[str] = Field(default_factory=list, max_length=10)
    summary: str = ""
    # kind-specific evidence as exact text (slo_burn: burn rates per window, error budget consumed
    # and remaining); None for kinds that carry everything in the fields above
    details: dict[str, str] | None = None
    # related alerts (one tenant, or one model/tool/index, at one time) share it: one incident, one page
    incident_id: str | None = None
    # release comparisons: rollback | hold | promote, and the per-metric evidence (new vs
    # incumbent, effect, always-valid interval, calls on each side)
    verdict: Literal["rollback", "hold", "promote"] | None = None
    evidence: dict[str, Any] | None = None

    @model_serializer(mode="wrap")
    def _drop_unset_release(self, handler: Any) -> dict[str, Any]:
        """Alerts of the other kinds serialize exactly as before the release fields existed."""
        data: dict[str, Any] = handler(self)
        for name in ("verdict", "evidence"):
            if data.get(name) is None:
                data.pop(name, None)
        return data

    def key(self) -> str:
        return f"{self.kind}|{self.scope.key()}"


def alert_time(alert: Alert) -> datetime:
    return alert.last_seen
