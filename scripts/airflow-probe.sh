#!/usr/bin/env bash
# Exercises, with curl, the REST calls the `airflow` task operator makes against a real
# Apache Airflow 3, and prints each request's status code and (trimmed) JSON body:
#   scripts/airflow-probe.sh            # starts Airflow if needed (scripts/services.sh), probes, stops what it started
#   TRIGGERER_TEST_AIRFLOW_URL=http://127.0.0.1:28080 scripts/airflow-probe.sh   # an Airflow already running
# The DAGs are those of tests/airflow/dags. Every dag_run_id it makes carries a fresh suffix, so
# the probe can be run again against the same Airflow.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq >/dev/null; }
. scripts/services.sh
trap stop_started_services EXIT
ensure_airflow

B="$TRIGGERER_TEST_AIRFLOW_URL"
U="$TRIGGERER_TEST_AIRFLOW_USERNAME"
P="$TRIGGERER_TEST_AIRFLOW_PASSWORD"
SUFFIX="$(date +%s)-$$"
BODY=$(mktemp)
trap 'rm -f "$BODY"; stop_started_services' EXIT

# call METHOD PATH [JSON] [extra curl args...]: prints "METHOD PATH -> STATUS" and the body
# (cut to 600 characters); leaves the status in $STATUS and the body in $BODY.
call() {
  local method=$1 path=$2 payload=${3:-}
  shift 3 || shift $#
  local args=(-s -o "$BODY" -w '%{http_code}' -X "$method" "$B$path" "$@")
  [ -n "$payload" ] && args+=(-H 'Content-Type: application/json' --data "$payload")
  STATUS=$(curl "${args[@]}")
  echo "$method $path ${payload:+$payload }-> $STATUS"
  echo "    $(head -c 600 "$BODY")"
}
json() { jq -r "$1" < "$BODY"; }
jwt_part() { # N TOKEN: the Nth dot-separated part of a JWT, base64url-decoded
  local p
  p=$(cut -d. -f"$1" <<<"$2" | tr '_-' '/+')
  while [ $((${#p} % 4)) -ne 0 ]; do p="$p="; done
  base64 -d <<<"$p"
}
section() { echo; echo "== $*"; }

section "0. health (no auth needed) and version"
call GET /api/v2/monitor/health
call GET /api/v2/version

section "1. POST /auth/token"
call POST /auth/token "{\"username\":\"$U\",\"password\":\"$P\"}"
TOKEN=$(json .access_token)
AUTH=(-H "Authorization: Bearer $TOKEN")
echo "    JWT header: $(jwt_part 1 "$TOKEN")"
echo "    JWT claims: $(jwt_part 2 "$TOKEN")"
call POST /auth/token "{\"username\":\"$U\",\"password\":\"wrong\"}"
call POST /auth/token '{"username":"nobody","password":"x"}'
call POST /auth/token "{\"username\":\"$U\"}"
call POST /auth/token "" -H 'Content-Type: application/x-www-form-urlencoded' --data "username=$U&password=$P"
echo "    (form-encoded body accepted too)"

section "2. authentication failures on the public API"
call GET /api/v2/dags/triggerer_succeeds
call GET /api/v2/dags/triggerer_succeeds "" -H "Authorization: Bearer not-a-jwt"
if [ -n "${AIRFLOW__API_AUTH__JWT_SECRET:-}" ] && [ -x .services/airflow/venv/bin/python ]; then
  # A token signed with the server's secret whose `exp` has passed, as one 24 h old would be.
  EXPIRED=$(.services/airflow/venv/bin/python - "$U" <<'EOF'
import os, sys, time, uuid, jwt
now = int(time.time())
claims = {"sub": sys.argv[1], "role": "admin", "teams": [], "jti": uuid.uuid4().hex,
          "aud": "apache-airflow", "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}
print(jwt.encode(claims, os.environ["AIRFLOW__API_AUTH__JWT_SECRET"], algorithm="HS512",
                 headers={"kid": "not-used"}))
EOF
)
  call GET /api/v2/dags/triggerer_succeeds "" -H "Authorization: Bearer $EXPIRED"
  echo "    (an expired token)"
fi
if [ -n "${TRIGGERER_TEST_AIRFLOW_VIEWER_PASSWORD:-}" ]; then
  call POST /auth/token "{\"username\":\"viewer\",\"password\":\"$TRIGGERER_TEST_AIRFLOW_VIEWER_PASSWORD\"}"
  VIEWER=$(json .access_token)
  call POST /api/v2/dags/triggerer_succeeds/dagRuns "{\"dag_run_id\":\"viewer__$SUFFIX\",\"logical_date\":null}" \
    -H "Authorization: Bearer $VIEWER"
  echo "    (a user with the viewer role may not trigger)"
fi

section "3. POST /api/v2/dags/{dag_id}/dagRuns"
RUN="manual__probe-$SUFFIX"
T0=$(date +%s.%N)
call POST /api/v2/dags/triggerer_succeeds/dagRuns \
  "{\"dag_run_id\":\"$RUN\",\"logical_date\":null,\"conf\":{\"events\":[{\"asset\":\"s3://bucket/key\",\"id\":1}]}}" "${AUTH[@]}"
call POST /api/v2/dags/triggerer_succeeds/dagRuns \
  "{\"dag_run_id\":\"$RUN\",\"logical_date\":null,\"conf\":{}}" "${AUTH[@]}"
echo "    (the same dag_run_id again)"
call POST /api/v2/dags/triggerer_succeeds/dagRuns "{\"dag_run_id\":\"nold__$SUFFIX\",\"conf\":{}}" "${AUTH[@]}"
echo "    (no logical_date key at all)"
call POST /api/v2/dags/triggerer_succeeds/dagRuns "{\"logical_date\":null}" "${AUTH[@]}"
echo "    (no dag_run_id: Airflow names the run; no conf: {})"
call POST /api/v2/dags/triggerer_succeeds/dagRuns \
  "{\"dag_run_id\":\"ld__$SUFFIX\",\"logical_date\":\"$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)\"}" "${AUTH[@]}"
echo "    (with a logical_date)"
call POST /api/v2/dags/triggerer_succeeds/dagRuns \
  "{\"dag_run_id\":\"bad__$SUFFIX\",\"logical_date\":null,\"conf\":[1,2]}" "${AUTH[@]}"
echo "    (conf not an object)"
call POST /api/v2/dags/triggerer_succeeds/dagRuns \
  "{\"dag_run_id\":\"extra__$SUFFIX\",\"logical_date\":null,\"unknown\":1}" "${AUTH[@]}"
echo "    (an unknown field)"
# The triggerer's own run ids look like this (DagRunType::run_id + "_" + 8 random characters).
REAL_ID="asset_triggered__$(date -u +%Y-%m-%dT%H:%M:%S.%6N)+00:00_$(printf '%08d' $$)"
call POST /api/v2/dags/triggerer_succeeds/dagRuns "{\"dag_run_id\":\"$REAL_ID\",\"logical_date\":null}" "${AUTH[@]}"
echo "    (the triggerer's run id as it is: a manual run may not use another run type's prefix)"
call POST /api/v2/dags/triggerer_succeeds/dagRuns "{\"dag_run_id\":\"scheduled__$SUFFIX\",\"logical_date\":null}" "${AUTH[@]}"
PREFIXED="triggerer__$REAL_ID"
call POST /api/v2/dags/triggerer_succeeds/dagRuns "{\"dag_run_id\":\"$PREFIXED\",\"logical_date\":null}" "${AUTH[@]}"
echo "    (prefixed with triggerer__: '+', ':' and '.' are allowed)"
call GET "/api/v2/dags/triggerer_succeeds/dagRuns/${PREFIXED//+/%2B}" "" "${AUTH[@]}"
echo "    (GET with '+' sent as %2B: state=$(json .state))"
call GET "/api/v2/dags/triggerer_succeeds/dagRuns/$PREFIXED" "" "${AUTH[@]}"
echo "    (GET with a raw '+' in the path: state=$(json .state))"
call GET "/api/v2/dags/triggerer_succeeds/dagRuns/${PREFIXED//:/%3A}" "" "${AUTH[@]}"
echo "    (GET with ':' sent as %3A too: state=$(json .state))"
call POST /api/v2/dags/triggerer_succeeds/dagRuns "{\"dag_run_id\":\"a..b$SUFFIX\",\"logical_date\":null}" "${AUTH[@]}"
call POST /api/v2/dags/triggerer_succeeds/dagRuns "{\"dag_run_id\":\"bad id/$SUFFIX\",\"logical_date\":null}" "${AUTH[@]}"
echo "    (a run id outside [scheduler] allowed_run_id_pattern)"
call POST /api/v2/dags/triggerer_succeeds/dagRuns "{\"dag_run_id\":\"$(printf 'x%.0s' $(seq 1 251))\",\"logical_date\":null}" "${AUTH[@]}"
echo "    (a run id of 251 characters)"
call POST /api/v2/dags/no_such_dag/dagRuns "{\"dag_run_id\":\"x__$SUFFIX\",\"logical_date\":null}" "${AUTH[@]}"
call POST /api/v2/dags/triggerer_paused/dagRuns "{\"dag_run_id\":\"paused__$SUFFIX\",\"logical_date\":null}" "${AUTH[@]}"
echo "    (a paused DAG)"

section "4. GET /api/v2/dags/{dag_id}/dagRuns/{dag_run_id} until a terminal state"
# poll DAG RUN_ID T0: prints each new state with the seconds since T0
poll() {
  local dag=$1 run=$2 t0=$3 last="" state
  for _ in $(seq 1 240); do
    STATUS=$(curl -s -o "$BODY" -w '%{http_code}' "$B/api/v2/dags/$dag/dagRuns/$run" "${AUTH[@]}")
    state=$(json .state)
    if [ "$state" != "$last" ]; then
      printf '    %6.2f s  HTTP %s  state=%s\n' "$(awk "BEGIN { print $(date +%s.%N) - $t0 }")" "$STATUS" "$state"
      last=$state
    fi
    case "$state" in success | failed) break ;; esac
    sleep 0.25
  done
  echo "    final: $(jq -c '{dag_run_id, state, queued_at, start_date, end_date, duration, conf}' < "$BODY")"
}
echo "triggerer_succeeds $RUN:"
poll triggerer_succeeds "$RUN" "$T0"
for dag in triggerer_fails triggerer_slow; do
  run="manual__probe-$SUFFIX"
  t0=$(date +%s.%N)
  call POST "/api/v2/dags/$dag/dagRuns" "{\"dag_run_id\":\"$run\",\"logical_date\":null,\"conf\":{}}" "${AUTH[@]}" >/dev/null
  echo "$dag $run (POST -> $STATUS):"
  poll "$dag" "$run" "$t0"
done
call GET "/api/v2/dags/triggerer_fails/dagRuns/manual__probe-$SUFFIX/taskInstances" "" "${AUTH[@]}"
echo "    (task instances of the failed run: $(jq -c '[.task_instances[] | {task_id, state, try_number}]' < "$BODY"))"
call GET "/api/v2/dags/triggerer_succeeds/dagRuns/no_such_run" "" "${AUTH[@]}"
call GET "/api/v2/dags/no_such_dag/dagRuns/no_such_run" "" "${AUTH[@]}"
sleep 3
call GET "/api/v2/dags/triggerer_paused/dagRuns/paused__$SUFFIX" "" "${AUTH[@]}"
echo "    (the paused DAG's run a while later: state=$(json .state))"

section "5. token lifetime"
echo "    exp - iat = $(jwt_part 2 "$TOKEN" | jq '.exp - .iat') s ([api_auth] jwt_expiration_time)"
