#!/usr/bin/env bash
# What a beating fleet costs, for comparing builds: one batchreg (fresh SQLite store, the
# beat table in memory or in the local Redis), a fleet of COUNT instances at ttl 5
# registered and then beaten for SECONDS (`batchreg-loadgen heartbeat --register`).
# Over the steady window (from 15 s after the beats start to 10 s before they end) it
# prints the cores the server, the loadgen and the whole host were busy, the server's
# syscalls per second (when `perf` is installed), and in Redis mode the commands and
# socket reads Redis served; then the loadgen's codes and latency percentiles.
#
# usage: benches/heartbeat_cpu.sh [memory | redis] [SECONDS] [COUNT]
#   defaults: memory 60 100000 (20,000 beats/s)
#   BATCHREG=path  LOADGEN=path  GRPC=host:port  HTTP=host:port (the server's listeners,
#   default 127.0.0.1:18391 and :18390)  LOADGEN_ARGS="..." (more loadgen options)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-memory}
seconds=${2:-60}
count=${3:-100000}
batchreg=${BATCHREG:-target/release/batchreg}
loadgen=${LOADGEN:-target/release/batchreg-loadgen}
redis_url=redis://127.0.0.1:6379/
grpc=${GRPC:-127.0.0.1:18391}
http=${HTTP:-127.0.0.1:18390}
prefix="batchreg-hbcpu-$$:"
[ "$seconds" -ge 40 ] || { echo "SECONDS must be at least 40" >&2; exit 2; }

[ -x "$batchreg" ] && [ -x "$loadgen" ] || cargo build --release -p batchreg -p batchreg-loadgen >/dev/null 2>&1
work=$(mktemp -d)
. benches/heartbeat_common.sh

server_config "sqlite://$work/reg.db" > "$work/server.toml"
"$batchreg" serve --config "$work/server.toml" > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do curl -sf "http://$http/healthz" >/dev/null && break; sleep 0.2; done

"$loadgen" heartbeat --target "$grpc" --count "$count" --metadata 3 --services 10 --ttl 5 \
  --register --duration "${seconds}s" --no-progress --json ${LOADGEN_ARGS:-} > "$work/run.json" &
loadgen_pid=$!

# The beats start once the registrations are done: wait for the first thousand.
beats() {
  curl -sf "http://$http/metrics" \
    | awk '/^batchreg_requests_total/ && /api="heartbeat"/ { s += $2 } END { print int(s) }'
}
for _ in $(seq 1 600); do [ "$(beats)" -gt 1000 ] && break; sleep 0.5; done
sleep 15
window=$((seconds - 25))

jiffies() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
host_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
redis_stats() {
  redis-cli -u "$redis_url" info all \
    | tr -d '\r' | awk -F'[:=,]' '/^total_reads_processed/ { print "reads", $2 } /^cmdstat_zadd/ { print "zadd", $3 }'
}
[ "$mode" = redis ] && redis_stats > "$work/redis0"
s0=$(jiffies $server); l0=$(jiffies $loadgen_pid); h0=$(host_jiffies)
if command -v perf >/dev/null 2>&1; then
  perf stat -x, -e 'syscalls:sys_enter_writev,syscalls:sys_enter_recvfrom,syscalls:sys_enter_futex,context-switches' \
    -p "$server" -- sleep "$window" 2> "$work/perf.txt" || sleep "$window"
else
  sleep "$window"
fi
s1=$(jiffies $server); l1=$(jiffies $loadgen_pid); h1=$(host_jiffies)
[ "$mode" = redis ] && redis_stats > "$work/redis1"
wait "$loadgen_pid" || echo "loadgen exited $?" >&2

cores() { awk -v a="$1" -v b="$2" -v w="$window" 'BEGIN { printf "%.3f", (b - a) / 100 / w }'; }
echo "beat table $mode, $count instances at ttl 5, ${seconds} s; steady window ${window} s"
echo "cores busy: server $(cores "$s0" "$s1"), loadgen $(cores "$l0" "$l1"), host $(cores "$h0" "$h1") of $(nproc)"
if [ -s "$work/perf.txt" ]; then
  awk -F, -v w="$window" '$1 ~ /^[0-9]+$/ { printf "server %s: %d/s\n", $3, $1 / w }' "$work/perf.txt"
fi
if [ "$mode" = redis ]; then
  paste "$work/redis0" "$work/redis1" \
    | awk -v w="$window" '{ printf "redis %s: %d/s\n", $1 == "reads" ? "socket reads" : "ZADD calls", ($4 - $2) / w }'
fi
python3 - "$work/run.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
due, send = r["latency_ms"], r["open_loop"]["service_latency_ms"]
print("codes", r["codes"])
print("beat latency ms from due time: p50 %.2f p99 %.2f p99.9 %.2f max %.2f" % (
    due["p50"], due["p99"], due["p999"], due["max"]))
print("beat latency ms from send:     p50 %.2f p99 %.2f max %.2f" % (
    send["p50"], send["p99"], send["max"]))
print("instances listed unhealthy while beating:", r["heartbeat"]["wrongly_expired"])
PY
