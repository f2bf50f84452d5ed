#!/usr/bin/env bash
# Runs every test: unit, corpus, and end-to-end against real nats-server and
# mosquitto that the tests start themselves on free ports; Prometheus scrapes
# the services (tests/tests/prometheus.rs) and promtool checks deploy/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --browser --prometheus
# The Python example consumer (tests/tests/examples.rs) runs in .venv with
# nats-py; without python3 that test skips and says so.
if command -v python3 >/dev/null 2>&1; then
    if ! .venv/bin/python -c 'import nats' >/dev/null 2>&1; then
        python3 -m venv .venv && .venv/bin/pip install --quiet 'nats-py>=2.6,<3' ||
            echo "test.sh: could not make .venv with nats-py (Debian: apt-get install python3-venv)" >&2
    fi
fi
# --no-fail-fast: one failing test binary must not hide the others.
cargo test --workspace --all-targets --no-fail-fast "$@"
