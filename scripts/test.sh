#!/usr/bin/env bash
# Every check and test of the workspace, as CI runs it: installs what the
# tests need, checks formatting and lints, builds the service binaries, then
# runs the unit tests and the end-to-end tests (real nats-server, real
# processes, real HTTP).
set -euo pipefail
cd "$(dirname "$0")/.."

nats=$(scripts/install-deps.sh | tail -n 1)
export ZF_NATS_SERVER="$nats"
echo "using $("$nats" --version)"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
# End-to-end tests start a nats-server and several services each: two at a
# time is what a 2-core machine takes without starving heartbeats.
cargo test --workspace -- --test-threads=2

# The HTTP API against its own OpenAPI document: schemathesis on a throwaway
# cluster (no 5xx, every answer's status, content type and body as documented).
scripts/api-fuzz.sh

# A short chaos soak: faults at random while monitors and sync operations run.
scripts/chaos.sh 60

# The benchmarks with fewer samples: every scenario still runs end to end
# (its correctness checks fail the run); the figures are reported, not asserted.
scripts/bench.sh --quick

# The docker-compose deployments, end to end, where a Docker engine answers:
# the single-server file, then the HA file under NATS server kills,
# partitions, a management kill and a full restart.
if docker info >/dev/null 2>&1; then
  scripts/compose-test.sh
  scripts/compose-ha-test.sh
else
  echo "SKIPPED scripts/compose-test.sh and scripts/compose-ha-test.sh: no Docker engine answers 'docker info' on this machine"
fi
