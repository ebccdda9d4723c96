#!/usr/bin/env bash
# Proves docker-compose.yml: builds the images (offline path when no registry
# answers), starts the stack under its own project name (the operator's keys
# and tokens given as variables, which only the nats-auth service sees and
# writes into files), checks that no secret is in any service's environment,
# that each service mounts only the key files and NATS password it needs and
# that each node logs in to NATS as its own user; then through the published
# HTTP port uploads a module, seals a resource secret that a node opens, runs
# a sync operation and a keyed monitor, kills the lead's container, checks the
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
stock_modules() { curl -sf "$api/v1/modules/shell" >/dev/null; }
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
