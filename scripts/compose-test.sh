#!/usr/bin/env bash
# Proves docker-compose.yml: builds the images (offline path when no registry
# answers), starts the stack under its own project name (the operator's keys
# and tokens given as variables, which only the nats-auth service sees and
# writes into files), checks that no secret is in any service's environment,
# that each service mounts only the key files and NATS password it needs and
# that each node logs in to NATS as its own user; then through the published
# HTTP port uploads a module, seals a resource secret that a node opens, runs
# a sync operation, a command over SSH on the example host, a hostile module that must reach nothing of the node it
# runs on (as tests/tests/isolation.rs, in the containers) while an innocent
# one runs beside it, SIGKILLs a node's driver spawner under a driver (no
# zombie may be left), runs a keyed monitor, kills the lead's container, checks the
# monitor resumed with every event exactly once, that NATS refuses anonymous
# clients and that no service was refused a subject, then removes everything
# (`down -v`). docker-compose.ha.yml is validated (`config -q`), not started.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if command -v docker-compose >/dev/null; then compose=(docker-compose); else compose=(docker compose); fi
fail() { echo "compose-test: FAIL: $*" >&2; exit 1; }
project="zftest$$"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
images=$(scripts/docker-images.sh | tail -n 1) || fail "building the images failed"
eval "export $images"
export ZF_HTTP_PORT=$port
token="test-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export ZF_API_TOKENS="admin:$token"
pair=$(docker run --rm "$ZF_IMAGE" zf-repository keygen)
export ZF_SIGNING_KEY="$(jq -r .private_key <<<"$pair")" ZF_TRUSTED_KEYS="$(jq -r .public_key <<<"$pair")"
export ZF_SECRETS_KEY="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
cluster=${ZF_CLUSTER:-default}
api="http://127.0.0.1:$port"
dc() { "${compose[@]}" -p "$project" "$@"; }
# curl with the admin token.
curl() { command curl -H "Authorization: Bearer $token" "$@"; }
cleanup() {
  status=$?
  if [ $status -ne 0 ]; then dc logs --tail 30 >&2 || true; fi
  dc down -v --remove-orphans >/dev/null 2>&1 || true
  exit $status
}
trap cleanup EXIT

# Polls "$@" (a command) every 0.2 s until it succeeds, at most $1 seconds.
wait_for() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "timed out after ${seconds}s waiting for $what"
    sleep 0.2
  done
}

"${compose[@]}" -f docker-compose.ha.yml config -q || fail "docker-compose.ha.yml does not validate"
echo "compose-test: docker-compose.ha.yml validates"

echo "compose-test: starting project $project on port $port"
dc up -d >/dev/null
wait_for 120 "management /healthz" curl -sf "$api/healthz"
cluster_ready() { [ "$(curl -sf "$api/v1/cluster" | jq '[.nodes[] | select(.status == "up")] | length')" = 3 ] && curl -sf "$api/v1/cluster" | jq -e '.lead.node' >/dev/null; }
wait_for 60 "three nodes up and a lead" cluster_ready
stock_modules() { curl -sf "$api/v1/modules/shell" >/dev/null && curl -sf "$api/v1/modules/ssh" >/dev/null; }
wait_for 60 "the stock modules" stock_modules

# No secret in any running service's environment: neither in its container's
# configuration nor in what its first process started with.
services=$(dc config --services | grep -vx nats-auth)
for svc in $services; do
  id=$(dc ps -q "$svc")
  [ -n "$id" ] || fail "no container for $svc"
  env=$(docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$id"; dc exec -T "$svc" cat /proc/1/environ | tr '\0' '\n')
  leaked=$(grep -E '^(ZF_SECRETS_KEY|ZF_SECRETS_PREVIOUS_KEYS|ZF_SIGNING_KEY|ZF_API_TOKENS|ZF_NATS_PASSWORD)=.' <<<"$env" | cut -d= -f1 | sort -u | tr '\n' ' ' || true)
  [ -z "$leaked" ] || fail "$svc has a secret in its environment: $leaked"
  for value in "$token" "$ZF_SECRETS_KEY" "$ZF_SIGNING_KEY"; do
    if grep -qF "$value" <<<"$env"; then fail "$svc has a secret value in its environment"; fi
  done
done
echo "compose-test: no secret in any container's environment"

# Each service mounts only the volumes it needs: the key files and its own
# NATS password (nats-auth, holding every password, only nats-server).
volumes_of() { docker inspect -f '{{range .Mounts}}{{if eq .Type "volume"}}{{println .Name}}{{end}}{{end}}' "$(dc ps -q "$1")" | sed "s/^${project}_//" | grep . | sort | tr '\n' ' '; }
expect_volumes() { # service, its volumes (sorted)
  local got
  got=$(volumes_of "$1")
  [ "$got" = "$2 " ] || fail "$1 mounts [$got], expected [$2 ]"
}
expect_volumes nats "nats-auth nats-data"
expect_volumes repository "repository-auth signing-key"
expect_volumes management "api-tokens management-auth secrets-key"
for n in 1 2 3; do expect_volumes "node-$n" "node-$n-auth node-$n-data secrets-key trusted-keys"; done
absent() { # service, paths it must not see
  local svc=$1 path
  shift
  for path in "$@"; do
    dc exec -T "$svc" test ! -e "$path" || fail "$svc sees $path"
  done
}
absent repository /run/zf-secrets/secrets.key /run/zf-tokens/tokens /run/zf-trusted/trusted.keys
absent management /run/zf-signing/signing.key
for n in 1 2 3; do absent "node-$n" /run/zf-signing/signing.key /run/zf-tokens/tokens; done
# The keys the operator gave are the ones written, private to root.
[ "$(dc exec -T management cat /run/zf-secrets/secrets.key)" = "$ZF_SECRETS_KEY" ] || fail "management's secrets key is not ZF_SECRETS_KEY"
[ "$(dc exec -T node-1 cat /run/zf-secrets/secrets.key)" = "$ZF_SECRETS_KEY" ] || fail "node-1's secrets key is not ZF_SECRETS_KEY"
[ "$(dc exec -T repository cat /run/zf-signing/signing.key)" = "$ZF_SIGNING_KEY" ] || fail "the repository's signing key is not ZF_SIGNING_KEY"
[ "$(dc exec -T node-1 cat /run/zf-trusted/trusted.keys)" = "$ZF_TRUSTED_KEYS" ] || fail "node-1's trusted keys are not ZF_TRUSTED_KEYS"
modes=$(dc exec -T management stat -c '%a %U %n' /run/zf-secrets/secrets.key /run/zf-tokens/tokens /run/zf-nats/password)
[ "$(awk '$1 != "600" || $2 != "root"' <<<"$modes")" = "" ] || fail "management's key files are not 0600 root: $modes"
echo "compose-test: each service mounts only its own key files and NATS password"

# Each node logs in to NATS as its own user, with a password of its own; the
# shared agent user is gone.
passwords=""
for n in 1 2 3; do
  user=$(dc exec -T "node-$n" sh -c 'echo "$ZF_NATS_USER"') || fail "cannot read node-$n's NATS user"
  [ "$user" = "zf-$cluster-node-node-$n" ] || fail "node-$n logs in as $user"
  passwords+="$(dc exec -T "node-$n" cat /run/zf-nats/password)"$'\n'
done
[ "$(sort -u <<<"$passwords" | grep -c .)" = 3 ] || fail "the nodes share a NATS password"
logged_in=$(dc exec -T nats wget -q -O - 'http://127.0.0.1:8222/connz?auth=1&limit=1024' | jq -r '[.connections[].authorized_user] | unique | join(" ")')
for n in 1 2 3; do
  grep -qw "zf-$cluster-node-node-$n" <<<"$logged_in" || fail "no NATS connection of zf-$cluster-node-node-$n: $logged_in"
done
if grep -qw "zf-$cluster-agent" <<<"$logged_in"; then fail "a node logged in as the shared agent user: $logged_in"; fi
echo "compose-test: each node logs in to NATS as its own user ($logged_in)"

work=$(mktemp -d)
mkdir -p "$work/counter/bin"
cat >"$work/counter/module.json" <<'JSON'
{"name": "counter", "version": "1.0.0", "entrypoint": "bin/run", "operations": {"count": {"kind": "async"}}}
JSON
cat >"$work/counter/bin/run" <<'SH'
#!/bin/sh
input=$(cat)
n=$(printf '%s' "$input" | jq -r '.checkpoint.n // 0')
total=$(printf '%s' "$input" | jq -r '.params.total')
while [ "$n" -lt "$total" ]; do
  n=$((n + 1))
  echo "{\"type\":\"event\",\"key\":\"$n\",\"data\":{\"n\":$n}}"
  [ $((n % 10)) -eq 0 ] && echo "{\"type\":\"checkpoint\",\"data\":{\"n\":$n}}"
  sleep 0.02
done
SH
chmod +x "$work/counter/bin/run"
bundle=$(scripts/pack-module.sh "$work/counter" "$work/counter.tar.gz" | cut -d' ' -f1)
code=$(curl -s -o "$work/upload.json" -w '%{http_code}' --data-binary @"$bundle" "$api/v1/modules")
[ "$code" = 201 ] || fail "upload answered $code: $(cat "$work/upload.json")"
echo "compose-test: module uploaded"

result=$(curl -sf "$api/v1/operations" -H 'content-type: application/json' \
  -d '{"module": "shell", "operation": "run", "params": {"command": "echo", "args": ["hello from a container"]}}')
[ "$(jq -r .state <<<"$result")" = complete ] || fail "sync operation: $result"
[ "$(jq -r .result.stdout <<<"$result")" = "hello from a container" ] || fail "sync result: $result"
echo "compose-test: sync operation complete"

# The example machine: a command run on it over SSH, twice (the second
# through the node's kept connection, whichever node runs it).
body=$(dc exec -T example-host example-host resource | jq -c 'del(.id)') || fail "example-host printed no resource"
code=$(curl -s -o "$work/host.json" -w '%{http_code}' -X PUT "$api/v1/resources/example-host" \
  -H 'content-type: application/json' -d "$body")
[ "$code" = 201 ] || fail "the example-host resource answered $code: $(cat "$work/host.json")"
for round in 1 2; do
  result=$(curl -s "$api/v1/operations" -H 'content-type: application/json' \
    -d '{"module": "ssh", "operation": "exec", "resource": "example-host", "params": {"command": "uname", "args": ["-s"]}}')
  [ "$(jq -r .result.stdout <<<"$result")" = Linux ] || fail "ssh exec on example-host (round $round): $result"
done
echo "compose-test: ssh exec on the example host"

# A resource secret, sealed by management with the key file, opened by a node
# with the same key: the driver answers the secret's digest (a secret value
# itself would be masked).
mkdir -p "$work/vault/bin"
cat >"$work/vault/module.json" <<'JSON'
{"name": "vault", "version": "1.0.0", "entrypoint": "bin/run", "operations": {"digest": {"kind": "sync"}}}
JSON
cat >"$work/vault/bin/run" <<'SH'
#!/bin/sh
digest=$(jq -j '.resource.secrets.password' | sha256sum | cut -d' ' -f1)
echo "{\"type\":\"result\",\"data\":{\"digest\":\"$digest\"}}"
SH
chmod +x "$work/vault/bin/run"
bundle=$(scripts/pack-module.sh "$work/vault" "$work/vault.tar.gz" | cut -d' ' -f1)
code=$(curl -s -o "$work/upload.json" -w '%{http_code}' --data-binary @"$bundle" "$api/v1/modules")
[ "$code" = 201 ] || fail "upload of vault answered $code: $(cat "$work/upload.json")"
secret="pw-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
code=$(curl -s -o "$work/resource.json" -w '%{http_code}' -X PUT "$api/v1/resources/db-1" -H 'content-type: application/json' \
  -d "{\"kind\": \"db\", \"config\": {}, \"secrets\": {\"password\": \"$secret\"}}")
[ "$code" = 201 ] || fail "a resource with a secret answered $code: $(cat "$work/resource.json")"
result=$(curl -sf "$api/v1/operations" -H 'content-type: application/json' \
  -d '{"module": "vault", "operation": "digest", "resource": "db-1"}')
[ "$(jq -r .result.digest <<<"$result")" = "$(printf '%s' "$secret" | sha256sum | cut -d' ' -f1)" ] || fail "the node did not open the secret: $result"
echo "compose-test: a resource secret sealed by management opened on a node"

# A hostile module in the containers, as tests/tests/isolation.rs runs one
# outside Docker: it tries to reach what only the node may (the node's
# environment and command line, its redb file, the secrets key, its NATS
# password and folder, another module's bundle and its own, signalling the
# node, 8 GiB, a fork bomb, NATS without credentials) and reports each
# attempt; every one must be denied, while an innocent module runs beside it.
# A sync operation goes to any node of the queue group and a driver cannot
# list /data/modules (that is one of the attempts), so the victim is run until
# its bundle is unpacked on all three nodes: wherever the attack lands, the
# victim's bundle is at /data/modules/<its digest> there.
mkdir -p "$work/victim/bin" "$work/hostile/bin"
cat >"$work/victim/module.json" <<'JSON'
{"name": "victim", "version": "1.0.0", "entrypoint": "bin/run", "operations": {"run": {"kind": "sync"}, "hold": {"kind": "sync", "retries": 0}}}
JSON
cat >"$work/victim/bin/run" <<'SH'
#!/bin/sh
cat >/dev/null
[ "$1" = hold ] && exec sleep 600
echo '{"type":"result","data":"fine"}'
SH
cat >"$work/hostile/module.json" <<'JSON'
{"name": "hostile", "version": "1.0.0", "entrypoint": "bin/run", "operations": {"attack": {"kind": "sync", "timeout_ms": 60000, "retries": 0, "limits": {"processes": 32, "memory_mb": 512}}}}
JSON
# Tries everything; writes `name: denied (<why>)` or `name: ALLOWED <evidence>`
# a line each, and answers with the lines (busybox sh and applets, jq, curl).
cat >"$work/hostile/bin/run" <<'SH'
#!/bin/sh
input=$(cat)
param() { printf '%s' "$input" | jq -r ".params.$1"; }
# What a program the driver starts holds: ls's own descriptors are 0-2 and
# the one it reads the directory with, which is 3 unless 3 was inherited.
ls /proc/self/fd > "$HOME/fds"
uid=$(id -u)
hold=$(param hold_s)
node_pid=$(param "node_pids[\"$ZF_NODE_ID\"]")
bundle=$(cd "$(dirname "$0")/.." && pwd)
report="$HOME/report"
try() { # name command...
  name=$1; shift
  if out=$("$@" 2>&1); then
    echo "$name: ALLOWED $(printf '%s' "$out" | head -c 120 | tr '\n' ' ')" >> "$report"
  else
    echo "$name: denied ($(printf '%s' "$out" | head -c 120 | tr '\n' ' '))" >> "$report"
  fi
}
# The node's command line: what /proc/<node_pid>/cmdline holds counts only if
# it is the node's (in a PID namespace of the driver's own, pid 1 is its init).
node_cmdline() {
  cmdline=$(tr '\0' ' ' < "/proc/$node_pid/cmdline") || return 1
  echo "$cmdline"
  case $cmdline in *zf-agent-node*) return 0 ;; *) echo "(not the node's)"; return 1 ;; esac
}
# NATS with the only credentials a driver could find: none. A heartbeat in
# another node's name, then PING: a PONG would mean the server took it all.
nats_publish() {
  printf 'CONNECT {"verbose":true}\r\nPUB zf.%s.node.%s.heartbeat 2\r\nhi\r\nPING\r\n' "$(param cluster)" "$(param other_node)" |
    curl -s --max-time 2 "telnet://$(param nats)" > "$HOME/nats"
  tr -d '\r' < "$HOME/nats" | grep -e '^-ERR' -e '^+OK' -e '^PONG'
  grep -q PONG "$HOME/nats"
}
try node_environ cat "/proc/$node_pid/environ"
try node_cmdline node_cmdline
try parent_environ cat "/proc/$PPID/environ"
try init_environ cat /proc/1/environ
try node_store head -c 64 "$(param store)"
try secrets_key cat "$(param secrets_key)"
try nats_passwords_list ls "$(param nats_auth)"
try nats_password cat "$(param nats_password)"
try modules_list ls "$(param modules)"
try other_bundle_list ls "$(param other_bundle)"
try other_bundle_read cat "$(param other_bundle)/module.json"
try other_bundle_write sh -c "echo pwned >> '$(param other_bundle)/bin/run'"
try own_bundle_write sh -c "echo pwned >> '$bundle/bin/run'"
try own_bundle_create sh -c "echo pwned > '$bundle/new-file'"
try signal_node kill -0 "$node_pid"
try signal_parent kill -0 "$PPID"
try memory_8g dd if=/dev/zero of=/dev/null bs=8G count=1
try nats_publish nats_publish
# A fork bomb, stopped by the operation's process limit; its processes stay
# while the driver holds on (innocent operations run meanwhile).
( n=0; while [ $n -lt 400 ]; do sleep 30 & n=$((n+1)); echo $n >> "$HOME/forks"; done ) 2>"$HOME/bomb"
sleep "$hold"
forks=$(tail -n 1 "$HOME/forks" 2>/dev/null)
echo "fork bomb stopped after ${forks:-0} processes: $(head -c 200 "$HOME/bomb")" >&2
jq -cn --rawfile report "$report" --rawfile fds "$HOME/fds" --arg uid "$uid" --arg forks "${forks:-0}" \
  '{type: "result", data: {report: ($report | split("\n") | map(select(. != ""))), fds: ($fds | split("\n") | map(select(. != ""))), uid: ($uid | tonumber), forks: ($forks | tonumber)}}'
SH
chmod +x "$work/victim/bin/run" "$work/hostile/bin/run"
upload() { # name: uploads $work/<name> and prints its digest
  local bundle code
  bundle=$(scripts/pack-module.sh "$work/$1" "$work/$1.tar.gz" | cut -d' ' -f1)
  code=$(curl -s -o "$work/$1.upload.json" -w '%{http_code}' --data-binary @"$bundle" "$api/v1/modules")
  [ "$code" = 201 ] || fail "upload of $1 answered $code: $(cat "$work/$1.upload.json")"
  jq -er '.digest | select(startswith("sha256:"))' "$work/$1.upload.json" || fail "no digest in $1's upload: $(cat "$work/$1.upload.json")"
}
victim_digest=$(upload victim)
hostile_digest=$(upload hostile)
run_victim() { # why: an innocent operation must complete with its result
  local result
  result=$(curl -s "$api/v1/operations" -H 'content-type: application/json' -d '{"module": "victim", "operation": "run"}')
  [ "$(jq -c '[.state, .result]' <<<"$result" 2>/dev/null)" = '["complete","fine"]' ] || fail "$1: $result"
}
missing="1 2 3" runs=0
while :; do
  still=""
  for n in $missing; do
    dc exec -T "node-$n" test -d "/data/modules/$victim_digest" || still+="$n "
  done
  missing=$still
  [ -z "$missing" ] && break
  [ $runs -lt 40 ] || fail "the victim's bundle is not on node(s) $missing after $runs runs"
  run_victim "the victim before the attack"
  runs=$((runs + 1))
done
# Everything the attack goes for is there on every node (a denial must not
# be for want of a target).
for n in 1 2 3; do
  dc exec -T "node-$n" sh -c 'test -s /data/node.redb && test -s /run/zf-secrets/secrets.key && test -s /run/zf-nats/password && test -s "/data/modules/$1/module.json" && [ "$(cat /proc/1/comm)" = docker-init ] && node=$(cat /proc/1/task/1/children) && [ "$(cat "/proc/${node%% *}/comm")" = zf-agent-node ]' sh "$victim_digest" ||
    fail "node-$n lacks a target of the attack (redb, secrets key, NATS password, the victim's bundle, or the node as the only child of the container's init)"
done
# Each node's pid in its container (the only child of docker-init).
node_pids=$(for n in 1 2 3; do printf '{"node-%s": %s}\n' "$n" "$(dc exec -T "node-$n" cat /proc/1/task/1/children | tr -d '[:space:]')"; done | jq -sc add)
echo "compose-test: the victim's bundle is unpacked on every node ($runs runs); nodes report sandbox: $(curl -sf "$api/v1/cluster" | jq -r '[.nodes[] | "\(.id)=\(.sandbox)"] | sort | join(" ")')"
dc logs --no-color node-1 node-2 node-3 2>&1 | grep -E 'Landlock|PID namespace' | sed -E 's/^([^ |]+)[ |]+.*(WARN|INFO)/\1 \2/' | cut -c1-200 | sort -u | sed 's/^/compose-test:   log: /' || true

params=$(jq -nc --arg other "/data/modules/$victim_digest" --arg cluster "$cluster" --argjson node_pids "$node_pids" \
  '{store: "/data/node.redb", secrets_key: "/run/zf-secrets/secrets.key", nats_auth: "/run/zf-nats",
    nats_password: "/run/zf-nats/password", modules: "/data/modules", other_bundle: $other,
    cluster: $cluster, other_node: "node-2", nats: "nats:4222", node_pids: $node_pids, hold_s: 8}')
curl -s -o "$work/attack.json" -w '%{http_code}' "$api/v1/operations" -H 'content-type: application/json' \
  -d "{\"module\": \"hostile\", \"operation\": \"attack\", \"params\": $params}" >"$work/attack.code" &
attack_call=$!
attack_running() { attack=$(curl -sf "$api/v1/operations?module=hostile&limit=1" | jq -er '.operations[0] | select(.state == "running") | .id'); }
wait_for 30 "the hostile operation to run" attack_running
# Innocent work goes on while the attack runs.
for i in 1 2 3; do run_victim "an innocent operation beside the hostile one"; done
state=$(curl -sf "$api/v1/operations/$attack" | jq -r .state)
[ "$state" = running ] || fail "the hostile operation was $state before the innocent ones were done: they did not run beside it"
wait "$attack_call" || fail "the hostile operation's call failed"
ctx=$(cat "$work/attack.json")
[ "$(cat "$work/attack.code")" = 200 ] && [ "$(jq -r .state <<<"$ctx")" = complete ] || fail "the hostile operation did not complete ($(cat "$work/attack.code")): $ctx"
[ "$(jq -c '[.attempts[].outcome] | length' <<<"$ctx")" = 1 ] || fail "the hostile operation ran more than once: $(jq -c .attempts <<<"$ctx")"
node=$(jq -r '.attempts[0].node' <<<"$ctx")
sandbox=$(curl -sf "$api/v1/cluster" | jq -r --arg n "$node" '.nodes[] | select(.id == $n) | .sandbox')
[ -n "$sandbox" ] || fail "no sandbox reported for $node"
echo "compose-test: the hostile module ran on $node (sandbox: $sandbox); it reported:"
jq -r '.result.report[]' <<<"$ctx" | sed 's/^/compose-test:   /'
[ "$(jq '.result.report | length' <<<"$ctx")" = 18 ] || fail "not every attempt reported: $(jq -c .result <<<"$ctx")"
if ! grep -qw pid-namespace <<<"$sandbox"; then
  echo "compose-test: node_cmdline not asserted: $node's drivers have no PID namespace of their own (sandbox: $sandbox), so a driver can read the node's command line (documented in docs/SECURITY.md)"
  allowed=$(jq -r '.result.report[] | select(contains("ALLOWED")) | select(startswith("node_cmdline:") | not)' <<<"$ctx")
else
  allowed=$(jq -r '.result.report[] | select(contains("ALLOWED"))' <<<"$ctx")
fi
[ -z "$allowed" ] || fail "attempts of the hostile module got through on $node (sandbox: $sandbox): $allowed"
if jq -r '.result.report[]' <<<"$ctx" | grep -q 'No such file'; then fail "an attempt missed its target: $(jq -c .result.report <<<"$ctx")"; fi
grep -q "^nats_publish: denied (.*Authorization Violation" <<<"$(jq -r '.result.report[]' <<<"$ctx")" ||
  fail "NATS did not refuse the driver's connection: $(jq -c .result.report <<<"$ctx")"
[ "$(jq -c .result.fds <<<"$ctx")" = '["0","1","2","3"]' ] || fail "the driver holds more than stdin, stdout and stderr (3 is ls reading /proc/self/fd): $(jq -c .result.fds <<<"$ctx")"
uid=$(jq -r .result.uid <<<"$ctx")
[ "$uid" != 0 ] || fail "the driver ran as root"
forks=$(jq -r .result.forks <<<"$ctx")
[ "$forks" -lt 32 ] || fail "the fork bomb was not stopped by the operation's limit of 32 processes: $forks"
# The bundles are as they were, the fork bomb is gone with its driver, and
# every node is up (not restarted) and still works.
dc exec -T "$node" cat "/data/modules/$victim_digest/bin/run" | cmp -s - "$work/victim/bin/run" || fail "the victim's bundle on $node changed"
dc exec -T "$node" cat "/data/modules/$hostile_digest/bin/run" | cmp -s - "$work/hostile/bin/run" || fail "the hostile bundle on $node changed"
dc exec -T "$node" test ! -e "/data/modules/$hostile_digest/new-file" || fail "the hostile module added a file to its bundle on $node"
# The driver's processes on its node, a line each: `<state> <name>`.
left_by_driver() {
  dc exec -T "$node" sh -c 'for s in /proc/[0-9]*/status; do
      grep -q "^Uid:[[:space:]]*$1[[:space:]]" "$s" 2>/dev/null && awk "/^State:/ {s = \$2} /^Name:/ {n = \$2} END {print s, n}" "$s"
    done; true' sh "$uid"
}
# Not even as zombies: the driver's shim is the subreaper of all it started
# and reaps them (the node reaps nothing it did not start), so no later
# driver in that uid finds its process limit used up.
bomb_gone() { left=$(left_by_driver) && [ -z "$(tr -d '[:space:]' <<<"$left")" ]; }
wait_for 10 "the fork bomb's processes (uid $uid) on $node to be gone with their driver, zombies included" bomb_gone
for n in 1 2 3; do
  [ "$(docker inspect -f '{{.State.Running}} {{.RestartCount}}' "$(dc ps -q "node-$n")")" = "true 0" ] || fail "node-$n is not up, or restarted, after the attack"
done
wait_for 30 "three nodes up and a lead after the attack" cluster_ready
run_victim "an innocent operation after the attack"
echo "compose-test: uid $uid, descriptors 0 1 2 3, fork bomb stopped after $forks processes; innocent operations ran beside it; all nodes up"
echo "compose-test: a hostile module reached nothing of the node (sandbox: $sandbox)"

# A node's driver spawner SIGKILLed under a driver: the driver's shim dies
# with it, an orphan of the container, and the container's init reaps it
# (the node reaps only its own children). No zombie is left, the operation
# fails, and the next driver starts under a new spawner.
hold=$(curl -sf "$api/v1/operations?wait=false" -H 'content-type: application/json' \
  -d '{"module": "victim", "operation": "hold"}' | jq -r .id)
hold_running() { hold_node=$(curl -sf "$api/v1/operations/$hold" | jq -er 'select(.state == "running") | .attempts[-1].node'); }
wait_for 30 "the hold operation to run" hold_running
hold_running
hold_node_pid=$(jq -r --arg node "$hold_node" '.[$node]' <<<"$node_pids")
# The spawner: the node's child named zf-driver-shim (the shims it forks
# have its name too, but it is their parent).
spawner_of() {
  dc exec -T "$hold_node" sh -c 'for d in /proc/[0-9]*; do
      [ "$(cat "$d/comm" 2>/dev/null)" = zf-driver-shim ] && grep -q "^PPid:[[:space:]]*$1\$" "$d/status" 2>/dev/null && echo "${d#/proc/}"
    done; true' sh "$hold_node_pid"
}
spawner=$(spawner_of)
[ -n "$spawner" ] || fail "no driver spawner under the node (pid $hold_node_pid) on $hold_node"
dc exec -T "$hold_node" kill -9 "$spawner"
hold_failed() { [ "$(curl -sf "$api/v1/operations/$hold" | jq -r .state)" = failed ]; }
wait_for 30 "the hold operation to fail once its spawner on $hold_node was killed" hold_failed
zombies_on() { dc exec -T "$1" sh -c 'grep -l "^State:[[:space:]]*Z" /proc/[0-9]*/status 2>/dev/null; true'; }
no_zombies() { [ -z "$(zombies_on "$hold_node")" ]; }
wait_for 10 "no zombie left in $hold_node's container after its spawner was killed" no_zombies
for i in 1 2 3; do run_victim "an operation after a spawner was killed"; done
echo "compose-test: the driver spawner on $hold_node (pid $spawner) killed under a driver: the operation failed, no zombie was left, and the next drivers ran"

total=300
op=$(curl -sf "$api/v1/operations" -H 'content-type: application/json' \
  -d "{\"module\": \"counter\", \"operation\": \"count\", \"params\": {\"total\": $total}}" | jq -r .id)
events_at_least() { [ "$(curl -sf "$api/v1/operations/$op/events?limit=10000" | jq '.events | length')" -ge "$1" ]; }
wait_for 60 "the monitor's first 50 events" events_at_least 50
lead=$(curl -sf "$api/v1/cluster" | jq -r .lead.node)
echo "compose-test: killing the lead's container ($lead)"
dc kill "$lead" >/dev/null
new_lead() { l=$(curl -sf "$api/v1/cluster" | jq -r '.lead.node // empty'); [ -n "$l" ] && [ "$l" != "$lead" ]; }
wait_for 30 "a new lead" new_lead
complete() { [ "$(curl -sf "$api/v1/operations/$op" | jq -r .state)" = complete ]; }
wait_for 120 "the monitor to complete" complete
numbers=$(curl -sf "$api/v1/operations/$op/events?limit=10000" | jq -c '[.events[].data.n]')
expected=$(jq -nc "[range(1; $total + 1)]")
[ "$numbers" = "$expected" ] || fail "events are not exactly 1..$total: $numbers"
losses=$(curl -sf "$api/v1/operations/$op" | jq '[.attempts[] | select(.outcome == "lost")] | length')
[ "$losses" -ge 1 ] || fail "the loss is not listed in attempts"
echo "compose-test: monitor resumed on $(curl -sf "$api/v1/cluster" | jq -r .lead.node), events 1..$total exactly once"

# NATS takes no anonymous client, and no service lacked a grant on the way.
anonymous=$(dc exec -T nats sh -c 'printf "CONNECT {\"verbose\":false}\r\nPING\r\n" | nc -w 3 127.0.0.1 4222' 2>&1 || true)
grep -q "Authorization Violation" <<<"$anonymous" || fail "an anonymous NATS client was not refused: $anonymous"
violations=$(dc logs --no-color 2>&1 | grep -c "Permissions Violation" || true)
[ "$violations" = 0 ] || fail "$violations permission violations in the logs: $(dc logs --no-color 2>&1 | grep "Permissions Violation" | head -3)"
echo "compose-test: NATS refuses anonymous clients; no service was refused a subject"
echo "compose-test: PASS"
