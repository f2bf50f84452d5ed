#!/usr/bin/env bash
# Runs every test: unit, corpus, and end-to-end against real nats-server and
# mosquitto that the tests start themselves on free ports; Prometheus scrapes
# the services (tests/tests/prometheus.rs) and promtool checks deploy/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --browser --prometheus
# --no-fail-fast: one failing test binary must not hide the others.
cargo test --workspace --all-targets --no-fail-fast "$@"
