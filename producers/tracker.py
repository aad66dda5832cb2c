"""``CallTracker``: times one call and emits its event; a context manager (sync or async) or a
decorator (sync or async functions).

A provider response handed to ``record`` (or returned by a decorated function) gives the
event its usage, response model, finish reason and served service tier; usage counts the
event has no field for are kept in ``attributes`` as ``usage.<path>``. A *stream* handed to
``record`` comes back wrapped (``streams.py``): the event is then emitted when the stream ends,
is closed early (``cancelled``) or raises, even if that is after the ``with`` block or the
decorated function has returned. An exception inside the ``with`` block or the function emits
at once with its status (timeout, rate_limited, filtered, cancelled, error) and is re-raised.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from .adapters import finish_reason_of, response_model_of, service_tier_of, status_of, usage_of
from .streams import StreamUsage, wrap_stream

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("flyball.producers")
MAX_USAGE_ATTRIBUTES = 16


class _Queue(Protocol):
    def _put(self, body: dict[str, Any]) -> str: ...


class CallTracker:
    """Times one call and emits its event on exit (or at the end of its stream)."""

    def __init__(self, tel: Any, kind: str, fields: dict[str, Any]) -> None:
        self._tel: _Queue = getattr(tel, "_sync", tel)  # AsyncTelemetry wraps a Telemetry
        self._kind = kind
        self._fields = fields
        self.fields: dict[str, Any] = {}
        self._usage_attributes: dict[str, Any] = {}
        self._t0 = 0.0
        self._ts = 0.0
        self._streaming = False  # a stream was recorded: the event waits for its end
        self._emitted = False
        self.event_id = ""

    def record(self, response: Any) -> Any:
        """Take usage, response model, finish reason and service tier from a provider response
        and return it; a stream is returned wrapped, and read as it is consumed."""
        try:
            if self._kind == "llm_call":
                wrapped = wrap_stream(response, self)
                if wrapped is not None:
                    self._streaming = True
                    self.fields["stream"] = True
                    return wrapped
            self._take(response)
        except Exception:  # noqa: BLE001 - telemetry never breaks the call
            pass
        return response

    def _take(self, response: Any) -> None:
        usage = usage_of(response)
        if usage is not None:
            self.fields.update(usage.as_fields())
            self._usage_attributes.update(usage.extra)
        if self._kind == "llm_call":
            if model := response_model_of(response):
                self.fields["response_model"] = model
            if reason := finish_reason_of(response):
                self.fields["finish_reason"] = reason
            if (tier := service_tier_of(response)) and "service_tier" not in self.fields:
                self.fields["service_tier"] = tier

    def first_token(self) -> None:
        """Mark the first streamed token (sets ``ttft_ms`` and ``stream``)."""
        if "ttft_ms" not in self.fields:
            self.fields["ttft_ms"] = (time.perf_counter() - self._t0) * 1000
            self.fields["stream"] = True

    def set(self, **fields: Any) -> None:
        self.fields.update(fields)

    def stream_ended(self, result: StreamUsage, exc: BaseException | None, *, cancelled: bool) -> None:
        """Called once by the stream wrapper: at its end, on its error, or when closed early."""
        try:
            response = result.response()
            if response is not None:
                self._take(response)
            if result.finish_reason:
                self.fields["finish_reason"] = result.finish_reason[:64]
            if result.model and "response_model" not in self.fields:
                self.fields["response_model"] = result.model
            if result.service_tier and "service_tier" not in self.fields:
                self.fields["service_tier"] = service_tier_of({"service_tier": result.service_tier})
            if result.usage_missing and exc is None and not cancelled:
                self._warn_no_usage()
        except Exception:  # noqa: BLE001 - telemetry never breaks the stream
            pass
        self._emit(exc, cancelled=cancelled)

    def _warn_no_usage(self) -> None:
        tel = self._tel
        if not getattr(tel, "_warned_stream_usage", False):
            try:
                tel._warned_stream_usage = True  # type: ignore[attr-defined]  # once per Telemetry
            except AttributeError:
                pass
            logger.warning("streamed OpenAI chat completion ended without usage: pass "
                           "stream_options={'include_usage': True} so that its tokens are counted "
                           "(logged once per Telemetry)")

    def __enter__(self) -> CallTracker:
        self.fields = {}
        self._usage_attributes = {}
        self._streaming = self._emitted = False
        self._ts = time.time()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None and self._streaming:
            return  # the stream's end emits the event
        self._emit(exc, cancelled=False)  # the exception, if any, propagates

    async def __aenter__(self) -> CallTracker:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)

    def _emit(self, exc: BaseException | None, *, cancelled: bool) -> None:
        if self._emitted:
            return
        self._emitted = True
        try:
            latency = (time.perf_counter() - self._t0) * 1000
            body = {"event_type": self._kind, "status": "ok", **self._fields, "ts": self._ts, "latency_ms": latency}
            if exc is not None:
                body["status"] = str(status_of(exc))
                body["error_type"] = type(exc).__name__[:256]
            elif cancelled:
                body["status"] = "cancelled"
            body.update(self.fields)
            if self._kind == "llm_call":
                # the wire contract requires it; a tracked call whose response reported no usage
                # (raised, cancelled, a stream without usage: warned about) records what it saw
                body.setdefault("output_tokens", 0)
            if self._usage_attributes:
                attributes = dict(body.get("attributes") or {})
                for key, value in list(self._usage_attributes.items())[:MAX_USAGE_ATTRIBUTES]:
                    attributes.setdefault(key, value)
                body["attributes"] = attributes
            if "feature" not in body:
                body["feature"] = ""
            self.event_id = self._tel._put(body)
        except Exception:  # noqa: BLE001 - telemetry never raises into the caller
            pass

    def __call__(self, fn: F) -> F:
        template = self

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with CallTracker(template._tel, template._kind, template._fields) as call:
                    return call.record(await fn(*args, **kwargs))
            return async_wrapper  # type: ignore[return-value]  # same signature as fn

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with CallTracker(template._tel, template._kind, template._fields) as call:
                return call.record(fn(*args, **kwargs))
        return wrapper  # type: ignore[return-value]  # same signature as fn
