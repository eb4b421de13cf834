"""The aggregator's tables (SQLAlchemy Core), one schema for SQLite and PostgreSQL.

Owns: table definitions. The schema itself is created and changed only by the Alembic migrations
in cloud/storage/migrations; a test checks that these definitions and the migrations agree.
Energy is whole Wh in BIGINT columns, times are Unix seconds or milliseconds (UTC).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

# SQLite only auto-increments INTEGER PRIMARY KEY columns.
BigId = BigInteger().with_variant(Integer(), "sqlite")

devices = Table(
    "devices",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("site_id", String(64), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("capacity_w", BigInteger, nullable=False),
    Column("zone", String(64), nullable=False, server_default=""),
    Column("created_ms", BigInteger, nullable=False),
)

device_keys = Table(
    "device_keys",
    metadata,
    Column("kid", LargeBinary(8), primary_key=True),
    Column("device_id", String(64), ForeignKey("devices.device_id"), nullable=False, index=True),
    Column("public_key", LargeBinary(32), nullable=False),
    Column("valid_from", BigInteger, nullable=False),
    Column("valid_until", BigInteger, nullable=True),
    Column("revoked_ms", BigInteger, nullable=True),  # a compromised key: refused from then on
)

tokens = Table(
    "tokens",
    metadata,
    Column("token_id", String(64), primary_key=True),
    Column("device_id", String(64), ForeignKey("devices.device_id"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("boot", BigInteger, nullable=False),
    Column("interval_start", BigInteger, nullable=False),
    Column("interval_s", Integer, nullable=False),
    Column("generated_wh", BigInteger, nullable=False),
    Column("imported_wh", BigInteger, nullable=False),
    Column("exported_wh", BigInteger, nullable=False),
    Column("charged_wh", BigInteger, nullable=False),
    Column("discharged_wh", BigInteger, nullable=False),
    Column("status", String(64), nullable=False),
    Column("quality", Integer, nullable=False),
    Column("record_hash", LargeBinary(32), nullable=False, unique=True),
    Column("prev_hash", LargeBinary(32), nullable=False),
    Column("envelope", LargeBinary, nullable=False),
    Column("received_ms", BigInteger, nullable=False),
    # Copied from the verified record at ingest, so closing an interval reads columns instead
    # of decoding every envelope again (the envelope stays the evidence; exports re-derive).
    Column("soc_permille", Integer, nullable=True),
    Column("tech", String(32), nullable=False),
    Column("zone", String(64), nullable=False),
    UniqueConstraint("device_id", "seq", name="uq_tokens_device_seq"),
    UniqueConstraint("device_id", "interval_start", name="uq_tokens_device_interval"),
    Index("ix_tokens_interval_start", "interval_start"),
)

rejections = Table(
    "rejections",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("received_ms", BigInteger, nullable=False),
    Column("topic", Text, nullable=False),
    Column("device_id", String(64), nullable=True),
    Column("reason", String(32), nullable=False, index=True),
    Column("detail", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", LargeBinary(32), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("truncated", Integer, nullable=False),
)

# People and services. Secrets are never stored: passwords as argon2 hashes, bearer tokens and
# API-key secrets as SHA-256 hex digests.

accounts = Table(
    "accounts",
    metadata,
    Column("account_id", String(32), primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("display_name", String(200), nullable=False),
    Column("password_hash", String(255), nullable=False),
    Column("role", String(16), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("created_ms", BigInteger, nullable=False),
    # Self-registration's profile (migration 0019; cloud/services/registration.py).
    Column("account_type", String(16), nullable=False, server_default="individual"),
    Column("business_name", String(200), nullable=False, server_default=""),
    Column("business_id", String(64), nullable=False, server_default=""),  # company/VAT number
    Column("affiliation", String(16), nullable=False, server_default="none"),
    Column("email_verified_ms", BigInteger, nullable=True),  # None: not verified yet
    CheckConstraint(
        "role IN ('homeowner', 'installer', 'approver', 'grid_operator', 'admin', "
        "'provider', 'buyer')",
        name="ck_accounts_role",
    ),
    CheckConstraint("status IN ('pending', 'approved', 'rejected')", name="ck_accounts_status"),
    CheckConstraint("account_type IN ('individual', 'business')", name="ck_accounts_account_type"),
    CheckConstraint("affiliation IN ('none', 'provider')", name="ck_accounts_affiliation"),
)

# The deployment's own secrets, made on first use (the key that signs email links): they live
# in the database so that every API process of a deployment, and its restarts, share them.
server_secrets = Table(
    "server_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("secret", String(128), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

sites = Table(
    "sites",
    metadata,
    Column("site_id", String(64), primary_key=True),
    Column(
        "owner_account_id",
        String(32),
        ForeignKey("accounts.account_id"),
        nullable=False,
        index=True,
    ),
    Column("name", String(200), nullable=False),
    Column("zone", String(64), nullable=False, server_default=""),
    Column("created_ms", BigInteger, nullable=False),
    # where the site is, for the operator's map (migration 0012); null: not given
    Column("latitude", Float, nullable=True),
    Column("longitude", Float, nullable=True),
    # the distribution feeder, a fleet group like the zone (migration 0014); "": not given
    Column("feeder", String(64), nullable=False, server_default=""),
    # IANA zone for the virtual meter's days and exports (migration 0014); storage stays UTC
    Column("time_zone", String(64), nullable=False, server_default="UTC"),
)

auth_tokens = Table(
    "auth_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.account_id"), nullable=False, index=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Column("revoked", Integer, nullable=False, server_default="0"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("key_hash", String(64), nullable=False),
    Column("account_id", String(32), ForeignKey("accounts.account_id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("revoked", Integer, nullable=False, server_default="0"),
)

# One-time codes an installer creates for a site; a Pi enrolls with one (only its hash is kept).
claim_codes = Table(
    "claim_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("site_id", String(64), ForeignKey("sites.site_id"), nullable=False, index=True),
    Column("created_by", String(32), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Column("used_by_device", String(64), nullable=True),
)

# Every approver decision on a device (approve, reject, revoke), append-only. `decided_by` is an
# account id, or the legacy admin token's principal id, so it is not a foreign key.
device_decisions = Table(
    "device_decisions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("device_id", String(64), ForeignKey("devices.device_id"), nullable=False, index=True),
    Column("decided_by", String(32), nullable=False),
    Column("decided_ms", BigInteger, nullable=False, index=True),
    Column("old_status", String(16), nullable=False),
    Column("new_status", String(16), nullable=False),
    Column("reason", String(500), nullable=False, server_default=""),
)

# The token ledger (migration 0005): log leaves, the records they cover, closed intervals,
# signed checkpoints. Append-only.

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("site_id", String(64), nullable=False),
    Column("interval_start", BigInteger, nullable=False),
    Column("kind", Integer, nullable=False),
    Column("leaf", LargeBinary, nullable=False),
    Column("leaf_hash", LargeBinary(32), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Index("ix_ledger_entries_site", "site_id", "interval_start"),
)

ledger_refs = Table(
    "ledger_refs",
    metadata,
    Column("record_hash", LargeBinary(32), primary_key=True),
    Column("token_id", String(64), nullable=False, unique=True),
    Column("seq", BigInteger, nullable=False),
)

ledger_intervals = Table(
    "ledger_intervals",
    metadata,
    Column("site_id", String(64), primary_key=True),
    Column("interval_start", BigInteger, primary_key=True),
    Column("first_seq", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("closed_ms", BigInteger, nullable=False),
)

ledger_checkpoints = Table(
    "ledger_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("note", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

# Every approver decision on an account (approve, reject), append-only, like device_decisions.
account_decisions = Table(
    "account_decisions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("account_id", String(32), ForeignKey("accounts.account_id"), nullable=False, index=True),
    Column("decided_by", String(32), nullable=False),
    Column("decided_ms", BigInteger, nullable=False, index=True),
    Column("old_status", String(16), nullable=False),
    Column("new_status", String(16), nullable=False),
    Column("reason", String(500), nullable=False, server_default=""),
)

# A site's battery as the ledger models it (migration 0007). The latest values apply to the
# intervals closed from then on; each closed interval's entry records the values it used.
site_batteries = Table(
    "site_batteries",
    metadata,
    Column("site_id", String(64), primary_key=True),
    Column("usable_capacity_wh", BigInteger, nullable=False),
    Column("soh_permille", Integer, nullable=False),
    Column("self_discharge_ppm_per_h", Integer, nullable=False),
    Column("round_trip_permille", Integer, nullable=False),
    Column("updated_by", String(32), nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

# Energy attribute certificates (migration 0008): granular certificates and 1 MWh RECs, the Wh
# slices of generation tokens each covers, and every change of owner. A Wh of a token is
# certified at most once: (token_id, start_wh) is unique and a trigger refuses any slice that
# overlaps another of the same token (the registry's rule, enforced again by the database).
certificates = Table(
    "certificates",
    metadata,
    Column("certificate_id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("owner_site_id", String(64), nullable=False, index=True),
    Column("issued_site_id", String(64), nullable=False, index=True),
    Column("device_ids", Text, nullable=False),  # comma-separated, sorted
    Column("technology", String(64), nullable=False),
    Column("market_zone", String(64), nullable=False),
    Column("production_start", BigInteger, nullable=False),
    Column("production_end", BigInteger, nullable=False),
    Column("energy_wh", BigInteger, nullable=False),
    Column("issued_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Column("retired_ms", BigInteger, nullable=True),
    Column("beneficiary", String(200), nullable=False, server_default=""),
    # Migration 0021: the carbon shop lot that sells this certificate; while set, the
    # certificate is neither transferred nor retired outside the shop.
    Column("listed_lot_id", String(32), nullable=True),
    CheckConstraint("kind IN ('granular', 'rec')", name="ck_certificates_kind"),
    CheckConstraint("status IN ('active', 'retired', 'expired')", name="ck_certificates_status"),
    CheckConstraint("energy_wh > 0", name="ck_certificates_energy"),
)

certificate_slices = Table(
    "certificate_slices",
    metadata,
    Column("token_id", String(64), primary_key=True),
    Column("start_wh", BigInteger, primary_key=True),
    Column("end_wh", BigInteger, nullable=False),
    Column(
        "certificate_id",
        String(64),
        ForeignKey("certificates.certificate_id"),
        nullable=False,
        index=True,
    ),
    CheckConstraint("start_wh >= 0 AND end_wh > start_wh", name="ck_certificate_slices_range"),
)

certificate_transfers = Table(
    "certificate_transfers",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column(
        "certificate_id",
        String(64),
        ForeignKey("certificates.certificate_id"),
        nullable=False,
        index=True,
    ),
    Column("from_site_id", String(64), nullable=False),
    Column("to_site_id", String(64), nullable=False),
    Column("by_account", String(32), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
)

# The market's read models. The truth is the ledger log (ORDER_EVENT and TRADE_MATCH leaves),
# which the order service replays at start; these rows serve the API and the idempotency keys,
# and are written in the same transaction as the leaves they describe.
market_orders = Table(
    "market_orders",
    metadata,
    Column("order_id", String(40), primary_key=True),
    Column("account_id", String(32), nullable=False, index=True),
    Column("client_order_id", String(64), nullable=False),
    Column("request_sha256", LargeBinary(32), nullable=False),
    Column("site_id", String(64), nullable=False),
    Column("side", Integer, nullable=False),
    Column("interval_start", BigInteger, nullable=False, index=True),
    Column("interval_s", Integer, nullable=False),
    Column("quantity_wh", BigInteger, nullable=False),
    Column("limit_price", BigInteger, nullable=False),
    Column("tif", String(8), nullable=False),
    Column("min_fill_wh", BigInteger, nullable=False),
    Column("source", String(64), nullable=False),
    Column("priority", BigInteger, nullable=False),
    Column("placed_seq", BigInteger, nullable=False),
    Column("status", String(20), nullable=False),
    Column("cancel_reason", String(20), nullable=True),
    Column("filled_wh", BigInteger, nullable=False),
    Column("remaining_wh", BigInteger, nullable=False),
    Column("filled_notional", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    UniqueConstraint("account_id", "client_order_id", name="uq_market_orders_client_id"),
    CheckConstraint(
        "quantity_wh > 0 AND filled_wh + remaining_wh = quantity_wh",
        name="ck_market_orders_quantity",
    ),
)

market_trades = Table(
    "market_trades",
    metadata,
    Column("trade_id", String(40), primary_key=True),
    Column("entry_seq", BigInteger, nullable=False, unique=True),  # its TRADE_MATCH leaf
    Column("interval_start", BigInteger, nullable=False, index=True),
    Column("interval_s", Integer, nullable=False),
    Column("buy_order_id", String(40), nullable=False),
    Column("sell_order_id", String(40), nullable=False),
    Column("buyer_account_id", String(32), nullable=False, index=True),
    Column("buyer_site_id", String(64), nullable=False),
    Column("seller_account_id", String(32), nullable=False, index=True),
    Column("seller_site_id", String(64), nullable=False),
    Column("quantity_wh", BigInteger, nullable=False),
    Column("price", BigInteger, nullable=False),
    Column("taker_seq", BigInteger, nullable=False),
    Column("maker_seq", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    # Settlement, once the seller's delivery interval is closed in the ledger.
    Column("status", String(12), nullable=False),  # matched | settled | short
    Column("settled_wh", BigInteger, nullable=True),
    Column("settlement_seq", BigInteger, nullable=True),  # its P2P_TRADE leaf, if any
    Column("shortfall_seq", BigInteger, nullable=True),  # the buyer's GRID_PURCHASE, if any
    Column("buyer_paid_minor", BigInteger, nullable=True),
    Column("seller_received_minor", BigInteger, nullable=True),
    Column("platform_fee_minor", BigInteger, nullable=True),
    Column("dso_fee_minor", BigInteger, nullable=True),
    Column("shortfall_cost_minor", BigInteger, nullable=True),
    Column("settled_ms", BigInteger, nullable=True),
    CheckConstraint("status IN ('matched', 'settled', 'short')", name="ck_market_trades_status"),
)

# A homeowner's automated trading policy for one site (prices minor units per kWh).
market_policies = Table(
    "market_policies",
    metadata,
    Column("site_id", String(64), primary_key=True),
    Column("account_id", String(32), nullable=False, index=True),
    Column("enabled", Integer, nullable=False),
    Column("sell_min_price", BigInteger, nullable=True),  # null: never sells
    Column("sell_max_wh", BigInteger, nullable=False),
    Column("battery_reserve_permille", Integer, nullable=False),
    Column("buy_max_price", BigInteger, nullable=True),  # null: never buys
    Column("buy_max_wh", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    # keep the battery above this share of its usable capacity; 0: no reserve
    Column("min_soc_permille", Integer, nullable=False, server_default="0"),
)

# Which ledger leaf holds which order's events: for a homeowner's inclusion proofs.
market_events = Table(
    "market_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("order_id", String(40), nullable=True, index=True),  # null for a gate closure
    Column("interval_start", BigInteger, nullable=False),
    Column("kind", String(8), nullable=False),  # place | amend | cancel | close
)

# DERMS dispatch (migration 0012): an operator's events, the command each targeted device was
# sent for the event's latest modification, every response a device signed, the event board's
# samples of requested versus measured power, and the operator's alarms.
dispatch_events = Table(
    "dispatch_events",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("modification", Integer, nullable=False),
    Column("group_name", String(80), nullable=False),
    Column("control", Integer, nullable=False),
    Column("value", BigInteger, nullable=False),
    Column("start_s", BigInteger, nullable=False),
    Column("duration_s", Integer, nullable=False),
    Column("ramp_s", Integer, nullable=False),
    Column("randomize_s", Integer, nullable=False),
    Column("name", String(200), nullable=False),
    Column("source", String(200), nullable=False),
    Column("cancelled", Integer, nullable=False, server_default="0"),
    Column("created_ms", BigInteger, nullable=False, index=True),
    Column("created_by", String(64), nullable=False),
    Column("modified_ms", BigInteger, nullable=False),
    Column("rewarded_ms", BigInteger, nullable=True),  # reward credits written to the ledger
)

dispatch_commands = Table(
    "dispatch_commands",
    metadata,
    Column("event_id", String(64), ForeignKey("dispatch_events.event_id"), primary_key=True),
    Column("device_id", String(64), primary_key=True),
    Column("site_id", String(64), nullable=False),
    Column("modification", Integer, nullable=False),
    Column("value", BigInteger, nullable=False),
    Column("expected_w", BigInteger, nullable=False),
    Column("baseline_w", BigInteger, nullable=True),  # null until measured
    Column("sent_ms", BigInteger, nullable=False),
    Column("status", Integer, nullable=True),  # latest 2030.5 response status; null: none yet
    Column("status_ms", BigInteger, nullable=True),
    Column("first_ack_ms", BigInteger, nullable=True),  # when the first response arrived
    Column("measured_w", BigInteger, nullable=True),
    Column("detail", String(128), nullable=False, server_default=""),
    Column("envelope", LargeBinary, nullable=False),  # the signed command, for resending
    # flexibility delivered over the event (Wh, against the baseline) and its reward credits
    Column("delivered_wh", BigInteger, nullable=True),
    Column("reward_minor", BigInteger, nullable=True),
)

dispatch_responses = Table(
    "dispatch_responses",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False, index=True),
    Column("device_id", String(64), nullable=False),
    Column("modification", Integer, nullable=False),
    Column("status", Integer, nullable=False),
    Column("at_ms", BigInteger, nullable=False),  # the device's time
    Column("received_ms", BigInteger, nullable=False),
    Column("measured_w", BigInteger, nullable=True),
    Column("detail", String(128), nullable=False),
    Column("envelope", LargeBinary, nullable=False),  # the signed acknowledgement, kept
)

dispatch_samples = Table(
    "dispatch_samples",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("at_s", BigInteger, primary_key=True),
    Column("requested_w", BigInteger, nullable=False),
    Column("measured_w", BigInteger, nullable=False),
    Column("baseline_w", BigInteger, nullable=False),
    Column("reporting", Integer, nullable=False),  # devices with a reading in the sample
)

alarms = Table(
    "alarms",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("site_id", String(64), nullable=False),
    Column("detail", String(500), nullable=False),
    Column("raised_ms", BigInteger, nullable=False),
    Column("cleared_ms", BigInteger, nullable=True),  # the condition ended
    Column("acked_by", String(64), nullable=True),
    Column("acked_ms", BigInteger, nullable=True),
    Index("ix_alarms_open", "kind", "device_id", "cleared_ms"),
)

# OpenADR 3 VTN objects (cloud/services/openadr.py): the spec's JSON as sent (less id and the
# server's fields), with the columns the VTN filters on. An event keeps the dispatch event it
# became; a deleted event is kept (deleted_ms) so its reports stay readable.
openadr_programs = Table(
    "openadr_programs",
    metadata,
    Column("program_id", String(64), primary_key=True),
    Column("program_name", String(128), nullable=False, unique=True),
    Column("body", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("modified_ms", BigInteger, nullable=False),
)

openadr_events = Table(
    "openadr_events",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("program_id", String(64), nullable=False, index=True),
    Column("dispatch_event_id", String(64), nullable=True),
    Column("start_s", BigInteger, nullable=False),
    Column("end_s", BigInteger, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("modified_ms", BigInteger, nullable=False),
    Column("deleted_ms", BigInteger, nullable=True),
)

openadr_reports = Table(
    "openadr_reports",
    metadata,
    Column("report_id", String(64), primary_key=True),
    Column("program_id", String(64), nullable=False, index=True),
    Column("event_id", String(64), nullable=False, index=True),
    Column("client_name", String(128), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("modified_ms", BigInteger, nullable=False),
)

# Revenue meter data (migration 0015): Green Button files from a utility's meter, for
# reconciliation with the virtual meter. A refused file is kept as a rejected import.
revenue_imports = Table(
    "revenue_imports",
    metadata,
    Column("import_id", String(32), primary_key=True),
    Column("site_id", String(64), nullable=False, index=True),
    Column("source", String(200), nullable=False),
    Column("sha256", LargeBinary(32), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("imported_ms", BigInteger, nullable=False),
    Column("imported_by", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("detail", Text, nullable=False),
    Column("intervals", BigInteger, nullable=False),
    Column("first_start", BigInteger, nullable=True),
    Column("last_end", BigInteger, nullable=True),
)

revenue_intervals = Table(
    "revenue_intervals",
    metadata,
    Column("site_id", String(64), primary_key=True),
    Column("flow", String(16), primary_key=True),  # import | export | generation | net
    Column("interval_start", BigInteger, primary_key=True),
    Column("interval_s", Integer, nullable=False),
    Column("value_wh", BigInteger, nullable=False),
    Column("quality", Integer, nullable=True),
    Column("import_id", String(32), nullable=False),
)

# Utility (machine) clients of the Connect API and the homeowners' grants (migration 0016;
# cloud/services/utility_access.py). Secrets and access tokens are kept as SHA-256 digests.
# `granted_by` and `by` are account ids, or the legacy admin token's "admin-token": no key.
utility_clients = Table(
    "utility_clients",
    metadata,
    Column("client_id", String(32), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("secret_sha256", String(64), nullable=False),
    Column("scopes", String(200), nullable=False),  # space separated
    Column("created_ms", BigInteger, nullable=False),
    Column("revoked", Integer, nullable=False, server_default="0"),
)

utility_tokens = Table(
    "utility_tokens",
    metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column(
        "client_id",
        String(32),
        ForeignKey("utility_clients.client_id"),
        nullable=False,
        index=True,
    ),
    Column("scopes", String(200), nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
)

site_grants = Table(
    "site_grants",
    metadata,
    Column("site_id", String(64), ForeignKey("sites.site_id"), primary_key=True),
    Column("client_id", String(32), ForeignKey("utility_clients.client_id"), primary_key=True),
    Column("granted_by", String(64), nullable=False),
    Column("granted_ms", BigInteger, nullable=False),
    Column("revoked_ms", BigInteger, nullable=True),  # null while the grant lasts
    Index("ix_site_grants_client", "client_id"),
)

site_grant_log = Table(
    "site_grant_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("site_id", String(64), nullable=False, index=True),
    Column("client_id", String(32), nullable=False),
    Column("action", String(16), nullable=False),
    Column("by", String(64), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    CheckConstraint("action IN ('granted', 'revoked')", name="ck_site_grant_log_action"),
)

# Payments behind the port of cloud/services/payments.py (migration 0017). Amounts are integers in
# minor units of `currency` (ISO 4217). A ref (the shop's order, a credit top-up) has at most one
# live payment: the partial unique index leaves failed and canceled attempts out, so the buyer
# may try again. `provider_id` is null until the provider has answered the create call.
PAYMENT_LIVE = "status IN ('created', 'processing', 'succeeded')"

payments = Table(
    "payments",
    metadata,
    Column("payment_id", String(40), primary_key=True),
    Column("ref", String(100), nullable=False),
    Column("provider", String(16), nullable=False),
    Column("provider_id", String(100), nullable=True, unique=True),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("detail", Text, nullable=False, server_default=""),
    Column("refunded_minor", BigInteger, nullable=False, server_default="0"),
    # When the outcome (succeeded/failed) was handed to PaymentOutcomes; null while owed.
    Column("notified_ms", BigInteger, nullable=True),
    CheckConstraint(
        "status IN ('created', 'processing', 'succeeded', 'failed', 'canceled', 'refunded')",
        name="ck_payments_status",
    ),
    Index(
        "uq_payments_live_ref",
        "ref",
        unique=True,
        sqlite_where=text(PAYMENT_LIVE),
        postgresql_where=text(PAYMENT_LIVE),
    ),
    Index("ix_payments_status_created", "status", "created_ms"),
)

# Every provider event applied (or refused as out of order): the primary key makes a second
# delivery of the same event a no-op, in the same transaction as the status change.
payment_events = Table(
    "payment_events",
    metadata,
    Column("event_id", String(100), primary_key=True),
    Column("provider", String(16), nullable=False),
    Column("type", String(64), nullable=False),
    Column("payment_id", String(40), nullable=False, index=True),
    Column("received_ms", BigInteger, nullable=False),
    Column("outcome", String(32), nullable=False),
)

# Exchange rates as entered by an admin: quote per base in millionths, per day and source.
fx_rates = Table(
    "fx_rates",
    metadata,
    Column("base", String(3), primary_key=True),
    Column("quote", String(3), primary_key=True),
    Column("as_of", Date, primary_key=True),
    Column("source", String(100), nullable=False),
    Column("rate_ppm", BigInteger, nullable=False),
)

# The retail carbon shop (migration 0018; cloud/storage/carbon_store.py, docs/carbon-shop.md).
# Quantities are whole kg CO2e (one serial number per kg), money minor units of an ISO 4217
# currency, times Unix ms. `provider_account_id` and `buyer_account_id` are account ids (or the
# legacy admin token's "admin-token": no key).
carbon_projects = Table(
    "carbon_projects",
    metadata,
    Column("project_id", String(32), primary_key=True),
    Column("provider_account_id", String(32), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("country", String(2), nullable=False),
    Column("standard", String(100), nullable=False),
    Column("verifier", String(200), nullable=False),
    Column("serial_prefix", String(40), nullable=False),
    Column("start_date", String(10), nullable=True),  # ISO 8601 date of the crediting period
    Column("end_date", String(10), nullable=True),
    Column("vintage", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("created_ms", BigInteger, nullable=False),
    CheckConstraint(
        "status IN ('active', 'retired', 'withdrawn')", name="ck_carbon_projects_status"
    ),
)

carbon_lots = Table(
    "carbon_lots",
    metadata,
    Column("lot_id", String(32), primary_key=True),
    Column(
        "project_id",
        String(32),
        ForeignKey("carbon_projects.project_id"),
        nullable=False,
        index=True,
    ),
    Column("serial_start", BigInteger, nullable=False),
    Column("serial_end", BigInteger, nullable=False),  # inclusive
    Column("price_minor_per_t", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("available_kg", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    # A gridmint_solar lot sells one certificate whole (cloud/services/certificates.py).
    Column("certificate_id", String(64), nullable=True, unique=True),
    # Migration 0021: the lot's own serial prefix (a gridmint_solar lot's names its
    # certificate; NULL: the project's), and the ledger leaf (CARBON) that listed it.
    Column("serial_prefix", String(40), nullable=True),
    Column("ledger_seq", BigInteger, nullable=True),
    CheckConstraint("available_kg >= 0", name="ck_carbon_lots_available"),
    CheckConstraint(
        "serial_start >= 0 AND serial_end >= serial_start "
        "AND available_kg <= serial_end - serial_start + 1",
        name="ck_carbon_lots_serials",
    ),
)

carbon_orders = Table(
    "carbon_orders",
    metadata,
    Column("order_id", String(32), primary_key=True),
    Column("buyer_account_id", String(32), nullable=False, index=True),
    Column("state", String(16), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("total_minor", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Column("payment_id", String(200), nullable=True),
    Column("beneficiary", String(200), nullable=False),
    Column("reason", String(500), nullable=False, server_default=""),
    Column("updated_ms", BigInteger, nullable=False),
    # Migration 0021: the ledger leaves (CARBON) of the paid order and of its retirement.
    Column("paid_seq", BigInteger, nullable=True),
    Column("retired_seq", BigInteger, nullable=True),
    # Migration 0024: retire the units when the payment succeeds (1), or leave the paid order
    # placed until its buyer retires it (0).
    Column("retire_on_payment", Integer, nullable=False, server_default="1"),
    Index("ix_carbon_orders_state_expires", "state", "expires_ms"),
    CheckConstraint(
        "state IN ('reserved', 'placed', 'complete', 'cancelled', 'expired')",
        name="ck_carbon_orders_state",
    ),
)

carbon_order_lines = Table(
    "carbon_order_lines",
    metadata,
    Column("order_id", String(32), ForeignKey("carbon_orders.order_id"), primary_key=True),
    Column("lot_id", String(32), ForeignKey("carbon_lots.lot_id"), primary_key=True),
    Column("serial_start", BigInteger, primary_key=True),
    Column("serial_end", BigInteger, nullable=False),
    Column("kg", BigInteger, nullable=False),
    Column("price_minor", BigInteger, nullable=False),
    Index("ix_carbon_order_lines_lot", "lot_id"),
    CheckConstraint(
        "kg > 0 AND serial_end - serial_start + 1 = kg", name="ck_carbon_order_lines_kg"
    ),
)

carbon_retirements = Table(
    "carbon_retirements",
    metadata,
    Column("retirement_id", String(32), primary_key=True),
    Column("order_id", String(32), ForeignKey("carbon_orders.order_id"), nullable=False),
    Column("lot_id", String(32), ForeignKey("carbon_lots.lot_id"), nullable=False),
    Column("serial_start", BigInteger, nullable=False),
    Column("serial_end", BigInteger, nullable=False),
    Column("beneficiary", String(200), nullable=False),
    Column("reason", String(500), nullable=False),
    Column("retired_ms", BigInteger, nullable=False),
    Column("ledger_seq", BigInteger, nullable=True),  # migration 0021: its CARBON leaf
    Index("ix_carbon_retirements_order", "order_id"),
    UniqueConstraint("lot_id", "serial_start", name="uq_carbon_retirements_lot_serial"),
    CheckConstraint("serial_end >= serial_start", name="ck_carbon_retirements_range"),
)

carbon_events = Table(
    "carbon_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("project_id", String(32), nullable=True, index=True),
    Column("order_id", String(32), nullable=True, index=True),
    Column("actor", String(64), nullable=False, server_default=""),
    Column("detail", Text, nullable=False, server_default=""),  # JSON
)

# Market payment credits bought or cashed through the payment port (migration 0022;
# cloud/services/credits.py). `gross` moves on the homeowner's side of the bank transfer, the flat
# `fee` is kept, `net` arrives (credits for a top-up, money for a redemption). `ledger_seq` is the
# DEPOSIT (top-up) or WITHDRAWAL (redemption) entry; a redemption whose payout was refused is
# given back by a DEPOSIT naming the same transfer (`return_seq`).
credit_transfers = Table(
    "credit_transfers",
    metadata,
    Column("transfer_id", String(40), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("site_id", String(64), nullable=False, index=True),
    Column("account_id", String(32), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("gross_minor", BigInteger, nullable=False),
    Column("fee_minor", BigInteger, nullable=False),
    Column("net_minor", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("payment_id", String(40), nullable=True),
    Column("payout_to", String(100), nullable=False, server_default=""),
    Column("payout_id", String(100), nullable=True),
    Column("ledger_seq", BigInteger, nullable=True),
    Column("return_seq", BigInteger, nullable=True),
    Column("detail", Text, nullable=False, server_default=""),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    CheckConstraint("kind IN ('top_up', 'redemption')", name="ck_credit_transfers_kind"),
    CheckConstraint(
        "state IN ('pending', 'complete', 'failed', 'paying_out', 'paid_out', 'returned')",
        name="ck_credit_transfers_state",
    ),
    CheckConstraint(
        "gross_minor > 0 AND fee_minor >= 0 AND net_minor > 0 "
        "AND gross_minor = fee_minor + net_minor",
        name="ck_credit_transfers_amounts",
    ),
)

# Monthly offset subscriptions of the carbon shop (migration 0023; cloud/services/
# shop_subscriptions.py). One run per subscription and calendar month (primary key): the month's
# order is made at most once, however often or wherever the renewal runs.
carbon_subscriptions = Table(
    "carbon_subscriptions",
    metadata,
    Column("subscription_id", String(32), primary_key=True),
    Column("buyer_account_id", String(32), nullable=False, index=True),
    Column("project_id", String(32), nullable=False),
    Column("kg_per_month", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("beneficiary", String(200), nullable=False),
    Column("reason", String(500), nullable=False, server_default=""),
    Column("state", String(16), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    CheckConstraint("state IN ('active', 'cancelled')", name="ck_carbon_subscriptions_state"),
    CheckConstraint("kg_per_month > 0", name="ck_carbon_subscriptions_kg"),
)

carbon_subscription_runs = Table(
    "carbon_subscription_runs",
    metadata,
    Column("subscription_id", String(32), primary_key=True),
    Column("period", String(7), primary_key=True),  # YYYY-MM, UTC
    Column("order_id", String(32), nullable=True),  # null: the month was skipped (see detail)
    Column("detail", Text, nullable=False, server_default=""),
    Column("at_ms", BigInteger, nullable=False),
)

# Accounts' carbon footprints (migration 0020; cloud/storage/footprint_store.py): every saved
# calculation, the newest being the account's baseline. `answers` is the calculator's JSON;
# `model` the version of the factors (cloud.domain.footprint.MODEL).
footprints = Table(
    "footprints",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("account_id", String(32), nullable=False),
    Column("saved_ms", BigInteger, nullable=False),
    Column("model", String(16), nullable=False),
    Column("answers", Text, nullable=False),
    Column("total_kg", BigInteger, nullable=False),
    CheckConstraint("total_kg >= 0", name="ck_footprints_total"),
    Index("ix_footprints_account_saved", "account_id", "saved_ms"),
)
