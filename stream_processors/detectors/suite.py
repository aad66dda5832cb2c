"""All detectors behind one batch interface, and the per-batch aggregation that feeds them.

The worker's throughput matters, so per event the pipeline only adds the event to a few
per-batch dicts keyed by (scope, 10-second window) (:meth:`BatchWindows.add`); the detectors then
see one aggregate per (scope, window) per batch (:meth:`Detectors.observe`).

Suppression: a tenant+feature spike is not reported while the tenant-level spike of the same
kind is open (the tenant alert already says it, and its directive already covers the feature).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from flyball.schemas import Alert, AlertKind, LLMCall
from flyball.schemas.events import Envelope, Retrieval, SafetyTrigger, ToolCall

from .base import BASE_WINDOW_S, AlertBook, WindowSample, at
from .rates import BinomialRateDetector, LatencyDetector, PoissonBurstDetector
from .runaway import RunawayDetector
from .spike import (
    COST_PARAMS,
    KEY_SEP,
    TOKEN_PARAMS,
    CostSpikeDetector,
    RateSpikeDetector,
    SpikeParams,
)

MAX_IDS = 10
_ZERO = Decimal(0)
LLM_FAILURES = ("error", "timeout", "rate_limited")


class BatchWindows:
    """One batch's events summed per (scope, 10 s window). Lists, not objects, for speed:

    usage[(tenant, feature, w)]        = [cost, tokens, calls, first, last, ids, max cost, max tokens]
    requests[(tenant, feature, rid)]   = [calls, tokens, first, last, ids]
    models[(provider, model, w)]       = [calls, errors, timeouts, rate_limited, latencies, ttfts, first, last, ids]
    tools[(tool, w)]                   = [calls, failures, latencies, first, last, ids]
    safety[(tenant, feature, cat, w)]  = [count, first, last, ids]
    retrieval[(index, w)]              = [calls, errors, empty, first, last, ids]
    (first/last are epoch seconds of event time; ids prefer failing events.)
    """

    __slots__ = ("models", "requests", "retrieval", "safety", "tools", "usage")

    def __init__(self) -> None:
        self.usage: dict[tuple[str, str, int], list[Any]] = {}
        self.requests: dict[tuple[str, str, str], list[Any]] = {}
        self.models: dict[tuple[str, str, int], list[Any]] = {}
        self.tools: dict[tuple[str, int], list[Any]] = {}
        self.safety: dict[tuple[str, str, str, int], list[Any]] = {}
        self.retrieval: dict[tuple[str, int], list[Any]] = {}

    def add(self, event: Envelope, cost: Decimal | None) -> None:
        # hot path: one call per event; plain comparisons instead of min()/max() on purpose
        t = event.ts.timestamp()
        w = int(t) // BASE_WINDOW_S
        eid = event.event_id
        kind = event.event_type  # a pydantic model or its fast mirror (decode.py)
        if kind == "llm_call":
            e: LLMCall = event
            tokens = e.input_tokens + e.output_tokens
            key = (e.tenant_id, e.feature, w)
            u = self.usage.get(key)
            if u is None:
                c = cost if cost is not None else _ZERO
                self.usage[key] = [c, tokens, 1, t, t, [eid], c, tokens]
            else:
                if cost is not None:
                    u[0] += cost
                    u[6] = max(u[6], cost)
                u[1] += tokens
                u[7] = max(u[7], tokens)
                u[2] += 1
                if t < u[3]:
                    u[3] = t
                elif t > u[4]:
                    u[4] = t
                if len(u[5]) < MAX_IDS:
                    u[5].append(eid)
            rid = e.request_id or e.trace_id
            if rid:
                rkey = (e.tenant_id, e.feature, rid)
                r = self.requests.get(rkey)
                if r is None:
                    self.requests[rkey] = [1, tokens, t, t, [eid]]
                else:
                    r[0] += 1
                    r[1] += tokens
                    if t < r[2]:
                        r[2] = t
                    elif t > r[3]:
                        r[3] = t
                    if len(r[4]) < MAX_IDS:
                        r[4].append(eid)
            mkey = (e.provider, e.model, w)
            m = self.models.get(mkey)
            if m is None:
                m = self.models[mkey] = [0, 0, 0, 0, [], [], t, t, []]
            else:
                if t < m[6]:
                    m[6] = t
                elif t > m[7]:
                    m[7] = t
            m[0] += 1
            status = e.status
            if status == "ok":
                m[4].append(e.latency_ms)
                if e.ttft_ms is not None:
                    m[5].append(e.ttft_ms)
            elif status in LLM_FAILURES:
                m[1 + LLM_FAILURES.index(status)] += 1
                if len(m[8]) < MAX_IDS:
                    m[8].append(eid)
        elif kind == "tool_call":
            tc: ToolCall = event
            tkey = (tc.tool_name, w)
            x = self.tools.get(tkey)
            if x is None:
                x = self.tools[tkey] = [0, 0, [], t, t, []]
            elif t < x[3]:
                x[3] = t
            elif t > x[4]:
                x[4] = t
            x[0] += 1
            if tc.status == "ok":
                x[2].append(tc.latency_ms)
            elif tc.status != "cancelled":
                x[1] += 1
                if len(x[5]) < MAX_IDS:
                    x[5].append(eid)
        elif kind == "safety_trigger":
            st: SafetyTrigger = event
            skey = (st.tenant_id, st.feature, st.category, w)
            x = self.safety.get(skey)
            if x is None:
                self.safety[skey] = [1, t, t, [eid]]
            else:
                x[0] += 1
                if t < x[1]:
                    x[1] = t
                elif t > x[2]:
                    x[2] = t
                if len(x[3]) < MAX_IDS:
                    x[3].append(eid)
        elif kind == "retrieval":
            rv: Retrieval = event
            ikey = (rv.index_name, w)
            x = self.retrieval.get(ikey)
            if x is None:
                x = self.retrieval[ikey] = [0, 0, 0, t, t, []]
            elif t < x[3]:
                x[3] = t
            elif t > x[4]:
                x[4] = t
            x[0] += 1
            if rv.status == "ok":
                if rv.results_count == 0:
                    x[2] += 1
                    if len(x[5]) < MAX_IDS:
                        x[5].append(eid)
            elif rv.status != "cancelled":
                x[1] += 1
                if len(x[5]) < MAX_IDS:
                    x[5].append(eid)


@dataclass(slots=True)
class Detectors:
    """Every detector of the worker; ``observe`` one batch, ``advance`` the watermark."""

    cost: RateSpikeDetector = field(default_factory=lambda: CostSpikeDetector(COST_PARAMS))
    cost_params_feature: SpikeParams | None = None
    book: AlertBook = field(default_factory=AlertBook)
    cost_feature: RateSpikeDetector = field(init=False)
    tokens: RateSpikeDetector = field(init=False)
    tokens_feature: RateSpikeDetector = field(init=False)
    runaway: RunawayDetector = field(init=False)
    errors: BinomialRateDetector = field(init=False)
    latency: LatencyDetector = field(init=False)
    ttft: LatencyDetector = field(init=False)
    tool_failures: BinomialRateDetector = field(init=False)
    tool_latency: LatencyDetector = field(init=False)
    safety: PoissonBurstDetector = field(init=False)
    retrieval: BinomialRateDetector = field(init=False)
    _evicted_at: float = 0.0

    def __post_init__(self) -> None:
        tf = ("tenant_id", "feature")
        self.cost_feature = RateSpikeDetector(params=self.cost_params_feature or self.cost.params,
                                              scope_fields=tf)
        self.tokens = RateSpikeDetector(params=TOKEN_PARAMS, kind=AlertKind.TOKEN_SPIKE,
                                        metric="tokens_per_window", unit="tokens")
        self.tokens_feature = RateSpikeDetector(params=TOKEN_PARAMS, kind=AlertKind.TOKEN_SPIKE,
                                                metric="tokens_per_window", unit="tokens", scope_fields=tf)
        self.runaway = RunawayDetector(self.book)
        self.errors = BinomialRateDetector(AlertKind.ERROR_RATE, ("provider", "model"), LLM_FAILURES, self.book)
        self.latency = LatencyDetector(AlertKind.LATENCY, ("provider", "model"), self.book)
        self.ttft = LatencyDetector(AlertKind.LATENCY, ("provider", "model"), self.book, metric="ttft_ms_p95")
        self.tool_failures = BinomialRateDetector(AlertKind.TOOL_FAILURE, ("tool_name",), ("failure",), self.book)
        self.tool_latency = LatencyDetector(AlertKind.LATENCY, ("tool_name",), self.book)
        self.safety = PoissonBurstDetector(AlertKind.SAFETY_BURST, ("tenant_id", "feature", "category"), self.book)
        self.retrieval = BinomialRateDetector(AlertKind.RETRIEVAL_FAILURE, ("index_name",), ("error", "empty"),
                                              self.book)

    def observe(self, b: BatchWindows) -> list[Alert]:
        out: list[Alert] = []

        def emit(alert: Alert | None) -> None:
            if alert is not None:
                out.append(alert)

        if b.usage:
            self._spikes(b, emit)
        for (tenant, feature, rid), (calls, tokens, first, last, ids) in b.requests.items():
            emit(self.runaway.observe((tenant, feature, rid), calls, tokens, first, last, ids))
        for (provider, model, w), m in sorted(b.models.items(), key=lambda kv: kv[0][2]):
            key = (provider, model)
            emit(self.errors.observe(key, w, m[:4], m[6], m[7], m[8]))
            emit(self.latency.observe(key, w, m[4], m[6], m[7], []))
            if m[5]:
                emit(self.ttft.observe(key, w, m[5], m[6], m[7], []))
        for (tool, w), x in sorted(b.tools.items(), key=lambda kv: kv[0][1]):
            emit(self.tool_failures.observe((tool,), w, x[:2], x[3], x[4], x[5]))
            emit(self.tool_latency.observe((tool,), w, x[2], x[3], x[4], []))
        for (tenant, feature, category, w), x in sorted(b.safety.items(), key=lambda kv: kv[0][3]):
            emit(self.safety.observe((tenant, feature, category), w, x[0], x[1], x[2], x[3]))
        for (index, w), x in sorted(b.retrieval.items(), key=lambda kv: kv[0][1]):
            emit(self.retrieval.observe((index,), w, x[:3], x[3], x[4], x[5]))
        return out

    def _spikes(self, b: BatchWindows, emit: Any) -> None:
        cw, tw = self.cost.params.window_s, self.tokens.params.window_s
        # samples per (key, spike window, 10 s sub-window), so each detector also judges its trailing span
        cost_t: dict[tuple[str, int, int], WindowSample] = {}
        cost_f: dict[tuple[str, int, int], WindowSample] = {}
        tok_t: dict[tuple[str, int, int], WindowSample] = {}
        tok_f: dict[tuple[str, int, int], WindowSample] = {}
        for (tenant, feature, w), (cost, tokens, _calls, first, last, ids, top_cost, top_tokens) in b.usage.items():
            t = w * BASE_WINDOW_S
            first_dt, last_dt = at(first), at(last)
            _add(cost_t, (tenant, t // cw, w), cost, first_dt, last_dt, ids, top_cost)
            _add(tok_t, (tenant, t // tw, w), Decimal(tokens), first_dt, last_dt, ids, Decimal(top_tokens))
            if feature:
                fkey = tenant + KEY_SEP + feature
                _add(cost_f, (fkey, t // cw, w), cost, first_dt, last_dt, ids, top_cost)
                _add(tok_f, (fkey, t // tw, w), Decimal(tokens), first_dt, last_dt, ids, Decimal(top_tokens))
        for det, samples in ((self.cost, cost_t), (self.tokens, tok_t)):
            for (key, w, sub), s in sorted(samples.items(), key=lambda kv: kv[0][2]):
                emit(det.observe(key, w, s, sub=sub if det.params.window_s > BASE_WINDOW_S else None))
        for det, parent, samples in ((self.cost_feature, self.cost, cost_f), (self.tokens_feature, self.tokens, tok_f)):
            for (key, w, sub), s in sorted(samples.items(), key=lambda kv: kv[0][2]):
                was_open = det.is_open(key)
                alert = det.observe(key, w, s, sub=sub if det.params.window_s > BASE_WINDOW_S else None)
                if alert is not None and not was_open and parent.is_open(key.split(KEY_SEP, 1)[0]):
                    det.state[key].open = None  # suppressed: never published, so never resolved
                    continue
                emit(alert)

    def advance(self, watermark: datetime) -> list[Alert]:
        t = watermark.timestamp()
        out: list[Alert] = []
        for spiky in (self.cost, self.tokens, self.cost_feature, self.tokens_feature):
            out.extend(spiky.advance(watermark))
        out.extend(self.book.sweep(t))
        self.runaway.close_idle(t)
        if t - self._evicted_at >= 600:
            self._evicted_at = t
            for spike in (self.cost, self.tokens, self.cost_feature, self.tokens_feature):
                spike.evict(watermark)
            newest = int(t) // BASE_WINDOW_S
            for other in (self.errors, self.latency, self.ttft, self.tool_failures, self.tool_latency,
                          self.safety, self.retrieval):
                other.evict(newest)
        return out

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able state: what a restarted worker needs to keep its baselines."""
        return {
            "version": 1, "book": self.book.snapshot(), "evicted_at": self._evicted_at,
            **{name: getattr(self, name).snapshot() for name in _PARTS},
        }

    def restore(self, data: dict[str, Any]) -> None:
        if data.get("version") != 1:
            raise ValueError(f"detector state: unsupported version {data.get('version')!r}")
        self.book.restore(data["book"])
        self._evicted_at = data["evicted_at"]
        for name in _PARTS:
            getattr(self, name).restore(data[name])


_PARTS = ("cost", "cost_feature", "tokens", "tokens_feature", "runaway", "errors", "latency", "ttft",
          "tool_failures", "tool_latency", "safety", "retrieval")


def _add(into: dict[tuple[str, int, int], WindowSample], key: tuple[str, int, int], amount: Decimal, first: datetime,
         last: datetime, ids: list[str], peak: Decimal) -> None:
    s = into.get(key)
    if s is None:
        into[key] = WindowSample(amount, first, last, list(ids), peak)
    else:
        s.amount += amount
        s.peak = max(s.peak, peak)
        s.first_ts = min(s.first_ts, first)
        s.last_ts = max(s.last_ts, last)
        if len(s.event_ids) < MAX_IDS:
            s.event_ids.extend(ids[:MAX_IDS - len(s.event_ids)])
