#!/usr/bin/env bash
# The storm comparison on MySQL/MariaDB, all figures from one run on one machine:
#   1. the direct writer (benches/direct_writer.rs): the database's own ceiling,
#   2. batchreg, fresh storm of COUNT instances,
#   3. batchreg, the same COUNT again unchanged (restart storm),
#   4. batchreg with batching off (max_batch = 1), fresh storm.
# Prints a markdown table. Server, database and loadgen share the machine.
#
# usage: benches/storm_compare.sh [mysql://root@127.0.0.1:3306] [COUNT] [IN_FLIGHT]
set -euo pipefail
cd "$(dirname "$0")/.."
server_url=${1:-mysql://root@127.0.0.1:3306}
count=${2:-100000}
in_flight=${3:-512}
grpc=127.0.0.1:18191
http=127.0.0.1:18190

cargo build --release -p batchreg -p batchreg-loadgen --benches >/dev/null 2>&1
direct=$(ls -t target/release/deps/direct_writer-* | grep -v '\.d$' | head -1)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

fresh_db() {
  mariadb -h 127.0.0.1 -P 3306 -u root -e "DROP DATABASE IF EXISTS $1; CREATE DATABASE $1 CHARACTER SET utf8mb4"
}

# storm NAME DB EXTRA_TOML SCENARIO...: runs the loadgen against a server on DB; prints
# "rate p50 p99" from its JSON report.
storm() {
  local db=$1 extra=$2; shift 2
  printf '[server]\ngrpc_listen = "%s"\nhttp_listen = "%s"\n[store]\nurl = "%s/%s"\n%b' \
    "$grpc" "$http" "$server_url" "$db" "$extra" > "$work/server.toml"
  target/release/batchreg serve --config "$work/server.toml" > "$work/server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 50); do curl -sf "http://$http/healthz" >/dev/null && break; sleep 0.2; done
  for scenario in "$@"; do
    target/release/batchreg-loadgen "$scenario" --target "$grpc" --count "$count" --in-flight "$in_flight" \
      --no-progress --json > "$work/$scenario.json" || true
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print("%.0f %.1f %.1f %s" % (r["rate_per_s"], r["latency_ms"]["p50"], r["latency_ms"]["p99"],
      ",".join("%s:%s" % kv for kv in sorted(r["codes"].items()))))' "$work/$scenario.json"
  done
  kill $pid; wait $pid || true
}

fresh_db bench_direct
direct_rate=$("$direct" --url "$server_url/bench_direct" --count "$count" | sed -E 's/.*= ([0-9.]+) instances.*/\1/')

fresh_db bench_batchreg
read -r fresh_rate fresh_p50 fresh_p99 fresh_codes restart_rate restart_p50 restart_p99 restart_codes < <(
  storm bench_batchreg "" storm restart | tr '\n' ' '; echo)

fresh_db bench_nobatch
read -r off_rate off_p50 off_p99 off_codes < <(storm bench_nobatch "[batch.register]\nmax_batch = 1\n" storm)

ratio() { python3 -c "print('%.2f' % ($1 / $2))"; }
echo
echo "storm of $count instances (3 metadata, ttl 5), $in_flight in flight, $(nproc) cores, $(mariadb --version | grep -oE 'Distrib [^,]+|from [0-9.]+[^ ,]*' | head -1)"
echo
echo "| run | rate /s | p50 ms | p99 ms | ratio | answers |"
echo "| --- | ---: | ---: | ---: | --- | --- |"
echo "| direct writer (no RPC, ideal batches) | ${direct_rate%.*} | | | 1.00 × direct | |"
echo "| batchreg, fresh | $fresh_rate | $fresh_p50 | $fresh_p99 | $(ratio "$fresh_rate" "$direct_rate") × direct | $fresh_codes |"
echo "| batchreg, restart (unchanged) | $restart_rate | $restart_p50 | $restart_p99 | $(ratio "$restart_rate" "$fresh_rate") × fresh | $restart_codes |"
echo "| batchreg, batching off (max_batch 1) | $off_rate | $off_p50 | $off_p99 | fresh = $(ratio "$fresh_rate" "$off_rate") × this | $off_codes |"
