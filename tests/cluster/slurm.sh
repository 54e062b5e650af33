#!/usr/bin/env bash
# A private single-node SLURM cluster on loopback, for the tests that submit to a real one (tests/test_slurm.py).
# Everything lives in one state directory DIR (default: .slurm-cluster/ in the repository, git-ignored): its
# slurm.conf and slurmdbd.conf, its own munge key and munged socket, its own MariaDB datadir and socket (no TCP),
# pid files, logs, spool. Nothing under /etc, /run or /var is written (except by apt-get, installing the packages),
# so a workstation that belongs to a real cluster keeps its configuration and its queue:
#   tests/cluster/slurm.sh up [DIR]      install the packages when missing, write the configs with free ports on
#                                        127.0.0.1, start munged, MariaDB, slurmdbd, slurmctld and slurmd, wait until
#                                        the node is idle (idempotent: a cluster of DIR that is up is kept)
#   tests/cluster/slurm.sh down [DIR]    stop DIR's daemons, each by its pid file
#   tests/cluster/slurm.sh status [DIR]  exit 0 when DIR's cluster answers with an idle node
#   tests/cluster/slurm.sh install [DIR] only install the packages when missing (apt-get's output: DIR/install.log)
# By hand, as root: `tests/cluster/slurm.sh up DIR`, then `export SLURM_CONF=DIR/slurm.conf`: sbatch, squeue, sacct,
# scancel and `tt-sweep --launcher submitit` talk to the private cluster only (every client finds its munged through
# that slurm.conf); `tests/cluster/slurm.sh down DIR` stops it, and DIR can then be removed.
# Where it cannot run (no apt-get, not root), `up` prints one line saying why and exits 3: the SLURM tests skip.
# A daemon is taken as DIR's own only when its pid file names a live process of the right program that was started
# with SLURM_CONF=DIR/slurm.conf in its environment; `up` never adopts a cluster it did not start (one that `sinfo`
# answers, or one of /etc/slurm), and `down` never stops one.
# Every daemon listens on 127.0.0.1 only, on ports chosen free at `up` (MariaDB on its socket only); where /etc/hosts
# names this machine other than 127.0.0.1, the SLURM daemons see a private one (below, loopback_hosts).
# Accounting (slurmdbd + MariaDB) is on, because without it sacct fails, submitit sees UNKNOWN and a cancelled job's
# result() waits forever.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=$(realpath -m "${2:-$ROOT/.slurm-cluster}")
CONF=$STATE/slurm.conf
MUNGE=$STATE/munge
MYSQL_SOCKET=$STATE/mysql.sock
LOG=$STATE/log
RUN=$STATE/run
NODE=$(hostname -s)
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
PROGRAMS="munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sinfo sbatch sacctmgr"
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # in start order; `down` goes backwards

# Whatever the caller's environment says about another cluster (a site's SLURM_CONF, SBATCH_ACCOUNT, ...) must not
# reach the daemons or the clients below; the daemons carry SLURM_CONF, which is also how `own` recognises them.
for name in $(compgen -e | grep -E '^(SLURM|SBATCH|SALLOC|SRUN|SINFO|SQUEUE|SACCT|SACCTMGR|SCONTROL)_' || true); do
    unset "$name"
done
export SLURM_CONF=$CONF

say() { echo "slurm.sh: $*"; }
REASON=""  # why `up` failed, for its one last line
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    for _ in $(seq 1 $((limit * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    REASON="timed out after ${limit}s waiting for $what"; return 1
}

pid_file() {  # pid_file DAEMON: where DAEMON's pid is recorded (each daemon writes its own)
    case $1 in munged) echo "$MUNGE/munged.pid" ;; mariadbd) echo "$RUN/mariadb.pid" ;; *) echo "$RUN/$1.pid" ;; esac
}

own() {  # own DAEMON: print its pid when the pid file names a live DAEMON started for this state directory
    local pid
    pid=$(cat "$(pid_file "$1")" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
    tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qxF "SLURM_CONF=$CONF" || return 1
    echo "$pid"
}

all_own() {
    local daemon
    for daemon in "${DAEMONS[@]}"; do own "$daemon" >/dev/null || return 1; done
}

node_ready() { sinfo -h -N -o "%t" 2>/dev/null | grep -qE "^(idle|mix|alloc)"; }
status() { all_own && node_ready; }

install_packages() {
    local program missing=""
    for program in $PROGRAMS; do command -v "$program" >/dev/null || missing="$missing $program"; done
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" != 0 ]; then say "skipped: needs root to install$missing"; exit 3; fi
    if ! command -v apt-get >/dev/null; then say "skipped: no apt-get to install ${PACKAGES[*]}"; exit 3; fi
    say "installing ${PACKAGES[*]}"
    local log=$STATE/install.log
    mkdir -p "$STATE"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${PACKAGES[@]}") >"$log" 2>&1 || { say "skipped: apt-get install failed (see $log)"; exit 3; }
}

free_ports() {  # three ports free on 127.0.0.1 now (held together while chosen, so they differ)
    python3 -c 'import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))'
}

write_configs() {  # write_configs CTLD_PORT SLURMD_PORT DBD_PORT
    local cpus mem
    cpus=$(nproc); mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    # AuthInfo names munged's socket for every daemon and client; AccountingStoragePass names it again for the
    # connections to slurmdbd (slurmctld's, sacct's, sacctmgr's), which otherwise use the default /run/munge socket.
    # cred_expire=10 (default 120): a requeued job waits cred_expire + 1 s before it may start again, which was 2 of
    # the 3 minutes of the requeue test.
    cat >"$CONF" <<CONFIG
# private test cluster of tests/cluster/slurm.sh (state: $STATE); use it with SLURM_CONF=$CONF
ClusterName=twinturbo
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$1
SlurmdPort=$2
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
AuthInfo=socket=$MUNGE/munge.socket,cred_expire=10
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
PlugStackConfig=$STATE/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$3
AccountingStoragePass=$MUNGE/munge.socket
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
MinJobAge=600
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONFIG
    : >"$STATE/plugstack.conf"  # none: the site's /etc/slurm/plugstack.conf (SPANK plugins) stays out
    # slurmdbd reads slurmdbd.conf next to $SLURM_CONF and refuses it unless SlurmUser owns it with mode 600;
    # StorageUser root logs in through MariaDB's unix_socket authentication on the private socket (no password).
    (umask 077; cat >"$STATE/slurmdbd.conf" <<CONFIG
AuthType=auth/munge
AuthInfo=socket=$MUNGE/munge.socket
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=$3
CommunicationParameters=NoInAddrAny
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=root
CONFIG
    )
}

start_munge() {
    # munged wants a key only its user reads (400) and a socket everyone can reach; here only root needs to (every
    # daemon, client and job runs as root), and the state directory may sit in a 700 one such as pytest's: --force
    # turns munged's "execute permissions for all required" on the socket's directories into a warning.
    [ -s "$MUNGE/munge.key" ] || { (umask 077; dd if=/dev/urandom bs=1 count=1024 of="$MUNGE/munge.key" 2>/dev/null); }
    chmod 400 "$MUNGE/munge.key"
    munged --force --origin=127.0.0.1 --key-file="$MUNGE/munge.key" --socket="$MUNGE/munge.socket" \
        --pid-file="$MUNGE/munged.pid" --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munged.seed"
    wait_for 20 munge bash -c "munge -n --socket='$MUNGE/munge.socket' | unmunge --socket='$MUNGE/munge.socket'"
}

start_mariadb() {
    # --no-defaults: the site's /etc/mysql (its port, socket, datadir) stays out; --user=root because the state
    # directory may sit in a 700 directory (pytest's) that user mysql cannot enter
    [ -d "$STATE/mysql/mysql" ] || mariadb-install-db --no-defaults --user=root --datadir="$STATE/mysql" \
        --skip-test-db >"$LOG/mariadb-install.log" 2>&1
    setsid mariadbd --no-defaults --user=root --datadir="$STATE/mysql" --skip-networking --socket="$MYSQL_SOCKET" \
        --pid-file="$RUN/mariadb.pid" --log-error="$LOG/mariadb.log" </dev/null >/dev/null 2>&1 &
    wait_for 60 MariaDB mariadb-admin --no-defaults --socket="$MYSQL_SOCKET" ping
}

# With NoInAddrAny every SLURM daemon binds the address its hostname resolves to (not DbdAddr, not NodeAddr), and
# this machine's /etc/hosts may give a LAN address, Debian's 127.0.1.1 or nothing. Where it does not say 127.0.0.1,
# the daemons run in a mount namespace of their own whose /etc/hosts is a bind mount of $STATE/hosts, which does;
# the machine's own file stays as it is.
LOOPBACK=()  # the prefix that runs a SLURM daemon where its hostname resolves to 127.0.0.1
first_ipv4() { "$@" getent ahostsv4 "$(hostname)" 2>/dev/null | awk 'NR == 1 {print $1}'; }
loopback_hosts() {
    [ "$(first_ipv4)" = 127.0.0.1 ] && return 0
    { echo "127.0.0.1 $(hostname) $NODE"; cat /etc/hosts; } >"$STATE/hosts"
    # shellcheck disable=SC2016  # $0 and $@ are the inner bash's
    LOOPBACK=(unshare --mount --propagation private -- bash -c 'mount --bind "$0" /etc/hosts && exec "$@"'
              "$STATE/hosts")
    local seen
    seen=$(first_ipv4 "${LOOPBACK[@]}")
    [ "$seen" = 127.0.0.1 ] && return 0
    say "skipped: $(hostname) resolves to $(first_ipv4 || true), the daemons would bind that, and a private" \
        "/etc/hosts did not help (unshare --mount: ${seen:-refused})"
    exit 3
}

start_slurm() {
    # slurmdbd has no option for its database socket; the MariaDB client library takes it from MYSQL_UNIX_PORT
    "${LOOPBACK[@]}" env MYSQL_UNIX_PORT="$MYSQL_SOCKET" slurmdbd
    wait_for 60 "slurmdbd on 127.0.0.1:$1" bash -c "exec 3<>/dev/tcp/127.0.0.1/$1"
    "${LOOPBACK[@]}" slurmctld -f "$CONF"
    wait_for 60 slurmctld scontrol ping
    sacctmgr -i add cluster twinturbo >/dev/null 2>&1 || true
    "${LOOPBACK[@]}" slurmd -f "$CONF" -N "$NODE"
    wait_for 60 "an idle node" node_ready
}

up() {
    if all_own && status; then say "already up: $(sinfo -h -N -o '%N %t %c CPUs') (SLURM_CONF=$CONF)"; return 0; fi
    install_packages
    if [ "$(id -u)" != 0 ]; then say "skipped: needs root to start the daemons"; exit 3; fi
    # a Unix socket's path has at most 107 bytes; slurmd's step sockets are $STATE/spool/<node>_<job>.<step> (+29)
    if [ $(( ${#STATE} + ${#NODE} )) -gt 78 ]; then say "state directory path too long for sockets: $STATE"; exit 2; fi
    if [[ $STATE =~ [[:space:]] ]]; then say "state directory path has a space, slurm.conf cannot: $STATE"; exit 2; fi
    stop_own  # what is left of an earlier start of this state directory
    install -d -m 700 "$STATE" "$STATE"/{spool,state,mysql} "$LOG" "$RUN" "$MUNGE"
    loopback_hosts
    trap 'failed $? "$BASH_COMMAND"' EXIT
    local ports
    read -r -a ports <<<"$(free_ports)"
    write_configs "${ports[@]}"
    start_munge
    start_mariadb
    start_slurm "${ports[2]}"
    say "up: $(sinfo -h -N -o '%N %t %c CPUs') (SLURM_CONF=$CONF)"
    trap - EXIT
}

failed() {  # failed STATUS COMMAND: an `up` that fails stops what it started (half a cluster helps nobody)
    stop_own
    say "up failed: ${REASON:-$2 exited with $1}; stopped what it had started (logs: $LOG)"
}

alive() {  # a zombie (left unreaped where PID 1 does not reap) counts as gone
    [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f1)" != Z ]
}

stop_own() {  # stop every daemon of this state directory, last started first, each only when it is its own
    local i daemon pid
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        daemon=${DAEMONS[i]}
        if pid=$(own "$daemon"); then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 150); do alive "$pid" || break; sleep 0.2; done
            if alive "$pid"; then say "$daemon ($pid) ignored SIGTERM for 30 s: killed"; kill -9 "$pid"; fi
        fi
        rm -f "$(pid_file "$daemon")"
    done
}

down() { stop_own; say "down ($STATE)"; }

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    install) install_packages ;;
    *) echo "usage: $0 up|down|status|install [STATE_DIR]" >&2; exit 2 ;;
esac
