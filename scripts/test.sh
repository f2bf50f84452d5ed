#!/usr/bin/env bash
# Runs every test: unit, corpus, and end-to-end against real nats-server and
# mosquitto that the tests start themselves on free ports; Prometheus scrapes
# the services (tests/tests/prometheus.rs) and promtool checks deploy/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --browser --prometheus
cargo test --workspace --all-targets "$@"
