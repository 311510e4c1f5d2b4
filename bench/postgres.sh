#!/usr/bin/env bash
# PostgreSQL benchmark: portcullis side by side with a direct connection and pgbouncer, in one
# run, on this machine (loopback only). Not a test: it prints a Markdown table of figures and
# ratios to paste into docs/PERFORMANCE.md.
#
#   bench/postgres.sh                  # defaults: 10 s per run, 8 clients
#   SECONDS_PER_RUN=5 CLIENTS=4 bench/postgres.sh
#   ONLY=select-prepared PROFILE=1 bench/postgres.sh   # perf of the bastion, plaintext run
#   SPLIT=1 bench/postgres.sh          # PostgreSQL and pgbench on CPU 0, each proxy on CPU 1
#   SINK=1 bench/postgres.sh           # the bastion also forwards to a postgres audit sink
#
# It builds portcullis in release mode, starts PostgreSQL (scram-sha-256), pgbouncer in session
# mode, and the bastion (chained query log and its checkpoints on, as always), gets a grant through the
# SSH command interface (alice requests, bob approves) and a token, and runs pgbench through
# each path: select-only (-S; simple, extended and prepared protocol) and TPC-B-like transactions
# with persistent connections, and
# select-only with a new connection per transaction (-C). The bastion is measured both with
# TLS (what engineers use) and without (like for like with the plaintext baselines), and so is
# pgbouncer (client TLS with a P-256 certificate, as the bastion's), so TLS compares with TLS.
# SINK=1 configures a postgres audit sink (a database on the same server) and reports its lag
# when the last run ends and how long it takes to catch up.
# Needs: postgresql, pgbouncer, openssl, openssh-client, python3 (pgbouncer and openssl are
# installed here if missing, on Debian).
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=${SECONDS_PER_RUN:-10}
CLIENTS=${CLIENTS:-8}

# SPLIT=1 is the deployment layout: the bastion is its own host in production, so here the
# database server and the clients share CPU 0 and every proxy (pgbouncer, the tokio relay, the
# bastion) gets CPU 1 to itself. Without it all of them share both CPUs, and TPS then measures
# how much CPU each proxy takes from PostgreSQL and pgbench.
if [ -n "${SPLIT:-}" ]; then
  ON_SERVER=(taskset -c 0); ON_PROXY=(taskset -c 1)
else
  ON_SERVER=(); ON_PROXY=()
fi

if ! command -v openssl >/dev/null; then
  apt-get install -y -q openssl >/dev/null || { apt-get update -q && apt-get install -y -q openssl >/dev/null; }
fi
if ! command -v pgbouncer >/dev/null; then
  apt-get install -y -q pgbouncer >/dev/null || { apt-get update -q && apt-get install -y -q pgbouncer >/dev/null; }
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

cargo build --release --quiet --bin portcullis --example tcp_relay
BIN=$PWD/target/release/portcullis
RELAY_BIN=$PWD/target/release/examples/tcp_relay

WORK=$(mktemp -d)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Servers started through as_postgres in the background are children of a subshell that the
  # kill above reaches, not the servers: stop whatever still runs from this run's directory.
  pkill -f "$WORK/" 2>/dev/null || true
  sleep 0.5
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups "$@"; else "$@"; fi; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; }

PASSWORD=bench-$RANDOM$RANDOM
PG_PORT=$(free_port); BOUNCER_PORT=$(free_port); BASTION_SSH=$(free_port); BASTION_PG=$(free_port)
RELAY_PORT=$(free_port)
mkdir -p "$WORK/pg"; echo "$PASSWORD" > "$WORK/pg/pw"
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$WORK/pg"
as_postgres "$PGBIN/initdb" -D "$WORK/pg/data" -U bench --pwfile="$WORK/pg/pw" --auth=scram-sha-256 >/dev/null
as_postgres "${ON_SERVER[@]}" "$PGBIN/postgres" -D "$WORK/pg/data" -p "$PG_PORT" -k "$WORK/pg" -c listen_addresses=127.0.0.1 \
  -c max_connections=200 -c fsync=off >"$WORK/pg/log" 2>&1 &
PIDS+=($!)
wait_port "$PG_PORT"
sleep 1

mkdir -p "$WORK/bouncer"
cat > "$WORK/bouncer/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/bouncer/users.txt
pool_mode = session
max_client_conn = 400
default_pool_size = 100
logfile = $WORK/bouncer/log
client_tls_sslmode = allow
client_tls_key_file = $WORK/bouncer/key.pem
client_tls_cert_file = $WORK/bouncer/cert.pem
EOF
# Client TLS for pgbouncer: a P-256 certificate, the key type the bastion generates.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=127.0.0.1 -keyout "$WORK/bouncer/key.pem" -out "$WORK/bouncer/cert.pem" 2>/dev/null
echo "\"bench\" \"$PASSWORD\"" > "$WORK/bouncer/users.txt"
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$WORK/bouncer"
as_postgres "${ON_PROXY[@]}" pgbouncer "$WORK/bouncer/pgbouncer.ini" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$BOUNCER_PORT"
BOUNCER_PID=$(pgrep -f "pgbouncer $WORK/bouncer/pgbouncer.ini" | head -1)
# The floor of any tokio proxy: copy_bidirectional, nothing else (examples/tcp_relay.rs).
"${ON_PROXY[@]}" "$RELAY_BIN" "127.0.0.1:$RELAY_PORT" "127.0.0.1:$PG_PORT" &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
wait_port "$RELAY_PORT"

for key in alice bob; do ssh-keygen -q -t ed25519 -N "" -C "$key" -f "$WORK/$key"; done
cat > "$WORK/portcullis.toml" <<EOF
[server]
state_dir = "state"
recordings_dir = "recordings"
ssh_listen = "127.0.0.1:$BASTION_SSH"
postgres_listen = "127.0.0.1:$BASTION_PG"
http_listen = "127.0.0.1:0"
postgres_allow_plaintext = true

[access]
max_duration = "8h"

[limits]
handshake_timeout = "60s"

[roles]
engineer = "requests"
leader = "approves"

[[users]]
name = "alice"
ssh_keys = ["$(cat "$WORK/alice.pub")"]
roles = ["engineer"]

[[users]]
name = "bob"
ssh_keys = ["$(cat "$WORK/bob.pub")"]
roles = ["leader"]

[[targets]]
name = "prod-db"
kind = "postgres"
address = "127.0.0.1:$PG_PORT"
database = "postgres"
login = "bench"
password_env = "BENCH_DB_PASSWORD"
tls = "disable"
requestable_by = ["engineer"]
approvers = ["leader"]
EOF
if [ -n "${SINK:-}" ]; then
  PGPASSWORD=$PASSWORD "$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U bench -d postgres -q -c "create database audit" >/dev/null
  echo "postgres://bench:$PASSWORD@127.0.0.1:$PG_PORT/audit" > "$WORK/sink-url"
  cat >> "$WORK/portcullis.toml" <<EOF

[[audit.sinks]]
name = "warehouse"
kind = "postgres"
url_file = "$WORK/sink-url"
tls = "disable"
EOF
fi
BENCH_DB_PASSWORD=$PASSWORD "${ON_PROXY[@]}" "$BIN" --config "$WORK/portcullis.toml" serve --log-format json 2>"$WORK/bastion.log" &
BASTION_PID=$!
PIDS+=("$BASTION_PID")
wait_port "$BASTION_SSH"; wait_port "$BASTION_PG"

SSH_OPTS=(-F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=no
  -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR)
as_bastion() { ssh "${SSH_OPTS[@]}" -i "$WORK/$1" -p "$BASTION_SSH" "$1@127.0.0.1" "${@:2}"; }
REQUEST=$(as_bastion alice request prod-db --for 8h --reason benchmark --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
as_bastion bob approve "$REQUEST" >/dev/null
TOKEN=$(as_bastion alice token prod-db)

# pgbench -i once, directly.
PGPASSWORD=$PASSWORD "$PGBIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U bench -i -s 2 -q postgres >/dev/null 2>&1

# path name -> "port user password database sslmode"
declare -A PATHS=(
  [direct]="$PG_PORT bench $PASSWORD postgres disable"
  [pgbouncer]="$BOUNCER_PORT bench $PASSWORD bench disable"
  [pgbouncer_tls]="$BOUNCER_PORT bench $PASSWORD bench require"
  [relay]="$RELAY_PORT bench $PASSWORD postgres disable"
  [portcullis]="$BASTION_PG alice $TOKEN prod-db disable"
  [portcullis_tls]="$BASTION_PG alice $TOKEN prod-db require"
)
ORDER=(direct pgbouncer pgbouncer_tls relay portcullis portcullis_tls)

declare -A PROXY=([direct]="" [pgbouncer]=$BOUNCER_PID [pgbouncer_tls]=$BOUNCER_PID [relay]=$RELAY_PID [portcullis]=$BASTION_PID [portcullis_tls]=$BASTION_PID)
# Idle and total clock ticks of the CPUs PostgreSQL and pgbench run on (CPU 0 when split, all
# otherwise): if they sit idle, the clients are waiting on the proxy, not the other way round.
SERVER_CPU=cpu; [ -n "${SPLIT:-}" ] && SERVER_CPU=cpu0
server_ticks() { awk -v cpu="$SERVER_CPU" '$1 == cpu {print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }

# The proxy's CPU time (user + system, clock ticks) and context switches (all its threads).
proxy_counters() {
  [ -n "$1" ] || { echo "0 0 0"; return; }
  local ticks switches
  ticks=$(awk '{print $14, $15}' "/proc/$1/stat")
  switches=$(cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {sum += $2} END {print sum}')
  echo "$ticks $switches"
}

# run path args... -> "tps latency_ms proxy_cpu_us proxy_switches proxy_system_cpu_us server_idle_% proxy_user_cpu_us"
# (the proxy figures per transaction)
run() {
  read -r port user password database sslmode <<<"${PATHS[$1]}"
  local before after server_before server_after
  server_before=$(server_ticks)
  before=$(proxy_counters "${PROXY[$1]}")
  PGPASSWORD=$password PGSSLMODE=$sslmode "${ON_SERVER[@]}" "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U "$user" \
    -n -T "$RUN" "${@:2}" "$database" 2>/dev/null >"$WORK/pgbench.out" || true
  after=$(proxy_counters "${PROXY[$1]}")
  server_after=$(server_ticks)
  BEFORE=$before AFTER=$after SERVER_BEFORE=$server_before SERVER_AFTER=$server_after TICK=$(getconf CLK_TCK) python3 -c '
import os, re
text = open(os.environ["WORK"] + "/pgbench.out").read()
tps = re.search(r"tps = ([0-9.]+)", text)
latency = re.search(r"latency average = ([0-9.]+) ms", text)
count = re.search(r"actually processed: ([0-9]+)", text)
n = int(count.group(1)) if count else 0
(u0, k0, s0), (u1, k1, s1) = [map(int, os.environ[k].split()) for k in ("BEFORE", "AFTER")]
per = lambda ticks: ticks / int(os.environ["TICK"]) * 1e6 / n if n else 0
switches = (s1 - s0) / n if n else 0
(i0, t0), (i1, t1) = [map(int, os.environ[k].split()) for k in ("SERVER_BEFORE", "SERVER_AFTER")]
idle = 100 * (i1 - i0) / (t1 - t0) if t1 > t0 else 0
print(tps.group(1) if tps else "0", latency.group(1) if latency else "0",
      f"{per(u1 - u0 + k1 - k0):.1f}", f"{switches:.2f}", f"{per(k1 - k0):.1f}", f"{idle:.1f}",
      f"{per(u1 - u0):.1f}")'
}
export WORK

declare -A RESULT
WORKLOADS=("select-simple:-S -M simple -c $CLIENTS -j 2" "select-extended:-S -M extended -c $CLIENTS -j 2"
  "select-prepared:-S -M prepared -c $CLIENTS -j 2" "tpcb:-c $CLIENTS -j 2" "connect:-S -C -c 4 -j 2")
ONLY=${ONLY:-.}   # a regex: run only the workloads whose name matches
for workload in "${WORKLOADS[@]}"; do
  name=${workload%%:*}; args=${workload#*:}
  [[ $name =~ $ONLY ]] || continue
  for path in "${ORDER[@]}"; do
    # PROFILE=1: perf samples the bastion during its plaintext runs (/tmp/portcullis-pg.perf.data);
    # SYSCALLS=1: counts the proxy's system calls per run (printed to stderr).
    if [ -n "${PROFILE:-}" ] && [ "$path" = portcullis ]; then
      perf record -g -o /tmp/portcullis-pg.perf.data -p "$BASTION_PID" -- sleep "$RUN" 2>/dev/null &
      PERF_PID=$!
    elif [ -n "${SYSCALLS:-}" ] && [ -n "${PROXY[$path]}" ]; then
      perf stat -e raw_syscalls:sys_enter -p "${PROXY[$path]}" -o "/tmp/syscalls-$name-$path.txt" -- sleep "$RUN" 2>/dev/null &
      PERF_PID=$!
    fi
    # shellcheck disable=SC2086
    RESULT[$name,$path]=$(run "$path" $args)
    [ -n "${PERF_PID:-}" ] && { wait "$PERF_PID" || true; unset PERF_PID; }
  done
done
RSS_KIB=$(awk '/VmRSS/ {print $2}' "/proc/$BASTION_PID/status")
if [ -n "${SINK:-}" ]; then
  sink_lag() {
    BENCH_DB_PASSWORD=$PASSWORD "$BIN" --config "$WORK/portcullis.toml" audit sinks --json 2>/dev/null |
      python3 -c 'import json,sys; s=json.load(sys.stdin)["sinks"][0]; print(s["lag_events"], s["lag_seconds"] or 0)'
  }
  read -r LAG_EVENTS LAG_SECONDS <<<"$(sink_lag)"
  CATCH_START=$(date +%s.%N)
  while :; do
    read -r lag _ <<<"$(sink_lag)"
    [ "$lag" = 0 ] && break
    sleep 0.5
  done
  CATCH_UP=$(python3 -c "import time; print(f'{time.time() - $CATCH_START:.1f}')")
  SINK_ROWS=$(PGPASSWORD=$PASSWORD "$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U bench -d audit -At \
    -c "select (select count(*) from portcullis_events) || ' events, ' || (select count(*) from portcullis_statements) || ' statements'")
fi

ratio() { python3 -c "a,b=float('$1'),float('$2'); print(f'{a/b:.2f}' if b else '-')"; }
echo "| measure | direct | pgbouncer | pgbouncer TLS | tokio relay | portcullis | portcullis TLS | portcullis / pgbouncer | portcullis TLS / pgbouncer TLS |"
echo "|---|---|---|---|---|---|---|---|---|"
for name in select-simple select-extended select-prepared tpcb connect; do
  [[ $name =~ $ONLY ]] || continue
  for column in 1 2 3 7 5 4 6; do
    case $column in
      1) label="$name tps" ;;
      2) label="$name latency ms" ;;
      3) label="$name proxy CPU µs per transaction" ;;
      4) label="$name proxy context switches per transaction" ;;
      5) label="$name proxy CPU µs per transaction in the kernel" ;;
      6) label="$name server CPU idle %" ;;
      7) label="$name proxy CPU µs per transaction in user space" ;;
    esac
    row="| $label"
    values=()
    for path in "${ORDER[@]}"; do
      value=$(echo "${RESULT[$name,$path]}" | cut -d' ' -f"$column")
      values+=("$value"); row="$row | $value"
    done
    if [ "$column" = 6 ]; then echo "$row | - | - |"; continue; fi
    echo "$row | $(ratio "${values[4]}" "${values[1]}") | $(ratio "${values[5]}" "${values[2]}") |"
  done
done
echo
LAYOUT="shared (everything on both CPUs)"
[ -n "${SPLIT:-}" ] && LAYOUT="split (PostgreSQL and pgbench on CPU 0, each proxy on CPU 1)"
echo "bastion RSS after the runs: ${RSS_KIB} KiB; clients: $CLIENTS; seconds per run: $RUN; layout: $LAYOUT"
if [ -n "${SINK:-}" ]; then
  echo "postgres sink: when the last run ended it lagged $LAG_EVENTS events (oldest undelivered ${LAG_SECONDS} s old); caught up $CATCH_UP s later; it holds $SINK_ROWS"
fi
