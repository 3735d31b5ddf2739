#!/usr/bin/env bash
# A fleet held by its heartbeats, then a share of it stopped: `batchreg-loadgen
# heartbeat --register` against one batchreg (fresh store), with /metrics sampled every
# 5 s meanwhile. It prints the loadgen's report (beat rate, codes, p99, instances listed
# unhealthy while beating, and each stopped instance's delay from its last beat to being
# listed unhealthy), then from the samples: the store transactions by operation while the
# whole fleet beat (from 20 s after the registrations to the stop) and after the stop,
# the health transitions and the server's own expiry lag (expiry to transition), and the
# server's CPU and RSS while the fleet beat, with the loadgen's CPU and the whole host's
# (so that a run where other work took the cores can be told apart).
#
# usage: benches/heartbeat_fleet.sh [sqlite | mysql://root@127.0.0.1:3306] [memory | redis]
#          [COUNT] [HOLD] [STOP_SHARE]
#   defaults: sqlite memory 100000 300s 0.1 (100,000 instances at ttl 5, 20,000 beats/s,
#   held 5 minutes, then 10,000 stop beating and the others beat on for 25 s)
#   BATCHREG=path  LOADGEN=path  GRPC=host:port  HTTP=host:port (the server's listeners,
#   default 127.0.0.1:18391 and :18390)  LOADGEN_ARGS="..." (more loadgen options)
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-sqlite}
mode=${2:-memory}
count=${3:-100000}
hold=${4:-300s}
share=${5:-0.1}
batchreg=${BATCHREG:-target/release/batchreg}
loadgen=${LOADGEN:-target/release/batchreg-loadgen}
redis_url=redis://127.0.0.1:6379/
grpc=${GRPC:-127.0.0.1:18391}
http=${HTTP:-127.0.0.1:18390}
prefix="batchreg-hbfleet-$$:"

[ -x "$batchreg" ] && [ -x "$loadgen" ] || cargo build --release -p batchreg -p batchreg-loadgen >/dev/null 2>&1
work=$(mktemp -d)
. benches/heartbeat_common.sh

if [ "$store" = sqlite ]; then
  url="sqlite://$work/reg.db"
else
  mariadb -h 127.0.0.1 -P 3306 -u root -e "DROP DATABASE IF EXISTS bench_hbfleet; CREATE DATABASE bench_hbfleet CHARACTER SET utf8mb4"
  url="$store/bench_hbfleet"
fi
server_config "$url" > "$work/server.toml"
"$batchreg" serve --config "$work/server.toml" > "$work/server.log" 2>&1 &
for _ in $(seq 1 100); do curl -sf "http://$http/healthz" >/dev/null && break; sleep 0.2; done

# Samples: "seconds-since-start metric value" for the series the summary needs.
(
  started=$(date +%s.%N)
  while :; do
    now=$(date +%s.%N)
    t=$(echo "$now - $started" | bc)
    # The host's busy and total jiffies, and the loadgen's own, to tell its CPU apart.
    awk -v t="$t" '/^cpu / { print t, "host_busy_jiffies", $2+$3+$4+$7+$8+$9; print t, "host_total_jiffies", $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat >> "$work/samples.txt"
    if [ -s "$work/loadgen.pid" ]; then
      awk -v t="$t" '{ print t, "loadgen_jiffies", $14+$15 }' "/proc/$(cat "$work/loadgen.pid")/stat" >> "$work/samples.txt" 2>/dev/null || true
    fi
    curl -sf "http://$http/metrics" | awk -v t="$t" '
      /^batchreg_store_transaction_duration_seconds_count/ ||
      /^batchreg_health_transitions_total/ ||
      /^batchreg_health_expiry_delay_seconds_bucket/ ||
      /^batchreg_process_cpu_seconds_total/ ||
      /^batchreg_process_resident_memory_bytes/ { print t, $1, $2 }' >> "$work/samples.txt" || true
    sleep 5
  done
) &
sampler=$!

stop_after=$(python3 -c "import re,sys; print(sys.argv[1])" "$hold")
"$loadgen" heartbeat --target "$grpc" --count "$count" --metadata 3 --namespaces 1 \
  --services 10 --ttl 5 --register --duration "$hold" --stop-share "$share" \
  --stop-after "$stop_after" --expiry-timeout 25s --no-progress --json ${LOADGEN_ARGS:-} > "$work/run.json" &
echo $! > "$work/loadgen.pid"
wait "$(cat "$work/loadgen.pid")" || echo "loadgen exited $?" >&2
sleep 6
kill "$sampler" 2>/dev/null || true

python3 - "$work/run.json" "$work/samples.txt" "$hold" "$store" "$mode" <<'PY'
import json, re, sys, collections
r = json.load(open(sys.argv[1]))
hb = r["heartbeat"]
hold = sys.argv[3]
m = re.fullmatch(r"(\d+)(s|m)", hold)
hold_s = int(m[1]) * (60 if m[2] == "m" else 1)
print("store %s, beat table %s, %d instances at ttl %d s, held %s" % (
    sys.argv[4], sys.argv[5], hb["instances"], hb["ttl_s"], hold))
print("registered in %.1f s; beats: offered %.0f /s, achieved %.0f /s, codes %s" % (
    hb["registered_s"], r["open_loop"]["offered_rate_per_s"],
    r["open_loop"]["achieved_rate_per_s"], r["codes"]))
lat = r["latency_ms"]
print("beat latency ms (from due time): p50 %.2f p90 %.2f p99 %.2f p99.9 %.2f max %.2f" % (
    lat["p50"], lat["p90"], lat["p99"], lat["p999"], lat["max"]))
svc = r["open_loop"]["service_latency_ms"]
print("beat latency ms (from send):     p50 %.2f p99 %.2f max %.2f" % (svc["p50"], svc["p99"], svc["max"]))
print("instances listed unhealthy while beating: %d" % hb["wrongly_expired"])
for key in ("stopped", "expiry", "stop"):
    if key in hb:
        print("%s: %s" % (key, json.dumps(hb[key])))
print("watch:", json.dumps(hb["watch"]))

# Samples by time.
samples = collections.defaultdict(dict)
for line in open(sys.argv[2]):
    t, name, value = line.split()
    samples[float(t)][name] = float(value)
times = sorted(samples)
def at(t):
    # the last sample at or before t
    best = None
    for s in times:
        if s <= t:
            best = s
    return best
def total(sample, prefix):
    return {k: v for k, v in samples[sample].items() if k.startswith(prefix)}
start = hb["registered_s"] + 20
stop = hb["registered_s"] + hold_s
s0, s1, s2 = at(start + 1), at(stop), times[-1]
def delta(a, b, prefix):
    ta, tb = total(a, prefix), total(b, prefix)
    return {k: tb.get(k, 0) - ta.get(k, 0) for k in tb if tb.get(k, 0) != ta.get(k, 0)}
print()
print("while the whole fleet beat (%.0f s to %.0f s after start, %.0f s):" % (s0, s1, s1 - s0))
print("  store transactions: %s" % (delta(s0, s1, "batchreg_store_transaction") or "none"))
print("  health transitions: %s" % (delta(s0, s1, "batchreg_health_transitions") or "none"))
cpu = samples[s1]["batchreg_process_cpu_seconds_total"] - samples[s0]["batchreg_process_cpu_seconds_total"]
print("  server CPU: %.1f s in %.0f s = %.0f%% of one core; RSS %.0f MB" % (
    cpu, s1 - s0, 100 * cpu / (s1 - s0), samples[s1]["batchreg_process_resident_memory_bytes"] / 1e6))
# jiffies are 1/100 s; the host's counters cover every core.
def jiffies(name):
    return samples[s1].get(name, 0) - samples[s0].get(name, 0)
if jiffies("host_total_jiffies") > 0:
    cores = jiffies("host_total_jiffies") / 100 / (s1 - s0)
    busy = jiffies("host_busy_jiffies") / 100 / (s1 - s0)
    loadgen_cpu = jiffies("loadgen_jiffies") / 100 / (s1 - s0)
    print("  cores busy: %.2f of %.0f (loadgen %.2f, server %.2f, everything else %.2f)" % (
        busy, cores, loadgen_cpu, cpu / (s1 - s0), busy - loadgen_cpu - cpu / (s1 - s0)))
print("after the stop (%.0f s to %.0f s):" % (s1, s2))
print("  store transactions: %s" % (delta(s1, s2, "batchreg_store_transaction") or "none"))
print("  health transitions: %s" % (delta(s1, s2, "batchreg_health_transitions") or "none"))
# The server's own lag, from each expiry (3 ttl after the last beat it received) to the
# transition handed to the health writer: bucket bounds from the histogram's increase.
lag = delta(s1, s2, "batchreg_health_expiry_delay_seconds_bucket")
buckets = sorted((float("inf") if 'le="+Inf"' in k else float(re.search(r'le="([^"]+)"', k)[1]), v)
                 for k, v in lag.items())
if buckets:
    count = buckets[-1][1]
    for q in (0.5, 0.99, 1.0):
        bound = next(b for b, c in buckets if c >= q * count)
        print("  server's expiry lag p%g: at most %g s (of %d)" % (q * 100, bound, count))
PY
