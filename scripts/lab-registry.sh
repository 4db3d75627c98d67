#!/usr/bin/env bash
# lab-registry.sh — the lab's image registry: Debian's docker-registry (distribution 2.8.2),
# started by hand (no systemd on the machines the lab runs on), listening on one address only:
# the lab's mirror address (which every lab node reaches through its veth, and nothing else
# does), or a loopback address for tests on the controller. Never 0.0.0.0.
#
# Usage:
#   lab-registry.sh start ADDR PORT DIR   config DIR/config.yml, blobs under DIR/data,
#                                         DIR/registry.pid, log DIR/registry.log; a registry
#                                         already answering from DIR is reused
#   lab-registry.sh stop DIR              stop the registry started from DIR (by its pid file)
#   lab-registry.sh url DIR               print http://ADDR:PORT of the registry of DIR
#
# No authentication and plain HTTP: it is reachable only on the lab network (nodes pull by
# digest, so what they get is checked by Docker against the digest whatever the transport).
# Environment: REGISTRY (the binary, default docker-registry; installed with apt when missing),
# LAB_REGISTRY_WAIT (seconds to wait for /v2/, default 60).
set -euo pipefail

REGISTRY=${REGISTRY:-docker-registry}
WAIT=${LAB_REGISTRY_WAIT:-60}

die() {
    echo "lab-registry.sh: error: $*" >&2
    exit 1
}
say() { echo "lab-registry.sh: $*" >&2; }

answers() { # URL: GET /v2/ answers 200 (bash's /dev/tcp: no interpreter to start under load,
    # no proxy from the environment in the way; the address is a lab or loopback address)
    local hostport=${1#http://} line
    line=$(timeout 5 bash -c 'exec 3<>"/dev/tcp/${1%:*}/${1##*:}" || exit 1
printf "GET /v2/ HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n" "$1" >&3
head -n 1 <&3' _ "$hostport" 2>/dev/null || true)
    [[ $line =~ ^HTTP/[0-9.]+\ 200 ]]
}

cmd_start() {
    (($# == 3)) || die "usage: lab-registry.sh start ADDR PORT DIR"
    local addr=$1 port=$2 dir=$3 url pid
    [[ $addr =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]] || die "ADDR must be an IPv4 address, got '$addr'"
    [[ $addr != 0.0.0.0 ]] || die "the lab registry listens on one lab or loopback address, never 0.0.0.0"
    [[ $port =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
    # (the address list read whole first: `ip | grep -q` under pipefail is exit 141 when grep
    # finds the address before ip has written its last line, i.e. with many lab interfaces)
    if [[ $addr != 127.* ]] && [[ $(ip -o -4 addr show) != *" inet ${addr}/"* ]]; then
        die "$addr is not an address of this machine (for the lab's mirror address: scripts/lab-node.sh mirror $addr)"
    fi
    url="http://${addr}:${port}"
    mkdir -p "$dir/data"
    dir=$(cd "$dir" && pwd)
    if [[ -f $dir/registry.pid ]] && kill -0 "$(cat "$dir/registry.pid")" 2>/dev/null && answers "$url"; then
        say "reusing the registry on $url (pid $(cat "$dir/registry.pid"))"
        echo "$url"
        return 0
    fi
    if ! command -v "$REGISTRY" >/dev/null; then
        say "installing docker-registry"
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
            --no-install-recommends docker-registry >&2
    fi
    cat >"$dir/config.yml" <<EOF
# written by scripts/lab-registry.sh - the stacklock lab's registry
version: 0.1
log:
  level: info
  fields:
    service: stacklock-lab-registry
storage:
  filesystem:
    rootdirectory: ${dir}/data
  delete:
    enabled: true
http:
  addr: ${addr}:${port}
  headers:
    X-Content-Type-Options: [nosniff]
EOF
    echo "$url" >"$dir/url"
    start-stop-daemon --start --background --make-pidfile --pidfile "$dir/registry.pid" \
        --output "$dir/registry.log" --exec "$(command -v "$REGISTRY")" -- serve "$dir/config.yml"
    local deadline=$((SECONDS + WAIT))
    until answers "$url"; do
        pid=$(cat "$dir/registry.pid" 2>/dev/null || true)
        if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
            tail -n 20 "$dir/registry.log" >&2 || true
            cmd_stop "$dir" || true
            die "the registry did not answer on $url/v2/ (log: $dir/registry.log)"
        fi
        sleep 0.2
    done
    say "registry on $url (pid $(cat "$dir/registry.pid"), data $dir/data, log $dir/registry.log)"
    echo "$url"
}

cmd_stop() {
    (($# == 1)) || die "usage: lab-registry.sh stop DIR"
    local dir=$1
    if [[ ! -f $dir/registry.pid ]]; then
        say "no registry started from $dir"
        return 0
    fi
    start-stop-daemon --stop --pidfile "$dir/registry.pid" --retry TERM/10/KILL/5 >/dev/null || true
    rm -f "$dir/registry.pid"
    say "registry of $dir stopped"
}

case ${1:-} in
start)
    shift
    cmd_start "$@"
    ;;
stop)
    shift
    cmd_stop "$@"
    ;;
url)
    (($# == 2)) || die "usage: lab-registry.sh url DIR"
    cat "$2/url"
    ;;
*)
    die "usage: lab-registry.sh start ADDR PORT DIR | stop DIR | url DIR"
    ;;
esac
