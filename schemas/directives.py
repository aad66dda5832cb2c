"""Directive contract: what the control plane publishes on the compacted topic
``flyball.directives.v1`` (key = scope key) and the shim enforces.

The latest message per key is the directive's current state; a directive that is no longer
``active`` (expired, reverted) stays on the topic with its final state until compaction, so a
shim that starts late still learns that nothing is in force for that scope.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from .alerts import Scope


class ActionKind(StrEnum):
    THROTTLE = "throttle"
    REROUTE = "reroute"
    DISABLE_TOOL = "disable_tool"
    BLOCK = "block"


class DirectiveState(StrEnum):
    ACTIVE = "active"
    PENDING = "pending"
    DRY_RUN = "dry_run"
    EXPIRED = "expired"
    REVERTED = "reverted"
    REJECTED = "rejected"


class Directive(BaseModel):
    model_config = ConfigDict(frozen=True)

    directive_id: str
    action: ActionKind
    scope: Scope
    state: DirectiveState = DirectiveState.ACTIVE
    # throttle: a token bucket per scope in each shim
    rate_per_s: float | None = Field(default=None, ge=0)
    burst: int | None = Field(default=None, ge=0)
    # reroute: the model to use instead (first of the chain that is not itself rerouted)
    to_model: str | None = None
    # reroute: the rest of the fallback chain after ``to_model``, in order
    chain: list[str] = Field(default_factory=list)
    created_at: AwareDatetime
    expires_at: AwareDatetime
    reason: str = ""
    alert_id: str | None = None
    policy_id: str | None = None
    actor: str = "flyball"
    pinned: bool = False
    # ``kind|scope key`` of the alert that caused it: automatic revert follows that alert's resolution
    alert_key: str | None = None

    def key(self) -> str:
        return self.scope.key()
