#!/usr/bin/env bash
# Server CPU per request, against the transport's own cost, in one run: the bare gRPC
# server (benches/grpc_ceiling.rs) answering a storm of RegisterInstance, then batchreg's
# fresh storm and restart storm of the same payload (100,000 instances, 3 metadata, ttl
# 5, 512 in flight by default), in alternating rounds. CPU is the server process's
# utime + stime from /proc/<pid>/stat, read right before and right after each storm,
# divided by the requests answered. Every batchreg run starts on a fresh, empty database.
#
# It prints one line per run, then per server build the median rate, p99, µs per request
# and the median of each round's ratio to the bare server of the same round.
#
# usage: benches/cpu_per_request.sh [mysql://root@127.0.0.1:3306 | sqlite] [COUNT] [ROUNDS]
#   SERVERS="label=path ..."  batchreg builds to compare, alternating within each round
#                             (default: "batchreg=target/release/batchreg")
#   LOADGEN=path              the loadgen (default target/release/batchreg-loadgen)
#   IN_FLIGHT=n               requests in flight (default 512)
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-mysql://root@127.0.0.1:3306}
count=${2:-100000}
rounds=${3:-3}
in_flight=${IN_FLIGHT:-512}
servers=${SERVERS:-batchreg=target/release/batchreg}
loadgen=${LOADGEN:-target/release/batchreg-loadgen}
grpc=127.0.0.1:18391
http=127.0.0.1:18390

cargo build --release -p batchreg -p batchreg-loadgen --bins --benches >/dev/null 2>&1
ceiling=$(ls -t target/release/deps/grpc_ceiling-* | grep -v '\.d$' | head -1)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
ticks=$(getconf CLK_TCK)

# cpu PID: the process's user + system CPU time so far, in clock ticks.
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# store_url NAME: a fresh, empty database called NAME in the chosen store.
store_url() {
  if [ "$store" = sqlite ]; then
    rm -f "$work/$1.db" "$work/$1.db-wal" "$work/$1.db-shm"
    echo "sqlite://$work/$1.db"
  else
    mariadb -h 127.0.0.1 -P 3306 -u root -e "DROP DATABASE IF EXISTS $1; CREATE DATABASE $1 CHARACTER SET utf8mb4"
    echo "$store/$1"
  fi
}

# measure PID SCENARIO: runs one loadgen scenario against the server PID listens for;
# prints "rate answered µs_per_request p99_ms".
measure() {
  local pid=$1 scenario=$2 before after
  before=$(cpu "$pid")
  "$loadgen" "$scenario" --target "$grpc" --count "$count" --in-flight "$in_flight" \
    --metadata 3 --ttl 5 --no-progress --json > "$work/run.json" || true
  after=$(cpu "$pid")
  python3 - "$work/run.json" "$before" "$after" "$ticks" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
answered = sum(int(n) for n in r["codes"].values())
cpu_us = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4]) * 1e6
print("%.0f %d %.2f %.1f" % (r["rate_per_s"], answered, cpu_us / max(answered, 1),
                            r["latency_ms"]["p99"]))
PY
}

: > "$work/results.txt"
for round in $(seq 1 "$rounds"); do
  "$ceiling" --listen "$grpc" 2> "$work/ceiling.log" &
  pid=$!
  for _ in $(seq 1 50); do grep -q serving "$work/ceiling.log" && break; sleep 0.2; done
  read -r rate answered us p99 < <(measure "$pid" storm)
  kill "$pid"; wait "$pid" || true
  echo "round $round bare storm rate=$rate answered=$answered cpu_us=$us p99_ms=$p99"
  echo "$round bare storm $rate $us $p99" >> "$work/results.txt"
  for entry in $servers; do
    label=${entry%%=*}; binary=${entry#*=}
    url=$(store_url "bench_cpu_$label")
    printf '[server]\ngrpc_listen = "%s"\nhttp_listen = "%s"\n[store]\nurl = "%s"\n' \
      "$grpc" "$http" "$url" > "$work/server.toml"
    "$binary" serve --config "$work/server.toml" > "$work/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 50); do curl -sf "http://$http/healthz" >/dev/null && break; sleep 0.2; done
    for scenario in storm restart; do
      read -r rate answered us p99 < <(measure "$pid" "$scenario")
      echo "round $round $label $scenario rate=$rate answered=$answered cpu_us=$us p99_ms=$p99"
      echo "$round $label $scenario $rate $us $p99" >> "$work/results.txt"
    done
    kill "$pid"; wait "$pid" || true
  done
done

python3 - "$work/results.txt" "$store" "$count" "$in_flight" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
bare = {r[0]: float(r[4]) for r in rows if r[1] == "bare"}
print()
print("server CPU per request, %s storms of %s (3 metadata, ttl 5), %s in flight, medians of %d rounds"
      % (sys.argv[2], sys.argv[3], sys.argv[4], len(bare)))
print()
print("| server | run | rate /s | p99 ms | µs per request | × bare (same round) |")
print("| --- | --- | ---: | ---: | ---: | ---: |")
print("| bare gRPC server | storm | %.0f | %.1f | %.2f | 1.00 |" % (
    statistics.median(float(r[3]) for r in rows if r[1] == "bare"),
    statistics.median(float(r[5]) for r in rows if r[1] == "bare"), statistics.median(bare.values())))
labels = []
for r in rows:
    if r[1] != "bare" and (r[1], r[2]) not in labels:
        labels.append((r[1], r[2]))
for label, scenario in labels:
    runs = [r for r in rows if r[1] == label and r[2] == scenario]
    rate = statistics.median(float(r[3]) for r in runs)
    p99 = statistics.median(float(r[5]) for r in runs)
    us = statistics.median(float(r[4]) for r in runs)
    ratio = statistics.median(float(r[4]) / bare[r[0]] for r in runs)
    each = " / ".join("%.1f" % float(r[4]) for r in runs)
    print("| %s | %s | %.0f | %.1f | %.2f (%s) | %.2f |" % (label, scenario, rate, p99, us, each, ratio))
PY
