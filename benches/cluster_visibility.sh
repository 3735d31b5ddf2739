#!/usr/bin/env bash
# Cluster mode: how soon a registration answered by replica A is listed by replica B.
# Two replicas share a fresh MariaDB database (default config: B's change feed reads
# every second); a storm of COUNT instances goes through A; then B's
# batchreg_change_feed_delay_seconds histogram (from each row's write on A to its change
# applied in B's cache) gives the share of instances B held within 1 s and 2 s, and
# interpolated quantiles. Prints A's storm rate and p99 too.
#
# usage: benches/cluster_visibility.sh [MYSQL_SERVER_URL] [COUNT] [IN_FLIGHT]
#   BATCHREG=path   the server build to run (default target/release/batchreg)
set -euo pipefail
cd "$(dirname "$0")/.."
server=${1:-mysql://root@127.0.0.1:3306}
count=${2:-100000}
in_flight=${3:-512}
db=bench_visibility

cargo build --release -p batchreg -p batchreg-loadgen >/dev/null 2>&1
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
mariadb -h 127.0.0.1 -P 3306 -u root -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db CHARACTER SET utf8mb4"

# replica NAME GRPC HTTP: starts a replica on the database; waits until it serves.
replica() {
  BATCHREG_STORE_URL="$server/$db" BATCHREG_GRPC_LISTEN="$2" BATCHREG_HTTP_LISTEN="$3" \
    "${BATCHREG:-target/release/batchreg}" serve > "$work/$1.log" 2>&1 &
  for _ in $(seq 1 100); do curl -sf "http://$3/healthz" >/dev/null && return 0; sleep 0.1; done
  echo "replica $1 did not start" >&2; cat "$work/$1.log" >&2; exit 1
}
replica a 127.0.0.1:18491 127.0.0.1:18490
replica b 127.0.0.1:18493 127.0.0.1:18492

target/release/batchreg-loadgen storm --target 127.0.0.1:18491 --count "$count" \
  --in-flight "$in_flight" --no-progress --json > "$work/storm.json"
# B's feed reads every second: a few more reads take in the last commits.
sleep 4
curl -sf http://127.0.0.1:18492/metrics > "$work/b.metrics"

python3 - "$work/storm.json" "$work/b.metrics" "$count" <<'PY'
import json, re, sys
storm = json.load(open(sys.argv[1]))
buckets = []
for line in open(sys.argv[2]):
    m = re.match(r'batchreg_change_feed_delay_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
    if m:
        buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2))))
buckets.sort()
total = buckets[-1][1] if buckets else 0
def share(le):
    return next((c for b, c in buckets if b == le), 0) / total if total else 0
def quantile(q):
    target, prev_b, prev_c = q * total, 0.0, 0.0
    for b, c in buckets:
        if c >= target:
            if b == float("inf"):
                return float("inf")
            return prev_b + (b - prev_b) * ((target - prev_c) / (c - prev_c) if c > prev_c else 1)
        prev_b, prev_c = b, c
    return float("nan")
print(f"storm through A: {storm['rate_per_s']:,.0f}/s, p99 {storm['latency_ms']['p99']:.1f} ms, codes {storm['codes']}")
print(f"changes B applied: {total:,.0f} of {sys.argv[3]} registered")
print(f"listed by B within 1 s: {share(1.0):.2%}, within 2 s: {share(2.0):.2%}")
print(f"delay p50 {quantile(0.5):.2f} s, p99 {quantile(0.99):.2f} s (interpolated within buckets)")
reads = {}
for line in open(sys.argv[2]):
    m = re.match(r'batchreg_change_feed_read_seconds_(sum|count) (\S+)', line)
    if m:
        reads[m.group(1)] = float(m.group(2))
if reads.get("count"):
    print(f"B's feed reads: {reads['count']:.0f}, mean {reads['sum'] / reads['count'] * 1000:.0f} ms each")
PY
