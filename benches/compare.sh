#!/usr/bin/env bash
# benches/compare.sh — turnpike vs coturn, same machine, same loads.
#
# Usage:
#   benches/compare.sh            # full run: 3 rounds, ~10-15 minutes
#   benches/compare.sh --quick    # smoke run: 1 round, short loads, <= 3 minutes
#   options: --rounds N   --port P (default 3478)   --out FILE (default
#            benches/RESULTS.md)   --keep DIR (keep raw JSON and server logs)
#            --no-write (print the table, leave RESULTS.md alone)
#            --gen-threads N (load generator threads for the relay loads,
#            default 1: on 2 cores the generator shares the CPUs with the
#            server, and one thread offers ~400k msg/s)
#            --loads L1,L2 (run only these loads, e.g. cpu50k,cpu50k1t; with
#            --no-write for a quick look, since the table then has gaps)
#            --baseline BIN (also run another turnpike binary, e.g. the
#            previous release, as the column "turnpike-base": an A/B of two
#            builds in one run)
#            --coturn-prefix DIR (also run coturn built into DIR, e.g.
#            /opt/coturn-4.17.1 by ../shared/anchors/build-coturn.sh, as the
#            column "coturn VERSION", e.g. "coturn 4.17.1"; Debian's 4.6.1 stays a
#            column of its own)
#
# What it does, for every load below and every round, alternating the order
# (round 1: turnpike then coturn, round 2: coturn then turnpike, ...) so
# slow drift of the machine cancels out:
#   1. starts a fresh server on 127.0.0.1:PORT (UDP and TCP, no TLS):
#      - coturn 4.6.1 (`turnserver`), TURN REST secret "S", realm "bench",
#        relay ports 10000-32767 on 127.0.0.1, loopback peers allowed,
#        --relay-threads = nproc, log to a file;
#      - turnpike (target/release/turnpike, built if missing), the
#        equivalent config: threads = nproc, the same secret, realm, relay
#        IP and ports (10000-32767 for both: below the ephemeral range, so
#        no client socket takes a relay port), 127.0.0.1/32 allowed as peer, no HTTP, log level warn;
#   2. runs the load, reading the server's CPU (utime+stime of
#      /proc/PID/stat) and RSS (VmRSS) around the measured window;
#   3. stops the server (SIGINT, then SIGKILL after 5 s).
# The loads:
#   cpu50k   `turnpike loadgen relay --mode c2c --rate 50000 --size 100`
#            (64 allocations = 32 A/B pairs, ChannelData): server CPU per
#            relayed message, relayed msg/s, loss, RTT p50/p99.
#   cpu50k1t the same with both servers on one thread (turnpike
#            `threads = 1`, coturn `--relay-threads=1`): every A/B pair on
#            one shard, as opposed to half the pairs straddling two shards.
#   maxrate  the same, stepping the offered rate up (x1.25 from 50k msg/s;
#            x1.5 with --quick) until loss >= 1 % or the generator relays
#            less than 90 % of what it was asked (it cannot keep up): the
#            highest relayed msg/s with loss < 1 %.
#   echo50k  `turnpike loadgen relay --mode echo --rate 50000 --size 100`
#            (64 allocations, each permitted and channel-bound to an echo
#            peer the generator runs on 127.0.0.1, one per generator
#            thread, which sends every datagram straight back): the
#            client <-> external peer case (an SFU, a remote peer), where
#            every relayed message is one trip through the server's kernel
#            UDP stack in and one out. The same rows as cpu50k.
#   echo150k the same at 150k msg/s.
#   echomax  the max-rate search of maxrate with the echo load.
#   uclient  coturn's own client: `turnutils_uclient -y -m 50 -z 0 -n N -l 100 -u bench
#            -W S` (50 client-to-client sessions, N messages each, as fast as
#            it goes; its rate is its own, it cannot be paced precisely):
#            elapsed wall time (its ~5 s of staggered connects included),
#            messages received, server CPU per received message.
#   setup    `turnpike loadgen allocations --count N --concurrency 32`:
#            Allocate (with its 401) + CreatePermission + ChannelBind, per s.
#   binding  `turnpike loadgen binding` closed loop (4 sockets x 16 in
#            flight): Binding requests answered per second, CPU per request.
#            Generator and server share every core, so the rate measures
#            server + generator CPU per request, not the server alone.
#   binding1c the same with one core each: the server (turnpike
#            `threads = 1`, coturn `--relay-threads=1`) pinned to CPU 1 with
#            `taskset -c 1`, the generator to CPU 0 with `taskset -c 0`, as
#            one would put a load generator on a machine of its own. Needs
#            2 cores or more.
#   idle1k / idle10k  `turnpike loadgen idle --allocations N`: server RSS
#            with N idle allocations (each one permission + one channel) and
#            (RSS with − RSS before) / N.
# The markdown table (median of the rounds, ratio turnpike/coturn, the exact
# commands, date, machine, versions) replaces the "## turnpike vs coturn"
# section of RESULTS.md; other sections are kept.
#
# Definitions (also in `turnpike loadgen relay --help` output): a relayed
# message is one payload that crossed the server from one endpoint to the
# other; a c2c round trip (A->B, B echoes to A) is two relayed messages. In
# c2c each relayed message costs the server two hops (client->relay socket
# ->partner's relay socket->partner client), as with uclient -y.
#
# Everything runs on 127.0.0.1. Every server and client this script starts
# is killed on exit, failure or Ctrl-C. Needs: coturn (turnserver,
# turnutils_uclient), python3, ss, a Rust toolchain if the release binary is
# missing. Run it as a user that may raise RLIMIT_NOFILE to >= 10200 for
# the 10k idle load (root here), on an otherwise quiet machine.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

QUICK=0
ROUNDS=""
PORT=3478
OUT="$ROOT/benches/RESULTS.md"
KEEP=""
WRITE=1
GEN_THREADS=1
ONLY=""
BASELINE=""
COTURN_PREFIX=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS="$2"; shift ;;
    --port) PORT="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --keep) KEEP="$2"; shift ;;
    --no-write) WRITE=0 ;;
    --gen-threads) GEN_THREADS="$2"; shift ;;
    --loads) ONLY="$2"; shift ;;
    --baseline) BASELINE="$2"; shift ;;
    --coturn-prefix) COTURN_PREFIX="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

CORES=$(nproc)
SECRET=S
if [ "$QUICK" = 1 ]; then
  ROUNDS=${ROUNDS:-1}
  CPU_DUR=3; STEP_DUR=2; STEP_FACTOR=1.5; UC_N=500; SETUP_N=1000; BIND_DUR=2
else
  ROUNDS=${ROUNDS:-3}
  CPU_DUR=10; STEP_DUR=3; STEP_FACTOR=1.25; UC_N=2000; SETUP_N=5000; BIND_DUR=5
fi
# Relay ports: below the kernel's ephemeral range (32768-60999 by default),
# so no client socket of the generator or of uclient can hold a port a
# server wants (and EVEN-PORT/RESERVATION-TOKEN pairs stay free).
RELAY_LOW=10000
RELAY_HIGH=32767
read -r eph_low _ </proc/sys/net/ipv4/ip_local_port_range
if [ "$eph_low" -le "$RELAY_HIGH" ]; then
  echo "warning: the ephemeral port range starts at $eph_low, inside the relay range $RELAY_LOW-$RELAY_HIGH" >&2
fi
STEP_START=50000
STEP_MAX=1000000
RELAY_ALLOCS=64

TP="$ROOT/target/release/turnpike"
if [ ! -x "$TP" ]; then
  echo "building target/release/turnpike ..." >&2
  cargo build --release --quiet
fi
for t in turnserver turnutils_uclient python3 ss taskset; do
  command -v "$t" >/dev/null || { echo "error: $t not found (apt-get install coturn python3 iproute2)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/turnpike-compare.XXXXXX)
SERVER_PID=""
CLIENT_PID=""
RUN=""

cleanup() {
  local rc=$?
  for p in $CLIENT_PID $SERVER_PID; do
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [ -n "$KEEP" ]; then
    mkdir -p "$KEEP" && cp -r "$WORK"/. "$KEEP"/ && echo "raw results kept in $KEEP" >&2
  fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" -lt 10200 ]; then
  echo "warning: RLIMIT_NOFILE is $(ulimit -n): the 10k idle load needs ~10100 fds in the generator and in the server" >&2
fi

port_busy() {
  ss -Hlun "sport = :$PORT" | grep -q . || ss -Hltn "sport = :$PORT" | grep -q .
}

if port_busy; then
  echo "error: 127.0.0.1:$PORT is in use; pick another with --port" >&2
  exit 1
fi

cat > "$WORK/turnpike.toml" <<EOF
[server]
threads = THREADS
realm = "bench"
[[listen]]
transport = "udp"
addr = "127.0.0.1:$PORT"
[[listen]]
transport = "tcp"
addr = "127.0.0.1:$PORT"
[relay]
bind_ip = "127.0.0.1"
ports = "$RELAY_LOW-$RELAY_HIGH"
[auth]
secrets = ["$SECRET"]
[policy]
allow_peers = ["127.0.0.1/32"]
max_allocations = 100000
max_allocations_per_user = 100000
[http]
addr = ""
EOF

sed "s/^threads = THREADS/threads = $CORES/" "$WORK/turnpike.toml" >"$WORK/turnpike.$CORES.toml"
sed "s/^threads = THREADS/threads = 1/" "$WORK/turnpike.toml" >"$WORK/turnpike.1.toml"
# The build under test rate-limits unauthenticated answers per source
# ([limits] unauth_rate, issue 12); every load comes from 127.0.0.1, so the
# rate is set far above any load here (4e9/s, the largest burst): every
# answer still pays for the limiter's lookup, none is held back (a
# --baseline from before issue 12 does not know the keys and gets the
# config without them).
for t in "$CORES" 1; do
  { cat "$WORK/turnpike.$t.toml"; printf '[limits]\nunauth_rate = 4000000000\nunauth_burst = 16000\n'; } >"$WORK/turnpike-new.$t.toml"
done
TP_CMD=("$TP" --log-level warn serve --config)
CT_CMD=(turnserver --use-auth-secret "--static-auth-secret=$SECRET" --realm=bench
  --listening-ip=127.0.0.1 "--listening-port=$PORT" --relay-ip=127.0.0.1
  --allow-loopback-peers --no-tls --no-dtls --no-cli
  "--min-port=$RELAY_LOW" "--max-port=$RELAY_HIGH"
  --no-stdout-log --simple-log "--log-file=$WORK/coturn.log" --pidfile=/dev/null)
# The servers of this run, in the order of round 1 (later rounds rotate it,
# so drift of the machine spreads over all of them).
SERVERS=(turnpike coturn)
if [ -n "$BASELINE" ]; then
  [ -x "$BASELINE" ] || { echo "error: --baseline $BASELINE is not an executable" >&2; exit 2; }
  SERVERS+=(turnpike-base)
  # A baseline from after issue 12 knows [limits] and would hold every
  # load from 127.0.0.1 to its default per-source rate: give it the same
  # config as the build under test when it accepts it.
  BASE_CFG="turnpike"
  if "$BASELINE" config check "$WORK/turnpike-new.$CORES.toml" >/dev/null 2>&1; then
    BASE_CFG="turnpike-new"
  fi
fi
if [ -n "$COTURN_PREFIX" ]; then
  [ -x "$COTURN_PREFIX/bin/turnserver" ] || { echo "error: no $COTURN_PREFIX/bin/turnserver (build it with ../shared/anchors/build-coturn.sh $COTURN_PREFIX)" >&2; exit 2; }
  SERVERS+=(coturn-new)
fi

start_server() { # $1 = a server of SERVERS, $2 = threads, $3 = CPU list to pin it to (optional)
  local i pin=()
  # taskset execs the server, so $! is the server's pid.
  [ -z "${3:-}" ] || pin=(taskset -c "$3")
  case "$1" in
    turnpike) ${pin[@]+"${pin[@]}"} "${TP_CMD[@]}" "$WORK/turnpike-new.$2.toml" >>"$WORK/turnpike.out" 2>>"$WORK/turnpike.err" & ;;
    coturn) ${pin[@]+"${pin[@]}"} "${CT_CMD[@]}" "--relay-threads=$2" >>"$WORK/coturn.out" 2>&1 & ;;
    turnpike-base) ${pin[@]+"${pin[@]}"} "$BASELINE" "${TP_CMD[@]:1}" "$WORK/$BASE_CFG.$2.toml" >>"$WORK/turnpike-base.out" 2>>"$WORK/turnpike-base.err" & ;;
    coturn-new) ${pin[@]+"${pin[@]}"} "$COTURN_PREFIX/bin/turnserver" "${CT_CMD[@]:1}" "--relay-threads=$2" >>"$WORK/coturn-new.out" 2>&1 & ;;
  esac
  SERVER_PID=$!
  for i in $(seq 100); do
    if port_busy; then sleep 0.2; return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "error: $1 exited at start; see logs (--keep DIR)" >&2; tail -5 "$WORK/$1".* >&2 || true; exit 1; }
    sleep 0.1
  done
  echo "error: $1 did not listen on $PORT within 10 s" >&2
  exit 1
}

stop_server() {
  local i
  [ -n "$SERVER_PID" ] || return 0
  kill -INT "$SERVER_PID" 2>/dev/null || true
  for i in $(seq 50); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  # Let the ports and the last relay sockets go before the next start.
  for i in $(seq 50); do port_busy || break; sleep 0.1; done
}

cpu_ticks() { # utime+stime of $1 in clock ticks
  sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}

lg() { # loadgen with a hard time limit; stdout = JSON; LG_CPU set: pinned to that CPU
  local pin=()
  [ -z "${LG_CPU:-}" ] || pin=(taskset -c "$LG_CPU")
  timeout -k 5 "$1" ${pin[@]+"${pin[@]}"} "$TP" loadgen "${@:2}" --json
}

# --- the loads: each writes one JSON object to stdout -------------------

load_cpu50k() {
  lg 120 relay --server "127.0.0.1:$PORT" --secret "$SECRET" --allocations "$RELAY_ALLOCS" \
    --mode c2c --rate 50000 --size 100 --duration "$CPU_DUR" --warmup 1 --threads "$GEN_THREADS" --server-pid "$SERVER_PID"
}

load_cpu50k1t() {
  load_cpu50k
}

load_echo50k() {
  lg 120 relay --server "127.0.0.1:$PORT" --secret "$SECRET" --allocations "$RELAY_ALLOCS" \
    --mode echo --rate 50000 --size 100 --duration "$CPU_DUR" --warmup 1 --threads "$GEN_THREADS" --server-pid "$SERVER_PID"
}

load_echo150k() {
  lg 120 relay --server "127.0.0.1:$PORT" --secret "$SECRET" --allocations "$RELAY_ALLOCS" \
    --mode echo --rate 150000 --size 100 --duration "$CPU_DUR" --warmup 1 --threads "$GEN_THREADS" --server-pid "$SERVER_PID"
}

load_maxrate() {
  maxrate_ladder c2c
}

load_echomax() {
  maxrate_ladder echo
}

maxrate_ladder() { # $1 = loadgen --mode (c2c or echo)
  local rate=$STEP_START best=0 out ok kept_up=1 loss skipped relayed steps="[]"
  while :; do
    out=$(lg 120 relay --server "127.0.0.1:$PORT" --secret "$SECRET" --allocations "$RELAY_ALLOCS" \
      --mode "$1" --rate "$rate" --size 100 --duration "$STEP_DUR" --warmup 1 --threads "$GEN_THREADS" --server-pid "$SERVER_PID")
    read -r loss skipped relayed < <(python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["loss_pct"], r["generator_skipped"], r["relayed_per_s"])' <<<"$out")
    steps=$(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); r=json.loads(sys.argv[2]); s.append({"rate": r["target_rate"], "loss_pct": r["loss_pct"], "skipped": r["generator_skipped"], "relayed_per_s": r["relayed_per_s"], "generator_cpu_pct": 100 * r["generator_cpu_s"] / r["duration_s"], "kernel_udp_rcvbuf_errors": r.get("kernel_udp_rcvbuf_errors"), "server_cpu_pct": (r.get("server") or {}).get("cpu_pct")}); print(json.dumps(s))' "$steps" "$out")
    ok=$(python3 -c 'import sys; print(1 if float(sys.argv[1]) < 1.0 else 0)' "$loss")
    if [ "$ok" = 1 ]; then
      best=$(python3 -c 'import sys; print(max(float(sys.argv[1]), float(sys.argv[2])))' "$best" "$relayed")
    fi
    # Go on while nothing is lost and the generator offered what it was
    # asked (a short scheduling stall on a busy machine skips a little; a
    # generator that cannot keep up offers much less).
    kept_up=$(python3 -c 'import sys; print(1 if float(sys.argv[1]) >= 0.9 * float(sys.argv[2]) else 0)' "$relayed" "$rate")
    if [ "$ok" != 1 ] || [ "$kept_up" != 1 ]; then break; fi
    rate=$(python3 -c 'import sys; print(int(float(sys.argv[1]) * float(sys.argv[2])))' "$rate" "$STEP_FACTOR")
    [ "$rate" -le "$STEP_MAX" ] || break
  done
  local why=loss
  if [ "$ok" = 1 ] && [ "$kept_up" != 1 ]; then
    why=generator
  elif [ "$ok" = 1 ]; then
    why="rate cap $STEP_MAX"
  elif [ "$skipped" != 0 ]; then
    why="loss (generator behind too)"
  fi
  python3 -c 'import json,sys; print(json.dumps({"max_relayed_per_s": float(sys.argv[1]), "limited_by": sys.argv[2], "steps": json.loads(sys.argv[3])}))' \
    "$best" "$why" "$steps"
}

load_uclient() {
  local t0 t1 c0 c1 rc=0
  c0=$(cpu_ticks "$SERVER_PID"); t0=$(date +%s.%N)
  timeout -k 5 120 turnutils_uclient -y -m 50 -z 0 -n "$UC_N" -l 100 -W "$SECRET" -u bench -p "$PORT" 127.0.0.1 \
    >"$WORK/uclient.$RUN.txt" 2>&1 & CLIENT_PID=$!
  wait "$CLIENT_PID" || rc=$?
  CLIENT_PID=""
  t1=$(date +%s.%N); c1=$(cpu_ticks "$SERVER_PID")
  python3 - "$WORK/uclient.$RUN.txt" "$t0" "$t1" "$c0" "$c1" "$(getconf CLK_TCK)" "$rc" <<'PY'
import json, re, sys
path, t0, t1, c0, c1, hz, rc = sys.argv[1:]
text = open(path, errors="replace").read()
def num(pat):
    m = re.findall(pat, text)
    return float(m[-1]) if m else None
elapsed = float(t1) - float(t0)
recv = num(r"tot_recv_msgs=(\d+)")
sent = num(r"tot_send_msgs=(\d+)")
cpu = (int(c1) - int(c0)) / int(hz)
print(json.dumps({
    "exit": int(rc), "elapsed_s": elapsed, "sent": sent, "received": recv,
    "lost_pct": num(r"Total lost packets \d+ \(([\d.]+)%\)"),
    "rtt_avg_ms": num(r"Average round trip delay ([\d.]+) ms"),
    "transmit_time_s": num(r"Total transmit time is (\d+)"),
    "received_per_s": recv / elapsed if recv else None,
    "server_cpu_s": cpu,
    "server_cpu_us_per_msg": cpu * 1e6 / recv if recv else None,
}))
sys.exit(0 if int(rc) == 0 and recv else 1)
PY
}

load_setup() {
  lg 300 allocations --server "127.0.0.1:$PORT" --secret "$SECRET" --count "$SETUP_N" --concurrency 32 --server-pid "$SERVER_PID"
}

load_binding() {
  lg 120 binding --server "127.0.0.1:$PORT" --duration "$BIND_DUR" --warmup 1 --sockets 4 --window 16 --server-pid "$SERVER_PID"
}

load_binding1c() {
  [ "$CORES" -ge 2 ] || { echo "binding1c needs 2 cores (this machine has $CORES)" >&2; return 1; }
  local LG_CPU=0 # seen by lg (bash scoping is dynamic)
  load_binding
}

load_idle1k() {
  lg 300 idle --server "127.0.0.1:$PORT" --secret "$SECRET" --allocations 1000 --server-pid "$SERVER_PID"
}

load_idle10k() {
  lg 600 idle --server "127.0.0.1:$PORT" --secret "$SECRET" --allocations 10000 --server-pid "$SERVER_PID"
}

LOADS=(cpu50k cpu50k1t maxrate echo50k echo150k echomax uclient setup binding binding1c idle1k idle10k)
ALL_LOADS=("${LOADS[@]}")
if [ -n "$ONLY" ]; then
  IFS=, read -r -a LOADS <<<"$ONLY"
  for load in "${LOADS[@]}"; do
    declare -F "load_$load" >/dev/null || { echo "error: unknown load $load" >&2; exit 2; }
  done
fi
START=$(date +%s)
echo "turnpike vs coturn: ${#LOADS[@]} loads x $ROUNDS round(s) x ${#SERVERS[@]} servers (${SERVERS[*]})$([ "$QUICK" = 1 ] && echo ' (quick)')" >&2
for load in "${LOADS[@]}"; do
  for r in $(seq "$ROUNDS"); do
    # Round r starts with server (r-1) mod N: with two servers, turnpike
    # first in odd rounds, coturn first in even ones.
    n=${#SERVERS[@]}; order=()
    for k in $(seq 0 $((n - 1))); do order+=("${SERVERS[$(( (r - 1 + k) % n ))]}"); done
    for srv in "${order[@]}"; do
      printf '  %-8s round %d %-8s ... ' "$load" "$r" "$srv" >&2
      RUN="$srv.$r"
      threads=$CORES
      pin=""
      case "$load" in
        cpu50k1t) threads=1 ;;
        binding1c) threads=1; pin=1 ;; # the server on CPU 1, the generator on CPU 0
      esac
      start_server "$srv" "$threads" "$pin"
      if "load_$load" >"$WORK/$load.$srv.$r.json" 2>"$WORK/$load.$srv.$r.err"; then
        echo "ok ($(( $(date +%s) - START )) s)" >&2
      else
        echo "FAILED: $(tail -1 "$WORK/$load.$srv.$r.err") (raw output: $load.$srv.$r.failed; --keep DIR keeps it)" >&2
        mv "$WORK/$load.$srv.$r.json" "$WORK/$load.$srv.$r.failed"
        echo '{"failed": true}' >"$WORK/$load.$srv.$r.json"
      fi
      stop_server
    done
  done
done
ELAPSED=$(( $(date +%s) - START ))

MODEL=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
KERNEL=$(uname -r)
OS=$(. /etc/os-release && echo "$PRETTY_NAME")
TPV=$("$TP" --version)
CTV="coturn $(turnserver --version 2>/dev/null | head -1)"
CTNEW_V=""
[ -z "$COTURN_PREFIX" ] || CTNEW_V=$("$COTURN_PREFIX/bin/turnserver" --version 2>/dev/null | head -1)
EXTRA_V=""
[ -z "$BASELINE" ] || EXTRA_V="turnpike-base: $("$BASELINE" --version) ($BASELINE)"
[ -z "$COTURN_PREFIX" ] || EXTRA_V="$EXTRA_V${EXTRA_V:+; }coturn-new: coturn $("$COTURN_PREFIX/bin/turnserver" --version 2>/dev/null | head -1) ($COTURN_PREFIX)"
RUSTV=$(rustc --version 2>/dev/null || echo "rustc ?")
GITREV=$(git rev-parse --short HEAD 2>/dev/null || echo "?")
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$WORK" "$ROUNDS" "$QUICK" "$OUT" "$WRITE" "$ELAPSED" "$CORES" "$MODEL" "$KERNEL" "$OS" \
  "$TPV" "$CTV" "$RUSTV" "$GITREV" "$LOAD_BEFORE" "$PORT" "$CPU_DUR" "$STEP_DUR" "$STEP_FACTOR" \
  "$UC_N" "$SETUP_N" "$BIND_DUR" "$RELAY_ALLOCS" "$GEN_THREADS" "${SERVERS[*]}" "$EXTRA_V" \
  "$CTNEW_V" "${ALL_LOADS[*]}" <<'PY'
import datetime, json, os, statistics, sys
(work, rounds, quick, out, write, elapsed, cores, model, kernel, osname, tpv, ctv, rustv,
 gitrev, loadavg, port, cpu_dur, step_dur, step_factor, uc_n, setup_n, bind_dur, allocs, gen_threads,
 servers, extra_v, ctnew_v, all_loads) = sys.argv[1:]
servers = servers.split()
others = [s for s in servers if s != "turnpike"]
names = {"turnpike": "turnpike", "coturn": "coturn 4.6.1", "turnpike-base": "turnpike-base",
         "coturn-new": f"coturn {ctnew_v}" if ctnew_v else "coturn-new"}
rounds = int(rounds); quick = quick == "1"

def runs(load, srv):
    v = []
    for r in range(1, rounds + 1):
        path = f"{work}/{load}.{srv}.{r}.json"
        if not os.path.exists(path):
            v.append({"not_run": True})  # left out with --loads
            continue
        try:
            v.append(json.load(open(path)))
        except Exception:
            v.append({"failed": True})
    return v

def get(d, path):
    for k in path.split("."):
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d

MB = 1024 * 1024
rows = [
    # label, load, json path, scale, format, better ("lower"/"higher")
    ("Server CPU per relayed msg at 50k msg/s offered, 100 B, c2c (µs)", "cpu50k", "server.cpu_us_per_unit", 1, "{:.2f}", "lower"),
    ("Machine CPU per relayed msg at 50k msg/s, c2c, /proc/stat, generator and softirq included (µs)", "cpu50k", "machine.busy_us_per_unit", 1, "{:.2f}", "lower"),
    ("Server CPU at 50k msg/s (% of one core)", "cpu50k", "server.cpu_pct", 1, "{:.0f}", "lower"),
    ("Relayed msg/s at 50k offered", "cpu50k", "relayed_per_s", 1, "{:.0f}", "higher"),
    ("Loss at 50k msg/s (%)", "cpu50k", "loss_pct", 1, "{:.3f}", "lower"),
    ("RTT p50 at 50k msg/s (µs)", "cpu50k", "rtt_us.p50_us", 1, "{:.0f}", "lower"),
    ("RTT p99 at 50k msg/s (µs)", "cpu50k", "rtt_us.p99_us", 1, "{:.0f}", "lower"),
    ("One thread each: server CPU per relayed msg at 50k msg/s (µs)", "cpu50k1t", "server.cpu_us_per_unit", 1, "{:.2f}", "lower"),
    ("One thread each: loss at 50k msg/s (%)", "cpu50k1t", "loss_pct", 1, "{:.3f}", "lower"),
    ("One thread each: RTT p99 at 50k msg/s (µs)", "cpu50k1t", "rtt_us.p99_us", 1, "{:.0f}", "lower"),
    ("Max relayed msg/s with loss < 1% (loadgen, stepped)", "maxrate", "max_relayed_per_s", 1, "{:.0f}", "higher"),
    ("Echo (client ↔ external peer): server CPU per relayed msg at 50k msg/s (µs)", "echo50k", "server.cpu_us_per_unit", 1, "{:.2f}", "lower"),
    ("Echo: machine CPU per relayed msg at 50k msg/s, /proc/stat, generator and softirq included (µs)", "echo50k", "machine.busy_us_per_unit", 1, "{:.2f}", "lower"),
    ("Echo: server CPU at 50k msg/s (% of one core)", "echo50k", "server.cpu_pct", 1, "{:.0f}", "lower"),
    ("Echo: loss at 50k msg/s (%)", "echo50k", "loss_pct", 1, "{:.3f}", "lower"),
    ("Echo: RTT p50 at 50k msg/s (µs)", "echo50k", "rtt_us.p50_us", 1, "{:.0f}", "lower"),
    ("Echo: RTT p99 at 50k msg/s (µs)", "echo50k", "rtt_us.p99_us", 1, "{:.0f}", "lower"),
    ("Echo: server CPU per relayed msg at 150k msg/s (µs)", "echo150k", "server.cpu_us_per_unit", 1, "{:.2f}", "lower"),
    ("Echo: relayed msg/s at 150k offered", "echo150k", "relayed_per_s", 1, "{:.0f}", "higher"),
    ("Echo: loss at 150k msg/s (%)", "echo150k", "loss_pct", 1, "{:.3f}", "lower"),
    ("Echo: RTT p99 at 150k msg/s (µs)", "echo150k", "rtt_us.p99_us", 1, "{:.0f}", "lower"),
    ("Echo: max relayed msg/s with loss < 1% (loadgen, stepped)", "echomax", "max_relayed_per_s", 1, "{:.0f}", "higher"),
    ("turnutils_uclient -y -m 50 -z 0: wall time incl. connects (s)", "uclient", "elapsed_s", 1, "{:.1f}", "lower"),
    ("turnutils_uclient -y: messages received", "uclient", "received", 1, "{:.0f}", "higher"),
    ("turnutils_uclient -y: server CPU per received msg (µs)", "uclient", "server_cpu_us_per_msg", 1, "{:.2f}", "lower"),
    ("turnutils_uclient -y: lost (%)", "uclient", "lost_pct", 1, "{:.2f}", "lower"),
    ("Allocation set-ups/s (Allocate+401, CreatePermission, ChannelBind; 32 concurrent)", "setup", "setups_per_s", 1, "{:.0f}", "higher"),
    ("Set-up latency p50 / p99 (µs)", "setup", ("setup_latency_us.p50_us", "setup_latency_us.p99_us"), 1, "{:.0f}", "lower"),
    ("Server CPU per set-up (µs)", "setup", "server.cpu_us_per_unit", 1, "{:.0f}", "lower"),
    ("Binding requests/s answered (closed loop, 4 sockets × 16)", "binding", "answered_per_s", 1, "{:.0f}", "higher"),
    ("Server CPU per Binding request (µs)", "binding", "server.cpu_us_per_unit", 1, "{:.2f}", "lower"),
    ("Binding RTT p99 (µs)", "binding", "rtt_us.p99_us", 1, "{:.0f}", "lower"),
    ("One core each (server on CPU 1, generator on CPU 0): Binding requests/s answered", "binding1c", "answered_per_s", 1, "{:.0f}", "higher"),
    ("One core each: server CPU per Binding request (µs)", "binding1c", "server.cpu_us_per_unit", 1, "{:.2f}", "lower"),
    ("One core each: Binding RTT p99 (µs)", "binding1c", "rtt_us.p99_us", 1, "{:.0f}", "lower"),
    ("RSS idle, before allocations (MiB)", "idle1k", "rss_before_bytes", 1 / MB, "{:.1f}", "lower"),
    ("RSS with 1k idle allocations (MiB)", "idle1k", "rss_with_allocations_bytes", 1 / MB, "{:.1f}", "lower"),
    ("RSS with 10k idle allocations (MiB)", "idle10k", "rss_with_allocations_bytes", 1 / MB, "{:.1f}", "lower"),
    ("User-space bytes per allocation (1k)", "idle1k", "bytes_per_allocation", 1, "{:.0f}", "lower"),
    ("User-space bytes per allocation (10k)", "idle10k", "bytes_per_allocation", 1, "{:.0f}", "lower"),
]

def med(load, srv, path, scale):
    vals = [get(r, path) for r in runs(load, srv)]
    vals = [v * scale for v in vals if isinstance(v, (int, float))]
    return (statistics.median(vals) if vals else None), vals

lines = []
lines.append("| Metric | " + " | ".join(names.get(s, s) for s in servers) + " | "
             + " | ".join(f"turnpike / {names.get(s, s)}" for s in others) + " | better |")
lines.append("| --- |" + " ---: |" * (len(servers) + len(others)) + " --- |")
detail = []
for label, load, path, scale, fmt, better in rows:
    paths = path if isinstance(path, tuple) else (path,)
    cells, ratios = {}, []
    for srv in servers:
        parts = []
        for p in paths:
            m, vals = med(load, srv, p, scale)
            parts.append("n/a" if m is None else fmt.format(m))
            detail.append((label if len(paths) == 1 else f"{label} [{p.split('.')[-1]}]", srv,
                           ", ".join(fmt.format(v) for v in vals) or "n/a"))
        cells[srv] = " / ".join(parts)
    for o in others:
        rs = []
        for p in paths:
            a, _ = med(load, "turnpike", p, scale)
            b, _ = med(load, o, p, scale)
            rs.append("n/a" if a is None or not b else f"{a / b:.2f}")
        ratios.append(" / ".join(rs))
    lines.append(f"| {label} | " + " | ".join(cells[s] for s in servers) + " | "
                 + " | ".join(ratios) + f" | {better} |")

# Where the max-rate search stopped.
notes = []
for load in ("maxrate", "echomax"):
    for srv in servers:
        lim = [get(r, "limited_by") for r in runs(load, srv) if not r.get("not_run")]
        if lim:
            notes.append(f"{load} {srv}: stopped by {', '.join(str(x) for x in lim)}")
skipped = []
for load in ("cpu50k", "echo50k", "echo150k"):
    for srv in servers:
        for r in runs(load, srv):
            if (get(r, "generator_skipped") or 0) > 0:
                skipped.append(f"{load} {srv}")
failed = sorted({f"{l}/{s}" for l in all_loads.split()
                 for s in servers for r in runs(l, s) if r.get("failed")})

now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
title = "## turnpike vs coturn"
sec = [title, ""]
if quick:
    sec += ["**Quick smoke run (`--quick`: 1 round, short loads) on a shared, noisy machine: "
            "the numbers show the tooling works, not how the servers compare. "
            "Run `benches/compare.sh` on a quiet machine for real numbers.**", ""]
sec += [f"Median of {rounds} round(s) per server, rounds rotating the order "
        f"(round r starts with the r-th of {', '.join(servers)}); every run on a freshly "
        "started server; everything on 127.0.0.1.", ""]
sec += lines
sec += ["",
        "Definitions: a *relayed message* is one 100-byte payload that crossed the server from one "
        "client to the other. In the c2c loads allocations come in pairs A/B, each permitted and "
        "channel-bound to the other's relayed address; A sends, B echoes, so one round trip = 2 "
        "relayed messages, and each relayed message is two server hops (client → A's relay → "
        "B's relay → B), as in `turnutils_uclient -y` (turnpike skips the kernel between two of its own "
        "relays, within a shard and across shards; coturn sends such datagrams through the kernel). In the echo loads every "
        "allocation is permitted and channel-bound to an echo peer of the generator (127.0.0.1, one socket per generator thread) "
        "that sends each datagram straight back: client → relay → peer, then peer → relay → client, one round trip = 2 relayed "
        "messages, each one trip in and one out of the server's kernel UDP stack (the SFU / remote-peer case). *Offered* = messages the generator sent "
        "into the server. *Loss* = round trips not back within 1 s. Server CPU = utime+stime from "
        "/proc/PID/stat over the measured window (10 ms ticks) divided by the relayed messages / "
        "answered requests / set-ups. RSS = VmRSS; bytes per allocation = (RSS with N − RSS before) / N "
        "(user-space memory: kernel socket buffers are not in RSS). Machine CPU = user + nice + system + irq + softirq of "
        "all CPUs from /proc/stat over the generator's measured window (everything running, generator included) / relayed messages.", ""]
if notes:
    sec += [f"- max-rate search: {'; '.join(notes)} (\"loss\" = the next step lost >= 1 %; \"generator\" = "
            "the load generator offered < 90 % of the step's rate, so the figure is a lower bound for that server; on a 2-core "
            "machine generator and server share the CPUs, so past ~1 core of server load the two compete)."]
if skipped:
    sec += [f"- the generator fell behind (paced runs) in: {', '.join(sorted(set(skipped)))}."]
if failed:
    sec += [f"- FAILED runs (excluded from medians): {', '.join(failed)}."]
sec += [f"- Date: {now}; whole run {elapsed} s; load average before the summary: {loadavg}.",
        f"- Machine: {cores} cores, `lscpu` model \"{model}\", {osname}, kernel {kernel}.",
        f"- Versions: {tpv} (git {gitrev}, release profile), {ctv or 'coturn ?'}, {rustv}"
        + (f"; {extra_v}" if extra_v else "") + ".",
        "- Servers: turnpike `threads = " + cores + "`, log level warn, HTTP off; coturn `--relay-threads=" + cores +
        "`, log to a file (coturn logs every session; turnpike at warn logs none); "
        "the \"one thread each\" rows: turnpike `threads = 1`, coturn `--relay-threads=1`; "
        "the \"one core each\" rows: the same one-thread servers started under `taskset -c 1`, "
        "the generator under `taskset -c 0` (in the other rows generator and server share every core).",
        "",
        "Commands (PORT " + port + ", PID = the server's pid):",
        "",
        "```",
        "turnserver --use-auth-secret --static-auth-secret=S --realm=bench --listening-ip=127.0.0.1 \\",
        f"  --listening-port={port} --relay-ip=127.0.0.1 --allow-loopback-peers --no-tls --no-dtls --no-cli \\",
        f"  --min-port=10000 --max-port=32767 --relay-threads={cores} --no-stdout-log --simple-log --log-file=FILE",
        "turnpike --log-level warn serve --config turnpike.toml   # the same secret, realm, relay IP and ports",
        f"turnpike loadgen relay --secret S --allocations {allocs} --mode c2c --rate 50000 --size 100 --duration {cpu_dur} --warmup 1 --threads {gen_threads} --server-pid PID --json",
        f"turnpike loadgen relay ... --rate R --duration {step_dur}   # R = 50000, x{step_factor} per step, until loss >= 1%",
        f"turnpike loadgen relay --secret S --allocations {allocs} --mode echo --rate 50000|150000 --size 100 --duration {cpu_dur} --warmup 1 --threads {gen_threads} --server-pid PID --json",
        f"turnpike loadgen relay ... --mode echo --rate R --duration {step_dur}   # echomax: the same ladder with the echo load",
        f"turnutils_uclient -y -m 50 -z 0 -n {uc_n} -l 100 -W S -u bench -p {port} 127.0.0.1",
        f"turnpike loadgen allocations --secret S --count {setup_n} --concurrency 32 --server-pid PID --json",
        f"turnpike loadgen binding --duration {bind_dur} --warmup 1 --sockets 4 --window 16 --server-pid PID --json",
        f"taskset -c 0 turnpike loadgen binding ...   # one core each: the server started as `taskset -c 1 SERVER` with one thread",
        "turnpike loadgen idle --secret S --allocations 1000|10000 --server-pid PID --json",
        "```",
        "",
        "<details><summary>Every round</summary>",
        "",
        "| Metric | server | rounds |",
        "| --- | --- | --- |"]
sec += [f"| {l} | {s} | {v} |" for l, s, v in detail]
sec += ["", "</details>", ""]
section = "\n".join(sec)
print(section)
if write == "1":
    text = open(out).read() if os.path.exists(out) else "# Benchmark results\n"
    lines_ = text.split("\n")
    try:
        i = lines_.index(title)
        j = next((k for k in range(i + 1, len(lines_)) if lines_[k].startswith("## ")), len(lines_))
        new = lines_[:i] + section.rstrip("\n").split("\n") + [""] + lines_[j:]
    except ValueError:
        new = text.rstrip("\n").split("\n") + [""] + section.rstrip("\n").split("\n") + [""]
    open(out, "w").write("\n".join(new).rstrip("\n") + "\n")
    print(f"(written to {out})", file=sys.stderr)
PY
