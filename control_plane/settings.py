"""Settings for the server processes (`flyball up|demo|worker|api`), from ``FLYBALL_*``."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLYBALL_", extra="ignore", frozen=True)

    kafka_bootstrap: str | None = None  # unset: `flyball up` starts the embedded broker
    clickhouse_url: str | None = None  # unset: chdb:///<data_dir>/clickhouse
    data_dir: Path = Path("./data")
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    admin_api_key: SecretStr | None = None
    prices_file: Path | None = None
    worker_group: str = "flyball-worker"
    control_group: str = "flyball-control-plane"
    session_timeout_ms: int = 6_000
    log_level: str = "info"

    def clickhouse(self) -> str:
        return self.clickhouse_url or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"
