"""Typed aggregator settings (pydantic-settings; environment variables GRIDMINT_CLOUD_*)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CloudSettings(BaseSettings):
    """Everything the aggregator needs to run."""

    model_config = SettingsConfigDict(env_prefix="GRIDMINT_CLOUD_")

    database_url: str = "sqlite:///var/gridmint-cloud.sqlite"
    broker_url: str = Field(
        "mqtt://127.0.0.1:1883",
        description="mqtt(s)://host:port, or a comma-separated failover list (a cluster's nodes)",
    )
    deployment: str = Field("gridmint-dev", description="deployment id (records' external AAD)")
    admin_token: str = Field("", description="bearer token for admin calls; empty disables them")
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    max_message_bytes: int = Field(
        65536,
        gt=0,
        description="largest token message ingest reads (bigger: refused too_large); the broker "
        "config (cloud.broker_config) disconnects a client whose packet is much bigger",
    )
    # Limits that keep one flooding device or HTTP client from starving the others
    # (docs/operations.md, "Input limits"). A rate of 0 turns that limit off.
    ingest_device_rate_per_s: float = Field(
        5.0,
        ge=0,
        description="token messages per second each device may send, sustained (an edge sends "
        "one per interval: 1/300 s); over it, rate_limited (retryable, nothing stored)",
    )
    ingest_device_burst: int = Field(
        4096,
        ge=1,
        description="token messages a device may send at once: a backlog drain after an outage "
        "(7 days of 5-minute intervals = 2016) fits without a refusal",
    )
    http_rate_per_s: float = Field(
        50.0,
        ge=0,
        description="HTTP requests per second per client (its credential, else its address); "
        "over it, 429 with Retry-After",
    )
    http_burst: int = Field(200, ge=1, description="HTTP requests a client may make at once")
    http_max_body_bytes: int = Field(
        1 << 20, gt=0, description="largest HTTP request body (bigger: 413)"
    )
    future_skew_s: int = 120
    backfill_window_s: int = 7 * 24 * 3600
    client_id: str = "gridmint-aggregator"
    gc_freeze_s: float = Field(
        1.0,
        ge=0,
        description="seconds between freezing long-lived objects out of the cyclic garbage "
        "collector (0: Python's default; see cloud/gc_policy.py)",
    )
    ingest_workers: int = Field(
        0,
        ge=0,
        le=64,
        description="ingest worker processes, partitioned by device (0: ingest in this process)",
    )
    # The aggregator's own TLS identity on an mqtts:// broker.
    broker_ca_file: Path | None = Field(None, description="CA that signed the broker certificate")
    broker_cert_file: Path | None = Field(None, description="aggregator client certificate")
    broker_key_file: Path | None = Field(None, description="its key")
    # The device CA and the broker files it keeps in step with the registry (all optional: without
    # a CA, enrollment issues no certificate and the broker is not told about decisions).
    device_ca_dir: Path | None = Field(None, description="folder written by `gridmint cloud pki`")
    broker_acl_file: Path | None = Field(None, description="Mosquitto acl_file to regenerate")
    broker_crl_file: Path | None = Field(None, description="Mosquitto crlfile to regenerate")
    broker_pid_file: Path | None = Field(None, description="Mosquitto pid_file, to send SIGHUP")
    device_cert_days: int = Field(90, gt=0, le=825)
    crl_refresh_s: float = Field(
        3600.0, gt=0, description="real seconds between CRL/ACL rewrites (the CRL lives 24 h)"
    )
    # The token ledger.
    ledger_key_file: Path | None = Field(
        None, description="checkpoint signing key; default: next to a SQLite database file"
    )
    ledger_origin: str = Field("", description="log name; default gridmint/<deployment>/ledger")
    ledger_grace_s: int = Field(
        60, ge=0, description="an interval closes no sooner than this after its end (clock s)"
    )
    ledger_max_wait_s: int = Field(
        24 * 3600,
        ge=0,
        description="an interval waiting for a silent device of its site closes after this",
    )
    ledger_close_every_s: float = Field(2.0, gt=0, description="real seconds between closes")
    sequencer_poll_s: float = Field(
        2.0,
        gt=0,
        description="a standby process tries this often to become the ledger sequencer",
    )
    rec_issue_every_s: float = Field(
        3600.0, gt=0, description="real seconds between rounds of 1 MWh certificate bundling"
    )
    battery_usable_wh: int = Field(10_000, ge=0, description="per-site battery until registered")
    battery_soh_permille: int = Field(1000, ge=1, le=1000)
    battery_self_discharge_ppm_per_h: int = Field(50, ge=0)
    battery_round_trip_permille: int = Field(900, ge=1, le=1000)
    key_overlap_s: int = Field(
        24 * 3600, ge=0, description="how long a rotated-out signing key keeps verifying"
    )
    # The VPP market (prices in whole minor currency units per kWh).
    market_enabled: bool = True
    market_interval_s: Literal[300, 900] = 300
    market_mode: Literal["continuous", "call_auction"] = "continuous"
    market_tick: int = Field(1, gt=0)
    market_currency: str = Field(
        "EUR", pattern="^[A-Z]{3}$", description="ISO 4217 currency of prices and credits"
    )
    market_feed_in_price: int = Field(8, ge=0, description="price band floor (feed-in tariff)")
    market_retail_price: int = Field(32, ge=0, description="price band ceiling (retail price)")
    market_platform_fee: int = Field(1, ge=0, description="per kWh, paid by the buyer")
    market_dso_fee: int = Field(4, ge=0, description="distribution charge per kWh, buyer pays")
    market_gate_closure_s: int = Field(300, ge=0, description="orders stop this long before")
    market_horizon_s: int = Field(24 * 3600, gt=0, description="books open this long before")
    market_forecast_share_permille: int = Field(500, ge=0, le=1000)
    market_credit_limit_minor: int = Field(
        0, ge=0, le=0, description="credit beyond payment credits: only 0 until the ledger has it"
    )
    market_latitude: float = Field(48.0, ge=-90, le=90, description="for the PV forecast shape")
    market_longitude: float = Field(0.0, ge=-180, le=180)
    # Time series out (cloud/services/timeseries.py; docs/operations.md, "Time series").
    influx_url: str | None = Field(
        None, description="InfluxDB v2 base URL (http://host:8086); None: no time series out"
    )
    influx_token: str = Field("", description="InfluxDB API token with write access")
    influx_org: str = Field("gridmint", description="InfluxDB organisation")
    influx_bucket: str = Field("gridmint", description="InfluxDB bucket")
    influx_every_s: float = Field(
        30.0, gt=0, description="real seconds between writes of newly closed intervals"
    )
    # The DERMS: live fleet, alarms and dispatch (docs/operations.md, "Fleet and dispatch").
    derms_enabled: bool = Field(True, description="follow telemetry and status; dispatch events")
    dispatch_key_file: Path | None = Field(
        None, description="command signing key; default: next to a SQLite database file"
    )
    battery_max_w: int = Field(
        5_000, ge=0, description="per-site battery charge/discharge limit until registered"
    )
    fleet_stale_s: float = Field(
        60.0, gt=0, description="a device silent this long (clock s) is shown offline"
    )
    dispatch_tick_s: float = Field(
        1.0, gt=0, description="real seconds between event board samples and resends"
    )
    dispatch_reward_per_kwh: int = Field(
        20, ge=0, description="reward credits (minor units) per kWh of delivered flexibility"
    )
    meter_tolerance_permille: int = Field(
        10,
        ge=0,
        description="a day where the virtual meter and the revenue meter differ by more than "
        "this (per mille of the revenue reading) raises a meter_mismatch alarm",
    )
    dispatch_resend_s: float = Field(
        30.0, gt=0, description="an unanswered command is sent again after this (clock s)"
    )
    # The OpenADR 3.0.1 VTN (docs/openadr.md): its OAuth2 clients, as a JSON list of
    # {"client_id", "client_secret" (8+ characters), "scopes": [read_all, write_programs,
    # write_events, write_reports, write_subscriptions, write_vens]}. Empty: no VTN.
    openadr_clients: str = Field(
        "[]", description="OpenADR 3 VTN clients (JSON list of client_id, client_secret, scopes)"
    )
    # Payments (cloud/services/payments.py; docs/operations.md, "Payments"). Amounts are in minor
    # units of their currency (ISO 4217).
    payment_provider: Literal["sandbox", "stripe"] = Field(
        "sandbox", description="sandbox: embedded, no money moves; stripe: Stripe PaymentIntents"
    )
    stripe_api_base: str = Field("https://api.stripe.com", description="Stripe API base URL")
    stripe_secret_key: str = Field("", description="Stripe secret key (sk_live_... / sk_test_...)")
    stripe_webhook_secret: str = Field(
        "", description="the webhook endpoint's signing secret (whsec_...)"
    )
    payment_timeout_s: int = Field(
        1800,
        gt=0,
        description="a payment still unpaid this long after it started fails (the shop then "
        "releases its reservations)",
    )
    # The carbon shop's homeowner listings (docs/carbon-shop.md, "Our own solar certificates"):
    # kg CO2e avoided = certificate Wh x this factor / 1e6, rounded down. Default: the US EPA
    # AVERT national weighted average marginal CO2 rate the EPA Greenhouse Gas Equivalencies
    # Calculator uses, 1,559 lb/MWh = 707 g/kWh (cloud/domain/certificates.py).
    shop_grid_g_co2e_per_kwh: int = Field(
        707, gt=0, le=2000, description="grid emission factor for listed certificates, g CO2e/kWh"
    )
    bank_transfer_fee_minor: int = Field(
        0, ge=0, description="flat fee per market-credit top-up or redemption by bank transfer"
    )
    # Email (cloud/services/mailer.py) and self-registration (cloud/services/registration.py;
    # docs/carbon-shop.md, "Registration"). Without smtp_host mails are kept in memory (the
    # embedded demo's outbox) and nothing is sent.
    smtp_host: str = Field(
        "", description="SMTP server for outgoing mail; empty: keep mails in memory"
    )
    smtp_port: int = Field(587, gt=0, lt=65536, description="its port (587 submission, 25 relay)")
    smtp_from: str = Field("gridmint <no-reply@localhost>", description="the From address")
    smtp_starttls: bool = Field(False, description="upgrade the connection with STARTTLS")
    smtp_username: str = Field("", description="login name (empty: no login)")
    smtp_password: str = Field("", description="login password")
    smtp_timeout_s: float = Field(10.0, gt=0, description="give up on the mail server after this")
    public_base_url: str = Field(
        "",
        description="the aggregator's address as users reach it, for links in mails "
        "(empty: http://<http_host>:<http_port>)",
    )
    email_link_ttl_s: int = Field(
        24 * 3600, gt=0, description="how long an email verification link works"
    )
    email_link_secret: str = Field(
        "",
        description="key that signs email links (16+ characters); empty: a random key made "
        "once and kept in the database (table server_secrets)",
    )

    @field_validator("email_link_secret")
    @classmethod
    def _long_enough(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError("email_link_secret needs at least 16 characters (or none at all)")
        return value
