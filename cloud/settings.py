"""Typed aggregator settings (pydantic-settings; environment variables GRIDMINT_CLOUD_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CloudSettings(BaseSettings):
    """Everything the aggregator needs to run."""

    model_config = SettingsConfigDict(env_prefix="GRIDMINT_CLOUD_")

    database_url: str = "sqlite:///var/gridmint-cloud.sqlite"
    broker_url: str = "mqtt://127.0.0.1:1883"
    deployment: str = Field("gridmint-dev", description="deployment id (records' external AAD)")
    admin_token: str = Field("", description="bearer token for admin calls; empty disables them")
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    max_message_bytes: int = 65536
    future_skew_s: int = 120
    backfill_window_s: int = 7 * 24 * 3600
    client_id: str = "gridmint-aggregator"
