#!/usr/bin/env bash
# The server's memory while a fleet beats and nothing scrapes /metrics: one batchreg on a
# fresh SQLite file, a storm of COUNT instances (ttl 60), then `batchreg-loadgen heartbeat`
# over them for SECONDS (COUNT / 5 beats/s offered). It prints the server's VmRSS after the
# storm, every 10 s while the fleet beats, and after, and the growth per beat answered. A
# server that keeps something per request grows all along; one that does not levels off.
#
# usage: benches/heartbeat_rss.sh [COUNT] [SECONDS]
#   defaults: 300000 120
#   BATCHREG=path  LOADGEN=path
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-300000}
seconds=${2:-120}
batchreg=${BATCHREG:-target/release/batchreg}
loadgen=${LOADGEN:-target/release/batchreg-loadgen}
grpc=127.0.0.1:18391
http=127.0.0.1:18390

[ -x "$batchreg" ] && [ -x "$loadgen" ] || cargo build --release -p batchreg -p batchreg-loadgen >/dev/null 2>&1
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
printf '[server]\ngrpc_listen = "%s"\nhttp_listen = "%s"\n[store]\nurl = "sqlite://%s/reg.db"\n' \
  "$grpc" "$http" "$work" > "$work/server.toml"
"$batchreg" serve --config "$work/server.toml" > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do curl -sf "http://$http/healthz" >/dev/null && break; sleep 0.2; done

rss() { awk '/VmRSS/{print $2}' "/proc/$server/status"; }
fleet=(--target "$grpc" --count "$count" --metadata 3 --namespaces 1 --services 10 --in-flight 512 --no-progress --json)
"$loadgen" storm "${fleet[@]}" --ttl 60 > "$work/storm.json"
after_storm=$(rss)
echo "after the storm: $after_storm kB"
"$loadgen" heartbeat "${fleet[@]}" --ttl 5 --duration "${seconds}s" > "$work/beats.json" &
beats=$!
echo -n "while beating (kB, every 10 s):"
while kill -0 "$beats" 2>/dev/null; do
  sleep 10
  echo -n " $(rss)"
done
echo
wait "$beats" || true
after=$(rss)
answered=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sum(int(n) for n in r['codes'].values()))" "$work/beats.json")
echo "after the beats: $after kB; $answered beats answered; $(( (after - after_storm) * 1024 / answered )) bytes per beat"
