#!/usr/bin/env bash
# benches/fleet.sh — a turnpike fleet on Redis (issue 14): what sharing
# state through Redis costs an allocation set-up.
#
# Usage:
#   benches/fleet.sh              # full run: 3 rounds of A and B, ~2-4 minutes
#   benches/fleet.sh --smoke      # tooling check: 1 round, 200 set-ups per node
#   options: --rounds N (default 3)   --count N (set-ups per node per run,
#            default 3000)   --concurrency N (per node, default 32)
#            --bin PATH (the turnpike binary; default target/release/turnpike,
#            built if missing)   --port P (first UDP port, default 3480; the
#            nodes take P, P+1, P+2, their HTTP APIs P+10..P+12)
#            --redis-port P (default 6390)   --keep DIR (keep raw JSON and logs)
#
# Everything runs on 127.0.0.1 (loopback, one machine): a `redis-server`
# (no persistence) and three turnpike nodes, each with its own UDP port,
# HTTP API and relay port range (10000-16999, 17000-23999, 24000-30999:
# below the ephemeral range). Each round runs two configurations of the
# same three nodes, alternating their order (round 1: A then B, round 2:
# B then A, ...) so slow drift of the machine cancels out:
#   A  fleet:      `[cluster] redis_url = "redis://127.0.0.1:RP/0"`, node_id,
#                  the defaults otherwise (refresh 2 s, leases 10 s,
#                  allocate_budget 50 ms): every Allocate takes its lease
#                  in Redis (a Lua call) before it is answered;
#   B  standalone: the same nodes without `[cluster]` (local quotas).
# Both have `policy.max_allocations_per_user = 100000`, so the per-user
# quota is checked in both (in Redis for A, locally for B), and loopback
# peers allowed. Redis runs (idle) during B too.
# For each run the three nodes are started fresh (A: each waits until
# `turnpike_cluster_up 1`), then three `turnpike loadgen allocations
# --count N --concurrency C --json` run at once, one per node (Allocate
# with its 401, CreatePermission, ChannelBind, every response checked;
# then the allocations are deleted), then the nodes are stopped.
# Reported (median over the rounds):
#   - set-ups/s across the fleet = the three runs' set-ups / the longest
#     run's set-up time;
#   - Allocate latency p50 / p99 (`allocate_latency_us`: the signed
#     Allocate, first transmission to success; the 401 round trip left
#     out), the median of the three nodes' percentiles; A − B is what Redis
#     adds to one Allocate;
#   - set-up latency p50 / p99 and server CPU per set-up (summed over the
#     three nodes);
#   - for A, the nodes' `turnpike_cluster_admissions_total` by result: an
#     admission past its 50 ms budget goes on with the local quota
#     ("unavailable"), which would make A look cheaper than it is: a
#     non-zero count there means the machine (or Redis) was overloaded.
# On one machine the generators, the nodes and Redis share the cores:
# compare A with B from the same run, not with other tables.
# Needs: redis-server, python3, curl, ss. Every process it starts is killed
# on exit, failure or Ctrl-C.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

SMOKE=0
ROUNDS=""
COUNT=""
CONC=32
BIN=""
PORT=3480
RPORT=6390
KEEP=""
ARGS=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --rounds) ROUNDS="$2"; shift ;;
    --count) COUNT="$2"; shift ;;
    --concurrency) CONC="$2"; shift ;;
    --bin) BIN="$2"; shift ;;
    --port) PORT="$2"; shift ;;
    --redis-port) RPORT="$2"; shift ;;
    --keep) KEEP="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$SMOKE" = 1 ]; then
  ROUNDS=${ROUNDS:-1}; COUNT=${COUNT:-200}
else
  ROUNDS=${ROUNDS:-3}; COUNT=${COUNT:-3000}
fi
if [ "$COUNT" -gt 7000 ]; then
  echo "error: --count at most 7000 (each node relays on 7000 ports)" >&2
  exit 2
fi

echo "command: benches/fleet.sh ${ARGS[*]:-}"
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  machine: $(nproc) cores, $(uname -r)  git: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "rounds $ROUNDS, $COUNT set-ups per node per run, $CONC concurrent per node, 3 nodes"

if [ -z "$BIN" ]; then
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/turnpike"
  if [ ! -x "$BIN" ]; then
    echo "building $BIN ..." >&2
    cargo build --release --quiet
  fi
fi
[ -x "$BIN" ] || { echo "error: $BIN is not an executable" >&2; exit 2; }
for t in redis-server python3 curl ss; do
  command -v "$t" >/dev/null || { echo "error: $t not found (apt-get install redis-server python3 curl iproute2)" >&2; exit 1; }
done
echo "turnpike: $BIN ($("$BIN" --version 2>/dev/null || echo '?')), $(redis-server --version | cut -d' ' -f1-3)"

WORK=$(mktemp -d /tmp/turnpike-fleet.XXXXXX)
REDIS_PID=""
NODE_PIDS=()
LG_PIDS=()

cleanup() {
  local rc=$? p
  for p in ${LG_PIDS[@]+"${LG_PIDS[@]}"} ${NODE_PIDS[@]+"${NODE_PIDS[@]}"} $REDIS_PID; do
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

busy() { # $1 = port: in use (UDP or TCP)?
  ss -Hlun "sport = :$1" | grep -q . || ss -Hltn "sport = :$1" | grep -q .
}
for p in "$PORT" $((PORT + 1)) $((PORT + 2)) $((PORT + 10)) $((PORT + 11)) $((PORT + 12)) "$RPORT"; do
  if busy "$p"; then echo "error: port $p is in use (see --port, --redis-port)" >&2; exit 1; fi
done

redis-server --bind 127.0.0.1 --port "$RPORT" --save "" --appendonly no \
  --protected-mode no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 100); do busy "$RPORT" && break; sleep 0.1; done
busy "$RPORT" || { echo "error: redis-server did not listen on $RPORT" >&2; exit 1; }

config() { # $1 = node 0..2, $2 = A|B
  local k=$1 low=$((10000 + $1 * 7000))
  cat <<EOF
[server]
realm = "bench"
[[listen]]
transport = "udp"
addr = "127.0.0.1:$((PORT + k))"
[relay]
bind_ip = "127.0.0.1"
ports = "$low-$((low + 6999))"
[auth]
secrets = ["S"]
[policy]
allow_peers = ["127.0.0.1/32"]
max_allocations = 100000
max_allocations_per_user = 100000
[http]
addr = "127.0.0.1:$((PORT + 10 + k))"
[limits]
unauth_rate = 4000000000
unauth_burst = 16000
EOF
  if [ "$2" = A ]; then
    printf '[cluster]\nredis_url = "redis://127.0.0.1:%s/0"\nnode_id = "bench-%s"\n' "$RPORT" "$k"
  fi
}

metric() { # $1 = node, $2 = sample prefix (name{labels}): its value, or 0
  curl -fsS "http://127.0.0.1:$((PORT + 10 + $1))/metrics" 2>/dev/null |
    awk -v m="$2" 'index($0, m) == 1 { print $2; found = 1 } END { if (!found) print 0 }'
}

start_nodes() { # $1 = A|B
  local k i
  NODE_PIDS=()
  for k in 0 1 2; do
    config "$k" "$1" >"$WORK/node$k.$1.toml"
    "$BIN" --log-level warn serve --config "$WORK/node$k.$1.toml" >>"$WORK/node$k.out" 2>>"$WORK/node$k.err" &
    NODE_PIDS+=($!)
  done
  for k in 0 1 2; do
    for i in $(seq 100); do
      if [ "$1" = A ]; then
        [ "$(metric "$k" turnpike_cluster_up)" = 1 ] && break
      else
        curl -fsS "http://127.0.0.1:$((PORT + 10 + k))/readyz" >/dev/null 2>&1 && break
      fi
      kill -0 "${NODE_PIDS[$k]}" 2>/dev/null || { echo "error: node $k ($1) exited at start:" >&2; tail -5 "$WORK/node$k.err" >&2; exit 1; }
      sleep 0.1
    done
    [ "$i" -lt 100 ] || { echo "error: node $k ($1) not ready within 10 s" >&2; tail -5 "$WORK/node$k.err" >&2; exit 1; }
  done
}

stop_nodes() {
  local p i
  for p in "${NODE_PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${NODE_PIDS[@]}"; do
    for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  NODE_PIDS=()
  for i in $(seq 50); do
    busy "$PORT" || busy $((PORT + 1)) || busy $((PORT + 2)) || break
    sleep 0.1
  done
}

run() { # $1 = A|B, $2 = round
  local k rc=0 tag="$1.r$2"
  start_nodes "$1"
  LG_PIDS=()
  for k in 0 1 2; do
    timeout 300 "$BIN" loadgen allocations --server "127.0.0.1:$((PORT + k))" --secret S \
      --count "$COUNT" --concurrency "$CONC" --server-pid "${NODE_PIDS[$k]}" --json \
      >"$WORK/$tag.node$k.json" 2>"$WORK/$tag.node$k.lgerr" &
    LG_PIDS+=($!)
  done
  for k in 0 1 2; do wait "${LG_PIDS[$k]}" || rc=$?; done
  LG_PIDS=()
  if [ "$rc" != 0 ]; then
    echo "error: a loadgen of run $tag failed ($rc):" >&2
    cat "$WORK/$tag".node*.lgerr >&2
    exit 1
  fi
  if [ "$1" = A ]; then
    for k in 0 1 2; do
      printf '{"granted": %s, "refused": %s, "unavailable": %s}\n' \
        "$(metric "$k" 'turnpike_cluster_admissions_total{result="granted"}')" \
        "$(metric "$k" 'turnpike_cluster_admissions_total{result="refused"}')" \
        "$(metric "$k" 'turnpike_cluster_admissions_total{result="unavailable"}')" \
        >"$WORK/$tag.node$k.admissions.json"
    done
  fi
  stop_nodes
  python3 - "$WORK" "$tag" <<'PY'
import json, sys
work, tag = sys.argv[1], sys.argv[2]
rs = [json.load(open(f"{work}/{tag}.node{k}.json")) for k in range(3)]
ok = sum(r["setups_ok"] for r in rs)
failed = sum(r["setups_failed"] for r in rs)
rate = ok / max(max(r["setup_elapsed_s"] for r in rs), 1e-9)
p = lambda key, q: sorted(r[key][q] for r in rs)[1]
line = (f"  {tag}: {rate:8.0f} set-ups/s across the fleet ({ok} ok, {failed} failed); "
        f"Allocate p50/p99 {p('allocate_latency_us', 'p50_us'):.0f}/{p('allocate_latency_us', 'p99_us'):.0f} µs")
if tag.startswith("A"):
    adm = [json.load(open(f"{work}/{tag}.node{k}.admissions.json")) for k in range(3)]
    line += "; admissions " + ", ".join(f"{k} {sum(a[k] for a in adm):.0f}" for k in ("granted", "refused", "unavailable"))
print(line, flush=True)
PY
}

for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order=(A B); else order=(B A); fi
  for c in "${order[@]}"; do run "$c" "$r"; done
done

python3 - "$WORK" "$ROUNDS" "$COUNT" "$CONC" <<'PY'
import json, statistics, sys
work, rounds, count, conc = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def runs(c):
    out = []
    for r in range(1, rounds + 1):
        rs = [json.load(open(f"{work}/{c}.r{r}.node{k}.json")) for k in range(3)]
        mid = lambda key, q: sorted(x[key][q] for x in rs)[1]
        cpu = [x["server"]["cpu_us_per_unit"] for x in rs if x.get("server") and x["server"].get("cpu_us_per_unit") is not None]
        out.append({
            "rate": sum(x["setups_ok"] for x in rs) / max(max(x["setup_elapsed_s"] for x in rs), 1e-9),
            "a50": mid("allocate_latency_us", "p50_us"), "a99": mid("allocate_latency_us", "p99_us"),
            "s50": mid("setup_latency_us", "p50_us"), "s99": mid("setup_latency_us", "p99_us"),
            "cpu": statistics.mean(cpu) if len(cpu) == 3 else None,
            "failed": sum(x["setups_failed"] for x in rs),
        })
    return out
def med(rs, k):
    v = [r[k] for r in rs if r[k] is not None]
    return statistics.median(v) if v else None
A, B = runs("A"), runs("B")
def fmt(v, f="{:.0f}"):
    return "n/a" if v is None else f.format(v)
rows = [
    ("Allocation set-ups/s across the fleet (3 nodes)", "rate", "{:.0f}"),
    ("Allocate latency p50 (µs)", "a50", "{:.0f}"),
    ("Allocate latency p99 (µs)", "a99", "{:.0f}"),
    ("Set-up latency p50 (µs)", "s50", "{:.0f}"),
    ("Set-up latency p99 (µs)", "s99", "{:.0f}"),
    ("Server CPU per set-up, mean of the nodes (µs)", "cpu", "{:.1f}"),
]
print()
print(f"### Fleet on Redis: median of {rounds} round(s), {count} set-ups per node, {conc} concurrent per node")
print()
print("| Metric | A: with [cluster] (Redis) | B: standalone | A − B |")
print("| --- | ---: | ---: | ---: |")
for name, k, f in rows:
    a, b = med(A, k), med(B, k)
    d = None if a is None or b is None else a - b
    print(f"| {name} | {fmt(a, f)} | {fmt(b, f)} | {fmt(d, '{:+.1f}' if k == 'cpu' else '{:+.0f}')} |")
fails = sum(r["failed"] for r in A + B)
if fails:
    print(f"\nwarning: {fails} set-ups failed (see --keep DIR)")
PY
