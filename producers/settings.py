"""Shim configuration: ``FLYBALL_*`` environment variables; constructor arguments override."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from flyball.schemas import MAX_TTL_S


class ShimSettings(BaseSettings):
    """Shim configuration from ``FLYBALL_*`` environment; arguments override."""

    model_config = SettingsConfigDict(env_prefix="FLYBALL_", extra="ignore", frozen=True)

    kafka_bootstrap: str = "127.0.0.1:9092"
    environment: str = "production"
    shim_queue_size: int = 100_000
    shim_batch_size: int = 2_000
    # where batches wait while the broker is down; unset: a private temporary directory
    # (survives an outage, not a restart). Set it in production.
    shim_spill_dir: Path | None = None
    shim_spill_max_bytes: int = 256 * 1024 * 1024
    shim_send_timeout_s: float = 10.0
    shim_stale_after_s: float = 300.0
    shim_high_risk_scopes: list[dict[str, str]] = []
    shim_directives_url: str | None = None  # base URL of the flyball API, for polling
    shim_api_key: SecretStr | None = None
    shim_poll_interval_s: float = 5.0
    shim_user_id_salt: SecretStr = SecretStr("")
    # "kid:secret,kid2:secret2": directives must carry a signature by one of these keys
    signing_keys: SecretStr | None = None
    shim_max_directive_ttl_s: float = Field(default=MAX_TTL_S, gt=0, le=MAX_TTL_S)

