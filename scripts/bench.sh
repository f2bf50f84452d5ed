#!/usr/bin/env bash
# Benchmarks (release build): scripts/bench.sh ingest|ingest-flood|presence|notifier|all
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p whereabouts-tests --bins
what=${1:-all}
if [ "$what" = all ]; then
  for b in ingest ingest-flood presence notifier; do target/release/bench "$b"; done
else
  target/release/bench "$what"
fi
