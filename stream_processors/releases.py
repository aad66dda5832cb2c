"""Release safety: is a new prompt_version, model or config_version worse than the incumbent?

Pure: events in, alerts and comparison reports out; time is the events' own (event time), so
``flyball replay`` and the live worker agree. No I/O, no clock.

**What is compared.** Per feature (and per tenant when ``per_tenant`` is set), along each version
dimension separately (``prompt_version``, ``model``, ``config_version``): when a value first takes
traffic after another value (the *incumbent*) has served at least ``incumbent_min_calls`` calls,
a comparison opens between the *candidate* and the incumbent. A release *starts* taking traffic
next to the incumbent: once the candidate has ``mix_min_calls`` calls (no verdict before), its
share q of the dimension's traffic since its first call must make its absence from the ``N``
calls before that unlikely, (1 - q)^N < ``mix_p``; otherwise it is part of the feature's usual
mix (a second model used for one call in fifty all along, or two tenants' features of one name
on different models, which merely had not been drawn yet) and its comparison is dropped, never
re-opened. A canary (both take traffic) is
compared on what both served since the candidate started; a rollout (the incumbent stops) falls
back to the incumbent's last ``baseline_s`` seconds before the candidate started. Tool calls,
retrievals and safety triggers join their request's ``llm_call`` through ``request_id``; feedback
joins through ``target_event_id`` or ``request_id``.

**Metrics** (``METRICS``): failure rate (error, timeout, rate_limited; the evidence splits it by
class), p95 latency and TTFT (as the share of calls slower than the incumbent's p95: 5% for the
incumbent by construction), tokens and cost per call, tool failure rate, empty-retrieval rate,
safety triggers per call, mean feedback score.

**Test.** A mixture sequential probability ratio test (mSPRT) per metric with a normal mixing
distribution: the always-valid p-value of Johari, Pekelis and Walsh, "Always Valid Inference:
Continuous Monitoring of A/B Tests", Operations Research 70(3), 2022 (after Robbins, 1970, for the
mixture martingale). With ``d`` the observed difference (candidate - incumbent, harm positive),
``V`` its variance and ``tau^2`` the mixing variance,

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 * (d - delta)^2 / (2 V (V + tau^2)))

is a nonnegative martingale under ``H0: difference = delta``; the comparison may be looked at after
every batch and ``P(sup Lambda >= 1/alpha) <= alpha``. The null is shifted to the metric's minimum
harmful effect ``delta`` (``max(min_abs, min_rel * incumbent)``), so a tiny, harmless difference on
huge traffic is not a regression. Inverting the same inequality gives an always-valid confidence
interval ``d +- sqrt(V (V + tau^2) / tau^2 * (2 ln(1/alpha) + ln((V + tau^2) / V)))``, which the
evidence reports and which decides promotion. Rates use Agresti-Caffo's +1/+1 adjustment for ``V``
so a zero-failure incumbent does not make ``V`` zero.

**Verdict.** ``rollback`` once any metric rejects its null (latched: always-valid tests may stop
at the first rejection); ``promote`` once the candidate has ``promote_min_calls`` calls and every
metric with data has its estimated harm at or below ``delta``; ``hold`` otherwise. Promotion is the practical call a canary analysis makes (no rejection, and no
metric's estimate beyond its minimum effect after enough traffic), not a proof of non-inferiority,
which at a 1% minimum effect would take tens of thousands of calls; the evidence carries the
intervals for whoever needs that. A rollback
raises a ``version_regression`` alert (critical for failures and safety, warning otherwise),
re-published while the candidate keeps taking traffic and resolved ``resolve_s`` after it stops:
once the shim pins the old version, the alert resolves.
"""

from __future__ import annotations

from bisect import bisect_left
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flyball.schemas import Alert, AlertKind, Scope

from .decode import id_key
from .detectors.base import AlertBook, Evidence

DIMENSIONS = ("prompt_version", "model", "config_version")
FAILURES = ("error", "timeout", "rate_limited")
# latency histogram: log-spaced bin edges in ms (1.15x apart, 1 ms .. ~10 min); p95 by bin
_EDGES = [1.15 ** i for i in range(96)]
_NBINS = len(_EDGES) + 1


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """``harm`` = +1 when higher is worse, -1 when lower is worse. The minimum harmful effect is
    ``max(min_abs, min_rel * |incumbent|)`` in the metric's own unit; ``critical`` metrics roll
    back automatically under the shipped policy, the others wait for approval."""

    name: str
    harm: int
    min_abs: float
    min_rel: float
    critical: bool
    min_n: int  # observations needed on each side before the metric is tested


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("failure_rate", +1, 0.005, 0.2, True, 20),
    MetricSpec("latency_p95_share", +1, 0.03, 0.0, False, 20),  # share above the incumbent's p95 (5% baseline)
    MetricSpec("ttft_p95_share", +1, 0.03, 0.0, False, 20),
    MetricSpec("tokens_per_call", +1, 1.0, 0.05, False, 20),
    MetricSpec("cost_per_call", +1, 1e-9, 0.05, False, 20),
    MetricSpec("tool_failure_rate", +1, 0.01, 0.25, False, 20),
    MetricSpec("empty_retrieval_rate", +1, 0.01, 0.25, False, 20),
    MetricSpec("safety_per_call", +1, 0.005, 0.5, True, 20),
    MetricSpec("feedback_mean", -1, 0.05, 0.0, False, 15),
)


@dataclass(frozen=True, slots=True)
class ReleaseParams:
    alpha: float = 0.05              # per metric and comparison; the null is shifted by the minimum effect
    tau_scale: float = 2.0           # mixing sd = tau_scale * the minimum effect
    incumbent_min_calls: int = 50    # a value is an incumbent once it served this many calls
    promote_min_calls: int = 300
    baseline_s: float = 3600.0       # a rollout's incumbent: its last hour before the candidate started
    idle_s: float = 600.0            # a candidate idle this long ends its comparison (after the alert resolved)
    resolve_s: float = 120.0         # an open regression resolves this long after the candidate's last call
    per_tenant: bool = False
    overrides: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric -> (min_abs, min_rel)
    max_joins: int = 200_000         # request ids and event ids remembered for joining
    mix_p: float = 0.01              # a value whose absence before its first call has P >= this at its share is part of the mix
    mix_min_calls: int = 10          # candidate calls before that is judged (and before any verdict)
    # bounds against a field of high cardinality (a per-request config hash, a request id as the feature)
    max_versions: int = 256          # per group: version tuples tracked at once; further ones' calls are not compared
    max_candidates: int = 16         # per group: comparisons open at once; further new values are not compared
    max_groups: int = 50_000         # groups (features) tracked at once; a further group's calls are not compared


class Stats:
    """Additive sufficient statistics of one version's traffic."""

    __slots__ = ("calls", "cost_n", "cost_sq", "cost_sum", "fail", "fb_n", "fb_sq", "fb_sum", "last",
                 "lat", "lat_n", "retr", "retr_empty", "safety", "tok_sq", "tok_sum", "tool", "tool_fail",
                 "ttft", "ttft_n")

    def __init__(self) -> None:
        self.calls = 0
        self.fail: dict[str, int] = {}
        self.tok_sum = 0.0
        self.tok_sq = 0.0
        self.cost_n = 0
        self.cost_sum = 0.0
        self.cost_sq = 0.0
        self.lat: list[int] = [0] * _NBINS
        self.lat_n = 0
        self.ttft: list[int] = [0] * _NBINS
        self.ttft_n = 0
        self.tool = 0
        self.tool_fail = 0
        self.retr = 0
        self.retr_empty = 0
        self.safety = 0
        self.fb_n = 0
        self.fb_sum = 0.0
        self.fb_sq = 0.0
        self.last = 0.0

    def merge(self, other: Stats) -> None:
        self.calls += other.calls
        for k, v in other.fail.items():
            self.fail[k] = self.fail.get(k, 0) + v
        self.tok_sum += other.tok_sum
        self.tok_sq += other.tok_sq
        self.cost_n += other.cost_n
        self.cost_sum += other.cost_sum
        self.cost_sq += other.cost_sq
        for i, v in enumerate(other.lat):
            if v:
                self.lat[i] += v
        self.lat_n += other.lat_n
        for i, v in enumerate(other.ttft):
            if v:
                self.ttft[i] += v
        self.ttft_n += other.ttft_n
        self.tool += other.tool
        self.tool_fail += other.tool_fail
        self.retr += other.retr
        self.retr_empty += other.retr_empty
        self.safety += other.safety
        self.fb_n += other.fb_n
        self.fb_sum += other.fb_sum
        self.fb_sq += other.fb_sq
        self.last = max(self.last, other.last)

    @property
    def failures(self) -> int:
        return sum(self.fail.values())

    def add(self, event: Any, cost: float | None, t: float) -> None:
        kind = event.event_type
        if kind == "llm_call":
            self.add_call(event, cost, t)
            return
        if kind == "tool_call":
            self.tool += 1
            if event.status in FAILURES:
                self.tool_fail += 1
        elif kind == "retrieval":
            self.retr += 1
            if event.status != "ok" or event.results_count == 0:
                self.retr_empty += 1
        elif kind == "safety_trigger":
            self.safety += 1
        elif kind == "feedback":
            self.fb_n += 1
            self.fb_sum += event.score
            self.fb_sq += event.score * event.score
        if t > self.last:
            self.last = t

    def add_call(self, event: Any, cost: float | None, t: float) -> None:
        """One ``llm_call`` (the hot path: one per call, in every bucket and comparison it feeds).
        ``status`` is a ``CallStatus`` (a ``StrEnum``) or its string: both compare as the string."""
        self.calls += 1
        status = event.status
        if status != "ok":
            if status in FAILURES:
                name = str(status)
                self.fail[name] = self.fail.get(name, 0) + 1
        else:
            latency = event.latency_ms
            if latency:
                self.lat[bisect_left(_EDGES, latency)] += 1
                self.lat_n += 1
            ttft = event.ttft_ms
            if ttft is not None:
                self.ttft[bisect_left(_EDGES, ttft)] += 1
                self.ttft_n += 1
        tokens = float(event.input_tokens + event.output_tokens)
        self.tok_sum += tokens
        self.tok_sq += tokens * tokens
        if cost is not None:
            self.cost_n += 1
            self.cost_sum += cost
            self.cost_sq += cost * cost
        if t > self.last:
            self.last = t


def _p95_bin(hist: list[int], n: int) -> int:
    """The histogram bin holding the 95th percentile."""
    target = math.ceil(0.95 * n)
    running = 0
    for i, v in enumerate(hist):
        running += v
        if running >= target:
            return i
    return len(hist) - 1


def _bin_ms(i: int) -> float:
    return _EDGES[min(i, len(_EDGES) - 1)]


@dataclass(frozen=True, slots=True)
class MetricResult:
    metric: str
    new: float
    old: float
    n_new: int
    n_old: int
    effect: float        # candidate - incumbent, in the harmful direction (positive = worse)
    min_effect: float    # delta: the smallest difference that counts as a regression
    lower: float         # always-valid interval of the harmful difference
    upper: float
    p_value: float       # always-valid p-value against H0: difference = delta
    regression: bool
    critical: bool

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "new": _r(self.new), "old": _r(self.old), "n_new": self.n_new,
                "n_old": self.n_old, "effect": _r(self.effect), "min_effect": _r(self.min_effect),
                "interval": [_r(self.lower), _r(self.upper)], "p_value": _r(self.p_value),
                "regression": self.regression}


def _r(x: float) -> float:
    return float(f"{x:.6g}") if math.isfinite(x) else x


def msprt(effect: float, var: float, delta: float, tau2: float, alpha: float) -> tuple[float, float, float]:
    """(always-valid p-value against H0: difference = delta, interval low, interval high)."""
    if var <= 0 or tau2 <= 0:
        return 1.0, -math.inf, math.inf
    log_lam = 0.5 * math.log(var / (var + tau2)) + tau2 * (effect - delta) ** 2 / (2 * var * (var + tau2))
    p = 1.0 if effect <= delta else min(1.0, math.exp(-log_lam)) if log_lam < 700 else 0.0
    half = math.sqrt(var * (var + tau2) / tau2 * (2 * math.log(1 / alpha) + math.log((var + tau2) / var)))
    return p, effect - half, effect + half


def _rate(k: int, n: int, k0: int, n0: int) -> tuple[float, float, float]:
    """(p_new, p_old, Var of the difference with Agresti-Caffo's +1/+1)."""
    pa, pb = (k + 1) / (n + 2), (k0 + 1) / (n0 + 2)
    return k / n, k0 / n0, pa * (1 - pa) / (n + 2) + pb * (1 - pb) / (n0 + 2)


def _mean(s: float, sq: float, n: int) -> tuple[float, float]:
    m = s / n
    var = max(sq / n - m * m, 0.0) * n / max(n - 1, 1)
    return m, var


def compare(new: Stats, old: Stats, params: ReleaseParams) -> list[MetricResult]:
    """Every metric with enough data on both sides."""
    out = []
    for spec in METRICS:
        got = _observed(spec.name, new, old)
        if got is None:
            continue
        vnew, vold, var, n_new, n_old = got
        if n_new < spec.min_n or n_old < spec.min_n:
            continue
        min_abs, min_rel = params.overrides.get(spec.name, (spec.min_abs, spec.min_rel))
        delta = max(min_abs, min_rel * abs(vold))
        effect = (vnew - vold) * spec.harm
        tau2 = (params.tau_scale * delta) ** 2
        p, lo, hi = msprt(effect, var, delta, tau2, params.alpha)
        out.append(MetricResult(spec.name, vnew, vold, n_new, n_old, effect, delta, lo, hi, p,
                                p <= params.alpha and effect > delta, spec.critical))
    return out


def _observed(name: str, new: Stats, old: Stats) -> tuple[float, float, float, int, int] | None:
    if name == "failure_rate":
        if not new.calls or not old.calls:
            return None
        a, b, v = _rate(new.failures, new.calls, old.failures, old.calls)
        return a, b, v, new.calls, old.calls
    if name in ("latency_p95_share", "ttft_p95_share"):
        hn, nn, ho, no = (new.lat, new.lat_n, old.lat, old.lat_n) if name[0] == "l" else (
            new.ttft, new.ttft_n, old.ttft, old.ttft_n)
        if not nn or not no:
            return None
        cut = _p95_bin(ho, no)
        above_new, above_old = sum(hn[cut + 1:]), sum(ho[cut + 1:])
        a, b, v = _rate(above_new, nn, above_old, no)
        return a, b, v, nn, no
    if name == "tokens_per_call":
        if new.calls < 2 or old.calls < 2:
            return None
        (ma, va), (mb, vb) = _mean(new.tok_sum, new.tok_sq, new.calls), _mean(old.tok_sum, old.tok_sq, old.calls)
        return ma, mb, va / new.calls + vb / old.calls, new.calls, old.calls
    if name == "cost_per_call":
        if new.cost_n < 2 or old.cost_n < 2:
            return None
        (ma, va), (mb, vb) = _mean(new.cost_sum, new.cost_sq, new.cost_n), _mean(old.cost_sum, old.cost_sq, old.cost_n)
        return ma, mb, va / new.cost_n + vb / old.cost_n, new.cost_n, old.cost_n
    if name == "tool_failure_rate":
        if not new.tool or not old.tool:
            return None
        a, b, v = _rate(new.tool_fail, new.tool, old.tool_fail, old.tool)
        return a, b, v, new.tool, old.tool
    if name == "empty_retrieval_rate":
        if not new.retr or not old.retr:
            return None
        a, b, v = _rate(new.retr_empty, new.retr, old.retr_empty, old.retr)
        return a, b, v, new.retr, old.retr
    if name == "safety_per_call":
        if not new.calls or not old.calls:
            return None
        # Poisson counts per call; +0.5 keeps V positive at zero triggers
        la, lb = new.safety / new.calls, old.safety / old.calls
        v = (new.safety + 0.5) / new.calls ** 2 + (old.safety + 0.5) / old.calls ** 2
        return la, lb, v, new.calls, old.calls
    if name == "feedback_mean":
        if new.fb_n < 2 or old.fb_n < 2:
            return None
        (ma, va), (mb, vb) = _mean(new.fb_sum, new.fb_sq, new.fb_n), _mean(old.fb_sum, old.fb_sq, old.fb_n)
        return ma, mb, va / new.fb_n + vb / old.fb_n, new.fb_n, old.fb_n
    raise ValueError(f"unknown metric {name}")  # pragma: no cover


def verdict_of(results: list[MetricResult], new_calls: int, params: ReleaseParams) -> str:
    if any(r.regression for r in results):
        return "rollback"
    if new_calls >= params.promote_min_calls and results and all(r.effect <= r.min_effect for r in results):
        return "promote"
    return "hold"


@dataclass(slots=True)
class Comparison:
    """One candidate against its incumbent, along one dimension of one group."""

    group: tuple[str, str]        # (tenant_id or "", feature)
    dimension: str
    old: str
    new: str
    started: float
    new_stats: Stats = field(default_factory=Stats)
    old_live: Stats = field(default_factory=Stats)
    old_before: Stats = field(default_factory=Stats)
    verdict: str = "hold"
    rolled_back: bool = False     # latched at the first rejection
    results: list[MetricResult] = field(default_factory=list)
    decided_at: float | None = None
    before: int = 0               # the dimension's calls in the group before the candidate's first

    def baseline(self, params: ReleaseParams) -> Stats:
        """The incumbent's contemporaneous traffic (canary) or its last hour before (rollout)."""
        return self.old_live if self.old_live.calls >= params.incumbent_min_calls else self.old_before

    def scope(self) -> Scope:
        tenant, feature = self.group
        return Scope(tenant_id=tenant or None, feature=feature, version_field=self.dimension,
                     old_version=self.old, new_version=self.new)

    def report(self) -> dict[str, Any]:
        tenant, feature = self.group
        return {"tenant_id": tenant or None, "feature": feature, "dimension": self.dimension,
                "old_version": self.old, "new_version": self.new, "started": _iso(self.started),
                "verdict": self.verdict, "calls_new": self.new_stats.calls,
                "calls_old": self.old_live.calls, "decided_at": _iso(self.decided_at) if self.decided_at else None,
                "metrics": [r.as_dict() for r in self.results]}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat()


class _Series:
    """One version tuple's traffic in one group: its calls, the tenants it served and its
    per-minute stats (the baselines); ``group`` leads to the comparisons it feeds. The join tables
    hold series, so a joined event (tool call, retrieval, feedback) lands where its request's call
    did. Its minutes go after ``baseline_s``; the series itself once it has none left and its
    group no open comparison (``advance``); its calls count towards its values' totals."""

    __slots__ = ("bucket", "calls", "group", "minute", "minutes", "tenant", "tenants", "versions")

    def __init__(self, group: _Group, versions: tuple[str, str, str]) -> None:
        self.group = group
        self.versions = versions
        self.calls = 0
        self.minutes: dict[int, Stats] = {}
        self.minute: int | None = None  # the minute of ``bucket``: most events fall in the last one
        self.bucket: Stats | None = None
        self.tenants: set[str] = set()
        self.tenant: str | None = None  # the last tenant added to ``tenants``

    def at(self, t: float) -> Stats:
        """The minute bucket of event time ``t``."""
        minute = int(t // 60)
        if minute == self.minute:
            return self.bucket  # type: ignore[return-value]
        bucket = self.minutes.get(minute)
        if bucket is None:
            bucket = self.minutes[minute] = Stats()
        self.minute, self.bucket = minute, bucket
        return bucket

    def forget(self, before: int) -> None:
        """Drop the minutes before minute ``before``."""
        minutes = self.minutes
        for m in [m for m in minutes if m < before]:
            del minutes[m]
        if self.minute is not None and self.minute < before:
            self.minute, self.bucket = None, None


class _Group:
    """One feature's (or tenant+feature's) traffic: one series per version tuple
    (prompt_version, model, config_version), the values each dimension has taken, and the
    group's open comparisons. Calls per value of a dimension are summed from the series when a
    comparison needs them (a value's first call, a verdict), not counted per call."""

    __slots__ = ("capped", "key", "open", "series", "uncompared", "untracked", "values", "version")

    def __init__(self, key: tuple[str, str]) -> None:
        self.key = key
        self.untracked = 0     # calls of version tuples over ``max_versions``
        self.uncompared = 0    # new values not compared: ``max_candidates`` comparisons were open
        self.capped = False    # reached a bound (queued for ``take_capped``)
        self.series: dict[tuple[str, str, str], _Series] = {}
        self.values: tuple[set[str], ...] = tuple(set() for _ in DIMENSIONS)
        # the open comparisons as (key, comparison, index of its dimension in a versions tuple)
        self.open: list[tuple[tuple[tuple[str, str], str, str], Comparison, int]] = []
        self.version = -1  # the ``versions`` snapshot this group last took traffic in

    def totals(self, i: int) -> dict[str, int]:
        """Calls per value of dimension ``i`` (values that were set), since the group began."""
        out: dict[str, int] = {}
        for versions, series in self.series.items():
            value = versions[i]
            if value:
                out[value] = out.get(value, 0) + series.calls
        return out

    def since(self, i: int, value: str, lo: int) -> Stats:
        """The traffic of one value of dimension ``i`` from minute ``lo`` on."""
        out = Stats()
        for versions, series in self.series.items():
            if versions[i] == value:
                for m, s in series.minutes.items():
                    if m >= lo:
                        out.merge(s)
        return out

    def calls_since(self, i: int, lo: int) -> dict[str, int]:
        """Calls per value of dimension ``i`` from minute ``lo`` on (every value it took)."""
        out: dict[str, int] = {}
        for versions, series in self.series.items():
            value = versions[i]
            if value:
                out[value] = out.get(value, 0) + sum(s.calls for m, s in series.minutes.items() if m >= lo)
        return out


class _Generations:
    """The latest entries of a map, bounded: two plain dicts of ``capacity // 2`` each; when the
    newer is full it becomes the older and the older is dropped whole. Holds between
    ``capacity // 2`` and ``capacity`` of the latest entries. (An OrderedDict used as a FIFO of
    200k entries keeps growing after it is full, to about 45 MB, as churn resizes it.)"""

    __slots__ = ("half", "new", "old")

    def __init__(self, capacity: int) -> None:
        self.half = max(1, capacity // 2)
        self.new: dict[Any, Any] = {}
        self.old: dict[Any, Any] = {}

    def put(self, key: Any, value: Any) -> None:
        new = self.new
        new[key] = value
        if len(new) >= self.half:
            self.old, self.new = new, {}

    def get(self, key: Any) -> Any:
        found = self.new.get(key)
        return self.old.get(key) if found is None else found

    def __len__(self) -> int:
        return len(self.new) + len(self.old)


class ReleaseComparator:
    """Feed it batches of decoded events (``observe``) and the watermark (``advance``)."""

    def __init__(self, params: ReleaseParams | None = None) -> None:
        self.params = params or ReleaseParams()
        self.book = AlertBook(resolve_s=self.params.resolve_s)
        self.groups: dict[tuple[str, str], _Group] = {}
        self.comparisons: dict[tuple[tuple[str, str], str, str], Comparison] = {}  # (group, dim, new)
        self.finished: list[Comparison] = []
        # (group key, versions) -> its series: the one lookup a call makes
        self._series: dict[tuple[tuple[str, str], tuple[str, str, str]], _Series] = {}
        # request (tenant, id) and event id (as an int: id_key) -> the series of its llm_call
        self._by_request: _Generations = _Generations(self.params.max_joins)
        self._by_event: _Generations = _Generations(self.params.max_joins)
        self._pending: OrderedDict[tuple[str, str], list[tuple[Any, float]]] = OrderedDict()
        self._version = 0  # ``versions`` snapshots taken; a group with traffic since the last is dirty
        self.ungrouped = 0  # calls of groups past ``max_groups``, not compared
        self._ungrouped_reported = False
        self._newly_capped: list[_Group] = []  # groups that reached a bound, for ``take_capped``
        self._dirty: list[_Group] = []

    # -- input ---------------------------------------------------------------------------------
    def observe(self, events: Iterable[tuple[Any, float | None]]) -> list[Alert]:
        """``events``: (decoded event, its cost as float or None) in arrival order."""
        others = []
        touched: dict[tuple[tuple[str, str], str, str], bool] = {}  # comparison -> did the candidate take traffic
        for event, cost in events:
            if event.event_type == "llm_call":
                self._call(event, cost, touched)
            else:
                others.append(event)
        for event in others:
            self._joined(event, touched)
        return self._evaluate(touched)

    def _call(self, event: Any, cost: float | None, touched: dict[Any, bool]) -> None:
        # the hot path (one per llm_call): one lookup finds the call's series
        feature = event.feature
        if not feature:
            return
        tenant = event.tenant_id
        group_key = (tenant if self.params.per_tenant else "", feature)
        # config_version travels in attributes (the models fold an unknown top-level field there)
        versions = (event.prompt_version, event.model, _config_version(event) if event.attributes else "")
        t = event.ts.timestamp()
        series = self._series.get((group_key, versions))
        if series is None:
            series = self._new_series(group_key, versions, t, tenant)
            if series is None:
                return  # the group tracks ``max_versions`` tuples already
        group = series.group
        if group.version != self._version:
            group.version = self._version
            self._dirty.append(group)
        series.calls += 1
        if tenant != series.tenant:
            series.tenants.add(tenant)
            series.tenant = tenant
        series.at(t).add_call(event, cost, t)
        if group.open:  # most groups have no open comparison
            self._compared(event, cost, t, series, touched)
        self._by_event.put(id_key(event.event_id), series)
        if event.request_id:
            rkey = (tenant, event.request_id)
            self._by_request.put(rkey, series)
            if self._pending:
                waiting = self._pending.pop(rkey, None)
                if waiting:
                    for other, t_other in waiting:
                        self._apply(other, t_other, series, touched)

    def _new_series(self, group_key: tuple[str, str], versions: tuple[str, str, str], t: float,
                    tenant: str) -> _Series | None:
        """A version tuple's first call in its group: each value new to its dimension may open a
        comparison (before the series counts the call). None when the group already tracks
        ``max_versions`` tuples: the call is counted as untracked, not compared."""
        group = self.groups.get(group_key)
        if group is None:
            if len(self.groups) >= self.params.max_groups:
                self.ungrouped += 1
                return None
            group = self.groups[group_key] = _Group(group_key)
        if len(group.series) >= self.params.max_versions:
            self._capped(group).untracked += 1
            return None
        for i, value in enumerate(versions):
            if value and value not in group.values[i]:
                self._maybe_open(group, i, value, t, tenant)
                group.values[i].add(value)
        series = group.series[versions] = self._series[(group_key, versions)] = _Series(group, versions)
        return series

    def _joined(self, event: Any, touched: dict[Any, bool]) -> None:
        series = None
        if event.event_type == "feedback" and getattr(event, "target_event_id", ""):
            series = self._by_event.get(id_key(event.target_event_id))
        if series is None and event.request_id:
            series = self._by_request.get((event.tenant_id, event.request_id))
            if series is None:  # its llm_call may come later (a retrieval precedes the model call)
                waiting = self._pending.setdefault((event.tenant_id, event.request_id), [])
                if len(waiting) < 64:
                    waiting.append((event, event.ts.timestamp()))
                while len(self._pending) > self.params.max_joins:
                    self._pending.popitem(last=False)
                return
        if series is not None:
            self._apply(event, event.ts.timestamp(), series, touched)

    def _apply(self, event: Any, t: float, series: _Series, touched: dict[Any, bool]) -> None:
        """A joined event (tool call, retrieval, safety trigger, feedback) on its call's series."""
        series.at(t).add(event, None, t)
        if series.group.open:
            self._compared(event, None, t, series, touched)

    def _compared(self, event: Any, cost: float | None, t: float, series: _Series, touched: dict[Any, bool]) -> None:
        """Feed the event to its group's open comparisons whose candidate or incumbent it served."""
        versions = series.versions
        for key, comp, i in series.group.open:
            value = versions[i]
            if value == comp.new:
                comp.new_stats.add(event, cost, t)
                touched[key] = True
            elif value == comp.old and t >= comp.started:
                comp.old_live.add(event, cost, t)
                touched.setdefault(key, False)

    def _open(self, group: _Group, comp: Comparison) -> None:
        key = (group.key, comp.dimension, comp.new)
        self.comparisons[key] = comp
        group.open.append((key, comp, DIMENSIONS.index(comp.dimension)))

    def _close(self, key: tuple[tuple[str, str], str, str]) -> Comparison:
        """End an open comparison (its group keeps it while it is open: no eviction before)."""
        comp = self.comparisons.pop(key)
        group = self.groups[key[0]]
        group.open = [x for x in group.open if x[0] != key]
        return comp

    def _capped(self, group: _Group) -> _Group:
        """``group``, queued for :meth:`take_capped` the first time it reaches a bound."""
        if not group.capped:
            group.capped = True
            self._newly_capped.append(group)
        return group

    def _maybe_open(self, group: _Group, i: int, value: str, t: float, tenant: str) -> None:
        """A value seen for the first time: a candidate if another value is established and served
        the tenant that brings the new value. A feature spans tenants (``per_tenant`` off): a
        value whose first call comes from a tenant the incumbent never served is that tenant's
        own set-up (two tenants' features of one name on different models), not a release."""
        totals = group.totals(i)
        established = [v for v, n in totals.items() if n >= self.params.incumbent_min_calls]
        if not established:
            return
        if len(group.open) >= self.params.max_candidates:
            self._capped(group).uncompared += 1
            return
        lo = int((t - self.params.baseline_s) // 60)
        recent = {v: group.since(i, v, lo) for v in established}
        old = max(recent, key=lambda v: (recent[v].calls, totals[v]))
        if recent[old].calls == 0:
            return
        if not group.key[0] and not any(
                tenant in series.tenants and versions[i] == old for versions, series in group.series.items()):
            return
        before = sum(totals.values())
        self._open(group, Comparison(group.key, DIMENSIONS[i], old, value, t, old_before=recent[old], before=before))

    def _mixed(self, comp: Comparison) -> bool | None:
        """Is the candidate part of the group's usual mix rather than a release? A release starts
        taking traffic next to an established incumbent: at its share of the traffic since its
        first call (q), going unseen for the ``before`` calls that preceded it is unlikely,
        (1 - q)^before < ``mix_p``. A value that has coexisted all along at a small share (a
        feature that sends a few calls to a second model, or two tenants' features of one name
        on different models) was merely not drawn yet: its gap is likely at its share. None until
        the candidate has ``mix_min_calls`` calls (no verdict before)."""
        n_new = comp.new_stats.calls
        if n_new < self.params.mix_min_calls:
            return None
        group = self.groups.get(comp.group)
        if group is None:
            return None
        i = DIMENSIONS.index(comp.dimension)
        since = sum(group.totals(i).values()) - comp.before  # from its first call on
        share = min(1.0, n_new / max(since, 1))
        if share >= 1.0:
            return False  # a rollout: the incumbent stopped
        return comp.before * math.log1p(-share) >= math.log(self.params.mix_p)

    # -- evaluation ----------------------------------------------------------------------------
    def _evaluate(self, touched: dict[tuple[tuple[str, str], str, str], bool]) -> list[Alert]:
        alerts = []
        mixed = []
        for key in sorted(touched):
            comp = self.comparisons.get(key)
            if comp is None:
                continue
            if not comp.rolled_back and comp.verdict != "promote":
                mix = self._mixed(comp)
                if mix is None:
                    continue  # too few candidate calls to tell a release from the mix
                if mix:
                    mixed.append(key)  # part of the usual mix: no release to compare
                    continue
                comp.results = compare(comp.new_stats, comp.baseline(self.params), self.params)
                verdict = verdict_of(comp.results, comp.new_stats.calls, self.params)
                if verdict != "hold":
                    comp.verdict, comp.decided_at = verdict, comp.new_stats.last
                    comp.rolled_back = verdict == "rollback"
            if comp.rolled_back and touched[key]:  # kept open while the candidate takes traffic
                alert = self._fire(comp)
                if alert is not None:
                    alerts.append(alert)
        for key in mixed:
            self._close(key)
        return alerts

    def _fire(self, comp: Comparison) -> Alert | None:
        bad = [r for r in comp.results if r.regression]
        worst = max(bad, key=lambda r: (r.critical, r.effect / r.min_effect if r.min_effect else 0.0))
        severity = "critical" if any(r.critical for r in bad) else "warning"
        tenant, feature = comp.group
        where = f"{feature}" + (f" (tenant {tenant})" if tenant else "")
        ev = Evidence(
            severity=severity, metric=worst.metric, observed=f"{worst.new:.6g}", baseline=f"{worst.old:.6g}",
            threshold=f"{worst.min_effect:.6g}", score=worst.effect / worst.min_effect if worst.min_effect else None,
            p_value=worst.p_value, window_s=60, first_ts=comp.started, last_ts=comp.new_stats.last, event_ids=[],
            summary=(f"{comp.dimension} {comp.new} regresses {where} against {comp.old}: "
                     + ", ".join(f"{r.metric} {r.new:.4g} vs {r.old:.4g}" for r in bad)
                     + f" ({comp.new_stats.calls} vs {comp.old_live.calls or comp.old_before.calls} calls); "
                     f"verdict rollback"),
        )
        alert = self.book.fire(AlertKind.VERSION_REGRESSION, comp.scope(), ev)
        if alert is None:
            return None
        return alert.model_copy(update={"verdict": "rollback",
                                        "evidence": {"comparison": comp.report()}})

    def advance(self, watermark: datetime) -> list[Alert]:
        """Resolve regressions whose candidate stopped, end idle comparisons, forget old minutes."""
        w = watermark.timestamp()
        out = [a.model_copy(update={"verdict": "rollback"}) for a in self.book.sweep(w)]
        for key, comp in list(self.comparisons.items()):
            if (w - max(comp.new_stats.last, comp.started) >= self.params.idle_s and not self.book.is_open(
                    AlertKind.VERSION_REGRESSION, comp.scope().key())) or comp.verdict == "promote":
                self.finished.append(self._close(key))
        self.finished = self.finished[-1000:]
        keep_from = int((w - self.params.baseline_s) // 60) - 1
        stale = []
        for link, series in self._series.items():
            series.forget(keep_from)
            if not series.minutes and not series.group.open:
                stale.append(link)
        if stale:
            self._evict(stale)
        return out

    def _evict(self, stale: list[tuple[tuple[str, str], tuple[str, str, str]]]) -> None:
        """Forget version tuples with no traffic within ``baseline_s`` in groups with no open
        comparison: they can be no incumbent's recent traffic, and a value that comes back is
        new again (a return to an old version is a change like any other). Bounds the series to
        what served within the hour; a group left with none is forgotten too."""
        touched = set()
        for group_key, versions in stale:
            group = self.groups[group_key]
            del self._series[(group_key, versions)]
            del group.series[versions]
            touched.add(group_key)
        for group_key in touched:
            group = self.groups[group_key]
            if group.series:
                group.values = tuple({v[i] for v in group.series if v[i]} for i in range(len(DIMENSIONS)))
            else:
                del self.groups[group_key]

    def take_capped(self) -> list[dict[str, Any]]:
        """The bounds reached since the last call, each once, for the worker to log: per group
        (``max_versions``, ``max_candidates``: its untracked calls and uncompared values so far),
        and ``max_groups`` (the calls of groups not tracked so far)."""
        out: list[dict[str, Any]] = []
        if self.ungrouped and not self._ungrouped_reported:
            self._ungrouped_reported = True
            out.append({"max_groups": self.params.max_groups, "ungrouped_calls": self.ungrouped})
        for group in self._newly_capped:
            tenant, feature = group.key
            out.append({"tenant_id": tenant or None, "feature": feature, "untracked_calls": group.untracked,
                        "uncompared_values": group.uncompared, "max_versions": self.params.max_versions,
                        "max_candidates": self.params.max_candidates})
        self._newly_capped = []
        return out

    def report(self) -> list[dict[str, Any]]:
        """The comparisons open now and the last finished ones (newest first)."""
        return [c.report() for c in list(self.comparisons.values()) + self.finished[::-1]]

    def versions(self, watermark: datetime, *, window_s: float = 3600.0) -> list[VersionRow]:
        """One row per (group, dimension, version) of the groups that took traffic since the last
        call (then forgotten until they take traffic again): the version's calls in the
        ``window_s`` before ``watermark`` and its share of the dimension, and, for a candidate, its
        comparison against the incumbent (verdict and per-metric evidence). What the worker
        persists for ``GET /v1/versions``."""
        w = watermark.timestamp()
        lo = int((w - window_s) // 60)
        latest: dict[tuple[tuple[str, str], str, str], Comparison] = {}
        incumbents: dict[tuple[tuple[str, str], str, str], Comparison] = {}
        for comp in [*self.finished, *self.comparisons.values()]:  # open ones last: they win
            latest[(comp.group, comp.dimension, comp.new)] = comp
            incumbents[(comp.group, comp.dimension, comp.old)] = comp
        rows = []
        for group in sorted(self._dirty, key=lambda g: g.key):
            group_key = group.key
            for i, dim in enumerate(DIMENSIONS):
                calls = group.calls_since(i, lo)
                total = sum(calls.values())
                for value, n in sorted(calls.items()):
                    candidate = latest.get((group_key, dim, value))
                    role = "candidate" if candidate is not None else (
                        "incumbent" if (group_key, dim, value) in incumbents else "")
                    rows.append(VersionRow(
                        tenant_id=group_key[0], feature=group_key[1], dimension=dim, version=value, calls=n,
                        share=n / total if total else 0.0, role=role, as_of=w, window_s=window_s,
                        comparison=candidate.report() if candidate is not None else None))
        self._dirty = []
        self._version += 1
        return rows


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One version's traffic (and, for a candidate, its comparison) in one group."""

    tenant_id: str  # "" when comparisons are feature-wide
    feature: str
    dimension: str
    version: str
    calls: int
    share: float
    role: str  # candidate | incumbent | "" (the only version, or never compared)
    as_of: float  # event time (seconds) of the snapshot
    window_s: float
    comparison: dict[str, Any] | None


def _config_version(event: Any) -> str:
    value = getattr(event, "config_version", "") or ""
    if not value and event.attributes:
        value = str(event.attributes.get("config_version", "") or "")
    return value
