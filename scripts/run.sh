#!/usr/bin/env bash
# Runs the whole stack on loopback: nats-server (JetStream), mosquitto with the
# project's config, and every Whereabouts service with the example config.
# State lives in .run/ (delete it to start afresh). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

scripts/setup.sh
cargo build --release --bins

run="$root/.run"
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

cat <<INFO
Whereabouts is running (logs in .run/logs):
  MQTT           $MQTT_URL   (point the OwnTracks app here; topic owntracks/<user>/<device>)
  NATS           $NATS_URL
  HTTP mode      http://127.0.0.1:8081/pub
  board          http://127.0.0.1:8080/?household=weasleys&token=weasleys-token-change-me-please
  metrics        :8081/metrics (ingest) :8082/metrics (presence) :8080/metrics (notifier)
Press Ctrl-C to stop.
INFO
wait
