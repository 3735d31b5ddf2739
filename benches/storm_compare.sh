#!/usr/bin/env bash
# The storm comparison, all figures from one run on one machine:
#   1. the direct writer (benches/direct_writer.rs): the store's own ceiling, no RPC,
#      and the bare gRPC server (benches/grpc_ceiling.rs): the transport's own ceiling,
#      no store,
#   2. batchreg, fresh storm of COUNT instances,
#   3. batchreg, the same COUNT again unchanged (restart storm),
#   4. batchreg with batching off (max_batch = 1), fresh storm,
#   5. a sweep of fresh storms at 16, 64, 256 and 1024 in flight,
# then prints a markdown table and writes a chart of rate and p99 against requests in
# flight (SVG) to OUT_DIR (default target/storm). Server, store and loadgen share the
# machine.
#
# usage: benches/storm_compare.sh [mysql://root@127.0.0.1:3306 | sqlite] [COUNT] [IN_FLIGHT]
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-mysql://root@127.0.0.1:3306}
count=${2:-100000}
in_flight=${3:-512}
sweep=${SWEEP:-16 64 256 1024}
sweep_count=${SWEEP_COUNT:-$count}
out_dir=${OUT_DIR:-target/storm}
grpc=127.0.0.1:18191
http=127.0.0.1:18190

cargo build --release -p batchreg -p batchreg-loadgen --bins --benches >/dev/null 2>&1
direct=$(ls -t target/release/deps/direct_writer-* | grep -v '\.d$' | head -1)
ceiling=$(ls -t target/release/deps/grpc_ceiling-* | grep -v '\.d$' | head -1)
work=$(mktemp -d)
mkdir -p "$out_dir"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

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

# report JSON: prints "rate p50 p99 codes" from a loadgen JSON report.
report() {
  python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print("%.0f %.1f %.1f %s" % (r["rate_per_s"], r["latency_ms"]["p50"], r["latency_ms"]["p99"],
      ",".join("%s:%s" % kv for kv in sorted(r["codes"].items()))))' "$1"
}

# storm URL EXTRA_TOML IN_FLIGHT COUNT SCENARIO...: runs the loadgen against a server on
# URL; prints "rate p50 p99 codes" per scenario from its JSON report, once the server has
# exited: its caller reads the lines from a process substitution and starts the next
# server on the same ports as soon as it has them.
storm() {
  local url=$1 extra=$2 flight=$3 n=$4 lines=""; shift 4
  printf '[server]\ngrpc_listen = "%s"\nhttp_listen = "%s"\n[store]\nurl = "%s"\n%b' \
    "$grpc" "$http" "$url" "$extra" > "$work/server.toml"
  target/release/batchreg serve --config "$work/server.toml" > "$work/server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 50); do curl -sf "http://$http/healthz" >/dev/null && break; sleep 0.2; done
  for scenario in "$@"; do
    target/release/batchreg-loadgen "$scenario" --target "$grpc" --count "$n" --in-flight "$flight" \
      --no-progress --json > "$work/$scenario.json" || true
    lines+="$(report "$work/$scenario.json")"$'\n'
  done
  kill $pid; wait $pid || true
  printf '%s' "$lines"
}

direct_rate=$("$direct" --url "$(store_url bench_direct)" --count "$count" | sed -E 's/.*= ([0-9.]+) instances.*/\1/')

"$ceiling" --listen "$grpc" 2> "$work/ceiling.log" &
ceiling_pid=$!
for _ in $(seq 1 50); do grep -q serving "$work/ceiling.log" && break; sleep 0.2; done
target/release/batchreg-loadgen storm --target "$grpc" --count "$count" --in-flight "$in_flight" \
  --no-progress --json > "$work/ceiling.json" || true
kill $ceiling_pid; wait $ceiling_pid || true
read -r bare_rate bare_p50 bare_p99 bare_codes < <(report "$work/ceiling.json")

read -r fresh_rate fresh_p50 fresh_p99 fresh_codes restart_rate restart_p50 restart_p99 restart_codes < <(
  storm "$(store_url bench_batchreg)" "" "$in_flight" "$count" storm restart | tr '\n' ' '; echo)

read -r off_rate off_p50 off_p99 off_codes < <(
  storm "$(store_url bench_nobatch)" "[batch.register]\nmax_batch = 1\n" "$in_flight" "$count" storm)

: > "$work/sweep.txt"
for flight in $sweep; do
  read -r rate p50 p99 codes < <(storm "$(store_url "bench_sweep_$flight")" "" "$flight" "$sweep_count" storm)
  echo "$flight $rate $p50 $p99 $codes" >> "$work/sweep.txt"
done

if [ "$store" = sqlite ]; then
  engine="SQLite (bundled), synchronous=full"
else
  engine=$(mariadb --version | grep -oE 'Distrib [^,]+' | head -1)
fi
ratio() { python3 -c "print('%.2f' % ($1 / $2))"; }
echo
echo "storm of $count instances (3 metadata, ttl 5), $in_flight in flight, $(nproc) cores, $engine"
echo
echo "| run | rate /s | p50 ms | p99 ms | ratio | answers |"
echo "| --- | ---: | ---: | ---: | --- | --- |"
echo "| direct writer (no RPC, ideal batches) | ${direct_rate%.*} | | | 1.00 × direct | |"
echo "| bare gRPC server (no store, answers at once) | $bare_rate | $bare_p50 | $bare_p99 | $(ratio "$bare_rate" "$direct_rate") × direct | $bare_codes |"
echo "| batchreg, fresh | $fresh_rate | $fresh_p50 | $fresh_p99 | $(ratio "$fresh_rate" "$direct_rate") × direct | $fresh_codes |"
echo "| batchreg, restart (unchanged) | $restart_rate | $restart_p50 | $restart_p99 | $(ratio "$restart_rate" "$fresh_rate") × fresh | $restart_codes |"
echo "| batchreg, batching off (max_batch 1) | $off_rate | $off_p50 | $off_p99 | fresh = $(ratio "$fresh_rate" "$off_rate") × this | $off_codes |"
echo
echo "fresh storms of $sweep_count by requests in flight:"
echo
echo "| in flight | rate /s | p50 ms | p99 ms | answers |"
echo "| ---: | ---: | ---: | ---: | --- |"
while read -r flight rate p50 p99 codes; do
  echo "| $flight | $rate | $p50 | $p99 | $codes |"
done < "$work/sweep.txt"

chart="$out_dir/storm-$( [ "$store" = sqlite ] && echo sqlite || echo mysql ).svg"
python3 - "$work/sweep.txt" "$chart" "$engine" <<'PY'
import math, sys
rows = [line.split()[:4] for line in open(sys.argv[1]) if line.strip()]
flights = [int(r[0]) for r in rows]
series = [("rate /s", [float(r[1]) for r in rows], "#1f77b4"), ("p99 ms", [float(r[3]) for r in rows], "#d62728")]
W, H, pad = 360, 260, 50
parts = []
for i, (title, values, color) in enumerate(series):
    x0 = i * (W + 20)
    top = max(values) * 1.15 or 1
    lx = [math.log2(f) for f in flights]
    def px(v): return x0 + pad + (v - min(lx)) / ((max(lx) - min(lx)) or 1) * (W - 2 * pad)
    def py(v): return H - pad + 10 - v / top * (H - 2 * pad)
    parts.append(f'<text x="{x0 + W/2}" y="20" text-anchor="middle" font-size="14">{title} by requests in flight</text>')
    parts.append(f'<line x1="{x0+pad}" y1="{H-pad+10}" x2="{x0+W-pad}" y2="{H-pad+10}" stroke="black"/>')
    parts.append(f'<line x1="{x0+pad}" y1="{H-pad+10}" x2="{x0+pad}" y2="30" stroke="black"/>')
    for f, v in zip(lx, flights):
        parts.append(f'<text x="{px(f)}" y="{H-pad+28}" text-anchor="middle" font-size="11">{v}</text>')
    for k in range(5):
        v = top * k / 4
        parts.append(f'<text x="{x0+pad-6}" y="{py(v)+4}" text-anchor="end" font-size="10">{v:,.0f}</text>')
        parts.append(f'<line x1="{x0+pad}" y1="{py(v)}" x2="{x0+W-pad}" y2="{py(v)}" stroke="#ddd"/>')
    points = " ".join(f"{px(f):.1f},{py(v):.1f}" for f, v in zip(lx, values))
    parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
    for f, v in zip(lx, values):
        parts.append(f'<circle cx="{px(f):.1f}" cy="{py(v):.1f}" r="3" fill="{color}"/>')
parts.append(f'<text x="{W + 10}" y="{H + 15}" text-anchor="middle" font-size="11">{sys.argv[3]}; server, store and loadgen on one machine</text>')
svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{2*W+20}" height="{H+25}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>' + "".join(parts) + "</svg>"
open(sys.argv[2], "w").write(svg)
PY
echo
echo "chart: $chart"
