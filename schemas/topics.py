"""Kafka topic names: part of the public contract."""

EVENTS = "flyball.events.v1"
DLQ = "flyball.events.dlq.v1"
ALERTS = "flyball.alerts.v1"
DIRECTIVES = "flyball.directives.v1"
