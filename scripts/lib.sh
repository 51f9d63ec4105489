# Shared helpers for the scripts in this folder. Source it; do not run it.
# shellcheck shell=bash

BIBLIOMQ_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"
BIBLIOMQ_STATE_DIR="${BIBLIOMQ_STATE_DIR:-$HOME/.local/share/bibliomq}"
# Build output lives outside the clone, so a fresh clone in the same place
# rebuilds only what changed. One directory per checkout: two checkouts of
# the same workspace must not share one (cargo would take one checkout's
# crates for the other's, their fingerprints look alike).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bibliomq/target-$(printf %s "$BIBLIOMQ_ROOT" | md5sum | cut -c1-12)}"
GARAGE_VERSION="2.5.0"
GARAGE_DIR="$BIBLIOMQ_STATE_DIR/garage"
GARAGE_CONFIG="$GARAGE_DIR/garage.toml"
# Development credentials, the same as the defaults in core/src/config.rs.
DEV_S3_ACCESS_KEY="GK6269626c696f6d712d646576"
DEV_S3_SECRET_KEY="6269626c696f6d712d6465762d7365637265742d6b65792d6f6e6c792d646576"

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
warn() { printf '\033[1;33mwarning:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# wait_port HOST PORT SECONDS WHAT
wait_port() {
  local deadline=$((SECONDS + $3))
  until port_open "$1" "$2"; do
    ((SECONDS < deadline)) || die "$4 did not come up on $1:$2 within $3 s"
    sleep 0.5
  done
}

APT_UPDATED=""
apt_install() {
  command -v apt-get >/dev/null || die "missing $*; install it with your package manager"
  if [[ -z "$APT_UPDATED" ]]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_rabbitmq() {
  if ! port_open 127.0.0.1 5672; then
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    log "starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_port 127.0.0.1 5672 90 RabbitMQ
  fi
  if ! port_open 127.0.0.1 15672; then
    log "enabling the RabbitMQ management UI"
    rabbitmq-plugins enable --quiet rabbitmq_management >/dev/null
    wait_port 127.0.0.1 15672 60 "the RabbitMQ management UI"
  fi
}

ensure_postgres() {
  if ! port_open 127.0.0.1 5432; then
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start
    wait_port 127.0.0.1 5432 60 PostgreSQL
  fi
  command -v psql >/dev/null || apt_install postgresql-client
  # The tests run many apps at once, each with its own pools: the stock 100
  # connections run out. Raised once; it needs a restart to take effect.
  local max
  max=$(psql -h 127.0.0.1 -U postgres -d postgres -Atc "SHOW max_connections")
  if ((max < 400)); then
    log "raising PostgreSQL max_connections to 400 (restarts PostgreSQL once)"
    psql -h 127.0.0.1 -U postgres -d postgres -qc "ALTER SYSTEM SET max_connections = 400"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main restart
    wait_port 127.0.0.1 5432 60 PostgreSQL
  fi
}

# ensure_database NAME
ensure_database() {
  local exists
  exists=$(psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$1'")
  [[ "$exists" == 1 ]] || { log "creating database $1"; psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"$1\"" >/dev/null; }
}

garage_cmd() { garage -c "$GARAGE_CONFIG" "$@"; }

ensure_garage_installed() {
  if ! command -v garage >/dev/null; then
    log "installing Garage $GARAGE_VERSION from crates.io (once; about 9 minutes on 2 cores)"
    cargo install garage --locked --version "$GARAGE_VERSION" >/dev/null
  fi
}

# Single-node Garage on 127.0.0.1:3900 with the development key and buckets.
ensure_garage() {
  ensure_garage_installed
  mkdir -p "$GARAGE_DIR/meta" "$GARAGE_DIR/data"
  if [[ ! -f "$GARAGE_CONFIG" ]]; then
    cat >"$GARAGE_CONFIG" <<TOML
metadata_dir = "$GARAGE_DIR/meta"
data_dir = "$GARAGE_DIR/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:3900"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:3903"
admin_token = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
TOML
    chmod 600 "$GARAGE_CONFIG"
  fi
  if ! port_open 127.0.0.1 3900; then
    log "starting Garage (S3 on 127.0.0.1:3900)"
    nohup garage -c "$GARAGE_CONFIG" server >"$GARAGE_DIR/garage.log" 2>&1 &
    echo $! >"$GARAGE_DIR/garage.pid"
    wait_port 127.0.0.1 3900 60 Garage
  fi
  local deadline=$((SECONDS + 30))
  until garage_cmd status >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "garage status keeps failing; see $GARAGE_DIR/garage.log"
    sleep 0.5
  done
  if garage_cmd status 2>/dev/null | grep -q "NO ROLE ASSIGNED"; then
    local node
    node=$(garage_cmd node id -q | cut -d@ -f1)
    log "assigning the Garage layout"
    garage_cmd layout assign -z dc1 -c 1G "$node" >/dev/null
    garage_cmd layout apply --version "$(( $(garage_cmd layout show 2>/dev/null | sed -n 's/.*Current cluster layout version: \([0-9]*\).*/\1/p' | head -n1 || echo 0) + 1 ))" >/dev/null
  fi
  if ! garage_cmd key info "$DEV_S3_ACCESS_KEY" >/dev/null 2>&1; then
    log "importing the development S3 key"
    garage_cmd key import --yes -n bibliomq-dev "$DEV_S3_ACCESS_KEY" "$DEV_S3_SECRET_KEY" >/dev/null
    garage_cmd key allow --create-bucket "$DEV_S3_ACCESS_KEY" >/dev/null
  fi
  local bucket
  for bucket in "$@"; do
    if ! garage_cmd bucket info "$bucket" >/dev/null 2>&1; then
      log "creating bucket $bucket"
      garage_cmd bucket create "$bucket" >/dev/null
      garage_cmd bucket allow --read --write --owner "$bucket" --key "$DEV_S3_ACCESS_KEY" >/dev/null
    fi
  done
}

docker_available() {
  command -v docker >/dev/null && docker info >/dev/null 2>&1
}

RUN_DIR="$BIBLIOMQ_STATE_DIR/run"

# load_env: exports the variables of .env (repository root) when it exists.
load_env() {
  if [[ -f "$BIBLIOMQ_ROOT/.env" ]]; then
    set -a
    # shellcheck disable=SC1091
    source "$BIBLIOMQ_ROOT/.env"
    set +a
  fi
}

# running NAME: true when the process started under NAME is alive.
running() {
  local pid
  [[ -f "$RUN_DIR/$1.pid" ]] && pid=$(cat "$RUN_DIR/$1.pid") && kill -0 "$pid" 2>/dev/null
}

# start_app NAME BINARY [ARGS...]: starts it in the background (log and pid
# file in $RUN_DIR) unless the same build is already running.
start_app() {
  local name=$1 bin=$2
  shift 2
  mkdir -p "$RUN_DIR"
  if running "$name"; then
    if [[ "$bin" -nt "$RUN_DIR/$name.pid" ]]; then
      log "restarting $name (new build)"
      stop_app "$name"
    else
      log "$name already running (pid $(cat "$RUN_DIR/$name.pid"))"
      return 0
    fi
  fi
  nohup "$bin" "$@" >>"$RUN_DIR/$name.log" 2>&1 &
  echo $! >"$RUN_DIR/$name.pid"
  log "started $name (pid $!, log $RUN_DIR/$name.log)"
}

# stop_app NAME: SIGTERM, then waits for the graceful shutdown (up to 60 s).
stop_app() {
  local name=$1 pid
  running "$name" || { rm -f "$RUN_DIR/$name.pid"; return 0; }
  pid=$(cat "$RUN_DIR/$name.pid")
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 60))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      warn "$name did not stop within 60 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$RUN_DIR/$name.pid"
  log "stopped $name"
}

# wait_http URL SECONDS WHAT
wait_http() {
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || die "$3 did not answer at $1 within $2 s"
    sleep 0.3
  done
}

# start_bench_stack NAME: a release-built API (port $BENCH_PORT, 18080 unless set) and
# $BIBLIOMQ_WORKERS workers on a vhost and database of their own, fresh each
# time, so a benchmark neither disturbs nor is disturbed by scripts/up.
# With BENCH_CLUSTER=1 the vhost and database are on the cluster of
# scripts/cluster (started without its apps when down), and the cluster's
# nodes join the processes whose memory is reported.
# With BENCH_EDGE=1 the ZeroMQ edge runs too (request socket BENCH_ZMQ_URL).
# BENCH_NO_BUILD=1 skips the release build; BENCH_APP_BIN=DIR runs the API,
# workers and edge found in DIR (the load generator stays this build's, or
# the one in BENCH_LOAD_BIN=DIR).
# BENCH_SQL='...' runs that SQL on the fresh database after the migrations
# (to try a schema change before writing it: an index dropped, a setting).
# A function bench_seed, if the caller defines one, runs next (given the
# directory of the API and workers), before any of them starts.
# Sets BENCH_URL, BENCH_DB_URL and BENCH_PROCS (--process name=pid ...);
# the processes stop when the calling script exits.
start_bench_stack() {
  # BENCH_SUFFIX and BENCH_PORT keep two benchmark stacks on one machine apart.
  local name=$1${BENCH_SUFFIX:-}
  local vhost="bibliomq-$name" db="bibliomq_${name//-/_}" port=${BENCH_PORT:-18080} mgmt psql_on
  if [[ "${BENCH_CLUSTER:-}" == 1 ]]; then
    "$BIBLIOMQ_ROOT/scripts/cluster" up --services-only >/dev/null
    cluster_urls "$vhost" "$db"
    mgmt=$CLUSTER_MGMT_URL
    psql_on=(cluster_psql)
  else
    "$BIBLIOMQ_ROOT/scripts/services" >/dev/null
    mgmt="http://127.0.0.1:15672"
    psql_on=(psql -h 127.0.0.1 -U postgres -d postgres)
  fi
  if [[ "${BENCH_NO_BUILD:-}" != 1 ]]; then
    log "building (release)"
    cargo build --locked --release --bins
  fi
  BENCH_BIN="${BENCH_LOAD_BIN:-$CARGO_TARGET_DIR/release}"
  # BENCH_APP_BIN=DIR: the API, workers and edge from another build (to
  # compare two versions under the same load generator).
  local app_bin="${BENCH_APP_BIN:-$BENCH_BIN}"
  curl -fsS -u guest:guest -X DELETE "$mgmt/api/vhosts/$vhost" >/dev/null 2>&1 || true
  curl -fsS -u guest:guest -X PUT -H 'content-type: application/json' -d '{}' \
    "$mgmt/api/vhosts/$vhost" >/dev/null
  curl -fsS -u guest:guest -X PUT -H 'content-type: application/json' \
    -d '{"configure":".*","write":".*","read":".*"}' "$mgmt/api/permissions/$vhost/guest" >/dev/null
  "${psql_on[@]}" -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" 2>/dev/null

  if [[ "${BENCH_CLUSTER:-}" == 1 ]]; then
    export BIBLIOMQ_AMQP_URL="$CLUSTER_AMQP_URL"
    export BIBLIOMQ_DATABASE_URL="$CLUSTER_DATABASE_URL"
    export BIBLIOMQ_S3_ENDPOINT="$CLUSTER_S3_ENDPOINT"
    export BIBLIOMQ_S3_REGION=garage
    export BIBLIOMQ_RABBITMQ_MGMT_URL="$mgmt"
  else
    export BIBLIOMQ_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$vhost"
    export BIBLIOMQ_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
  fi
  export BIBLIOMQ_API_PORT=$port
  # Any free port: the bench's workers must not collide with scripts/up's.
  export BIBLIOMQ_WORKER_OPS_PORT=0
  export BIBLIOMQ_S3_KEY_PREFIX="bench/"
  export RUST_LOG="${RUST_LOG:-warn}"
  # Capturing a backtrace for every error costs time and memory under load.
  export RUST_LIB_BACKTRACE="${RUST_LIB_BACKTRACE:-0}"
  BENCH_URL="http://127.0.0.1:$port"
  BENCH_DB_URL="$BIBLIOMQ_DATABASE_URL"
  local logs="$BIBLIOMQ_STATE_DIR/bench"
  mkdir -p "$logs"
  "$app_bin/bibliomq-api" migrate
  if [[ -n "${BENCH_SQL:-}" ]]; then
    if [[ "${BENCH_CLUSTER:-}" == 1 ]]; then die "BENCH_SQL is for the local database only"; fi
    psql -h 127.0.0.1 -U postgres -d "$db" -q -v ON_ERROR_STOP=1 -c "$BENCH_SQL"
  fi
  # The caller's bench_seed, when it has one, fills the database before the
  # API and workers start, as in a library whose catalogue is there when its
  # workers restart (a starting worker rehearses circulation on it).
  if declare -F bench_seed >/dev/null; then bench_seed "$app_bin"; fi
  BENCH_PIDS=()
  trap 'for p in "${BENCH_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
  "$app_bin/bibliomq-api" >"$logs/$name-api.log" 2>&1 &
  BENCH_PIDS+=($!)
  BENCH_PROCS=(--process "api=$!")
  local i
  for i in $(seq 1 "${BIBLIOMQ_WORKERS:-1}"); do
    "$app_bin/bibliomq-workers" >"$logs/$name-workers-$i.log" 2>&1 &
    BENCH_PIDS+=($!)
    BENCH_PROCS+=(--process "workers-$i=$!")
  done
  if [[ "${BENCH_EDGE:-}" == 1 ]]; then
    # The ZeroMQ edge on ports of its own (scripts/up's edge keeps 5555-5558).
    BIBLIOMQ_EDGE_ZMQ_REQUEST_PORT=15555 BIBLIOMQ_EDGE_ZMQ_PUB_PORT=15556 \
      BIBLIOMQ_EDGE_NDJSON_PORT=15557 BIBLIOMQ_EDGE_PIPE_PORT=15558 BIBLIOMQ_EDGE_OPS_PORT=19102 \
      "$app_bin/bibliomq-edge" >"$logs/$name-edge.log" 2>&1 &
    BENCH_PIDS+=($!)
    BENCH_PROCS+=(--process "edge=$!")
    BENCH_ZMQ_URL="tcp://127.0.0.1:15555"
  fi
  wait_http "$BENCH_URL/readyz" 60 "the benchmark API"
  if [[ "${BENCH_EDGE:-}" == 1 ]]; then wait_http "http://127.0.0.1:19102/readyz" 60 "the benchmark edge"; fi
  if [[ "${BENCH_CLUSTER:-}" == 1 ]]; then
    # The memory of each RabbitMQ and Garage node (one process each; a
    # PostgreSQL node's memory is spread over its backends). The CPU
    # accounting already counts every RabbitMQ, PostgreSQL and Garage
    # process on the machine.
    local procs
    procs=$("$BIBLIOMQ_ROOT/scripts/cluster" status --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
rows = [("rabbitmq-" + r["node"].split("@")[0], r["pid"]) for r in s["rabbitmq"]]
rows += [("garage-" + r["name"], r["pid"]) for r in s["garage"]]
print(" ".join(f"{n}={p}" for n, p in rows if p))')
    local p
    for p in $procs; do BENCH_PROCS+=(--process "$p"); done
  fi
}

# The cluster of scripts/cluster, beside the single-node services above:
# RabbitMQ nodes bqN@localhost (AMQP 5700+N, management 15700+N, Erlang
# distribution 25700+N), PostgreSQL under pg_auto_failover (monitor 5441,
# data nodes 5442 and 5443) and Garage nodes (S3 3900+10N, RPC 3901+10N,
# admin 3903+10N).
CLUSTER_DIR="$BIBLIOMQ_STATE_DIR/cluster"
CLUSTER_NODES=(1 2 3)
CLUSTER_PG_MONITOR_PORT=5441
CLUSTER_PG_PORTS=(5442 5443)

# cluster_urls VHOST DATABASE: sets CLUSTER_AMQP_URL (every node, comma
# separated), CLUSTER_DATABASE_URL (both PostgreSQL nodes, the writable one
# chosen by the client), CLUSTER_S3_ENDPOINT (every Garage node) and
# CLUSTER_MGMT_URL (the management API of the first node that answers).
cluster_urls() {
  local vhost=${1//\//%2f} db=$2 n amqp=() s3=() hosts=()
  for n in "${CLUSTER_NODES[@]}"; do
    amqp+=("amqp://guest:guest@127.0.0.1:$((5700 + n))/$vhost?heartbeat=10")
    s3+=("http://127.0.0.1:$((3900 + 10 * n))")
  done
  for n in "${CLUSTER_PG_PORTS[@]}"; do hosts+=("127.0.0.1:$n"); done
  CLUSTER_AMQP_URL=$(IFS=,; echo "${amqp[*]}")
  CLUSTER_S3_ENDPOINT=$(IFS=,; echo "${s3[*]}")
  CLUSTER_DATABASE_URL="postgresql://postgres@$(IFS=,; echo "${hosts[*]}")/$db?target_session_attrs=read-write&connect_timeout=2"
  CLUSTER_MGMT_URL="http://127.0.0.1:15701"
  for n in "${CLUSTER_NODES[@]}"; do
    if curl -fsS -m 2 -u guest:guest -o /dev/null "http://127.0.0.1:$((15700 + n))/api/overview" 2>/dev/null; then
      CLUSTER_MGMT_URL="http://127.0.0.1:$((15700 + n))"
      break
    fi
  done
}

# cluster_psql ARGS...: psql on the cluster's writable PostgreSQL node.
cluster_psql() {
  local hosts ports
  hosts=$(printf '127.0.0.1,%.0s' "${CLUSTER_PG_PORTS[@]}")
  ports=$(IFS=,; echo "${CLUSTER_PG_PORTS[*]}")
  PGCONNECT_TIMEOUT=2 psql "host=${hosts%,} port=$ports user=postgres dbname=postgres target_session_attrs=read-write" "$@"
}
