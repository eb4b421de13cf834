#!/usr/bin/env bash
# A simulated fleet against a real aggregator: Mosquitto (max_inflight_messages 256), a scratch
# PostgreSQL database, `gridmint cloud serve` with ingest workers, then `gridmint sim fleet`.
# Usage: benchmarks/fleet.sh [DEVICES] [INTERVALS] [WORKERS]   (default 10000 3 2)
# Prints the fleet's JSON report and the stored token count; exits 1 if any record was lost.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${1:-10000}; INTERVALS=${2:-3}; WORKERS=${3:-2}
PG=${GRIDMINT_TEST_PG:-postgresql://postgres@127.0.0.1:5432}
DB=gridmint_fleetbench_$$
T=$(mktemp -d)
PORT=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HTTP=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf "listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 256\nmax_queued_messages 0\n" "$PORT" > "$T/mosquitto.conf"
mosquitto -c "$T/mosquitto.conf" > "$T/mosquitto.log" 2>&1 & MPID=$!
psql "$PG/postgres" -qc "CREATE DATABASE $DB"
cleanup() {
  kill "${SPID:-}" 2>/dev/null || true; wait "${SPID:-}" 2>/dev/null || true
  kill "$MPID" 2>/dev/null || true
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
}
trap cleanup EXIT
GRIDMINT_CLOUD_INGEST_WORKERS=$WORKERS GRIDMINT_CLOUD_LEDGER_KEY_FILE=$T/ledger.key \
  .venv/bin/gridmint cloud serve --database-url "$PG/$DB" --broker "mqtt://127.0.0.1:$PORT" \
  --deployment fleet --port "$HTTP" > "$T/serve.log" 2>&1 & SPID=$!
for _ in $(seq 1 60); do curl -sf "localhost:$HTTP/healthz" >/dev/null && break; sleep 1; done
.venv/bin/gridmint sim fleet --devices "$DEVICES" --intervals "$INTERVALS" \
  --broker "mqtt://127.0.0.1:$PORT" --database-url "$PG/$DB" --deployment fleet --json
echo "stored tokens, distinct: $(psql "$PG/$DB" -tAc 'select count(*), count(distinct token_id) from tokens')"
