#!/usr/bin/env bash
# A throwaway single-node SLURM cluster on this machine, for tests and demos of the slurm profile.
#
#   workflow/cluster/local-slurm.sh install   # apt-get install slurm-wlm munge (start does it when missing)
#   workflow/cluster/local-slurm.sh start     # munge + slurmctld + slurmd on this host; idempotent
#   workflow/cluster/local-slurm.sh status    # exit 0 when it is up and runs jobs, 1 when not
#   workflow/cluster/local-slurm.sh stop      # cancel its jobs, stop the daemons it started, remove its config
#
# Needs root (the daemons and jobs run as root) and Debian/Ubuntu packages slurm-wlm and munge.
# It writes /etc/slurm/slurm.conf with a marker line and keeps all other state (spool, controller
# state, pid files, logs) under $FLOWVAE_LOCAL_SLURM_DIR (default /var/lib/flowvae-local-slurm).
# It refuses to run where a SLURM configuration it did not write exists, or where slurmctld/slurmd
# daemons it did not start are running: it never touches a real cluster.
# Scheduling: one partition `local` (the default), the node's CPUs and memory as `slurmd -C` reports
# them, NVIDIA GPUs as gres `gpu` when /dev/nvidia[0-9]* exist; no accounting (sacct does not work:
# use `--slurm-status-command squeue`, which works because MinJobAge is 600 s).
set -euo pipefail

STATE="${FLOWVAE_LOCAL_SLURM_DIR:-/var/lib/flowvae-local-slurm}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
GRES_CONF="$CONF_DIR/gres.conf"
MARKER="# flowvae-local-slurm: written by workflow/cluster/local-slurm.sh"
OWNED="$STATE/.flowvae-local-slurm"
PARTITION=local

say() { printf 'local-slurm: %s\n' "$*"; }
die() { printf 'local-slurm: %s\n' "$1" >&2; exit "${2:-1}"; }

need_root() {
    [ "$(id -u)" = 0 ] || die "must run as root (it starts slurmctld, slurmd and munged, and jobs run as root)" 2
}

have_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && command -v munge >/dev/null
}

install_packages() {
    need_root
    have_packages && { say "slurm-wlm and munge are installed"; return 0; }
    command -v apt-get >/dev/null || die "slurm-wlm and munge are missing and there is no apt-get to install them" 3
    say "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q slurm-wlm munge >"${TMPDIR:-/tmp}/local-slurm-apt.log" 2>&1; then
        apt-get update -q >>"${TMPDIR:-/tmp}/local-slurm-apt.log" 2>&1 || true
        apt-get install -y -q slurm-wlm munge >>"${TMPDIR:-/tmp}/local-slurm-apt.log" 2>&1 \
            || die "apt-get install slurm-wlm munge failed; see ${TMPDIR:-/tmp}/local-slurm-apt.log" 3
    fi
    have_packages || die "slurm-wlm and munge were installed but their commands are not on PATH" 3
}

# True when the file exists and was not written by this script.
foreign() { [ -e "$1" ] && ! grep -qF "$MARKER" "$1"; }

alive() {  # alive PIDFILE NAME: the pid file's process is running and is NAME
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1")
    [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

ours() {  # ours PID NAME: the daemon whose pid file this script keeps, or a child of it
    local own ppid
    [ -s "$STATE/$2.pid" ] || return 1
    own=$(cat "$STATE/$2.pid")
    ppid=$(awk '{print $4}' "/proc/$1/stat" 2>/dev/null || echo 0)
    [ "$1" = "$own" ] || [ "$ppid" = "$own" ]
}

check_ownership() {
    local f pid
    for f in "$CONF" "$GRES_CONF"; do
        if foreign "$f"; then
            die "$f exists and was not written by this script: refusing to touch an existing SLURM configuration. \
Use that cluster directly (snakemake --profile workflow/profiles/slurm), or move the file away first." 4
        fi
    done
    for name in slurmctld slurmd; do
        for pid in $(pgrep -x "$name" || true); do
            ours "$pid" "$name" && continue
            sleep 1  # the daemons fork short-lived helpers of the same name
            [ -d "/proc/$pid" ] || continue
            ours "$pid" "$name" \
                || die "a $name (pid $pid) that this script did not start is running: refusing to touch it" 4
        done
    done
}

node_name() { hostname -s; }

write_config() {
    local node hw gpus=0 tmp
    node=$(node_name)
    # `slurmd -C` prints this node's hardware line: NodeName=... CPUs=... RealMemory=...
    hw=$(slurmd -C | head -1 | sed -E 's/^NodeName=[^ ]+ //')
    mkdir -p "$STATE"/{ctld,spool,log} "$CONF_DIR"
    touch "$OWNED"
    if compgen -G "/dev/nvidia[0-9]*" >/dev/null; then
        gpus=$(compgen -G "/dev/nvidia[0-9]*" | wc -l)
    fi
    tmp=$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")
    cat >"$tmp" <<EOF
$MARKER
# A throwaway single-node cluster; \`local-slurm.sh stop\` removes this file. State: $STATE
ClusterName=flowvae-local
SlurmctldHost=$node(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# squeue keeps finished jobs for 10 minutes, so that Snakemake's squeue status checks see them end.
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
$( [ "$gpus" -gt 0 ] && echo "GresTypes=gpu" )
NodeName=$node NodeAddr=127.0.0.1 $hw$( [ "$gpus" -gt 0 ] && echo " Gres=gpu:$gpus" ) State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    chmod 644 "$tmp"
    mv -f "$tmp" "$CONF"
    if [ "$gpus" -gt 0 ]; then
        { echo "$MARKER"; echo "Name=gpu File=/dev/nvidia[0-$((gpus - 1))]"; } >"$GRES_CONF"
    fi
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    munge_works && return 0
    [ -s /etc/munge/munge.key ] || die "/etc/munge/munge.key is missing (reinstall munge, or create one with mungekey)" 1
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid \
        || die "munged did not start; see /var/log/munge/munged.log"
    cp /run/munge/munged.pid "$STATE/munged.pid"
    for _ in $(seq 50); do munge_works && return 0; sleep 0.1; done
    die "munged started but munge credentials do not work; see /var/log/munge/munged.log"
}

cluster_up() {  # the controller answers and the node takes jobs
    local state
    state=$(timeout 10 sinfo -h -n "$(node_name)" -o %T 2>/dev/null | head -1) || return 1
    case "$state" in idle* | mixed* | allocated* | completing*) return 0 ;; *) return 1 ;; esac
}

start() {
    need_root
    have_packages || install_packages
    check_ownership
    if alive "$STATE/slurmctld.pid" slurmctld && alive "$STATE/slurmd.pid" slurmd && cluster_up; then
        say "already running (partition $PARTITION, node $(node_name))"
        return 0
    fi
    stop_daemons quiet
    write_config
    start_munge
    slurmctld -i -L "$STATE/log/slurmctld.log" || die "slurmctld did not start; see $STATE/log/slurmctld.log"
    slurmd -L "$STATE/log/slurmd.log" || die "slurmd did not start; see $STATE/log/slurmd.log"
    local i
    for i in $(seq 60); do
        cluster_up && break
        # a node left DOWN by an earlier, unclean stop: bring it back
        [ $((i % 5)) = 0 ] && scontrol update NodeName="$(node_name)" State=RESUME >/dev/null 2>&1 || true
        sleep 0.5
    done
    cluster_up || die "the node did not become idle within 30 s; see $STATE/log/slurmctld.log and slurmd.log"
    timeout 60 srun -p "$PARTITION" -N1 -n1 -t 1 true \
        || die "srun of a trivial job failed; see $STATE/log/slurmctld.log and slurmd.log"
    say "started: partition $PARTITION, node $(node_name) ($(sinfo -h -o '%c CPUs, %m MB' | head -1)); config $CONF, state $STATE"
}

stop_pid() {  # stop_pid PIDFILE NAME
    local pid
    alive "$1" "$2" || { rm -f "$1"; return 0; }
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    [ -d "/proc/$pid" ] && kill -9 "$pid" 2>/dev/null || true
    rm -f "$1"
}

stop_daemons() {
    if alive "$STATE/slurmctld.pid" slurmctld; then
        # every job on this throwaway cluster is ours: cancel them so that no step outlives slurmd
        scancel --quiet --user=root 2>/dev/null || true
        for _ in $(seq 20); do
            [ -z "$(squeue -h -t running,completing,pending 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    stop_pid "$STATE/slurmd.pid" slurmd
    stop_pid "$STATE/slurmctld.pid" slurmctld
    [ "${1:-}" = quiet ] || say "daemons stopped"
}

stop() {
    need_root
    if foreign "$CONF" && [ ! -e "$OWNED" ]; then
        die "$CONF was not written by this script and nothing of its own is running: nothing to stop" 4
    fi
    stop_daemons
    if [ -s "$STATE/munged.pid" ]; then
        stop_pid "$STATE/munged.pid" munged
        say "munged (started by this script) stopped"
    fi
    for f in "$CONF" "$GRES_CONF"; do
        if [ -e "$f" ] && ! foreign "$f"; then rm -f "$f"; fi
    done
    [ -e "$OWNED" ] && rm -rf "$STATE/ctld" "$STATE/spool"
    say "stopped; logs kept in $STATE/log"
}

status() {
    if [ -e "$CONF" ] && ! foreign "$CONF" && cluster_up; then
        say "up: $(sinfo -h -o 'partition %P, node %N, %T, %c CPUs, %m MB' | head -1)"
        squeue 2>/dev/null || true
        return 0
    fi
    if foreign "$CONF"; then say "down here; $CONF belongs to another SLURM installation"; else say "down"; fi
    return 1
}

case "${1:-}" in
    install) install_packages ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 64 ;;
esac
