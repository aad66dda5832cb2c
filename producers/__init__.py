"""The thin shim a product service installs: emit events, enforce directives.

    from flyball.producers import Telemetry
    tel = Telemetry(service="checkout")
    tel.emit_llm_call(tenant_id="acme", provider="openai", model="gpt-4o-mini", input_tokens=1200)
    if tel.guard(tenant_id="acme").allowed: ...
"""

from .adapters import Usage, service_tier_of, status_of, usage_of
from .buffer import SpillLog
from .client import AsyncTelemetry, CallTracker, Counters, ShimSettings, Telemetry
from .enforcement import Decision, DirectiveView, Staleness, enforce

__all__ = ["AsyncTelemetry", "CallTracker", "Counters", "Decision", "DirectiveView", "ShimSettings", "SpillLog",
           "Staleness", "Telemetry", "Usage", "enforce", "service_tier_of", "status_of", "usage_of"]
