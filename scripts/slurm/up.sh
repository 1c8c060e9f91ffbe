#!/usr/bin/env bash
# Start a single-node Slurm test cluster on this machine: accounting (slurmdbd + MariaDB)
# and 4 simulated GPUs (gres on character devices). Debian, as root, no systemd.
# Installs the Debian packages when they are missing. Stop it with scripts/slurm/down.sh.
#
#   EXPFLOW_SLURM_DIR   state, logs and device files (default /tmp/expflow-slurm)
#   EXPFLOW_SLURM_CPUS  CPUs the node advertises (default 8: room for 4 one-GPU jobs at once)
set -euo pipefail

STATE=${EXPFLOW_SLURM_DIR:-/tmp/expflow-slurm}
CPUS=${EXPFLOW_SLURM_CPUS:-8}
CLUSTER=expflow
ACCOUNT=expflow
GPUS=4

log() { echo "[slurm-up] $*"; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local timeout=$1 what=$2; shift 2
  for _ in $(seq "$((timeout * 5))"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "[slurm-up] timed out waiting for $what" >&2; return 1
}

if [ "$(id -u)" != 0 ]; then echo "[slurm-up] must run as root" >&2; exit 1; fi
if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
  log "installing Debian packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    munge slurmctld slurmd slurm-client slurmdbd mariadb-server >/dev/null
fi

mkdir -p "$STATE"/{spool/ctld,spool/d,log,run,gpus} /etc/slurm /run/munge /run/mysqld
# Daemons this script starts are listed here; down.sh stops those and nothing else
# (a MariaDB or munge that was already running is used, never stopped).
STARTED="$STATE/started"
touch "$STARTED"
started() { grep -qx "$1" "$STARTED" || echo "$1" >>"$STARTED"; }
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld
for i in $(seq 0 $((GPUS - 1))); do
  [ -e "$STATE/gpus/nvidia$i" ] || mknod "$STATE/gpus/nvidia$i" c 195 "$i"
done

# -- munge ------------------------------------------------------------------------
if ! pgrep -x munged >/dev/null; then
  [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  runuser -u munge -- /usr/sbin/munged
  started munged
fi
wait_for 10 munge munge -n

# -- slurm.conf: must be /etc/slurm/slurm.conf (the executor plugin's jobstep drops SLURM_CONF)
topology=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e 's/CPUs=[0-9]*//' \
  -e 's/Boards=[0-9]*//' -e 's/SocketsPerBoard=[0-9]*//' -e 's/CoresPerSocket=[0-9]*//' -e 's/ThreadsPerCore=[0-9]*//')
real_mem=$(echo "$topology" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
mem=$((real_mem * 9 / 10))
cat >/etc/slurm/slurm.conf <<CONF
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MinJobAge=600
ReturnToService=2
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
cat >/etc/slurm/gres.conf <<CONF
AutoDetect=off
NodeName=localhost Name=gpu File=$STATE/gpus/nvidia[0-$((GPUS - 1))]
CONF

# -- accounting: MariaDB + slurmdbd -------------------------------------------------
if ! pgrep -x mariadbd >/dev/null; then
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
  # Output redirected: mariadbd exits silently given log paths the mysql user cannot write.
  nohup mariadbd --user=mysql --skip-networking >"$STATE/log/mariadb.log" 2>&1 &
  started mariadbd
fi
wait_for 60 MariaDB mysqladmin ping
mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
CONF
chmod 600 /etc/slurm/slurmdbd.conf
pgrep -x slurmdbd >/dev/null || { slurmdbd; started slurmdbd; }
wait_for 60 slurmdbd sacctmgr -n list cluster

sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
sacctmgr -i -Q add account "$ACCOUNT" Cluster="$CLUSTER" Description=expflow Organization=expflow >/dev/null 2>&1 || true
sacctmgr -i -Q add user root Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null 2>&1 || true

pgrep -x slurmctld >/dev/null || { slurmctld; started slurmctld; }
wait_for 30 slurmctld scontrol ping
pgrep -x slurmd >/dev/null || { slurmd -N localhost; started slurmd; }
wait_for 60 "an idle node" bash -c '[ "$(sinfo -h -o %T | head -1)" = idle ]'
log "up: partition debug, account $ACCOUNT, $GPUS GPUs, $CPUS CPUs (state in $STATE)"
