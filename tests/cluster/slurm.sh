#!/usr/bin/env bash
# A single-node SLURM cluster on loopback, for the tests that submit to a real one (tests/test_slurm.py):
#   tests/cluster/slurm.sh up     install the packages when missing, write the configs, start munge, MariaDB,
#                                 slurmdbd, slurmctld and slurmd, wait until the node is idle (idempotent)
#   tests/cluster/slurm.sh down   stop the daemons (by their pid files) and remove the stale pid files
#   tests/cluster/slurm.sh status exit 0 when `sinfo` answers with an idle node
# Where it cannot run (no apt-get, not root), `up` prints one line saying why and exits 3: the SLURM tests skip.
# Every daemon binds 127.0.0.1 only (CommunicationParameters=NoInAddrAny...); accounting (slurmdbd + MariaDB) is on,
# because without it sacct fails, submitit sees UNKNOWN and a cancelled job's result() waits forever.
set -euo pipefail

STATE=${TT_SLURM_STATE:-/var/tmp/twinturbo-slurm}
CONF=/etc/slurm
NODE=$(hostname -s)
LOG=$STATE/log
PACKAGES="munge slurmctld slurmd slurm-client slurmdbd mariadb-server"

say() { echo "slurm.sh: $*"; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    for _ in $(seq 1 $((limit * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    say "timed out after ${limit}s waiting for $what (logs: $LOG)"; return 1
}

status() { sinfo -h -N -o "%t" 2>/dev/null | grep -qE "^(idle|mix|alloc)"; }

up() {
    if status; then say "already up: $(sinfo -h -N -o '%N %t %c CPUs')"; return 0; fi
    if [ "$(id -u)" != 0 ]; then say "skipped: needs root to install and start the daemons"; exit 3; fi
    if ! command -v slurmctld >/dev/null || ! command -v mariadbd >/dev/null || ! command -v munged >/dev/null \
        || ! command -v slurmdbd >/dev/null || ! command -v sinfo >/dev/null; then
        if ! command -v apt-get >/dev/null; then say "skipped: no apt-get to install $PACKAGES"; exit 3; fi
        say "installing $PACKAGES"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            $PACKAGES) >"$STATE.install.log" 2>&1 || { say "skipped: apt-get install failed (see $STATE.install.log)"; exit 3; }
    fi
    grep -qE "^127\.0\.[0-9.]+\s.*\b$NODE\b" /etc/hosts || echo "127.0.1.1 $NODE" >>/etc/hosts
    mkdir -p "$STATE"/{spool,state,mysql} "$LOG" /run/munge /run/mysqld "$CONF"
    chown munge:munge /run/munge; chmod 755 /run/munge
    chown mysql:mysql /run/mysqld "$STATE/mysql"
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null;
        chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    local cpus mem
    cpus=$(nproc); mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    cat >"$CONF/slurm.conf" <<CONFIG
ClusterName=twinturbo
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
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
    cat >"$CONF/slurmdbd.conf" <<CONFIG
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=6819
CommunicationParameters=NoInAddrAny
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurm
StoragePort=3306
CONFIG
    chmod 600 "$CONF/slurmdbd.conf"

    pgrep -x munged >/dev/null || runuser -u munge -- munged
    wait_for 20 munge bash -c "munge -n | unmunge"
    if ! pgrep -x mariadbd >/dev/null; then
        [ -d "$STATE/mysql/mysql" ] || mariadb-install-db --user=mysql --datadir="$STATE/mysql" >"$LOG/mariadb-install.log" 2>&1
        (mariadbd --user=mysql --datadir="$STATE/mysql" --skip-networking --socket=/run/mysqld/mysqld.sock \
            --pid-file=/run/mysqld/mariadb.pid >"$LOG/mariadb.log" 2>&1 &)
    fi
    wait_for 60 MariaDB mariadb-admin --socket=/run/mysqld/mysqld.sock ping
    mariadb --socket=/run/mysqld/mysqld.sock -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    pgrep -x slurmdbd >/dev/null || slurmdbd
    wait_for 60 "slurmdbd on 127.0.0.1:6819" bash -c "exec 3<>/dev/tcp/127.0.0.1/6819"
    pgrep -x slurmctld >/dev/null || slurmctld
    wait_for 60 slurmctld scontrol ping
    sacctmgr -i add cluster twinturbo >/dev/null 2>&1 || true
    pgrep -x slurmd >/dev/null || slurmd
    wait_for 60 "an idle node" status
    say "up: $(sinfo -h -N -o '%N %t %c CPUs')"
}

down() {
    for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" "$STATE/slurmdbd.pid" /run/mysqld/mariadb.pid; do
        if [ -s "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
    done
    pkill -x munged 2>/dev/null || true
    for _ in $(seq 1 50); do
        pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || pgrep -x slurmdbd >/dev/null \
            || pgrep -x mariadbd >/dev/null || break
        sleep 0.2
    done
    rm -f "$STATE"/*.pid /run/mysqld/mariadb.pid /run/munge/munged.pid /var/run/slurm*.pid 2>/dev/null || true
    say "down"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
