"""How sensitive each detector is: per alert kind, optionally overridden per tenant.

Three knobs per kind, the same for every detector (see docs/DETECTION.md):

- ``p_value``: the significance bar of the exact test (Poisson, binomial or compound-Poisson) a
  span must beat. Defaults are set from a false-alert budget, not from our traffic: a scope is
  tested on every 10 s window over a few spans, about 2,000 looks a day that overlap heavily, and
  a tenant has a few dozen scopes, so a bar near 1e-5 keeps pure chance at a few hundredths of an
  alert per tenant-day; the rest of the budget (<= 1 per tenant-day) is for traffic that is not
  Poisson (bursts, steps);
- ``min_ratio``: the business-size floor, relative to the scope's own history: the span must be at
  least this many times its baseline (its rate, its failure share, its p95), so that a busy scope's
  significant but small wobble does not page;
- ``min_events``: the minimum evidence: a span is judged only once it holds this many of the
  events the detector counts (calls, failures, triggers), so that a quiet scope's first two
  triggers never page however rare they are.

- ``null_ratio``: what the test rules out: with 1.5 the span must be significantly *more than*
  1.5x its usual, not merely above it (for amounts, whose normal bursts reach 2x and more).

``confirm`` (how many distinct 10 s windows must be abnormal, each evaluation within
``confirm_s`` of the previous, before an alert opens) is a persistence requirement, 1 (none) by
default: the exact tests already weigh how long the evidence lasted, and a second window cost
each alert a call's wait on a quiet scope (on tuning days, 2 -> 1 made 33 of 102 detections
1.7-215 s sooner, median 10 s, for 9 more false alerts in 204 tenant-days, docs/DETECTION.md). Where it is set
above 1, evidence with p below ``p_value`` squared opens at once.

A file (YAML or JSON; ``FLYBALL_DETECTION_FILE``, ``flyball replay --detection FILE``) sets them::

    kinds:                      # defaults per kind (any subset of the knobs)
      cost_spike: {min_ratio: 3.0}
    tenants:                    # overrides per tenant: per kind, or "*" for every kind
      bigco: {"*": {p_value: 1.0e-7}}
      smallco: {safety_burst: {min_events: 2}}

Tenant overrides apply to scopes that name a tenant (cost, token, safety, runaway); provider,
model, tool and index scopes are shared by tenants and use the kind's setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True, slots=True)
class Sensitivity:
    p_value: float = 1e-5
    min_ratio: float = 2.0
    min_events: int = 3
    null_ratio: float = 1.0
    confirm: int = 1
    confirm_s: float = 300.0
    call_ratio: float = 0.0   # amounts and safety: floor of the per-call test (x usual); 0 = not judged per call
    call_null: float = 1.0    # amounts and safety: what the per-call test rules out (x usual)

    def merged(self, overrides: Mapping[str, Any]) -> Sensitivity:
        known = {f.name for f in fields(self)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"detection settings: unknown knob(s) {bad}; known: {sorted(known)}")
        values = {k: type(getattr(self, k))(v) for k, v in overrides.items()}
        out = replace(self, **values)
        if not 0 < out.p_value < 1:
            raise ValueError(f"detection settings: p_value must be in (0, 1), got {out.p_value}")
        if out.min_ratio < 1 or out.null_ratio < 1 or out.min_events < 1 or out.confirm < 1 or out.confirm_s <= 0:
            raise ValueError("detection settings: min_ratio >= 1, min_events >= 1, confirm >= 1, confirm_s > 0")
        if (out.call_ratio and out.call_ratio < 1) or out.call_null < 1:
            raise ValueError("detection settings: call_ratio is 0 (off) or >= 1, call_null >= 1")
        return out

    def confirmations(self, p_value: float | None) -> int:
        """Abnormal windows needed before an alert opens: ``confirm``, or one when the evidence is
        overwhelming (p below ``p_value`` squared: a runaway job, an outage), so that persistence
        costs no delay where there is no doubt."""
        return 1 if p_value is not None and p_value < self.p_value ** 2 else self.confirm


# Per-kind defaults. Ratios are the business-size floor of each signal: a cost or token rate of at
# least 3x its usual (a normal burst or a busy afternoon stays below; the test also allows for the
# tenant's own bursts, amounts.py), a failure share at least 2x the usual, a safety-trigger rate at
# least 3x per unit of time and per call, a p95 at least 1.5x (latency keeps its own +250 ms
# floor). A runaway request's call limit uses p_value, min_ratio and min_events (runaway.py).
# Safety bursts take a bar of 3e-5: a safety scope is looked at only in the windows where a trigger
# arrives (on tuning days a median of 31 a feature-day, 90 % under 324, against a median of 2,052
# windows with calls), so the same false-alert budget affords a looser bar. With triggers judged
# where they happened (suite.py, window order) the tuning days found 7 of 15 bursts at 3e-5 for 5
# safety false alerts in 204 tenant-days, and the same 7 at 1e-4 for 21.
# Latency takes 1e-5 and 8 calls (was 1e-6 and 12: a x4 slowdown on a model of 0.06-0.2 calls/s
# waited for its twelfth call), runaway requests 1e-4 (a call limit one or two calls lower): on the
# brief's strong tuning days the median delay went from 100 to 67 s, for 2 more false alerts in 204
# tenant-days on A/B and 1 in 144 on the brief's days (docs/DETECTION.md).
# A runaway request's call floor is its min_events, 8 calls (was 12, a fixed parameter): it binds
# only on features of about one call per request (a chat, a batch job; their own tail at 1e-4 is
# 8 calls too), where a loop of one call every 3-12 s waited for its twelfth; an agent of 2-5
# steps stays at 13 calls, set by its own tail. On tuning days 18 of 33 runaway detections came
# 13-45 s sooner (A/B runaway median 104 -> 76 s), no runaway false alert in 420 tenant-days
# before or after (docs/DETECTION.md).
DEFAULTS: dict[str, Sensitivity] = {
    "cost_spike": Sensitivity(min_ratio=3.0, min_events=4, null_ratio=2.0, call_ratio=2.0, call_null=1.5),
    "token_spike": Sensitivity(min_ratio=3.0, min_events=4, null_ratio=2.0, call_ratio=2.0, call_null=1.5),
    "error_rate": Sensitivity(min_ratio=2.0, min_events=3),
    "tool_failure": Sensitivity(min_ratio=2.0, min_events=3),
    "retrieval_failure": Sensitivity(min_ratio=2.0, min_events=3),
    "safety_burst": Sensitivity(p_value=3e-5, min_ratio=3.0, min_events=3, null_ratio=1.0, call_ratio=3.0,
                                call_null=1.0),
    "latency": Sensitivity(p_value=1e-5, min_ratio=1.5, min_events=8),
    "runaway_loop": Sensitivity(p_value=1e-4, min_events=8),
}


@dataclass(frozen=True, slots=True)
class SensitivityTable:
    """The knobs in force: per kind, and per (tenant, kind) where a tenant overrides them."""

    kinds: Mapping[str, Sensitivity] = field(default_factory=lambda: dict(DEFAULTS))
    tenants: Mapping[str, Mapping[str, Sensitivity]] = field(default_factory=dict)

    def of(self, kind: str, tenant: str | None = None) -> Sensitivity:
        if tenant is not None and self.tenants:
            mine = self.tenants.get(tenant)
            if mine is not None and kind in mine:
                return mine[kind]
        return self.kinds.get(kind) or Sensitivity()

    def lowest(self, kind: str, knob: str) -> Any:
        """The smallest value of ``knob`` for ``kind`` over the default and every tenant's: a
        bound a hot path can test before it looks up the tenant's own."""
        values = [getattr(self.of(kind), knob)]
        values += [getattr(mine[kind], knob) for mine in self.tenants.values() if kind in mine]
        return min(values)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SensitivityTable:
        unknown = sorted(set(data) - {"kinds", "tenants"})
        if unknown:
            raise ValueError(f"detection settings: unknown section(s) {unknown}; expected 'kinds', 'tenants'")
        kinds = dict(DEFAULTS)
        for kind, knobs in (data.get("kinds") or {}).items():
            if kind not in DEFAULTS:
                raise ValueError(f"detection settings: kinds.{kind}: not a detector kind ({sorted(DEFAULTS)})")
            kinds[kind] = kinds[kind].merged(knobs or {})
        tenants: dict[str, dict[str, Sensitivity]] = {}
        for tenant, per_kind in (data.get("tenants") or {}).items():
            per_kind = dict(per_kind or {})
            every = per_kind.pop("*", None) or {}
            mine: dict[str, Sensitivity] = {}
            for kind in DEFAULTS:
                knobs = {**every, **(per_kind.get(kind) or {})}
                if knobs:
                    mine[kind] = kinds[kind].merged(knobs)
            bad = sorted(set(per_kind) - set(DEFAULTS))
            if bad:
                raise ValueError(f"detection settings: tenants.{tenant}: not detector kinds {bad}")
            tenants[str(tenant)] = mine
        return cls(kinds, tenants)

    @classmethod
    def load(cls, path: Path) -> SensitivityTable:
        """A YAML or JSON file (JSON is YAML)."""
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: detection settings must be a mapping with 'kinds' and/or 'tenants'")
        return cls.from_mapping(data)
