# Network namespaces standing in for separate machines (sourced by slurm.sh and docker-engines.sh).
#
# One host bridge with address $NET.1/24 (the host's side), one namespace per node holding
# only lo and eth0 = $NET.<octet>/24 (a veth whose peer sits on the bridge), no default
# route: traffic goes between the host and the project's own namespaces, nowhere else.
# Processes enter a namespace with `nsenter --net=/run/netns/NAME` (never `ip netns exec`,
# which remounts /sys).

netns_bridge() { # netns_bridge BRIDGE NET
    local bridge=$1 net=$2
    ip link show "$bridge" >/dev/null 2>&1 || ip link add "$bridge" type bridge
    [[ "$(ip addr show dev "$bridge")" == *"inet $net.1/"* ]] || ip addr add "$net.1/24" dev "$bridge"
    ip link set "$bridge" up
}

netns_node() { # netns_node BRIDGE NET NAME OCTET: namespace NAME at $NET.$OCTET on BRIDGE
    local bridge=$1 net=$2 name=$3 octet=$4
    [ -e "/run/netns/$name" ] || ip netns add "$name"
    if ! ip link show "v$name" >/dev/null 2>&1; then
        ip link add "v$name" type veth peer name eth0 netns "$name"
        ip link set "v$name" master "$bridge" up
    fi
    ip -n "$name" link set lo up
    [[ "$(ip -n "$name" addr show dev eth0)" == *"inet $net.$octet/"* ]] ||
        ip -n "$name" addr add "$net.$octet/24" dev eth0
    ip -n "$name" link set eth0 up
}

netns_run() { # netns_run NAME CMD...: exec CMD in NAME's network namespace, hostname NAME
    local name=$1; shift  # replaces the calling shell: run it as `setsid bash -c "source ...; netns_run ..."`
    exec nsenter --net="/run/netns/$name" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$name" "$@"
}

netns_kill() { # netns_kill NAME: kill -9 every process in the namespace (a machine crash)
    local name=$1 pid
    [ -e "/run/netns/$name" ] || return 0
    for pid in $(ip netns pids "$name" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do [ -z "$(ip netns pids "$name" 2>/dev/null)" ] && break; sleep 0.1; done
}

netns_delete() { # netns_delete BRIDGE NAME...: the namespaces, their veths and the bridge
    local bridge=$1 name; shift
    for name in "$@"; do
        ip link del "v$name" 2>/dev/null || true
        [ -e "/run/netns/$name" ] && ip netns del "$name"
    done
    ip link del "$bridge" 2>/dev/null || true
}
