#!/usr/bin/env bash
# benches/xdp_lab.sh — issue 15's benchmark: the echo and c2c loads through
# turnpike with the XDP fast path, turnpike without it, and coturn 4.17.1
# (its default mode and --multiplex-peer --udp-gso), in a network-namespace
# lab, with the whole machine's CPU per relayed message.
#
# Usage:
#   benches/xdp_lab.sh [options]          # root; a quiet machine, 2+ cores
#   benches/xdp_lab.sh --smoke            # does the tooling work? 1 round,
#                                         # 2 s runs, a short ladder
#   options:
#     --fastpath          also run turnpike with `[fastpath] mode = "xdp"`,
#                         `interfaces = ["s0", "s1"]` (the server's veths), as
#                         the column "turnpike-xdp"; without it the script
#                         runs everything else (the fast path off)
#     --coturn-prefix DIR coturn 4.17.1 installed in DIR (default
#                         /opt/coturn-4.17.1 when it is there; build it with
#                         ../shared/anchors/build-coturn.sh DIR); --no-coturn
#                         leaves coturn out
#     --servers L1,L2     only these of: turnpike-xdp turnpike coturn
#                         coturn-mux bounce
#     --loads L1,L2       only these of: echo echopp c2c echomax echoppmax
#                         c2cmax
#     --secs N            measured seconds of each fixed-rate run (default 10)
#     --step-secs N       measured seconds of each ladder step (default 3)
#     --rounds N          rounds (default 3); each round rotates the order of
#                         the servers, so drift of the machine spreads out
#     --rate R            offered relayed msg/s of the fixed-rate loads
#                         (default 50000)
#     --ladder-start R / --ladder-factor F / --ladder-max R
#                         the max-rate ladder (default 50000, x1.25, 1000000)
#     --allocations N     allocations per run (default 64; c2c: 32 pairs)
#     --family F          4 (default): IPv4 throughout; 6: IPv6 throughout
#                         (clients 2001:db8:1::/64, relays and peers
#                         2001:db8:2::/64); 46: IPv4 clients, IPv6 relays
#                         and peers (4<->6). Every veth has both families.
#     --gen-cpu C / --server-cpu C   (default 0 / 1)
#     --strace            after the rounds, run the echo load once more on
#                         turnpike-xdp (and turnpike, for contrast) under
#                         `strace -c -f -p PID`: system calls the server
#                         made per datagram that entered it
#     --napi-threads      server-side receive work on the server's CPU (see
#                         the lab below)
#     --bpf-stats         turn kernel.bpf_stats_enabled on for the run (back
#                         to what it was at exit) and report the XDP
#                         programs on s0 and s1 (turnpike-xdp's fast path,
#                         bounce's program): runs per datagram sent into the
#                         server and nanoseconds per run. Costs every BPF
#                         program a little, so leave it off for the CPU
#                         figures
#     --out FILE          also write the markdown section to FILE
#     --keep DIR          keep raw JSON, logs and strace output in DIR
#     --turnpike BIN      the turnpike binary (default target/release/turnpike,
#                         built if missing)
#
# The lab (names tpx-PID-ROLE; deleted on exit, failure or Ctrl-C, and
# leftovers of dead runs deleted at start):
#
#   ns cli                 ns srv                        ns peer
#   c0 198.51.100.2/24 <-> s0 198.51.100.1/24
#      2001:db8:1::2/64       2001:db8:1::1/64
#                          s1 192.0.2.1/24      <->      p0 192.0.2.2/24
#                             2001:db8:2::1/64              2001:db8:2::2/64
#
#   The generator (`turnpike loadgen relay`) runs in cli, pinned to CPU
#   --gen-cpu; its echo peers are sockets it opens in peer
#   (`--peer-netns`, `--peer-bind 192.0.2.2`), served by the same thread,
#   so generator and peers share that CPU. The server runs in srv with one
#   thread, pinned to --server-cpu (turnpike `threads = 1`, coturn
#   `--relay-threads=1`); it listens on 198.51.100.1:3478 and relays from
#   192.0.2.1 (ports 10000-32767). cli and peer have no route to each
#   other: every message crosses the server.
#   For XDP on veth (issue 15, "Known from trying it"): the receiving ends
#   c0 and p0 carry an XDP_PASS program (a veth delivers frames that its
#   peer's XDP program sends with XDP_TX or redirects only when it has an
#   XDP program itself), and the sending ends c0 and p0 have TX checksum
#   offload off (`ethtool -K IFACE tx off`: otherwise the server's XDP
#   program sees partial UDP checksums and the receiver drops what it
#   rewrites). The lab is the same for every server.
#   A veth hands a frame to its peer on the sending CPU: without
#   --napi-threads the server's XDP work (and the receiving ends' stacks)
#   runs on the generator's CPU, inside its send calls. --napi-threads
#   turns GRO on for s0 and s1 (so every server's receive path goes through
#   NAPI, as the fast path's does), makes the NAPI of all four veth ends
#   threaded (`/sys/class/net/DEV/threaded`), and pins the threads of s0
#   and s1 to --server-cpu and those of c0 and p0 to --gen-cpu: like two
#   hosts whose NICs interrupt their own CPUs.
#
# The servers, one fresh start per run:
#   turnpike-xdp  turnpike, [fastpath] mode = "xdp" on s0 and s1 (--fastpath)
#   turnpike      turnpike, the fast path off (no [fastpath] section)
#   coturn        coturn 4.17.1, default mode
#   coturn-mux    coturn 4.17.1 --multiplex-peer --udp-gso (its fast mode:
#                 one relay socket per thread, sessions told apart by the
#                 peer's IP:port, so it cannot serve c2c or several
#                 allocations sending to one peer endpoint: those runs fail
#                 and the table says why)
#   bounce        the generator's ceiling: turnpike (fast path off) answers
#                 the set-up requests, and benches/xdp_bounce.bpf.c on s0
#                 sends every ChannelData datagram straight back to the
#                 client (XDP_TX) before any server sees it. The generator
#                 then does the client half of the work only (one send and
#                 one receive per round trip, no peer echo, no partner
#                 client), so this is an upper bound of its ceiling: the
#                 rate past which no server can be measured is between half
#                 and all of it.
# The loads (turnpike loadgen relay, 100-byte payloads, ChannelData, one
# generator thread):
#   echo       client <-> external peer at --rate, all allocations to ONE
#              echo peer endpoint (the SFU case)
#   echopp     the same, each allocation to a peer endpoint of its own
#              (--peers = --allocations: the case coturn-mux can serve)
#   c2c        client-to-client pairs through the server at --rate
#   echomax / echoppmax / c2cmax  the ladder: --ladder-start, x factor,
#              until loss >= 1 %, or the generator offers < 90 % of the
#              step (it cannot keep up), or --ladder-max: the highest
#              relayed msg/s with loss < 1 %
# Measured (by the generator, over its measured window): the whole
# machine's CPU from /proc/stat (user + nice + system + irq + softirq, all
# CPUs: XDP runs in softirq, in no process's time) per relayed message,
# generator included; each CPU's part; the server process's utime+stime
# (/proc/PID/stat) per relayed message; the generator's own CPU; RTT
# percentiles; loss. turnpike: the fast-path packet counter
# (turnpike_fastpath_packets_total, from /metrics) over each run; bounce:
# the program's own counter.
#
# Output: a markdown section ready to paste into benches/RESULTS.md
# (stdout, and --out FILE). Needs: root, iproute2, ethtool, clang,
# libbpf-dev, bpftool, python3, taskset, timeout; strace for --strace.
set -euo pipefail

ARGS_TEXT="$*"
cd "$(dirname "$0")/.."
ROOT=$(pwd)

SECS=10
STEP_SECS=3
ROUNDS=3
RATE=50000
LADDER_START=50000
LADDER_FACTOR=1.25
LADDER_MAX=1000000
ALLOCS=64
GEN_CPU=0
SRV_CPU=1
FASTPATH=0
COTURN_PREFIX=""
NO_COTURN=0
ONLY_SERVERS=""
ONLY_LOADS=""
STRACE=0
OUT=""
KEEP=""
TP="$ROOT/target/release/turnpike"
SMOKE=0
FAMILY=4
BPF_STATS=0
NAPI_THREADS=0
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1; SECS=2; STEP_SECS=2; ROUNDS=1; LADDER_FACTOR=2; LADDER_MAX=200000 ;;
    --fastpath) FASTPATH=1 ;;
    --coturn-prefix) COTURN_PREFIX="$2"; shift ;;
    --no-coturn) NO_COTURN=1 ;;
    --servers) ONLY_SERVERS="$2"; shift ;;
    --loads) ONLY_LOADS="$2"; shift ;;
    --secs) SECS="$2"; shift ;;
    --step-secs) STEP_SECS="$2"; shift ;;
    --rounds) ROUNDS="$2"; shift ;;
    --rate) RATE="$2"; shift ;;
    --ladder-start) LADDER_START="$2"; shift ;;
    --ladder-factor) LADDER_FACTOR="$2"; shift ;;
    --ladder-max) LADDER_MAX="$2"; shift ;;
    --allocations) ALLOCS="$2"; shift ;;
    --family) FAMILY="$2"; shift ;;
    --gen-cpu) GEN_CPU="$2"; shift ;;
    --server-cpu) SRV_CPU="$2"; shift ;;
    --strace) STRACE=1 ;;
    --bpf-stats) BPF_STATS=1 ;;
    --napi-threads) NAPI_THREADS=1 ;;
    --out) OUT="$2"; shift ;;
    --keep) KEEP="$2"; shift ;;
    --turnpike) TP="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

die() { echo "error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "the lab needs root (network namespaces, XDP)"
CORES=$(nproc)
[ "$CORES" -ge 2 ] || die "pinning generator and server apart needs 2 CPUs (this machine has $CORES)"
for c in "$GEN_CPU" "$SRV_CPU"; do
  [[ "$c" =~ ^[0-9]+$ ]] && [ "$c" -lt "$CORES" ] || die "CPU $c: not one of 0..$((CORES - 1))"
done
[ "$GEN_CPU" != "$SRV_CPU" ] || die "--gen-cpu and --server-cpu must differ"
for n in "$SECS" "$STEP_SECS" "$ROUNDS" "$RATE" "$LADDER_START" "$LADDER_MAX" "$ALLOCS"; do
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -gt 0 ] || die "not a positive whole number: $n"
done
[ $((ALLOCS % 2)) = 0 ] || die "--allocations must be even (c2c pairs)"
case "$FAMILY" in 4|6|46) ;; *) die "--family must be 4, 6 or 46" ;; esac
[ "$SECS" -le 200 ] && [ "$STEP_SECS" -le 200 ] || die "--secs and --step-secs: at most 200"
python3 -c 'import sys; f=float(sys.argv[1]); sys.exit(0 if 1.01 <= f <= 10 else 1)' "$LADDER_FACTOR" \
  || die "--ladder-factor must be 1.01..10"
for t in ip ethtool clang taskset timeout python3 ss bpftool; do
  command -v "$t" >/dev/null || die "$t not found (apt-get install iproute2 ethtool clang libbpf-dev bpftool python3)"
done
[ -e /usr/include/bpf/bpf_helpers.h ] || die "no /usr/include/bpf/bpf_helpers.h (apt-get install libbpf-dev)"
[ "$STRACE" = 0 ] || command -v strace >/dev/null || die "--strace needs strace (apt-get install strace)"

if [ ! -x "$TP" ]; then
  [ "$TP" = "$ROOT/target/release/turnpike" ] || die "--turnpike $TP is not an executable"
  echo "building target/release/turnpike ..." >&2
  cargo build --release --quiet
fi
"$TP" loadgen relay --help | grep -q -- --peer-netns \
  || die "$TP has no \`loadgen relay --peer-netns\` (build this tree: cargo build --release)"

if [ "$NO_COTURN" = 0 ] && [ -z "$COTURN_PREFIX" ] && [ -x /opt/coturn-4.17.1/bin/turnserver ]; then
  COTURN_PREFIX=/opt/coturn-4.17.1
fi
CT=""
if [ "$NO_COTURN" = 0 ]; then
  if [ -n "$COTURN_PREFIX" ]; then
    CT="$COTURN_PREFIX/bin/turnserver"
    [ -x "$CT" ] || die "no $CT (build it: ../shared/anchors/build-coturn.sh $COTURN_PREFIX)"
  else
    echo "warning: no coturn 4.17.1 (/opt/coturn-4.17.1/bin/turnserver is missing; build it with ../shared/anchors/build-coturn.sh /opt/coturn-4.17.1, or pass --coturn-prefix DIR): the coturn columns are left out" >&2
  fi
fi

SERVERS=()
[ "$FASTPATH" = 0 ] || SERVERS+=(turnpike-xdp)
SERVERS+=(turnpike)
[ -z "$CT" ] || SERVERS+=(coturn coturn-mux)
SERVERS+=(bounce)
if [ -n "$ONLY_SERVERS" ]; then
  IFS=, read -r -a want <<<"$ONLY_SERVERS"
  for s in "${want[@]}"; do
    printf '%s\n' "${SERVERS[@]}" | grep -qx "$s" \
      || die "server $s is not available in this run (have: ${SERVERS[*]}; turnpike-xdp needs --fastpath, coturn* a coturn 4.17.1)"
  done
  SERVERS=("${want[@]}")
fi
ALL_LOADS=(echo echopp c2c echomax echoppmax c2cmax)
LOADS=("${ALL_LOADS[@]}")
if [ -n "$ONLY_LOADS" ]; then
  IFS=, read -r -a LOADS <<<"$ONLY_LOADS"
  for l in "${LOADS[@]}"; do
    printf '%s\n' "${ALL_LOADS[@]}" | grep -qx "$l" || die "unknown load $l (have: ${ALL_LOADS[*]})"
  done
fi

TAG="tpx-$$"
NS_CLI="$TAG-cli"
NS_SRV="$TAG-srv"
NS_PEER="$TAG-peer"
CLI_IP=198.51.100.2
LISTEN_IP=198.51.100.1
RELAY_IP=192.0.2.1
PEER_IP=192.0.2.2
CLI_IP6=2001:db8:1::2
LISTEN_IP6=2001:db8:1::1
RELAY_IP6=2001:db8:2::1
PEER_IP6=2001:db8:2::2
PORT=3478
# What this run uses: the server's listening address (as the generator
# names it), the peers' address, and the relays' family.
case "$FAMILY" in
  4) SERVER_ADDR="$LISTEN_IP:$PORT"; PEER_USE=$PEER_IP; RELAY_FAMILY=ipv4 ;;
  6) SERVER_ADDR="[$LISTEN_IP6]:$PORT"; PEER_USE=$PEER_IP6; RELAY_FAMILY=ipv6 ;;
  46) SERVER_ADDR="$LISTEN_IP:$PORT"; PEER_USE=$PEER_IP6; RELAY_FAMILY=ipv6 ;;
esac
HTTP=127.0.0.1:19641
SECRET=S
WORK=$(mktemp -d /tmp/turnpike-xdp-lab.XXXXXX)
SERVER_PID=""
STRACE_PID=""
BOUNCE_ON=0
BPF_STATS_WAS=""

cleanup() {
  local rc=$? ns p
  for p in $STRACE_PID $SERVER_PID; do
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  for ns in "$NS_CLI" "$NS_SRV" "$NS_PEER"; do
    ip netns del "$ns" 2>/dev/null || true
  done
  [ -z "$BPF_STATS_WAS" ] || sysctl -q -w "kernel.bpf_stats_enabled=$BPF_STATS_WAS" || true
  if [ -n "$KEEP" ]; then
    mkdir -p "$KEEP" && cp -r "$WORK"/. "$KEEP"/ && echo "raw results kept in $KEEP" >&2
  fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Leftovers of runs that died without cleaning up (their pid is gone).
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^tpx-[0-9]+-(cli|srv|peer)$' || true); do
  p=${ns#tpx-}; p=${p%%-*}
  kill -0 "$p" 2>/dev/null || { echo "deleting leftover namespace $ns" >&2; ip netns del "$ns" || true; }
done

if [ "$BPF_STATS" = 1 ]; then
  BPF_STATS_WAS=$(sysctl -n kernel.bpf_stats_enabled)
  sysctl -q -w kernel.bpf_stats_enabled=1
fi

# --- the XDP helper programs ---------------------------------------------

ARCH_INC="/usr/include/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"
clang -O2 -g -target bpf -I"$ARCH_INC" -c benches/xdp_bounce.bpf.c -o "$WORK/xdp_pass.o"
clang -O2 -g -target bpf -I"$ARCH_INC" -DBOUNCE -DLISTEN_PORT=$PORT -c benches/xdp_bounce.bpf.c -o "$WORK/xdp_bounce.o"

# --- the lab ---------------------------------------------------------------

for ns in "$NS_CLI" "$NS_SRV" "$NS_PEER"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
ip -n "$NS_CLI" link add c0 type veth peer name s0 netns "$NS_SRV"
ip -n "$NS_SRV" link add s1 type veth peer name p0 netns "$NS_PEER"
ip -n "$NS_CLI" addr add "$CLI_IP/24" dev c0
ip -n "$NS_SRV" addr add "$LISTEN_IP/24" dev s0
ip -n "$NS_SRV" addr add "$RELAY_IP/24" dev s1
ip -n "$NS_PEER" addr add "$PEER_IP/24" dev p0
ip -n "$NS_CLI" addr add "$CLI_IP6/64" dev c0 nodad
ip -n "$NS_SRV" addr add "$LISTEN_IP6/64" dev s0 nodad
ip -n "$NS_SRV" addr add "$RELAY_IP6/64" dev s1 nodad
ip -n "$NS_PEER" addr add "$PEER_IP6/64" dev p0 nodad
ip -n "$NS_CLI" link set c0 up
ip -n "$NS_SRV" link set s0 up
ip -n "$NS_SRV" link set s1 up
ip -n "$NS_PEER" link set p0 up
# The sending ends: full checksums. The receiving ends: an XDP program.
ip netns exec "$NS_CLI" ethtool -K c0 tx off >/dev/null
ip netns exec "$NS_PEER" ethtool -K p0 tx off >/dev/null
ip -n "$NS_CLI" link set dev c0 xdpdrv obj "$WORK/xdp_pass.o" sec xdp
ip -n "$NS_PEER" link set dev p0 xdpdrv obj "$WORK/xdp_pass.o" sec xdp
if [ "$NAPI_THREADS" = 1 ]; then
  ip netns exec "$NS_SRV" ethtool -K s0 gro on >/dev/null
  ip netns exec "$NS_SRV" ethtool -K s1 gro on >/dev/null
  for nd in "$NS_CLI:c0" "$NS_SRV:s0" "$NS_SRV:s1" "$NS_PEER:p0"; do
    ip netns exec "${nd%%:*}" sh -c "echo 1 > /sys/class/net/${nd#*:}/threaded" ||
      die "cannot make ${nd#*:}'s NAPI threaded"
  done
fi

# With --napi-threads: pin the veths' NAPI threads (named napi/DEV-ID) to
# their side's CPU; again after every server start (an XDP program
# attached may bring new NAPI instances).
pin_napi() {
  [ "$NAPI_THREADS" = 1 ] || return 0
  local pid comm n=0
  while read -r pid comm; do
    case "$comm" in
      napi/s0-*|napi/s1-*) taskset -pc "$SRV_CPU" "$pid" >/dev/null; n=$((n + 1)) ;;
      napi/c0-*|napi/p0-*) taskset -pc "$GEN_CPU" "$pid" >/dev/null; n=$((n + 1)) ;;
    esac
  done < <(ps -eo pid=,comm=)
  [ "$n" -ge 4 ] || die "--napi-threads: found $n veth NAPI threads, expected at least 4"
}
pin_napi

# --- servers ---------------------------------------------------------------

tp_config() { # $1 = file, $2 = 1 for the fast path
  cat >"$1" <<EOF
[server]
threads = 1
realm = "bench"
[[listen]]
transport = "udp"
addr = "$SERVER_ADDR"
[relay]
bind_ip = "$RELAY_IP"
bind_ip6 = "$RELAY_IP6"
ports = "10000-32767"
[auth]
secrets = ["$SECRET"]
[policy]
allow_peers = ["192.0.2.0/24", "2001:db8:2::/64"]
max_allocations = 100000
max_allocations_per_user = 100000
[limits]
unauth_rate = 4000000000
unauth_burst = 16000
[http]
addr = "$HTTP"
EOF
  if [ "$2" = 1 ]; then
    printf '[fastpath]\nmode = "xdp"\ninterfaces = ["s0", "s1"]\n' >>"$1"
  fi
}
tp_config "$WORK/turnpike.toml" 0
tp_config "$WORK/turnpike-xdp.toml" 1
"$TP" config check "$WORK/turnpike.toml" >/dev/null 2>"$WORK/check.err" \
  || die "turnpike refuses the lab's config: $(cat "$WORK/check.err")"
if [ "$FASTPATH" = 1 ]; then
  "$TP" config check "$WORK/turnpike-xdp.toml" >/dev/null 2>"$WORK/check.err" \
    || die "--fastpath: this turnpike does not take [fastpath] mode = \"xdp\" (issue 15's fast path not in this build?): $(tail -3 "$WORK/check.err")"
fi
CT_ARGS=(--use-auth-secret "--static-auth-secret=$SECRET" --realm=bench
  "--listening-ip=$LISTEN_IP" "--listening-ip=$LISTEN_IP6" "--listening-port=$PORT"
  "--relay-ip=$RELAY_IP" "--relay-ip=$RELAY_IP6"
  --no-tls --no-dtls --no-cli --min-port=10000 --max-port=32767 --relay-threads=1
  --no-stdout-log --simple-log --pidfile=/dev/null)

in_srv() { ip netns exec "$NS_SRV" "$@"; }

listening() { in_srv ss -Hlun "sport = :$PORT" | grep -q .; }

start_server() { # $1 = server; sets SERVER_PID
  local i cmd=()
  case "$1" in
    turnpike-xdp) cmd=("$TP" --log-level warn serve --config "$WORK/turnpike-xdp.toml") ;;
    turnpike|bounce) cmd=("$TP" --log-level warn serve --config "$WORK/turnpike.toml") ;;
    coturn) cmd=("$CT" "${CT_ARGS[@]}" "--log-file=$WORK/coturn.log") ;;
    coturn-mux) cmd=("$CT" "${CT_ARGS[@]}" "--log-file=$WORK/coturn-mux.log" --multiplex-peer --udp-gso) ;;
  esac
  # `ip netns exec` and taskset exec the server: $! is its pid.
  ip netns exec "$NS_SRV" taskset -c "$SRV_CPU" "${cmd[@]}" >>"$WORK/$1.out" 2>&1 &
  SERVER_PID=$!
  for i in $(seq 100); do
    if listening; then break; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -5 "$WORK/$1.out" >&2; die "$1 exited at start (log above)"; }
    sleep 0.1
  done
  listening || die "$1 did not listen on $SERVER_ADDR within 10 s"
  sleep 0.2
  if [ "$1" = bounce ]; then
    ip -n "$NS_SRV" link set dev s0 xdpdrv obj "$WORK/xdp_bounce.o" sec xdp
    BOUNCE_ON=1
  fi
  pin_napi
}

stop_server() {
  local i
  if [ "$BOUNCE_ON" = 1 ]; then
    ip -n "$NS_SRV" link set dev s0 xdpdrv off || true
    BOUNCE_ON=0
  fi
  [ -n "$SERVER_PID" ] || return 0
  kill -INT "$SERVER_PID" 2>/dev/null || true
  for i in $(seq 50); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  for i in $(seq 50); do listening || break; sleep 0.1; done
}

# The fast-path packet counter (turnpike), the bounce counter (bounce), or
# nothing: one number or "null".
side_counter() { # $1 = server
  case "$1" in
    turnpike|turnpike-xdp)
      in_srv python3 - "$HTTP" <<'PY' || echo null
import sys, urllib.request
try:
    text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
except Exception:
    print("null"); sys.exit(0)
vals = [float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
        if l.startswith("turnpike_fastpath_packets_total")]
print(sum(vals) if vals else "null")
PY
      ;;
    bounce)
      local prog
      prog=$(ip -j -n "$NS_SRV" link show dev s0 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0].get("xdp",{}).get("prog",{}).get("id",""))' 2>/dev/null || true)
      [ -n "$prog" ] || { echo null; return; }
      bpftool -j prog show id "$prog" | python3 -c '
import json, subprocess, sys
p = json.load(sys.stdin)
total = None
for m in p.get("map_ids", []):
    d = json.loads(subprocess.run(["bpftool", "-j", "map", "dump", "id", str(m)], capture_output=True, text=True).stdout or "[]")
    for e in d:
        for v in e.get("values", []):
            x = v.get("value")
            if isinstance(x, list):
                x = int.from_bytes(bytes(int(b, 16) for b in x), "little")
            total = (total or 0) + int(x)
print("null" if total is None else total)' 2>/dev/null || echo null
      ;;
    *) echo null ;;
  esac
}

# The XDP programs attached to the server's veths: "runs nanoseconds"
# summed over them (bpf_stats), or "null".
xdp_runs() {
  [ "$BPF_STATS" = 1 ] || { echo null; return; }
  ip -j -n "$NS_SRV" link show | python3 -c '
import json, subprocess, sys
ids = set()
def walk(x):
    if isinstance(x, dict):
        if isinstance(x.get("id"), int) and ("tag" in x or "name" in x):
            ids.add(x["id"])
        for v in x.values():
            walk(v)
    elif isinstance(x, list):
        for v in x:
            walk(v)
for link in json.load(sys.stdin):
    if link.get("ifname") in ("s0", "s1"):
        walk(link.get("xdp", {}))
cnt = ns = 0
for i in sorted(ids):
    p = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", str(i)], capture_output=True, text=True).stdout or "{}")
    cnt += p.get("run_cnt", 0); ns += p.get("run_time_ns", 0)
print(f"{cnt} {ns}" if ids else "null")' 2>/dev/null || echo null
}

# UDP receive-buffer drops of the three namespaces (RcvbufErrors of each
# one's /proc/net/snmp), as "cli srv peer".
rcvbuf_errors() {
  local ns
  for ns in "$NS_CLI" "$NS_SRV" "$NS_PEER"; do
    ip netns exec "$ns" awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp
  done | tr '\n' ' '
}

# --- the loads: each prints one JSON object ---------------------------------

lg() { # $1 = time limit (s), the rest: loadgen arguments
  timeout -k 5 "$1" ip netns exec "$NS_CLI" taskset -c "$GEN_CPU" "$TP" loadgen "${@:2}" --json
}

relay_args() { # $1 = load kind (echo, echopp, c2c)
  local a=(relay --server "$SERVER_ADDR" --secret "$SECRET" --allocations "$ALLOCS" --size 100
    --threads 1 --warmup 1 --server-pid "$SERVER_PID" --relay-family "$RELAY_FAMILY")
  case "$1" in
    echo) a+=(--mode echo --peer-bind "$PEER_USE" --peer-netns "$NS_PEER") ;;
    echopp) a+=(--mode echo --peer-bind "$PEER_USE" --peer-netns "$NS_PEER" --peers "$ALLOCS") ;;
    c2c) a+=(--mode c2c) ;;
  esac
  printf '%s\n' "${a[@]}"
}

run_fixed() { # $1 = echo|echopp|c2c
  local args
  mapfile -t args < <(relay_args "$1")
  lg $((SECS + 90)) "${args[@]}" --rate "$RATE" --duration "$SECS"
}

run_ladder() { # $1 = echo|echopp|c2c
  local rate=$LADDER_START best=0 out args ok=1 kept_up=1 loss skipped relayed steps="[]" bestrun="null" why stepfail=
  mapfile -t args < <(relay_args "$1")
  while :; do
    out=$(lg $((STEP_SECS + 90)) "${args[@]}" --rate "$rate" --duration "$STEP_SECS") || {
      [ "$steps" != "[]" ] || return 1
      ok=0; stepfail=$rate; break
    }
    # Relayed = 2 x round trips completed per second (a round trip is two
    # relayed messages; the same for every server, and for bounce, where
    # no peer sees the first leg); offered = 2 x round trips started.
    read -r loss skipped relayed offered < <(python3 -c 'import json,sys; r=json.load(sys.stdin); t=r["round_trips"]; d=r["duration_s"]; print(r["loss_pct"], r["generator_skipped"], 2*t["completed"]/d, 2*t["sent"]/d)' <<<"$out")
    steps=$(python3 -c '
import json, sys
s = json.loads(sys.argv[1]); r = json.loads(sys.argv[2])
m = r.get("machine") or {}; v = r.get("server") or {}
t = r["round_trips"]; d = r["duration_s"]
s.append({"rate": r["target_rate"], "relayed_per_s": 2 * t["completed"] / d, "offered_per_s": 2 * t["sent"] / d,
          "loss_pct": r["loss_pct"],
          "skipped": r["generator_skipped"], "rtt_p99_us": r["rtt_us"]["p99_us"],
          "machine_busy_pct": m.get("busy_pct"), "machine_us_per_msg": m.get("busy_us_per_unit"),
          "server_cpu_pct": v.get("cpu_pct"),
          "generator_cpu_pct": 100 * r["generator_cpu_s"] / r["duration_s"],
          "kernel_udp_rcvbuf_errors": r.get("kernel_udp_rcvbuf_errors"),
          "steal_pct": 100 * m.get("steal_s", 0) / m["window_s"] if m.get("window_s") else None})
print(json.dumps(s))' "$steps" "$out")
    ok=$(python3 -c 'import sys; print(1 if float(sys.argv[1]) < 1.0 else 0)' "$loss")
    if [ "$ok" = 1 ]; then
      best=$(python3 -c 'import sys; print(max(float(sys.argv[1]), float(sys.argv[2])))' "$best" "$relayed")
      bestrun=$out
    fi
    kept_up=$(python3 -c 'import sys; print(1 if float(sys.argv[1]) >= 0.9 * float(sys.argv[2]) else 0)' "$offered" "$rate")
    if [ "$ok" != 1 ] || [ "$kept_up" != 1 ]; then break; fi
    rate=$(python3 -c 'import sys; print(int(float(sys.argv[1]) * float(sys.argv[2])))' "$rate" "$LADDER_FACTOR")
    [ "$rate" -le "$LADDER_MAX" ] || break
  done
  why=loss
  if [ -n "$stepfail" ]; then
    why="the step at $stepfail msg/s failed"
  elif [ "$ok" = 1 ] && [ "$kept_up" != 1 ]; then
    why=generator
  elif [ "$ok" = 1 ]; then
    why="rate cap $LADDER_MAX"
  elif [ "${skipped:-0}" != 0 ]; then
    why="loss (generator behind too)"
  fi
  python3 -c 'import json,sys; print(json.dumps({"max_relayed_per_s": float(sys.argv[1]), "limited_by": sys.argv[2], "steps": json.loads(sys.argv[3]), "best": json.loads(sys.argv[4])}))' \
    "$best" "$why" "$steps" "$bestrun"
}

run_load() { # $1 = load
  case "$1" in
    echo|echopp|c2c) run_fixed "$1" ;;
    echomax) run_ladder echo ;;
    echoppmax) run_ladder echopp ;;
    c2cmax) run_ladder c2c ;;
  esac
}

START=$(date +%s)
echo "xdp lab: ${#LOADS[@]} loads x $ROUNDS round(s) x ${#SERVERS[@]} servers (${SERVERS[*]})$([ "$SMOKE" = 1 ] && echo ' (smoke)')" >&2
for load in "${LOADS[@]}"; do
  for r in $(seq "$ROUNDS"); do
    n=${#SERVERS[@]}; order=()
    for k in $(seq 0 $((n - 1))); do order+=("${SERVERS[$(( (r - 1 + k) % n ))]}"); done
    for srv in "${order[@]}"; do
      base="$WORK/$load.$srv.$r"
      printf '  %-9s round %d %-12s ... ' "$load" "$r" "$srv" >&2
      start_server "$srv"
      c0=$(side_counter "$srv")
      d0=$(rcvbuf_errors)
      x0=$(xdp_runs)
      if run_load "$load" >"$base.json" 2>"$base.err"; then
        echo "ok ($(( $(date +%s) - START )) s)" >&2
      else
        why=$(grep -v '^\s*$' "$base.err" | tail -1 | cut -c1-160)
        echo "FAILED: $why" >&2
        python3 -c 'import json,sys; print(json.dumps({"failed": True, "why": sys.argv[1]}))' "${why:-no output}" >"$base.json"
      fi
      c1=$(side_counter "$srv")
      d1=$(rcvbuf_errors)
      x1=$(xdp_runs)
      python3 -c '
import json, sys
a, b, d0, d1, x0, x1 = sys.argv[1:]
try:
    drops = dict(zip(("cli", "srv", "peer"), (int(y) - int(x) for x, y in zip(d0.split(), d1.split(), strict=True))))
except ValueError:
    drops = None
xdp = None
if "null" not in (x0, x1):
    (c0, n0), (c1, n1) = (map(int, x0.split())), (map(int, x1.split()))
    xdp = {"runs": c1 - c0, "run_time_ns": n1 - n0}
print(json.dumps({"counter": None if "null" in (a, b) else float(b) - float(a), "rcvbuf_errors": drops, "xdp": xdp}))' \
        "$c0" "$c1" "$d0" "$d1" "$x0" "$x1" >"$base.side.json"
      stop_server
    done
  done
done

# --- strace: system calls per datagram --------------------------------------

if [ "$STRACE" = 1 ]; then
  for srv in turnpike-xdp turnpike; do
    printf '%s\n' "${SERVERS[@]}" | grep -qx "$srv" || continue
    printf '  strace    %-12s ... ' "$srv" >&2
    start_server "$srv"
    strace -c -f -p "$SERVER_PID" -o "$WORK/strace.$srv.txt" 2>"$WORK/strace.$srv.err" &
    STRACE_PID=$!
    sleep 1
    if run_fixed echo >"$WORK/strace.$srv.json" 2>"$WORK/strace.$srv.loadgen.err"; then
      echo ok >&2
    else
      echo "FAILED: $(tail -1 "$WORK/strace.$srv.loadgen.err")" >&2
      echo '{"failed": true}' >"$WORK/strace.$srv.json"
    fi
    kill -INT "$STRACE_PID" 2>/dev/null || true
    wait "$STRACE_PID" 2>/dev/null || true
    STRACE_PID=""
    stop_server
  done
fi
ELAPSED=$(( $(date +%s) - START ))

# --- the table ---------------------------------------------------------------

MODEL=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
KERNEL=$(uname -r)
TPV=$("$TP" --version)
CTV=""
[ -z "$CT" ] || CTV="coturn $("$CT" --version 2>/dev/null | head -1) ($CT)"
GITREV=$(git rev-parse --short HEAD 2>/dev/null || echo "?")
SECTION="$WORK/section.md"
python3 - "$WORK" "$ROUNDS" "$SMOKE" "$ELAPSED" "$CORES" "$MODEL" "$KERNEL" "$TPV" "$CTV" "$GITREV" \
  "$SECS" "$STEP_SECS" "$RATE" "$LADDER_START" "$LADDER_FACTOR" "$LADDER_MAX" "$ALLOCS" "$GEN_CPU" "$SRV_CPU" \
  "${SERVERS[*]}" "${LOADS[*]}" "$STRACE" "$ARGS_TEXT" "$FAMILY" "$NAPI_THREADS" >"$SECTION" <<'PY'
import datetime, json, os, re, statistics, sys
(work, rounds, smoke, elapsed, cores, model, kernel, tpv, ctv, gitrev, secs, step_secs, rate,
 l_start, l_factor, l_max, allocs, gen_cpu, srv_cpu, servers, loads, strace, args_text, family,
 napi_threads) = sys.argv[1:]
servers = servers.split(); loads = loads.split(); rounds = int(rounds); rate = int(rate)

def runs(load, srv):
    out = []
    for r in range(1, rounds + 1):
        p = f"{work}/{load}.{srv}.{r}.json"
        if not os.path.exists(p):
            continue
        try:
            d = json.load(open(p))
        except Exception:
            d = {"failed": True, "why": "unreadable output"}
        try:
            side = json.load(open(f"{work}/{load}.{srv}.{r}.side.json"))
        except Exception:
            side = {}
        d["_side"] = side.get("counter")
        d["_drops"] = side.get("rcvbuf_errors")
        d["_xdp"] = side.get("xdp")
        out.append(d)
    return out

def get(d, path):
    if callable(path):
        try:
            return path(d)
        except Exception:
            return None
    for k in path.split("."):
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d

def cell(load, srv, path, fmt):
    rs = runs(load, srv)
    if not rs:
        return "—", None
    vals = [get(r, path) for r in rs if not r.get("failed")]
    vals = [v for v in vals if isinstance(v, (int, float))]
    if not vals:
        whys = sorted({r.get("why", "") for r in rs if r.get("failed")})
        whys = [re.sub(r"^error: ", "", w).strip() for w in whys if w]
        return ("cannot run (" + "; ".join(whys)[:90] + ")") if whys else "n/a", None
    m = statistics.median(vals)
    return fmt.format(m), m

def msgs(r):
    # Relayed messages of the measured window: 2 per round trip completed
    # (for bounce too, where the first leg reaches no peer).
    return 2 * r["round_trips"]["completed"]

def per_msg(seconds):
    def f(r):
        s = seconds(r)
        return s * 1e6 / msgs(r) if msgs(r) and s is not None else None
    return f

# A window /proc/stat did not fully account (lost ticks on a virtual
# machine) under-reports machine CPU: left out of the medians.
machine_ok = lambda r: r["machine"].get("complete", True)
incomplete = sum(1 for l in loads for v in servers for r in runs(l, v)
                 if not r.get("failed") and r.get("machine") and not machine_ok(r))
if incomplete:
    print(f"WARNING: {incomplete} runs' /proc/stat windows were incomplete (lost ticks); their machine CPU is left out", file=sys.stderr)
machine_per_msg = per_msg(lambda r: r["machine"]["busy_s"] if machine_ok(r) else None)
server_per_msg = per_msg(lambda r: r["server"]["cpu_s"])
gen_per_msg = per_msg(lambda r: r["generator_cpu_s"])
# The side counter covers the whole run (set-up, warm-up, measured
# window, drain): per message sent into the server over the run.
fast_share = lambda r: (r["_side"] / (r["totals"]["client_sent"] + r["totals"]["peer_received"])) if r["_side"] is not None else None
def cpu_of(c):
    def f(r):
        for x in r["machine"]["per_cpu"]:
            if x["cpu"] == c and machine_ok(r):
                return x["busy_s"] * 1e6 / msgs(r)
    return f

kinds = {"echo": f"Echo, one peer endpoint (the SFU case), {rate} msg/s",
         "echopp": f"Echo, a peer endpoint per allocation, {rate} msg/s",
         "c2c": f"c2c, {rate} msg/s"}
rows = []  # (label, load, path, fmt, better)
for k in ("echo", "echopp", "c2c"):
    if k not in loads:
        continue
    t = kinds[k]
    rows += [
        (f"{t}: **machine CPU per relayed msg, generator included (µs)**", k, machine_per_msg, "{:.2f}", "lower"),
        (f"{t}: server process CPU per relayed msg (µs)", k, server_per_msg, "{:.2f}", "lower"),
        (f"{t}: generator CPU per relayed msg (µs)", k, gen_per_msg, "{:.2f}", "lower"),
        (f"{t}: CPU {gen_cpu} (generator + peers) per relayed msg (µs)", k, cpu_of(int(gen_cpu)), "{:.2f}", "lower"),
        (f"{t}: CPU {srv_cpu} (server) per relayed msg (µs)", k, cpu_of(int(srv_cpu)), "{:.2f}", "lower"),
        (f"{t}: machine softirq (% of one core)", k, lambda r: 100 * r["machine"]["softirq_s"] / r["machine"]["window_s"], "{:.0f}", "lower"),
        (f"{t}: RTT p99 (µs)", k, "rtt_us.p99_us", "{:.0f}", "lower"),
        (f"{t}: loss (%)", k, "loss_pct", "{:.3f}", "lower"),
        (f"{t}: UDP receive-buffer drops in the cli + srv + peer namespaces, whole run", k, lambda r: sum(r["_drops"].values()), "{:.0f}", "lower"),
        (f"{t}: XDP program runs on s0 + s1 per datagram sent into the server, whole run (--bpf-stats)", k,
         lambda r: r["_xdp"]["runs"] / (r["totals"]["client_sent"] + r["totals"]["peer_received"]), "{:.2f}", "n/a"),
        (f"{t}: XDP program time per run (ns, --bpf-stats)", k,
         lambda r: r["_xdp"]["run_time_ns"] / r["_xdp"]["runs"], "{:.0f}", "lower"),
        (f"{t}: fast-path packets (turnpike) / bounced (bounce) per datagram sent into the server, whole run", k, fast_share, "{:.2f}", "n/a"),
    ]
for k, lab in (("echomax", "Echo, one peer endpoint"), ("echoppmax", "Echo, a peer endpoint per allocation"), ("c2cmax", "c2c")):
    if k in loads:
        rows += [(f"{lab}: **max relayed msg/s at < 1 % loss**", k, "max_relayed_per_s", "{:.0f}", "higher"),
                 (f"{lab}: machine CPU per relayed msg at that rate (µs)", k, lambda r: machine_per_msg(r["best"]), "{:.2f}", "lower")]

fast = "turnpike-xdp" if "turnpike-xdp" in servers else ("turnpike" if "turnpike" in servers else None)
coturns = [s for s in servers if s.startswith("coturn")]
lines = ["| Metric | " + " | ".join(servers) + (f" | {fast} / best coturn" if fast and coturns else "")
         + (" | turnpike-xdp / turnpike" if {"turnpike-xdp", "turnpike"} <= set(servers) else "") + " | better |",
         "| --- |" + " ---: |" * (len(servers) + (1 if fast and coturns else 0)
                                   + (1 if {"turnpike-xdp", "turnpike"} <= set(servers) else 0)) + " --- |"]
for label, load, path, fmt, better in rows:
    cells, meds = [], {}
    for s in servers:
        c, m = cell(load, s, path, fmt)
        cells.append(c); meds[s] = m
    extra = []
    if fast and coturns:
        cv = [meds[c] for c in coturns if meds[c]]
        best = (min(cv) if better == "lower" else max(cv)) if cv and better in ("lower", "higher") else None
        extra.append(f"{meds[fast] / best:.2f}" if meds.get(fast) is not None and best else "n/a")
    if {"turnpike-xdp", "turnpike"} <= set(servers):
        a, b = meds.get("turnpike-xdp"), meds.get("turnpike")
        extra.append(f"{a / b:.2f}" if a is not None and b and better in ("lower", "higher") else "n/a")
    lines.append(f"| {label} | " + " | ".join(cells + extra) + f" | {better} |")

notes = []
for k in ("echomax", "echoppmax", "c2cmax"):
    for s in servers:
        lim = [r.get("limited_by") for r in runs(k, s) if not r.get("failed")]
        if lim:
            notes.append(f"{k} {s}: {', '.join(lim)}")
stl = []
if strace == "1":
    for s in ("turnpike-xdp", "turnpike"):
        p = f"{work}/strace.{s}.txt"
        if not os.path.exists(p):
            continue
        text = open(p).read()
        m = re.search(r"^\S+\s+\S+\s+\S+\s+(\d+)\s+(?:\d+\s+)?total\s*$", text, re.M)
        calls = int(m.group(1)) if m else None
        try:
            r = json.load(open(f"{work}/strace.{s}.json"))
            dg = r["totals"]["client_sent"] + r["totals"]["peer_received"]
        except Exception:
            r, dg = None, None
        top = [l.split()[-1] + " " + l.split()[3] for l in text.splitlines()[2:] if re.match(r"^\s*[\d.]+\s", l) and "total" not in l][:4]
        stl.append(f"| {s} | {calls if calls is not None else 'n/a'} | {dg if dg else 'n/a'} | "
                   + (f"{calls / dg:.3f}" if calls is not None and dg else "n/a") + f" | {', '.join(top)} |")

now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
sec = ["### XDP lab: figures", ""]
if smoke == "1":
    sec += ["**Smoke run (`--smoke`: 1 round, 2 s runs, a short ladder) on a shared machine: the numbers "
            "show that the tooling works, not how the servers compare.**", ""]
sec += [f"Median of {rounds} round(s), the servers' order rotating per round; a fresh server per run; "
        f"generator + echo peers pinned to CPU {gen_cpu}, the server (one thread) to CPU {srv_cpu}; "
        + (f"veth NAPI threaded (--napi-threads): s0 and s1's on CPU {srv_cpu}, c0 and p0's on CPU {gen_cpu}, "
           "GRO on s0 and s1; " if napi_threads == "1" else "")
        + f"{allocs} allocations, 100-byte payloads, ChannelData; "
        + {"4": "IPv4", "6": "IPv6", "46": "IPv4 clients, IPv6 relays and peers (4↔6)"}[family] + f"; fixed-rate runs {secs} s measured, ladder steps "
        f"{step_secs} s (from {l_start} msg/s, x{l_factor}, up to {l_max}). Machine CPU = user + nice + system + irq + "
        "softirq of all CPUs (/proc/stat) over the generator's measured window, divided by the relayed messages "
        "(2 per round trip completed within 1 s). "
        "\"bounce\" is the generator's ceiling (an XDP program sends ChannelData straight back; the generator does "
        "only its client half, so its true ceiling for these loads is between half and all of that figure).", ""]
sec += lines + [""]
if notes:
    sec += ["- Ladders stopped by: " + "; ".join(notes) + " (\"loss\": the next step lost >= 1 %; \"generator\": "
            "the generator offered < 90 % of the step, so the figure is a lower bound for that server)."]
# Hypervisor steal: another guest had the CPU during a measured window,
# so that run's rates and latencies are the host's, not the server's.
def steal_pct(r):
    if r.get("steps"):
        v = [x.get("steal_pct") for x in r["steps"] if x.get("steal_pct") is not None]
        return max(v) if v else None
    m = r.get("machine") or {}
    return 100 * m["steal_s"] / m["window_s"] if m.get("window_s") else None
stolen = [f"{l} {v} round {i}: {st:.0f} %" for l in loads for v in servers
          for i, r in enumerate(runs(l, v), 1)
          if not r.get("failed") and (st := steal_pct(r)) is not None and st >= 5]
if stolen:
    sec += ["- Hypervisor steal >= 5 % of a measured window (another guest had the CPU; rerun these): "
            + "; ".join(stolen) + "."]
if stl:
    sec += ["", "System calls the server made (`strace -c -f -p PID` over one echo run at "
            f"{rate} msg/s, set-up included) per datagram that entered it (client data + peer echoes):", "",
            "| server | syscalls | datagrams in | per datagram | most frequent |", "| --- | ---: | ---: | ---: | --- |"] + stl + [""]
sec += [f"- Date: {now}; whole run {elapsed} s; {cores} CPUs \"{model}\", kernel {kernel}.",
        f"- Versions: {tpv} (git {gitrev}, release)" + (f"; {ctv}" if ctv else "") + ".",
        "- Command: `" + ("benches/xdp_lab.sh " + args_text).strip() + "` (see its --help for the lab and the loads).", ""]
print("\n".join(sec))
PY
cat "$SECTION"
if [ -n "$OUT" ]; then
  cp "$SECTION" "$OUT"
  echo "(written to $OUT)" >&2
fi
