"""Contracts shared by every flyball package: events, alerts, directives (pydantic v2)."""

from .alerts import Alert, AlertKind, Scope, scope_key
from .directives import MAX_BURST, MAX_CHAIN, MAX_MODEL, MAX_RATE, MAX_TTL_S, ActionKind, Directive, DirectiveState
from .events import (
    EVENT_ADAPTER,
    SCHEMA_VERSION,
    CallStatus,
    Event,
    EventType,
    Feedback,
    InvalidEvent,
    LLMCall,
    Retrieval,
    SafetyTrigger,
    ToolCall,
    parse_event,
    to_wire,
)
from .signing import KeySet, SignatureError, sign, verify
from .topics import ALERTS, DIRECTIVES, DLQ, EVENTS
from .usage import normalize_service_tier

__all__ = [
    "ALERTS",
    "DIRECTIVES",
    "DLQ",
    "EVENTS",
    "EVENT_ADAPTER",
    "MAX_BURST",
    "MAX_CHAIN",
    "MAX_MODEL",
    "MAX_RATE",
    "MAX_TTL_S",
    "SCHEMA_VERSION",
    "ActionKind",
    "Alert",
    "AlertKind",
    "CallStatus",
    "Directive",
    "DirectiveState",
    "Event",
    "EventType",
    "Feedback",
    "InvalidEvent",
    "KeySet",
    "LLMCall",
    "Retrieval",
    "SafetyTrigger",
    "Scope",
    "SignatureError",
    "ToolCall",
    "normalize_service_tier",
    "parse_event",
    "scope_key",
    "sign",
    "to_wire",
    "verify",
]
