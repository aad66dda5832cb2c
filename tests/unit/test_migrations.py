"""Migration versions are global across packages: two branches picking the same number would make
an existing database skip one of them silently (``schema_migrations`` records versions only)."""

from __future__ import annotations

from collections import Counter

from flyball.control_plane.migrations import ALL_MIGRATIONS


def test_every_migration_version_is_used_once() -> None:
    counts = Counter(version for version, _ in ALL_MIGRATIONS)
    assert [v for v, n in counts.items() if n > 1] == []

