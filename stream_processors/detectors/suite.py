"""All detectors behind one batch interface, and the per-batch aggregation that feeds them.

The worker's throughput matters, so per event the pipeline only adds the event to a few
per-batch dicts keyed by (scope, 10-second window) (:meth:`BatchWindows.add`); the detectors then
see one aggregate per (scope, window) per batch (:meth:`Detectors.observe`).

Suppression: a tenant+feature spike is not reported while the tenant-level spike of the same
kind is open (the tenant alert already says it, and its directive already covers the feature).
Grouping: every alert leaves with the ``incident_id`` of its incident (``incidents.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from operator import itemgetter
from typing import Any

from flyball.schemas import Alert, AlertKind, LLMCall
from flyball.schemas.events import Envelope, Retrieval, SafetyTrigger, ToolCall

from .amounts import KEY_SEP, AmountSpikeDetector
from .base import BASE_WINDOW_S, MAX_SCOPES, MAX_TENANT_SCOPES, AlertBook, ScopeBound
from .incidents import IncidentGrouper
from .rates import BinomialRateDetector, LatencyDetector, PoissonBurstDetector
from .runaway import RunawayDetector
from .sensitivity import SensitivityTable

MAX_IDS = 10
_ZERO = Decimal(0)
LLM_FAILURES = ("error", "timeout", "rate_limited")
_FAILURE_SLOT = {status: 1 + i for i, status in enumerate(LLM_FAILURES)}  # models[...] index of its count
# where each BatchWindows list's ids end (ids start after the fixed fields)
_USAGE_IDS_END = 7 + MAX_IDS
_MODEL_IDS_END = 8 + MAX_IDS
_TOOL_IDS_END = 5 + MAX_IDS
_SAFETY_IDS_END = 3 + MAX_IDS
_RETRIEVAL_IDS_END = 5 + MAX_IDS
_UTC = UTC
_at = datetime.fromtimestamp
_NEVER_LO = datetime.max.replace(tzinfo=UTC)  # an empty [lo, hi): no datetime is in it
_NEVER_HI = datetime.min.replace(tzinfo=UTC)
_CACHE_LIMIT_S = 2**33

class BatchWindows:
    """One batch's events summed per (scope, 10 s window). Flat lists, not objects, for speed:

    usage[(tenant, feature, w)]        = [cost, tokens, first, last, max cost, max tokens, calls, *ids]
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
                 "r_tokens", "r_ts", "requests", "retrieval", "safety", "tools", "usage")

    def __init__(self) -> None:
        self.usage: dict[tuple[str, str, int], list[Any]] = {}
        self.requests: dict[tuple[str, str, str], int] = {}
        self.r_calls: list[int] = []
        self.r_tokens: list[int] = []
        self.r_first: list[datetime] = []
        self.r_last: list[datetime] = []
        self.r_owner: list[int] = []
        self.r_ids: list[str] = []
        self.r_ts: list[datetime] = []  # each call's ts, beside r_ids
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

    def request_call_ts(self, i: int, n: int) -> datetime | None:
        """The ts of request ``i``'s ``n``-th call in this batch (1-based; arrival order), None if
        it has fewer: when a runaway request crossed its limit (wanted only for one that alerts)."""
        owner = self.r_owner
        j = -1
        try:
            for _ in range(n):
                j = owner.index(i, j + 1)
        except ValueError:
            return None
        return self.r_ts[j] if j >= 0 else None

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
                usage[key] = [c, tokens, ts, ts, c, tokens, 1, eid]
            else:
                if cost is not None:
                    u[0] += cost
                    if cost > u[4]:
                        u[4] = cost
                u[1] += tokens
                u[6] += 1
                if tokens > u[5]:
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
                self.r_ts.append(ts)
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
    """Every detector of the worker; ``observe`` one batch, ``advance`` the watermark.
    ``sensitivity`` sets their knobs per kind and tenant (``sensitivity.py``)."""

    sensitivity: SensitivityTable = field(default_factory=SensitivityTable)
    book: AlertBook = field(default_factory=AlertBook)
    incidents: IncidentGrouper = field(default_factory=IncidentGrouper)
    cost: AmountSpikeDetector = field(init=False)
    cost_feature: AmountSpikeDetector = field(init=False)
    tokens: AmountSpikeDetector = field(init=False)
    tokens_feature: AmountSpikeDetector = field(init=False)
    runaway: RunawayDetector = field(init=False)
    errors: BinomialRateDetector = field(init=False)
    latency: LatencyDetector = field(init=False)
    ttft: LatencyDetector = field(init=False)
    tool_failures: BinomialRateDetector = field(init=False)
    tool_latency: LatencyDetector = field(init=False)
    safety: PoissonBurstDetector = field(init=False)
    retrieval: BinomialRateDetector = field(init=False)
    max_scopes: int = MAX_SCOPES  # per detector (FLYBALL_DETECTOR_MAX_SCOPES; base.MAX_SCOPES)
    # per detector and tenant, of its features (FLYBALL_DETECTOR_MAX_TENANT_SCOPES; base.MAX_TENANT_SCOPES)
    max_tenant_scopes: int = MAX_TENANT_SCOPES
    _evicted_at: float = 0.0
    _reported: set[tuple[str, str]] = field(default_factory=set)  # (part, "" or tenant): bounds taken

    def __post_init__(self) -> None:
        tf = ("tenant_id", "feature")
        book, sens = self.book, self.sensitivity

        def amounts(kind: AlertKind, fields: tuple[str, ...]) -> AmountSpikeDetector:
            if kind == AlertKind.COST_SPIKE:
                return AmountSpikeDetector(kind, book, sens, scope_fields=fields)
            return AmountSpikeDetector(kind, book, sens, metric="tokens_per_window", unit="tokens", scope_fields=fields)

        self.cost = amounts(AlertKind.COST_SPIKE, ("tenant_id",))
        self.cost_feature = amounts(AlertKind.COST_SPIKE, tf)
        self.tokens = amounts(AlertKind.TOKEN_SPIKE, ("tenant_id",))
        self.tokens_feature = amounts(AlertKind.TOKEN_SPIKE, tf)
        self.runaway = RunawayDetector(book, sensitivity=sens)
        self.errors = BinomialRateDetector(AlertKind.ERROR_RATE, ("provider", "model"), LLM_FAILURES, book,
                                           sensitivity=sens)
        self.latency = LatencyDetector(AlertKind.LATENCY, ("provider", "model"), book, sensitivity=sens)
        self.ttft = LatencyDetector(AlertKind.LATENCY, ("provider", "model"), book, metric="ttft_ms_p95",
                                    sensitivity=sens)
        self.tool_failures = BinomialRateDetector(AlertKind.TOOL_FAILURE, ("tool_name",), ("failure",), book,
                                                  sensitivity=sens)
        self.tool_latency = LatencyDetector(AlertKind.LATENCY, ("tool_name",), book, sensitivity=sens)
        self.safety = PoissonBurstDetector(AlertKind.SAFETY_BURST, tf, book, sensitivity=sens)
        self.retrieval = BinomialRateDetector(AlertKind.RETRIEVAL_FAILURE, ("index_name",), ("error", "empty"), book,
                                              sensitivity=sens)
        for name in _PARTS:
            getattr(self, name).bound = ScopeBound(self.max_scopes,
                                                   self.max_tenant_scopes if name in _FEATURE_PARTS else 0)

    def take_capped(self) -> list[dict[str, Any]]:
        """The bounds reached since the last call, each once, for the worker to log: a detector
        at ``max_scopes`` (the looks at new scopes it could not judge so far), a tenant at
        ``max_tenant_scopes`` in a detector of features."""
        out: list[dict[str, Any]] = []
        for name in _PARTS:
            bound: ScopeBound = getattr(self, name).bound
            if bound.full and (name, "") not in self._reported:
                self._reported.add((name, ""))
                out.append({"detector": name, "max_scopes": self.max_scopes, "dropped_looks": bound.dropped})
            for tenant in sorted(bound.full_tenants):
                if (name, tenant) in self._reported:
                    continue
                self._reported.add((name, tenant))
                out.append({"detector": name, "tenant_id": tenant, "max_tenant_scopes": self.max_tenant_scopes})
        return out

    def observe(self, b: BatchWindows) -> list[Alert]:
        out: list[Alert] = []
        if b.usage:
            self._spikes(b, out)
        if b.requests:
            for key, i in self.runaway.check_batch(b.requests, b.r_calls, b.r_tokens, b.r_first, b.r_last):
                # the event time it crossed its call limit (a batch can hold minutes of a request)
                crossed = self.runaway.calls_to_limit(key, b.r_calls[i])
                when = b.request_call_ts(i, crossed) if crossed else None
                alert = self.runaway.fire(key, b.request_ids(i), None if when is None else when.timestamp())
                if alert is not None:
                    out.append(alert)
        safety: dict[tuple[str, str, int], list[Any]] = {}
        for (tenant, feature, _, w), x in b.safety.items():
            acc = safety.get((tenant, feature, w))
            if acc is None:
                safety[(tenant, feature, w)] = list(x)
            else:
                acc[0] += x[0]
                if x[1] < acc[1]:
                    acc[1] = x[1]
                if x[2] > acc[2]:
                    acc[2] = x[2]
                acc.extend(x[3:3 + MAX_IDS - (len(acc) - 3)])
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
        self._safety(b, safety, out)
        lapsed = self.book.take_resolved()
        if lapsed:
            # alerts the batch's own evidence resolved (quiet for resolve_s before it, AlertBook.fire)
            # go out where they happened, before the alert of the same kind and scope that replaced
            # them: the control plane keys alerts by kind and scope
            out = sorted(out + lapsed, key=_published)
        return [self.incidents.assign(a) for a in out]

    def _safety(self, b: BatchWindows, safety: dict[tuple[str, str, int], list[Any]], out: list[Alert]) -> None:
        """Safety triggers are judged per tenant+feature, all categories together (a quiet
        feature's categories are too rare apart to have a baseline each); the sample ids say
        which. Their exposure is the feature's LLM calls, from its first call on. Calls and
        triggers go in together, in window order: a trigger is judged on the spans that end at its
        own window, with the calls made up to it (a replay batch holds half an hour of a quiet
        feature; judged at the batch's last window, its burst was spread thin over the hour)."""
        expose, observe = self.safety.expose, self.safety.observe
        calls = sorted(((w, tenant, feature, u[6]) for (tenant, feature, w), u in b.usage.items() if feature),
                       key=_WINDOW_AT[0])
        i, n = 0, len(calls)
        for k in sorted(safety, key=_WINDOW_AT[2]):
            tenant, feature, w = k
            while i < n and calls[i][0] <= w:
                cw, ct, cf, c = calls[i]
                expose((ct, cf), cw, c)
                i += 1
            x = safety[k]
            first, last = x[1], x[2]
            ft = first.timestamp()
            alert = observe((tenant, feature), w, x[0], ft, ft if last is first else last.timestamp(), x[3:])
            if alert is not None:
                out.append(alert)
        for cw, ct, cf, c in calls[i:]:
            expose((ct, cf), cw, c)

    def _spikes(self, b: BatchWindows, out: list[Alert]) -> None:
        # per (scope, 10 s window): the tenant's sums and each tenant+feature's, in window order
        # (a stable sort), a window's tenant sums before its features'; a feature spike opening
        # while its tenant's spike of the same kind is open is suppressed. Window order matters:
        # a batch spans minutes, and judging every tenant window first would let a tenant alert
        # that opened late in the batch suppress its feature's spike minutes before it
        tenants: dict[tuple[str, int], list[Any]] = {}
        usage = b.usage
        keys = sorted(usage, key=_THIRD)
        for k in keys:
            u = usage[k]
            tenant, _, w = k
            x = tenants.get((tenant, w))
            if x is None:
                tenants[(tenant, w)] = [u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7:]]
            else:
                x[0] += u[0]
                x[1] += u[1]
                if u[2] < x[2]:
                    x[2] = u[2]
                if u[3] > x[3]:
                    x[3] = u[3]
                if u[4] > x[4]:
                    x[4] = u[4]
                if u[5] > x[5]:
                    x[5] = u[5]
                x[6] += u[6]
                if len(x[7]) < MAX_IDS:
                    x[7] = x[7] + u[7:7 + MAX_IDS - len(x[7])]
        sums = iter(tenants.items())  # in window order, as ``keys``
        ahead = next(sums, None)
        for k in keys:
            tenant, feature, w = k
            while ahead is not None and ahead[0][1] <= w:
                (t, tw), x = ahead
                for det, amount, peak in ((self.cost, x[0], x[4]), (self.tokens, x[1], x[5])):
                    alert = det.observe_at(t, tw, amount, peak, x[6], x[2], x[3], x[7])
                    if alert is not None:
                        out.append(alert)
                ahead = next(sums, None)
            if not feature:
                continue
            u = usage[k]
            key = tenant + KEY_SEP + feature
            for det, parent, amount, peak in ((self.cost_feature, self.cost, u[0], u[4]),
                                              (self.tokens_feature, self.tokens, u[1], u[5])):
                alert = det.observe_at(key, w, amount, peak, u[6], u[2], u[3], u[7:],
                                       suppressed=lambda t, parent=parent, tenant=tenant: parent.is_open(tenant, t))
                if alert is not None:
                    out.append(alert)

    def advance(self, watermark: datetime) -> list[Alert]:
        t = watermark.timestamp()
        out = self.book.sweep(t)
        self.runaway.close_idle(t)
        if t - self._evicted_at >= 600:
            self._evicted_at = t
            newest = int(t) // BASE_WINDOW_S
            for other in (self.cost, self.tokens, self.cost_feature, self.tokens_feature, self.errors, self.latency,
                          self.ttft, self.tool_failures, self.tool_latency, self.safety, self.retrieval):
                other.evict(newest)
            self.incidents.evict(t)
        return [self.incidents.assign(a) for a in out]

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able state: what a restarted worker needs to keep its baselines."""
        return {
            "version": 2, "book": self.book.snapshot(), "evicted_at": self._evicted_at,
            "incidents": self.incidents.snapshot(),
            **{name: getattr(self, name).snapshot() for name in _PARTS},
        }

    def adopt(self, data: dict[str, Any], owns: Callable[[str], bool]) -> int:
        """Take over, from another replica's :meth:`snapshot`, the per-tenant baselines (cost and
        token spikes per tenant and tenant+feature, safety bursts) of the tenants ``owns`` says
        this replica now consumes, where it has none of its own: after a rebalance moves a
        tenant's partition, the new owner judges its next spike against the old owner's history
        instead of starting cold. Per provider, tool and index the statistics stay each
        replica's own. Returns the number of series taken."""
        if data.get("version") != 2:
            return 0
        taken = sum(getattr(self, name).adopt(data.get(name) or [], owns) for name in _SPIKE_PARTS)
        return taken + self.safety.adopt(data.get("safety") or [], owns)

    def restore(self, data: dict[str, Any]) -> None:
        if data.get("version") != 2:
            raise ValueError(f"detector state: unsupported version {data.get('version')!r}")
        self.book.restore(data["book"])
        self._evicted_at = data["evicted_at"]
        self.incidents.restore(data.get("incidents") or {})
        for name in _PARTS:
            getattr(self, name).restore(data[name])


_PARTS = ("cost", "cost_feature", "tokens", "tokens_feature", "runaway", "errors", "latency", "ttft",
          "tool_failures", "tool_latency", "safety", "retrieval")
_SPIKE_PARTS = ("cost", "cost_feature", "tokens", "tokens_feature")
_FEATURE_PARTS = ("cost_feature", "tokens_feature", "safety")  # scopes of a tenant's features, evicted idle


def _published(alert: Alert) -> tuple[datetime, int]:
    """Event-time order of publication; a resolution before an opening at the same instant."""
    return alert.last_seen, 0 if alert.status == "resolved" else 1


_THIRD = itemgetter(2)  # sort key: the 10 s window's place in a usage key
_WINDOW_AT = {n: itemgetter(n) for n in (0, 1, 2, 3)}  # the same for each kind of group in observe
_COUNTS2, _COUNTS3, _COUNTS4 = slice(2), slice(3), slice(4)  # BatchWindows lists' fixed fields
_IDS5, _IDS8 = slice(5, None), slice(8, None)  # ... and their ids
_Check = tuple[Callable[..., Alert | None], int | slice, slice | None, bool]  # one detector of observe's table
