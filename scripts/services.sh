# Service start-up shared by scripts/test.sh and .ci/run. Source it; each function is
# idempotent: it reuses what is already running or installed.

# PostgreSQL on 127.0.0.1:5432 (or whatever TRIGGERER_TEST_POSTGRES_URL names, e.g. the
# docker-compose service, which is then used as it is).
ensure_postgres() {
  if [ -n "${TRIGGERER_TEST_POSTGRES_URL:-}" ]; then
    echo "postgres: using TRIGGERER_TEST_POSTGRES_URL as given"
    return 0
  fi
  export TRIGGERER_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:5432/postgres"
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    echo "postgres: already running on 127.0.0.1:5432"
  else
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
      echo "postgres: not installed; installing from Debian packages"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    echo "postgres: starting cluster $version/main"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || pg_ctlcluster "$version" main start
    for _ in $(seq 1 30); do
      pg_isready -q -h 127.0.0.1 -p 5432 && break
      sleep 1
    done
    pg_isready -h 127.0.0.1 -p 5432
  fi
  # Trust auth for the tests' superuser; on a machine set up otherwise, set the URL instead.
  if ! psql "$TRIGGERER_TEST_POSTGRES_URL" -qAtc 'select 1' >/dev/null 2>&1; then
    echo "postgres: cannot connect as $TRIGGERER_TEST_POSTGRES_URL; set TRIGGERER_TEST_POSTGRES_URL" >&2
    return 1
  fi
  # Each test makes its own database; drop those earlier runs left behind.
  psql "$TRIGGERER_TEST_POSTGRES_URL" -qAtc \
    "select 'drop database if exists ' || quote_ident(datname) || ';' from pg_database where datname like 'trg_test_%'" \
    | psql "$TRIGGERER_TEST_POSTGRES_URL" -q >/dev/null
}

# Stops what these functions started (not services that were already running).
STARTED_PIDS=()
stop_started_services() {
  for pid in "${STARTED_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  # Wait until they are gone (up to 10 s), so a run started right after does not take a broker
  # that is shutting down for a running one.
  for pid in "${STARTED_PIDS[@]}"; do
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  done
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for_port() { # host port seconds name
  for _ in $(seq 1 "$3"); do
    port_open "$1" "$2" && return 0
    sleep 1
  done
  echo "$4 did not open $1:$2 within $3 s; see .services/$4.log" >&2
  return 1
}

# tansu, a Kafka-compatible broker, installed once with cargo (the first install builds for
# about 15 minutes): `dynostore` for in-memory storage, `libsql` for the file storage the
# broker-restart test keeps its log in. Reinstalled only when an earlier install lacks one.
TANSU_FEATURES="dynostore,libsql"
ensure_tansu() {
  local installed
  installed=$(grep -o '"tansu [^}]*"features":\[[^]]*\]' "${CARGO_HOME:-$HOME/.cargo}/.crates2.json" 2>/dev/null || true)
  if command -v tansu >/dev/null 2>&1 \
    && [[ "$installed" == *'"dynostore"'* && "$installed" == *'"libsql"'* ]]; then
    return 0
  fi
  echo "kafka: installing tansu (cargo install tansu --features $TANSU_FEATURES --locked)"
  cargo install tansu --features "$TANSU_FEATURES" --locked
}

# A Kafka-compatible broker: TRIGGERER_TEST_KAFKA (host:port, e.g. the docker-compose Kafka) as
# given, else tansu with in-memory storage on 127.0.0.1:19092. The outage and restart tests
# start brokers of their own, so tansu is installed in either case.
ensure_kafka() {
  ensure_tansu
  if [ -n "${TRIGGERER_TEST_KAFKA:-}" ]; then
    echo "kafka: using TRIGGERER_TEST_KAFKA=$TRIGGERER_TEST_KAFKA as given"
    return 0
  fi
  export TRIGGERER_TEST_KAFKA="127.0.0.1:19092"
  if port_open 127.0.0.1 19092; then
    echo "kafka: already running on $TRIGGERER_TEST_KAFKA"
    return 0
  fi
  mkdir -p .services
  tansu broker \
    --listener-url tcp://127.0.0.1:19092 \
    --advertised-listener-url tcp://127.0.0.1:19092 \
    --storage-engine memory://tansu/ > .services/tansu.log 2>&1 &
  STARTED_PIDS+=("$!")
  wait_for_port 127.0.0.1 19092 60 tansu
  echo "kafka: tansu started on $TRIGGERER_TEST_KAFKA"
}

# An SQS-compatible endpoint: TRIGGERER_TEST_SQS_ENDPOINT (e.g. the docker-compose emulator) as
# given, else moto (`moto[server]` from PyPI in .services/moto) on 127.0.0.1:15055. Test
# credentials are set unless AWS credentials are already in the environment.
ensure_sqs() {
  export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
  if [ -n "${TRIGGERER_TEST_SQS_ENDPOINT:-}" ]; then
    echo "sqs: using TRIGGERER_TEST_SQS_ENDPOINT=$TRIGGERER_TEST_SQS_ENDPOINT as given"
    return 0
  fi
  export TRIGGERER_TEST_SQS_ENDPOINT="http://127.0.0.1:15055"
  if port_open 127.0.0.1 15055; then
    echo "sqs: already running on $TRIGGERER_TEST_SQS_ENDPOINT"
    return 0
  fi
  mkdir -p .services
  if [ ! -x .services/moto/bin/moto_server ]; then
    echo "sqs: installing moto[server] into .services/moto"
    python3 -m venv .services/moto
    .services/moto/bin/pip install --quiet 'moto[server]'
  fi
  .services/moto/bin/moto_server -H 127.0.0.1 -p 15055 > .services/moto.log 2>&1 &
  STARTED_PIDS+=("$!")
  wait_for_port 127.0.0.1 15055 60 moto
  echo "sqs: moto started on $TRIGGERER_TEST_SQS_ENDPOINT"
}
