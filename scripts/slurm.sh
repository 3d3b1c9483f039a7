#!/usr/bin/env bash
# A small Slurm cluster with fake GPUs, for tests, benchmarks and the demo (root, no systemd).
#
#   scripts/slurm.sh start            install Debian's slurmctld/slurmd/slurm-client/munge if
#                                     missing, start munged, slurmctld and one slurmd per node
#                                     (idempotent)
#   scripts/slurm.sh stop             cancel nothing, kill everything this script started,
#                                     delete the namespaces and the bridge
#   scripts/slurm.sh status           nodes and whether their slurmd runs
#   scripts/slurm.sh kill-node NAME   kill -9 every process in NAME's namespace (a node crash)
#   scripts/slurm.sh start-node NAME  start NAME's slurmd again
#   scripts/slurm.sh env              print `export SLURM_CONF=...` for this cluster
#
# Nodes (each its own network namespace and hostname, slurmd under `nsenter --net` +
# `unshare --uts`, never `ip netns exec`, which remounts /sys and kills slurmd):
#   hhn1  $NET.11  partition h100  gpu:h100:4
#   hhn2  $NET.12  partition a100  gpu:a100:2
# slurmctld runs on the host at $NET.1, the only address on the host bridge; the namespaces
# hold only their own address and lo, no default route.  GPUs are GRES backed by symlinks to
# /dev/null (Slurm 22.05 drops a GPU without File=).  Settings follow docs/slurm.md.
set -euo pipefail

BASE="${HYBRIDHUB_SLURM_DIR:-/tmp/hybridhub-slurm}"
NET="${HYBRIDHUB_SLURM_NET:-10.209.16}"
BRIDGE="${HYBRIDHUB_SLURM_BRIDGE:-hhslurm0}"
CONF="$BASE/etc/slurm.conf"
# name:last-octet:gres-type:gres-count:partition
NODES=("hhn1:11:h100:4:h100" "hhn2:12:a100:2:a100")

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=netns.sh
source "$HERE/netns.sh"

log() { echo "slurm.sh: $*" >&2; }
export SLURM_CONF="$CONF"

node_field() { # node_field NAME INDEX
    local spec
    for spec in "${NODES[@]}"; do
        IFS=: read -r -a f <<< "$spec"
        if [ "${f[0]}" = "$1" ]; then echo "${f[$2]}"; return 0; fi
    done
    log "unknown node $1"; return 1
}

install_slurm() {
    local missing=() pkg
    for pkg in slurmctld slurmd slurm-client munge; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then log "please install: ${missing[*]}"; return 1; fi
    while pgrep -x "apt-get|dpkg|apt" >/dev/null; do sleep 2; done  # the apt lock
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    }
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    [ -s /etc/munge/munge.key ] || { log "no /etc/munge/munge.key (package postinst makes it)"; return 1; }
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 1 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "munged does not answer"; return 1
}

write_config() {
    mkdir -p "$BASE/etc" "$BASE/state" "$BASE/run" "$BASE/log" "$BASE/dev"
    local host spec name octet type count part nodes=() gres=()
    host=$(hostname -s)
    for spec in "${NODES[@]}"; do
        IFS=: read -r name octet type count part <<< "$spec"
        mkdir -p "$BASE/spool/$name"
        for i in $(seq 0 $((count - 1))); do ln -sfn /dev/null "$BASE/dev/$name-gpu$i"; done
        nodes+=("NodeName=$name NodeAddr=$NET.$octet NodeHostname=$name CPUs=8 Sockets=1 CoresPerSocket=8 ThreadsPerCore=1 RealMemory=8000 Gres=gpu:$type:$count State=UNKNOWN")
        nodes+=("PartitionName=$part Nodes=$name MaxTime=INFINITE State=UP")
        gres+=("NodeName=$name Name=gpu Type=$type File=$BASE/dev/$name-gpu[0-$((count - 1))]")
    done
    cat > "$CONF.new" <<EOF
# written by scripts/slurm.sh: a test cluster with fake GPUs
ClusterName=hybridhub
SlurmctldHost=$host($NET.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/%n
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd-%n.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
KillWait=2
SlurmdTimeout=5
MessageTimeout=3
MinJobAge=300
MailProg=/bin/true
$(printf '%s\n' "${nodes[@]}")
EOF
    printf '%s\n' "${gres[@]}" > "$BASE/etc/gres.conf"
    mv "$CONF.new" "$CONF"
}

make_network() {
    netns_bridge "$BRIDGE" "$NET"
    local spec name octet
    for spec in "${NODES[@]}"; do
        IFS=: read -r name octet _ <<< "$spec"
        netns_node "$BRIDGE" "$NET" "$name" "$octet"
    done
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_ctld() {
    if pid_alive "$BASE/run/slurmctld.pid" && [[ "$(scontrol ping 2>/dev/null)" == *UP* ]]; then
        return 0
    fi
    # an old slurmctld still holding port 6817 must be gone first
    for _ in $(seq 1 50); do [[ "$(ss -ltn 2>/dev/null)" == *":6817 "* ]] || break; sleep 0.2; done
    setsid slurmctld -D -c -f "$CONF" >>"$BASE/log/slurmctld.out" 2>&1 < /dev/null &
    for _ in $(seq 1 100); do
        [[ "$(scontrol ping 2>/dev/null)" == *UP* ]] && return 0
        sleep 0.1
    done
    log "slurmctld did not come up; its log:"; tail -n 20 "$BASE/log/slurmctld.log" >&2 || true
    return 1
}

start_node() {
    local name=$1
    if pid_alive "$BASE/run/slurmd-$name.pid"; then return 0; fi
    rm -f "$BASE/run/slurmd-$name.pid"
    setsid bash -c "source '$HERE/netns.sh' && netns_run $name slurmd -D -N $name -f '$CONF'" \
        >>"$BASE/log/slurmd-$name.out" 2>&1 < /dev/null &
}

wait_nodes_idle() {
    local spec name state
    for _ in $(seq 1 150); do
        local ready=1
        for spec in "${NODES[@]}"; do
            name=${spec%%:*}
            state=$(scontrol show node "$name" 2>/dev/null | sed -n 's/.*State=\([^ ]*\).*/\1/p')
            case "$state" in IDLE*|MIXED*|ALLOCATED*) ;; *) ready=0 ;; esac
            case "$state" in *DRAIN*|*INVAL*|*NOT_RESPONDING*) ready=0 ;; esac
        done
        [ "$ready" = 1 ] && return 0
        sleep 0.2
    done
    log "nodes not ready:"; scontrol show node >&2 || true
    return 1
}

kill_namespace() { # kill -9 every process in the node's network namespace
    netns_kill "$1"
    rm -f "$BASE/run/slurmd-$1.pid"
}

stop_all() {
    local spec name pid
    for spec in "${NODES[@]}"; do kill_namespace "${spec%%:*}"; done
    if [ -f "$BASE/run/slurmctld.pid" ]; then
        pid=$(cat "$BASE/run/slurmctld.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$BASE/run/slurmctld.pid"
    fi
    local names=()
    for spec in "${NODES[@]}"; do names+=("${spec%%:*}"); done
    netns_delete "$BRIDGE" "${names[@]}"
    if [ -f /run/munge/munged.pid ]; then
        kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
    fi
    rm -rf "$BASE/state" "$BASE/spool"
    log "stopped"
}

cmd=${1:-start}
case "$cmd" in
    start)
        [ "$(id -u)" -eq 0 ] || { log "must run as root"; exit 1; }
        install_slurm
        start_munge
        write_config
        make_network
        start_ctld
        for spec in "${NODES[@]}"; do start_node "${spec%%:*}"; done
        wait_nodes_idle
        log "cluster up (export SLURM_CONF=$CONF)"
        ;;
    stop) stop_all ;;
    kill-node) node_field "$2" 0 >/dev/null; kill_namespace "$2"; log "node $2 killed" ;;
    start-node) node_field "$2" 0 >/dev/null; start_node "$2" ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    status)
        for spec in "${NODES[@]}"; do
            name=${spec%%:*}
            if pid_alive "$BASE/run/slurmd-$name.pid"; then s=up; else s=down; fi
            echo "$name $NET.$(node_field "$name" 1) slurmd=$s"
        done
        scontrol ping 2>/dev/null || echo "slurmctld down"
        ;;
    *) echo "usage: $0 start | stop | status | kill-node NAME | start-node NAME | env" >&2; exit 2 ;;
esac
