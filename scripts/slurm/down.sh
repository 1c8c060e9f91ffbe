#!/usr/bin/env bash
# Stop what scripts/slurm/up.sh started (it lists the daemons in $STATE/started), by pid file.
# Daemons that were already running when up.sh ran are left alone.
set -uo pipefail
STATE=${EXPFLOW_SLURM_DIR:-/tmp/expflow-slurm}
STARTED="$STATE/started"
[ -f "$STARTED" ] || { echo "[slurm-down] nothing started by up.sh"; exit 0; }
pidfile() {
  case $1 in
    slurmd) echo "$STATE/run/slurmd-localhost.pid" ;;
    slurmd-node*) echo "$STATE/run/$1.pid" ;;
    slurmctld | slurmdbd) echo "$STATE/run/$1.pid" ;;
    mariadbd) echo /run/mysqld/mysqld.pid ;;
    munged) echo /run/munge/munged.pid ;;
  esac
}
stop() {
  local pid
  pid=$(cat "$(pidfile "$1")" 2>/dev/null) || return 0
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null
}
# Jobs of the test cluster go first, when we own its controller.
grep -qx slurmctld "$STARTED" && scancel --user=root >/dev/null 2>&1
for daemon in slurmd-node1 slurmd-node2 slurmd slurmctld slurmdbd mariadbd munged; do
  grep -qx "$daemon" "$STARTED" && stop "$daemon"
done
# The nodes' network namespaces and their bridge (up.sh made them).
if grep -qx net "$STARTED"; then
  for i in 1 2; do
    ip netns del "exf-node$i" 2>/dev/null; ip link del "exf-n$i" 2>/dev/null; rm -rf "/etc/netns/exf-node$i"
  done
  ip link del exf0 2>/dev/null
fi
rm -f "$STARTED"
echo "[slurm-down] stopped: the daemons up.sh had started"
