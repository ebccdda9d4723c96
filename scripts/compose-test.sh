#!/usr/bin/env bash
# Proves docker-compose.yml: builds the images (offline path when no registry
# answers), starts the stack under its own project name, and through the
# published HTTP port uploads a module, runs a sync operation and a keyed
# monitor, kills the lead's container, checks the monitor resumed with every
# event exactly once and that NATS refuses anonymous clients, then removes
# everything (`down -v`).
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

echo "compose-test: starting project $project on port $port"
dc up -d >/dev/null
wait_for 120 "management /healthz" curl -sf "$api/healthz"
cluster_ready() { [ "$(curl -sf "$api/v1/cluster" | jq '[.nodes[] | select(.status == "up")] | length')" = 3 ] && curl -sf "$api/v1/cluster" | jq -e '.lead.node' >/dev/null; }
wait_for 60 "three nodes up and a lead" cluster_ready
stock_modules() { curl -sf "$api/v1/modules/shell" >/dev/null; }
wait_for 60 "the stock modules" stock_modules

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
