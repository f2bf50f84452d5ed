#!/usr/bin/env bash
# Runs the whole stack on loopback: nats-server (JetStream), mosquitto with the
# project's config, and every Whereabouts service with the example config.
# State lives in .run/ (delete it to start afresh). Ctrl-C stops everything.
#
# --demo: no phones needed. Uses deploy/demo.toml and a fresh state in
# .run/demo/, and the simulator plays a household of four through a day
# compressed into six minutes, looping.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

demo=false
for arg in "$@"; do
  case "$arg" in
    --demo) demo=true ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (try --demo)" >&2; exit 2 ;;
  esac
done

scripts/setup.sh
cargo build --release --bins

run="$root/.run"
if $demo; then
  run="$root/.run/demo"
  rm -rf "$run"  # every demo starts from an empty store
  export WHEREABOUTS_CONFIG="$root/deploy/demo.toml"
fi
mkdir -p "$run/nats" "$run/mosquitto" "$run/logs"
nats_bin=${NATS_SERVER_BIN:-nats-server}
mosquitto_bin=${MOSQUITTO_BIN:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
nats_port=${NATS_PORT:-4222}
mqtt_port=${MQTT_PORT:-1883}

{
  cat deploy/mosquitto.conf
  echo "listener $mqtt_port 127.0.0.1"
  echo "persistence_location $run/mosquitto/"
  # As root, mosquitto drops to the mosquitto user, which cannot write .run/.
  if [ "$(id -u)" = 0 ]; then echo "user root"; fi
} > "$run/mosquitto.conf"

# Services stop first (while the brokers are still there), then the brokers.
# Each pid is the process itself, never the end of a pipe: a
# `kill -TERM -- -PGID` may take out the log pipes first, and the services
# must still get their own SIGTERM and be waited for.
brokers=()
services=()
stop() {
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}
cleanup() {
  trap - INT TERM EXIT
  echo "stopping…" >&2 || true
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
  "target/release/$service" > >(tee "$run/logs/$service.log" | sed -u "s/^/[$service] /") 2>&1 &
  services+=($!)
done

board="http://127.0.0.1:8080/?household=weasleys&token=weasleys-token-change-me-please"
if $demo; then
  ingest_addr=${INGEST_HTTP_ADDR:-127.0.0.1:8081}
  board="http://${NOTIFIER_HTTP_ADDR:-127.0.0.1:8080}/?household=weasleys&token=demo-token-weasleys-0001"
  # ingest must be subscribed before the first message (a fresh broker keeps
  # nothing for a session it has never seen).
  for _ in $(seq 60); do
    curl -fsS -o /dev/null "http://$ingest_addr/readyz" 2>/dev/null && break
    sleep 1
  done
  # Its own process (not a pipeline), so that its pid is the one stopped.
  target/release/whereabouts-sim run --config "$WHEREABOUTS_CONFIG" --seed 1 \
    --day 6m --start 07:00 --loop --mqtt-url "$MQTT_URL" \
    --http-url "http://$ingest_addr" >"$run/logs/simulator.log" 2>&1 &
  pids+=($!)
fi

cat <<INFO
Whereabouts is running (logs in ${run#"$root"/}/logs):
  MQTT           $MQTT_URL   (point the OwnTracks app here; topic owntracks/<user>/<device>)
  NATS           $NATS_URL
  HTTP mode      http://127.0.0.1:8081/pub
  board          $board
  metrics        :8081/metrics (ingest) :8082/metrics (presence) :8080/metrics (notifier)
Press Ctrl-C to stop.
INFO
wait
