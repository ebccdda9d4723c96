#!/bin/sh
# An example machine for zerofoot to manage over SSH, with no zerofoot on it
# (docker-compose.yml's example-host): an OpenSSH server letting root in
# with a login key it makes once.
#   example-host           makes its host key and login key once (in /keys),
#                          then runs sshd in the foreground
#   example-host resource  prints it as an ssh resource, id "example-host",
#                          host key and login key included (for
#                          `zf resource put`; the API takes it without the id)
set -eu
keys=/keys
case ${1:-serve} in
resource)
  [ -s "$keys/login" ] || { echo "example-host: no keys yet; is the service started?" >&2; exit 1; }
  jq -n --arg host_key "$(cut -d' ' -f1,2 "$keys/host_key.pub")" --rawfile login "$keys/login" \
    '{id: "example-host", kind: "ssh", labels: {role: "example"},
      config: {host: "example-host", port: 22, user: "root", host_key: $host_key},
      secrets: {private_key: $login}}'
  ;;
serve)
  umask 077
  mkdir -p "$keys" /run/sshd
  [ -s "$keys/host_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$keys/host_key"
  [ -s "$keys/login" ] || ssh-keygen -q -t ed25519 -N '' -C zerofoot-example -f "$keys/login"
  cp "$keys/login.pub" "$keys/authorized_keys"
  cat >"$keys/sshd_config" <<EOF
Port 22
HostKey $keys/host_key
AuthorizedKeysFile $keys/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
MaxStartups 100
MaxSessions 100
EOF
  exec /usr/sbin/sshd -D -e -f "$keys/sshd_config"
  ;;
*)
  echo "usage: example-host [serve|resource]" >&2
  exit 2
  ;;
esac
