#!/usr/bin/env bash
# Stop the test cluster started by scripts/slurm/up.sh (daemons by their pid files).
set -uo pipefail
STATE=${EXPFLOW_SLURM_DIR:-/tmp/expflow-slurm}
stop() {  # stop PIDFILE NAME
  local pid
  pid=$(cat "$1" 2>/dev/null) || pid=$(pgrep -x "$2" | head -1)
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null
}
scancel --user=root >/dev/null 2>&1
stop "$STATE/run/slurmd.pid" slurmd
stop "$STATE/run/slurmctld.pid" slurmctld
stop "$STATE/run/slurmdbd.pid" slurmdbd
stop /run/mysqld/mysqld.pid mariadbd
stop /run/munge/munged.pid munged
echo "[slurm-down] stopped"
