"""Synthetic multi-tenant LLM traffic with labelled incidents: ``flyball simulate``.

Traffic model (event time, deterministic for a seed):
- tenants of different sizes, each with a daily cycle (request rate between 20 % and 100 % of
  its peak, peaking in the tenant's afternoon) and a few normal bursts a day (x1.5-2.5 for
  2-10 minutes) that detectors must not report;
- a request is a short trajectory: an optional retrieval, 1-6 LLM calls (by feature), tool calls
  for agents, sometimes a safety-filter trigger; tokens and latencies are log-normal (heavy
  tails: the occasional 5x prompt is normal), statuses carry small base failure rates;
- scenario ``clean`` is one day of that; ``incidents`` is about four hours with one injected
  incident of every detector kind (10 minutes each, 20 minutes apart, after an hour of warm-up);
  a scenario named after a kind (``cost_spike`` ...) injects just that one.

The labels (kind, scope, start, end) go beside the events in ``FILE.labels.json``.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

KINDS = ("cost_spike", "token_spike", "runaway_loop", "error_rate", "latency", "tool_failure",
         "safety_burst", "retrieval_failure")
SCENARIOS = ("clean", "incidents", *KINDS, "release")
DAY0 = datetime(2026, 3, 2, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    peak_rps: float          # requests per second at the daily peak
    peak_hour: float         # UTC hour of the peak
    features: tuple[str, ...]


TENANTS = (
    Tenant("acme", 0.5, 15.0, ("support-bot", "agent", "search")),
    Tenant("globex", 0.3, 18.0, ("support-bot", "summarize")),
    Tenant("initech", 0.2, 10.0, ("agent", "search")),
    Tenant("umbrella", 0.12, 22.0, ("support-bot", "summarize", "search")),
    Tenant("hooli", 0.25, 13.0, ("agent", "support-bot")),
)
# model -> (provider, median latency ms)
MODELS = {
    "gpt-4o-mini": ("openai", 700.0), "gpt-4.1": ("openai", 1800.0), "gpt-4.1-mini": ("openai", 900.0),
    "claude-haiku-4-5": ("anthropic", 800.0), "claude-sonnet-4-5": ("anthropic", 2200.0),
    "gemini-2.5-flash": ("gcp.gemini", 600.0),
}


@dataclass(frozen=True, slots=True)
class Feature:
    models: tuple[str, ...]
    calls: tuple[int, int]
    input_median: float
    output_median: float
    retrieval: tuple[str, float] | None
    tools: tuple[str, ...] = ()
    stream: bool = False
    safety_p: float = 0.01


FEATURES = {
    "support-bot": Feature(("gpt-4o-mini", "claude-haiku-4-5"), (1, 3), 1800, 250, ("kb-docs", 0.8),
                           ("crm_lookup",), stream=True, safety_p=0.03),
    "agent": Feature(("claude-sonnet-4-5", "gpt-4.1"), (2, 6), 3500, 400, ("product-catalog", 0.4),
                     ("sql", "web_search", "calculator", "crm_lookup"), safety_p=0.01),
    "search": Feature(("gemini-2.5-flash",), (1, 1), 900, 120, ("product-catalog", 1.0), safety_p=0.005),
    "summarize": Feature(("gemini-2.5-flash", "gpt-4.1-mini"), (1, 1), 9000, 600, None, safety_p=0.005),
}
TOOLS = {"sql": 120.0, "web_search": 900.0, "calculator": 15.0, "crm_lookup": 250.0}
CATEGORIES = (("pii", 0.5), ("toxicity", 0.25), ("prompt_injection", 0.15), ("jailbreak", 0.1))
STATUS_BASE = (("error", 0.005), ("timeout", 0.003), ("rate_limited", 0.005))


@dataclass(slots=True)
class Incident:
    kind: str
    scope: dict[str, str]
    start: float
    end: float
    detail: dict[str, Any] = field(default_factory=dict)

    def active(self, t: float) -> bool:
        return self.start <= t < self.end

    def label(self) -> dict[str, Any]:
        return {"kind": self.kind, "scope": self.scope, "start": _iso(self.start), "end": _iso(self.end),
                **({"detail": self.detail} if self.detail else {})}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat().replace("+00:00", "Z")


class Simulator:
    def __init__(self, scenario: str, seed: int, *, hours: float | None = None) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario: unknown {scenario!r} (one of: {', '.join(SCENARIOS)})")
        self.scenario, self.seed = scenario, seed
        self.rng = random.Random(seed)
        rng = self.rng
        if scenario == "clean":
            self.start = DAY0.timestamp()
            self.hours = hours or 24.0
        else:
            self.start = (DAY0 + timedelta(days=rng.randrange(30), hours=rng.randrange(24))).timestamp()
            kinds = list(KINDS) if scenario == "incidents" else [scenario]
            rng.shuffle(kinds)
            self.hours = 1.0 + len(kinds) / 3 + 0.25
        self.end = self.start + self.hours * 3600
        self.bursts = {t.name: self._bursts() for t in TENANTS}
        self.incidents: list[Incident] = []
        if scenario != "clean":
            for i, kind in enumerate(kinds):
                begin = self.start + 3600 + i * 1200 + rng.uniform(0, 120)
                self.incidents.append(self._incident(kind, begin, begin + 600))
        self.events: list[tuple[float, dict[str, Any]]] = []

    # ------------------------------------------------------------------ traffic
    def _bursts(self) -> list[tuple[float, float, float]]:
        out = []
        for _ in range(_poisson(self.rng, 6 * self.hours / 24)):
            begin = self.rng.uniform(self.start, self.end)
            out.append((begin, begin + self.rng.uniform(120, 600), self.rng.uniform(1.5, 2.5)))
        return out

    def rate(self, tenant: Tenant, t: float) -> float:
        hour = ((t - DAY0.timestamp()) / 3600) % 24
        season = 0.2 + 0.8 * (0.5 + 0.5 * math.cos(2 * math.pi * (hour - tenant.peak_hour) / 24))
        burst = max((f for b, e, f in self.bursts[tenant.name] if b <= t < e), default=1.0)
        return tenant.peak_rps * season * burst

    def calls_per_min(self, tenant: Tenant, feature: str, t: float) -> float:
        calls = FEATURES[feature].calls
        return self.rate(tenant, t) * 60 / len(tenant.features) * (calls[0] + calls[1]) / 2

    def run(self) -> list[tuple[float, dict[str, Any]]]:
        rng = self.rng
        for tenant in TENANTS:
            t = self.start
            while t < self.end:
                n = _poisson(rng, self.rate(tenant, t) * 60)
                for _ in range(n):
                    self._request(tenant, rng.choice(tenant.features), t + rng.uniform(0, 60))
                t += 60
        for inc in self.incidents:
            self._inject(inc)
        self.events.sort(key=lambda e: e[0])
        return self.events

    def _id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _emit(self, t: float, body: dict[str, Any]) -> None:
        body["schema_version"] = 1
        body["event_id"] = self._id()
        body["ts"] = _iso(t)
        self.events.append((t, body))

    def _active(self, kind: str, t: float, **match: str) -> Incident | None:
        for inc in self.incidents:
            if inc.kind == kind and inc.active(t) and all(inc.scope.get(k) == v for k, v in match.items()):
                return inc
        return None

    def _request(self, tenant: Tenant, feature: str, t: float) -> None:
        rng, f = self.rng, FEATURES[feature]
        rid = self._id()
        env = {"tenant_id": tenant.name, "feature": feature, "service": "app", "request_id": rid,
               "trace_id": rid.replace("-", "")}
        if f.retrieval and rng.random() < f.retrieval[1]:
            index = f.retrieval[0]
            status, results = "ok", rng.randint(1, 20)
            inc = self._active("retrieval_failure", t, index_name=index)
            if rng.random() < 0.005:
                status, results = "error", 0
            elif rng.random() < 0.04:
                results = 0
            if inc and rng.random() < inc.detail["p"]:
                status, results = inc.detail["status"], 0
            self._emit(t, {**env, "event_type": "retrieval", "index_name": index, "status": status,
                           "results_count": results, "latency_ms": round(rng.lognormvariate(math.log(60), 0.4), 1)})
            t += 0.08
        tokens_x = 1.0
        bloat = self._active("token_spike", t, tenant_id=tenant.name, feature=feature)
        if bloat:
            tokens_x = bloat.detail["input_tokens"] / f.input_median
        for _ in range(rng.randint(*f.calls)):
            model = rng.choice(f.models)
            t += self._call(env, model, t, f, tokens_x)
            if f.tools and rng.random() < 0.6:
                tool = rng.choice(f.tools)
                status = "ok"
                latency = rng.lognormvariate(math.log(TOOLS[tool]), 0.5)
                if rng.random() < 0.015:
                    status = "error"
                inc = self._active("tool_failure", t, tool_name=tool)
                if inc and rng.random() < inc.detail["p"]:
                    status = "error"
                self._emit(t, {**env, "event_type": "tool_call", "tool_name": tool, "status": status,
                               "latency_ms": round(latency, 1)})
                t += latency / 1000
        if rng.random() < f.safety_p:
            self._safety(env, t, _weighted(rng, CATEGORIES))

    def _call(self, env: dict[str, str], model: str, t: float, f: Feature, tokens_x: float) -> float:
        rng = self.rng
        provider, median = MODELS[model]
        latency = rng.lognormvariate(math.log(median), 0.35)
        slow = self._active("latency", t, provider=provider, model=model)
        if slow:
            latency *= slow.detail["x"]
        status = "ok"
        u = rng.random()
        for name, p in STATUS_BASE:
            if u < p:
                status = name
                break
            u -= p
        bad = self._active("error_rate", t, provider=provider, model=model)
        if bad and rng.random() < bad.detail["p"]:
            status = bad.detail["status"]
        inp = int(rng.lognormvariate(math.log(f.input_median), 0.6) * tokens_x)
        out = int(rng.lognormvariate(math.log(f.output_median), 0.5))
        body = {**env, "event_type": "llm_call", "provider": provider, "model": model, "input_tokens": inp,
                "output_tokens": out if status == "ok" else 0, "latency_ms": round(latency, 1), "status": status,
                "stream": f.stream}
        if f.stream and status == "ok":
            body["ttft_ms"] = round(latency * rng.uniform(0.15, 0.3), 1)
        self._emit(t, body)
        return latency / 1000

    def _safety(self, env: dict[str, str], t: float, category: str) -> None:
        self._emit(t, {**env, "event_type": "safety_trigger", "filter_name": f"{category}-filter",
                       "category": category, "action": self.rng.choice(("blocked", "redacted", "flagged"))})

    # ------------------------------------------------------------------ incidents
    def _incident(self, kind: str, start: float, end: float) -> Incident:
        rng = self.rng
        if kind == "cost_spike":
            tenant = rng.choice(TENANTS)
            return Incident(kind, {"tenant_id": tenant.name}, start, end,
                            {"model": "gpt-4o", "rps": rng.uniform(0.6, 1.5), "input": 30_000})
        if kind == "token_spike":
            # a feature busy enough at that hour (>= 4 calls a minute) for a bloat to matter
            busy = [(t, f) for t in TENANTS for f in t.features if self.calls_per_min(t, f, start) >= 4]
            pairs = [(t, f) for t in TENANTS for f in t.features]
            tenant, feature = rng.choice(busy) if busy else max(pairs, key=lambda tf: self.calls_per_min(tf[0], tf[1], start))
            # a prompt-template change stuffs a document into every call: 25-50k input tokens, and
            # at least 6-10x what the feature usually sends
            bloat = max(rng.uniform(25_000, 50_000), rng.uniform(6, 10) * FEATURES[feature].input_median)
            return Incident(kind, {"tenant_id": tenant.name, "feature": feature}, start, end,
                            {"input_tokens": bloat})
        if kind == "runaway_loop":
            tenant = rng.choice([t for t in TENANTS if "agent" in t.features])
            return Incident(kind, {"tenant_id": tenant.name, "feature": "agent", "request_id": self._id()},
                            start, end, {"every_s": rng.uniform(0.8, 2.0)})
        if kind == "error_rate":
            model = rng.choice(("gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash", "claude-haiku-4-5"))
            return Incident(kind, {"provider": MODELS[model][0], "model": model}, start, end,
                            {"p": rng.uniform(0.3, 0.6), "status": rng.choice(("error", "timeout", "rate_limited"))})
        if kind == "latency":
            model = rng.choice(("gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash", "claude-haiku-4-5"))
            return Incident(kind, {"provider": MODELS[model][0], "model": model}, start, end,
                            {"x": rng.uniform(2.5, 4.0)})
        if kind == "tool_failure":
            return Incident(kind, {"tool_name": rng.choice(("sql", "web_search", "crm_lookup"))}, start, end,
                            {"p": rng.uniform(0.4, 0.8)})
        if kind == "safety_burst":
            tenant = rng.choice(TENANTS)
            return Incident(kind, {"tenant_id": tenant.name, "feature": rng.choice(tenant.features),
                                   "category": rng.choice(("jailbreak", "prompt_injection"))}, start, end,
                            {"per_min": rng.uniform(10, 30)})
        if kind == "retrieval_failure":
            return Incident(kind, {"index_name": rng.choice(("kb-docs", "product-catalog"))}, start, end,
                            {"p": rng.uniform(0.5, 0.9), "status": rng.choice(("ok", "error"))})
        raise ValueError(kind)

    def _inject(self, inc: Incident) -> None:
        """Incidents that are extra traffic rather than a change to normal requests."""
        rng = self.rng
        if inc.kind == "cost_spike":
            env = {"tenant_id": inc.scope["tenant_id"], "feature": "batch-export", "service": "jobs"}
            t = inc.start
            while t < inc.end:
                rid = self._id()
                self._emit(t, {**env, "request_id": rid, "event_type": "llm_call", "provider": "openai",
                               "model": inc.detail["model"], "status": "ok",
                               "input_tokens": int(rng.lognormvariate(math.log(inc.detail["input"]), 0.3)),
                               "output_tokens": int(rng.lognormvariate(math.log(2000), 0.3)),
                               "latency_ms": round(rng.lognormvariate(math.log(4000), 0.3), 1)})
                t += rng.expovariate(inc.detail["rps"])
        elif inc.kind == "runaway_loop":
            env = {"tenant_id": inc.scope["tenant_id"], "feature": "agent", "service": "app",
                   "request_id": inc.scope["request_id"], "trace_id": inc.scope["request_id"].replace("-", "")}
            t, context = inc.start, 3000
            while t < inc.end:
                self._emit(t, {**env, "event_type": "llm_call", "provider": "anthropic", "model": "claude-sonnet-4-5",
                               "input_tokens": context, "output_tokens": 300, "status": "ok",
                               "latency_ms": round(rng.lognormvariate(math.log(900), 0.3), 1)})
                context = min(context + 2500, 190_000)
                t += rng.expovariate(1 / inc.detail["every_s"])
        elif inc.kind == "safety_burst":
            env = {"tenant_id": inc.scope["tenant_id"], "feature": inc.scope["feature"], "service": "app"}
            t = inc.start
            while t < inc.end:
                rid = self._id()
                self._safety({**env, "request_id": rid, "trace_id": rid.replace("-", "")}, t, inc.scope["category"])
                t += rng.expovariate(inc.detail["per_min"] / 60)


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    threshold, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= threshold:
            return k
        k += 1


def _weighted(rng: random.Random, items: tuple[tuple[str, float], ...]) -> str:
    u = rng.random() * sum(w for _, w in items)
    for name, w in items:
        if u < w:
            return name
        u -= w
    return items[-1][0]


@dataclass(slots=True)
class Simulation:
    scenario: str
    seed: int
    start: float
    end: float
    tenants: list[str]
    incidents: list[Incident]
    events: list[tuple[float, dict[str, Any]]]
    extra_labels: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> Iterator[bytes]:
        for _, body in self.events:
            yield orjson.dumps(body)

    def labels(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "seed": self.seed, "start": _iso(self.start), "end": _iso(self.end),
                "tenants": self.tenants, "tenant_days": len(self.tenants) * (self.end - self.start) / 86400,
                "events": len(self.events), "incidents": [i.label() for i in self.incidents], **self.extra_labels}


def simulate(scenario: str, seed: int, *, hours: float | None = None) -> Simulation:
    """``hours`` shortens the clean scenario (default one day); incident scenarios have a fixed length.
    ``release``: canaries with and without regressions (``release_sim.py``)."""
    if scenario == "release":
        from .release_sim import ReleaseSimulator

        rs = ReleaseSimulator(seed, hours=hours or 2.0)
        events = rs.run()
        incidents = [Incident("version_regression", r.scope(), r.start, rs.end,
                              {"regression": r.regression, "size": r.size, "canary_share": r.share})
                     for r in rs.releases if r.regression is not None]
        tenants = sorted({body["tenant_id"] for _, body in events})
        return Simulation(scenario, seed, rs.start, rs.end, tenants, incidents, events,
                          {"clean_releases": rs.labels()["clean_releases"]})
    sim = Simulator(scenario, seed, hours=hours)
    events = sim.run()
    return Simulation(scenario, seed, sim.start, sim.end, [t.name for t in TENANTS], sim.incidents, events)


def labels_path(out: Path) -> Path:
    name = out.name.removesuffix(".jsonl")
    return out.with_name(f"{name}.labels.json")


def write(sim: Simulation, out: Path, *, progress: Callable[[str], None] | None = None) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        for line in sim.lines():
            f.write(line + b"\n")
    labels = labels_path(out)
    labels.write_bytes(orjson.dumps(sim.labels(), option=orjson.OPT_INDENT_2) + b"\n")
    return labels
