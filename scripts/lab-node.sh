#!/usr/bin/env bash
# lab-node.sh — create or destroy one node of the stacklock local lab.
#
# A lab node is a Docker container running systemd as PID 1 (and sshd), with no Docker
# network at all (--network none): it gets its own network namespace, wired to the host by
# one veth pair holding a /30. No bridge, no NAT, no ip_forward change. The node can reach
# exactly two host addresses: the host side of its own veth, and the lab's mirror address
# (one address on the host, carried by a `dummy` interface `sl-mirror`, or by `lo` when the
# kernel has no dummy driver), through a /32 route via its veth. Nothing else is routable.
#
# Usage:
#   lab-node.sh create NAME IMAGE NODE_ADDR HOST_ADDR MIRROR_ADDR PUBKEY [LABEL=VALUE...]
#   lab-node.sh destroy NAME NODE_ADDR
#   lab-node.sh wire NAME NODE_ADDR HOST_ADDR MIRROR_ADDR   (a restarted node: its network again)
#   lab-node.sh mirror MIRROR_ADDR     (only put the mirror address on the host; `create`
#                                       does it too. Run it before starting a server that
#                                       binds MIRROR_ADDR ahead of the first node.)
#
#   PUBKEY is the path of an SSH public key file, or the key itself ("ssh-ed25519 AAAA...").
#   LABEL=VALUE pairs become container labels (e.g. stacklock.environment=dev).
#
# The host-side veth is named after the node's address: slv-<3rd octet>-<4th octet>
# (at most 11 characters). `create` starts by removing any leftover of the same node, so
# a retried create is safe; `destroy` succeeds when the node is already gone.
# Environment: DOCKER (docker client, default `docker`), LAB_NODE_SSH_WAIT (seconds to wait
# for sshd, default 90).
#
# Nodes can run containers of their own (docker run inside a node; docs/containers.md says
# why each of these is needed and what was tried): CAP_SYS_ADMIN and seccomp=unconfined for
# systemd and for runc's mounts and namespaces; CAP_NET_ADMIN for dockerd to set up a nested
# container's network namespace (its loopback), even with --network none or host;
# CAP_SYS_PTRACE for `docker exec` into a nested container that runs as another user (runc
# joins its namespaces through /proc/PID/ns, which needs ptrace access to that process: verify
# reads the serving image's Python closure that way); a cgroup
# namespace of the node's own, whose cgroup v1 hierarchies the host remounts read-write in
# the node's mount namespace (the node then writes only under its own cgroup, where nested
# containers land, instead of seeing the host's whole hierarchy); and a volume
# <NAME>-docker on /var/lib/docker, so the nested dockerd stores images with overlay2 on
# the host's file system (overlay on the node's own overlay root is refused; vfs copies a
# whole image per container). No --privileged, no devices, no extra network.
set -euo pipefail

DOCKER=${DOCKER:-docker}
SSH_WAIT=${LAB_NODE_SSH_WAIT:-90}
MIRROR_IF=sl-mirror

die() {
    echo "lab-node.sh: error: $*" >&2
    exit 1
}
say() { echo "lab-node.sh: $*" >&2; }

host_ifname() { # NODE_ADDR -> slv-<o2>-<o3>-<o4> (at most 15 characters; unique per address,
    # so labs in different ranges, e.g. the demo's and the tests', never share an interface)
    local a=$1 o2 o3 o4
    IFS=. read -r _ o2 o3 o4 <<<"$a"
    [[ -n ${o4:-} ]] || die "not an IPv4 address: $a"
    echo "slv-${o2}-${o3}-${o4}"
}

ensure_lab_unreachable() { # ADDR: the /16 of the lab never leaves this machine
    # Node /30s are routed by their veth pairs (more specific); any other lab address,
    # e.g. a node whose veth is gone, is answered "unreachable" here instead of being sent
    # to the default gateway.
    local o1 o2
    IFS=. read -r o1 o2 _ _ <<<"$1"
    ip route replace unreachable "${o1}.${o2}.0.0/16"
}

check_ipv4() {
    [[ $1 =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]] || die "$2 must be an IPv4 address, got '$1'"
}

ensure_mirror_address() { # MIRROR_ADDR: one host address every node reaches via its veth
    local mirror=$1
    ensure_lab_unreachable "$mirror"
    if [[ $(ip -o -4 addr show) == *" inet ${mirror}/"* ]]; then # read whole: no SIGPIPE
        return 0
    fi
    # concurrent creates may race here: every step below is idempotent
    if ! ip link show "$MIRROR_IF" >/dev/null 2>&1; then
        ip link add "$MIRROR_IF" type dummy 2>/dev/null || true
    fi
    if ip link show "$MIRROR_IF" >/dev/null 2>&1; then
        ip link set "$MIRROR_IF" up
        ip addr replace "${mirror}/32" dev "$MIRROR_IF"
    else
        # no dummy driver in this kernel: a /32 on lo is the same for the nodes
        say "no dummy interface support; putting ${mirror}/32 on lo"
        ip addr replace "${mirror}/32" dev lo
    fi
}

remove_node() { # NAME NODE_ADDR
    local name=$1 hif
    hif=$(host_ifname "$2")
    if "$DOCKER" container inspect "$name" >/dev/null 2>&1; then
        "$DOCKER" rm -f "$name" >/dev/null
    fi
    if "$DOCKER" volume inspect "${name}-docker" >/dev/null 2>&1; then
        "$DOCKER" volume rm -f "${name}-docker" >/dev/null # the node's nested image store
    fi
    if ip link show "$hif" >/dev/null 2>&1; then
        ip link del "$hif"
    fi
}

wait_for_sshd() { # ADDR
    local addr=$1 deadline banner
    deadline=$((SECONDS + SSH_WAIT))
    while ((SECONDS < deadline)); do
        banner=$(timeout 3 bash -c "exec 3<>/dev/tcp/${addr}/22 && head -c 4 <&3" 2>/dev/null || true)
        if [[ $banner == "SSH-" ]]; then
            return 0
        fi
        sleep 1
    done
    return 1
}

own_cgroups() { # NAME: the node's cgroup v1 hierarchies read-write, in its mount namespace
    # Docker mounts them read-only in a container; with --cgroupns private each shows only
    # the node's own cgroup (the namespace's root), so read-write lets the node's dockerd
    # create its containers' cgroups under the node's and nowhere else.
    local name=$1 pid dir
    pid=$("$DOCKER" inspect -f '{{.State.Pid}}' "$name")
    [[ $pid =~ ^[1-9][0-9]*$ ]] || die "$name: container is not running (pid '$pid'); see: docker logs $name"
    for dir in $(awk '$3 == "cgroup" {print $2}' "/proc/${pid}/mounts"); do
        nsenter -t "$pid" -m mount -o remount,bind,rw "$dir" ||
            die "$name: could not make $dir read-write in the node"
    done
}

wire_node() { # NAME NODE_ADDR HOST_ADDR MIRROR_ADDR: the node's veth pair and routes
    local name=$1 node_addr=$2 host_addr=$3 mirror=$4 hif cif pid
    hif=$(host_ifname "$node_addr")
    cif="${hif/slv-/slc-}"
    pid=$("$DOCKER" inspect -f '{{.State.Pid}}' "$name")
    [[ $pid =~ ^[1-9][0-9]*$ ]] || die "$name: container is not running (pid '$pid'); see: docker logs $name"
    if ip link show "$hif" >/dev/null 2>&1; then
        ip link del "$hif" # the pair of a namespace that is gone (a restarted container)
    fi
    say "$name: veth $hif <-> eth0, ${host_addr}/30 <-> ${node_addr}/30"
    ip link add "$hif" type veth peer name "$cif"
    ip link set "$cif" netns "$pid"
    nsenter -t "$pid" -n ip link set "$cif" name eth0
    nsenter -t "$pid" -n ip addr add "${node_addr}/30" dev eth0
    nsenter -t "$pid" -n ip link set eth0 up
    nsenter -t "$pid" -n ip link set lo up
    ip addr add "${host_addr}/30" dev "$hif"
    ip link set "$hif" up
    ensure_mirror_address "$mirror"
    nsenter -t "$pid" -n ip route replace "${mirror}/32" via "$host_addr" dev eth0
}

cmd_create() {
    (($# >= 6)) || die "usage: lab-node.sh create NAME IMAGE NODE_ADDR HOST_ADDR MIRROR_ADDR PUBKEY [LABEL=VALUE...]"
    local name=$1 image=$2 node_addr=$3 host_addr=$4 mirror=$5 pubkey=$6
    shift 6
    check_ipv4 "$node_addr" NODE_ADDR
    check_ipv4 "$host_addr" HOST_ADDR
    check_ipv4 "$mirror" MIRROR_ADDR
    [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "bad node name '$name'"
    if [[ -f $pubkey ]]; then
        pubkey=$(cat "$pubkey")
    fi
    [[ $pubkey == ssh-* || $pubkey == ecdsa-* ]] || die "PUBKEY is neither a public key file nor an OpenSSH public key"
    local labels=() kv
    for kv in "$@"; do
        [[ $kv == *=* ]] || die "label '$kv' is not LABEL=VALUE"
        labels+=(--label "$kv")
    done
    "$DOCKER" image inspect "$image" >/dev/null 2>&1 ||
        die "image $image not found (build it: python -m stacklock.adapters.docker build-image)"

    remove_node "$name" "$node_addr"

    say "$name: starting container from $image"
    "$DOCKER" volume create --label "stacklock.lab-node=$name" "${name}-docker" >/dev/null
    "$DOCKER" run -d --network none --name "$name" --hostname "$name" \
        --cap-add SYS_ADMIN --cap-add NET_ADMIN --cap-add SYS_PTRACE \
        --security-opt seccomp=unconfined \
        --cgroupns private --tmpfs /run --tmpfs /run/lock \
        --mount "type=volume,src=${name}-docker,dst=/var/lib/docker" \
        "${labels[@]}" "$image" /lib/systemd/systemd >/dev/null
    own_cgroups "$name"
    wire_node "$name" "$node_addr" "$host_addr" "$mirror"

    printf '%s\n' "$pubkey" | "$DOCKER" exec -i "$name" sh -c \
        'umask 077 && mkdir -p /root/.ssh && cat > /root/.ssh/authorized_keys'

    say "$name: waiting up to ${SSH_WAIT}s for sshd on ${node_addr}:22"
    if ! wait_for_sshd "$node_addr"; then
        "$DOCKER" exec "$name" systemctl --no-pager status ssh >&2 2>&1 || true
        die "$name: sshd did not answer on ${node_addr}:22 within ${SSH_WAIT}s"
    fi
    say "$name: ready (ssh root@${node_addr})"
}

cmd_wire() { # a node that restarted (docker restart, the host rebooted) has a new, empty
    # network namespace: wire it again, as create did, and wait for sshd
    (($# == 4)) || die "usage: lab-node.sh wire NAME NODE_ADDR HOST_ADDR MIRROR_ADDR"
    check_ipv4 "$2" NODE_ADDR
    check_ipv4 "$3" HOST_ADDR
    check_ipv4 "$4" MIRROR_ADDR
    own_cgroups "$1"
    wire_node "$@"
    wait_for_sshd "$2" || die "$1: sshd did not answer on ${2}:22 within ${SSH_WAIT}s"
    say "$1: wired again (ssh root@${2})"
}

cmd_destroy() {
    (($# == 2)) || die "usage: lab-node.sh destroy NAME NODE_ADDR"
    check_ipv4 "$2" NODE_ADDR
    remove_node "$1" "$2"
    say "$1: removed"
}

case ${1:-} in
create)
    shift
    cmd_create "$@"
    ;;
destroy)
    shift
    cmd_destroy "$@"
    ;;
wire)
    shift
    cmd_wire "$@"
    ;;
mirror)
    (($# == 2)) || die "usage: lab-node.sh mirror MIRROR_ADDR"
    check_ipv4 "$2" MIRROR_ADDR
    ensure_mirror_address "$2"
    ;;
*)
    die "usage: lab-node.sh create NAME IMAGE NODE_ADDR HOST_ADDR MIRROR_ADDR PUBKEY [LABEL=VALUE...] | destroy NAME NODE_ADDR | wire NAME NODE_ADDR HOST_ADDR MIRROR_ADDR | mirror MIRROR_ADDR"
    ;;
esac
