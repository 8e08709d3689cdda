#!/usr/bin/env bash
# A real single-node Slurm on this machine, for the `slurm` executor's tests and for trying a grid
# before a cluster: munged, MariaDB + slurmdbd (so `sacct` answers, as on a cluster), slurmctld
# and slurmd, started as plain daemons (no systemd: CI runs in a container).
#
#   scripts/slurm-local.sh start     start everything (idempotent: a running Slurm is left as it is)
#   scripts/slurm-local.sh stop      cancel this Slurm's jobs, stop every daemon (idempotent)
#   scripts/slurm-local.sh status    exit 0 when the node answers and is usable, else 1
#   scripts/slurm-local.sh env       print the line that points Slurm's commands at this Slurm
#   scripts/slurm-local.sh purge     stop, then delete the state folder (job history, database)
#
# Everything lives under AUTOSEG_SLURM_DIR (default /tmp/autoseg-slurm-$UID): the configuration,
# the munge key and socket, the database, the spool and the logs. Slurm's commands find this
# Slurm through SLURM_CONF=$AUTOSEG_SLURM_DIR/etc/slurm.conf (the `env` command prints it); the
# daemons listen on 127.0.0.1 from port AUTOSEG_SLURM_PORT (default 16817) upwards, away from a
# system Slurm's 6817-6819.
#
# The node declares this machine's real cores and memory (`slurmd -C`). It needs root (the daemons
# run as root, SlurmUser=root) and Debian's packages: slurmctld slurmd slurm-client munge, and for
# accounting slurmdbd mariadb-server (`scripts/setup.sh test` installs them where root and apt-get
# exist). Without slurmdbd/mariadbd it starts without accounting and says so; `sacct` then fails.
set -euo pipefail

D=${AUTOSEG_SLURM_DIR:-/tmp/autoseg-slurm-$(id -u)}
PORT=${AUTOSEG_SLURM_PORT:-16817}
CONF="$D/etc/slurm.conf"
# Munge's default socket: Slurm 22.05 ignores AuthInfo=socket= on slurmctld's connection to
# slurmdbd, so a private socket cannot be used. A munged already answering there is used as is.
MUNGE_SOCKET=/run/munge/munge.socket.2
DB_SOCKET="$D/mysql/mysqld.sock"
HOST=$(hostname -s)
export SLURM_CONF="$CONF"

say() { echo "slurm-local: $*" >&2; }
die() { say "$*"; exit 1; }

need_commands() {
  local missing=()
  for c in slurmctld slurmd sinfo sbatch scontrol squeue scancel munged mungekey munge; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    die "missing ${missing[*]}: install Debian's slurmctld slurmd slurm-client munge (and slurmdbd mariadb-server for sacct), e.g. 'bash scripts/setup.sh test' as root"
  fi
  [ "$(id -u)" = 0 ] || die "the daemons of this single-node Slurm run as root (SlurmUser=root); run as root"
}

with_accounting() { command -v slurmdbd >/dev/null 2>&1 && command -v mariadbd >/dev/null 2>&1 && command -v mariadb-install-db >/dev/null 2>&1; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
  local limit=$1 what=$2; shift 2
  local t=0
  until "$@" >/dev/null 2>&1; do
    sleep 0.5; t=$((t + 1))
    if [ $t -ge $((limit * 2)) ]; then
      say "gave up after ${limit}s waiting for $what; the logs are in $D/log"
      tail -n 20 "$D"/log/*.log >&2 2>/dev/null || true
      return 1
    fi
  done
}

node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1; }

node_usable() {  # idle, mixed or allocated (a '*' suffix means not responding)
  case "$(node_state)" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac
}

write_config() {
  mkdir -p "$D"/{etc,munge,state,spool,log,run,mysql}
  chmod 755 "$D" "$D/munge"  # munged wants its socket's folder searchable by all; the key stays 0400
  # `slurmd -C` prints this machine's CPUs, sockets, cores, threads and RealMemory as Slurm sees them.
  local node_line cpus mem
  node_line=$(slurmd -C | head -n1)
  cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node_line")
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
  [ -n "$cpus" ] && [ -n "$mem" ] || die "cannot read CPUs and RealMemory from 'slurmd -C': $node_line"
  local acct="AccountingStorageType=accounting_storage/none"
  if with_accounting; then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((PORT + 2))"
  fi
  # Why these choices: no cgroup hierarchy is delegated inside a container, so processes are
  # tracked through /proc (proctrack/linuxproc) and tasks are not bound (task/none); memory is a
  # consumable resource with a default per CPU, so a job that asks no --mem does not take the node.
  cat > "$CONF.tmp" <<EOF
# Written by scripts/slurm-local.sh for a single-node Slurm on $HOST; regenerated at each start.
ClusterName=autoseg
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
$acct
ReturnToService=2
KillWait=10
InactiveLimit=0
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
EOF
  mv "$CONF.tmp" "$CONF"
  if with_accounting; then
    cat > "$D/etc/slurmdbd.conf" <<EOF
# Written by scripts/slurm-local.sh: slurmdbd keeps the job records that sacct reads, in MariaDB.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((PORT + 2))
SlurmUser=root
PidFile=$D/run/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 3))
StorageUser=slurm
StoragePass=autoseg-local
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$D/etc/slurmdbd.conf"  # slurmdbd refuses a readable file (it holds the password)
  fi
}

munge_works() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }

start_munge() {
  if pid_alive "$D/run/munged.pid"; then return 0; fi
  if munge_works >/dev/null 2>&1; then
    say "using the munged that already answers on $MUNGE_SOCKET (not started here, not stopped here)"
    return 0
  fi
  mkdir -p "$(dirname "$MUNGE_SOCKET")"
  [ -f "$D/munge/munge.key" ] || mungekey --create --keyfile="$D/munge/munge.key" >/dev/null
  chmod 400 "$D/munge/munge.key"
  munged --force --socket="$MUNGE_SOCKET" --key-file="$D/munge/munge.key" --pid-file="$D/run/munged.pid" \
    --log-file="$D/log/munged.log" --seed-file="$D/munge/munged.seed"
  wait_for 15 "munged" munge_works
}

db_client() { mariadb --no-defaults --socket="$DB_SOCKET" -u root "$@"; }

start_accounting() {
  with_accounting || { say "slurmdbd or mariadbd not installed: starting WITHOUT accounting (sacct will fail; squeue still works)"; return 0; }
  if ! pid_alive "$D/run/mariadbd.pid"; then
    if [ ! -d "$D/mysql/mysql" ]; then
      mariadb-install-db --no-defaults --user=root --datadir="$D/mysql" --auth-root-authentication-method=normal \
        --skip-test-db >"$D/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; see $D/log/mariadb-install.log"
    fi
    # A small server: the accounting database of one node holds a few hundred rows.
    mariadbd --no-defaults --user=root --datadir="$D/mysql" --socket="$DB_SOCKET" --pid-file="$D/run/mariadbd.pid" \
      --port=$((PORT + 3)) --bind-address=127.0.0.1 --log-error="$D/log/mariadbd.log" --skip-log-bin \
      --innodb-buffer-pool-size=32M --performance-schema=OFF --innodb-log-file-size=16M >/dev/null 2>&1 &
    disown
    wait_for 60 "MariaDB" db_client -e "SELECT 1"
    db_client -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'autoseg-local';
                  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
  fi
  if ! pid_alive "$D/run/slurmdbd.pid"; then
    # slurmdbd reads slurmdbd.conf from the folder of SLURM_CONF.
    SLURM_CONF="$CONF" slurmdbd 2>>"$D/log/slurmdbd.log" \
      || die "slurmdbd did not start; see $D/log/slurmdbd.log"
    wait_for 30 "slurmdbd" bash -c "exec 3<>/dev/tcp/127.0.0.1/$((PORT + 2))"
  fi
}

start() {
  need_commands
  if node_usable && pid_alive "$D/run/slurmctld.pid" && pid_alive "$D/run/slurmd.pid"; then
    say "already running ($HOST $(node_state)); $(env_line)"
    return 0
  fi
  write_config
  start_munge
  start_accounting
  if ! pid_alive "$D/run/slurmctld.pid"; then
    slurmctld -f "$CONF" || die "slurmctld did not start; see $D/log/slurmctld.log"
  fi
  wait_for 30 "slurmctld" scontrol ping
  if ! pid_alive "$D/run/slurmd.pid"; then
    slurmd -f "$CONF" -N "$HOST" || die "slurmd did not start; see $D/log/slurmd.log"
  fi
  # A node left DOWN or DRAINED by an earlier, killed session is put back into service.
  if ! wait_for 20 "node $HOST to register" node_usable; then
    scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true
    wait_for 40 "node $HOST to become idle" node_usable || die "node $HOST is $(node_state)"
  fi
  if with_accounting; then
    # slurmctld registers the cluster with slurmdbd on its own; wait until sacct answers.
    wait_for 30 "sacct" sacct -n -X -S now
  fi
  say "started: $(sinfo -h -o '%P %D %T %c CPUs %m MB' | head -n1); $(env_line)"
}

stop_pid() {  # stop_pid NAME: SIGTERM the daemon of that pid file, SIGKILL after 20 s
  local f="$D/run/$1.pid"
  pid_alive "$f" || { rm -f "$f"; return 0; }
  local pid; pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then say "$1 ($pid) ignored SIGTERM; killing it"; kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$f"
}

stop() {
  [ -d "$D" ] || { say "nothing to stop ($D does not exist)"; return 0; }
  if pid_alive "$D/run/slurmctld.pid" && command -v scancel >/dev/null 2>&1; then
    # Jobs run in slurmstepd processes that outlive slurmd; cancel them so that nothing is left behind.
    if [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
      say "cancelling the jobs still queued or running"
      scancel --full $(squeue -h -o %i) 2>/dev/null || true
      wait_for 30 "the jobs to end" bash -c '[ -z "$(squeue -h -o %i)" ]' || true
    fi
  fi
  stop_pid slurmd
  stop_pid slurmctld
  stop_pid slurmdbd
  stop_pid mariadbd
  stop_pid munged
  say "stopped"
}

status() {
  if [ ! -f "$CONF" ]; then say "not configured ($CONF missing)"; return 1; fi
  local ok=0
  if munge_works >/dev/null 2>&1; then say "munge answers on $MUNGE_SOCKET"; else say "munge does not answer on $MUNGE_SOCKET"; ok=1; fi
  for d in slurmctld slurmd; do
    if pid_alive "$D/run/$d.pid"; then say "$d running (pid $(cat "$D/run/$d.pid"))"; else say "$d not running"; ok=1; fi
  done
  if with_accounting; then
    for d in mariadbd slurmdbd; do
      if pid_alive "$D/run/$d.pid"; then say "$d running (pid $(cat "$D/run/$d.pid"))"; else say "$d not running"; ok=1; fi
    done
  fi
  if node_usable; then say "node $HOST is $(node_state)"; else say "node $HOST is not usable (${HOST}: $(node_state || true))"; ok=1; fi
  return $ok
}

env_line() { echo "export SLURM_CONF=$CONF"; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) env_line ;;
  purge) stop; rm -rf "$D"; say "removed $D" ;;
  *) echo "usage: $0 start|stop|status|env|purge" >&2; exit 2 ;;
esac
