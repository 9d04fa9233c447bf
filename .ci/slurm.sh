#!/usr/bin/env bash
# A single-node SLURM cluster and an sshd on localhost for tests/aiida/test_slurm.py and test_faults.py.
#
# Idempotent: services already running are left alone. Exits 0 with a message when something cannot be
# set up (not root, no apt, a daemon refuses to start); the tests then skip with the reason from
# $STATE_DIR/slurm-ssh.env (or its absence). No systemd: every daemon is started directly.
#
# Writes $STATE_DIR/slurm-ssh.env (sourced by the tests): SSH host/port/user/key, the node name, partition.
set -u

STATE_DIR="${BATTGEN_SLURM_STATE_DIR:-/var/lib/battgen-ci}"
ENV_FILE="$STATE_DIR/slurm-ssh.env"
SSH_KEY="$STATE_DIR/id_ed25519"
SSH_PORT="${BATTGEN_SSH_PORT:-22}"
NODE="$(hostname -s)"
SLURM_CONF=/etc/slurm/slurm.conf

give_up() { echo "slurm.sh: $*; the SLURM tests will skip" >&2; rm -f "$ENV_FILE"; exit 0; }
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

[ "$(id -u)" = 0 ] || give_up "needs root (installs packages, starts munged/slurmctld/slurmd/sshd)"
mkdir -p "$STATE_DIR" && chmod 700 "$STATE_DIR"

# --- packages ---------------------------------------------------------------------------------------
missing=""
for binary in slurmctld:slurm-wlm slurmd:slurm-wlm munged:munge sshd:openssh-server; do
  command -v "${binary%%:*}" >/dev/null || [ -x "/usr/sbin/${binary%%:*}" ] || missing="$missing ${binary##*:}"
done
if [ -n "$missing" ]; then
  command -v apt-get >/dev/null || give_up "missing$missing and no apt-get"
  echo "slurm.sh: installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1
  # shellcheck disable=SC2086
  apt-get install -y -qq $(echo "$missing" | tr ' ' '\n' | sort -u) >/dev/null || give_up "apt-get install failed"
fi

# --- munge ------------------------------------------------------------------------------------------
if ! pgrep -x munged >/dev/null; then
  [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
  chown munge:munge /etc/munge/munge.key 2>/dev/null; chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null
  runuser -u munge -- /usr/sbin/munged || /usr/sbin/munged --force || give_up "munged does not start"
fi
for _ in $(seq 20); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
munge -n </dev/null | unmunge >/dev/null 2>&1 || give_up "munge does not authenticate"

# --- slurm.conf -------------------------------------------------------------------------------------
memory_mb=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
real_memory=$(( memory_mb > 3072 ? memory_mb - 2048 : memory_mb * 2 / 3 ))  # headroom for the OS and the daemon
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
wanted_conf=$(cat <<EOF
# Written by aiida-battgen .ci/slurm.sh: one node, no cgroups (container), fast turnaround for tests.
ClusterName=battgen-ci
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds before it may start again (default 120 s).
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/builtin
# The main scheduling loop (requeued jobs past their BeginTime) every 2 s instead of 60 s.
SchedulerParameters=sched_interval=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# Walltime kills without grace, short cleanup, quick node-failure detection and return to service.
OverTimeLimit=0
KillWait=5
MinJobAge=30
SlurmdTimeout=15
SlurmctldTimeout=15
InactiveLimit=0
ReturnToService=2
JobRequeue=1
DefMemPerCPU=1024
NodeName=$NODE CPUs=2 RealMemory=$real_memory State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=60 State=UP
PartitionName=short Nodes=$NODE Default=NO MaxTime=5 State=UP
EOF
)
restart_slurm=0
if [ ! -f "$SLURM_CONF" ] || [ "$(cat "$SLURM_CONF")" != "$wanted_conf" ]; then
  echo "$wanted_conf" >"$SLURM_CONF"
  restart_slurm=1
fi

stop_daemon() {  # by the pid in its pid file, then wait until it is gone
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null
}
if [ "$restart_slurm" = 1 ]; then
  stop_daemon /run/slurmd.pid
  stop_daemon /run/slurmctld.pid
fi
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld || give_up "slurmctld does not start (see /var/log/slurm/slurmctld.log)"
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd || give_up "slurmd does not start (see /var/log/slurm/slurmd.log)"

state=""
for _ in $(seq 60); do
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1)
  case "$state" in idle*|mixed*|allocated*) break ;; down*|drain*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null ;; esac
  sleep 1
done
case "$state" in idle*|mixed*|allocated*) ;; *) give_up "node $NODE is '${state:-unknown}' in sinfo" ;; esac

# --- sshd on localhost, key-only ---------------------------------------------------------------------
ssh-keygen -A >/dev/null
[ -f "$SSH_KEY" ] || ssh-keygen -q -t ed25519 -N "" -C "battgen-ci-slurm" -f "$SSH_KEY"
mkdir -p /root/.ssh && chmod 700 /root/.ssh
touch /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys
grep -qF "$(cat "$SSH_KEY.pub")" /root/.ssh/authorized_keys || cat "$SSH_KEY.pub" >>/root/.ssh/authorized_keys
mkdir -p /run/sshd
if ! up "$SSH_PORT"; then
  /usr/sbin/sshd -p "$SSH_PORT" -o PermitRootLogin=prohibit-password -o PasswordAuthentication=no \
    -o ListenAddress=127.0.0.1 || give_up "sshd does not start on port $SSH_PORT"
  for _ in $(seq 20); do up "$SSH_PORT" && break; sleep 0.5; done
fi
touch /root/.ssh/known_hosts && chmod 600 /root/.ssh/known_hosts
if ! ssh-keygen -F localhost -f /root/.ssh/known_hosts >/dev/null 2>&1 \
   && ! ssh-keygen -F "[localhost]:$SSH_PORT" -f /root/.ssh/known_hosts >/dev/null 2>&1; then
  ssh-keyscan -p "$SSH_PORT" -t ed25519,rsa,ecdsa localhost 2>/dev/null >>/root/.ssh/known_hosts
fi
ssh -p "$SSH_PORT" -i "$SSH_KEY" -o BatchMode=yes -o StrictHostKeyChecking=yes root@localhost true \
  || give_up "ssh -p $SSH_PORT root@localhost fails with key $SSH_KEY"
# The job's environment must reach sbatch over ssh: check the scheduler answers through it.
ssh -p "$SSH_PORT" -i "$SSH_KEY" -o BatchMode=yes root@localhost squeue -h >/dev/null \
  || give_up "squeue over ssh fails"

cat >"$ENV_FILE" <<EOF
BATTGEN_SLURM_NODE=$NODE
BATTGEN_SLURM_PARTITION=cpu
BATTGEN_SSH_HOST=localhost
BATTGEN_SSH_PORT=$SSH_PORT
BATTGEN_SSH_USER=root
BATTGEN_SSH_KEY=$SSH_KEY
EOF
echo "slurm.sh: SLURM node $NODE $state, sshd on localhost:$SSH_PORT (key $SSH_KEY); settings in $ENV_FILE"
