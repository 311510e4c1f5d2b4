#!/usr/bin/env bash
# SSH benchmark: portcullis side by side with a direct connection and an OpenSSH jump host, in one
# run, on this machine (loopback only). Not a test: it prints a Markdown table of figures and
# ratios to paste into docs/PERFORMANCE.md.
#
#   bench/ssh.sh                 # defaults: 256 MiB transfers, 20 setups, 50 and 200 sessions
#   MIB=64 SETUPS=5 SESSIONS="20" bench/ssh.sh
#   ONLY=transfers bench/ssh.sh  # throughput alone (also: setup, latency, loaded, memory)
#   ONLY=loaded bench/ssh.sh     # echo latency while 3 bulk /dev/zero downloads share the path
#
# It builds portcullis in release mode, starts two sshd (the target, and a jump host), starts the
# bastion with recording on, gets a grant through the SSH command interface (alice requests, bob
# approves), and measures for each path:
#   - upload and download throughput (MiB/s) of a binary stream through `cat`
#   - session setup time (`ssh ... true`), median of SETUPS runs
#   - interactive echo latency p50/p99: one byte through a pty session running `cat`, idle and
#     while three bulk /dev/zero downloads run through the same path (recorded, for the bastion)
#   - memory per concurrent streaming session (RSS growth of the relaying processes / sessions)
# Needs: openssh-server, openssh-client, python3 (all installed by scripts/test).
set -euo pipefail
cd "$(dirname "$0")/.."

MIB=${MIB:-256}
SETUPS=${SETUPS:-20}
SESSIONS=${SESSIONS:-"50 200"}
SSHD=$(command -v sshd || echo /usr/sbin/sshd)

cargo build --release --quiet
BIN=$PWD/target/release/portcullis

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  [ -f "$WORK/bastion.log" ] && cp "$WORK/bastion.log" "${TMPDIR:-/tmp}/portcullis-bench-bastion.log"
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  pkill -f "$WORK" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
[ "$(id -u)" -eq 0 ] && mkdir -p /run/sshd

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
keygen() { ssh-keygen -q -t ed25519 -N "" -C "$1" -f "$WORK/$1"; }
USER_NAME=$(id -un)

for key in target_host jump_host me alice bob; do keygen "$key"; done
mkdir -p "$WORK/state"


# The bastion's client key must be in the target's authorized_keys before the bastion starts.
cat > "$WORK/portcullis.toml" <<EOF
[server]
state_dir = "state"
recordings_dir = "recordings"
ssh_listen = "127.0.0.1:0"
postgres_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
EOF
CLIENT_KEY=$("$BIN" --config "$WORK/portcullis.toml" client-key)

start_sshd() { # name port authorized_keys
  cat > "$WORK/$1.conf" <<EOF
Port $2
ListenAddress 127.0.0.1
HostKey $WORK/${1}_host
AuthorizedKeysFile $3
PidFile $WORK/$1.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowTcpForwarding yes
Subsystem sftp internal-sftp
MaxStartups 1000
MaxSessions 1000
LogLevel QUIET
EOF
  "$SSHD" -D -f "$WORK/$1.conf" &
  PIDS+=($!)
}

TARGET_PORT=$(free_port); JUMP_PORT=$(free_port); BASTION_PORT=$(free_port)
{ cat "$WORK/me.pub"; echo "$CLIENT_KEY"; } > "$WORK/target_keys"
cp "$WORK/me.pub" "$WORK/jump_keys"
start_sshd target "$TARGET_PORT" "$WORK/target_keys"
start_sshd jump "$JUMP_PORT" "$WORK/jump_keys"

cat > "$WORK/portcullis.toml" <<EOF
[server]
state_dir = "state"
recordings_dir = "recordings"
ssh_listen = "127.0.0.1:$BASTION_PORT"
postgres_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"

[access]
max_duration = "8h"

# OpenSSH's LoginGraceTime is 120 s: the same grace here, so a loaded machine measures memory,
# not the bastion's stricter 10 s default.
[limits]
handshake_timeout = "120s"
max_channels_per_connection = 64

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
name = "web-1"
kind = "ssh"
address = "127.0.0.1:$TARGET_PORT"
login = "$USER_NAME"
host_key = "$(cut -d' ' -f1,2 "$WORK/target_host.pub")"
requestable_by = ["engineer"]
approvers = ["leader"]
EOF
"$BIN" --config "$WORK/portcullis.toml" serve --log-format json 2>"$WORK/bastion.log" &
BASTION_PID=$!
PIDS+=("$BASTION_PID")

for port in "$TARGET_PORT" "$JUMP_PORT" "$BASTION_PORT"; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
done

{
  echo "[127.0.0.1]:$TARGET_PORT $(cut -d' ' -f1,2 "$WORK/target_host.pub")"
  echo "[127.0.0.1]:$JUMP_PORT $(cut -d' ' -f1,2 "$WORK/jump_host.pub")"
  echo "[127.0.0.1]:$BASTION_PORT $("$BIN" --config "$WORK/portcullis.toml" host-key | tail -1 | cut -d' ' -f1,2)"
} > "$WORK/known_hosts"

SSH_OPTS=(-F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes
  -o UserKnownHostsFile="$WORK/known_hosts" -o ControlMaster=no -o ControlPath=none)
as_bastion() { ssh "${SSH_OPTS[@]}" -i "$WORK/$1" -p "$BASTION_PORT" "$2@127.0.0.1" "${@:3}"; }

# The grant, through the real approval path.
REQUEST=$(as_bastion alice alice request web-1 --for 8h --reason benchmark --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
as_bastion bob bob approve "$REQUEST" >/dev/null

# One command per path, to run a remote command.
DIRECT_CMD=(ssh "${SSH_OPTS[@]}" -i "$WORK/me" -p "$TARGET_PORT" "$USER_NAME@127.0.0.1")
JUMP_CMD=(ssh "${SSH_OPTS[@]}" -i "$WORK/me"
  -o "ProxyCommand=ssh ${SSH_OPTS[*]} -i $WORK/me -p $JUMP_PORT -W %h:%p $USER_NAME@127.0.0.1"
  -p "$TARGET_PORT" "$USER_NAME@127.0.0.1")
BASTION_CMD=(ssh "${SSH_OPTS[@]}" -i "$WORK/alice" -p "$BASTION_PORT" "alice+web-1@127.0.0.1")
SCP_OPTS=(scp -q "${SSH_OPTS[@]}")
direct_scp() { "${SCP_OPTS[@]}" -i "$WORK/me" -P "$TARGET_PORT" "$@"; }
jump_scp() {
  "${SCP_OPTS[@]}" -i "$WORK/me" -P "$TARGET_PORT" \
    -o "ProxyCommand=ssh ${SSH_OPTS[*]} -i $WORK/me -p $JUMP_PORT -W %h:%p $USER_NAME@127.0.0.1" "$@"
}
bastion_scp() { "${SCP_OPTS[@]}" -i "$WORK/alice" -P "$BASTION_PORT" "$@"; }
scp_host() { case $1 in bastion_scp) echo "alice+web-1@127.0.0.1" ;; *) echo "$USER_NAME@127.0.0.1" ;; esac; }
direct() { "${DIRECT_CMD[@]}" "$@"; }
jump() { "${JUMP_CMD[@]}" "$@"; }
bastion() { "${BASTION_CMD[@]}" "$@"; }

latency() { # p50 p99 of a one-byte round trip through a pty session running `cat`, in ms
  local -n command=$1
  python3 - "${command[@]}" <<'PY'
import os, statistics, subprocess, sys, time
ssh = sys.argv[1:]
process = subprocess.Popen(ssh[:1] + ["-tt"] + ssh[1:] + ["stty raw -echo; echo ready; exec cat"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
buffer = b""
while b"ready" not in buffer:
    chunk = process.stdout.read(1)
    if not chunk:
        sys.exit("session ended before it was ready")
    buffer += chunk
while not buffer.endswith(b"\n"):
    buffer += process.stdout.read(1)
samples = []
for _ in range(300):
    start = time.perf_counter()
    process.stdin.write(b"x")
    if process.stdout.read(1) != b"x":
        sys.exit("echo mismatch")
    samples.append((time.perf_counter() - start) * 1000)
process.stdin.write(b"\x04")
process.kill()
samples.sort()
print(round(samples[len(samples) // 2], 2), round(samples[int(len(samples) * 0.99) - 1], 2))
PY
}

now() { python3 -c 'import time; print(time.monotonic())'; }
elapsed() { python3 -c "print($2 - $1)"; }

# Each transfer starts with the disk's write-back of the previous one done (`sync`): the bastion
# writes a recording and the baselines do not, and a run should not bill one path for another's
# dirty pages. Sustained, a recorded stream is bounded by the disk (see docs/PERFORMANCE.md).
rate() { python3 -c "print(round($MIB / ($2 - $1), 1))"; }
upload() { # path [file] -> MiB/s of a stream into `cat` (default: /dev/zero)
  local start end
  sync; start=$(now)
  if [ -n "${2:-}" ]; then "$1" "cat > /dev/null" < "$2"
  else head -c "$((MIB * 1024 * 1024))" /dev/zero | "$1" "cat > /dev/null"; fi
  end=$(now)
  rate "$start" "$end"
}
download() { # path [file] -> MiB/s of a stream out of `cat` (default: /dev/zero)
  local start end
  sync; start=$(now)
  if [ -n "${2:-}" ]; then "$1" "cat $2" > /dev/null
  else "$1" "head -c $((MIB * 1024 * 1024)) /dev/zero" > /dev/null; fi
  end=$(now)
  rate "$start" "$end"
}
scp_up() { # path -> MiB/s of `scp` (SFTP mode) of a random file to the target
  local start end
  rm -f "$WORK/scp-up"; sync; start=$(now)
  "$1" "$WORK/random" "$(scp_host "$1"):$WORK/scp-up" || { echo "$1 upload failed" >&2; exit 1; }
  end=$(now)
  rate "$start" "$end"
}
scp_down() {
  local start end
  rm -f "$WORK/scp-down"; sync; start=$(now)
  "$1" "$(scp_host "$1"):$WORK/random" "$WORK/scp-down" || { echo "$1 download failed" >&2; exit 1; }
  end=$(now)
  rate "$start" "$end"
}
setup() { # median seconds of `true`
  local times=()
  for _ in $(seq "$SETUPS"); do
    local start end
    start=$(now); "$1" true; end=$(now)
    times+=("$(elapsed "$start" "$end")")
  done
  python3 -c "import statistics,sys; print(round(statistics.median(map(float, sys.argv[1:])) * 1000, 1))" "${times[@]}"
}
rss_kib() { # total RSS of the given pids and their descendants
  python3 - "$@" <<'PY'
import os, sys
roots = {int(p) for p in sys.argv[1:]}
children = {}
for pid in os.listdir('/proc'):
    if pid.isdigit():
        try:
            ppid = int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(pid))
        except OSError:
            pass
total, todo = 0, list(roots)
while todo:
    pid = todo.pop()
    todo.extend(children.get(pid, []))
    try:
        for line in open(f'/proc/{pid}/status'):
            if line.startswith('VmRSS:'):
                total += int(line.split()[1])
    except OSError:
        pass
print(total)
PY
}
memory() { # path relay-pids... ; count -> KiB per session
  local path=$1 count=$2; shift 2
  local before after clients=() upper
  upper=$(echo "$path" | tr a-z A-Z)
  local -n client="${upper}_CMD" # the ssh itself, so that `kill` below reaches it
  before=$(rss_kib "$@")
  for i in $(seq "$count"); do
    "${client[@]}" 'while :; do echo streaming; sleep 0.2; done' > /dev/null 2>&1 &
    clients+=($!)
    [ $((i % 10)) -eq 0 ] && sleep 1
  done
  sleep 3
  local alive=0
  for pid in "${clients[@]}"; do kill -0 "$pid" 2>/dev/null && alive=$((alive + 1)); done
  after=$(rss_kib "$@")
  for pid in "${clients[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait "${clients[@]}" 2>/dev/null || true
  sleep 2
  echo "$(( (after - before) / count )) $alive"
}

TARGET_PID=$(cat "$WORK/target.pid"); JUMP_PID=$(cat "$WORK/jump.pid")
if [ -n "${PROFILE:-}" ]; then
  # Profile the bastion during one download (or upload), then stop. PROFILE_TEXT=1 streams
  # base64 text instead of /dev/zero.
  direction=${PROFILE_DIRECTION:-download}
  source_file=()
  if [ -n "${PROFILE_TEXT:-}" ]; then
    head -c "$((MIB * 1024 * 768))" /dev/urandom | base64 -w 76 > "$WORK/text"
    source_file=("$WORK/text")
  fi
  perf record -F 499 -g -p "$BASTION_PID" -o "${TMPDIR:-/tmp}/portcullis.perf.data" -- sleep 6 2>/dev/null &
  perf_pid=$!
  echo "$direction MiB/s: $("$direction" bastion "${source_file[@]}")"
  wait "$perf_pid"
  exit 0
fi

# ONLY names the parts to run; SKIP_TRANSFERS=1 (older spelling) runs memory alone.
ONLY=${ONLY:-"transfers setup latency loaded memory"}
[ "${SKIP_TRANSFERS:-}" = 1 ] && ONLY=memory
part() { [[ " $ONLY " == *" $1 "* ]]; }

if part transfers; then
  # Text (base64, what logs and terminals carry) and random bytes (what files are), MIB each.
  head -c "$((MIB * 1024 * 768))" /dev/urandom | base64 -w 76 > "$WORK/text"
  head -c "$((MIB * 1024 * 1024))" /dev/urandom > "$WORK/random"
fi

# Echo latency while three bulk downloads (LOAD_MIB each, 1024 by default) run through the same
# path: for the bastion their recordings fill the page cache until writes wait for the disk, and
# an interactive session must not wait with them. The loads are stopped once measured.
loaded_latency() { # path -> p50 p99
  local upper loads=()
  upper=$(echo "$1" | tr a-z A-Z)
  # The ssh commands themselves, not the path's shell function: `$!` of a function run in the
  # background is a subshell, and killing it left the three downloads running into the next
  # path's measurements (fixed 2026-12-02; figures measured before then had them running).
  local -n loader="${upper}_CMD"
  for _ in 1 2 3; do
    "${loader[@]}" "head -c $((${LOAD_MIB:-1024} * 1024 * 1024)) /dev/zero" > /dev/null 2>&1 &
    loads+=($!)
  done
  sleep 3
  latency "${upper}_CMD"
  kill "${loads[@]}" 2>/dev/null || true
  wait "${loads[@]}" 2>/dev/null || true
  local left=0
  for _ in $(seq 20); do # the target's `head` ends once its channel closes
    left=$(pgrep -fc "head -c $((${LOAD_MIB:-1024} * 1024 * 1024)) /dev/zero" || true)
    [ "${left:-0}" -eq 0 ] && break
    sleep 0.5
  done
  [ "${left:-0}" -eq 0 ] || echo "warning: $left load processes still running after $1" >&2
  sync
}

declare -A UP DOWN TEXT_UP TEXT_DOWN SCP_UP SCP_DOWN SETUP P50 P99 LOADED_P50 LOADED_P99
for path in direct jump bastion; do
  for measure in UP DOWN TEXT_UP TEXT_DOWN SCP_UP SCP_DOWN SETUP P50 P99 LOADED_P50 LOADED_P99; do
    declare -n cell=$measure; cell[$path]=-; unset -n cell
  done
  if part transfers; then
    UP[$path]=$(upload "$path")
    DOWN[$path]=$(download "$path")
    TEXT_UP[$path]=$(upload "$path" "$WORK/text")
    TEXT_DOWN[$path]=$(download "$path" "$WORK/text")
    SCP_UP[$path]=$(scp_up "${path}_scp")
    SCP_DOWN[$path]=$(scp_down "${path}_scp")
  fi
  part setup && SETUP[$path]=$(setup "$path")
  upper=$(echo "$path" | tr a-z A-Z)
  part latency && read -r "P50[$path]" "P99[$path]" < <(latency "${upper}_CMD")
  part loaded && read -r "LOADED_P50[$path]" "LOADED_P99[$path]" < <(loaded_latency "$path")
done

ratio() { if [ "$1" = - ] || [ "$2" = - ]; then echo -; else python3 -c "print(round($1 / $2, 2))"; fi; }
echo
echo "## SSH ($(date -u +%Y-%m-%d), $(nproc) cores, ${MIB} MiB transfers, median of ${SETUPS} setups)"
echo
echo "| measure | direct | OpenSSH jump host | portcullis | portcullis / jump host |"
echo "| --- | --- | --- | --- | --- |"
row() { # label, name of the measure's array
  local -n cells=$2
  echo "| $1 | ${cells[direct]} | ${cells[jump]} | ${cells[bastion]} | $(ratio "${cells[bastion]}" "${cells[jump]}") |"
}
row "upload MiB/s, /dev/zero through cat" UP
row "download MiB/s, /dev/zero through cat" DOWN
row "upload MiB/s, base64 text through cat" TEXT_UP
row "download MiB/s, base64 text through cat" TEXT_DOWN
row "upload MiB/s, scp (SFTP) of a random file" SCP_UP
row "download MiB/s, scp (SFTP) of a random file" SCP_DOWN
echo "| setup ms (ssh ... true) | ${SETUP[direct]} | ${SETUP[jump]} | ${SETUP[bastion]} | $(ratio "${SETUP[bastion]}" "${SETUP[jump]}") |"
echo "| echo latency p50 ms (pty, 300 keystrokes) | ${P50[direct]} | ${P50[jump]} | ${P50[bastion]} | $(ratio "${P50[bastion]}" "${P50[jump]}") |"
echo "| echo latency p99 ms | ${P99[direct]} | ${P99[jump]} | ${P99[bastion]} | $(ratio "${P99[bastion]}" "${P99[jump]}") |"
echo "| echo latency p50 ms, 3 bulk downloads on the same path | ${LOADED_P50[direct]} | ${LOADED_P50[jump]} | ${LOADED_P50[bastion]} | $(ratio "${LOADED_P50[bastion]}" "${LOADED_P50[jump]}") |"
echo "| echo latency p99 ms, 3 bulk downloads on the same path | ${LOADED_P99[direct]} | ${LOADED_P99[jump]} | ${LOADED_P99[bastion]} | $(ratio "${LOADED_P99[bastion]}" "${LOADED_P99[jump]}") |"
part memory && for count in $SESSIONS; do
  read -r jump_kib jump_alive < <(memory jump "$count" "$JUMP_PID")
  read -r bastion_kib bastion_alive < <(memory bastion "$count" "$BASTION_PID")
  echo "| memory per session at $count streaming sessions, KiB (alive) | - | $jump_kib ($jump_alive) | $bastion_kib ($bastion_alive) | $(ratio "$bastion_kib" "$jump_kib") |"
done
echo
echo "Jump-host memory counts the jump sshd and its per-connection children; portcullis memory is"
echo "the bastion process alone (it also holds the upstream connection and writes the recording)."
