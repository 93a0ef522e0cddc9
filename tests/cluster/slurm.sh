#!/usr/bin/env bash
# A throwaway one-node SLURM cluster on this machine, without systemd.
#
#   slurm.sh start STATEDIR   write config + munge key into STATEDIR, start munged,
#                             slurmctld and slurmd, wait until the node is idle and
#                             `srun -N1 hostname` works (reuses a running cluster)
#   slurm.sh stop STATEDIR    cancel its jobs, stop the daemons by their recorded PIDs
#   slurm.sh status STATEDIR  exit 0 when all three daemons are alive
#   slurm.sh env STATEDIR     print `export SLURM_CONF=...` for the client tools
#
# Everything (slurm.conf, munge key and socket, state, spool, logs, PID files) lives
# in STATEDIR; nothing under /etc or /var is touched. Client tools find the cluster
# through SLURM_CONF=STATEDIR/slurm.conf (the munge socket path is in that file).
#
# One exception: the symlink /run/slurm/conf -> STATEDIR, removed again by `stop`.
# The Snakemake SLURM jobstep plugin (0.6.1) deletes every SLURM_* variable except
# the job id from the environment of the job it runs, SLURM_CONF included, so srun
# / scontrol inside a Snakemake job would fall through to a DNS SRV lookup and die
# ("Could not establish a configuration source"). /run/slurm/conf/slurm.conf is the
# client tools' built-in fallback after /etc/slurm/slurm.conf (it is where a
# configless slurmd puts its cache). A real directory there is left alone.
#
# Choices, and why:
#   * runs as root (SlurmUser=root): daemons need it to switch to the job's user;
#   * jobs are bound to their CPUs, as on real clusters: a job, its batch script and its
#     steps see only the CPUs they were allocated (`srun -c1 nproc` prints 1, and
#     os.sched_getaffinity agrees). `start` checks this. SLURM_TASK_PLUGIN picks how:
#       affinity (default)  TaskPlugin=task/affinity: sched_setaffinity masks, no cgroups,
#                           so it works in any sandbox. A process may widen its own mask
#                           again (nothing enforces it), so code that pins threads past its
#                           allocation is not caught here, only by what it records.
#       cgroup              TaskPlugin=task/cgroup,task/affinity with ConstrainCores=yes:
#                           the allocation is a cpuset cgroup, and sched_setaffinity outside
#                           it fails (EINVAL), as on most production clusters. Needs a
#                           writable cgroup v1 cpuset hierarchy (/sys/fs/cgroup/cpuset);
#                           elsewhere `start` exits 3 (skip). Not offered on cgroup v2: Slurm
#                           22.05's cgroup/v2 wants systemd (dbus) to create slurmd's scope,
#                           or IgnoreSystemd=yes plus a cpuset controller delegated to the
#                           container, and no machine here had either to check it on.
#                           `stop` removes the slurm_HOST cpuset it leaves behind.
#   * ProctrackType=proctrack/linuxproc in both: process tracking needs no cgroup (the
#     cgroup variant only constrains cores; RAM and devices stay unconstrained);
#   * AccountingStorageType=none: no slurmdbd. `sacct` then fails, so the Snakemake
#     SLURM plugin must be told `--slurm-status-command squeue` (profiles/slurm);
#   * MinJobAge=300: finished jobs stay visible to `squeue` for 5 minutes. The plugin
#     (2.8.0) switches back to sacct (one info line) when sacct exists and MinJobAge <
#     3 x its first status-check delay (40 s default), so this must stay >= 120;
#   * munged gets --force only when a directory above STATEDIR is not world-executable
#     (pytest's tmp_path is 0700): its socket check is about non-root clients, and
#     everything here runs as root;
#   * SelectType=select/cons_tres with CR_CPU: CPUs are the consumable; memory is
#     checked against RealMemory but not reserved (jobs that ask for --mem still run);
#   * node line from `slurmd -C` (CPUs, sockets, cores, RealMemory), so slurmd never
#     drains the node for a config mismatch.
#
# Ports: SLURMCTLD_PORT / SLURMD_PORT (default 6817 / 6818; when taken, free ports are
# chosen, so two clusters on one machine do not collide). Timeout for `start`:
# SLURM_START_TIMEOUT seconds (default 60). A running cluster configured with another
# SLURM_TASK_PLUGIN is restarted by `start`.
#
# Exit codes: 0 ok; 2 usage; 3 not root or binaries missing (callers should skip);
# 1 anything else (the relevant log tails are printed to stderr).
set -euo pipefail

START_TIMEOUT=${SLURM_START_TIMEOUT:-60}
TASK_PLUGIN=${SLURM_TASK_PLUGIN:-affinity}
CGROUP_V1=/sys/fs/cgroup

usage() {
    echo "usage: $0 {start|stop|status|env} STATEDIR" >&2
    exit 2
}
[[ $# -eq 2 ]] || usage
[[ $TASK_PLUGIN == affinity || $TASK_PLUGIN == cgroup ]] || {
    echo "$0: SLURM_TASK_PLUGIN must be 'affinity' or 'cgroup', not '$TASK_PLUGIN'" >&2
    exit 2
}
cmd=$1
S=$(realpath -m -- "$2")

CONF="$S/slurm.conf"
CGROUP_CONF="$S/cgroup.conf" # read from slurm.conf's directory
LOGDIR="$S/log"
MUNGEDIR="$S/munge"
PIDDIR="$S/run"
RUNCONF=/run/slurm/conf
# munged wants the socket directory world-executable but the key directory private.
MUNGE_SOCKET="$PIDDIR/munge.socket.2"
export SLURM_CONF="$CONF"

log() { echo "slurm.sh: $*" >&2; }

show_logs() {
    local f
    for f in "$LOGDIR/munged.log" "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" \
        "$LOGDIR/slurmctld.out" "$LOGDIR/slurmd.out" "$LOGDIR/munged.out"; do
        if [[ -s $f ]]; then
            echo "----- tail -n 25 $f" >&2
            tail -n 25 "$f" >&2
        fi
    done
}

fail() {
    log "error: $*"
    show_logs
    exit 1
}

unsupported() {
    log "$*"
    exit 3
}

need_tools() {
    [[ $(id -u) -eq 0 ]] || unsupported "must run as root (slurmd/munged switch users)"
    local t missing=()
    for t in munged slurmctld slurmd srun sinfo scontrol squeue scancel; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    [[ ${#missing[@]} -eq 0 ]] || unsupported "missing binaries: ${missing[*]} (apt-get install slurmctld slurmd slurm-client munge)"
}

running() { # pid -> 0 when the process exists and is not a zombie
    [[ -n $1 ]] && kill -0 "$1" 2>/dev/null || return 1
    # A killed daemon may linger as a zombie until init reaps it: that is dead.
    [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

pid_of() { # daemon name -> PID recorded in PIDDIR, if that process is alive
    local f="$PIDDIR/$1.pid" pid
    [[ -s $f ]] || return 1
    pid=$(tr -dc '0-9' <"$f")
    running "$pid" || return 1
    # Guard against PID reuse: the live process must still be that daemon.
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1"* ]] || return 1
    echo "$pid"
}

alive() { pid_of "$1" >/dev/null; }

port_free() { # port -> 0 when nothing listens on it
    if command -v ss >/dev/null 2>&1; then
        if ss -Htln "sport = :$1" 2>/dev/null | grep -q .; then return 1; fi
    elif (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        return 1
    fi
    return 0
}

free_port() { # preferred port -> it, if free, else any free port
    local p=$1
    if port_free "$p"; then
        echo "$p"
        return
    fi
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
    else
        for p in $(seq $((p + 100)) $((p + 400))); do
            port_free "$p" && { echo "$p"; return; }
        done
        fail "no free port near $1"
    fi
}

task_plugin_line() { # the TaskPlugin= line for SLURM_TASK_PLUGIN
    case $TASK_PLUGIN in
        affinity) echo "TaskPlugin=task/affinity" ;;
        cgroup) echo "TaskPlugin=task/cgroup,task/affinity" ;;
    esac
}

check_cgroup_v1_cpuset() { # exit 3 (skip) unless slurmd can make cpuset cgroups here
    local probe="$CGROUP_V1/cpuset/ddpbench-probe-$$"
    [[ ! -e /sys/fs/cgroup/cgroup.controllers ]] ||
        unsupported "SLURM_TASK_PLUGIN=cgroup: this host has cgroup v2 only (see the comment at the top of $0)"
    [[ -e $CGROUP_V1/cpuset/cpuset.cpus ]] ||
        unsupported "SLURM_TASK_PLUGIN=cgroup: no cgroup v1 cpuset hierarchy at $CGROUP_V1/cpuset"
    mkdir "$probe" 2>/dev/null ||
        unsupported "SLURM_TASK_PLUGIN=cgroup: cannot create cgroups in $CGROUP_V1/cpuset (read-only in this container?)"
    rmdir "$probe"
}

write_cgroup_conf() {
    cat >"$CGROUP_CONF" <<EOF
# Written by tests/cluster/slurm.sh (SLURM_TASK_PLUGIN=cgroup). Do not edit.
CgroupPlugin=cgroup/v1
CgroupMountpoint=$CGROUP_V1
ConstrainCores=yes
ConstrainRAMSpace=no
ConstrainSwapSpace=no
ConstrainDevices=no
EOF
}

remove_slurm_cgroups() { # the empty cpuset tree task/cgroup leaves after its last job
    local top
    top="$CGROUP_V1/cpuset/slurm_$(hostname -s)"
    [[ -d $top ]] || return 0
    # cgroup directories hold only kernel files: rmdir works once no task is left inside.
    find "$top" -depth -type d -exec rmdir {} + 2>/dev/null ||
        log "warning: could not remove $top (a job step still inside it?)"
}

write_config() {
    local host node_line ctld_port d_port
    rm -f "$CGROUP_CONF"
    if [[ $TASK_PLUGIN == cgroup ]]; then
        check_cgroup_v1_cpuset
        write_cgroup_conf
    fi
    host=$(hostname -s)
    # `slurmd -C` prints the node's real topology; keep only the first line.
    node_line=$(slurmd -C 2>/dev/null | head -n 1) || true
    [[ $node_line == NodeName=* ]] || fail "slurmd -C gave no NodeName line: '$node_line'"
    [[ $node_line == "NodeName=$host "* ]] ||
        fail "slurmd -C reports '${node_line%% *}', but hostname -s is '$host'"
    ctld_port=$(free_port "${SLURMCTLD_PORT:-6817}")
    d_port=$(free_port "${SLURMD_PORT:-6818}")
    [[ $ctld_port != "$d_port" ]] || d_port=$(free_port $((ctld_port + 1)))

    : >"$S/plugstack.conf" # no SPANK plugins from /etc/slurm/plugstack.conf.d
    cat >"$CONF" <<EOF
# Written by tests/cluster/slurm.sh; one-node test cluster. Do not edit.
ClusterName=ddpbench
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$S/spool/ctld
SlurmdSpoolDir=$S/spool/d
SlurmctldPidFile=$PIDDIR/slurmctld.pid
SlurmdPidFile=$PIDDIR/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$S/plugstack.conf
ProctrackType=proctrack/linuxproc
$(task_plugin_line)
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmdTimeout=60
$node_line State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munged() {
    alive munged && return 0
    if [[ ! -s $MUNGEDIR/munge.key ]]; then
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$MUNGEDIR/munge.key" --force
        else
            dd if=/dev/urandom of="$MUNGEDIR/munge.key" bs=1024 count=1 status=none
        fi
    fi
    chmod 0400 "$MUNGEDIR/munge.key"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    # munged refuses a socket below a directory that others cannot traverse (pytest's
    # tmp_path is 0700). Every client of this cluster runs as root, so that check only
    # matters for other users: downgrade it to a warning with --force in that case.
    local force=() d
    d=$(dirname "$MUNGE_SOCKET")
    while [[ $d != / ]]; do
        if [[ $(( 8#$(stat -c '%a' "$d") & 1 )) -eq 0 ]]; then
            force=(--force)
            log "note: $d is not world-executable; munged runs with --force (root-only cluster)"
            break
        fi
        d=$(dirname "$d")
    done
    # munged forks into the background and writes its PID file itself.
    munged "${force[@]}" --socket="$MUNGE_SOCKET" --key-file="$MUNGEDIR/munge.key" \
        --pid-file="$PIDDIR/munged.pid" --log-file="$LOGDIR/munged.log" \
        --seed-file="$MUNGEDIR/munged.seed" --num-threads=2 \
        </dev/null >"$LOGDIR/munged.out" 2>&1 || fail "munged did not start"
    wait_for 10 "munged socket" test -S "$MUNGE_SOCKET"
}

start_daemon() { # slurmctld|slurmd
    local name=$1
    alive "$name" && return 0
    rm -f "$PIDDIR/$name.pid"
    # Daemonises itself (PID file from slurm.conf); stdio detached so that a caller
    # reading our output through a pipe is not held open by the daemon.
    "$name" -f "$CONF" </dev/null >"$LOGDIR/$name.out" 2>&1 || fail "$name exited with status $?"
    wait_for 15 "$name PID file" alive "$name"
}

wait_for() { # seconds what command...
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "timed out after ${secs}s waiting for $what"
        sleep 0.5
    done
}

node_state() { sinfo -h -N -o '%t' 2>/dev/null | head -n 1; }

wait_idle() {
    local deadline=$((SECONDS + START_TIMEOUT)) state="" host
    host=$(hostname -s)
    while ((SECONDS < deadline)); do
        state=$(node_state || true)
        case $state in
            idle | mix | alloc) return 0 ;;
            drain* | drng | down* | fail*)
                # Left over from an earlier run (e.g. "Node unexpectedly rebooted").
                scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
                ;;
        esac
        sleep 0.5
    done
    log "node state: '${state:-none}'"
    scontrol show node "$host" >&2 2>/dev/null || true
    fail "node not idle after ${START_TIMEOUT}s"
}

smoke_test() {
    local out
    if ! out=$(timeout 30 srun -N1 -n1 --quiet hostname 2>&1); then
        log "srun output: $out"
        fail "'srun -N1 -n1 hostname' failed"
    fi
    [[ $out == "$(hostname)"* ]] || fail "'srun hostname' printed '$out'"
    # Jobs must see only their allocation: this is what the cluster is for.
    out=$(timeout 30 srun -N1 -n1 -c1 --quiet nproc 2>&1) || fail "'srun -c1 nproc' failed: $out"
    [[ $out == 1 ]] || fail "'srun -c1 nproc' printed '$out': jobs are not bound to their CPUs ($(task_plugin_line))"
}

link_runconf() {
    if [[ -e $RUNCONF && ! -L $RUNCONF ]]; then
        log "warning: $RUNCONF is not a symlink; left alone (srun inside Snakemake jobs may not find this cluster)"
        return 0
    fi
    if [[ -L $RUNCONF ]]; then
        local other
        other=$(readlink -- "$RUNCONF")
        [[ $other == "$S" ]] && return 0
        [[ -e $other/run/slurmctld.pid ]] && log "warning: $RUNCONF pointed at $other (another test cluster?); repointing it here"
    fi
    mkdir -p "$(dirname "$RUNCONF")"
    ln -sfn -- "$S" "$RUNCONF"
}

unlink_runconf() {
    if [[ -L $RUNCONF && $(readlink -- "$RUNCONF") == "$S" ]]; then
        rm -f -- "$RUNCONF"
        rmdir -- "$(dirname "$RUNCONF")" 2>/dev/null || true # only if now empty
    fi
}

cmd_start() {
    need_tools
    mkdir -p "$S" "$LOGDIR" "$PIDDIR" "$S/spool/ctld" "$S/spool/d"
    chmod 0755 "$S" "$PIDDIR"
    mkdir -p "$MUNGEDIR"
    chmod 0700 "$MUNGEDIR"
    if alive munged && alive slurmctld && alive slurmd && [[ -s $CONF ]] &&
        grep -qxF "$(task_plugin_line)" "$CONF"; then
        log "already running in $S"
    else
        # Partial leftovers (crash, killed test): start from a clean slate, but keep
        # the munge key and state directory.
        stop_daemons quiet
        write_config
        start_munged
        start_daemon slurmctld
        wait_for 20 "slurmctld to answer 'scontrol ping'" bash -c 'scontrol ping | grep -q UP'
        start_daemon slurmd
    fi
    link_runconf
    wait_idle
    smoke_test
    log "cluster up: SLURM_CONF=$CONF ($(sinfo -h -N -o '%N %c CPUs %m MB %t'))"
}

stop_pids() { # name... : SIGTERM them all, wait up to 10 s, then SIGKILL
    local name pid _ pids=() left
    for name in "$@"; do
        pid=$(pid_of "$name") && pids+=("$pid")
    done
    [[ ${#pids[@]} -gt 0 ]] || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 1 50); do
        left=()
        for pid in "${pids[@]}"; do
            running "$pid" && left+=("$pid")
        done
        [[ ${#left[@]} -gt 0 ]] || return 0
        sleep 0.2
    done
    log "PIDs ${left[*]} ignored SIGTERM for 10 s; sending SIGKILL"
    kill -KILL "${left[@]}" 2>/dev/null || true
}

stop_daemons() { # [quiet]
    if alive slurmctld && [[ -s $CONF ]]; then
        # Cancel this cluster's jobs first, so slurmd ends their step daemons.
        local jobs
        jobs=$(timeout 10 squeue -h -o '%i' 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            # shellcheck disable=SC2086
            timeout 10 scancel $jobs >/dev/null 2>&1 || true
            local _
            for _ in $(seq 1 20); do
                [[ -z $(timeout 5 squeue -h -t running,completing -o '%i' 2>/dev/null) ]] && break
                sleep 0.5
            done
        fi
    fi
    # Each takes ~2 s to exit; none needs the others to shut down cleanly.
    stop_pids slurmd slurmctld munged
    [[ ! -s $CGROUP_CONF ]] || remove_slurm_cgroups
    rm -f "$PIDDIR"/*.pid "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    unlink_runconf
    [[ ${1:-} == quiet ]] || log "stopped cluster in $S"
}

cmd_stop() {
    [[ -d $S ]] || return 0
    [[ $(id -u) -eq 0 ]] || unsupported "must run as root"
    stop_daemons
}

cmd_status() {
    local name rc=0
    for name in munged slurmctld slurmd; do
        if pid=$(pid_of "$name"); then
            echo "$name: running (pid $pid)"
        else
            echo "$name: not running"
            rc=1
        fi
    done
    [[ $rc -ne 0 ]] || sinfo -N -l 2>/dev/null || true
    return $rc
}

case $cmd in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$(printf '%q' "$CONF")" ;;
    *) usage ;;
esac
