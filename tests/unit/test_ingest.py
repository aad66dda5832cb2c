"""The worker's partition arithmetic (``stream_processors/ingest.py``)."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from flyball.stream_processors.ingest import partition_of


@given(st.text(min_size=1, max_size=80), st.integers(1, 64))
def test_partition_of_a_tenant_is_where_the_shims_producer_puts_its_events(tenant: str, partitions: int) -> None:
    """The rebalance hand-off adopts the tenants of the partitions a replica was given; that is
    only right if it computes the partition as the producer chose it (key = tenant_id)."""
    every = list(range(partitions))
    assert partition_of(tenant, partitions) == DefaultPartitioner()(tenant.encode(), every, every)
