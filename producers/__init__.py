"""The thin shim a product service installs: emit events, enforce directives.

    from flyball.producers import Telemetry
    tel = Telemetry(service="checkout")
    tel.emit_llm_call(tenant_id="acme", provider="openai", model="gpt-4o-mini", input_tokens=1200)
    if tel.guard(tenant_id="acme").allowed: ...
"""

from .client import AsyncTelemetry, ShimSettings, Telemetry
from .enforcement import Decision, DirectiveView, enforce

__all__ = ["AsyncTelemetry", "Decision", "DirectiveView", "ShimSettings", "Telemetry", "enforce"]
