"""The policies file: its schema (YAML or JSON, ``control_plane/policies.yaml`` is the shipped
one), loading, dumping and versioning (``revise``). The decisions that use the policies are in
``policy.py``.
"""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flyball.schemas import MAX_BURST, MAX_MODEL, MAX_RATE, MAX_TTL_S, ActionKind, AlertKind
from flyball.schemas.alerts import SCOPE_FIELDS

from .documents import MAX_DEPTH, load_document, validate_document
from .errors import PolicyError
from .policy import Policies, Policy

class PolicySpec(BaseModel):
    """One policy as written in a policies file (flat keys)."""

    model_config = ConfigDict(extra="forbid")

    policy_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    alert_kind: AlertKind
    action: ActionKind
    version: int = Field(default=1, ge=1)
    min_severity: Literal["info", "warning", "critical"] = "warning"
    match: dict[str, str | None] = Field(default_factory=dict)
    target: list[str] = Field(default_factory=list)
    ttl_s: int = Field(default=120, gt=0, le=MAX_TTL_S)
    cooldown_s: int = Field(default=60, ge=0)
    hysteresis_s: int = Field(default=60, ge=0)
    auto_revert: bool = True
    rate_per_s: float | None = Field(default=None, ge=0, le=MAX_RATE, allow_inf_nan=False)
    burst: int | None = Field(default=None, ge=0, le=MAX_BURST)
    to_model: str | None = Field(default=None, min_length=1, max_length=MAX_MODEL)
    dry_run: bool = False
    approval: bool = False
    description: str = ""

    @field_validator("match")
    @classmethod
    def _match_fields(cls, v: dict[str, str | None]) -> dict[str, str | None]:
        unknown = sorted(set(v) - set(SCOPE_FIELDS))
        if unknown:
            raise ValueError(f"unknown scope field(s) {unknown}; one of {list(SCOPE_FIELDS)}")
        return v

    @field_validator("target")
    @classmethod
    def _target_fields(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(SCOPE_FIELDS))
        if unknown:
            raise ValueError(f"unknown scope field(s) {unknown}; one of {list(SCOPE_FIELDS)}")
        return v

    @model_validator(mode="after")
    def _coherent(self) -> PolicySpec:
        if self.action == ActionKind.THROTTLE and self.rate_per_s is None:
            raise ValueError("a throttle needs rate_per_s")
        if self.action == ActionKind.BLOCK and not self.approval:
            raise ValueError("block is a last resort: it needs approval: true")
        return self


class PoliciesSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(default=1, ge=1)
    max_active: int = Field(default=50, ge=0)
    max_traffic_share: float = Field(default=1.0, gt=0, le=1)
    default_hysteresis_s: int = Field(default=60, ge=0)
    fallback_chains: list[list[str]] = Field(default_factory=list)
    policies: list[PolicySpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> PoliciesSpec:
        seen: set[str] = set()
        for p in self.policies:
            if p.policy_id in seen:
                raise PolicyError(f"duplicate policy_id {p.policy_id!r}")
            seen.add(p.policy_id)
        return self


def parse_policies(data: Any) -> Policies:
    """Policies from decoded JSON/YAML; a ValueError names the offending field."""
    spec = validate_document(PoliciesSpec, data, "policies", list_key="policies", error=PolicyError)
    return Policies(
        policies=tuple(Policy(
            policy_id=p.policy_id, alert_kind=p.alert_kind, action=p.action, version=p.version,
            min_severity=p.min_severity, ttl_s=p.ttl_s, cooldown_s=p.cooldown_s, rate_per_s=p.rate_per_s,
            burst=p.burst, dry_run=p.dry_run, match=tuple(sorted(p.match.items())), target=tuple(p.target),
            hysteresis_s=p.hysteresis_s, auto_revert=p.auto_revert, approval=p.approval, to_model=p.to_model,
            description=p.description) for p in spec.policies),
        max_active=spec.max_active, max_traffic_share=spec.max_traffic_share,
        fallback_chains=tuple(tuple(c) for c in spec.fallback_chains),
        default_hysteresis_s=spec.default_hysteresis_s, version=spec.version,
    )




MAX_POLICY_DEPTH = MAX_DEPTH  # a policies document is 4 levels deep; parsers recurse per level


def load_policies(text: str) -> Policies:
    """Policies from the text of a YAML (or JSON) file, at most ``MAX_POLICY_DEPTH`` deep."""
    return parse_policies(load_document(text, "policies", limit=MAX_POLICY_DEPTH, error=PolicyError))


def dump_policies(policies: Policies) -> dict[str, Any]:
    """The JSON/YAML form of the policies (round-trips through ``parse_policies``)."""
    return {
        "version": policies.version, "max_active": policies.max_active,
        "max_traffic_share": policies.max_traffic_share, "default_hysteresis_s": policies.default_hysteresis_s,
        "fallback_chains": [list(c) for c in policies.fallback_chains],
        "policies": [_dump_one(p) for p in policies.policies],
    }


def _dump_one(p: Policy) -> dict[str, Any]:
    return {"policy_id": p.policy_id, "version": p.version, "alert_kind": str(p.alert_kind), "action": str(p.action),
            "min_severity": p.min_severity, "match": dict(p.match), "target": list(p.target), "ttl_s": p.ttl_s,
            "cooldown_s": p.cooldown_s, "hysteresis_s": p.hysteresis_s, "auto_revert": p.auto_revert,
            "rate_per_s": p.rate_per_s, "burst": p.burst, "to_model": p.to_model, "dry_run": p.dry_run,
            "approval": p.approval, "description": p.description}


def revise(old: Policies, new: Policies) -> Policies:
    """``new`` as the next version after ``old``: the set's version goes up by one, and each
    policy whose content changed gets its own version bumped past the old one."""
    before = {p.policy_id: p for p in old.policies}
    out = []
    for p in new.policies:
        prev = before.get(p.policy_id)
        if prev is None:
            out.append(p)
        elif replace(p, version=prev.version) == prev:
            out.append(replace(p, version=prev.version))
        else:
            out.append(replace(p, version=max(p.version, prev.version + 1)))
    return replace(new, policies=tuple(out), version=old.version + 1)


# The shipped defaults are data, read once at import; decide_actions() itself never reads anything.
SHIPPED_POLICIES_TEXT = resources.files("flyball.control_plane").joinpath("policies.yaml").read_text()
DEFAULT_POLICIES = load_policies(SHIPPED_POLICIES_TEXT)
