#!/usr/bin/env bash
# Packs a module folder (module.json at its root) into a bundle with
# `zf module pack`, the packer the repository itself uses:
#   scripts/pack-module.sh DIR [OUT]   (OUT defaults to <name>-<version>.tar.gz)
# The bundle is reproducible: same folder, same bytes, same digest. Prints
# "<path> sha256:<hex>".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:?usage: scripts/pack-module.sh DIR [OUT]}
zf="$root/target/release/zf"
# The same build as up.sh and docker-images.sh (all binaries, one feature
# set), so it is a no-op after either.
(cd "$root" && cargo build --quiet --release --bins)
if [ $# -ge 2 ]; then exec "$zf" module pack "$dir" -o "$2"; else exec "$zf" module pack "$dir"; fi
