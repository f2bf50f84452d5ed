#!/usr/bin/env bash
# Runs every test: unit, corpus, and end-to-end against real nats-server and
# mosquitto that the tests start themselves on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --browser
cargo test --workspace --all-targets "$@"
