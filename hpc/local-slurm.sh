#!/bin/bash
# A throw-away single-node SLURM on this machine, to try the job scripts end to end (tests, CI, a laptop).
# Needs root and Debian's packages: apt-get install -y slurm-wlm munge.  No systemd: the daemons are
# started by hand with a minimal slurm.conf in a folder of their own.
#
#   hpc/local-slurm.sh start [DIR]   # default DIR: /tmp/denoisefeat-slurm; prints `export SLURM_CONF=...`
#   hpc/local-slurm.sh stop  [DIR]
#
# Then: export SLURM_CONF=DIR/slurm.conf; denoisefeat jobs submit SPEC --scheduler slurm
set -euo pipefail
action=${1:-start}
dir=${2:-/tmp/denoisefeat-slurm}
conf="$dir/slurm.conf"

stop() {
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"; do
        if [[ -f $pidfile ]]; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
            rm -f "$pidfile"
        fi
    done
}

if [[ $action == stop ]]; then
    stop
    exit 0
fi
[[ $action == start ]] || { echo "usage: $0 start|stop [DIR]" >&2; exit 2; }
command -v slurmctld >/dev/null || { echo "slurmctld not found: apt-get install -y slurm-wlm munge" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "run as root (the daemons switch users)" >&2; exit 1; }

mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/munge"
chown munge:munge "$dir/munge"
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > "$conf" <<CONF
ClusterName=denoisefeat-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
MinJobAge=600
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

stop
# munged: its own socket and pid file in $dir, as the munge user
runuser -u munge -- munged --socket="$dir/munge/munge.socket" --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
cp "$dir/munge/munged.pid" "$dir/munged.pid"
export SLURM_CONF="$conf"
slurmctld -f "$conf"
slurmd -f "$conf"
for _ in $(seq 60); do
    if scontrol ping 2>/dev/null | grep -q UP && sinfo -h -o %T 2>/dev/null | grep -qE "idle|mixed|alloc"; then
        echo "export SLURM_CONF=$conf"
        exit 0
    fi
    sleep 1
done
echo "SLURM did not come up; see $dir/log/" >&2
exit 1
