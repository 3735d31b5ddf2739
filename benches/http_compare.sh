#!/usr/bin/env bash
# The HTTP client API against gRPC, all figures from one run on one machine, batchreg on
# the embedded SQLite store in a temporary folder, on free 127.0.0.1 ports:
#   1. storms: the same fleet of COUNT instances (3 metadata entries, ttl 5) registered
#      over gRPC and over HTTP (`batchreg-loadgen storm --protocol http`: each instance's
#      JSON to POST /v1/RegisterInstance), alternating, ROUNDS times each, each storm on
#      a fresh store, with CONNECTIONS connections. gRPC keeps IN_FLIGHT requests
#      outstanding over them (HTTP/2 multiplexes); over HTTP/1.1 a keep-alive connection
#      carries one request at a time, so an HTTP client has at most CONNECTIONS
#      outstanding, and that is what the HTTP storm keeps (HTTP_IN_FLIGHT, default
#      CONNECTIONS: more would only queue inside the loadgen, and spend the CPU this
#      machine shares with the server on waiting). After each storm, `verify`
#      checks over gRPC that the server lists the whole fleet as it was sent. The
#      server's CPU time (utime + stime from /proc/<pid>/stat) is read around the storm.
#   2. Discover of one service of 100 instances, for DURATION over each protocol, by
#      WATCHERS watchers on CONNECTIONS connections: "full" (`--cold`: every answer
#      lists the 100 instances) and "current" (the revision of the last answer is sent
#      back: 200001 answers), with the server's CPU time per answer.
# Prints a line per run, then the median storm rate of each protocol with the ratio
# HTTP / gRPC (of the medians, and of each round's pair), and the Discover rates and p99.
# It builds nothing: it runs the release binaries of target/release, or those named by
# BATCHREG and LOADGEN. It stops its own server (by pid) and removes its folder on exit.
#
# usage: benches/http_compare.sh [COUNT] [ROUNDS] [DURATION]
#   defaults: 100000 3 10s
#   BATCHREG=path  LOADGEN=path  CONNECTIONS=n (64)  IN_FLIGHT=n (512)
#   HTTP_IN_FLIGHT=n (CONNECTIONS)  WATCHERS=n (64)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-100000}
rounds=${2:-3}
duration=${3:-10s}
connections=${CONNECTIONS:-64}
in_flight=${IN_FLIGHT:-512}
http_in_flight=${HTTP_IN_FLIGHT:-$connections}
watchers=${WATCHERS:-64}
batchreg=${BATCHREG:-target/release/batchreg}
loadgen=${LOADGEN:-target/release/batchreg-loadgen}
for binary in "$batchreg" "$loadgen"; do
  [ -x "$binary" ] || { echo "no $binary: build it with cargo build --release" >&2; exit 2; }
done

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
grpc=127.0.0.1:$(free_port)
http=127.0.0.1:$(free_port)
while [ "$http" = "$grpc" ]; do http=127.0.0.1:$(free_port); done

work=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

fleet=(--count "$count" --metadata 3 --ttl 5)
ticks=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# start_server NAME: batchreg on a fresh SQLite file NAME.db, once /healthz answers.
start_server() {
  printf '[server]\ngrpc_listen = "%s"\nhttp_listen = "%s"\n[store]\nurl = "sqlite://%s/%s.db"\n' \
    "$grpc" "$http" "$work" "$1" > "$work/server.toml"
  "$batchreg" serve --config "$work/server.toml" > "$work/server-$1.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 150); do
    curl -sf "http://$http/healthz" >/dev/null && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.2
  done
  echo "batchreg did not start; its log:" >&2
  cat "$work/server-$1.log" >&2
  exit 1
}

# stop_server NAME: stops it and removes its store.
stop_server() {
  kill "$server_pid"
  wait "$server_pid" || true
  server_pid=
  rm -f "$work/$1.db" "$work/$1.db-wal" "$work/$1.db-shm"
}

# address PROTOCOL: the server's address for that protocol.
address() { if [ "$1" = http ]; then echo "$http"; else echo "$grpc"; fi; }

# storm PROTOCOL ROUND: one storm on a fresh store, then its verification; writes
# "rate p50 p99 server_µs_per_request connections_opened verified codes" to $work/line.
# (Not run in a subshell: the server it starts must be this shell's to stop.)
storm() {
  local protocol=$1 name="storm-$1-$2" before after verified outstanding=$in_flight
  [ "$protocol" = http ] && outstanding=$http_in_flight
  start_server "$name"
  before=$(cpu_ticks "$server_pid")
  "$loadgen" storm --protocol "$protocol" --target "$(address "$protocol")" "${fleet[@]}" \
    --connections "$connections" --in-flight "$outstanding" --no-progress --json \
    > "$work/$name.json" || true
  after=$(cpu_ticks "$server_pid")
  if "$loadgen" verify --target "$grpc" "${fleet[@]}" --json > "$work/$name.verify.json"; then
    verified=yes
  else
    verified=NO
  fi
  stop_server "$name"
  python3 - "$work/$name.json" $((after - before)) "$ticks" "$verified" > "$work/line" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
answered = max(sum(r["codes"].values()), 1)
us = int(sys.argv[2]) / int(sys.argv[3]) * 1e6 / answered
codes = ",".join("%s:%s" % kv for kv in sorted(r["codes"].items()))
print("%.0f %.2f %.2f %.1f %s %s %s" % (r["rate_per_s"], r["latency_ms"]["p50"], r["latency_ms"]["p99"],
      us, r.get("connections_opened", r["connections"]), sys.argv[4], codes))
PY
}

# discover PROTOCOL MODE EXTRA...: one Discover run; prints
# "rate p50 p99 server_µs_per_answer codes".
discover() {
  local protocol=$1 mode=$2 before after
  shift 2
  before=$(cpu_ticks "$server_pid")
  "$loadgen" discover --protocol "$protocol" --target "$(address "$protocol")" \
    --namespaces 1 --services 1 --watchers "$watchers" --connections "$connections" \
    --duration "$duration" --no-progress --json "$@" > "$work/discover-$protocol-$mode.json" || true
  after=$(cpu_ticks "$server_pid")
  python3 - "$work/discover-$protocol-$mode.json" $((after - before)) "$ticks" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
us = int(sys.argv[2]) / int(sys.argv[3]) * 1e6 / max(sum(r["codes"].values()), 1)
codes = ",".join("%s:%s" % kv for kv in sorted(r["codes"].items()))
print("%.0f %.2f %.2f %.1f %s" % (r["rate_per_s"], r["latency_ms"]["p50"], r["latency_ms"]["p99"], us, codes))
PY
}

echo "batchreg on SQLite, gRPC $grpc, HTTP $http; storms of $count instances," \
  "$connections connections, $in_flight in flight over gRPC, $http_in_flight over HTTP"
: > "$work/storms.txt"
for round in $(seq 1 "$rounds"); do
  for protocol in grpc http; do
    storm "$protocol" "$round"
    read -r rate p50 p99 us opened verified codes < "$work/line"
    echo "round $round $protocol storm: $rate/s p50 ${p50} ms p99 ${p99} ms," \
      "server ${us} µs/request, $opened connections opened, verified $verified, codes $codes"
    echo "$round $protocol $rate $p50 $p99 $us $verified" >> "$work/storms.txt"
  done
done

start_server discover
"$loadgen" storm --target "$grpc" --count 100 --namespaces 1 --services 1 --metadata 3 --ttl 0 \
  --no-progress --json > "$work/discover-fleet.json"
: > "$work/discover.txt"
for mode in full current; do
  extra=()
  [ "$mode" = full ] && extra=(--cold)
  for protocol in grpc http; do
    read -r rate p50 p99 us codes < <(discover "$protocol" "$mode" "${extra[@]}")
    echo "discover $mode $protocol: $rate/s p50 ${p50} ms p99 ${p99} ms," \
      "server ${us} µs/answer, codes $codes"
    echo "$mode $protocol $rate $p50 $p99 $us" >> "$work/discover.txt"
  done
done
stop_server discover

python3 - "$work/storms.txt" "$work/discover.txt" "$count" "$connections" \
  "$in_flight/$http_in_flight" "$watchers" "$duration" <<'PY'
import statistics, sys
storms = [l.split() for l in open(sys.argv[1]) if l.strip()]
polls = {(l.split()[0], l.split()[1]): l.split()[2:] for l in open(sys.argv[2]) if l.strip()}
count, connections, in_flight, watchers, duration = sys.argv[3:8]
med = lambda protocol, i: statistics.median(float(r[i]) for r in storms if r[1] == protocol)
rate = {(r[0], r[1]): float(r[2]) for r in storms}
rounds = sorted({r[0] for r in storms}, key=int)
print()
print(f"Storm of {int(count):,} instances, {connections} connections, {in_flight} in flight "
      "(gRPC/HTTP), "
      f"fresh SQLite store each; medians of {len(rounds)} alternating rounds")
print()
print("| protocol | instances/s | p50 ms | p99 ms | server µs/request | verified |")
print("| --- | ---: | ---: | ---: | ---: | --- |")
for protocol in ("grpc", "http"):
    verified = "all" if all(r[6] == "yes" for r in storms if r[1] == protocol) else "NOT ALL"
    print(f"| {protocol} | {med(protocol, 2):,.0f} | {med(protocol, 3):.2f} | {med(protocol, 4):.2f} "
          f"| {med(protocol, 5):.1f} | {verified} |")
each = [rate[(n, "http")] / rate[(n, "grpc")] for n in rounds]
print()
print("HTTP / gRPC storm rate: %.2f (medians); each round: %s"
      % (med("http", 2) / med("grpc", 2), ", ".join("%.2f" % x for x in each)))
print()
print(f"Discover of one 100-instance service, {watchers} watchers, {connections} connections, "
      f"{duration} each")
print()
print("| answers | gRPC /s | p99 ms | server µs/answer | HTTP /s | p99 ms | server µs/answer | HTTP / gRPC |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for mode, label in (("full", "full, 100 instances (200000)"), ("current", "current revision (200001)")):
    g, h = polls[(mode, "grpc")], polls[(mode, "http")]
    print(f"| {label} | {float(g[0]):,.0f} | {float(g[2]):.2f} | {float(g[3]):.1f} "
          f"| {float(h[0]):,.0f} | {float(h[2]):.2f} | {float(h[3]):.1f} "
          f"| {float(h[0]) / max(float(g[0]), 1):.2f} |")
PY
