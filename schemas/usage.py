"""The service-tier vocabulary shared by the shim (what a response says served the call) and
pricing (which rates apply), so that the two can never disagree on a spelling.

Providers name the same tier differently: OpenAI ``default`` / ``auto`` / ``fast`` (answered as
``priority``), Anthropic ``standard``, Gemini ``standard`` / ``unspecified``, Vertex AI's
``traffic_type`` ``ON_DEMAND`` / ``ON_DEMAND_PRIORITY`` / ``ON_DEMAND_FLEX``, spans
``openai.response.service_tier``. flyball stores ``''`` for standard and ``batch``, ``flex``,
``priority`` for the billed tiers; any other value is kept lowercased (``scale``,
``provisioned``, ...) so that pricing can say it has no rate for it instead of guessing.
"""

from __future__ import annotations

from typing import Final

STANDARD_TIERS: Final = frozenset({"", "default", "standard", "auto", "unspecified", "on_demand",
                                   "service_tier_unspecified", "traffic_type_unspecified"})
_ALIASES: Final = {
    "batches": "batch", "batch": "batch",
    "flex": "flex", "on_demand_flex": "flex",
    "priority": "priority", "fast": "priority", "on_demand_priority": "priority",
    "provisioned_throughput": "provisioned",
}


def normalize_service_tier(value: object) -> str:
    """``''`` (standard), ``batch``, ``flex``, ``priority``, or another tier lowercased."""
    if not isinstance(value, str):
        value = getattr(value, "value", "")
        if not isinstance(value, str):
            return ""
    text = value.strip().lower().replace("-", "_")
    if text.startswith(("servicetier.", "traffictype.")):
        text = text.split(".", 1)[1]
    if text in STANDARD_TIERS:
        return ""
    return _ALIASES.get(text, text[:64])
