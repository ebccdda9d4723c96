#!/usr/bin/env bash
# Builds zerofoot and runs a local cluster in the foreground:
#   nats-server (JetStream, every write synced to disk), zf-repository,
#   zf-management on 127.0.0.1:8080 and three agent nodes.
# Data and logs live under .zerofoot/ (git-ignored). Ctrl-C stops everything.
# Environment: ZF_CLUSTER (default "default"), ZF_HTTP_ADDR (127.0.0.1:8080),
# ZF_NATS_PORT (4222).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
data="$root/.zerofoot"
logs="$data/logs"
mkdir -p "$logs" "$data/nats"

nats=$(scripts/install-deps.sh | tail -n 1)
echo "building release binaries..."
cargo build --release --bins --quiet
bin="$root/target/release"

cluster=${ZF_CLUSTER:-default}
port=${ZF_NATS_PORT:-4222}
http=${ZF_HTTP_ADDR:-127.0.0.1:8080}
export ZF_CLUSTER="$cluster" ZF_NATS_URL="nats://127.0.0.1:$port"
# The cluster key that seals resource secrets at rest, made once.
if [ ! -s "$data/secrets.key" ]; then
  (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$data/secrets.key")
fi
export ZF_SECRETS_KEY_FILE="$data/secrets.key"
# The repository signs modules with this key pair; the nodes run only modules it signed.
if [ ! -s "$data/signing.key" ]; then
  pair=$("$bin/zf-repository" keygen)
  (umask 077 && jq -r .private_key <<<"$pair" >"$data/signing.key")
  jq -r .public_key <<<"$pair" >"$data/trusted.keys"
fi

# NATS users: one per service role, each allowed only its own subjects, and
# admin for the NATS CLI. Passwords are made once and kept.
# Each node has its own user, which may speak only for that node; a node
# keeps the id its data dir already has.
node_ids=()
for i in 1 2 3; do
  node_ids+=("$(cat "$data/node-$i/node-id" 2>/dev/null || echo "node-$i")")
done
"$bin/zf-management" nats-auth --dir "$data/nats-auth" --cluster "$cluster" \
  --nodes "$(IFS=,; echo "${node_ids[*]}")" >/dev/null
as_user() { # user suffix: the environment that logs a service in as its NATS user
  echo "ZF_NATS_USER=zf-$cluster-$1" "ZF_NATS_PASSWORD_FILE=$data/nats-auth/zf-$cluster-$1.password"
}

cat >"$data/nats.conf" <<CONF
listen: 127.0.0.1:$port
server_name: zf-local
jetstream {
  store_dir: "$data/nats"
  # Acknowledged writes are on disk before the ack (SPEC §12).
  sync_interval: always
}
# Nothing anonymous: every client logs in as one of these users.
include "nats-auth/auth.conf"
CONF

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped; data kept in $data"
}
trap stop INT TERM EXIT

start() { # name, command...
  local name=$1
  shift
  "$@" >>"$logs/$name.log" 2>&1 &
  pids+=($!)
  printf '  %-12s pid %-7s log %s\n' "$name" "$!" "$logs/$name.log"
}

echo "starting cluster '$cluster':"
start nats-server "$nats" -c "$data/nats.conf"
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
start repository env $(as_user repository) "$bin/zf-repository" --signing-key-file "$data/signing.key"
start management env $(as_user management) "$bin/zf-management" --http-addr "$http" --id mgmt-1
for i in 1 2 3; do
  id=${node_ids[$((i - 1))]}
  start "node-$i" env $(as_user "node-$id") "$bin/zf-agent-node" --id "$id" --data-dir "$data/node-$i" --trusted-keys-file "$data/trusted.keys"
done

for _ in $(seq 100); do
  curl -sf "http://$http/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
if [ "$(id -u)" = 0 ]; then
  drivers="each under its own uid in group zerofoot-driver (install-deps.sh made the account), confined by Landlock"
else
  drivers="as $(id -un): the nodes are not root, so drivers share their user; Landlock still confines them (run as root for per-driver users)"
fi
cat <<INFO

zerofoot is up:
  HTTP API   http://$http   (try: curl -s http://$http/v1/cluster | jq)
  NATS       nats://127.0.0.1:$port   (try: nats --server nats://127.0.0.1:$port --user admin --password "\$(cat $data/nats-auth/admin.password)" sub 'zf.$cluster.>')
  data       $data   (secrets key: $data/secrets.key)
  drivers    $drivers
Press Ctrl-C to stop every process.
INFO
wait -n "${pids[@]}" || true
echo "a process exited; see $logs"
