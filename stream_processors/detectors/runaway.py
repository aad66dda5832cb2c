"""Runaway loops: calls or tokens per request exploding (agent loops, retry storms).

Per request (``request_id``, or ``trace_id`` when the request id is empty) the detector counts
LLM calls and tokens while the request is active; a request idle for ``idle_s`` of event time is
closed and folded into its tenant+feature baseline.

baseline   EWMA of calls per request and tokens per request for the tenant+feature, weight
           ``ewma_weight`` (0.02: about the last 50 requests), starting from a prior of 3 calls
           and 6,000 tokens; requests that alerted are not learned from;
threshold  calls >= max(``min_calls``, ``factor`` x baseline calls) or
           tokens >= max(``min_tokens``, ``factor`` x baseline tokens). The floors (25 calls,
           400,000 tokens) keep a feature whose requests are all tiny from flagging a normal
           long conversation; the factor (8x) keeps a feature whose agents always take 10 steps
           from alerting on a 12-step one. A request is a single trajectory, not a rate, so no
           distribution test: the counts only ever grow, and the alert fires the moment a count
           crosses. Score = max of the two ratios count / threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flyball.schemas import Alert, AlertKind, Scope

from .base import BASE_WINDOW_S, AlertBook, Evidence, fmt


@dataclass(frozen=True, slots=True)
class RunawayParams:
    idle_s: float = 300.0
    ewma_weight: float = 0.02
    prior_calls: float = 3.0
    prior_tokens: float = 6_000.0
    min_calls: int = 25
    min_tokens: int = 400_000
    factor: float = 8.0


@dataclass(slots=True)
class _Request:
    calls: int
    tokens: int
    first_ts: float
    last_ts: float
    alerted: bool = False


@dataclass(slots=True)
class RunawayDetector:
    book: AlertBook
    params: RunawayParams = field(default_factory=RunawayParams)
    requests: dict[tuple[str, str, str], _Request] = field(default_factory=dict)
    baselines: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    _swept_at: float = 0.0

    def observe(self, key: tuple[str, str, str], calls: int, tokens: int, first_ts: float, last_ts: float,
                event_ids: list[str]) -> Alert | None:
        """``key`` = (tenant_id, feature, request id); the batch's calls and tokens for it."""
        p = self.params
        r = self.requests.get(key)
        if r is None:
            r = self.requests[key] = _Request(calls, tokens, first_ts, last_ts)
        else:
            r.calls += calls
            r.tokens += tokens
            r.first_ts = min(r.first_ts, first_ts)
            r.last_ts = max(r.last_ts, last_ts)
        if r.calls < p.min_calls and r.tokens < p.min_tokens:
            return None  # below both floors: no baseline can make it a runaway
        base = self.baselines.get(key[:2]) or [p.prior_calls, p.prior_tokens]
        call_limit = max(float(p.min_calls), p.factor * base[0])
        token_limit = max(float(p.min_tokens), p.factor * base[1])
        score = max(r.calls / call_limit, r.tokens / token_limit)
        if score < 1.0:
            return None
        r.alerted = True
        by_calls = r.calls / call_limit >= r.tokens / token_limit
        metric, observed, baseline, limit = (("calls_per_request", r.calls, base[0], call_limit) if by_calls
                                             else ("tokens_per_request", r.tokens, base[1], token_limit))
        scope = Scope(tenant_id=key[0], feature=key[1] or None, request_id=key[2])
        ev = Evidence(
            severity="critical" if score >= 3 else "warning", metric=metric, observed=str(observed),
            baseline=fmt(baseline), threshold=fmt(limit), score=score, p_value=None, window_s=BASE_WINDOW_S,
            first_ts=r.first_ts, last_ts=r.last_ts, event_ids=event_ids,
            summary=f"request {key[2]} of {key[0]}/{key[1]}: {r.calls} calls and {r.tokens} tokens in "
                    f"{r.last_ts - r.first_ts:.0f}s (baseline {base[0]:.1f} calls, {base[1]:.0f} tokens per request)",
        )
        return self.book.fire(AlertKind.RUNAWAY_LOOP, scope, ev)

    def close_idle(self, watermark: float) -> None:
        """Fold requests idle for ``idle_s`` into their baselines; at most once a minute of event time."""
        p = self.params
        if watermark - self._swept_at < 60:
            return
        self._swept_at = watermark
        done = [k for k, r in self.requests.items() if watermark - r.last_ts >= p.idle_s]
        w = p.ewma_weight
        for key in done:
            r = self.requests.pop(key)
            if r.alerted:
                continue
            base = self.baselines.get(key[:2])
            if base is None:
                base = self.baselines[key[:2]] = [p.prior_calls, p.prior_tokens]
            base[0] += w * (r.calls - base[0])
            base[1] += w * (r.tokens - base[1])

    def snapshot(self) -> dict[str, Any]:
        return {"requests": [[list(k), r.calls, r.tokens, r.first_ts, r.last_ts, r.alerted]
                             for k, r in self.requests.items()],
                "baselines": [[list(k), v] for k, v in self.baselines.items()], "swept_at": self._swept_at}

    def restore(self, data: dict[str, Any]) -> None:
        self.requests = {tuple(k): _Request(c, t, f, la, a) for k, c, t, f, la, a in data["requests"]}
        self.baselines = {tuple(k): list(v) for k, v in data["baselines"]}
        self._swept_at = data["swept_at"]
