"""Alert grouping: related alerts share one ``incident_id``, so that one problem is one page.

A cost spike, a token spike and a runaway loop of one tenant at one time are one incident; an
error-rate and a latency regression of one model at one time are another. The rule, pure and
deterministic (replay and live group alike):

- an alert's *group* is its tenant when its scope names one, else its scope (provider+model, tool,
  retrieval index): what one person would look at;
- an alert that opens joins the incident of its group if that incident had an alert open or
  updated within ``join_s`` (15 minutes) of event time before; otherwise it starts a new incident
  whose id is its own ``alert_id``;
- every later publication of an alert (updates, its resolution) carries the same ``incident_id``.

``alerts.jsonl`` stays one object per alert; a page is a distinct ``incident_id``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flyball.schemas import Alert


def group_of(alert: Alert) -> str:
    scope = alert.scope
    if scope.tenant_id:
        return f"tenant_id={scope.tenant_id}"
    return scope.key()


@dataclass(slots=True)
class IncidentGrouper:
    join_s: float = 900.0
    by_alert: dict[str, str] = field(default_factory=dict)              # open alert -> incident
    by_group: dict[str, tuple[str, float]] = field(default_factory=dict)  # group -> (incident, last activity)

    def assign(self, alert: Alert) -> Alert:
        """``alert`` with its ``incident_id``."""
        t = alert.last_seen.timestamp()
        group = group_of(alert)
        incident = self.by_alert.get(alert.alert_id)
        if incident is None:
            current = self.by_group.get(group)
            opened = (alert.opened_at or alert.first_seen).timestamp()
            if current is not None and opened - current[1] <= self.join_s:
                incident = current[0]
            else:
                incident = alert.alert_id
            if alert.status == "open":
                self.by_alert[alert.alert_id] = incident
        elif alert.status != "open":
            del self.by_alert[alert.alert_id]
        last = self.by_group.get(group)
        if last is None or last[0] != incident or t > last[1]:
            self.by_group[group] = (incident, max(t, last[1]) if last is not None and last[0] == incident else t)
        if alert.incident_id == incident:
            return alert
        return alert.model_copy(update={"incident_id": incident})

    def evict(self, watermark: float) -> None:
        """Forget groups idle for longer than ``join_s`` (bounded memory)."""
        self.by_group = {g: v for g, v in self.by_group.items() if watermark - v[1] <= self.join_s}

    def snapshot(self) -> dict[str, Any]:
        return {"alerts": dict(self.by_alert), "groups": {g: list(v) for g, v in self.by_group.items()}}

    def restore(self, data: dict[str, Any]) -> None:
        self.by_alert = dict(data.get("alerts") or {})
        self.by_group = {g: (v[0], float(v[1])) for g, v in (data.get("groups") or {}).items()}
