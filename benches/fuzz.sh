#!/usr/bin/env bash
# Fuzzes the request decoders: the cargo-fuzz targets of benches/fuzz (nightly toolchain,
# AddressSanitizer, debug assertions on), one after the other, each for SECONDS.
#   grpc_instance     bytes -> Instance -> RegisterInstance/DeregisterInstance/Heartbeat
#                     validation and instance id
#   http_json         bytes -> the HTTP API's JSON readers, strict and lenient, compared
#   discover_request  bytes -> DiscoverRequest -> Discover answered from a registry cache
# Each starts from its committed seed corpus (benches/fuzz/corpus/TARGET, only read: what
# a run finds goes to a scratch corpus). Prints per target the runs, executions per
# second, coverage and crashes; exits non-zero when a target crashed, its input left in
# benches/fuzz/artifacts/TARGET/ (replay it with
# `cargo +nightly fuzz run --fuzz-dir benches/fuzz -a TARGET FILE`).
# Installs cargo-fuzz when it is missing.
#
# usage: benches/fuzz.sh [SECONDS_PER_TARGET (600)] [TARGET...]   (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(grpc_instance http_json discover_request)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fuzz=(cargo +nightly fuzz)
options=(--fuzz-dir benches/fuzz --debug-assertions)
# Every target at once: the run of each then starts at once.
if ! "${fuzz[@]}" build "${options[@]}" > /dev/null 2>"$work/build.log"; then
  tail -n 40 "$work/build.log" >&2
  echo "building the fuzz targets failed" >&2
  exit 1
fi

summary=()
crashed=0
for target in "${targets[@]}"; do
  seeds=benches/fuzz/corpus/$target
  artifacts=benches/fuzz/artifacts/$target
  [ -d "$seeds" ] || { echo "no seed corpus at $seeds: is $target a target?" >&2; exit 2; }
  mkdir -p "$work/$target" "$artifacts"
  touch "$work/$target.start"
  echo "== $target: ${seconds}s from $(ls "$seeds" | wc -l) seeds" >&2
  status=0
  "${fuzz[@]}" run "${options[@]}" "$target" "$work/$target" "$seeds" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
    > "$work/$target.log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$target.log" | tail -n 1)
  per_second=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/$target.log" | tail -n 1)
  coverage=$(grep -o 'cov: [0-9]*' "$work/$target.log" | tail -n 1 | cut -d' ' -f2)
  crashes=$(find "$artifacts" -type f -newer "$work/$target.start" | wc -l)
  if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
    # libFuzzer stopped without leaving an input (a build or start-up failure).
    crashes=1
  fi
  if [ "$crashes" -ne 0 ]; then
    crashed=1
    grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$work/$target.log" >&2 \
      || tail -n 30 "$work/$target.log" >&2
  fi
  line=$(printf '%-17s runs %10s  exec/s %7s  cov %6s  crashes %s' \
    "$target" "${runs:-?}" "${per_second:-?}" "${coverage:-?}" "$crashes")
  echo "$line"
  summary+=("$line")
done

echo "== ${seconds}s per target"
printf '%s\n' "${summary[@]}"
exit "$crashed"
