#!/usr/bin/env bash
# Benchmarks (release build, fresh local cluster per scenario), each figure
# next to the raw cost of the same work measured in the same run.
#   scripts/bench.sh [--quick]
# Prints a Markdown table; the same figures go to target/bench/latest.json.
set -euo pipefail
cd "$(dirname "$0")/.."
nats=$(scripts/install-deps.sh | tail -n 1)
export ZF_NATS_SERVER="$nats"
cargo build --release --bins --quiet
# Benchmarks keep logs quiet: logging every operation would be measured too.
# The one exception is the services' phase timings of a sync operation (four
# lines per operation), which the sync scenario reports.
export ZF_TEST_LOG=${ZF_TEST_LOG:-warn,zerofoot::timing=debug}
# Figures are measured with every JetStream write synced to disk (SPEC §12).
export ZF_NATS_SYNC_ALWAYS=1
# Ten thousand monitors are twenty thousand processes (shim and driver),
# near the kernel's default of 32768 process ids with the rest: a
# full run of the monitors scenario raises it where it may, and puts it back.
args=" $* "
if [[ $args != *" --quick "* && ($args != *" --only "* || $args == *" --only monitors "*) ]]; then
  pid_max=$(cat /proc/sys/kernel/pid_max)
  if ((pid_max < 65536)); then
    if echo 4194304 >/proc/sys/kernel/pid_max 2>/dev/null; then
      trap 'echo "$pid_max" >/proc/sys/kernel/pid_max' EXIT
      echo "bench: kernel.pid_max raised from $pid_max to 4194304 for the monitors scenario (put back at the end)" >&2
    else
      echo "bench: kernel.pid_max is $pid_max and cannot be raised here; the monitors scenario (10000 monitors) will say so" >&2
    fi
  fi
fi
target/release/zf-bench "$@"
