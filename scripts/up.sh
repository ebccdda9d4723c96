#!/usr/bin/env bash
# Builds zerofoot and runs a local cluster in the foreground:
#   nats-server (JetStream, every write synced to disk), zf-repository,
#   zf-management on 127.0.0.1:8080 and three agent nodes.
# Data and logs live under .zerofoot/ (git-ignored). A process that dies is
# started again after a second, so you can break the cluster on purpose
# (`scripts/kill.sh lead`) and watch it carry on. Ctrl-C stops everything.
# Environment: ZF_CLUSTER (default "default"), ZF_HTTP_ADDR (127.0.0.1:8080),
# ZF_NATS_PORT (4222), ZF_UP_DATA (the data folder, default .zerofoot),
# ZF_BIN_DIR (use the binaries there instead of building release ones).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
data="${ZF_UP_DATA:-$root/.zerofoot}"
logs="$data/logs"
mkdir -p "$logs" "$data/nats"

nats=$(scripts/install-deps.sh | tail -n 1)
if [ -n "${ZF_BIN_DIR:-}" ]; then
  bin=$ZF_BIN_DIR
else
  echo "building release binaries..."
  cargo build --release --bins --quiet
  bin="$root/target/release"
fi

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

# Runs a command again a second after it exits, until up.sh stops; the
# keeper passes its SIGTERM on and waits for the command to end.
keep() { # name, command...
  local name=$1 child=
  shift
  trap 'kill -TERM $child 2>/dev/null; wait $child 2>/dev/null; exit 0' TERM
  while :; do
    "$@" >>"$logs/$name.log" 2>&1 &
    child=$!
    echo "$child" >"$logs/$name.pid"
    wait "$child" && code=0 || code=$?
    echo "up.sh: $name exited ($code); starting it again in 1 s" | tee -a "$logs/$name.log" >&2
    sleep 1
  done
}

start() { # name, command...
  local name=$1
  keep "$@" &
  pids+=($!)
  printf '  %-12s log %s\n' "$name" "$logs/$name.log"
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
A process that dies starts again; try: scripts/kill.sh lead
Press Ctrl-C to stop every process.
INFO
wait
