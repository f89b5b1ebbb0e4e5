#!/bin/bash
# Stop everything slurm-local-up.sh started, each daemon by its pid file.
stop() {  # $1 = pid file
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$f"
}
# 1. cancel jobs while the controller is still up, so no slurmstepd is orphaned
if [ -f /run/slurm/slurmctld.pid ] && kill -0 "$(cat /run/slurm/slurmctld.pid)" 2>/dev/null; then
  scancel --user=root 2>/dev/null || true
  for i in $(seq 60); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.25; done
fi
# 2. daemons, in reverse start order
stop /run/slurm/slurmd.pid
stop /run/slurm/slurmctld.pid
stop /run/slurm/slurmdbd.pid
stop /run/mysqld/mysqld.pid
stop /run/munge/munged.pid
# 3. any job step daemon left behind
for pid in $(pgrep -x slurmstepd); do kill "$pid" 2>/dev/null; done
true
