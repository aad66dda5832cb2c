"""Directive contract: what the control plane publishes on the compacted topic
``flyball.directives.v1`` (key = scope key) and the shim enforces.

The latest message per key is the directive's current state; a directive that is no longer
``active`` (expired, reverted) stays on the topic with its final state until compaction, so a
shim that starts late still learns that nothing is in force for that scope.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from .alerts import Scope

# The longest a directive stays in force without being published again: the control plane
# refuses longer ones, and each shim clamps what it reads to this from the moment it reads it.
MAX_TTL_S = 7 * 86_400
MAX_RATE = 1_000_000.0  # calls per second: a throttle above this is not a throttle
MAX_BURST = 1_000_000
MAX_CHAIN = 16  # models in a reroute's fallback chain
MAX_MODEL = 256
MAX_REASON = 4096
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_MODEL)]


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
    rate_per_s: float | None = Field(default=None, ge=0, le=MAX_RATE, allow_inf_nan=False)
    burst: int | None = Field(default=None, ge=0, le=MAX_BURST)
    # throttle: the live shim instances serving the scope; each admits rate_per_s / replicas
    # (and burst / replicas, at least 1), so the throttle holds whatever the replica count
    replicas: int = Field(default=1, ge=1, le=10_000)
    # reroute: the model to use instead (first of the chain that is not itself rerouted)
    to_model: ModelName | None = None
    # reroute: the rest of the fallback chain after ``to_model``, in order
    chain: list[ModelName] = Field(default_factory=list, max_length=MAX_CHAIN)
    created_at: AwareDatetime
    expires_at: AwareDatetime
    reason: str = Field(default="", max_length=MAX_REASON)
    alert_id: str | None = None
    policy_id: str | None = None
    actor: str = "flyball"
    pinned: bool = False
    # ``kind|scope key`` of the alert that caused it: automatic revert follows that alert's resolution
    alert_key: str | None = None
    # increases with every publication on its scope (microseconds of the publishing clock, or
    # the previous version + 1): a shim refuses a message not newer than the last it applied
    version: int = Field(default=0, ge=0)

    def key(self) -> str:
        return self.scope.key()
