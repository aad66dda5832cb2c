"""All detectors behind one batch interface, and the per-batch aggregation that feeds them.

The worker's throughput matters, so per event the pipeline only adds the event to a few
per-batch dicts keyed by (scope, 10-second window) (:meth:`BatchWindows.add`); the detectors then
see one aggregate per (scope, window) per batch (:meth:`Detectors.observe`).

Suppression: a tenant+feature spike is not reported while the tenant-level spike of the same
kind is open (the tenant alert already says it, and its directive already covers the feature).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from operator import itemgetter
from typing import Any

from flyball.schemas import Alert, AlertKind, LLMCall
from flyball.schemas.events import CallStatus, Envelope, Retrieval, SafetyTrigger, ToolCall

from .base import BASE_WINDOW_S, AlertBook
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
_FAILURE_SLOT = {status: 1 + i for i, status in enumerate(LLM_FAILURES)}  # models[...] index of its count
# where each BatchWindows list's ids end (ids start after the fixed fields)
_USAGE_IDS_END = 6 + MAX_IDS
_MODEL_IDS_END = 8 + MAX_IDS
_TOOL_IDS_END = 5 + MAX_IDS
_SAFETY_IDS_END = 3 + MAX_IDS
_RETRIEVAL_IDS_END = 5 + MAX_IDS
_UTC = UTC
_at = datetime.fromtimestamp
_NEVER_LO = datetime.max.replace(tzinfo=UTC)  # an empty [lo, hi): no datetime is in it
_NEVER_HI = datetime.min.replace(tzinfo=UTC)
_CACHE_LIMIT_S = 2**33

try:  # the compiled per-event add (_windows.c, built by setup.py); optional: add is the definition
    from . import _windows as _native
except ImportError:  # pragma: no cover - a build without a C compiler
    _native = None
else:
    from ..decode import FastLLMCall

    _native.bind(FastLLMCall, CallStatus("ok"), tuple(CallStatus(s) for s in LLM_FAILURES), _ZERO, BASE_WINDOW_S,
                 _USAGE_IDS_END, _MODEL_IDS_END)


class BatchWindows:
    """One batch's events summed per (scope, 10 s window). Flat lists, not objects, for speed:

    usage[(tenant, feature, w)]        = [cost, tokens, first, last, max cost, max tokens, *ids]
    requests[(tenant, feature, rid)]   = i: r_calls[i], r_tokens[i], r_first[i], r_last[i]; the ids of
                                         request i are r_ids[j] for each j with r_owner[j] == i
    models[(provider, model, w)]       = [calls, errors, timeouts, rate_limited, latencies, ttfts, first, last, *ids]
    tools[(tool, w)]                   = [calls, failures, latencies, first, last, *ids]
    safety[(tenant, feature, cat, w)]  = [count, first, last, *ids]
    retrieval[(index, w)]              = [calls, errors, empty, first, last, *ids]

    first/last are the events' own ``ts`` (aware datetimes, compared as such: the same order as
    their epoch seconds); the detectors convert them to epoch seconds once per group, not once per
    event. ids (at most ``MAX_IDS``, in arrival order; models, tools and retrieval keep failing
    events only) are the tail of the list, so a new key costs one list, not two. A batch has a
    request for every few calls, so requests get no list each but columns: no container per
    request for the garbage collector to promote and traverse (their ids are only looked up
    for a request that alerts).
    """

    __slots__ = ("_hi", "_lo", "_prev", "_w", "models", "r_calls", "r_first", "r_ids", "r_last", "r_owner",
                 "r_tokens", "requests", "retrieval", "safety", "tools", "usage")

    def __init__(self) -> None:
        self.usage: dict[tuple[str, str, int], list[Any]] = {}
        self.requests: dict[tuple[str, str, str], int] = {}
        self.r_calls: list[int] = []
        self.r_tokens: list[int] = []
        self.r_first: list[datetime] = []
        self.r_last: list[datetime] = []
        self.r_owner: list[int] = []
        self.r_ids: list[str] = []
        self.models: dict[tuple[str, str, int], list[Any]] = {}
        self.tools: dict[tuple[str, int], list[Any]] = {}
        self.safety: dict[tuple[str, str, str, int], list[Any]] = {}
        self.retrieval: dict[tuple[str, int], list[Any]] = {}
        # the 10 s window of the latest event, as [lo, hi) datetimes: events mostly arrive in time
        # order, so two datetime comparisons usually replace ts.timestamp() (the dearest part of add)
        self._lo: datetime = _NEVER_LO
        self._hi: datetime = _NEVER_HI
        self._w = 0
        self._prev: tuple[datetime, datetime, int] = (_NEVER_LO, _NEVER_HI, 0)

    def _window(self, ts: datetime) -> int:
        """``int(ts.timestamp()) // BASE_WINDOW_S``, and remember that window's bounds."""
        lo, hi, w = self._prev
        if lo <= ts < hi:
            self._prev = (self._lo, self._hi, self._w)
            self._lo, self._hi, self._w = lo, hi, w
            return w
        t = ts.timestamp()
        w = int(t) // BASE_WINDOW_S
        # cache only where the window of a datetime and of its epoch seconds provably agree: t >= 0
        # (int() truncates towards zero) and below 2**33 s (year 2242: a float still resolves 1 us)
        if 0 <= t < _CACHE_LIMIT_S:
            self._prev = (self._lo, self._hi, self._w)
            self._lo = _at(w * BASE_WINDOW_S, _UTC)
            self._hi = _at((w + 1) * BASE_WINDOW_S, _UTC)
            self._w = w
        return w

    def adder(self) -> Callable[[Any, Decimal | None], None]:
        """This batch's per-event ``add``: the compiled one when it was built (it does the same
        for a fast-path ``llm_call`` in UTC with a ``CallStatus`` and calls :meth:`add` for every
        other event), else
        :meth:`add` itself."""
        if _native is None:
            return self.add
        return _native.Adder(self.usage, self.models, self.requests, self.r_calls, self.r_tokens, self.r_first,
                             self.r_last, self.r_owner, self.r_ids, self.add)

    def request_ids(self, i: int) -> list[str]:
        """The first ``MAX_IDS`` event ids of request ``i``, in arrival order (wanted only for a
        request that alerts: found by ``list.index``, a scan in C, rather than kept per request)."""
        owner, ids = self.r_owner, self.r_ids
        out: list[str] = []
        j = -1
        try:
            while len(out) < MAX_IDS:
                j = owner.index(i, j + 1)
                out.append(ids[j])
        except ValueError:
            pass
        return out

    def add(self, event: Envelope, cost: Decimal | None) -> None:
        # hot path: one call per event, for a pydantic model or its fast mirror (decode.py) alike.
        # The window comes from the cached bounds (ts.timestamp() costs more than the rest of an
        # event's sums), plain comparisons replace min()/max(), and ids share the sums' list.
        ts = event.ts
        if self._lo <= ts < self._hi:
            w = self._w
        else:
            w = self._window(ts)
        kind = event.event_type
        if kind == "llm_call":
            e: LLMCall = event  # type: ignore[assignment]
            eid = e.event_id
            tenant = e.tenant_id
            feature = e.feature
            tokens = e.input_tokens + e.output_tokens
            key = (tenant, feature, w)
            usage = self.usage
            u = usage.get(key)
            if u is None:
                c = cost if cost is not None else _ZERO
                usage[key] = [c, tokens, ts, ts, c, tokens, eid]
            else:
                if cost is not None:
                    u[0] += cost
                    if cost > u[4]:  # noqa: PLR1730 - max() costs a call per event
                        u[4] = cost
                u[1] += tokens
                if tokens > u[5]:  # noqa: PLR1730
                    u[5] = tokens
                if ts < u[2]:
                    u[2] = ts
                elif ts > u[3]:
                    u[3] = ts
                if len(u) < _USAGE_IDS_END:
                    u.append(eid)
            rid = e.request_id or e.trace_id
            if rid:
                rkey = (tenant, feature, rid)
                requests = self.requests
                i = requests.get(rkey)
                if i is None:
                    i = requests[rkey] = len(self.r_calls)
                    self.r_calls.append(1)
                    self.r_tokens.append(tokens)
                    self.r_first.append(ts)
                    self.r_last.append(ts)
                else:
                    self.r_calls[i] += 1
                    self.r_tokens[i] += tokens
                    if ts < self.r_first[i]:
                        self.r_first[i] = ts
                    elif ts > self.r_last[i]:
                        self.r_last[i] = ts
                self.r_owner.append(i)
                self.r_ids.append(eid)
            mkey = (e.provider, e.model, w)
            models = self.models
            m = models.get(mkey)
            if m is None:
                m = models[mkey] = [1, 0, 0, 0, [], [], ts, ts]
            else:
                m[0] += 1
                if ts < m[6]:
                    m[6] = ts
                elif ts > m[7]:
                    m[7] = ts
            status = e.status
            if status == "ok":
                m[4].append(e.latency_ms)
                ttft = e.ttft_ms
                if ttft is not None:
                    m[5].append(ttft)
            else:
                slot = _FAILURE_SLOT.get(status)
                if slot is not None:
                    m[slot] += 1
                    if len(m) < _MODEL_IDS_END:
                        m.append(eid)
        elif kind == "tool_call":
            tc: ToolCall = event  # type: ignore[assignment]
            tkey = (tc.tool_name, w)
            x = self.tools.get(tkey)
            if x is None:
                x = self.tools[tkey] = [1, 0, [], ts, ts]
            else:
                x[0] += 1
                if ts < x[3]:
                    x[3] = ts
                elif ts > x[4]:
                    x[4] = ts
            status = tc.status
            if status == "ok":
                x[2].append(tc.latency_ms)
            elif status != "cancelled":
                x[1] += 1
                if len(x) < _TOOL_IDS_END:
                    x.append(tc.event_id)
        elif kind == "safety_trigger":
            st: SafetyTrigger = event  # type: ignore[assignment]
            skey = (st.tenant_id, st.feature, st.category, w)
            x = self.safety.get(skey)
            if x is None:
                self.safety[skey] = [1, ts, ts, st.event_id]
            else:
                x[0] += 1
                if ts < x[1]:
                    x[1] = ts
                elif ts > x[2]:
                    x[2] = ts
                if len(x) < _SAFETY_IDS_END:
                    x.append(st.event_id)
        elif kind == "retrieval":
            rv: Retrieval = event  # type: ignore[assignment]
            ikey = (rv.index_name, w)
            x = self.retrieval.get(ikey)
            if x is None:
                x = self.retrieval[ikey] = [1, 0, 0, ts, ts]
            else:
                x[0] += 1
                if ts < x[3]:
                    x[3] = ts
                elif ts > x[4]:
                    x[4] = ts
            status = rv.status
            if status == "ok":
                if rv.results_count == 0:
                    x[2] += 1
                    if len(x) < _RETRIEVAL_IDS_END:
                        x.append(rv.event_id)
            elif status != "cancelled":
                x[1] += 1
                if len(x) < _RETRIEVAL_IDS_END:
                    x.append(rv.event_id)


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
        if b.usage:
            self._spikes(b, out)
        if b.requests:
            for key, i in self.runaway.check_batch(b.requests, b.r_calls, b.r_tokens, b.r_first, b.r_last):
                alert = self.runaway.fire(key, b.request_ids(i))
                if alert is not None:
                    out.append(alert)
        # first/last come as event datetimes; the detectors take epoch seconds (one conversion per
        # group: the same value as the events' own ts.timestamp(), which the minimum/maximum keep).
        # Groups are judged in the order of their 10 s window (a stable sort of the keys).
        # Per kind of group: (groups, n = where the window sits in the key (the scope is key[:n]),
        # where first/last sit in the sums, and per detector: (observe, where its value sits, where
        # the group's ids sit (None: no ids), judged even without values))
        kinds: tuple[tuple[dict[Any, list[Any]], int, int, tuple[_Check, ...]], ...] = (
            (b.models, 2, 6, ((self.errors.observe, _COUNTS4, _IDS8, True),
                              (self.latency.observe, 4, None, True),
                              (self.ttft.observe, 5, None, False))),
            (b.tools, 1, 3, ((self.tool_failures.observe, _COUNTS2, _IDS5, True),
                             (self.tool_latency.observe, 2, None, True))),
            (b.safety, 3, 1, ((self.safety.observe, 0, _IDS3, True),)),
            (b.retrieval, 1, 3, ((self.retrieval.observe, _COUNTS3, _IDS5, True),)),
        )
        for groups, n, at, checks in kinds:
            for k in sorted(groups, key=_WINDOW_AT[n]):
                x = groups[k]
                first, last = x[at], x[at + 1]
                ft = first.timestamp()
                lt = ft if last is first else last.timestamp()
                scope, w = k[:n], k[n]
                for observe, value, ids, always in checks:
                    if always or x[value]:
                        alert = observe(scope, w, x[value], ft, lt, [] if ids is None else x[ids])
                        if alert is not None:
                            out.append(alert)
        return out

    def _spikes(self, b: BatchWindows, out: list[Alert]) -> None:
        cw, tw = self.cost.params.window_s, self.tokens.params.window_s
        # samples per (key, spike window, 10 s sub-window), so each detector also judges its trailing
        # span: [amount, first, last, ids, peak], times as event datetimes (made alert datetimes only
        # when an alert needs them), token amounts as ints (exact: the series add them to Decimal sums).
        # The (scope, 10 s window) sums are taken in the order of their window (a stable sort), so
        # each dict of samples is built in the order the detectors judge it (as sorting it was).
        cost_t: dict[tuple[str, int, int], list[Any]] = {}
        cost_f: dict[tuple[str, int, int], list[Any]] = {}
        tok_t: dict[tuple[str, int, int], list[Any]] = {}
        tok_f: dict[tuple[str, int, int], list[Any]] = {}
        usage = b.usage
        for k in sorted(usage, key=_THIRD):
            u = usage[k]
            tenant, feature, w = k
            cost, tokens, first, last, top_cost, top_tokens = u[0], u[1], u[2], u[3], u[4], u[5]
            ids = u[6:]  # shared by the new samples below: a merge makes a new list (_merge)
            t = w * BASE_WINDOW_S
            scopes = ((tenant, cost_t, tok_t), (tenant + KEY_SEP + feature, cost_f, tok_f)) if feature else \
                ((tenant, cost_t, tok_t),)
            for scope, by_cost, by_tokens in scopes:
                ck = (scope, t // cw, w)
                tk = ck if tw == cw else (scope, t // tw, w)
                x = by_cost.get(ck)
                if x is None:
                    by_cost[ck] = [cost, first, last, ids, top_cost]
                    by_tokens[tk] = [tokens, first, last, ids, top_tokens]
                    continue
                _merge(x, cost, first, last, ids, top_cost)
                _merge(by_tokens[tk], tokens, first, last, ids, top_tokens)
        # tenant samples first; a feature spike opening while its tenant's spike is open is suppressed
        for det, parent, samples in ((self.cost, None, cost_t), (self.tokens, None, tok_t),
                                     (self.cost_feature, self.cost, cost_f), (self.tokens_feature, self.tokens, tok_f)):
            judge_sub = det.params.window_s > BASE_WINDOW_S
            observe, state = det.observe_at, det.state
            for (key, w, sub), x in samples.items():
                if parent is None:
                    was_open = True
                else:
                    series = state.get(key)
                    was_open = series is not None and series.open is not None
                alert = observe(key, w, x[0], x[4], x[1], x[2], x[3], sub if judge_sub else None)
                if alert is None:
                    continue
                if parent is not None and not was_open and parent.is_open(key.split(KEY_SEP, 1)[0]):
                    det.state[key].open = None  # suppressed: never published, so never resolved
                    continue
                out.append(alert)

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

    def adopt(self, data: dict[str, Any], owns: Callable[[str], bool]) -> int:
        """Take over, from another replica's :meth:`snapshot`, the per-tenant baselines (cost and
        token spikes per tenant and tenant+feature, safety bursts) of the tenants ``owns`` says
        this replica now consumes, where it has none of its own: after a rebalance moves a
        tenant's partition, the new owner judges its next spike against the old owner's history
        instead of starting cold. Per provider, tool and index the statistics stay each
        replica's own. Returns the number of series taken."""
        if data.get("version") != 1:
            return 0
        taken = sum(getattr(self, name).adopt(data.get(name) or {}, owns) for name in _SPIKE_PARTS)
        return taken + self.safety.adopt(data.get("safety") or [], owns)

    def restore(self, data: dict[str, Any]) -> None:
        if data.get("version") != 1:
            raise ValueError(f"detector state: unsupported version {data.get('version')!r}")
        self.book.restore(data["book"])
        self._evicted_at = data["evicted_at"]
        for name in _PARTS:
            getattr(self, name).restore(data[name])


_PARTS = ("cost", "cost_feature", "tokens", "tokens_feature", "runaway", "errors", "latency", "ttft",
          "tool_failures", "tool_latency", "safety", "retrieval")
_SPIKE_PARTS = ("cost", "cost_feature", "tokens", "tokens_feature")


_THIRD = itemgetter(2)  # sort key: the 10 s window's place in a usage key
_WINDOW_AT = {n: itemgetter(n) for n in (1, 2, 3)}  # the same for each kind of group in observe
_COUNTS2, _COUNTS3, _COUNTS4 = slice(2), slice(3), slice(4)  # BatchWindows lists' fixed fields
_IDS3, _IDS5, _IDS8 = slice(3, None), slice(5, None), slice(8, None)  # ... and their ids
_Check = tuple[Callable[..., Alert | None], int | slice, slice | None, bool]  # one detector of observe's table


def _merge(s: list[Any], amount: Any, first: datetime, last: datetime, ids: list[str], peak: Any) -> None:
    """Add one (scope, 10 s window) sum to a spike sample."""
    s[0] += amount
    if peak > s[4]:  # noqa: PLR1730 - max()/min() cost a call each
        s[4] = peak
    if first < s[1]:  # noqa: PLR1730
        s[1] = first
    if last > s[2]:  # noqa: PLR1730
        s[2] = last
    have = s[3]
    if len(have) < MAX_IDS:
        s[3] = have + ids[:MAX_IDS - len(have)]  # a new list: ``have`` may be shared
