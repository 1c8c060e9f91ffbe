#!/usr/bin/env bash
# Start a Slurm test cluster on this machine: accounting (slurmdbd + MariaDB), partition
# `debug` (node `localhost`, 4 simulated GPUs: gres on character devices) and partition
# `multi` (nodes `node1` and `node2`, 2 simulated GPUs each, for runs across nodes).
# Debian, as root, no systemd.
# Installs the Debian packages when they are missing. Stop it with scripts/slurm/down.sh.
#
# Two nodes on one machine: Debian's Slurm (22.05) is built without --enable-multiple-slurmd
# ("Duplicated NodeHostName" for a second node on one host), so each of node1/node2 is a
# slurmd in a network namespace of its own (exf-node1, exf-node2) with its own address
# (10.77.0.2, 10.77.0.3) on a bridge (exf0, 10.77.0.1: where the nodes reach slurmctld), as
# real nodes would be. Files are shared (one machine): the package, the venv, munge's socket.
# In each namespace /etc/hosts is bind-mounted from /etc/netns/<ns>/hosts, which maps the
# node names and this machine's host name to that node's address (gloo binds to it).
# Without CAP_NET_ADMIN there is no `multi` partition (said on the last line).
#
#   EXPFLOW_SLURM_DIR   state, logs and device files (default /tmp/expflow-slurm)
#   EXPFLOW_SLURM_CPUS  CPUs the node advertises (default 8: room for 4 one-GPU jobs at once)
#   EXPFLOW_SLURM_NODE_CPUS  CPUs each of node1/node2 advertises (default 4)
set -euo pipefail

STATE=${EXPFLOW_SLURM_DIR:-/tmp/expflow-slurm}
CPUS=${EXPFLOW_SLURM_CPUS:-8}
NODE_CPUS=${EXPFLOW_SLURM_NODE_CPUS:-4}
NET=10.77.0  # the bridge's /24: .1 the machine (slurmctld), .2 and .3 the nodes
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
for node in node1 node2; do  # 2 simulated GPUs on each node of partition multi
  mkdir -p "$STATE/gpus/$node"
  for i in 0 1; do [ -e "$STATE/gpus/$node/nvidia$i" ] || mknod "$STATE/gpus/$node/nvidia$i" c 195 "$i"; done
done

# -- munge ------------------------------------------------------------------------
if ! pgrep -x munged >/dev/null; then
  [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  runuser -u munge -- /usr/sbin/munged
  started munged
fi
wait_for 10 munge munge -n

# -- two more nodes, each in a network namespace ---------------------------------------
multi_net() {
  ip link show exf0 >/dev/null 2>&1 || {
    ip link add exf0 type bridge && ip addr add "$NET.1/24" dev exf0 && started net; } || return 1
  ip link set exf0 up || return 1
  local i
  for i in 1 2; do
    ip netns list | grep -qw "exf-node$i" || ip netns add "exf-node$i" || return 1
    if ! ip -n "exf-node$i" link show eth0 >/dev/null 2>&1; then
      ip link del "exf-n$i" 2>/dev/null  # a stale end of an earlier pair
      ip link add "exf-n$i" type veth peer name eth0 netns "exf-node$i" || return 1
      ip link set "exf-n$i" master exf0 up && ip -n "exf-node$i" addr add "$NET.$((i + 1))/24" dev eth0 || return 1
    fi
    ip -n "exf-node$i" link set eth0 up && ip -n "exf-node$i" link set lo up || return 1
    mkdir -p "/etc/netns/exf-node$i"
    printf '127.0.0.1 localhost\n%s %s\n%s.2 node1\n%s.3 node2\n' \
      "$NET.$((i + 1))" "$(hostname)" "$NET" "$NET" >"/etc/netns/exf-node$i/hosts"
  done
}
if multi_net 2>"$STATE/log/net.log"; then MULTI=1; else MULTI=0; fi

# -- slurm.conf: must be /etc/slurm/slurm.conf (the executor plugin's jobstep drops SLURM_CONF)
topology=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e 's/CPUs=[0-9]*//' \
  -e 's/Boards=[0-9]*//' -e 's/SocketsPerBoard=[0-9]*//' -e 's/CoresPerSocket=[0-9]*//' -e 's/ThreadsPerCore=[0-9]*//')
real_mem=$(echo "$topology" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
mem=$((real_mem * 9 / 10))
if [ "$MULTI" = 1 ]; then
  CTLD="localhost($NET.1)"  # the nodes in their namespaces reach slurmctld on the bridge
  # Before `localhost`: while a node named localhost is the only one, slurmctld takes any
  # name it looks up for it ("Duplicated NodeHostName node1").
  NODES="NodeName=node1 NodeAddr=$NET.2 CPUs=$NODE_CPUS RealMemory=4000 Gres=gpu:2 State=UNKNOWN
NodeName=node2 NodeAddr=$NET.3 CPUs=$NODE_CPUS RealMemory=4000 Gres=gpu:2 State=UNKNOWN"
  NODE_GRES="NodeName=node1 Name=gpu File=$STATE/gpus/node1/nvidia[0-1]
NodeName=node2 Name=gpu File=$STATE/gpus/node2/nvidia[0-1]"
  MULTI_PARTITION="PartitionName=multi Nodes=node[1-2] MaxTime=INFINITE State=UP"
else
  CTLD=localhost NODES="" MULTI_PARTITION="" NODE_GRES=""
fi
cat >/etc/slurm/slurm.conf <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$CTLD
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d/%n
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
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
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
$NODES
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
$MULTI_PARTITION
CONF
cat >/etc/slurm/gres.conf <<CONF
AutoDetect=off
NodeName=localhost Name=gpu File=$STATE/gpus/nvidia[0-$((GPUS - 1))]
$NODE_GRES
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
slurmd_running() { kill -0 "$(cat "$STATE/run/slurmd-$1.pid" 2>/dev/null)" 2>/dev/null; }
slurmd_running localhost || { slurmd -N localhost; started slurmd; }
wait_for 60 "an idle node" bash -c '[ "$(sinfo -h -p debug -o %T | head -1)" = idle ]'
log "up: partition debug, account $ACCOUNT, $GPUS GPUs, $CPUS CPUs (state in $STATE)"
if [ "$MULTI" = 1 ]; then
  for i in 1 2; do
    # nsenter, not `ip netns exec`: that remounts /sys without the cgroup tree slurmd needs.
    slurmd_running "node$i" || {
      nsenter --net="/run/netns/exf-node$i" unshare --mount --propagation private \
        sh -c "mount --bind /etc/netns/exf-node$i/hosts /etc/hosts && exec slurmd -N node$i"
      started "slurmd-node$i"; }
  done
  wait_for 60 "idle nodes node1, node2" bash -c '[ "$(sinfo -h -p multi -o %T | head -1)" = idle ]'
  log "up: partition multi, nodes node1 ($NET.2) and node2 ($NET.3), $NODE_CPUS CPUs and 2 GPUs each"
else
  log "no partition multi: network namespaces cannot be made here ($(tail -n 1 "$STATE/log/net.log"))"
fi
