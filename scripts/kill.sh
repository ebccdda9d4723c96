#!/usr/bin/env bash
# Kills one process of the local cluster that scripts/up.sh runs, with
# SIGKILL, to watch the cluster carry on (up.sh starts it again a second
# later):
#   scripts/kill.sh lead        the node that leads now
#   scripts/kill.sh node-2      (node-1..3, management, repository, nats-server)
# Environment as for up.sh: ZF_HTTP_ADDR, ZF_UP_DATA.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data="${ZF_UP_DATA:-$root/.zerofoot}"
http=${ZF_HTTP_ADDR:-127.0.0.1:8080}
what=${1:?usage: scripts/kill.sh lead|node-1|node-2|node-3|management|repository|nats-server}
lead=""
if [ "$what" = lead ]; then
  lead=$(curl -sf "http://$http/v1/cluster" | jq -r '.lead.node // empty') ||
    { echo "management does not answer on $http: is scripts/up.sh running?" >&2; exit 1; }
  [ -n "$lead" ] || { echo "no node leads right now; try again in a moment" >&2; exit 1; }
  for i in 1 2 3; do
    [ "$(cat "$data/node-$i/node-id" 2>/dev/null)" = "$lead" ] && what="node-$i"
  done
  [ "$what" != lead ] || { echo "the lead $lead is not one of up.sh's nodes" >&2; exit 1; }
fi
pidfile="$data/logs/$what.pid"
[ -s "$pidfile" ] || { echo "scripts/up.sh runs no $what here ($pidfile is missing)" >&2; exit 1; }
pid=$(cat "$pidfile")
kill -KILL "$pid"
echo "killed $what (pid $pid)${lead:+, the lead $lead}; up.sh starts it again in a second"
