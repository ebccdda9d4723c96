#!/usr/bin/env bash
# Fuzzes what reads untrusted bytes, with cargo-fuzz (libFuzzer):
#   bundle_inspect  module bundles: validate, and unpack what is accepted
#   driver_output   one line of driver stdout
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET (default 60)] [TARGET...]
# Installs cargo-fuzz when missing. libFuzzer needs nightly flags; the stable
# toolchain accepts them with RUSTC_BOOTSTRAP=1. A crash leaves its input in
# fuzz/artifacts/<target>/ and fails the run. The corpora (fuzz/corpus/,
# git-ignored) start from the stock modules' bundles.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(bundle_inspect driver_output)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1

mkdir -p fuzz/corpus/bundle_inspect fuzz/corpus/driver_output
for module in services/repository/modules/*/; do
  scripts/pack-module.sh "$module" "fuzz/corpus/bundle_inspect/$(basename "$module").tar.gz" >/dev/null
done
printf '%s' '{"type":"event","key":"1","data":{"n":1}}' >fuzz/corpus/driver_output/event
printf '%s' '{"type":"log","level":"warn","msg":"m"}' >fuzz/corpus/driver_output/log

cd fuzz
for target in "${targets[@]}"; do
  echo "fuzzing $target for ${seconds}s"
  cargo fuzz run -O "$target" "corpus/$target" -- -max_total_time="$seconds" 2>&1 | grep -E '^(#[0-9]+\s+DONE|Done|==|SUMMARY|artifact_prefix|Test unit)' || true
  if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
    echo "fuzz: $target found a crash: fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
echo "fuzz: no crash in ${targets[*]}"
