#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine, for the tests that submit
# real batch jobs (tests/test_slurm.py). Run as root, after installing the
# Debian packages slurmctld, slurmd, slurm-client and munge.
#
#   sudo bash scripts/ci/start_slurm.sh
#
# Idempotent: if `sinfo` already answers with a usable node, nothing is done.
# Otherwise it starts munged (creating its key if absent), writes
# /etc/slurm/slurm.conf for this host (every CPU, the memory minus a margin),
# starts slurmctld and slurmd, and waits up to 60 s for the node to be idle.
# State, spool and logs go to $SHAPEPIPE_SLURM_DIR (default /tmp/shapepipe_slurm).
# Exit status 0 when the cluster answers; 1 (with the daemon logs) otherwise.
set -euo pipefail

state_dir=${SHAPEPIPE_SLURM_DIR:-/tmp/shapepipe_slurm}
conf=/etc/slurm/slurm.conf
timeout_s=60

node_state() {
    # States of the nodes, one a line ("idle", "mixed", ...); empty if no cluster answers.
    timeout 10 sinfo -h -N -o '%T' 2>/dev/null || true
}

usable() {
    node_state | grep -q -E '^(idle|mixed|allocated|completing)'
}

if usable; then
    echo "start_slurm: a SLURM cluster already answers:"
    sinfo
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "start_slurm: must run as root (it starts munged, slurmctld and slurmd)" >&2
    exit 1
fi
for program in munged slurmctld slurmd sinfo; do
    if ! command -v "$program" >/dev/null && [ ! -x "/usr/sbin/$program" ]; then
        echo "start_slurm: $program not found; install the Debian packages slurmctld slurmd slurm-client munge" >&2
        exit 1
    fi
done
export PATH="$PATH:/usr/sbin"

print_logs() {
    for log in "$state_dir/slurmctld.log" "$state_dir/slurmd.log" /var/log/munge/munged.log; do
        if [ -f "$log" ]; then
            echo "---- $log (last 40 lines)"
            tail -n 40 "$log"
        fi
    done
}

# munge: the credential service every SLURM daemon and client uses.
if ! (munge -n | unmunge) >/dev/null 2>&1; then
    mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        if command -v mungekey >/dev/null || [ -x /usr/sbin/mungekey ]; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
    fi
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
    chmod 0700 /etc/munge
    chmod 0400 /etc/munge/munge.key
    runuser -u munge -- munged
    for _ in $(seq 1 20); do
        if (munge -n | unmunge) >/dev/null 2>&1; then
            break
        fi
        sleep 0.5
    done
    if ! (munge -n | unmunge) >/dev/null 2>&1; then
        echo "start_slurm: munged does not answer" >&2
        print_logs
        exit 1
    fi
fi

host=$(hostname -s)
cpus=$(nproc)
total_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
# slurmd refuses a node that has less memory than configured: leave a margin
# of 5 % (at least 512 MB) for the system.
margin_mb=$(( total_mb / 20 > 512 ? total_mb / 20 : 512 ))
memory_mb=$(( total_mb - margin_mb ))
mkdir -p "$state_dir/state" "$state_dir/spool" /etc/slurm

cat > "$conf.tmp" <<EOF
# Single-node test cluster written by scripts/ci/start_slurm.sh.
ClusterName=shapepipe
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$state_dir/state
SlurmdSpoolDir=$state_dir/spool
SlurmctldPidFile=$state_dir/slurmctld.pid
SlurmdPidFile=$state_dir/slurmd.pid
SlurmctldLogFile=$state_dir/slurmctld.log
SlurmdLogFile=$state_dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job that asks no memory would hold the whole node.
DefMemPerCPU=1000
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
mv "$conf.tmp" "$conf"
unset SLURM_CONF

# -c: start from a clean state (no cluster answered, so no job can be lost).
slurmctld -c
slurmd

for _ in $(seq 1 "$timeout_s"); do
    if node_state | grep -q -x idle; then
        echo "start_slurm: node $host idle ($cpus CPUs, ${memory_mb} MB); state in $state_dir"
        sinfo
        exit 0
    fi
    sleep 1
done
echo "start_slurm: node $host not idle after ${timeout_s} s (state: $(node_state | tr '\n' ' '))" >&2
print_logs >&2
exit 1
