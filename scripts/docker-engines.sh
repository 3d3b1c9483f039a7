#!/usr/bin/env bash
# Docker Engines standing in for GPU hosts, for tests, benchmarks and the demo.
#
#   scripts/docker-engines.sh start [N]   install docker.io if missing, start N plain engines
#                                         (default 2: h1, h2), a swarm of three nodes (manager
#                                         "swarm" and workers hhsw1, hhsw2), and import the
#                                         test image into each (idempotent)
#   scripts/docker-engines.sh stop        stop every engine this script started, delete the
#                                         workers' namespaces and the bridge
#   scripts/docker-engines.sh stop-one NAME   stop one engine (a host failure), e.g. h2
#   scripts/docker-engines.sh start-one NAME  start one engine again, e.g. h3 or hhsw1
#   scripts/docker-engines.sh kill-node NAME  kill -9 everything in swarm worker NAME's
#                                         namespace (engine, containers): a machine crash
#   scripts/docker-engines.sh status      list engines and whether they answer
#
# Engine NAME listens on unix://$HYBRIDHUB_DOCKER_DIR/NAME/docker.sock (default dir
# /tmp/hybridhub-docker) with its own data-root, exec-root and pidfile, no bridge and no
# iptables (containers use host networking).  Every swarm node's daemon.json advertises
# two fake GPUs as node generic resources (NVIDIA-GPU=<uuid>).
#
# The swarm workers are separate machines in miniature: each engine runs in its own network
# namespace and hostname (scripts/netns.sh) at $NET.11 and $NET.12; the manager runs on the
# host and advertises the bridge address $NET.1.  Their containers (host networking) listen
# on the worker's own address; the host reaches it over the bridge.
#
# The test image (hybridhub-hostfs:1) is `docker import` of an empty tarball: containers
# bind the host's /usr /lib /lib64 /bin /etc and the Python environment read-only.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=netns.sh
source "$HERE/netns.sh"

BASE="${HYBRIDHUB_DOCKER_DIR:-/tmp/hybridhub-docker}"
IMAGE="${HYBRIDHUB_TEST_IMAGE:-hybridhub-hostfs:1}"
SWARM_GPUS="${HYBRIDHUB_SWARM_GPUS:-GPU-5a4d0001-0000-4000-8000-000000000001 GPU-5a4d0001-0000-4000-8000-000000000002}"
NET="${HYBRIDHUB_SWARM_NET:-10.209.17}"
BRIDGE="${HYBRIDHUB_SWARM_BRIDGE:-hhswarm0}"
# worker name:last octet; its GPUs are GPU-5a4d00<octet>-0000-4000-8000-00000000000{1,2}
WORKERS=("hhsw1:11" "hhsw2:12")

log() { echo "docker-engines: $*" >&2; }

install_docker() {
    if command -v dockerd >/dev/null; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        log "dockerd missing; install Debian's docker.io"
        return 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
}

sock() { echo "$BASE/$1/docker.sock"; }
dk() { local name=$1; shift; DOCKER_HOST="unix://$(sock "$name")" docker "$@"; }

running() {
    local pidfile="$BASE/$1/docker.pid"
    [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

wait_answering() {
    local name=$1 pid=$2
    for _ in $(seq 1 150); do
        if dk "$name" version >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        sleep 0.2
    done
    log "engine $name did not answer; its log:"
    tail -n 30 "$BASE/$name/dockerd.log" >&2 || true
    return 1
}

start_engine() { # start_engine NAME [CONFIG [NAMESPACE]]
    local name=$1 config=${2:-} ns=${3:-}
    local dir="$BASE/$name"
    if running "$name" && dk "$name" version >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p "$dir/data" "$dir/exec"
    # a crashed engine leaves its containerd's pid behind; a reused pid would stall the start
    rm -f "$dir/docker.sock" "$dir/docker.pid" "$dir/exec/containerd/containerd.pid"
    local args=(--bridge=none --iptables=false --ip6tables=false
        -H "unix://$dir/docker.sock" --data-root "$dir/data" --exec-root "$dir/exec"
        --pidfile "$dir/docker.pid")
    if [ -n "$config" ]; then
        args+=(--config-file "$config")
    else
        # an empty config file, so /etc/docker/daemon.json never leaks in
        echo '{}' > "$dir/daemon.json"
        args+=(--config-file "$dir/daemon.json")
    fi
    if [ -n "$ns" ]; then
        setsid bash -c 'source "$0" && netns_run "$@"' "$HERE/netns.sh" "$ns" dockerd "${args[@]}" \
            >"$dir/dockerd.log" 2>&1 < /dev/null &
    else
        setsid dockerd "${args[@]}" >"$dir/dockerd.log" 2>&1 < /dev/null &
    fi
    wait_answering "$name" $!
    log "engine $name up at unix://$dir/docker.sock"
}

import_image() {
    local name=$1
    if dk "$name" image inspect "$IMAGE" >/dev/null 2>&1; then
        return 0
    fi
    local tarball="$BASE/empty.tar"
    [ -f "$tarball" ] || tar cf "$tarball" --files-from /dev/null
    dk "$name" import "$tarball" "$IMAGE" >/dev/null
    log "imported $IMAGE into $name"
}

gpu_config() { # gpu_config NAME UUID...: a daemon.json advertising the GPUs
    local dir="$BASE/$1" entries="" uuid; shift
    mkdir -p "$dir"
    for uuid in "$@"; do
        entries="$entries${entries:+, }\"NVIDIA-GPU=$uuid\""
    done
    echo "{\"node-generic-resources\": [$entries]}" > "$dir/daemon.json"
    echo "$dir/daemon.json"
}

worker_gpus() { echo "GPU-5a4d00$1-0000-4000-8000-000000000001 GPU-5a4d00$1-0000-4000-8000-000000000002"; }

worker_octet() {
    local spec
    for spec in "${WORKERS[@]}"; do
        [ "${spec%%:*}" = "$1" ] && { echo "${spec#*:}"; return 0; }
    done
    return 1
}

start_swarm() {
    netns_bridge "$BRIDGE" "$NET"
    # shellcheck disable=SC2086
    start_engine swarm "$(gpu_config swarm $SWARM_GPUS)"
    local state addr
    state=$(dk swarm info --format '{{.Swarm.LocalNodeState}}')
    addr=$(dk swarm info --format '{{.Swarm.NodeAddr}}')
    if [ "$state" = "active" ] && [ "$addr" != "$NET.1" ]; then
        dk swarm swarm leave --force >/dev/null  # an older single-node swarm on 127.0.0.1
        state=inactive
    fi
    if [ "$state" != "active" ]; then
        dk swarm swarm init --advertise-addr "$NET.1" --listen-addr "$NET.1:2377" >/dev/null
        log "swarm initialised on engine swarm ($NET.1:2377)"
    fi
    local spec
    for spec in "${WORKERS[@]}"; do start_worker "${spec%%:*}"; done
    wait_nodes_ready
}

start_worker() { # a worker engine in its own namespace, joined to the swarm
    local name=$1 octet state node
    octet=$(worker_octet "$name")
    netns_node "$BRIDGE" "$NET" "$name" "$octet"
    # shellcheck disable=SC2046
    start_engine "$name" "$(gpu_config "$name" $(worker_gpus "$octet"))" "$name"
    import_image "$name"
    state=$(dk "$name" info --format '{{.Swarm.LocalNodeState}} {{.Swarm.NodeID}}')
    node=${state#* }
    case "${state%% *}" in
        active|pending)  # joined: to this swarm if the manager knows the node
            dk swarm node inspect "$node" >/dev/null 2>&1 && return 0
            dk "$name" swarm leave --force >/dev/null ;;
    esac
    # nodes of an earlier incarnation of this worker would stay "down" beside the new one
    local old
    for old in $(dk swarm node ls --filter "name=$name" --format '{{.ID}} {{.Status}}' | awk '$2=="Down"{print $1}'); do
        dk swarm node rm --force "$old" >/dev/null || true
    done
    dk "$name" swarm join --token "$(dk swarm swarm join-token -q worker)" \
        --advertise-addr "$NET.$octet" --listen-addr "$NET.$octet:2377" "$NET.1:2377" >/dev/null
    log "worker $name joined the swarm from $NET.$octet"
}

wait_nodes_ready() { # every worker listed Ready by the manager
    local spec name
    for _ in $(seq 1 150); do
        local ready=1
        for spec in "${WORKERS[@]}"; do
            name=${spec%%:*}
            [[ "$(dk swarm node ls --filter "name=$name" --format '{{.Status}}')" == *Ready* ]] || ready=0
        done
        [ "$ready" = 1 ] && return 0
        sleep 0.2
    done
    log "swarm nodes not ready:"; dk swarm node ls >&2 || true
    return 1
}

kill_node() { # kill -9 every process of worker NAME (engine, containerd, containers)
    worker_octet "$1" >/dev/null || { log "$1 is not a swarm worker"; return 1; }
    netns_kill "$1"
    rm -f "$BASE/$1/docker.pid"
    log "node $1 killed"
}

stop_engine() {
    local name=$1 dir="$BASE/$1" pid
    if ! running "$name"; then
        return 0
    fi
    pid=$(cat "$dir/docker.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    log "engine $name stopped"
}

cmd=${1:-start}
case "$cmd" in
    start)
        n=${2:-2}
        install_docker
        mkdir -p "$BASE"
        for i in $(seq 1 "$n"); do
            start_engine "h$i"
            import_image "h$i"
        done
        start_swarm
        import_image swarm
        ;;
    start-one)
        install_docker
        if worker_octet "$2" >/dev/null; then
            start_worker "$2"
            wait_nodes_ready
        else
            start_engine "$2"
            import_image "$2"
        fi
        ;;
    kill-node)
        kill_node "$2"
        ;;
    stop-one)
        stop_engine "$2"
        ;;
    stop)
        for dir in "$BASE"/*/; do
            [ -d "$dir" ] || continue
            stop_engine "$(basename "$dir")"
        done
        names=()
        for spec in "${WORKERS[@]}"; do
            names+=("${spec%%:*}")
            netns_kill "${spec%%:*}"
        done
        netns_delete "$BRIDGE" "${names[@]}"
        ;;
    status)
        for dir in "$BASE"/*/; do
            [ -d "$dir" ] || continue
            name=$(basename "$dir")
            if dk "$name" version >/dev/null 2>&1; then state=up; else state=down; fi
            echo "$name unix://$dir""docker.sock $state"
        done
        ;;
    *)
        echo "usage: $0 start [N] | start-one NAME | stop-one NAME | kill-node NAME | stop | status" >&2
        exit 2
        ;;
esac
