#!/usr/bin/env bash
# Chaos soak: scripts/chaos.sh DURATION_S [SEED]
# Faults at random intervals (SIGKILL and SIGSTOP of the lead, auxiliary nodes,
# management instances and the repository; nats-server restarts) while keyed
# monitors and sync operations run; then checks nothing was lost or repeated
# and exactly one node leads. Exits non-zero on any violation. The same seed
# gives the same fault schedule.
set -euo pipefail
cd "$(dirname "$0")/.."
nats=$(scripts/install-deps.sh | tail -n 1)
export ZF_NATS_SERVER="$nats"
export ZF_TEST_LOG=${ZF_TEST_LOG:-warn}
# As shipped: every JetStream write on disk before its ack, so a crash of
# nats-server loses nothing acknowledged (SPEC §12).
export ZF_NATS_SYNC_ALWAYS=1
cargo build --release --bins --quiet
exec target/release/zf-chaos "$@"
