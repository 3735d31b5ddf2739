#!/usr/bin/env bash
# Overload: a storm with far more requests in flight than the store writes in a second
# (closed loop, each refused request sent again at once), against batchreg with
# admission by waiting time on (batch.register.max_queue_wait = 1s, the default) and
# off (0s: only queue_size bounds the queue), one after the other in one run. For each:
# the answers by code, how long the accepted requests waited in the queue (the server's
# batchreg_queue_wait_seconds histogram, and the client's latency of 200000 answers when
# the loadgen reports it by code), and the server's peak RSS.
#
# usage: benches/overload.sh [sqlite | mysql://root@127.0.0.1:3306] [COUNT] [IN_FLIGHT]
# MAX_BATCH=N and CONCURRENCY=N (environment) make the store slower, so that the same
# load is a deeper overload: batch.register.max_batch and store.concurrency.
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-sqlite}
count=${2:-100000}
in_flight=${3:-20000}
grpc=127.0.0.1:18391
http=127.0.0.1:18390

cargo build --release -p batchreg -p batchreg-loadgen >/dev/null 2>&1
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

store_url() {
  if [ "$store" = sqlite ]; then
    rm -f "$work/$1.db"*
    echo "sqlite://$work/$1.db"
  else
    mariadb -h 127.0.0.1 -P 3306 -u root -e "DROP DATABASE IF EXISTS $1; CREATE DATABASE $1 CHARACTER SET utf8mb4"
    echo "$store/$1"
  fi
}

# run LABEL MAX_QUEUE_WAIT
run() {
  local label=$1 wait=$2
  cat > "$work/$label.toml" <<EOF
[server]
grpc_listen = "$grpc"
http_listen = "$http"
register_self = false
[store]
url = "$(store_url "bench_overload_$label")"
concurrency = ${CONCURRENCY:-0}
[batch.register]
max_queue_wait = "$wait"
max_batch = ${MAX_BATCH:-128}
EOF
  target/release/batchreg serve --config "$work/$label.toml" > "$work/$label.log" 2>&1 &
  local server=$!
  for _ in $(seq 1 100); do
    curl -sf "http://$http/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  (while kill -0 "$server" 2>/dev/null; do
     awk '/VmRSS/ {print $2}' "/proc/$server/status" 2>/dev/null || true
     sleep 0.2
   done) > "$work/$label.rss" &
  target/release/batchreg-loadgen storm --target "$grpc" --count "$count" \
    --in-flight "$in_flight" --connections 16 --no-progress --json \
    > "$work/$label.json" 2> "$work/$label.err" || true
  curl -s "http://$http/metrics" > "$work/$label.metrics"
  kill -TERM "$server"
  wait "$server" || true
  python3 - "$work" "$label" "$wait" <<'PY'
import json, re, sys
work, label, wait = sys.argv[1:4]
report = json.load(open(f"{work}/{label}.json"))
metrics = open(f"{work}/{label}.metrics").read()
buckets = sorted(
    (float("inf") if le == "+Inf" else float(le), float(n))
    for le, n in re.findall(
        r'batchreg_queue_wait_seconds_bucket\{api="register",le="([^"]+)"\} (\S+)', metrics))
total = buckets[-1][1] or 1
share = lambda limit: next(n for le, n in buckets if le >= limit) / total
rss = max((int(x) for x in open(f"{work}/{label}.rss").read().split()), default=0)
by_code = report.get("latency_ms_by_code", {}).get("200000")
print(f"max_queue_wait={wait}: answers {report['codes']}, {report['rate_per_s']:.0f}/s")
print(f"  accepted, waited in the queue: <=0.5s {share(0.5):.1%}, <=1s {share(1):.1%}, "
      f"<=2s {share(2):.1%}, <=5s {share(5):.1%}")
if by_code:
    print(f"  client latency of 200000 answers (ms): {by_code}")
print(f"  client latency of all answers (ms): {report['latency_ms']}")
print(f"  server peak RSS: {rss / 1024:.0f} MiB")
PY
}

echo "overload: $store, $count instances, $in_flight in flight, max_batch ${MAX_BATCH:-128}, concurrency ${CONCURRENCY:-default}"
run on 1s
run off 0s
