#!/usr/bin/env bash
# Builds the zerofoot image (and, offline, a nats image) for docker-compose.
#   - A container registry answers: `docker build -f docker/Dockerfile` (official
#     rust and debian images), tagged ${ZF_IMAGE:-zerofoot:latest}; nats comes
#     from the official nats image.
#   - No registry (or ZF_OFFLINE=1): the release binaries are built on this
#     host and an image is made from them, their shared libraries, busybox
#     (static) for sh and the usual tools, jq, gojq, curl and the OpenSSH client
#     (with libnss-wrapper) for the stock modules, the OpenSSH server for
#     docker-compose.yml's example machine,
#     and the nats-server binary from scripts/install-deps.sh. No base image
#     is pulled.
# Prints the variables to export for docker-compose on its last line
# (ZF_IMAGE, ZF_NATS_IMAGE, ZF_LB_IMAGE).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
image=${ZF_IMAGE:-zerofoot:latest}

registry_answers() {
  [ "${ZF_OFFLINE:-0}" = 1 ] && return 1
  docker image inspect debian:bookworm-slim >/dev/null 2>&1 && docker image inspect rust:1-bookworm >/dev/null 2>&1 && return 0
  timeout 60 docker pull -q debian:bookworm-slim >/dev/null 2>&1
}

if registry_answers; then
  echo "building $image from docker/Dockerfile" >&2
  docker build -q -f docker/Dockerfile -t "$image" . >&2
  echo "ZF_IMAGE=$image ZF_NATS_IMAGE=${ZF_NATS_IMAGE:-nats:2.10-alpine} ZF_LB_IMAGE=${ZF_LB_IMAGE:-haproxy:2.8-alpine}"
  exit 0
fi

echo "no container registry: making $image from host-built binaries" >&2
nats=$(scripts/install-deps.sh | tail -n 1)
missing=""
if [ ! -x /bin/busybox ] || ! /bin/busybox --list >/dev/null 2>&1; then missing+=" busybox-static"; fi
[ -x /usr/sbin/haproxy ] || missing+=" haproxy"
if [ -n "$missing" ]; then
  apt-get update -qq >/dev/null && apt-get install -y -qq $missing >/dev/null
fi
cargo build --release --bins --quiet

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{bin,usr/bin,usr/sbin,usr/local/bin,etc/ssl/certs,tmp,data,root}
chmod 1777 "$rootfs/tmp"

# Copies a program and every shared library it loads (ldd) into the rootfs.
with_libs() { # program destination
  cp -L "$1" "$rootfs$2"
  # A static program (gojq) has no libraries: ldd and grep find nothing.
  { ldd "$1" 2>/dev/null || true; } | { grep -o '/[^ ]*' || true; } | while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
}

cp /bin/busybox "$rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -sf /bin/busybox "$rootfs/bin/$applet"
done
with_libs "$(command -v jq)" /usr/bin/jq
with_libs "$(command -v gojq)" /usr/bin/gojq
with_libs "$(command -v curl)" /usr/bin/curl
# The ssh module: the OpenSSH client and its agent, and nss_wrapper, which
# lends drivers (each under a uid of its own) the passwd entry ssh wants.
for tool in ssh ssh-agent ssh-add ssh-keygen ssh-keyscan; do
  with_libs "$(command -v "$tool")" "/usr/bin/$tool"
done
# docker-compose.yml's example machine: the OpenSSH server and its script.
with_libs /usr/sbin/sshd /usr/sbin/sshd
# docker-compose.ha.yml's load balancer.
with_libs /usr/sbin/haproxy /usr/local/bin/haproxy
cp docker/example-host.sh "$rootfs/usr/local/bin/example-host"
chmod 755 "$rootfs/usr/local/bin/example-host"
nss_wrapper=$(ls /usr/lib/*/libnss_wrapper.so | head -n 1)
mkdir -p "$rootfs$(dirname "$nss_wrapper")"
with_libs "$nss_wrapper" "$nss_wrapper"
for bin in zf-management zf-repository zf-agent-node zf-driver-shim zf; do
  with_libs "target/release/$bin" "/usr/local/bin/$bin"
  strip "$rootfs/usr/local/bin/$bin"
done
cp -L "$nats" "$rootfs/usr/local/bin/nats-server"
cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/" 2>/dev/null || true
# zerofoot-driver: the group drivers run in, each under its own uid.
# sshd: the example machine's privilege separation user.
printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' \
  'zerofoot-driver:x:999:999::/nonexistent:/bin/false' \
  'sshd:x:998:65534::/run/sshd:/bin/false' >"$rootfs/etc/passwd"
printf '%s\n' 'root:x:0:' 'zerofoot-driver:x:999:' 'nogroup:x:65534:' >"$rootfs/etc/group"
echo 'hosts: files dns' >"$rootfs/etc/nsswitch.conf"

tar -C "$rootfs" -c . | docker import \
  -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  -c 'WORKDIR /data' \
  - "$image" >/dev/null
echo "made $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MiB", $1/1048576}'))" >&2
echo "ZF_IMAGE=$image ZF_NATS_IMAGE=$image ZF_LB_IMAGE=$image"
