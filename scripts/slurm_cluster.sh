#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the tests and for trying the cluster
# commands of the README ("On a cluster") without a cluster.
#
#   scripts/slurm_cluster.sh start [DIR]   install (as root, if missing), configure, start;
#                                          prints the lines to export (also in DIR/env)
#   scripts/slurm_cluster.sh stop [DIR]    stop the daemons it started (by their PIDs)
#   scripts/slurm_cluster.sh status [DIR]  exit 0 when the cluster in DIR answers
#
# DIR (default ${MLCNC_SLURM_DIR:-/tmp/mlcnc-slurm}) holds everything: slurm.conf, the
# munge key and socket, the state and spool folders, the logs and the daemons' PID files.
# Idempotent: `start` on a running cluster only prints its environment. Nothing outside DIR
# is changed except the packages (apt-get, root only) and, when the short host name does
# not resolve, one line in /etc/hosts (root only).
#
# The node is declared with max(cores, MLCNC_SLURM_CPUS or 4) CPUs, so that 2-task jobs and
# small job arrays run on a 2-core machine (SlurmdParameters=config_overrides).
# No accounting database: sacct fails, and submitit reports job states as UNKNOWN while it
# polls (results still come back).
set -euo pipefail

cmd=${1:-start}
dir=${2:-${MLCNC_SLURM_DIR:-/tmp/mlcnc-slurm}}
packages=(slurmctld slurmd slurm-client munge)

log() { echo "[slurm_cluster] $*" >&2; }

have_binaries() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
        command -v srun >/dev/null && command -v munged >/dev/null
}

install_packages() {
    if have_binaries; then return 0; fi
    if [ "$(id -u)" != 0 ]; then
        log "SLURM is not installed and this user is not root: cannot install ${packages[*]}"
        exit 3
    fi
    if ! command -v apt-get >/dev/null; then
        log "SLURM is not installed and there is no apt-get to install ${packages[*]}"
        exit 3
    fi
    log "installing ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${packages[@]}" >"$dir/apt.log" 2>&1; then
        apt-get update -q >>"$dir/apt.log" 2>&1 || true
        apt-get install -y -q --no-install-recommends "${packages[@]}" >>"$dir/apt.log" 2>&1 || {
            log "apt-get install failed (see $dir/apt.log)"
            exit 3
        }
    fi
    have_binaries || { log "installed, but the binaries are missing"; exit 3; }
}

answers() {
    [ -f "$dir/slurm.conf" ] &&
        SLURM_CONF="$dir/slurm.conf" timeout 10 sinfo -h -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'
}

print_env() {
    cat "$dir/env"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {
    for name in slurmd slurmctld munged; do
        local pidfile="$dir/$name.started.pid"
        if alive "$pidfile"; then
            local pid
            pid=$(cat "$pidfile")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            log "stopped $name (pid $pid)"
        fi
        rm -f "$pidfile"
    done
}

start() {
    mkdir -p "$dir"
    if answers; then
        log "already running in $dir"
        print_env
        return 0
    fi
    stop  # whatever a half-started earlier attempt left behind (only its own PIDs)
    install_packages
    local host cpus real mem
    host=$(hostname -s)
    if ! getent hosts "$host" >/dev/null; then
        if [ "$(id -u)" = 0 ]; then
            echo "127.0.0.1 $host" >>/etc/hosts
            log "added $host to /etc/hosts"
        else
            log "host name $host does not resolve (add it to /etc/hosts)"
            exit 3
        fi
    fi
    cpus=$(nproc)
    want=${MLCNC_SLURM_CPUS:-4}
    [ "$cpus" -ge "$want" ] || cpus=$want
    real=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
    mem=${real:-1024}
    mkdir -p "$dir/state" "$dir/spool" "$dir/munge" "$dir/log"
    chmod 755 "$dir" "$dir/munge"
    # munge: a key of our own, the socket in DIR.
    if [ ! -f "$dir/munge/munge.key" ]; then
        dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    fi
    chmod 400 "$dir/munge/munge.key"
    local socket="$dir/munge/munge.socket"
    local user
    user=$(id -un)
    cat >"$dir/slurm.conf" <<EOF
ClusterName=mlcnc-local
SlurmctldHost=$host
SlurmUser=$user
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
MailProg=/bin/true
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=${MLCNC_SLURMCTLD_PORT:-6817}
SlurmdPort=${MLCNC_SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=defer_batch=0
MinJobAge=30
KillWait=5
InactiveLimit=0
JobRequeue=1
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    log "starting munged, slurmctld, slurmd (config $dir/slurm.conf)"
    setsid munged --foreground --force --socket="$socket" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munge.seed" </dev/null >>"$dir/log/munged.out" 2>&1 &
    echo $! >"$dir/munged.started.pid"
    for _ in $(seq 50); do [ -S "$socket" ] && break; sleep 0.1; done
    export SLURM_CONF="$dir/slurm.conf"
    setsid slurmctld -D -i -f "$SLURM_CONF" </dev/null >>"$dir/log/slurmctld.out" 2>&1 &
    echo $! >"$dir/slurmctld.started.pid"
    setsid slurmd -D -f "$SLURM_CONF" </dev/null >>"$dir/log/slurmd.out" 2>&1 &
    echo $! >"$dir/slurmd.started.pid"
    cat >"$dir/env" <<EOF
export SLURM_CONF=$dir/slurm.conf
EOF
    for _ in $(seq 120); do
        if answers; then
            log "cluster up: node $host ($cpus CPUs), partition debug"
            print_env
            return 0
        fi
        for name in munged slurmctld slurmd; do
            alive "$dir/$name.started.pid" || { log "$name exited; its log: $dir/log/"; tail -5 "$dir/log/$name".* >&2 || true; stop; exit 4; }
        done
        sleep 0.5
    done
    log "the node did not become idle in 60 s; logs in $dir/log/"
    SLURM_CONF="$dir/slurm.conf" sinfo >&2 || true
    stop
    exit 4
}

case "$cmd" in
start) start ;;
stop) stop ;;
status) answers ;;
*)
    echo "usage: $0 start|stop|status [DIR]" >&2
    exit 2
    ;;
esac
