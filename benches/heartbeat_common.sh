# Sourced by the heartbeat scripts (heartbeat_compare.sh, heartbeat_fleet.sh,
# heartbeat_cpu.sh). The script sets, before sourcing it: mode (memory | redis), work
# (its temporary folder), redis_url, prefix (the run's Redis key prefix), grpc and http
# (the server's listeners).

# On exit: stops the script's jobs and waits for them (a server that is shutting down
# still writes), deletes the run's keys from Redis, removes $work.
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "$mode" = redis ]; then
    redis-cli -u "$redis_url" --scan --pattern "${prefix}*" | xargs -r redis-cli -u "$redis_url" del >/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# server_config STORE_URL [KEY_PREFIX]: batchreg's config on stdout: the listeners, the
# store, and in Redis mode the beat table in the local Redis under KEY_PREFIX (default
# the run's prefix).
server_config() {
  printf '[server]\ngrpc_listen = "%s"\nhttp_listen = "%s"\n' "$grpc" "$http"
  printf '[store]\nurl = "%s"\n' "$1"
  if [ "$mode" = redis ]; then
    printf '[health]\nredis_url = "%s"\nkey_prefix = "%s"\n' "$redis_url" "${2:-$prefix}"
  fi
}
