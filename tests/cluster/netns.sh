#!/usr/bin/env bash
# Two network namespaces joined by a veth pair: a private two-"host" network
# for multi-node DDP tests on one machine.
#
#   netns.sh up PREFIX     create PREFIX-a and PREFIX-b (recreated if present)
#   netns.sh down PREFIX   delete them (no error if absent)
#   netns.sh status PREFIX show addresses and links
#
# Each namespace gets `lo` (up) and one end of the veth pair, named $NETNS_IFNAME
# (default veth0; interface names are per namespace, so both ends share the name
# and one GLOO_SOCKET_IFNAME fits both "nodes"). Addresses come from the private
# /24 $NETNS_SUBNET (default 10.231.7): .1 in PREFIX-a, .2 in PREFIX-b. The subnet
# exists only inside the two namespaces; nothing is routed to or from the host,
# so this traffic never leaves them.
#
# On success `up` prints shell-style KEY=VALUE lines (NS_A, NS_B, IFNAME, ADDR_A,
# ADDR_B, PREFIXLEN) for callers to parse.
#
# Exit codes: 0 ok; 2 usage; 3 needs root / `ip` missing / namespaces not
# permitted here (callers should skip, not fail); 1 anything else.
# Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for the /run/netns bind mounts).
set -euo pipefail

IFNAME=${NETNS_IFNAME:-veth0}
SUBNET=${NETNS_SUBNET:-10.231.7}
PREFIXLEN=24

die() { echo "netns.sh: $*" >&2; exit 1; }
unsupported() { echo "netns.sh: $*" >&2; exit 3; }

usage() {
    echo "usage: $0 {up|down|status} PREFIX" >&2
    exit 2
}

[[ $# -eq 2 ]] || usage
cmd=$1
prefix=$2
# Namespace names become file names under /run/netns; keep them boring.
[[ $prefix =~ ^[A-Za-z0-9_.-]{1,40}$ ]] || die "bad PREFIX '$prefix' (use [A-Za-z0-9_.-], at most 40 chars)"
[[ $SUBNET =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "bad NETNS_SUBNET '$SUBNET' (want three octets, e.g. 10.231.7)"
[[ ${#IFNAME} -le 15 ]] || die "NETNS_IFNAME '$IFNAME' longer than 15 characters"

ns_a="${prefix}-a"
ns_b="${prefix}-b"
addr_a="${SUBNET}.1"
addr_b="${SUBNET}.2"

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF -- "$1"; }

down() {
    local ns
    for ns in "$ns_a" "$ns_b"; do
        if ns_exists "$ns"; then
            # Deleting a namespace destroys its end of the veth pair, and with it
            # the peer. Processes still running inside keep the namespace alive
            # but it is no longer reachable by name.
            ip netns delete "$ns" || die "could not delete namespace $ns"
        fi
    done
}

up() {
    [[ $(id -u) -eq 0 ]] || unsupported "must run as root (needs CAP_NET_ADMIN)"
    command -v ip >/dev/null 2>&1 || unsupported "'ip' (iproute2) not found"
    down
    if ! err=$(ip netns add "$ns_a" 2>&1); then
        unsupported "cannot create network namespace $ns_a: $err"
    fi
    trap 'down' ERR
    ip netns add "$ns_b"
    # Create the pair directly inside the two namespaces, so no interface ever
    # appears in the host namespace (and names cannot clash with host ones).
    ip link add "$IFNAME" netns "$ns_a" type veth peer name "$IFNAME" netns "$ns_b"
    ip -n "$ns_a" link set lo up
    ip -n "$ns_b" link set lo up
    ip -n "$ns_a" addr add "${addr_a}/${PREFIXLEN}" dev "$IFNAME"
    ip -n "$ns_b" addr add "${addr_b}/${PREFIXLEN}" dev "$IFNAME"
    ip -n "$ns_a" link set "$IFNAME" up
    ip -n "$ns_b" link set "$IFNAME" up
    # The second end may take a moment to report carrier (state UP); wait up to
    # 5 s for both so callers can connect straight away.
    local _ ready=0
    for _ in $(seq 1 50); do
        if ip -n "$ns_a" link show "$IFNAME" | grep -q 'state UP' &&
            ip -n "$ns_b" link show "$IFNAME" | grep -q 'state UP'; then
            ready=1
            break
        fi
        sleep 0.1
    done
    [[ $ready -eq 1 ]] || echo "netns.sh: warning: $IFNAME not reported UP after 5 s" >&2
    trap - ERR
    printf 'NS_A=%s\nNS_B=%s\nIFNAME=%s\nADDR_A=%s\nADDR_B=%s\nPREFIXLEN=%s\n' \
        "$ns_a" "$ns_b" "$IFNAME" "$addr_a" "$addr_b" "$PREFIXLEN"
}

status() {
    local ns
    for ns in "$ns_a" "$ns_b"; do
        if ns_exists "$ns"; then
            echo "== $ns"
            ip -n "$ns" -br addr
        else
            echo "== $ns (absent)"
        fi
    done
}

case $cmd in
    up) up ;;
    down)
        [[ $(id -u) -eq 0 ]] || unsupported "must run as root"
        down
        ;;
    status) status ;;
    *) usage ;;
esac
