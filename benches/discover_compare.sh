#!/usr/bin/env bash
# Discover against the transport's ceiling, in alternating rounds on one machine:
#   the bare gRPC server (benches/grpc_ceiling.rs, answering 100 instances of 3 metadata
#   entries, encoded for every full answer) and batchreg on SQLite holding one service of
#   the same 100 instances, each asked by loadgen `discover`:
#   - "current": watchers that send back the revision of their last answer (200001
#     after the first answer of each stream);
#   - "full": `--cold` watchers, a full 100-instance answer to every poll.
# Prints each round, then the medians, the server's CPU time per answer (from
# /proc/<pid>/stat) and the ratio batchreg / bare of each round's pair.
#
# usage: benches/discover_compare.sh [ROUNDS] [DURATION] [WATCHERS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
duration=${2:-10s}
watchers=${3:-64}
grpc=127.0.0.1:18195
http=127.0.0.1:18196
grid=(--namespaces 1 --services 1)

cargo build --release -p batchreg -p batchreg-loadgen --bins --benches >/dev/null 2>&1
ceiling=$(ls -t target/release/deps/grpc_ceiling-* | grep -v '\.d$' | head -1)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# cpu_ticks PID: the process's CPU time so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# discover NAME EXTRA...: one loadgen discover run against the server $server_pid;
# prints "rate p99 server-µs-per-answer".
discover() {
  local name=$1; shift
  local before; before=$(cpu_ticks "$server_pid")
  target/release/batchreg-loadgen discover --target "$grpc" --watchers "$watchers" \
    --duration "$duration" "${grid[@]}" --no-progress --json "$@" > "$work/$name.json"
  local after; after=$(cpu_ticks "$server_pid")
  python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
ticks, hz = int(sys.argv[2]), int(sys.argv[3])
us = ticks / hz * 1e6 / max(sum(r["codes"].values()), 1)
print("%.0f %.2f %.2f" % (r["rate_per_s"], r["latency_ms"]["p99"], us))' \
    "$work/$name.json" $((after - before)) "$(getconf CLK_TCK)"
}

wait_for() { for _ in $(seq 1 100); do eval "$1" && return 0; sleep 0.1; done; return 1; }

# batchreg on a fresh SQLite file, with the 100 instances registered.
printf '[server]\ngrpc_listen = "%s"\nhttp_listen = "%s"\n[store]\nurl = "sqlite://%s/d.db"\n' \
  "$grpc" "$http" "$work" > "$work/server.toml"
start_batchreg() {
  target/release/batchreg serve --config "$work/server.toml" > "$work/server.log" 2>&1 &
  server_pid=$!
  wait_for "curl -sf http://$http/healthz >/dev/null"
}
start_bare() {
  "$ceiling" --listen "$grpc" --instances 100 --metadata 3 2> "$work/ceiling.log" &
  server_pid=$!
  wait_for "grep -q serving $work/ceiling.log"
}
stop_server() { kill "$server_pid"; wait "$server_pid" || true; }

start_batchreg
target/release/batchreg-loadgen storm --target "$grpc" --count 100 --metadata 3 "${grid[@]}" \
  --no-progress --json > "$work/storm.json"
stop_server

: > "$work/rounds.txt"
for round in $(seq 1 "$rounds"); do
  start_bare
  read -r bare_cur bare_cur_p99 bare_cur_us < <(discover bare-current)
  read -r bare_full bare_full_p99 bare_full_us < <(discover bare-full --cold)
  stop_server
  start_batchreg
  read -r br_cur br_cur_p99 br_cur_us < <(discover batchreg-current)
  read -r br_full br_full_p99 br_full_us < <(discover batchreg-full --cold)
  stop_server
  echo "$round $bare_cur $bare_cur_p99 $br_cur $br_cur_p99 $bare_full $bare_full_p99 $br_full $br_full_p99" \
    "$bare_cur_us $br_cur_us $bare_full_us $br_full_us" | tee -a "$work/rounds.txt"
done

python3 - "$work/rounds.txt" "$watchers" "$duration" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
med = lambda i: statistics.median(r[i] for r in rows)
ratio = lambda a, b: statistics.median(r[a] / r[b] for r in rows)
print()
print(f"Discover, {sys.argv[2]} watchers, {sys.argv[3]} per run, {len(rows)} alternating rounds (medians)")
print()
print("| answers | bare /s | p99 ms | server µs/answer | batchreg /s | p99 ms | server µs/answer | rate batchreg / bare |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
print(f"| current revision (200001) | {med(1):,.0f} | {med(2):.2f} | {med(9):.1f} | {med(3):,.0f} | {med(4):.2f} | {med(10):.1f} | {ratio(3, 1):.2f} |")
print(f"| full, 100 instances (200000) | {med(5):,.0f} | {med(6):.2f} | {med(11):.1f} | {med(7):,.0f} | {med(8):.2f} | {med(12):.1f} | {ratio(7, 5):.2f} |")
print()
print("rate batchreg / bare: the median over rounds of each round's ratio; rounds:")
for r in rows:
    print(f"  round {r[0]:.0f}: current {r[3] / r[1]:.2f}, full {r[7] / r[5]:.2f}")
PY
