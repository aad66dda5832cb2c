"""Runaway loops: calls or tokens per request exploding (agent loops, retry storms).

Per request (``request_id``, or ``trace_id`` when the request id is empty) the detector counts
LLM calls and tokens while the request is active; a request idle for ``idle_s`` of event time is
closed and folded into its tenant+feature baseline.

baseline   EWMA of calls per request, of its square and of tokens per request for the
           tenant+feature, weight ``ewma_weight`` (0.02: about the last 50 requests), starting from
           a prior of 3 calls (Poisson spread) and 6,000 tokens; requests that alerted are not
           learned from;
threshold  calls >= max(``min_events``, ``min_ratio`` x baseline calls, the calls that the
           feature's own distribution of calls per request reaches with probability below
           ``p_value``: a quasi-Poisson tail with the dispersion var/mean of its own requests,
           at least Poisson's) (``Sensitivity`` of ``runaway_loop``: 8 calls, 1e-4 and 2x), or tokens >=
           max(``min_tokens``, ``factor`` x baseline tokens) with at least max(``token_min_calls``,
           ``min_ratio`` x baseline calls) calls (one huge call is no loop). The floors (8 calls, 400,000
           tokens) keep a feature whose requests are all tiny from flagging a normal long
           conversation; the 2x keeps a feature whose agents always take 10 steps from alerting on
           a 12-step one; the tail keeps an agent whose requests vary a lot from alerting on its
           own long ones (an agent of 2-5 steps alerts at about 13 calls, not at 8x its mean of 3.5, 28).
           A request is a single trajectory, not a rate: the counts only ever grow, and the alert
           fires the moment a count crosses. Score = max of the two ratios count / threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flyball.schemas import Alert, AlertKind, Scope
from scipy.stats import poisson

from .base import BASE_WINDOW_S, AlertBook, Evidence, ScopeBound, fmt
from .sensitivity import SensitivityTable


@dataclass(frozen=True, slots=True)
class RunawayParams:
    idle_s: float = 300.0
    ewma_weight: float = 0.02
    prior_calls: float = 3.0
    prior_tokens: float = 6_000.0
    min_tokens: int = 400_000
    factor: float = 8.0
    token_min_calls: int = 3


# A request's state is a tuple (calls, tokens, first_ts, last_ts, alerted), replaced when it
# changes: a worker holds thousands of open requests, and a tuple of plain values is no container
# for the garbage collector to promote and traverse, as an object per request would be.
_LAST = 3  # where last_ts sits


@dataclass(slots=True)
class RunawayDetector:
    book: AlertBook
    params: RunawayParams = field(default_factory=RunawayParams)
    sensitivity: SensitivityTable = field(default_factory=SensitivityTable)
    requests: dict[tuple[str, str, str], tuple[int, int, float, float, bool]] = field(default_factory=dict)
    baselines: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # [calls, tokens, calls^2]
    bound: ScopeBound = field(default_factory=ScopeBound)  # baselines kept at once; past it a feature keeps the prior
    _swept_at: float = 0.0
    _floor: int = field(init=False, default=0)  # the lowest call floor of any tenant (min_events)

    def __post_init__(self) -> None:
        self._floor = self.sensitivity.lowest(AlertKind.RUNAWAY_LOOP, "min_events")

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
        if r[0] < self._floor and r[1] < p.min_tokens:
            return False  # below both floors: no baseline can make it a runaway (the tenant's own
            # call floor, at least ``_floor``, is applied in ``_limits``)
        if max(self._ratios(key, r[0], r[1])) < 1.0:
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
        base = self.baselines.get(key[:2]) or self._prior()
        sens = self.sensitivity.of(AlertKind.RUNAWAY_LOOP, key[0])
        mean = max(base[0], 1e-9)
        phi = max((base[2] - mean * mean) / mean, 1.0)  # var/mean of its requests' calls, at least Poisson's
        tail = phi * (float(poisson.isf(sens.p_value, mean / phi)) + 1.0)  # P(calls >= tail) < p_value
        calls = max(float(sens.min_events), sens.min_ratio * mean, tail)
        return base, calls, max(float(p.min_tokens), p.factor * base[1])

    def _ratios(self, key: tuple[str, str, str], calls: int, tokens: int) -> tuple[float, float]:
        """A request's calls and tokens over their limits. The tokens count only once the request
        also has more calls than the feature's usual request (``min_ratio`` x its mean, at least
        ``token_min_calls``): a runaway loop is many calls, a single huge call is a token matter
        (``token_spike``), not a loop."""
        base, call_limit, token_limit = self._limits(key)
        need = max(float(self.params.token_min_calls), self.sensitivity.of(AlertKind.RUNAWAY_LOOP, key[0]).min_ratio * base[0])
        return calls / call_limit, (tokens / token_limit if calls >= need else 0.0)

    def _prior(self) -> list[float]:
        """[calls, tokens, calls squared] per request before a feature has history (Poisson spread)."""
        p = self.params
        return [p.prior_calls, p.prior_tokens, p.prior_calls * p.prior_calls + p.prior_calls]

    def calls_to_limit(self, key: tuple[str, str, str], batch_calls: int) -> int:
        """Which of the batch's ``batch_calls`` calls of a request :meth:`check` found over a limit
        took it to its call limit (1-based), or 0 if it was over before the batch or crossed by
        tokens: the alert's event time is that call's."""
        calls = self.requests[key][0]
        before = calls - batch_calls
        limit = math.ceil(self._limits(key)[1])
        return limit - before if before < limit <= calls else 0

    def fire(self, key: tuple[str, str, str], event_ids: list[str], at: float | None = None) -> Alert | None:
        """The alert of a request that :meth:`check` found over a limit; ``at``: the event time it
        crossed (default: its latest call's)."""
        calls, tokens, first_ts, last_ts, _ = self.requests[key]
        base, call_limit, token_limit = self._limits(key)
        by_call, by_token = self._ratios(key, calls, tokens)
        score = max(by_call, by_token)
        by_calls = by_call >= by_token
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
        if at is None or not first_ts <= at < last_ts or self.book.is_open(AlertKind.RUNAWAY_LOOP, scope.key()):
            return self.book.fire(AlertKind.RUNAWAY_LOOP, scope, ev)
        # opened when it crossed, and still abnormal at its latest call (so it does not resolve
        # as if the request had stopped there)
        ev.last_ts = at
        opened = self.book.fire(AlertKind.RUNAWAY_LOOP, scope, ev)
        ev.last_ts = last_ts
        return self.book.fire(AlertKind.RUNAWAY_LOOP, scope, ev) or opened

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
                if not self.bound.admit(len(self.baselines), key[0]):
                    continue
                base = self.baselines[key[:2]] = self._prior()
            base[0] += w * (calls - base[0])
            base[1] += w * (tokens - base[1])
            base[2] += w * (calls * calls - base[2])

    def snapshot(self) -> dict[str, Any]:
        return {"requests": [[list(k), *r] for k, r in self.requests.items()],
                "baselines": [[list(k), v] for k, v in self.baselines.items()], "swept_at": self._swept_at}

    def restore(self, data: dict[str, Any]) -> None:
        self.requests = {tuple(k): (c, t, f, la, a) for k, c, t, f, la, a in data["requests"]}
        # a snapshot from before the calls' spread: Poisson's (var = mean) until it is learned
        self.baselines = {tuple(k): list(v) if len(v) > 2 else [*v, v[0] * v[0] + v[0]] for k, v in data["baselines"]}
        self._swept_at = data["swept_at"]
