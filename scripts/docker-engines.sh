#!/usr/bin/env bash
# Docker Engines standing in for GPU hosts, for tests, benchmarks and the demo.
#
#   scripts/docker-engines.sh start [N]   install docker.io if missing, start N plain engines
#                                         (default 2: h1, h2) and one single-node swarm engine,
#                                         and import the test image into each (idempotent)
#   scripts/docker-engines.sh stop        stop every engine this script started
#   scripts/docker-engines.sh stop-one NAME   stop one engine (a host failure), e.g. h2
#   scripts/docker-engines.sh start-one NAME  start one plain engine, e.g. h3
#   scripts/docker-engines.sh status      list engines and whether they answer
#
# Engine NAME listens on unix://$HYBRIDHUB_DOCKER_DIR/NAME/docker.sock (default dir
# /tmp/hybridhub-docker) with its own data-root, exec-root and pidfile, no bridge and no
# iptables (containers use host networking).  The swarm engine's daemon.json advertises
# fake GPUs as node generic resources (NVIDIA-GPU=<uuid>).
#
# The test image (hybridhub-hostfs:1) is `docker import` of an empty tarball: containers
# bind the host's /usr /lib /lib64 /bin /etc and the Python environment read-only.
set -euo pipefail

BASE="${HYBRIDHUB_DOCKER_DIR:-/tmp/hybridhub-docker}"
IMAGE="${HYBRIDHUB_TEST_IMAGE:-hybridhub-hostfs:1}"
SWARM_GPUS="${HYBRIDHUB_SWARM_GPUS:-GPU-5a4d0001-0000-4000-8000-000000000001 GPU-5a4d0001-0000-4000-8000-000000000002}"

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

start_engine() {
    local name=$1 config=${2:-}
    local dir="$BASE/$name"
    if running "$name" && dk "$name" version >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p "$dir/data" "$dir/exec"
    rm -f "$dir/docker.sock" "$dir/docker.pid"
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
    setsid dockerd "${args[@]}" >"$dir/dockerd.log" 2>&1 < /dev/null &
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

swarm_config() {
    local dir="$BASE/swarm" entries="" uuid
    mkdir -p "$dir"
    for uuid in $SWARM_GPUS; do
        entries="$entries${entries:+, }\"NVIDIA-GPU=$uuid\""
    done
    echo "{\"node-generic-resources\": [$entries]}" > "$dir/daemon.json"
    echo "$dir/daemon.json"
}

start_swarm() {
    start_engine swarm "$(swarm_config)"
    if [ "$(dk swarm info --format '{{.Swarm.LocalNodeState}}')" != "active" ]; then
        dk swarm swarm init --advertise-addr 127.0.0.1 >/dev/null
        log "swarm initialised on engine swarm"
    fi
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
        start_engine "$2"
        import_image "$2"
        ;;
    stop-one)
        stop_engine "$2"
        ;;
    stop)
        for dir in "$BASE"/*/; do
            [ -d "$dir" ] || continue
            stop_engine "$(basename "$dir")"
        done
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
        echo "usage: $0 start [N] | start-one NAME | stop-one NAME | stop | status" >&2
        exit 2
        ;;
esac
