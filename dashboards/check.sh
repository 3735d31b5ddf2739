#!/usr/bin/env bash
# Proves that every PromQL expression of dashboards/batchreg.json is valid and returns
# data: builds batchreg, serves it on an SQLite file in a temp dir, has a real
# Prometheus scrape it every second while batchreg-loadgen runs a storm, a churn,
# Discover watchers and a beating fleet against it, then evaluates each panel's expressions (and the
# Instance variable's label query) through Prometheus's HTTP API. Any error, empty
# result or NaN fails the run.
#
#   bash dashboards/check.sh        # from the repo root; needs root only to install
#                                   # Debian's prometheus package when it is missing
#
# Everything listens on 127.0.0.1; every process it starts is stopped and every temp
# file removed on exit, however it exits.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly DASHBOARD=dashboards/batchreg.json
readonly GRPC_ADDR=127.0.0.1:18291
readonly HTTP_ADDR=127.0.0.1:18290
readonly PROM_ADDR=127.0.0.1:18292
readonly PROM_URL="http://$PROM_ADDR"
# Seconds of samples Prometheus must hold before the queries run (one scrape a second).
readonly MIN_SAMPLES=20

work=""
batchreg_pid=""
prom_pid=""
policy_guard=""

log() { printf '== %s\n' "$*" >&2; }
die() {
  printf 'check.sh: FAIL: %s\n' "$*" >&2
  exit 1
}

# Stops one process this script started: SIGTERM, then SIGKILL after 10 s.
stop() {
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  stop "$batchreg_pid"
  stop "$prom_pid"
  if [ -n "$policy_guard" ]; then rm -f /usr/sbin/policy-rc.d; fi
  if [ -n "$work" ]; then rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Shows the end of a log when something it belongs to went wrong.
show_log() {
  local name=$1 file=$2
  if [ -s "$file" ]; then
    printf -- '--- last lines of the %s log:\n' "$name" >&2
    tail -n 20 "$file" >&2
  fi
}

# Fails when something already listens on ADDR (another check, a stray server).
require_free() {
  local host=${1%:*} port=${1##*:}
  if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
    die "$1 is already in use; stop whatever listens there and run again"
  fi
}

# One instant query; prints the first sample's value, or nothing when the result is empty.
prom_value() {
  curl -sf -m 5 -G "$PROM_URL/api/v1/query" --data-urlencode "query=$1" 2>/dev/null \
    | python3 -c '
import json, sys
result = json.load(sys.stdin)["data"]["result"]
if result:
    print(result[0]["value"][1])
' 2>/dev/null || true
}

# Debian's prometheus package, installed without starting its service: a policy-rc.d
# that denies every start is put in place for the install when there is none.
install_prometheus() {
  if [ -x /usr/bin/prometheus ]; then return 0; fi
  [ "$(id -u)" = 0 ] || die "/usr/bin/prometheus is missing; install it as root: apt-get install prometheus"
  log "installing prometheus (Debian package; its service is not started)"
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# Left by batchreg dashboards/check.sh during an install; remove it.\nexit 101\n' \
      > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_guard=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  local apt=(timeout 900 apt-get install -y -q --no-install-recommends prometheus)
  if ! "${apt[@]}" >&2; then
    log "install failed; apt-get update, then trying again"
    timeout 600 apt-get update -q >&2 || true
    "${apt[@]}" >&2 || die "apt-get install prometheus failed"
  fi
  if [ -n "$policy_guard" ]; then
    rm -f /usr/sbin/policy-rc.d
    policy_guard=""
  fi
  [ -x /usr/bin/prometheus ] || die "apt-get installed prometheus but /usr/bin/prometheus is missing"
}

# The dashboard's expressions and its Instance variable's label query, checked offline
# (mode "static": schema, datasources, layout) or against Prometheus (mode "query").
dashboard_check() {
  python3 - "$@" <<'PY'
import json
import math
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

mode, path = sys.argv[1], sys.argv[2]
DS = {"type": "prometheus", "uid": "${datasource}"}

with open(path) as f:
    dash = json.load(f)


def panels_in_order(panels, row=""):
    """Every panel with the title of the row it sits under; collapsed rows hold theirs."""
    for panel in panels:
        if panel.get("type") == "row":
            row = panel.get("title", "")
            yield row, panel
            yield from panels_in_order(panel.get("panels", []), row)
        else:
            yield row, panel


def static():
    problems = []
    if dash.get("schemaVersion", 0) < 39:
        problems.append(f"schemaVersion {dash.get('schemaVersion')} < 39")
    variables = dash.get("templating", {}).get("list", [])
    ds_vars = [v for v in variables if v.get("name") == "datasource"]
    if not ds_vars or ds_vars[0].get("type") != "datasource" or ds_vars[0].get("query") != "prometheus":
        problems.append('no template variable "datasource" of type datasource, query "prometheus"')
    for v in variables:
        if v.get("type") == "query" and v.get("datasource") != DS:
            problems.append(f"variable {v.get('name')}: datasource {v.get('datasource')} is not {DS}")

    # No hard-coded Prometheus datasource anywhere in the document.
    def walk(node, where):
        if isinstance(node, dict):
            ds = node.get("datasource")
            if isinstance(ds, dict) and ds.get("type") == "prometheus" and ds != DS:
                problems.append(f"{where}: datasource {ds} is not {DS}")
            if isinstance(ds, str) and ds not in ("${datasource}", "$datasource"):
                problems.append(f"{where}: datasource given by name {ds!r}")
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(dash, "$")

    ids = {}
    cells = {}
    top_level = [id(p) for p in dash.get("panels", [])]
    for row, panel in panels_in_order(dash.get("panels", [])):
        name = f"row {panel.get('title')}" if panel.get("type") == "row" else f"{row} / {panel.get('title')}"
        pid = panel.get("id")
        if pid in ids:
            problems.append(f"{name}: id {pid} also used by {ids[pid]}")
        ids[pid] = name
        g = panel.get("gridPos", {})
        x0, y0, w, h = g.get("x", 0), g.get("y", 0), g.get("w", 0), g.get("h", 0)
        if w <= 0 or h <= 0 or x0 < 0 or x0 + w > 24:
            problems.append(f"{name}: gridPos {g} is not within 24 columns")
        # Panels inside a collapsed row are laid out when it opens; only the visible
        # grid must not overlap.
        if id(panel) in top_level:
            hit = {cells[c] for c in ((x, y) for x in range(x0, x0 + w) for y in range(y0, y0 + h)) if c in cells}
            if hit:
                problems.append(f"{name}: overlaps {', '.join(sorted(hit))}")
            for x in range(x0, x0 + w):
                for y in range(y0, y0 + h):
                    cells[(x, y)] = name
        if panel.get("type") == "row":
            continue
        if panel.get("type") not in ("timeseries", "stat"):
            problems.append(f"{name}: type {panel.get('type')!r}, expected timeseries or stat")
        if panel.get("datasource") != DS:
            problems.append(f"{name}: datasource {panel.get('datasource')} is not {DS}")
        if not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{name}: no unit")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{name}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            problems.append(f"{name}: repeated refId in {refs}")
        for t in targets:
            if not (t.get("expr") or "").strip():
                problems.append(f"{name} [{t.get('refId')}]: empty expr")
    for p in problems:
        print(f"FAIL static: {p}")
    count = sum(1 for _, p in panels_in_order(dash.get("panels", [])) if p.get("type") != "row")
    print(f"static: {count} panels, {len(problems)} problems")
    return 1 if problems else 0


# Grafana's built-in variables, at the value the check queries with.
BUILTINS = [
    ("__rate_interval_ms", "60000"), ("__rate_interval", "1m"),
    ("__interval_ms", "60000"), ("__interval", "1m"),
    ("__range_ms", "60000"), ("__range_s", "60"), ("__range", "1m"),
]


def substitute(expr, variables):
    values = dict(BUILTINS)
    for v in variables:
        if v.get("type") in ("query", "custom"):
            values[v["name"]] = v.get("allValue") or ".+"
    def one(match):
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(name)
        return values[name]
    # ${name}, ${name:format}, $name, longest names first so $__interval_ms is whole.
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def get(prom, api, params):
    url = f"{prom}{api}?{urllib.parse.urlencode(params, doseq=True)}"
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:
        try:
            body = json.load(error)
        except ValueError:
            return None, f"HTTP {error.code}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        return None, str(error)
    if body.get("status") != "success":
        return None, f"{body.get('errorType')}: {body.get('error')}"
    return body["data"], None


def missing_metrics(prom, expr):
    """Names in the expression that Prometheus holds no series of."""
    missing = []
    for name in sorted(set(re.findall(r"\bbatchreg_\w+", expr))):
        data, _ = get(prom, "/api/v1/series", {"match[]": name})
        if not data:
            missing.append(name)
    return missing


def query():
    prom = sys.argv[3]
    variables = dash.get("templating", {}).get("list", [])
    checks = []
    for v in variables:
        if v.get("type") != "query":
            continue
        q = v.get("query")
        definition = q.get("query") if isinstance(q, dict) else q
        checks.append((f"variable {v['name']}", "-", definition))
    for row, panel in panels_in_order(dash.get("panels", [])):
        if panel.get("type") == "row":
            continue
        for t in panel.get("targets", []):
            checks.append((f"{row} / {panel.get('title')}", t.get("refId", "?"), t.get("expr", "")))

    passed = failed = 0
    for name, ref, expr in checks:
        label = f"{name} [{ref}]"
        try:
            promql = substitute(expr, variables)
        except KeyError as unknown:
            print(f"FAIL  {label}: unknown variable ${unknown.args[0]} in: {expr}")
            failed += 1
            continue
        m = re.fullmatch(r"\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*", promql)
        if m:
            params = {"match[]": m.group(1)} if m.group(1) else {}
            data, error = get(prom, f"/api/v1/label/{m.group(2)}/values", params)
            count, nan = (len(data) if data else 0), 0
        else:
            data, error = get(prom, "/api/v1/query", {"query": promql})
            count = nan = 0
            if data is not None:
                kind, result = data["resultType"], data["result"]
                if kind == "scalar" or kind == "string":
                    values = [result[1]]
                elif kind == "vector":
                    values = [r["value"][1] for r in result]
                else:
                    values = [r["values"][-1][1] for r in result if r.get("values")]
                count = len(values)
                nan = sum(1 for v in values if math.isnan(float(v)))
        if error is not None:
            print(f"FAIL  {label}: query error: {error}\n      {promql}")
            failed += 1
            continue
        # NaN is what histogram_quantile() and a ratio give for a series with no
        # increase in the window: Grafana draws nothing for it.
        if count == 0 or nan:
            why = "empty result" if count == 0 else f"no data: {nan} of {count} values are NaN"
            absent = missing_metrics(prom, promql)
            hint = f" (not scraped: {', '.join(absent)})" if absent else ""
            print(f"FAIL  {label}: {why}{hint}\n      {promql}")
            failed += 1
            continue
        print(f"ok    {label}: {count} result{'s' if count != 1 else ''}\n      {promql}")
        passed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


sys.exit(static() if mode == "static" else query())
PY
}

[ -f "$DASHBOARD" ] || die "$DASHBOARD not found (run from a batchreg checkout)"
command -v python3 >/dev/null || die "python3 is needed"
command -v curl >/dev/null || die "curl is needed"

log "static checks of $DASHBOARD"
dashboard_check static "$DASHBOARD" || die "$DASHBOARD has the problems above"

install_prometheus
if command -v promtool >/dev/null; then
  log "promtool check config dashboards/prometheus.yml"
  timeout 30 promtool check config dashboards/prometheus.yml >&2 \
    || die "dashboards/prometheus.yml is not a valid Prometheus config"
fi

log "cargo build --release -p batchreg -p batchreg-loadgen"
cargo build --release -p batchreg -p batchreg-loadgen >&2 || die "cargo build failed"

for addr in "$GRPC_ADDR" "$HTTP_ADDR" "$PROM_ADDR"; do require_free "$addr"; done
work=$(mktemp -d "${TMPDIR:-/tmp}/batchreg-dashboard-check.XXXXXX")

cat > "$work/batchreg.toml" <<EOF
[server]
grpc_listen = "$GRPC_ADDR"
http_listen = "$HTTP_ADDR"
shutdown_timeout = "5s"

[store]
url = "sqlite://$work/check.db"
# Within shutdown_timeout, as the config requires.
outage_wait = "5s"

# The shortest retention allowed (refresh_interval + feed_overlap): the churn's
# deregistered rows are purged within the check, at the purge's 10 s floor.
[discovery]
retention = "6s"
EOF

cat > "$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: batchreg
    static_configs:
      - targets: ["$HTTP_ADDR"]
EOF

log "starting prometheus on $PROM_ADDR"
/usr/bin/prometheus \
  --config.file="$work/prometheus.yml" \
  --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="$PROM_ADDR" \
  --log.level=warn \
  > "$work/prometheus.log" 2>&1 &
prom_pid=$!

log "starting batchreg (gRPC $GRPC_ADDR, HTTP $HTTP_ADDR, store $work/check.db)"
target/release/batchreg serve --config "$work/batchreg.toml" > "$work/batchreg.log" 2>&1 &
batchreg_pid=$!

deadline=$((SECONDS + 30))
until curl -sf -m 2 "$PROM_URL/-/ready" >/dev/null 2>&1; do
  kill -0 "$prom_pid" 2>/dev/null || { show_log prometheus "$work/prometheus.log"; die "prometheus exited"; }
  [ "$SECONDS" -lt "$deadline" ] || { show_log prometheus "$work/prometheus.log"; die "prometheus not ready after 30 s"; }
  sleep 0.2
done
deadline=$((SECONDS + 30))
until curl -sf -m 2 "http://$HTTP_ADDR/healthz" >/dev/null 2>&1; do
  kill -0 "$batchreg_pid" 2>/dev/null || { show_log batchreg "$work/batchreg.log"; die "batchreg exited"; }
  [ "$SECONDS" -lt "$deadline" ] || { show_log batchreg "$work/batchreg.log"; die "batchreg /healthz not 200 after 30 s"; }
  sleep 0.2
done
deadline=$((SECONDS + 30))
until [ "$(prom_value 'up{job="batchreg"}')" = 1 ]; do
  [ "$SECONDS" -lt "$deadline" ] || { show_log prometheus "$work/prometheus.log"; die "prometheus has not scraped batchreg after 30 s"; }
  sleep 0.5
done

run_load() {
  log "batchreg-loadgen $*"
  if ! timeout 180 target/release/batchreg-loadgen "$@" --target "$GRPC_ADDR" --no-progress >&2; then
    show_log batchreg "$work/batchreg.log"
    die "batchreg-loadgen $1 failed (exit status above); the dashboard needs a server that answers"
  fi
}
# The HTTP client API (POST /v1/...): one round of each route, so the protocol="http"
# series have data; a few rounds a second apart, since rate() needs two samples.
http_round() {
  local round=$1 i body
  for i in 1 2 3 4 5; do
    body="{\"namespace\":\"http\",\"service\":\"svc\",\"host\":\"10.8.$round.$i\",\"port\":80,\"enableHealthCheck\":true,\"healthCheck\":{\"type\":\"HEARTBEAT\",\"heartbeat\":{\"ttl\":5}}}"
    curl -sf -m 5 -o /dev/null -X POST -H 'Content-Type: application/json' -d "$body" "http://$HTTP_ADDR/v1/RegisterInstance" \
      || die "HTTP RegisterInstance failed"
    curl -sf -m 5 -o /dev/null -X POST -d "$body" "http://$HTTP_ADDR/v1/Heartbeat" || die "HTTP Heartbeat failed"
  done
  curl -sf -m 5 -o /dev/null -X POST -d '{"type":"INSTANCE","service":{"namespace":"http","name":"svc"}}' \
    "http://$HTTP_ADDR/v1/Discover" || die "HTTP Discover failed"
  curl -sf -m 5 -o /dev/null -X POST -d '{"type":"SDK","version":"check"}' "http://$HTTP_ADDR/v1/ReportClient" \
    || die "HTTP ReportClient failed"
  curl -sf -m 5 -o /dev/null -X POST -d "$body" "http://$HTTP_ADDR/v1/DeregisterInstance" \
    || die "HTTP DeregisterInstance failed"
}
http_load() {
  local round
  log "HTTP client API: $1 rounds"
  for round in $(seq 1 "$1"); do http_round "$round"; sleep 1; done
}

# Every scenario works on the same grid of services (loadgen's defaults, spelled out),
# so that Discover watches the services the storm registered.
grid=(--namespaces 1 --services 10)
# A few registers and deregisters first, so that every series already has a sample when
# the storm starts: rate() only counts increases between samples, and a storm on this
# machine can be over within one scrape.
run_load churn --count 50 "${grid[@]}"
http_load 2
sleep 2
run_load storm --count 20000 --in-flight 256 "${grid[@]}"
run_load churn --count 2000 "${grid[@]}"
# Discover, after the writes: watchers that send back their revision get one full
# answer per service (encoded once, reused by the others) and then 200001 (no change);
# cold watchers get a full, reused answer to every poll. Both keep the Discover
# histogram busy up to the queries.
run_load discover --watchers 16 --duration 4s "${grid[@]}"
run_load discover --watchers 16 --duration 4s --cold "${grid[@]}"
# Heartbeats: a fleet of its own (another seed) beats every second; a tenth of it stops
# after 2 s and must turn unhealthy 3 s after its last beat (transitions, expiry delay).
# The storm's instances, registered with ttl 5 and never beaten, expire meanwhile.
run_load heartbeat --count 2000 --ttl 1 --seed 7 --register --duration 6s \
  --stop-share 0.1 --stop-after 2s --expiry-timeout 8s "${grid[@]}"
http_load 4
load_done=$SECONDS

# rate() windows are 1m: enough scrapes to span the load and a few after it, then query
# at once while the whole load is still inside the window.
log "waiting for $MIN_SAMPLES s of samples"
deadline=$((SECONDS + 90))
while :; do
  samples=$(prom_value 'count_over_time(up{job="batchreg"}[1m])')
  if [ "${samples:-0}" -ge "$MIN_SAMPLES" ] && [ $((SECONDS - load_done)) -ge 3 ]; then break; fi
  [ "$SECONDS" -lt "$deadline" ] || die "prometheus holds ${samples:-0} samples after 90 s, wanted $MIN_SAMPLES"
  sleep 1
done
kill -0 "$batchreg_pid" 2>/dev/null || { show_log batchreg "$work/batchreg.log"; die "batchreg exited during the check"; }

log "evaluating the dashboard's expressions ($samples samples held)"
dashboard_check query "$DASHBOARD" "$PROM_URL"
