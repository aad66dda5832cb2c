"""Synthetic releases: canaries of a new prompt or model version, with and without regressions.

``flyball simulate --scenario release`` (and ``bench/releases.py``, which scores the comparison on
seeds it draws itself). Each feature takes about ``rate`` calls/s (daily seasonality left out: a
release is compared over minutes to hours) on an incumbent version; after ``warmup_s`` a candidate
takes ``canary_share`` of the traffic. A regressing candidate carries one change, drawn with its
size; a clean candidate differs only by noise. Requests are short chains: an optional retrieval,
the model call, a tool call, sometimes a safety trigger, and sometimes the user's feedback
(score in [-1, 1]) on the model call. Deterministic for a seed.

Labels: ``version_regression`` incidents name the scope (feature, version field, old and new
version), the metric that regressed and its size; clean releases are listed under
``clean_releases`` so that a rollback there is a false rollback.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

REGRESSIONS = ("error_rate", "cost_per_call", "feedback", "safety", "latency", "tool_failure", "empty_retrieval")
DAY0 = datetime(2026, 5, 4, tzinfo=UTC)
# a clean model canary moves to a dated snapshot of the same model (same price, same behaviour)
_MODELS = {"gpt-4o-mini": ("openai", 700.0), "gpt-4o-mini-2024-07-18": ("openai", 700.0)}


@dataclass(frozen=True, slots=True)
class Release:
    feature: str
    field: str                 # prompt_version or model
    old: str
    new: str
    start: float
    share: float
    regression: str | None     # None: a clean release
    size: float                # multiplier (rates, cost, latency) or shift (feedback)

    def scope(self) -> dict[str, str]:
        return {"feature": self.feature, "version_field": self.field, "old_version": self.old, "new_version": self.new}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat().replace("+00:00", "Z")


class ReleaseSimulator:
    def __init__(self, seed: int, *, releases: list[tuple[str | None, float]] | None = None, hours: float = 2.0,
                 rate: float = 1.0, canary_share: float = 0.05, warmup_s: float = 1800.0) -> None:
        """``releases``: (regression or None, size) per feature; default: one of each regression at
        a moderate size plus as many clean releases (one of them a model canary)."""
        self.rng = random.Random(seed)
        rng = self.rng
        self.start = (DAY0 + timedelta(days=rng.randrange(60), hours=rng.randrange(24))).timestamp()
        self.end = self.start + hours * 3600
        self.rate = rate
        if releases is None:
            defaults = {"error_rate": 2.0, "cost_per_call": 1.3, "feedback": -0.2, "safety": 5.0,
                        "latency": 2.0, "tool_failure": 3.0, "empty_retrieval": 3.0}
            releases = [(k, defaults[k]) for k in REGRESSIONS] + [(None, 1.0)] * len(REGRESSIONS)
        self.releases: list[Release] = []
        for i, (regression, size) in enumerate(releases):
            model_canary = regression is None and i % 4 == 3
            field = "model" if model_canary else "prompt_version"
            old, new = ("gpt-4o-mini", "gpt-4o-mini-2024-07-18") if model_canary else (f"v{i + 1}.0", f"v{i + 1}.1")
            begin = self.start + warmup_s + rng.uniform(0, 300)
            self.releases.append(Release(f"feature-{i + 1:02d}", field, old, new, begin, canary_share, regression, size))
        self.events: list[tuple[float, dict[str, Any]]] = []

    def _id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _emit(self, t: float, body: dict[str, Any]) -> str:
        body["schema_version"] = 1
        body["event_id"] = self._id()
        body["ts"] = _iso(t)
        self.events.append((t, body))
        return str(body["event_id"])

    def run(self) -> list[tuple[float, dict[str, Any]]]:
        rng = self.rng
        for rel in self.releases:
            tenants = [f"tenant-{rng.randrange(1000):03d}" for _ in range(4)]
            t = self.start
            while True:
                t += rng.expovariate(self.rate)
                if t >= self.end:
                    break
                canary = t >= rel.start and rng.random() < rel.share
                self._request(rel, canary, rng.choice(tenants), t)
        self.events.sort(key=lambda e: e[0])
        return self.events

    def _request(self, rel: Release, canary: bool, tenant: str, t: float) -> None:
        rng = self.rng
        bad = rel.regression if canary else None
        rid = self._id()
        env = {"tenant_id": tenant, "feature": rel.feature, "service": "app", "request_id": rid}
        if rng.random() < 0.5:
            empty = 0.05 * (rel.size if bad == "empty_retrieval" else 1.0)
            self._emit(t, {**env, "event_type": "retrieval", "index_name": "kb", "status": "ok",
                           "results_count": 0 if rng.random() < empty else rng.randint(1, 10),
                           "latency_ms": round(rng.lognormvariate(math.log(50), 0.4), 1)})
            t += 0.05
        model = rel.new if canary and rel.field == "model" else (rel.old if rel.field == "model" else "gpt-4o-mini")
        version = rel.new if canary and rel.field == "prompt_version" else (
            rel.old if rel.field == "prompt_version" else "v1")
        provider, median = _MODELS[model]
        latency = rng.lognormvariate(math.log(median), 0.35) * (rel.size if bad == "latency" else 1.0)
        fail_p = 0.03 * (rel.size if bad == "error_rate" else 1.0)
        status = "ok"
        if rng.random() < fail_p:
            status = rng.choice(("error", "timeout", "rate_limited"))
        tokens_x = rel.size if bad == "cost_per_call" else 1.0
        inp = int(rng.lognormvariate(math.log(1500), 0.5) * tokens_x)
        out = int(rng.lognormvariate(math.log(250), 0.5) * tokens_x) if status == "ok" else 0
        call_id = self._emit(t, {**env, "event_type": "llm_call", "provider": provider, "model": model,
                                 "prompt_version": version, "input_tokens": inp, "output_tokens": out,
                                 "latency_ms": round(latency, 1), "status": status, "stream": True,
                                 **({"ttft_ms": round(latency * rng.uniform(0.15, 0.3), 1)} if status == "ok" else {})})
        t += latency / 1000
        if rng.random() < 0.6:
            tool_fail = 0.02 * (rel.size if bad == "tool_failure" else 1.0)
            self._emit(t, {**env, "event_type": "tool_call", "tool_name": "crm_lookup",
                           "status": "error" if rng.random() < tool_fail else "ok",
                           "latency_ms": round(rng.lognormvariate(math.log(200), 0.5), 1)})
        safety_p = 0.01 * (rel.size if bad == "safety" else 1.0)
        if rng.random() < safety_p:
            self._emit(t, {**env, "event_type": "safety_trigger", "filter_name": "pii-filter", "category": "pii",
                           "action": "redacted"})
        if status == "ok" and rng.random() < 0.3:
            shift = rel.size if bad == "feedback" else 0.0
            score = max(-1.0, min(1.0, rng.gauss(0.5 + shift, 0.5)))
            self._emit(t + 5, {**env, "event_type": "feedback", "score": round(score, 3),
                               "target_event_id": call_id})

    def labels(self) -> dict[str, Any]:
        incidents = [{"kind": "version_regression", "scope": r.scope(), "start": _iso(r.start), "end": _iso(self.end),
                      "detail": {"regression": r.regression, "size": r.size, "canary_share": r.share}}
                     for r in self.releases if r.regression is not None]
        clean = [{"scope": r.scope(), "start": _iso(r.start)} for r in self.releases if r.regression is None]
        return {"incidents": incidents, "clean_releases": clean}
