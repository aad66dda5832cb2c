"""Runaway loops: calls or tokens per request exploding (agent loops, retry storms).

Per request (``request_id``, or ``trace_id`` when the request id is empty) the detector counts
LLM calls and tokens while the request is active; a request idle for ``idle_s`` of event time is
closed and folded into its tenant+feature baseline.

baseline   EWMA of calls per request and tokens per request for the tenant+feature, weight
           ``ewma_weight`` (0.02: about the last 50 requests), starting from a prior of 3 calls
           and 6,000 tokens; requests that alerted are not learned from;
threshold  calls >= max(``min_calls``, ``factor`` x baseline calls) or
           tokens >= max(``min_tokens``, ``factor`` x baseline tokens). The floors (12 calls,
           400,000 tokens) keep a feature whose requests are all tiny from flagging a normal
           long conversation; the factor (8x) keeps a feature whose agents always take 10 steps
           from alerting on a 12-step one. A request is a single trajectory, not a rate, so no
           distribution test: the counts only ever grow, and the alert fires the moment a count
           crosses. Score = max of the two ratios count / threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flyball.schemas import Alert, AlertKind, Scope

from .base import BASE_WINDOW_S, AlertBook, Evidence, fmt


@dataclass(frozen=True, slots=True)
class RunawayParams:
    idle_s: float = 300.0
    ewma_weight: float = 0.02
    prior_calls: float = 3.0
    prior_tokens: float = 6_000.0
    min_calls: int = 12
    min_tokens: int = 400_000
    factor: float = 8.0


# A request's state is a tuple (calls, tokens, first_ts, last_ts, alerted), replaced when it
# changes: a worker holds thousands of open requests, and a tuple of plain values is no container
# for the garbage collector to promote and traverse, as an object per request would be.
_LAST = 3  # where last_ts sits


@dataclass(slots=True)
class RunawayDetector:
    book: AlertBook
    params: RunawayParams = field(default_factory=RunawayParams)
    requests: dict[tuple[str, str, str], tuple[int, int, float, float, bool]] = field(default_factory=dict)
    baselines: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    _swept_at: float = 0.0

    def observe(self, key: tuple[str, str, str], calls: int, tokens: int, first_ts: float, last_ts: float,
                event_ids: list[str]) -> Alert | None:
        """``key`` = (tenant_id, feature, request id); the batch's calls and tokens for it."""
        if not self.check(key, calls, tokens, first_ts, last_ts):
            return None
        return self.fire(key, event_ids)

    def check(self, key: tuple[str, str, str], calls: int, tokens: int, first_ts: float, last_ts: float) -> bool:
        """The state part of :meth:`observe`: add the batch's counts; True if the request is over
        a limit (it is then marked alerted, and :meth:`fire` makes the alert)."""
        p = self.params
        r = self.requests.get(key)
        if r is None:
            r = (calls, tokens, first_ts, last_ts, False)
        else:
            r = (r[0] + calls, r[1] + tokens, min(r[2], first_ts), max(r[3], last_ts), r[4])
        self.requests[key] = r
        if r[0] < p.min_calls and r[1] < p.min_tokens:
            return False  # below both floors: no baseline can make it a runaway
        _, call_limit, token_limit = self._limits(key)
        if max(r[0] / call_limit, r[1] / token_limit) < 1.0:
            return False
        if not r[4]:
            self.requests[key] = (r[0], r[1], r[2], r[3], True)
        return True

    def check_batch(self, requests: dict[tuple[str, str, str], int], calls: list[int], tokens: list[int],
                    firsts: list[datetime], lasts: list[datetime]) -> list[tuple[tuple[str, str, str], int]]:
        """:meth:`check` of each request of a batch, given as columns (request ``i`` has
        ``calls[i]`` calls ... between the event times ``firsts[i]`` and ``lasts[i]``); returns the
        (key, i) over a limit, in order, for :meth:`fire`. A check touches only its own request,
        so checking all, then firing those, is the same as observing them one by one."""
        hits = []
        for key, i in requests.items():
            first, last = firsts[i], lasts[i]
            ft = first.timestamp()
            if self.check(key, calls[i], tokens[i], ft, ft if last is first else last.timestamp()):
                hits.append((key, i))
        return hits

    def _limits(self, key: tuple[str, str, str]) -> tuple[list[float], float, float]:
        """The feature's baseline [calls, tokens] per request and the two limits it sets."""
        p = self.params
        base = self.baselines.get(key[:2]) or [p.prior_calls, p.prior_tokens]
        return base, max(float(p.min_calls), p.factor * base[0]), max(float(p.min_tokens), p.factor * base[1])

    def fire(self, key: tuple[str, str, str], event_ids: list[str]) -> Alert | None:
        """The alert of a request that :meth:`check` found over a limit."""
        calls, tokens, first_ts, last_ts, _ = self.requests[key]
        base, call_limit, token_limit = self._limits(key)
        score = max(calls / call_limit, tokens / token_limit)
        by_calls = calls / call_limit >= tokens / token_limit
        metric, observed, baseline, limit = (("calls_per_request", calls, base[0], call_limit) if by_calls
                                             else ("tokens_per_request", tokens, base[1], token_limit))
        scope = Scope(tenant_id=key[0], feature=key[1] or None, request_id=key[2])
        ev = Evidence(
            severity="critical" if score >= 3 else "warning", metric=metric, observed=str(observed),
            baseline=fmt(baseline), threshold=fmt(limit), score=score, p_value=None, window_s=BASE_WINDOW_S,
            first_ts=first_ts, last_ts=last_ts, event_ids=event_ids,
            summary=f"request {key[2]} of {key[0]}/{key[1]}: {calls} calls and {tokens} tokens in "
                    f"{last_ts - first_ts:.0f}s (baseline {base[0]:.1f} calls, {base[1]:.0f} tokens per request)",
        )
        return self.book.fire(AlertKind.RUNAWAY_LOOP, scope, ev)

    def close_idle(self, watermark: float) -> None:
        """Fold requests idle for ``idle_s`` into their baselines; at most once a minute of event time."""
        p = self.params
        if watermark - self._swept_at < 60:
            return
        self._swept_at = watermark
        done = [k for k, r in self.requests.items() if watermark - r[_LAST] >= p.idle_s]
        w = p.ewma_weight
        for key in done:
            calls, tokens, _, _, alerted = self.requests.pop(key)
            if alerted:
                continue
            base = self.baselines.get(key[:2])
            if base is None:
                base = self.baselines[key[:2]] = [p.prior_calls, p.prior_tokens]
            base[0] += w * (calls - base[0])
            base[1] += w * (tokens - base[1])

    def snapshot(self) -> dict[str, Any]:
        return {"requests": [[list(k), *r] for k, r in self.requests.items()],
                "baselines": [[list(k), v] for k, v in self.baselines.items()], "swept_at": self._swept_at}

    def restore(self, data: dict[str, Any]) -> None:
        self.requests = {tuple(k): (c, t, f, la, a) for k, c, t, f, la, a in data["requests"]}
        self.baselines = {tuple(k): list(v) for k, v in data["baselines"]}
        self._swept_at = data["swept_at"]
