"""Streamed provider responses, wrapped so that their call is recorded when the stream ends.

``wrap_stream(obj, tracker)`` returns a wrapper for anything that streams (duck-typed: an
iterator, an async iterator, or an SDK ``...StreamManager``), or None. The wrapper hands every
chunk through unchanged, as it arrives (nothing is buffered), and reads what each provider
says about the call from where it puts it:

- OpenAI Chat Completions: the final chunk's ``usage`` (sent only with
  ``stream_options={"include_usage": True}``; without it the call is recorded with no tokens
  and a warning is logged once per ``Telemetry``), ``model``, ``service_tier`` and each
  choice's ``finish_reason``; the helper ``ChatCompletionStream``'s ``chunk`` events too;
- OpenAI Responses: the ``response.completed`` (or ``.incomplete`` / ``.failed``) event's
  ``response``, which carries the usage, the model and the service tier;
- Anthropic raw events and ``MessageStream``: ``message_start``'s message (model, input and
  cache usage) merged with ``message_delta``'s cumulative usage and ``stop_reason``;
- Gemini ``generate_content_stream``: the last chunk's ``usage_metadata`` (cumulative), its
  ``model_version`` and the candidates' ``finish_reason``.

Time to first token is taken at the first *content* chunk (a text/tool/reasoning delta, not a
``message_start`` or a role-only chunk). The event is emitted exactly once, when the stream is
exhausted (``ok``), raises (the exception's status), or is closed, exited or dropped before its
end (``cancelled``) - never before.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from enum import Enum
from typing import Any, Protocol

from .adapters import _fields, _get


class StreamSink(Protocol):
    """What a stream wrapper reports to (``CallTracker``)."""

    def first_token(self) -> None: ...

    def stream_ended(self, result: StreamUsage, exc: BaseException | None, *, cancelled: bool) -> None: ...


def _text(value: Any) -> str:
    if isinstance(value, Enum):
        value = value.value
    return value if isinstance(value, str) else ""


def _nonempty(value: Any) -> bool:
    return value is not None and value != "" and value != [] and value != ()


_CHAT_CONTENT = ("content", "tool_calls", "function_call", "refusal", "reasoning_content", "reasoning", "audio")


class StreamUsage:
    """What the items of one stream said about the call, accumulated item by item."""

    __slots__ = ("anthropic", "chat", "chat_usage", "final", "finish_reason", "model", "service_tier")

    def __init__(self) -> None:
        self.final: Any = None  # a response-like object whose usage is the call's (Responses, Gemini)
        self.chat = False  # an OpenAI Chat Completions stream
        self.chat_usage: Any = None  # its final chunk with usage
        self.anthropic: dict[str, Any] | None = None  # merged message_start + message_delta usage
        self.model = ""
        self.finish_reason = ""
        self.service_tier = ""

    def observe(self, item: Any) -> bool:
        """Take what ``item`` says; True if it carries content (for time to first token)."""
        kind = _get(item, "type")
        if kind == "chunk" and _get(item, "chunk") is not None:  # OpenAI ChatCompletionStream helper
            item, kind = item.chunk, None
        if isinstance(kind, str) and _get(item, "choices") is None:
            return self._event(kind, item)
        if _get(item, "candidates") is not None or _get(item, "usage_metadata") is not None:
            return self._gemini(item)
        if _get(item, "choices") is not None or _get(item, "object") == "chat.completion.chunk":
            return self._chat(item)
        return True  # an item we do not know (a caller's own generator): count it as content

    def _event(self, kind: str, item: Any) -> bool:
        if kind == "message_start":
            message = _get(item, "message")
            self.model = _text(_get(message, "model")) or self.model
            self.anthropic = dict(_fields(_get(message, "usage")))
            return False
        if kind == "message_delta":
            usage = {k: v for k, v in _fields(_get(item, "usage")).items() if v is not None}
            self.anthropic = {**(self.anthropic or {}), **usage}  # message_delta's counts are cumulative
            self.finish_reason = _text(_get(_get(item, "delta"), "stop_reason")) or self.finish_reason
            return False
        if kind == "content_block_delta":
            return True
        if kind.startswith("response."):
            response = _get(item, "response")
            if response is not None:
                self.model = _text(_get(response, "model")) or self.model
                if kind in ("response.completed", "response.incomplete", "response.failed"):
                    self.final = response
            return kind.endswith(".delta")
        return False  # content_block_start/stop, message_stop, ping, MessageStream's derived events

    def _chat(self, chunk: Any) -> bool:
        self.chat = True
        self.model = _text(_get(chunk, "model")) or self.model
        self.service_tier = _text(_get(chunk, "service_tier")) or self.service_tier
        if _get(chunk, "usage") is not None:
            self.chat_usage = chunk
        content = False
        for choice in _get(chunk, "choices") or ():
            self.finish_reason = _text(_get(choice, "finish_reason")) or self.finish_reason
            delta = _get(choice, "delta")
            content = content or any(_nonempty(_get(delta, name)) for name in _CHAT_CONTENT)
        return content

    def _gemini(self, chunk: Any) -> bool:
        if _get(chunk, "usage_metadata") is not None:
            self.final = chunk  # cumulative: the last one is the call's
        self.model = _text(_get(chunk, "model_version")) or self.model
        content = False
        for candidate in _get(chunk, "candidates") or ():
            self.finish_reason = _text(_get(candidate, "finish_reason")) or self.finish_reason
            parts = _get(_get(candidate, "content"), "parts") or ()
            content = content or any(_nonempty(_get(p, "text")) or _get(p, "function_call") is not None
                                     for p in parts)
        return content

    @property
    def usage_missing(self) -> bool:
        """An OpenAI chat stream that ended without a usage chunk (no ``include_usage``)."""
        return self.chat and self.chat_usage is None

    def response(self) -> Any:
        """A response-like object for ``CallTracker.record``; None if the stream said nothing."""
        if self.anthropic is not None:
            return {"model": self.model, "usage": self.anthropic, "stop_reason": self.finish_reason or None}
        if self.chat_usage is not None:
            return self.chat_usage
        return self.final


class TrackedStream:
    """A sync stream, passed through item by item; attributes are the wrapped stream's."""

    def __init__(self, inner: Any, sink: StreamSink) -> None:
        self._inner = inner
        self._sink = sink
        self._it: Iterator[Any] | None = None
        self._usage = StreamUsage()
        self._ended = False

    def __iter__(self) -> TrackedStream:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            self._it = iter(self._inner)
        try:
            item = next(self._it)
        except StopIteration:
            self._end(None, cancelled=False)
            raise
        except BaseException as exc:
            self._end(exc, cancelled=False)
            raise
        self._observe(item)
        return item

    def _observe(self, item: Any) -> None:
        try:
            if self._usage.observe(item):
                self._sink.first_token()
        except Exception:  # noqa: BLE001 - telemetry never breaks the stream
            pass

    def _end(self, exc: BaseException | None, *, cancelled: bool) -> None:
        if not self._ended:
            self._ended = True
            self._sink.stream_ended(self._usage, exc, cancelled=cancelled)

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            self._end(None, cancelled=True)

    def __enter__(self) -> TrackedStream:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            self._end(exc, cancelled=exc is None)

    def __del__(self) -> None:
        if not getattr(self, "_ended", True):
            self._end(None, cancelled=True)

    def until_done(self) -> None:
        for _ in self:
            pass

    @property
    def text_stream(self) -> Iterator[str]:
        """Anthropic ``MessageStream.text_stream``, read through the wrapper."""
        for item in self:
            if _get(item, "type") == "text":
                yield item.text

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name.startswith("get_final_") and callable(value):
            def drained(*args: Any, **kwargs: Any) -> Any:
                self.until_done()
                return value(*args, **kwargs)
            return drained
        return value


class AsyncTrackedStream:
    """An async stream, passed through item by item; attributes are the wrapped stream's."""

    def __init__(self, inner: Any, sink: StreamSink) -> None:
        self._inner = inner
        self._sink = sink
        self._it: AsyncIterator[Any] | None = None
        self._usage = StreamUsage()
        self._ended = False

    def __aiter__(self) -> AsyncTrackedStream:
        return self

    async def __anext__(self) -> Any:
        if self._it is None:
            self._it = self._inner.__aiter__() if hasattr(self._inner, "__aiter__") else self._inner
        try:
            item = await self._it.__anext__()
        except StopAsyncIteration:
            self._end(None, cancelled=False)
            raise
        except BaseException as exc:
            self._end(exc, cancelled=False)
            raise
        try:
            if self._usage.observe(item):
                self._sink.first_token()
        except Exception:  # noqa: BLE001 - telemetry never breaks the stream
            pass
        return item

    def _end(self, exc: BaseException | None, *, cancelled: bool) -> None:
        if not self._ended:
            self._ended = True
            self._sink.stream_ended(self._usage, exc, cancelled=cancelled)

    async def _close_inner(self) -> None:
        close: Callable[[], Any] | None = getattr(self._inner, "close", None) or getattr(self._inner, "aclose", None)
        if close is not None:
            result = close()
            if inspect.isawaitable(result):
                await result

    async def close(self) -> None:
        try:
            await self._close_inner()
        finally:
            self._end(None, cancelled=True)

    aclose = close

    async def __aenter__(self) -> AsyncTrackedStream:
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            await self._close_inner()
        finally:
            self._end(exc, cancelled=exc is None)

    def __del__(self) -> None:
        if not getattr(self, "_ended", True):
            self._end(None, cancelled=True)

    async def until_done(self) -> None:
        async for _ in self:
            pass

    @property
    async def text_stream(self) -> AsyncIterator[str]:
        """Anthropic ``AsyncMessageStream.text_stream``, read through the wrapper."""
        async for item in self:
            if _get(item, "type") == "text":
                yield item.text

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name.startswith("get_final_") and callable(value):
            async def drained(*args: Any, **kwargs: Any) -> Any:
                await self.until_done()
                result = value(*args, **kwargs)
                return await result if inspect.isawaitable(result) else result
            return drained
        return value


class TrackedStreamManager:
    """An SDK ``...StreamManager`` (``with client.messages.stream(...) as stream``)."""

    def __init__(self, inner: Any, sink: StreamSink) -> None:
        self._inner = inner
        self._sink = sink
        self._stream: TrackedStream | None = None

    def __enter__(self) -> TrackedStream:
        self._stream = TrackedStream(self._inner.__enter__(), self._sink)
        return self._stream

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Any:
        try:
            return self._inner.__exit__(exc_type, exc, tb)
        finally:
            if self._stream is not None:
                self._stream._end(exc, cancelled=exc is None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class AsyncTrackedStreamManager:
    """An SDK ``Async...StreamManager`` (``async with client.messages.stream(...) as stream``)."""

    def __init__(self, inner: Any, sink: StreamSink) -> None:
        self._inner = inner
        self._sink = sink
        self._stream: AsyncTrackedStream | None = None

    async def __aenter__(self) -> AsyncTrackedStream:
        self._stream = AsyncTrackedStream(await self._inner.__aenter__(), self._sink)
        return self._stream

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Any:
        try:
            return await self._inner.__aexit__(exc_type, exc, tb)
        finally:
            if self._stream is not None:
                self._stream._end(exc, cancelled=exc is None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


Wrapped = TrackedStream | AsyncTrackedStream | TrackedStreamManager | AsyncTrackedStreamManager


def wrap_stream(obj: Any, sink: StreamSink) -> Wrapped | None:
    """A wrapper if ``obj`` streams (iterator, async iterator, stream manager), else None."""
    if obj is None or isinstance(obj, (str, bytes, bytearray, dict, list, tuple)):
        return None
    cls = type(obj)
    if cls.__name__.endswith("StreamManager"):
        if hasattr(cls, "__aenter__"):
            return AsyncTrackedStreamManager(obj, sink)
        if hasattr(cls, "__enter__"):
            return TrackedStreamManager(obj, sink)
    if hasattr(cls, "__anext__") or (hasattr(cls, "__aiter__") and not hasattr(cls, "__iter__")):
        return AsyncTrackedStream(obj, sink)
    if hasattr(cls, "__next__"):
        return TrackedStream(obj, sink)
    return None
