#!/usr/bin/env bash
# The benchmark behind docs/benchmarks.md: starts what it needs (PostgreSQL, the Kafka test
# broker), runs `triggerer-bench` in release mode and stops what it started.
#   scripts/bench.sh                                   # every figure, SQLite and PostgreSQL
#   scripts/bench.sh --part kafka --engine postgres    # arguments go to triggerer-bench
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh

trap stop_started_services EXIT
ensure_postgres
ensure_kafka
if [ -n "${TRIGGERER_TEST_POSTGRES_URL:-}" ] && [ -z "${TRIGGERER_BENCH_POSTGRES_URL:-}" ]; then
  export TRIGGERER_BENCH_POSTGRES_URL="$TRIGGERER_TEST_POSTGRES_URL"
fi
cargo build --release -q -p triggerer --bin triggerer
cargo run --release -q -p triggerer-bench -- "$@"
