"""Dead-letter records are bounded whatever the input, and one bad input never stops a batch."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime

import orjson
import pytest
from flyball.stream_processors.pipeline import EVENT_COLUMNS, DeadLetter, Pipeline
from flyball.stream_processors.pricing import PriceBook, PriceEntry, load_catalog

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PRODUCER_LIMIT = 1_048_576  # aiokafka's default max_request_size
BOOK = load_catalog(json.dumps({"format": "flyball.prices/1", "prices": [
    {"provider": "openai", "model": "gpt-4o-mini", "effective_from": "2025-01-01T00:00:00+00:00",
     "input": "0.00000015", "output": "0.0000006"},
]}))


def good(tenant: str = "acme") -> bytes:
    return orjson.dumps({"event_type": "llm_call", "event_id": str(uuid.uuid4()), "ts": NOW.isoformat(),
                         "tenant_id": tenant, "provider": "openai", "model": "gpt-4o-mini",
                         "input_tokens": 10, "output_tokens": 5, "schema_version": 1})


@pytest.mark.parametrize("raw", [
    b"x" * 400_000,                      # the incident: 400 KB of non-JSON text
    b"\x00" * 2_000_000,                 # control bytes: six bytes each once JSON-escaped
    bytes(range(128, 256)) * 20_000,     # invalid UTF-8: replacement characters and base64
    b'{"event_type": "' + b"q" * 3_000_000 + b'"}',  # the reason would quote the value
], ids=["text", "nul", "binary", "huge-tag"])
def test_dead_letter_record_stays_under_the_producer_limit_and_keeps_hash_and_length(raw: bytes) -> None:
    result = Pipeline(lambda: BOOK).process([raw, good()], now=NOW)
    assert len(result.rows) == 1 and len(result.dead) == 1
    body = result.dead[0].record(NOW)
    assert len(body) < PRODUCER_LIMIT / 2
    record = orjson.loads(body)
    assert record["original_len"] == len(raw)
    assert record["original_sha256"] == hashlib.sha256(raw).hexdigest()
    assert record["truncated"] is True
    assert record["reason"]


def test_small_dead_letter_keeps_the_whole_original() -> None:
    record = orjson.loads(DeadLetter(b"not json", "event: invalid JSON").record(NOW))
    assert record["original"] == "not json" and record["original_b64"] is None
    assert record["truncated"] is False and record["original_len"] == 8


class BrokenOnOneModel(PriceBook):
    """A pricing bug that shows on one model only."""

    def lookup(self, provider: str, model: str, at: datetime) -> PriceEntry | None:
        if model == "boom":
            raise ZeroDivisionError("bug")
        return super().lookup(provider, model, at)


def test_an_event_the_pricing_cannot_handle_is_dead_lettered_and_the_batch_goes_on() -> None:
    book = BrokenOnOneModel.of(e for versions in BOOK.entries.values() for e in versions)
    bad = orjson.loads(good("victim"))
    bad["model"] = "boom"
    result = Pipeline(lambda: book).process([good("a"), orjson.dumps(bad), good("b")], now=NOW)
    assert [dict(zip(EVENT_COLUMNS, r, strict=True))["tenant_id"] for r in result.rows] == ["a", "b"]
    assert [d.reason for d in result.dead] == ["event: could not be priced (ZeroDivisionError)"]
