"""Sinks: where processed events go (ClickHouse)."""
