#!/usr/bin/env bash
# Benchmarks (release build):
#   scripts/bench.sh ingest|ingest-flood|presence|notifier|pipeline|all [--quick]
#     [--source mosquitto|nats-mqtt|both]
# `pipeline` measures the raw baselines and the whole pipeline in one run;
# `all` runs each stage alone, then `pipeline`. `--quick` shortens `pipeline`;
# `--source` picks the phones' MQTT broker for it (default mosquitto).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p whereabouts-tests --bins
what=${1:-all}
shift || true
if [ "$what" = all ]; then
  for b in ingest ingest-flood presence notifier; do target/release/bench "$b"; done
  target/release/bench pipeline "$@"
else
  target/release/bench "$what" "$@"
fi
