#!/usr/bin/env bash
# Runs the whole stack on loopback: nats-server (JetStream), mosquitto with the
# project's config, and every Whereabouts service with the example config.
# State lives in .run/ (delete it to start afresh). Ctrl-C stops everything.
#
# --demo: no phones needed. Uses deploy/demo.toml and a fresh state in
# .run/demo/, and the simulator plays a household of four through a day
# compressed into six minutes, looping.
#
# Environment (defaults in brackets), so that a test can run a second copy
# next to other brokers:
#   WHEREABOUTS_RUN_DIR  the state dir [.run; .run/demo with --demo]
#   WHEREABOUTS_BIN_DIR  take the binaries from here instead of building
#                        release ones (e.g. target/debug)
#   NATS_PORT [4222]  MQTT_PORT [1883]
#   INGEST_HTTP_ADDR [127.0.0.1:8081]  PRESENCE_HTTP_ADDR [127.0.0.1:8082]
#   NOTIFIER_HTTP_ADDR [127.0.0.1:8080]
#   NATS_SERVER_BIN, MOSQUITTO_BIN, WHEREABOUTS_CONFIG
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

demo=false
for arg in "$@"; do
  case "$arg" in
    --demo) demo=true ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (try --demo)" >&2; exit 2 ;;
  esac
done

scripts/setup.sh
bin=${WHEREABOUTS_BIN_DIR:-}
if [ -z "$bin" ]; then
  cargo build --release --bins
  bin="$root/target/release"
fi
for name in ingest presence notifier whereabouts-sim; do
  [ -x "$bin/$name" ] || { echo "run.sh: no $bin/$name (build it, or unset WHEREABOUTS_BIN_DIR)" >&2; exit 1; }
done

run=${WHEREABOUTS_RUN_DIR:-$root/.run}
if $demo; then
  run=${WHEREABOUTS_RUN_DIR:-$root/.run/demo}
  # Every demo starts from an empty store.
  rm -rf "$run/nats" "$run/mosquitto" "$run/logs"
  export WHEREABOUTS_CONFIG="$root/deploy/demo.toml"
fi
mkdir -p "$run/nats" "$run/mosquitto" "$run/logs"
nats_bin=${NATS_SERVER_BIN:-nats-server}
mosquitto_bin=${MOSQUITTO_BIN:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
nats_port=${NATS_PORT:-4222}
mqtt_port=${MQTT_PORT:-1883}
export INGEST_HTTP_ADDR=${INGEST_HTTP_ADDR:-127.0.0.1:8081}
export PRESENCE_HTTP_ADDR=${PRESENCE_HTTP_ADDR:-127.0.0.1:8082}
export NOTIFIER_HTTP_ADDR=${NOTIFIER_HTTP_ADDR:-127.0.0.1:8080}

{
  cat deploy/mosquitto.conf
  echo "listener $mqtt_port 127.0.0.1"
  echo "persistence_location $run/mosquitto/"
  # As root, mosquitto drops to the mosquitto user, which cannot write .run/.
  if [ "$(id -u)" = 0 ]; then echo "user root"; fi
} > "$run/mosquitto.conf"

# The simulator stops first, then the services (while the brokers are still
# there), then the brokers.
# Each pid is the process itself, never the end of a pipe: a
# `kill -TERM -- -PGID` may take out the log pipes first, and the services
# must still get their own SIGTERM and be waited for.
brokers=()
services=()
simulator=()
stop() {
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}
cleanup() {
  trap - INT TERM EXIT
  echo "stopping…" >&2 || true
  stop "${simulator[@]}"
  stop "${services[@]}"
  stop "${brokers[@]}"
}
trap cleanup INT TERM EXIT

"$nats_bin" -js -a 127.0.0.1 -p "$nats_port" --store_dir "$run/nats" >"$run/logs/nats.log" 2>&1 &
brokers+=($!)
"$mosquitto_bin" -c "$run/mosquitto.conf" >"$run/logs/mosquitto.log" 2>&1 &
brokers+=($!)
sleep 1

export NATS_URL="nats://127.0.0.1:$nats_port"
export MQTT_URL="mqtt://127.0.0.1:$mqtt_port"
export WHEREABOUTS_CONFIG=${WHEREABOUTS_CONFIG:-$root/whereabouts.example.toml}
for service in ingest presence notifier; do
  # Output through a process substitution, so that $! is the service.
  "$bin/$service" > >(tee "$run/logs/$service.log" | sed -u "s/^/[$service] /") 2>&1 &
  services+=($!)
done

board="http://$NOTIFIER_HTTP_ADDR/?household=weasleys&token=weasleys-token-change-me-please"
if $demo; then
  ingest_addr=$INGEST_HTTP_ADDR
  board="http://$NOTIFIER_HTTP_ADDR/?household=weasleys&token=demo-token-weasleys-0001"
  # ingest must be subscribed before the first message (a fresh broker keeps
  # nothing for a session it has never seen).
  for _ in $(seq 60); do
    curl -fsS -o /dev/null "http://$ingest_addr/readyz" 2>/dev/null && break
    sleep 1
  done
  # Its own process (not a pipeline), so that its pid is the one stopped.
  "$bin/whereabouts-sim" run --config "$WHEREABOUTS_CONFIG" --seed 1 \
    --day 6m --start 07:00 --loop --mqtt-url "$MQTT_URL" \
    --http-url "http://$ingest_addr" >"$run/logs/simulator.log" 2>&1 &
  simulator+=($!)
fi

cat <<INFO
Whereabouts is running (logs in ${run#"$root"/}/logs):
  MQTT           $MQTT_URL   (point the OwnTracks app here; topic owntracks/<user>/<device>)
  NATS           $NATS_URL
  HTTP mode      http://$INGEST_HTTP_ADDR/pub
  board          $board
  metrics        http://$INGEST_HTTP_ADDR/metrics (ingest) http://$PRESENCE_HTTP_ADDR/metrics (presence)
                 http://$NOTIFIER_HTTP_ADDR/metrics (notifier)
Press Ctrl-C to stop.
INFO
wait
