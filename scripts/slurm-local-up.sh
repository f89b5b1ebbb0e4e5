#!/bin/bash
# Bring up a single-node Slurm 22.05 cluster on localhost (no systemd, no cgroups), as root on Debian.
# Idempotent: daemons already running (pid file + live process) are left alone. Recipe and pitfalls:
# ../shared/notes/slurm-local.md. Stop it with scripts/slurm-local-down.sh.
# WITH_DB=1 (default) also starts MariaDB + slurmdbd so that `sacct` works
# (submitit needs sacct to see CANCELLED/TIMEOUT/FAILED-without-result jobs).
set -euo pipefail
WITH_DB=${WITH_DB:-1}
HOST=$(hostname -s)

need=(slurmctld slurmd slurm-client munge)
[ "$WITH_DB" = 1 ] && need+=(slurmdbd mariadb-server)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# hostname must resolve (slurmd looks itself up by NodeName)
getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >> /etc/hosts

# ---- munge ----
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile /etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
if ! { [ -f /run/munge/munged.pid ] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; }; then
  runuser -u munge -- /usr/sbin/munged
fi
for i in $(seq 50); do munge -n | unmunge >/dev/null 2>&1 && break; sleep 0.1; done

# ---- dirs ----
mkdir -p /var/spool/slurm/ctld /var/spool/slurm/d /var/log/slurm /run/slurm

# ---- slurm.conf ----
NODELINE=$(slurmd -C | head -1)   # NodeName=<host> CPUs=.. ... RealMemory=..
if [ "$WITH_DB" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
cat > /etc/slurm/slurm.conf <<CONF
# Single-node Slurm 22.05 for a sandbox without systemd / cgroup plugins
ClusterName=localcluster
SlurmctldHost=${HOST}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
# requeued jobs wait cred_expire+1 s before they are eligible again (default 120 s!)
AuthInfo=cred_expire=5
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
${ACCT}
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
MailProg=/bin/true
StateSaveLocation=/var/spool/slurm/ctld
SlurmdSpoolDir=/var/spool/slurm/d
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
Waittime=0
${NODELINE} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF

# ---- MariaDB + slurmdbd ----
if [ "$WITH_DB" = 1 ]; then
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  if ! { [ -f /run/mysqld/mysqld.pid ] && kill -0 "$(cat /run/mysqld/mysqld.pid)" 2>/dev/null; }; then
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking \
      --pid-file=/run/mysqld/mysqld.pid >/var/log/slurm/mariadbd.log 2>&1 </dev/null &
  fi
  for i in $(seq 100); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmpw
CONF
  chmod 600 /etc/slurm/slurmdbd.conf
  if ! { [ -f /run/slurm/slurmdbd.pid ] && kill -0 "$(cat /run/slurm/slurmdbd.pid)" 2>/dev/null; }; then
    /usr/sbin/slurmdbd
  fi
  # wait until slurmdbd listens on 6819
  for i in $(seq 100); do (echo > /dev/tcp/127.0.0.1/6819) 2>/dev/null && break; sleep 0.1; done
fi

# ---- slurmctld + slurmd ----
if ! { [ -f /run/slurm/slurmctld.pid ] && kill -0 "$(cat /run/slurm/slurmctld.pid)" 2>/dev/null; }; then
  /usr/sbin/slurmctld
fi
if ! { [ -f /run/slurm/slurmd.pid ] && kill -0 "$(cat /run/slurm/slurmd.pid)" 2>/dev/null; }; then
  /usr/sbin/slurmd
fi
# ready when the node can take jobs (idle; or busy, when this script is re-run on a cluster in use)
node_ready() { [[ "$(sinfo -h -o %T 2>/dev/null)" =~ ^(idle|mixed|allocated|completing)$ ]]; }
for i in $(seq 120); do
  node_ready && break; sleep 0.25
done
sinfo
if ! node_ready; then
  echo "slurm-local-up: the node did not become ready; see /var/log/slurm/*.log" >&2
  tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
  exit 1
fi
