#!/usr/bin/env bash
# The whole test suite: starts what the tests need, then runs every test with the
# `integration` feature (the same store and end-to-end tests on SQLite and PostgreSQL).
#   scripts/test.sh                 # everything
#   scripts/test.sh --test store    # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh

trap stop_started_services EXIT
ensure_postgres
ensure_kafka
ensure_sqs
ensure_airflow
ensure_chromium
ensure_schemathesis
ensure_redis
ensure_rabbitmq
ensure_mosquitto
ensure_nats
ensure_mariadb

log=$(mktemp)
trap 'rm -f "$log"; stop_started_services' EXIT
status=0
cargo test --workspace --features integration "$@" 2>&1 | tee "$log" || status=$?
# One closing line over all test binaries (cargo prints one per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
