#!/usr/bin/env bash
# Packs a module folder (module.json at its root) into a bundle:
#   scripts/pack-module.sh DIR [OUT]   (OUT defaults to <name>-<version>.tar.gz)
# The bundle is reproducible: same folder, same bytes, same digest.
set -euo pipefail
dir=${1:?usage: scripts/pack-module.sh DIR [OUT]}
[ -f "$dir/module.json" ] || { echo "error: $dir has no module.json" >&2; exit 1; }
name=$(jq -r .name "$dir/module.json")
version=$(jq -r .version "$dir/module.json")
out=${2:-"$name-$version.tar.gz"}
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
(cd "$dir" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
  tar --no-recursion --owner=0 --group=0 --numeric-owner --mtime=@0 -cf - -T - |
  gzip -n >"$out")
echo "$out sha256:$(sha256sum "$out" | cut -d' ' -f1)"
