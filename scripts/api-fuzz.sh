#!/usr/bin/env bash
# Fuzzes the HTTP API against its own OpenAPI document: starts a throwaway
# local cluster (scripts/up.sh with its own data folder, cluster name and
# free ports), waits until it can run operations, then runs schemathesis on
# GET /v1/openapi.json. Every answer must be no server error (5xx), have a
# documented status and content type, and match its documented schema.
# Exits non-zero on any failure; the cluster is stopped and its folder
# removed in every case (ZF_KEEP_FUZZ_DIR=1 keeps the folder, with up.sh's
# and every service's logs).
#   scripts/api-fuzz.sh [--max-examples N] [SCHEMATHESIS_ARGS...]
# --max-examples (or ZF_API_FUZZ_EXAMPLES) is schemathesis's number of test
# cases per operation and phase: 50 by default (about 30 s on 2 cores, the
# cluster's start and stop included), e.g. 500 for a deeper run. Other
# arguments go to `schemathesis run` as they are (e.g. --seed N to repeat a
# run). ZF_BIN_DIR: use the binaries there instead of building debug ones
# (debug binaries also catch integer overflow).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

examples=${ZF_API_FUZZ_EXAMPLES:-50}
passthrough=()
while [ $# -gt 0 ]; do
  case $1 in
    --max-examples) examples=${2:?--max-examples needs a number}; shift 2 ;;
    --max-examples=*) examples=${1#*=}; shift ;;
    *) passthrough+=("$1"); shift ;;
  esac
done

scripts/install-deps.sh >/dev/null
schemathesis="$root/.venv/bin/schemathesis"
if [ -n "${ZF_BIN_DIR:-}" ]; then
  bin=$ZF_BIN_DIR
else
  cargo build --workspace --bins --quiet
  bin="$root/target/debug"
fi

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
nats_port=$(free_port)
http_port=$(free_port)
while [ "$http_port" = "$nats_port" ]; do http_port=$(free_port); done
data=$(mktemp -d "${TMPDIR:-/tmp}/zf-api-fuzz.XXXXXX")
# Nodes run as root give each driver its own uid, which must reach its
# scratch dir below here: others need search permission.
chmod 711 "$data"
url="http://127.0.0.1:$http_port"

up_pid=""
cleanup() {
  local code=$?
  trap - EXIT INT TERM
  if [ -n "$up_pid" ]; then
    # up.sh stops its services on TERM (nodes take a few seconds); whatever
    # of its process group (setsid below) is still there after 20 s is killed.
    kill -TERM "$up_pid" 2>/dev/null || true
    for _ in $(seq 200); do
      pgrep -g "$up_pid" >/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$up_pid" 2>/dev/null || true
    wait "$up_pid" 2>/dev/null || true
  fi
  if [ "$code" -ne 0 ] && [ -f "$data/up.log" ]; then
    echo "--- the last lines of up.sh's output ($data/up.log) ---" >&2
    tail -n 20 "$data/up.log" >&2
  fi
  if [ "${ZF_KEEP_FUZZ_DIR:-}" = 1 ]; then
    echo "kept $data" >&2
  else
    rm -rf "$data"
  fi
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A cluster of its own: its own data, name and ports; tokens are left out,
# so management answers loopback without one (as up.sh runs it).
echo "starting a throwaway cluster in $data"
ZF_UP_DATA="$data" ZF_BIN_DIR="$bin" ZF_CLUSTER=apifuzz \
  ZF_NATS_PORT="$nats_port" ZF_HTTP_ADDR="127.0.0.1:$http_port" \
  env -u ZF_API_TOKENS -u ZF_TOKENS_FILE setsid scripts/up.sh </dev/null >"$data/up.log" 2>&1 &
up_pid=$!

# Ready once three nodes are up under a lead and the stock modules are
# listed: before that, operations answer 503 (no node to run them), which
# would count as server errors.
ready=""
for _ in $(seq 600); do
  kill -0 "$up_pid" 2>/dev/null || { echo "error: scripts/up.sh ended early" >&2; exit 1; }
  if cluster=$(curl -sf "$url/v1/cluster") && modules=$(curl -sf "$url/v1/modules") &&
    [ "$(jq '[.nodes[] | select(.status == "up")] | length' <<<"$cluster")" = 3 ] &&
    [ "$(jq '.lead != null' <<<"$cluster")" = true ] &&
    [ "$(jq '[.modules[] | select(.name == "shell")] | length' <<<"$modules")" -ge 1 ]; then
    ready=1
    break
  fi
  sleep 0.2
done
[ -n "$ready" ] || { echo "error: the cluster at $url was not ready after 120 s" >&2; exit 1; }
echo "cluster up at $url; running schemathesis $("$schemathesis" --version | sed 's/.*version //') with --max-examples $examples"

# Notes on what runs:
# - SSE: schemathesis always sends `Accept: */*`, so the events and logs
#   endpoints answer their JSON pages, never a live stream (which would only
#   end at the request timeout); their stream variant is covered by
#   tests/tests/events_api.rs and operation_logs.rs.
# - POST /v1/modules gets random bytes: every answer must be a documented
#   refusal (400 empty, 422 not a bundle); real uploads are in tests/tests/modules.rs.
# - The documented examples run for real: a sync `shell run` of `uname -s`
#   on a node, a resource put, read and deleted: their answers are checked
#   against the schemas too.
# - It runs in the throwaway folder, where it keeps its cache, with
#   `--generation-database none`: nothing is written to the work tree; a
#   failure prints the seed and a curl line that repeat it.
cd "$data"
"$schemathesis" run "$url/v1/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$examples" \
  --request-timeout 60 \
  --generation-database none \
  --no-color \
  ${passthrough[@]+"${passthrough[@]}"}
