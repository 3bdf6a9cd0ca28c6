#!/usr/bin/env bash
# Start a single-node Grid Engine cluster on this machine, for the tests that
# submit real job arrays (tests/test_sge.py). Run as root, after installing the
# Debian packages gridengine-master, gridengine-exec and gridengine-client.
#
#   sudo bash scripts/ci/start_sge.sh
#
# Idempotent: if `qstat -f` already shows a usable queue instance on this host,
# nothing is done. Otherwise it creates the cell if the package did not
# (Debian's init_cluster), makes this host's name and the name its address
# resolves to the same host for Grid Engine (host_aliases: a container's
# hostname often resolves to 127.0.0.1 = "localhost"), starts sge_qmaster, lets
# root submit (min_uid 0: the CI runs as root), schedules every second,
# declares this host admin, submit and execution host, a parallel environment
# "smp" (slots on one host) and the queue all.q with one slot per CPU and no
# load threshold (a busy shared machine must not close it), starts
# sge_execd and waits up to 60 s for the queue instance to be usable.
# Exit status 0 when the cluster answers; 1 (with the daemon messages) otherwise.
set -euo pipefail

export SGE_ROOT=${SGE_ROOT:-/var/lib/gridengine}
export SGE_CELL=${SGE_CELL:-default}
export PATH="$PATH:/usr/sbin"
spool=/var/spool/gridengine
common="$SGE_ROOT/$SGE_CELL/common"
timeout_s=60
host=$(hostname)
cpus=$(nproc)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

queue_states() {
    # State column of this host's all.q instance ("" when usable, "au", "E", ...); "none" if no answer.
    local listing
    listing=$(timeout 10 qstat -f -q "all.q@$host" 2>/dev/null) || { echo none; return; }
    awk -v q="all.q@$host" '$1 == q {print ($6 == "" ? "ok" : $6); found = 1} END {if (!found) print "none"}' \
        <<<"$listing"
}

if command -v qstat >/dev/null && [ -s "$common/act_qmaster" ] && [ "$(queue_states)" = ok ]; then
    echo "start_sge: a Grid Engine queue already answers:"
    qstat -f
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "start_sge: must run as root (it starts sge_qmaster and sge_execd)" >&2
    exit 1
fi
for program in sge_qmaster sge_execd qconf qsub qstat; do
    if ! command -v "$program" >/dev/null; then
        echo "start_sge: $program not found; install the Debian packages gridengine-master gridengine-exec gridengine-client" >&2
        exit 1
    fi
done

print_logs() {
    for log in "$spool/qmaster/messages" "$spool/execd/$host/messages"; do
        if [ -f "$log" ]; then
            echo "---- $log (last 30 lines)"
            tail -n 30 "$log"
        fi
    done
}

# The cell: the packages' postinst make it unless debconf said not to.
if [ ! -s "$common/bootstrap" ]; then
    install -d -o sgeadmin -g sgeadmin "$common"
    install -m0644 -o sgeadmin -g sgeadmin /usr/share/gridengine/default-bootstrap "$common/bootstrap"
fi
if [ ! -e "$spool/spooldb/sge" ]; then
    install -d -o sgeadmin -g sgeadmin "$spool/spooldb"
    runuser -u sgeadmin -- /usr/share/gridengine/scripts/init_cluster "$SGE_ROOT" "$SGE_CELL" "$spool/spooldb" sgeadmin
fi

# Grid Engine refuses a client whose address resolves to another name than the
# one it gives itself: declare the resolved name an alias of the host name.
address=$(getent ahostsv4 "$host" | awk 'NR == 1 {print $1}')
resolved=$(getent hosts "$address" | awk 'NR == 1 {print $2}')
if [ -n "$resolved" ] && [ "$resolved" != "$host" ]; then
    echo "$host $resolved" > "$common/host_aliases"
else
    rm -f "$common/host_aliases"
fi
echo "$host" > "$common/act_qmaster"
mkdir -p /var/run/gridengine "$spool/qmaster" "$spool/execd"
chown sgeadmin:sgeadmin /var/run/gridengine "$spool/qmaster" "$spool/execd"

if ! timeout 10 qconf -sh >/dev/null 2>&1; then
    SGE_MASTER_PIDFILE=/var/run/gridengine/qmaster.pid sge_qmaster
    for _ in $(seq 1 "$timeout_s"); do
        if timeout 10 qconf -sh >/dev/null 2>&1; then
            break
        fi
        sleep 1
    done
    if ! timeout 10 qconf -sh >/dev/null 2>&1; then
        echo "start_sge: sge_qmaster does not answer after ${timeout_s} s" >&2
        print_logs >&2
        exit 1
    fi
fi

# Global configuration: root may submit (the CI runs as root); load every 5 s.
qconf -sconf global | sed -E 's/^(min_uid|min_gid)( +).*/\1\20/; s/^(load_report_time +).*/\100:00:05/' \
    > "$work/global"
qconf -Mconf "$work/global" >/dev/null
# Scheduler: a pass every second and on every submission and job end.
qconf -ssconf | sed -E 's/^(schedule_interval +).*/\10:0:1/; s/^(flush_submit_sec +).*/\11/; s/^(flush_finish_sec +).*/\11/' \
    > "$work/sched"
qconf -Msconf "$work/sched" >/dev/null

qconf -ah "$host" >/dev/null 2>&1 || true
qconf -as "$host" >/dev/null 2>&1 || true
cat > "$work/exec" <<EOF
hostname              $host
load_scaling          NONE
complex_values        NONE
user_lists            NONE
xuser_lists           NONE
projects              NONE
xprojects             NONE
usage_scaling         NONE
report_variables      NONE
EOF
qconf -se "$host" >/dev/null 2>&1 || qconf -Ae "$work/exec" >/dev/null

cat > "$work/pe" <<EOF
pe_name            smp
slots              9999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    \$pe_slots
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
qconf -sp smp >/dev/null 2>&1 || qconf -Ap "$work/pe" >/dev/null

# all.q: one slot per CPU of this host, bash as the job shell, the smp environment.
if qconf -sq all.q >/dev/null 2>&1; then
    qconf -sq all.q > "$work/queue"
else
    qconf -sq > "$work/queue"  # the template
fi
sed -i -E "s/^(qname +).*/\1all.q/; s/^(hostlist +).*/\1$host/; s/^(slots +).*/\1$cpus/; \
s/^(pe_list +).*/\1smp/; s/^(load_thresholds +).*/\1NONE/; s/^(shell +).*/\1\/bin\/bash/; s/^(shell_start_mode +).*/\1posix_compliant/" "$work/queue"
if qconf -sq all.q >/dev/null 2>&1; then
    qconf -Mq "$work/queue" >/dev/null
else
    qconf -Aq "$work/queue" >/dev/null
fi

if ! pgrep -x sge_execd >/dev/null; then
    sge_execd
fi
for _ in $(seq 1 "$timeout_s"); do
    state=$(queue_states)
    if [ "$state" = ok ]; then
        echo "start_sge: queue all.q@$host usable ($cpus slots); spool in $spool"
        qstat -f
        exit 0
    fi
    if [[ "$state" == *E* ]]; then
        qmod -c "all.q@$host" >/dev/null 2>&1 || true  # clear an error state left by an earlier run
    fi
    sleep 1
done
echo "start_sge: queue all.q@$host not usable after ${timeout_s} s (state: $(queue_states))" >&2
print_logs >&2
exit 1
