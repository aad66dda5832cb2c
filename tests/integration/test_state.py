"""The control plane's persisted state on a real chDB store: API keys survive a restart as
hashes only, and policies are versioned and audited, with API changes surviving a restart
until the policies file changes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from flyball.control_plane.auth import KeyRing, Role
from flyball.control_plane.policy import Policies
from flyball.control_plane.policy_file import SHIPPED_POLICIES_TEXT, load_policies
from flyball.control_plane.state import ControlState, PolicyRegistry
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore
from flyball.control_plane.migrations import ALL_MIGRATIONS

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


async def test_keys_persist_hashed_and_revocation_sticks(tmp_path: Path) -> None:
    store = ClickHouseStore(f"chdb://{tmp_path}")
    store.migrate(ALL_MIGRATIONS)
    ring = KeyRing()
    key, record = ring.issue(Role.FINANCE, tenant_id="acme", name="billing", now=NOW)
    gone, gone_record = ring.issue(Role.SRE, now=NOW)
    state = ControlState(store)
    await state.save_key(record, now=NOW)
    await state.save_key(gone_record, now=NOW)
    revoked = ring.revoke(gone_record.principal.key_id, now=NOW)
    assert revoked is not None
    await state.save_key(revoked, now=NOW)
    dump = store.query("SELECT * FROM api_keys")
    store.close()

    assert key not in repr(dump) and gone not in repr(dump)
    store = ClickHouseStore(f"chdb://{tmp_path}")  # a restart
    try:
        restarted = KeyRing()
        for r in await ControlState(store).load_keys():
            restarted.load(r)
        found = restarted.lookup(key)
        assert found is not None and (found.role, found.tenant_id, found.name) == (Role.FINANCE, "acme", "billing")
        assert restarted.lookup(gone) is None
    finally:
        store.close()


async def test_policy_changes_are_versioned_audited_and_survive_restart_until_the_file_changes(tmp_path: Path) -> None:
    store = ClickHouseStore(f"chdb://{tmp_path}")
    store.migrate(ALL_MIGRATIONS)
    try:
        state = ControlState(store)
        registry = PolicyRegistry(state, Policies(policies=()))
        first = await registry.bootstrap(SHIPPED_POLICIES_TEXT, source="policies.yaml", now=NOW)
        assert first.version == 1
        edited = SHIPPED_POLICIES_TEXT.replace("rate_per_s: 0.5", "rate_per_s: 0.25", 1)
        second = await registry.put(load_policies(edited), actor="key:alice", text=edited, now=NOW)
        changed = {p.policy_id: p.version for p in second.policies}
        assert second.version == 2 and changed["cost-spike-throttle"] == 2 and changed["runaway-loop-throttle"] == 1
        audit = store.query("SELECT decision, actor, policy_id FROM actions ORDER BY at, policy_id")
        assert ("policies_updated", "key:alice", "policies@v2") in audit

        restarted = await PolicyRegistry(state, Policies(policies=())).bootstrap(
            SHIPPED_POLICIES_TEXT, source="policies.yaml", now=NOW)
        assert restarted == second  # the file did not change: the API's version stays in force
        file_edit = SHIPPED_POLICIES_TEXT.replace("max_active: 20", "max_active: 5")
        third = await PolicyRegistry(state, Policies(policies=())).bootstrap(file_edit, source="policies.yaml", now=NOW)
        assert (third.version, third.max_active) == (3, 5)
        assert [v.version for v in await state.policy_versions()] == [3, 2, 1]
    finally:
        store.close()
