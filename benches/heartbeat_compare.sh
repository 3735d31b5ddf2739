#!/usr/bin/env bash
# Heartbeat rate against the transport's own: the bare gRPC server (benches/grpc_ceiling.rs)
# and batchreg, in alternating rounds, each beaten by the same fleet with
# `batchreg-loadgen heartbeat` offered more than either can answer, so that the achieved
# rate is the server's (the loadgen keeps --in-flight beats outstanding). Each round
# registers the fleet first with a storm (ttl 60: nothing expires during the round), then
# beats it every 5 s for DURATION; the server's CPU (utime + stime from /proc/<pid>/stat)
# is read around the beats only. batchreg runs on a fresh SQLite file; with `redis` its
# beat table is the local Redis (127.0.0.1:6379) under a key prefix of its own, removed
# afterwards.
#
# It prints one line per run, then the median rate, p99 and µs per beat of each server
# and the median of each round's rate ratio batchreg / bare.
#
# usage: benches/heartbeat_compare.sh [memory | redis] [COUNT] [ROUNDS] [DURATION]
#   defaults: memory 300000 3 20s (300,000 instances beating every 5 s: 60,000 beats/s
#   offered)
#   BATCHREG=path  LOADGEN=path  IN_FLIGHT=n (default 512)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-memory}
count=${2:-300000}
rounds=${3:-3}
duration=${4:-20s}
in_flight=${IN_FLIGHT:-512}
batchreg=${BATCHREG:-target/release/batchreg}
loadgen=${LOADGEN:-target/release/batchreg-loadgen}
redis_url=redis://127.0.0.1:6379/
grpc=127.0.0.1:18391
http=127.0.0.1:18390
case "$mode" in memory | redis) ;; *) echo "mode: memory or redis" >&2; exit 2 ;; esac

cargo build --release -p batchreg -p batchreg-loadgen --bins --benches >/dev/null 2>&1
ceiling=$(ls -t target/release/deps/grpc_ceiling-* | grep -v '\.d$' | head -1)
work=$(mktemp -d)
prefix="batchreg-hbcmp-$$:"
. benches/heartbeat_common.sh
ticks=$(getconf CLK_TCK)
fleet=(--count "$count" --metadata 3 --namespaces 1 --services 10)

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# beat PID: registers the fleet with the server PID listens for, then beats it; prints
# "rate µs_per_beat p99_ms wrongly_expired".
beat() {
  local pid=$1 before after
  "$loadgen" storm --target "$grpc" "${fleet[@]}" --ttl 60 --in-flight "$in_flight" \
    --no-progress --json > "$work/storm.json"
  before=$(cpu "$pid")
  "$loadgen" heartbeat --target "$grpc" "${fleet[@]}" --ttl 5 --duration "$duration" \
    --in-flight "$in_flight" --no-progress --json > "$work/beats.json" || true
  after=$(cpu "$pid")
  python3 - "$work/beats.json" "$before" "$after" "$ticks" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
answered = sum(int(n) for n in r["codes"].values())
cpu_us = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4]) * 1e6
print("%.0f %.2f %.1f %d" % (r["open_loop"]["achieved_rate_per_s"], cpu_us / max(answered, 1),
                             r["latency_ms"]["p99"], r["heartbeat"]["wrongly_expired"]))
PY
}

wait_ready() {
  for _ in $(seq 1 100); do
    if [ "$1" = bare ]; then grep -q serving "$work/ceiling.log" && return 0
    else curl -sf "http://$http/healthz" >/dev/null && return 0; fi
    sleep 0.2
  done
  echo "server not ready" >&2
  exit 1
}

: > "$work/results.txt"
for round in $(seq 1 "$rounds"); do
  "$ceiling" --listen "$grpc" 2> "$work/ceiling.log" &
  pid=$!
  wait_ready bare
  read -r rate us p99 wrong < <(beat "$pid")
  kill "$pid"; wait "$pid" || true
  echo "round $round bare rate=$rate cpu_us=$us p99_ms=$p99"
  echo "$round bare $rate $us $p99" >> "$work/results.txt"

  rm -f "$work"/reg.db*
  server_config "sqlite://$work/reg.db" "$prefix$round:" > "$work/server.toml"
  "$batchreg" serve --config "$work/server.toml" > "$work/server.log" 2>&1 &
  pid=$!
  wait_ready batchreg
  read -r rate us p99 wrong < <(beat "$pid")
  kill "$pid"; wait "$pid" || true
  echo "round $round batchreg-$mode rate=$rate cpu_us=$us p99_ms=$p99 wrongly_expired=$wrong"
  echo "$round batchreg $rate $us $p99" >> "$work/results.txt"
done

python3 - "$work/results.txt" "$mode" "$count" "$in_flight" "$duration" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
bare = {r[0]: float(r[2]) for r in rows if r[1] == "bare"}
print()
print("heartbeats, %s fleet beating every 5 s, %s in flight, %s a run, beat table %s; medians of %d rounds"
      % (sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[2], len(bare)))
print()
print("| server | beats /s | p99 ms | µs per beat | rate × bare (same round) |")
print("| --- | ---: | ---: | ---: | ---: |")
for label in ("bare", "batchreg"):
    runs = [r for r in rows if r[1] == label]
    each = " / ".join("%.2f" % (float(r[2]) / bare[r[0]]) for r in runs)
    print("| %s | %.0f | %.1f | %.2f | %.2f (%s) |" % (
        label if label == "bare" else "batchreg (%s)" % sys.argv[2],
        statistics.median(float(r[2]) for r in runs),
        statistics.median(float(r[4]) for r in runs),
        statistics.median(float(r[3]) for r in runs),
        statistics.median(float(r[2]) / bare[r[0]] for r in runs), each))
PY
