#!/usr/bin/env bash
# Proves docker-compose.ha.yml under the faults that matter there: it starts
# the production shape (three NATS servers, every bucket and stream at three
# replicas, two management instances behind HAProxy, three agent nodes),
# keeps keyed monitors and a stream of sync operations going through the
# load balancer, and injects, one after the other:
#   nats-kill       kill -9 one NATS server, restart it; then the one the
#                   lead is connected to, restart it
#   lead-partition  cut the lead's container from the network for 10 s
#                   (docker network disconnect), then reconnect it
#   nats-minority   cut the NATS server the lead is connected to (clients
#                   attached) from the other two for 10 s
#   management-kill kill -9 a management instance during a burst of
#                   submissions, restart it
#   full-restart    stop and start the whole stack, volumes kept
# After each fault it checks: every acknowledged (2xx) sync operation exists
# and completed exactly once; every monitor's keyed events exactly once and
# without gaps; exactly one lead; every stream's replicas current.
#
#   scripts/compose-ha-test.sh                  each fault once (CI)
#   scripts/compose-ha-test.sh --soak MINUTES [--seed N]
#                                               faults at random for MINUTES
# Prints its figures (faults, operations, events, violations) at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

soak_minutes=0
seed=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
while [ $# -gt 0 ]; do
  case $1 in
    --soak) soak_minutes=${2:?--soak needs MINUTES}; shift 2 ;;
    --seed) seed=${2:?--seed needs a number}; shift 2 ;;
    *) echo "usage: $0 [--soak MINUTES] [--seed N]" >&2; exit 2 ;;
  esac
done
case $soak_minutes$seed in *[!0-9]*) echo "--soak and --seed take whole numbers" >&2; exit 2 ;; esac
RANDOM=$seed

if command -v docker-compose >/dev/null; then compose=(docker-compose); else compose=(docker compose); fi
say() { echo "compose-ha-test: $*"; }
fail() { echo "compose-ha-test: FAIL: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
project="zfha$$"
images=$(scripts/docker-images.sh | tail -n 1) || fail "building the images failed"
eval "export $images"
export ZF_HTTP_PORT=$(free_port) ZF_HTTP_PORT_1=$(free_port) ZF_HTTP_PORT_2=$(free_port)
token="test-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export ZF_API_TOKENS="admin:$token"
api="http://127.0.0.1:$ZF_HTTP_PORT"
network="${project}_default"
dc() { "${compose[@]}" -p "$project" -f docker-compose.ha.yml "$@"; }
curl() { command curl -H "Authorization: Bearer $token" "$@"; }
work=$(mktemp -d)
cleanup() {
  status=$?
  jobs -p | xargs -r kill 2>/dev/null || true
  if [ $status -ne 0 ]; then
    # The last lines of each service here; every line in a file to read.
    mkdir -p target/compose-ha-logs
    dc logs --no-color --timestamps >"target/compose-ha-logs/$project.log" 2>&1 || true
    dc logs --no-color --tail 40 >&2 || true
    echo "compose-ha-test: every service's whole log: target/compose-ha-logs/$project.log" >&2
  fi
  dc down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$work"
  exit $status
}
trap cleanup EXIT

# Polls "$@" every 0.2 s until it succeeds, at most $1 seconds.
wait_for() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "timed out after ${seconds}s waiting for $what"
    sleep 0.2
  done
}
now_ms() { date +%s%3N; }

# --- the cluster's state, as a user reads it ------------------------------

cluster_json() { curl -sf --max-time 5 "$api/v1/cluster"; }
lead_node() { cluster_json | jq -r '.lead.node // empty'; }
# Exactly one lead: the cluster names one, up, and no other up node says it leads.
one_lead() {
  local view
  view=$(cluster_json) || return 1
  jq -e '(.lead.node // "") as $lead | $lead != ""
    and ([.nodes[] | select(.status == "up" and .role == "lead")] | map(.id)) == [$lead]
    and ([.nodes[] | select(.status == "up")] | length) == 3' <<<"$view" >/dev/null
}
# The container a NATS server or node runs in.
container() { dc ps -q "$1"; }
# Cuts a service's container from the stack's network, and puts it back.
# Reconnecting must give the service name back as an alias: without it the
# others no longer resolve the name (NATS routes to "nats-1" fail for good),
# which is no partition a real network makes.
disconnect() { docker network disconnect "$network" "$(container "$1")"; }
reconnect() { docker network connect --alias "$1" "$network" "$(container "$1")"; }
nats_get() { # server path
  dc exec -T "$1" timeout 5 wget -q -O - "http://127.0.0.1:8222$2"
}
# Every stream (the buckets are streams too) has three replicas, all current,
# as each one's leader reports them.
replicas_current() {
  local n details bad=0 streams=0
  for n in 1 2 3; do
    details=$(nats_get "nats-$n" '/jsz?accounts=true&streams=true') || return 1
    read -r s b < <(jq -r --arg me "nats-$n" '[.account_details[]?.stream_detail[]?
        | select(.cluster.leader == $me)] as $led
      | "\($led | length) \([$led[] | select((.cluster.replicas // []) | (length != 2 or any(.current != true)))] | length)"' <<<"$details")
    streams=$((streams + s)) bad=$((bad + b))
  done
  [ "$streams" -gt 0 ] && [ "$bad" = 0 ]
}
# The NATS server a node's connection is on (nats-1..3), from each server's connz.
server_of_node() {
  local n
  for n in 1 2 3; do
    if nats_get "nats-$n" '/connz?auth=true&limit=1024' 2>/dev/null |
      jq -e --arg u "zf-default-node-$1" 'any(.connections[]; .authorized_user == $u)' >/dev/null; then
      echo "nats-$n"
      return 0
    fi
  done
  return 1
}

# --- load: keyed monitors and a stream of sync operations -----------------

mkdir -p "$work/counter/bin"
cat >"$work/counter/module.json" <<'JSON'
{"name": "counter", "version": "1.0.0", "entrypoint": "bin/run", "operations": {"count": {"kind": "async"}}}
JSON
# One event per step, keyed by its number, a checkpoint every 5: a resumed
# counter goes on from its checkpoint, and the node drops the events it
# repeats (their keys were published).
cat >"$work/counter/bin/run" <<'SH'
#!/bin/sh
n=$(jq -r '.checkpoint.n // 0')
while :; do
  n=$((n + 1))
  echo "{\"type\":\"event\",\"key\":\"$n\",\"data\":{\"n\":$n}}"
  [ $((n % 5)) -eq 0 ] && echo "{\"type\":\"checkpoint\",\"data\":{\"n\":$n}}"
  sleep 0.1
done
SH
chmod +x "$work/counter/bin/run"

# The sync load: one operation after another through the load balancer,
# each answer's status and id on a line of $work/sync.log.
submit_echo() { # word log: one sync echo of word through the balancer, its line on log
  local code out="$work/answer.$1.json"
  code=$(curl -s -o "$out" -w '%{http_code}' --max-time 60 "$api/v1/operations" \
    -H 'content-type: application/json' \
    -d "{\"module\": \"shell\", \"operation\": \"run\", \"params\": {\"command\": \"echo\", \"args\": [\"$1\"]}}") || code=000
  echo "$code $(jq -r '.id // "-"' "$out" 2>/dev/null || echo -) $1" >>"$2"
  rm -f "$out"
}
sync_load() { # name
  local i=0
  while :; do
    i=$((i + 1))
    submit_echo "$1-$i" "$work/sync.log"
    sleep 0.5
  done
}

# Every 2xx-acknowledged sync operation exists, is complete with its own
# output, and has exactly one complete attempt. Checks the lines of
# $work/sync.log not checked yet; violations go to $work/violations.
checked=0 acknowledged=0
# Reads an API path into a file, as a user would: a 5xx or no answer (the
# NATS servers electing leaders again after a fault) is asked again for up
# to 30 s; 2xx and 4xx are final. Prints the last status. The third
# argument is one try's limit in seconds (10). Each answer asked
# again adds a line to $work/refused, for the figures. A script of its own,
# for xargs.
cat >"$work/read.sh" <<'READ'
#!/bin/sh
path=$1 out=$2 max_time=${3:-10} deadline=$(($(date +%s) + 30))
while :; do
  status=$(curl -s --max-time "$max_time" -o "$out" -w "%{http_code}" -H "Authorization: Bearer $TOKEN" "$API$path")
  case $status in 2*|4*) break ;; esac
  echo "$status $path" >>"$REFUSED"
  [ "$(date +%s)" -lt "$deadline" ] || break
  sleep 0.5
done
echo "$status"
READ
chmod +x "$work/read.sh"
: >"$work/refused"
export TOKEN=$token API=$api REFUSED=$work/refused
check_sync() {
  local code id want lines status
  lines=$(wc -l <"$work/sync.log")
  sed -n "$((checked + 1)),${lines}p" "$work/sync.log" | awk '$1 ~ /^2/' >"$work/acked"
  checked=$lines
  rm -rf "$work/ctx" && mkdir "$work/ctx"
  cut -d' ' -f2 "$work/acked" | READ=$work/read.sh DIR=$work/ctx xargs -r -P 8 -I{} sh -c \
    '"$READ" "/v1/operations/$1" "$DIR/$1" >"$DIR/$1.status"' sh {}
  while read -r code id want; do
    acknowledged=$((acknowledged + 1))
    status=$(cat "$work/ctx/$id.status")
    case $status in
      200) ;;
      404) echo "acknowledged sync operation $id ($want, $code) is gone: GET answered 404" >>"$work/violations"; continue ;;
      4*) echo "acknowledged sync operation $id ($want, $code): GET answered $status $(head -c 200 "$work/ctx/$id")" >>"$work/violations"; continue ;;
      *) echo "acknowledged sync operation $id ($want, $code) unreadable for 30 s: GET answered $status $(head -c 200 "$work/ctx/$id")" >>"$work/violations"; continue ;;
    esac
    jq -e --arg want "$want" '.state == "complete" and .result.stdout == ($want + "\n")
      and ([.attempts[] | select(.outcome == "complete")] | length) == 1' "$work/ctx/$id" >/dev/null ||
      echo "sync operation $id did not complete exactly once: $(jq -c '{state, result, attempts}' "$work/ctx/$id")" >>"$work/violations"
  done <"$work/acked"
}

# A monitor's events: every key once, numbers 1..N with no gap; violations
# go to $work/violations, $events_total counts the events checked last.
events_total=0
check_monitor() {
  local op=$1 after=0 count last target status all="$work/events.$1"
  : >"$all"
  # Read up to the monitor's checkpoint as it stands now (every event up to
  # it is in the log), not until a page comes back empty: the monitor keeps
  # counting, and a reader slower than its pace would never see the end.
  status=$("$work/read.sh" "/v1/operations/$op" "$work/page" 10)
  [ "$status" = 200 ] || { echo "operation $op unreadable for 30 s: GET answered $status $(head -c 200 "$work/page")" >>"$work/violations"; return; }
  target=$(jq '.checkpoint.n // 0' "$work/page")
  while [ "$after" -lt "$target" ]; do
    status=$("$work/read.sh" "/v1/operations/$op/events?after=$after&limit=10000" "$work/page" 20)
    [ "$status" = 200 ] || { echo "events of $op unreadable for 30 s: GET answered $status $(head -c 200 "$work/page")" >>"$work/violations"; return; }
    read -r count last < <(jq -r '"\(.events | length) \(.events[-1].seq // 0)"' "$work/page")
    [ "$count" -gt 0 ] || break
    jq -c '.events[] | [.key, .data.n, .seq, .node, .epoch]' "$work/page" >>"$all"
    after=$last
  done
  count=$(wc -l <"$all")
  [ "$count" -ge "$target" ] || echo "monitor $op: $count events in its log, but its checkpoint says $target" >>"$work/violations"
  events_total=$((events_total + count))
  [ "$count" -gt 0 ] || { echo "monitor $op has no events" >>"$work/violations"; return; }
  jq -s -e 'map(.[1]) == [range(1; length + 1)] and (map(.[0]) | unique | length) == length' "$all" >/dev/null ||
    echo "monitor $op: events are not 1..$count exactly once (n, seq, node, epoch where it goes wrong): $(jq -s -c '
      [to_entries[] | select(.value[1] != .key + 1)] | .[:8] | map(.value[1:])' "$all")" >>"$work/violations"
}

monitors=()
start_monitors() {
  local i id
  for i in 1 2 3; do
    id=$(curl -sf "$api/v1/operations" -H 'content-type: application/json' \
      -d '{"module": "counter", "operation": "count"}' | jq -er .id) || fail "cannot start a monitor"
    monitors+=("$id")
  done
}
# How far the monitors got, summed: each one's checkpoint.
events_now() {
  local op sum=0 n
  for op in "${monitors[@]}"; do
    n=$(curl -sf --max-time 10 "$api/v1/operations/$op" | jq '.checkpoint.n // 0') || n=0
    sum=$((sum + n))
  done
  echo "$sum"
}
monitors_advance() { # the monitors' checkpoints pass $1
  [ "$(events_now)" -gt "$1" ]
}

violations=0 faults=0 bursts=0
: >"$work/sync.log"
verify() { # after a fault: wait for the cluster to settle, then check
  local what=$1 before op
  wait_for 90 "exactly one lead and three nodes up after $what" one_lead
  wait_for 120 "every stream's three replicas current after $what" replicas_current
  before=$(events_now)
  wait_for 60 "the monitors to go on after $what" monitors_advance "$before"
  : >"$work/violations"
  check_sync
  events_total=0
  for op in "${monitors[@]}"; do check_monitor "$op"; done
  faults=$((faults + 1))
  if [ -s "$work/violations" ]; then
    violations=$((violations + $(grep -c . "$work/violations")))
    sed 's/^/compose-ha-test:   VIOLATION: /' "$work/violations" >&2
    [ "$soak_minutes" -gt 0 ] || fail "after $what: $(head -3 "$work/violations")"
  fi
  say "after $what: one lead ($(lead_node)), replicas current, monitors going on; $acknowledged sync operations and $events_total events checked"
}

# --- the faults ------------------------------------------------------------

fault_nats_kill() {
  local lead server victim
  victim="nats-$((RANDOM % 3 + 1))"
  say "kill -9 $victim"
  dc kill -s KILL "$victim" >/dev/null
  dc start "$victim" >/dev/null
  wait_for 60 "$victim healthy again" nats_get "$victim" /healthz
  verify "$victim killed and restarted"
  lead=$(lead_node)
  server=$(server_of_node "$lead") || fail "no NATS server has the lead's ($lead) connection"
  say "kill -9 $server, which the lead ($lead) is connected to"
  dc kill -s KILL "$server" >/dev/null
  dc start "$server" >/dev/null
  wait_for 60 "$server healthy again" nats_get "$server" /healthz
  verify "the lead's NATS server ($server) killed and restarted"
}

# Bound on top of the lapse (1 s) for a new lead, in seconds: the heartbeats
# that show it to management (200 ms each) and one poll of the API.
lead_bound_s=4
fault_lead_partition() {
  local lead started elapsed new
  lead=$(lead_node)
  say "cutting the lead ($lead) from the network for 10 s"
  started=$(now_ms)
  disconnect "$lead"
  new_lead() { new=$(lead_node) && [ -n "$new" ] && [ "$new" != "$lead" ]; }
  wait_for $((1 + lead_bound_s)) "a new lead within the lapse (1 s) plus ${lead_bound_s} s of $lead's partition" new_lead
  elapsed=$(($(now_ms) - started))
  # The old lead fenced itself: it says so, and no monitor driver runs on it.
  fenced() { docker logs --since "$((started / 1000 - 1))" "$(container "$lead")" 2>&1 | grep -q "stepping down: every monitor on this node is stopped"; }
  wait_for $((1 + lead_bound_s)) "$lead to fence itself (log: stepping down)" fenced
  # (The pattern must not match this probe's own command line.)
  no_drivers() { ! dc exec -T "$lead" sh -c 'cat /proc/[0-9]*/cmdline 2>/dev/null | tr "\0" " " | grep -q "/data/module[s]/"'; }
  wait_for $((1 + lead_bound_s)) "no driver left on the fenced lead $lead" no_drivers
  say "new lead $(lead_node) seen $elapsed ms after the partition; $lead fenced itself with no driver left"
  while [ $(($(now_ms) - started)) -lt 10000 ]; do sleep 0.5; done
  reconnect "$lead"
  verify "$lead partitioned for 10 s and reconnected"
}

fault_nats_minority() {
  local victim attached lead
  # The lead's server: it has clients attached, the lead's among them.
  lead=$(lead_node)
  victim=$(server_of_node "$lead") || fail "no NATS server has the lead's ($lead) connection"
  attached=$(nats_get "$victim" '/connz?limit=1024' | jq '.num_connections')
  [ "$attached" -gt 0 ] || fail "$victim has no clients attached to cut off"
  say "cutting $victim ($attached clients attached) from the other two for 10 s"
  disconnect "$victim"
  local started=$SECONDS
  # Work goes on meanwhile on the majority.
  local before
  before=$(events_now)
  wait_for 60 "the monitors to go on while $victim is cut off" monitors_advance "$before"
  while [ $((SECONDS - started)) -lt 10 ]; do sleep 0.5; done
  reconnect "$victim"
  verify "$victim cut off from the majority for 10 s"
}

fault_management_kill() {
  local victim="management-$((RANDOM % 2 + 1))" pids=() i
  say "kill -9 $victim during a burst of submissions"
  : >"$work/burst.log"
  bursts=$((bursts + 1))
  for i in 1 2 3 4; do
    (for j in $(seq 1 25); do submit_echo "burst$bursts-$i-$j" "$work/burst.log"; done) &
    pids+=($!)
  done
  burst_started() { [ "$(grep -c . "$work/burst.log")" -ge 10 ]; }
  wait_for 60 "the burst's first submissions" burst_started
  dc kill -s KILL "$victim" >/dev/null
  wait "${pids[@]}"
  local acked
  acked=$(grep -c '^2' "$work/burst.log" || true)
  say "$acked of 100 submissions acknowledged across the kill"
  cat "$work/burst.log" >>"$work/sync.log"
  dc start "$victim" >/dev/null
  verify "$victim killed during a burst of submissions"
}

fault_full_restart() {
  local before
  before=$(events_now)
  say "stopping the whole stack ($before events so far), volumes kept"
  dc stop >/dev/null
  dc start >/dev/null
  wait_for 120 "the load balancer to answer after the restart" curl -sf --max-time 5 "$api/healthz"
  verify "a full stop and start"
}

# --- run --------------------------------------------------------------------

"${compose[@]}" -f docker-compose.ha.yml config -q || fail "docker-compose.ha.yml does not validate"
say "starting project $project (API through HAProxy on $ZF_HTTP_PORT), seed $seed"
dc up -d >/dev/null
wait_for 180 "the API through the load balancer" curl -sf --max-time 5 "$api/healthz"
wait_for 120 "exactly one lead and three nodes up" one_lead
wait_for 120 "every stream's three replicas current" replicas_current
wait_for 60 "the shell module" curl -sf "$api/v1/modules/shell"
# Both management instances answer, and the balancer sends to them.
both_up() {
  command curl -sf --max-time 5 "http://127.0.0.1:$ZF_HTTP_PORT_1/healthz" && command curl -sf --max-time 5 "http://127.0.0.1:$ZF_HTTP_PORT_2/healthz"
}
wait_for 60 "both management instances" both_up
bundle=$(scripts/pack-module.sh "$work/counter" "$work/counter.tar.gz" | cut -d' ' -f1)
code=$(curl -s -o "$work/upload.json" -w '%{http_code}' --data-binary @"$bundle" "$api/v1/modules")
[ "$code" = 201 ] || fail "upload answered $code: $(cat "$work/upload.json")"
start_monitors
sync_load a &
sync_load b &
started_events() { [ "$(events_now)" -ge 30 ]; }
wait_for 60 "the monitors' first events" started_events
say "3 monitors and 2 streams of sync operations running"

if [ "$soak_minutes" = 0 ]; then
  fault_nats_kill
  fault_lead_partition
  fault_nats_minority
  fault_management_kill
  fault_full_restart
else
  deadline=$((SECONDS + soak_minutes * 60))
  while [ $SECONDS -lt $deadline ]; do
    case $((RANDOM % 5)) in
      0) fault_nats_kill ;;
      1) fault_lead_partition ;;
      2) fault_nats_minority ;;
      3) fault_management_kill ;;
      4) fault_full_restart ;;
    esac
  done
fi

jobs -p | xargs -r kill 2>/dev/null || true
wait 2>/dev/null || true
check_sync
say "figures: seed $seed, faults $faults, sync operations acknowledged and checked $acknowledged, events checked $events_total, reads answered 5xx or not at all and asked again $(grep -c . "$work/refused"), violations $violations"
[ "$violations" = 0 ] || fail "$violations violations"
say "PASS"
