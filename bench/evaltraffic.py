#!/usr/bin/env python3
"""A second traffic generator, written from its own specification for evaluating the detectors.

It shares no code, constants or incident shapes with ``stream_processors/simulate.py`` or with the
detectors, so that the detectors cannot have been fitted to it. Specification (one simulated day
per seed, event time, deterministic for a seed):

- ``TENANTS`` tenants whose mean call rate is log-uniform over ``RATE_RANGE`` (0.01-1 calls/s: a
  100x spread, from a few calls an hour at night on the smallest to ~2 calls/s at the largest's
  peak), each with a daily cycle (sinusoid of its own phase and amplitude 40-85 %), 1-3 features of
  four archetypes (chat, agent with tools, rag with retrieval, batch summarisation), 1-2 models per
  feature from the built-in price catalog (models and tools are shared across tenants, so their
  scopes aggregate traffic of several tenants);
- normal variation that is *not* an incident: Poisson(4) traffic bursts per tenant-day (x1.5-2.5
  for 2-15 minutes), one or two deploy-like steps per tenant (a feature's tokens per call
  x0.6-1.6 from then on), one model per day whose latency steps up x1.1-1.35, heavy-tailed tokens
  and latencies (log-normal), base failure rates that differ per model, tool and index;
- incidents: one of each of the eight anomaly kinds per seed, at a random time after a 2-hour
  warm-up, 8-45 minutes long, on a random target (so at any volume), with a size drawn
  log-uniformly from a range that goes from below the "subtle" sizes of the detectors' brief to
  beyond their "strong" ones (``SIZES``). Labels carry kind, scope, start, end, size, the size
  class (``size_class``) and the scope's volume before the incident (calls/s, ``volume_band``).

    python bench/evaltraffic.py --seed 7 --out /tmp/day7.jsonl    # + /tmp/day7.labels.json
"""

from __future__ import annotations

import argparse
import math
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

DAY_S = 86_400.0
EPOCH = datetime(2026, 6, 1, tzinfo=UTC).timestamp()
TENANTS = 12
RATE_RANGE = (0.01, 1.0)  # mean LLM calls per second per tenant, log-uniform


@dataclass(frozen=True, slots=True)
class Spec:
    """The traffic's shape. ``A`` is the specification above; ``B`` a second variation (more tenants,
    a 400x rate spread, a sharper and two-peaked day, more and harsher normal bursts, incidents of
    5-60 minutes) for checking that held-out figures do not hold on one shape of traffic only."""

    tenants: int = TENANTS
    rate_range: tuple[float, float] = RATE_RANGE
    amplitude: tuple[float, float] = (0.4, 0.85)   # daily sinusoid
    harmonic: tuple[float, float] = (0.0, 0.0)     # a second, 12-hour sinusoid
    bursts: float = 4.0                            # normal bursts per tenant-day (Poisson mean)
    burst_x: tuple[float, float] = (1.5, 2.5)
    burst_s: tuple[float, float] = (120.0, 900.0)
    incident_min: tuple[float, float] = (8.0, 45.0)
    sizes: tuple[tuple[str, float], ...] = ()      # fixed incident sizes per kind (else drawn from SIZES)


# the sizes of issue #13's brief: "strong" (12x cost, 35 % errors vs 1 %, 4x latency, 45 % tool
# failures, 30x safety-trigger rate, 60 % empty retrievals) and "subtle" (3x, 8 %, 2x, 15 %, 8x,
# 25 %), on 12 tenants of 0.03-0.25 calls/s. The brief gives no token or runaway size: tokens take
# the cost multiplier, a runaway request 100 and 25 calls.
BRIEF_STRONG = (("cost_spike", 12.0), ("token_spike", 12.0), ("runaway_loop", 100.0), ("error_rate", 0.35),
                ("latency", 4.0), ("tool_failure", 0.45), ("safety_burst", 30.0), ("retrieval_failure", 0.6))
BRIEF_SUBTLE = (("cost_spike", 3.0), ("token_spike", 3.0), ("runaway_loop", 25.0), ("error_rate", 0.08),
                ("latency", 2.0), ("tool_failure", 0.15), ("safety_burst", 8.0), ("retrieval_failure", 0.25))
VARIANTS = {
    "A": Spec(),
    "B": Spec(tenants=16, rate_range=(0.005, 2.0), amplitude=(0.2, 0.95), harmonic=(0.0, 0.3), bursts=6.0,
              burst_x=(1.3, 2.8), burst_s=(60.0, 1200.0), incident_min=(5.0, 60.0)),
    "S": Spec(rate_range=(0.03, 0.25), sizes=BRIEF_STRONG),
    "U": Spec(rate_range=(0.03, 0.25), sizes=BRIEF_SUBTLE),
}
KINDS = ("cost_spike", "token_spike", "runaway_loop", "error_rate", "latency", "tool_failure",
         "safety_burst", "retrieval_failure")
# incident size per kind: (low, high) drawn log-uniformly, and the size classes' upper bounds
# (subtle < first, medium < second, strong above); multipliers except where a rate is given
SIZES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "cost_spike": ((2.0, 16.0), (3.5, 8.0)),          # cost per minute x
    "token_spike": ((2.0, 16.0), (3.5, 8.0)),         # tokens per call x
    "runaway_loop": ((15.0, 200.0), (30.0, 80.0)),    # calls in one request
    "error_rate": ((0.04, 0.45), (0.10, 0.25)),       # share of failing calls (base ~1 %)
    "latency": ((1.6, 5.0), (2.3, 3.5)),              # latency x
    "tool_failure": ((0.08, 0.6), (0.2, 0.4)),        # share of failing tool calls (base 1-4 %)
    "safety_burst": ((4.0, 40.0), (10.0, 25.0)),      # trigger rate x
    "retrieval_failure": ((0.15, 0.75), (0.3, 0.5)),  # share of empty results (base 3-10 %)
}
VOLUME_BANDS = ((0.05, "low <0.05/s"), (0.3, "mid 0.05-0.3/s"), (math.inf, "high >=0.3/s"))
# model -> (provider, median latency ms, base failure share)
MODELS = {
    "gpt-4o-mini": ("openai", 650.0, 0.006), "gpt-4o": ("openai", 1400.0, 0.01),
    "gpt-4.1-mini": ("openai", 800.0, 0.008), "claude-haiku-4-5": ("anthropic", 900.0, 0.012),
    "claude-sonnet-4-5": ("anthropic", 2400.0, 0.015), "gemini-2.5-flash": ("gcp.gemini", 500.0, 0.01),
    "gemini-2.5-pro": ("gcp.gemini", 2100.0, 0.02), "o3-mini": ("openai", 3000.0, 0.012),
}
TOOLS = {"db_query": (90.0, 0.01), "http_fetch": (700.0, 0.04), "code_exec": (1500.0, 0.02),
         "ticketing": (300.0, 0.015)}
INDEXES = {"faq": 0.03, "catalog": 0.06, "contracts": 0.1}
CATEGORIES = ("pii", "toxicity", "prompt_injection", "jailbreak")


@dataclass(slots=True)
class Feature:
    name: str
    archetype: str
    models: list[str]
    share: float                 # of the tenant's calls
    input_median: float
    output_median: float
    safety_p: float              # safety triggers per call
    tools: list[str] = field(default_factory=list)
    index: str | None = None
    steps: list[tuple[float, float]] = field(default_factory=list)  # (from t, tokens x) deploys


@dataclass(slots=True)
class Tenant:
    name: str
    rate: float                  # mean calls/s
    amplitude: float
    phase: float
    features: list[Feature]
    bursts: list[tuple[float, float, float]] = field(default_factory=list)  # (start, end, x)
    harmonic: tuple[float, float] = (0.0, 0.0)  # (amplitude, phase) of a 12-hour cycle


@dataclass(slots=True)
class Incident:
    kind: str
    scope: dict[str, str]
    start: float
    end: float
    size: float
    detail: dict[str, Any] = field(default_factory=dict)

    def on(self, t: float) -> bool:
        return self.start <= t < self.end


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _loguniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def size_class(kind: str, size: float) -> str:
    a, b = SIZES[kind][1]
    return "subtle" if size < a else "medium" if size < b else "strong"


def volume_band(rate: float) -> str:
    return next(name for top, name in VOLUME_BANDS if rate < top)


class Day:
    """One seed's day of traffic: ``events`` (t, body) sorted by time, ``incidents`` labelled."""

    def __init__(self, seed: int, *, spec: Spec | None = None) -> None:
        self.spec = spec = spec or VARIANTS["A"]
        self.rng = rng = random.Random(seed * 7919 + 13)
        self.seed = seed
        # one day per seed from EPOCH; seeds from 60,000 on wrap round (the event schema accepts
        # timestamps before 2200 only: seed 67001 would be 2209 and every event dead-lettered)
        self.t0 = EPOCH + seed % 60_000 * DAY_S
        self.tenants = [self._tenant(i) for i in range(spec.tenants)]
        self.latency_step = (rng.choice(list(MODELS)), self.t0 + rng.uniform(0.2, 0.9) * DAY_S, rng.uniform(1.1, 1.35))
        self.incidents = self._incidents()
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._run()
        self.events.sort(key=lambda e: e[0])

    # ------------------------------------------------------------------ set-up
    def _tenant(self, i: int) -> Tenant:
        rng = self.rng
        archetypes = rng.sample(["chat", "agent", "rag", "batch"], rng.randint(1, 3))
        shares = [rng.uniform(0.3, 1.0) for _ in archetypes]
        feats = []
        for a, s in zip(archetypes, shares, strict=True):
            models = rng.sample(list(MODELS), rng.choice((1, 1, 2)))
            f = Feature(
                name=f"{a}-{rng.randint(1, 9)}", archetype=a, models=models, share=s / sum(shares),
                input_median={"chat": 1500, "agent": 4000, "rag": 2500, "batch": 12000}[a] * rng.uniform(0.6, 1.5),
                output_median={"chat": 300, "agent": 350, "rag": 250, "batch": 800}[a] * rng.uniform(0.6, 1.5),
                safety_p=_loguniform(rng, 0.002, 0.03),
                tools=rng.sample(list(TOOLS), 2) if a == "agent" else [],
                index=rng.choice(list(INDEXES)) if a in ("rag", "chat") and rng.random() < 0.8 else None,
            )
            for _ in range(rng.randint(0, 2) if rng.random() < 0.75 else 0):
                f.steps.append((self.t0 + rng.uniform(0.1, 0.95) * DAY_S, rng.uniform(0.6, 1.6)))
            f.steps.sort()
            feats.append(f)
        spec = self.spec
        t = Tenant(name=f"t{self.seed}-{i:02d}", rate=_loguniform(rng, *spec.rate_range),
                   amplitude=rng.uniform(*spec.amplitude), phase=rng.uniform(0, DAY_S), features=feats)
        if spec.harmonic[1] > 0:
            t.harmonic = (rng.uniform(*spec.harmonic), rng.uniform(0, DAY_S))
        for _ in range(_poisson(rng, spec.bursts)):
            s = self.t0 + rng.uniform(0, DAY_S)
            t.bursts.append((s, s + rng.uniform(*spec.burst_s), rng.uniform(*spec.burst_x)))
        return t

    def _incidents(self) -> list[Incident]:
        rng = self.rng
        out = []
        for kind in KINDS:
            lo, hi = SIZES[kind][0]
            size = _loguniform(rng, lo, hi)  # drawn even when fixed, so that S and U days differ only in size
            size = dict(self.spec.sizes).get(kind, size)
            start = self.t0 + rng.uniform(2 * 3600, DAY_S - 3600)
            end = start + rng.uniform(*self.spec.incident_min) * 60
            tenant = rng.choice(self.tenants)
            feature = rng.choice(tenant.features)
            if kind == "cost_spike":
                how = rng.choice(("rate", "price"))
                out.append(Incident(kind, {"tenant_id": tenant.name}, start, end, size, {"how": how}))
            elif kind == "token_spike":
                out.append(Incident(kind, {"tenant_id": tenant.name, "feature": feature.name}, start, end, size))
            elif kind == "runaway_loop":
                rid = str(uuid.UUID(int=rng.getrandbits(128)))
                end = start + size * rng.uniform(3, 12)  # one call every 3-12 s
                out.append(Incident(kind, {"tenant_id": tenant.name, "feature": feature.name, "request_id": rid},
                                    start, end, size, {"model": rng.choice(feature.models)}))
            elif kind in ("error_rate", "latency"):
                model = rng.choice(feature.models)
                out.append(Incident(kind, {"provider": MODELS[model][0], "model": model}, start, end, size,
                                    {"status": rng.choice(("error", "timeout", "rate_limited"))}))
            elif kind == "tool_failure":
                pool = [x for ten in self.tenants for f in ten.features for x in f.tools] or list(TOOLS)
                out.append(Incident(kind, {"tool_name": rng.choice(pool)}, start, end, size))
            elif kind == "safety_burst":
                out.append(Incident(kind, {"tenant_id": tenant.name, "feature": feature.name}, start, end, size,
                                    {"category": rng.choice(CATEGORIES)}))
            else:
                pool = [f.index for ten in self.tenants for f in ten.features if f.index] or list(INDEXES)
                out.append(Incident(kind, {"index_name": rng.choice(pool)}, start, end, size))
        return out

    def _active(self, kind: str, t: float, **match: str) -> Incident | None:
        for inc in self.incidents:
            if inc.kind == kind and inc.on(t) and all(inc.scope.get(k) == v for k, v in match.items()):
                return inc
        return None

    # ------------------------------------------------------------------ traffic
    def _rate(self, tenant: Tenant, t: float) -> float:
        x = tenant.rate * (1 + tenant.amplitude * math.sin(2 * math.pi * (t - tenant.phase) / DAY_S))
        amp, phase = tenant.harmonic
        if amp:
            x *= 1 + amp * math.sin(4 * math.pi * (t - phase) / DAY_S)
        for s, e, m in tenant.bursts:
            if s <= t < e:
                x *= m
        return x

    def _run(self) -> None:
        rng = self.rng
        for tenant in self.tenants:
            for minute in range(int(DAY_S // 60)):
                t = self.t0 + minute * 60
                rate = self._rate(tenant, t)
                flood = self._active("cost_spike", t, tenant_id=tenant.name)
                if flood is not None and flood.detail["how"] == "rate":
                    rate *= flood.size
                for _ in range(_poisson(rng, rate * 60)):
                    tc = t + rng.uniform(0, 60)
                    f = _pick(rng, tenant.features)
                    self._request(tenant, f, tc)
        for inc in self.incidents:
            if inc.kind == "runaway_loop":
                self._runaway(inc)

    def _request(self, tenant: Tenant, f: Feature, t: float) -> None:
        rng = self.rng
        rid = str(uuid.UUID(int=rng.getrandbits(128)))
        env = {"tenant_id": tenant.name, "feature": f.name, "service": f"svc-{f.archetype}", "request_id": rid}
        if f.index is not None:
            base_empty = INDEXES[f.index]
            inc = self._active("retrieval_failure", t, index_name=f.index)
            empty = rng.random() < (inc.size if inc else base_empty)
            status = "error" if rng.random() < 0.003 else "ok"
            self._emit(t, {**env, "event_type": "retrieval", "index_name": f.index, "status": status,
                           "results_count": 0 if empty or status != "ok" else rng.randint(1, 12),
                           "latency_ms": round(rng.lognormvariate(math.log(45), 0.5), 1)})
            t += 0.05
        calls = 1 if f.archetype in ("chat", "batch", "rag") else rng.randint(2, 5)
        tokens_x = 1.0
        for start, x in f.steps:
            if t >= start:
                tokens_x = x
        bloat = self._active("token_spike", t, tenant_id=tenant.name, feature=f.name)
        if bloat is not None:
            tokens_x *= bloat.size
        price = self._active("cost_spike", t, tenant_id=tenant.name)
        if price is not None and price.detail["how"] == "price":
            tokens_x *= price.size
        for _ in range(calls):
            t += self._call(env, rng.choice(f.models), t, f, tokens_x)
            if f.tools and rng.random() < 0.7:
                tool = rng.choice(f.tools)
                median, fail = TOOLS[tool]
                inc = self._active("tool_failure", t, tool_name=tool)
                bad = rng.random() < (inc.size if inc else fail)
                latency = rng.lognormvariate(math.log(median), 0.6)
                self._emit(t, {**env, "event_type": "tool_call", "tool_name": tool,
                               "status": "error" if bad else "ok", "latency_ms": round(latency, 1)})
                t += latency / 1000
            burst = self._active("safety_burst", t, tenant_id=tenant.name, feature=f.name)
            p = f.safety_p * (burst.size if burst else 1.0)
            if rng.random() < p:
                category = burst.detail["category"] if burst and rng.random() > 1 / burst.size else \
                    rng.choice(CATEGORIES)
                self._emit(t, {**env, "event_type": "safety_trigger", "filter_name": "guardrail",
                               "category": category, "action": rng.choice(("blocked", "flagged", "redacted"))})

    def _call(self, env: dict[str, str], model: str, t: float, f: Feature, tokens_x: float) -> float:
        rng = self.rng
        provider, median, fail = MODELS[model]
        latency = rng.lognormvariate(math.log(median), 0.45)
        step_model, step_t, step_x = self.latency_step
        if model == step_model and t >= step_t:
            latency *= step_x
        slow = self._active("latency", t, model=model)
        if slow is not None:
            latency *= slow.size
        bad = self._active("error_rate", t, model=model)
        status = "ok"
        if rng.random() < (bad.size if bad else fail):
            status = bad.detail["status"] if bad else rng.choice(("error", "timeout", "rate_limited"))
        inp = max(1, int(rng.lognormvariate(math.log(f.input_median), 0.7) * tokens_x))
        out = max(1, int(rng.lognormvariate(math.log(f.output_median), 0.6) * tokens_x ** 0.5))
        body: dict[str, Any] = {**env, "event_type": "llm_call", "provider": provider, "model": model,
                                "input_tokens": inp, "output_tokens": out if status == "ok" else 0,
                                "latency_ms": round(latency, 1), "status": status}
        if f.archetype == "chat" and status == "ok":
            body["stream"] = True
            body["ttft_ms"] = round(latency * rng.uniform(0.1, 0.35), 1)
        self._emit(t, body)
        return latency / 1000

    def _runaway(self, inc: Incident) -> None:
        rng = self.rng
        tenant = next(x for x in self.tenants if x.name == inc.scope["tenant_id"])
        f = next(x for x in tenant.features if x.name == inc.scope["feature"])
        env = {"tenant_id": tenant.name, "feature": f.name, "service": f"svc-{f.archetype}",
               "request_id": inc.scope["request_id"]}
        n = int(inc.size)
        step = (inc.end - inc.start) / n
        for i in range(n):
            self._call(env, inc.detail["model"], inc.start + i * step + rng.uniform(0, step / 2), f, 1.0)

    def _emit(self, t: float, body: dict[str, Any]) -> None:
        body["schema_version"] = 1
        body["event_id"] = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        body["ts"] = _iso(t)
        self.events.append((t, body))

    # ------------------------------------------------------------------ outputs
    def lines(self) -> list[bytes]:
        return [orjson.dumps(b) for _, b in self.events]

    def labels(self) -> dict[str, Any]:
        return {"seed": self.seed, "tenant_days": len(self.tenants), "incidents": [self._label(i) for i in self.incidents]}

    def _label(self, inc: Incident) -> dict[str, Any]:
        rate = self._scope_rate(inc)
        return {"kind": inc.kind, "scope": inc.scope, "start": _iso(inc.start), "end": _iso(inc.end),
                "size": round(inc.size, 4), "size_class": size_class(inc.kind, inc.size),
                "scope_rate_per_s": round(rate, 5), "volume_band": volume_band(rate)}

    def _scope_rate(self, inc: Incident) -> float:
        """Events of the incident's scope per second in the hour before it (calls, triggers, ...):
        for a safety burst the tenant+feature's calls, for the others the scope's own events."""
        lo, hi = inc.start - 3600, inc.start
        scope = {k: v for k, v in inc.scope.items() if k != "request_id"}
        wanted = {"tool_failure": "tool_call", "retrieval_failure": "retrieval"}.get(inc.kind, "llm_call")
        n = sum(1 for t, b in self.events if lo <= t < hi and b["event_type"] == wanted
                and all(b.get(k) == v for k, v in scope.items()))
        return n / 3600


def _pick(rng: random.Random, features: list[Feature]) -> Feature:
    u = rng.random()
    for f in features:
        u -= f.share
        if u < 0:
            return f
    return features[-1]


def _poisson(rng: random.Random, lam: float) -> int:
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="A")
    ap.add_argument("--out", type=Path, required=True, help="events JSONL (labels go to OUT.labels.json)")
    a = ap.parse_args()
    day = Day(a.seed, spec=VARIANTS[a.variant])
    a.out.write_bytes(b"\n".join(day.lines()) + b"\n")
    a.out.with_suffix(".labels.json").write_bytes(orjson.dumps(day.labels(), option=orjson.OPT_INDENT_2))
    print(f"{len(day.events):,} events, {len(day.incidents)} incidents -> {a.out}")


if __name__ == "__main__":
    main()
