"""Directive contract: what the control plane publishes on the compacted topic
``flyball.directives.v1`` (key = scope key) and the shim enforces.

The latest message per key is the directive's current state; a directive that is no longer
``active`` (expired, reverted) stays on the topic with its final state until compaction, so a
shim that starts late still learns that nothing is in force for that scope.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

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
    # settings, not restrictions: guard() tells the caller which version to use, or how strict
    # its safety filter must be; they live next to a throttle/reroute/block on the same scope
    PIN_VERSION = "pin_version"
    STRICT_SAFETY = "strict_safety"


# the actions that are settings: their directive key names the action (see ``directive_key``)
SETTINGS = frozenset({ActionKind.PIN_VERSION, ActionKind.STRICT_SAFETY})
PinField = Literal["prompt_version", "model", "config_version"]
PIN_FIELDS: tuple[str, ...] = ("prompt_version", "model", "config_version")


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
    # pin_version: the version dimension to pin and the value guard() hands back for it
    pin_field: PinField | None = None
    pin_value: ModelName | None = None
    # increases with every publication on its scope (microseconds of the publishing clock, or
    # the previous version + 1): a shim refuses a message not newer than the last it applied
    version: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _pin_complete(self) -> Directive:
        if self.action == ActionKind.PIN_VERSION:
            if self.pin_field is None or self.pin_value is None:
                raise ValueError("pin_version needs pin_field and pin_value")
            if self.scope.version_field not in (None, self.pin_field):
                raise ValueError(f"pin_version: scope.version_field {self.scope.version_field!r} is not "
                                 f"pin_field {self.pin_field!r}")
        elif self.pin_field is not None or self.pin_value is not None:
            raise ValueError(f"pin_field and pin_value belong to pin_version, not {self.action}")
        return self

    def key(self) -> str:
        return directive_key(self.scope, self.action, self.pin_field)


def directive_key(scope: Scope, action: ActionKind, pin_field: str | None = None) -> str:
    """The compacted topic's key: the scope key for the restrictions (one of throttle, reroute,
    disable_tool, block per scope), plus the action (and the pinned dimension) for the settings,
    so a pin or a strict-safety switch never replaces a restriction on the same scope, nor a pin
    of one dimension a pin of another."""
    key = scope.key()
    if action not in SETTINGS:
        return key
    suffix = f"action={action}" + (f"|pin_field={pin_field}" if pin_field else "")
    return f"{key}|{suffix}" if key else suffix
