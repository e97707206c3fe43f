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

# Debian's headless Chromium for the web UI tests (tests/e2e_ui.rs): `chromium` on PATH as it
# is, else installed from Debian packages (which needs root).
ensure_chromium() {
  if command -v chromium >/dev/null 2>&1; then
    return 0
  fi
  if [ "${EUID:-$(id -u)}" -ne 0 ]; then
    echo "chromium: not installed, and installing it needs root: run \`apt-get install -y chromium\` as root" >&2
    return 1
  fi
  echo "chromium: not installed; installing from Debian packages"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  command -v chromium >/dev/null 2>&1 || { echo "chromium: still not on PATH after installing it" >&2; return 1; }
  echo "chromium: installed $(chromium --version 2>/dev/null)"
}

# Apache Airflow 3 for the Airflow-bridge tests: TRIGGERER_TEST_AIRFLOW_URL (with
# TRIGGERER_TEST_AIRFLOW_USERNAME / _PASSWORD) as given, else `apache-airflow[postgres]` from PyPI
# in .services/airflow/venv (installed once, pinned by tests/airflow/constraints-PY.txt) with
# `airflow api-server` on 127.0.0.1:28080, `scheduler` (LocalExecutor) and `dag-processor`, the
# metadata database `airflow_test` on the tests' PostgreSQL (made anew at each start), the DAGs of
# tests/airflow/dags and the simple auth manager with two fixed users: triggerer/triggerer-test
# (admin) and viewer/viewer-test (viewer). Logs: .services/airflow/logs. For the airflow CLI by
# hand: `. .services/airflow/env; .services/airflow/venv/bin/airflow dags list`.
AIRFLOW_VERSION="3.3.2"
AIRFLOW_PORT=28080
AIRFLOW_DAGS="triggerer_succeeds triggerer_fails triggerer_slow"
AIRFLOW_PAUSED_DAGS="triggerer_paused"

_airflow_dir() { echo "$PWD/.services/airflow"; }

# Installs the venv unless the stamp says this version is already there and its python runs.
_airflow_install() {
  local dir py want constraints
  dir=$(_airflow_dir)
  py=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  constraints="$PWD/tests/airflow/constraints-$py.txt"
  want="apache-airflow[postgres]==$AIRFLOW_VERSION python$py"
  [ -f "$constraints" ] && want="$want $(sha256sum < "$constraints" | cut -c1-16)"
  if [ -x "$dir/venv/bin/airflow" ] && [ "$(cat "$dir/installed" 2>/dev/null)" = "$want" ] \
    && "$dir/venv/bin/python" -c '' 2>/dev/null; then
    return 0
  fi
  echo "airflow: installing apache-airflow[postgres]==$AIRFLOW_VERSION into .services/airflow/venv (about a minute)"
  local start=$SECONDS args=()
  if [ -f "$constraints" ]; then
    args=(--constraint "$constraints")
  else
    echo "airflow: no tests/airflow/constraints-$py.txt for python $py; resolving dependencies freely" >&2
  fi
  rm -rf "$dir/venv" "$dir/installed"
  mkdir -p "$dir"
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/pip" install --quiet "apache-airflow[postgres]==$AIRFLOW_VERSION" "${args[@]}" || return 1
  echo "$want" > "$dir/installed"
  echo "airflow: installed in $((SECONDS - start)) s"
}

# Writes .services/airflow/env, the configuration every airflow process (and a developer's
# airflow CLI) reads, and sources it.
_airflow_write_env() { # sqlalchemy-url
  local dir
  dir=$(_airflow_dir)
  mkdir -p "$dir/home" "$dir/logs"
  cat > "$dir/env" <<ENV
export AIRFLOW_HOME="$dir/home"
export AIRFLOW__CORE__DAGS_FOLDER="$PWD/tests/airflow/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__PARALLELISM=4
export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=triggerer:admin,viewer:viewer
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$dir/home/passwords.json"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$AIRFLOW_PORT/execution/
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="$1"
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT=$AIRFLOW_PORT
export AIRFLOW__API__BASE_URL=http://127.0.0.1:$AIRFLOW_PORT
export AIRFLOW__API__SECRET_KEY=triggerer-test-api-secret-key
export AIRFLOW__API_AUTH__JWT_SECRET=triggerer-test-jwt-secret-not-for-production-0123456789abcdef0123456789
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=30
export AIRFLOW__LOGGING__BASE_LOG_FOLDER="$dir/logs"
export AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY="$dir/logs/dag_processor"
ENV
  # The simple auth manager keeps {"user": "password"} here and generates only missing ones.
  echo '{"triggerer": "triggerer-test", "viewer": "viewer-test"}' > "$dir/home/passwords.json"
  # shellcheck disable=SC1091
  . "$dir/env"
}

# A process's start time (clock ticks since boot), which tells it from a later one with its PID.
_airflow_started_at() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }

# Ends airflow processes an earlier start left behind (its shell was killed before it could stop
# them): the process groups recorded in .services/airflow/pids ("PGID START-TIME" lines) whose
# leader is still that same process.
_airflow_stop_leftovers() {
  local dir pgid started
  dir=$(_airflow_dir)
  [ -f "$dir/pids" ] || return 0
  while read -r pgid started; do
    if [ -n "$started" ] && [ "$(_airflow_started_at "$pgid")" = "$started" ]; then
      echo "airflow: stopping process group $pgid left by an earlier start"
      kill -TERM -- "-$pgid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL -- "-$pgid" 2>/dev/null || true
    fi
  done < "$dir/pids"
  rm -f "$dir/pids"
}

# Runs the three components, each in its own process group, until it gets TERM or INT; then
# ends the groups (their LocalExecutor workers, task and parser processes included) and exits.
_airflow_supervise() {
  set +e -m
  local dir pids=() c
  dir=$(_airflow_dir)
  # --skip-serve-logs: no log server on 0.0.0.0:8793; the api-server reads the task logs from
  # .services/airflow/logs itself.
  for c in api-server "scheduler --skip-serve-logs" dag-processor; do
    # shellcheck disable=SC2086
    "$dir/venv/bin/airflow" $c > "$dir/logs/${c%% *}.log" 2>&1 < /dev/null &
    pids+=("$!")
  done
  for c in "${pids[@]}"; do echo "$c $(_airflow_started_at "$c")"; done > "$dir/pids"
  set +m # the groups are made; no job notices on stderr
  trap '
    for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null; done
    for _ in $(seq 1 40); do _airflow_any_running "${pids[@]}" || break; sleep 0.2; done
    for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null; done
    wait; rm -f "$dir/pids"; exit 0' TERM INT
  wait
}

# True while one of the PIDs runs (exited but not yet reaped counts as gone).
_airflow_any_running() {
  local p st
  for p in "$@"; do
    st=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$st" ] && [ "$st" != Z ] && return 0
  done
  return 1
}

# GET/POST/PATCH on the API with the test user's token; prints the body, fails on HTTP >= 400.
_airflow_api() { # method path [json]
  local token data=()
  [ -n "${3:-}" ] && data=(-H 'Content-Type: application/json' --data "$3")
  token=$(curl -sf -X POST "$TRIGGERER_TEST_AIRFLOW_URL/auth/token" -H 'Content-Type: application/json' \
    --data "{\"username\":\"$TRIGGERER_TEST_AIRFLOW_USERNAME\",\"password\":\"$TRIGGERER_TEST_AIRFLOW_PASSWORD\"}" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])') || return 1
  curl -sf -X "$1" "$TRIGGERER_TEST_AIRFLOW_URL$2" -H "Authorization: Bearer $token" "${data[@]}"
}

# True when the health endpoint says the metadata database, scheduler and DAG processor are healthy.
_airflow_healthy() {
  curl -sf --max-time 5 "$TRIGGERER_TEST_AIRFLOW_URL/api/v2/monitor/health" 2>/dev/null | python3 -c '
import json, sys
h = json.load(sys.stdin)
sys.exit(0 if all(h.get(k, {}).get("status") == "healthy" for k in ("metadatabase", "scheduler", "dag_processor")) else 1)
' 2>/dev/null
}

# Waits until the test DAGs are parsed, then unpauses them (and pauses triggerer_paused).
_airflow_dags_ready() { # seconds
  local dag missing
  for _ in $(seq 1 "$1"); do
    missing=""
    for dag in $AIRFLOW_DAGS $AIRFLOW_PAUSED_DAGS; do
      _airflow_api GET "/api/v2/dags/$dag" >/dev/null 2>&1 || missing="$missing $dag"
    done
    [ -z "$missing" ] && break
    sleep 1
  done
  if [ -n "$missing" ]; then
    echo "airflow: DAGs not parsed within $1 s:$missing; see .services/airflow/logs/dag-processor.log" >&2
    return 1
  fi
  for dag in $AIRFLOW_DAGS; do
    _airflow_api PATCH "/api/v2/dags/$dag" '{"is_paused": false}' >/dev/null || return 1
  done
  for dag in $AIRFLOW_PAUSED_DAGS; do
    _airflow_api PATCH "/api/v2/dags/$dag" '{"is_paused": true}' >/dev/null || return 1
  done
}

ensure_airflow() {
  if [ -n "${TRIGGERER_TEST_AIRFLOW_URL:-}" ]; then
    export TRIGGERER_TEST_AIRFLOW_USERNAME="${TRIGGERER_TEST_AIRFLOW_USERNAME:-triggerer}"
    export TRIGGERER_TEST_AIRFLOW_PASSWORD="${TRIGGERER_TEST_AIRFLOW_PASSWORD:-triggerer-test}"
    echo "airflow: using TRIGGERER_TEST_AIRFLOW_URL=$TRIGGERER_TEST_AIRFLOW_URL as given"
    return 0
  fi
  export TRIGGERER_TEST_AIRFLOW_URL="http://127.0.0.1:$AIRFLOW_PORT"
  export TRIGGERER_TEST_AIRFLOW_USERNAME=triggerer TRIGGERER_TEST_AIRFLOW_PASSWORD=triggerer-test
  export TRIGGERER_TEST_AIRFLOW_VIEWER_PASSWORD=viewer-test
  local dir
  dir=$(_airflow_dir)
  if port_open 127.0.0.1 "$AIRFLOW_PORT"; then
    # shellcheck disable=SC1091
    [ -f "$dir/env" ] && . "$dir/env"
    for _ in $(seq 1 60); do _airflow_healthy && break; sleep 1; done
    if ! _airflow_healthy || ! _airflow_dags_ready 60; then
      echo "airflow: 127.0.0.1:$AIRFLOW_PORT is taken but is no healthy Airflow with the test DAGs" >&2
      return 1
    fi
    echo "airflow: already running on $TRIGGERER_TEST_AIRFLOW_URL"
    return 0
  fi
  _airflow_install || return 1
  local start=$SECONDS
  # The metadata database: `airflow_test` on the tests' PostgreSQL, dropped and made anew so
  # every start begins with no runs, whatever an earlier one (or another checkout) left.
  # (ensure_postgres only when the local server is down: it also drops the tests' databases.)
  local pg_url="${TRIGGERER_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
  if [ -z "${TRIGGERER_TEST_POSTGRES_URL:-}" ] && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    ensure_postgres || return 1
  fi
  _airflow_stop_leftovers
  local pg_base="${pg_url%%\?*}"
  pg_base="${pg_base#*://}"
  pg_base="${pg_base%%/*}"
  psql "$pg_url" -qAt \
    -c 'drop database if exists airflow_test with (force)' -c 'create database airflow_test' >/dev/null || return 1
  _airflow_write_env "postgresql+psycopg2://$pg_base/airflow_test"
  if ! "$dir/venv/bin/airflow" db migrate > "$dir/logs/db-migrate.log" 2>&1; then
    echo "airflow: airflow db migrate failed; see .services/airflow/logs/db-migrate.log" >&2
    return 1
  fi
  _airflow_supervise > "$dir/logs/supervisor.log" 2>&1 &
  STARTED_PIDS+=("$!")
  for _ in $(seq 1 120); do _airflow_healthy && break; sleep 1; done
  if ! _airflow_healthy; then
    echo "airflow: not healthy within 120 s; see .services/airflow/logs/{api-server,scheduler,dag-processor}.log" >&2
    return 1
  fi
  _airflow_dags_ready 120 || return 1
  echo "airflow: $AIRFLOW_VERSION started on $TRIGGERER_TEST_AIRFLOW_URL in $((SECONDS - start)) s (user $TRIGGERER_TEST_AIRFLOW_USERNAME)"
}

# schemathesis for the OpenAPI test (tests/e2e_http.rs): TRIGGERER_TEST_SCHEMATHESIS as given,
# else schemathesis from PyPI in .services/schemathesis (installed once, pinned).
SCHEMATHESIS_VERSION="4.32.5"
ensure_schemathesis() {
  if [ -n "${TRIGGERER_TEST_SCHEMATHESIS:-}" ]; then
    echo "schemathesis: using TRIGGERER_TEST_SCHEMATHESIS=$TRIGGERER_TEST_SCHEMATHESIS as given"
    return 0
  fi
  local dir="$PWD/.services/schemathesis"
  if [ ! -x "$dir/bin/schemathesis" ] || [ "$(cat "$dir/installed" 2>/dev/null)" != "$SCHEMATHESIS_VERSION" ]; then
    echo "schemathesis: installing schemathesis==$SCHEMATHESIS_VERSION into .services/schemathesis"
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION" || return 1
    echo "$SCHEMATHESIS_VERSION" > "$dir/installed"
  fi
  export TRIGGERER_TEST_SCHEMATHESIS="$dir/bin/schemathesis"
  echo "schemathesis: $("$TRIGGERER_TEST_SCHEMATHESIS" --version)"
}

# The message brokers of the DESIGN §13 providers. Each: its TRIGGERER_TEST_* URL as given
# (e.g. a docker-compose service), else the machine's server on its usual port, started from
# its Debian package (installed first when missing, which needs root) when it is not running.
# A started server runs in the foreground of a background job and is stopped at the end.
_ensure_debian_server() { # name port package binary args...
  local name=$1 port=$2 package=$3 binary=$4
  shift 4
  if port_open 127.0.0.1 "$port"; then
    echo "$name: already running on 127.0.0.1:$port"
    return 0
  fi
  if ! command -v "$binary" >/dev/null 2>&1; then
    if [ "${EUID:-$(id -u)}" -ne 0 ]; then
      echo "$name: $package is not installed, and installing it needs root: apt-get install -y $package" >&2
      return 1
    fi
    echo "$name: installing $package from Debian packages"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null || return 1
    port_open 127.0.0.1 "$port" && { echo "$name: started by its package on 127.0.0.1:$port"; return 0; }
  fi
  mkdir -p .services
  "$binary" "$@" > ".services/$name.log" 2>&1 &
  STARTED_PIDS+=("$!")
  wait_for_port 127.0.0.1 "$port" 60 "$name" || return 1
  echo "$name: started on 127.0.0.1:$port"
}

ensure_redis() {
  if [ -n "${TRIGGERER_TEST_REDIS_URL:-}" ]; then
    echo "redis: using TRIGGERER_TEST_REDIS_URL=$TRIGGERER_TEST_REDIS_URL as given"
    return 0
  fi
  export TRIGGERER_TEST_REDIS_URL="redis://127.0.0.1:6379"
  _ensure_debian_server redis 6379 redis-server redis-server --port 6379 --save "" --appendonly no
}

ensure_rabbitmq() {
  if [ -n "${TRIGGERER_TEST_AMQP_URL:-}" ]; then
    echo "rabbitmq: using TRIGGERER_TEST_AMQP_URL=$TRIGGERER_TEST_AMQP_URL as given"
    return 0
  fi
  export TRIGGERER_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
  _ensure_debian_server rabbitmq 5672 rabbitmq-server rabbitmq-server
}

ensure_mosquitto() {
  if [ -n "${TRIGGERER_TEST_MQTT_URL:-}" ]; then
    echo "mosquitto: using TRIGGERER_TEST_MQTT_URL=$TRIGGERER_TEST_MQTT_URL as given"
    return 0
  fi
  export TRIGGERER_TEST_MQTT_URL="mqtt://127.0.0.1:1883"
  _ensure_debian_server mosquitto 1883 mosquitto mosquitto -p 1883
}

ensure_nats() {
  if [ -n "${TRIGGERER_TEST_NATS_URL:-}" ]; then
    echo "nats: using TRIGGERER_TEST_NATS_URL=$TRIGGERER_TEST_NATS_URL as given"
    return 0
  fi
  export TRIGGERER_TEST_NATS_URL="nats://127.0.0.1:4222"
  mkdir -p .services/nats
  _ensure_debian_server nats 4222 nats-server nats-server -js -p 4222 -sd "$PWD/.services/nats"
}

# MariaDB for the sql provider's tests: root over TCP without a password. Debian's package
# starts it through its init script; root there authenticates by unix socket only, so TCP
# access without a password is granted once (a local test server, nothing else).
ensure_mariadb() {
  if [ -n "${TRIGGERER_TEST_MYSQL_URL:-}" ]; then
    echo "mariadb: using TRIGGERER_TEST_MYSQL_URL=$TRIGGERER_TEST_MYSQL_URL as given"
    return 0
  fi
  export TRIGGERER_TEST_MYSQL_URL="mysql://root@127.0.0.1:3306/mysql"
  if ! port_open 127.0.0.1 3306 && [ -x /etc/init.d/mariadb ] && command -v service >/dev/null 2>&1; then
    service mariadb start >/dev/null 2>&1 && wait_for_port 127.0.0.1 3306 60 mariadb
  fi
  _ensure_debian_server mariadb 3306 mariadb-server mariadbd --user=root --bind-address=127.0.0.1 --port=3306 || return 1
  if command -v mariadb >/dev/null 2>&1 && ! mariadb -h 127.0.0.1 -P 3306 -u root -e 'SELECT 1' >/dev/null 2>&1; then
    mariadb -u root -e "ALTER USER root@localhost IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket; \
      CREATE USER IF NOT EXISTS root@'127.0.0.1' IDENTIFIED BY ''; GRANT ALL ON *.* TO root@'127.0.0.1' WITH GRANT OPTION;" \
      || { echo "mariadb: cannot let root in over TCP without a password" >&2; return 1; }
  fi
}
