#!/usr/bin/env bash
# Real Slurm: starts a private slurmctld + slurmd (one node, own ports, config and spool under a temp dir), submits
# launch/zerotrain.sbatch with 4 ranks, preempts it with `scancel --signal=USR1 --batch`, lets it requeue and
# finish, and checks the final parameters and optimizer state are bitwise identical to an uninterrupted mpirun run.
# Exits 77 (SKIPPED) only when the Slurm daemons are not installed.
set -uo pipefail
ZT=${ZEROTRAIN:?ZEROTRAIN must point at the zerotrain binary}
SRC=${ZT_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
MPIEXEC=${ZT_MPIEXEC:-mpirun}
PY=${ZT_PYTHON:-python3}
HERE=$SRC/test/e2e/slurm
t0=$SECONDS
log() { echo "[slurm +$((SECONDS - t0))s] $*"; }

for c in slurmctld slurmd sbatch scontrol scancel sinfo; do
  command -v "$c" >/dev/null || { echo "SKIPPED: $c not installed (Debian: slurm-wlm)"; exit 77; }
done
[ "$(id -u)" = 0 ] || { echo "SKIPPED: a private slurmd must run as root here"; exit 77; }

work=$(mktemp -d /tmp/zt-slurm.XXXXXX)
mkdir -p "$work/state" "$work/spool" "$work/tmp"
: >"$work/plugstack.conf"
# Every Slurm command below talks to this private cluster only.
export SLURM_CONF=$work/slurm.conf
ctld_pid="" slurmd_pid="" jid=""

job_field() { scontrol show job "$jid" 2>/dev/null | grep -o "$1=[^ ]*" | head -1 | cut -d= -f2; }
# Processes of this test's cluster: the daemons, slurmstepd and the job inherit SLURM_CONF=$work/slurm.conf.
our_pids() {
  grep -lsaF "SLURM_CONF=$SLURM_CONF" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 | grep -vx "$$" || true
}
cleanup() {
  if [ -n "$jid" ] && [ -n "$ctld_pid" ] && kill -0 "$ctld_pid" 2>/dev/null; then
    state=$(job_field JobState)
    if [ -n "$state" ] && [ "$state" != COMPLETED ] && [ "$state" != CANCELLED ] && [ "$state" != FAILED ]; then
      log "cleanup: cancelling job $jid ($state)"
      scancel --signal=KILL "$jid" 2>/dev/null
      scancel "$jid" 2>/dev/null
      for _ in $(seq 20); do
        case "$(job_field JobState)" in RUNNING|COMPLETING|PENDING|CONFIGURING) sleep 0.5 ;; *) break ;; esac
      done
    fi
  fi
  for pid in $slurmd_pid $ctld_pid; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 20); do
    alive=0
    for pid in $slurmd_pid $ctld_pid; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.5
  done
  for pid in $slurmd_pid $ctld_pid $(our_pids); do kill -KILL "$pid" 2>/dev/null; done
  wait 2>/dev/null
  if [ -n "${ZT_KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fails=0
pass() { echo "ok: $1"; }
fail() { echo "FAIL: $1"; fails=$((fails + 1)); }
die() {
  echo "FAIL: $1"
  for f in job.out slurmctld.log slurmd.log; do [ -f "$work/$f" ] && { echo "--- tail $f"; tail -30 "$work/$f"; }; done
  exit 1
}

# The runs: 4 ranks, ZeRO-2, checkpoints every 20 steps. Ranks yield when idle: Slurm gives 4 slots on what may be
# a 2-core machine, and spinning ranks would slow every collective (and the save) many times over.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_mpi_yield_when_idle=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
steps=80
args=(--max_steps "$steps" --save_interval 20 --zero_stage 2 --micro_batch_size 1 --global_batch_size 12
      --threads 1 --log_interval 10)

log "reference: uninterrupted mpirun -np 4, $steps steps"
timeout -k 10 240 "$MPIEXEC" -np 4 --bind-to none "$ZT" train "${args[@]}" --output_dir "$work/ref" \
  >"$work/ref.log" 2>&1 || { cat "$work/ref.log"; die "reference run failed"; }

# The cluster: free ports, this host's short name, a config from the template.
read -r ctld_port slurmd_port < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
host=$(hostname -s)
sed -e "s|@WORK@|$work|g" -e "s|@HOST@|$host|g" -e "s|@CLUSTER@|zt$$|g" -e "s|@CTLD_PORT@|$ctld_port|g" \
    -e "s|@SLURMD_PORT@|$slurmd_port|g" "$HERE/slurm.conf.in" >"$SLURM_CONF"
log "starting slurmctld (port $ctld_port) and slurmd (port $slurmd_port) for node $host in $work"
slurmctld -D -c -f "$SLURM_CONF" >"$work/slurmctld.out" 2>&1 &
ctld_pid=$!
slurmd -D -f "$SLURM_CONF" >"$work/slurmd.out" 2>&1 &
slurmd_pid=$!
for _ in $(seq 60); do
  [ "$(sinfo -h -o %t 2>/dev/null)" = idle ] && break
  sleep 0.5
done
[ "$(sinfo -h -o %t 2>/dev/null)" = idle ] || die "the node did not come up idle: $(sinfo 2>&1)"
log "cluster up: $(sinfo -h -o '%P %a %D %t %N %c' 2>&1)"

out=$work/slurm-out
export ZT_BIN=$ZT ZT_OUTPUT_DIR=$out ZT_MPIRUN=$MPIEXEC ZT_LAUNCHER=mpirun
unset ZT_ARGS ZT_LAUNCH_ARGS
jid=$(sbatch --parsable --nodes=1 --ntasks-per-node=4 --cpus-per-task=1 --output="$work/job.out" \
  --chdir="$work" "$SRC/launch/zerotrain.sbatch" "${args[@]}") || die "sbatch failed"
log "submitted job $jid"

# Preempt once training is under way and before it ends.
for _ in $(seq 240); do
  n=0; [ -f "$out/metrics.jsonl" ] && n=$(wc -l <"$out/metrics.jsonl")
  [ "$n" -ge 5 ] && break
  state=$(job_field JobState)
  case "$state" in PENDING|CONFIGURING|RUNNING) ;; *) die "job $jid is $state before training started" ;; esac
  sleep 0.25
done
[ "$n" -ge 5 ] || die "job $jid logged $n steps in 60 s"
log "job $jid at step $n: scancel --signal=USR1 --batch $jid"
scancel --signal=USR1 --batch "$jid" || die "scancel failed"

# The batch script forwards SIGUSR1, zerotrain saves and exits 75, the script requeues: PENDING, Restarts=1.
for _ in $(seq 240); do
  [ "$(job_field Restarts)" = 1 ] && [ "$(job_field JobState)" = PENDING ] && break
  case "$(job_field JobState)" in COMPLETED|FAILED|CANCELLED|TIMEOUT) break ;; esac
  sleep 0.25
done
[ "$(job_field Restarts)" = 1 ] && [ "$(job_field JobState)" = PENDING ] \
  || die "job $jid was not requeued: JobState=$(job_field JobState) Restarts=$(job_field Restarts)"
log "job $jid requeued ($(job_field Reason)); StartTime=now skips Slurm's requeue delay"
# But not at once: slurmd refuses a credential created in the same second as the old run's revocation ("Job
# credential revoked" fails the job), which is what the delay guards against. Wait for the node to be idle again
# and for the clock to move on.
for _ in $(seq 60); do [ "$(sinfo -h -o %t 2>/dev/null)" = idle ] && break; sleep 0.5; done
sleep 2
scontrol update JobId="$jid" StartTime=now || die "scontrol update StartTime=now failed"

for _ in $(seq 480); do
  case "$(job_field JobState)" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) break ;; esac
  sleep 0.25
done
state=$(job_field JobState)
log "job $jid: JobState=$state Restarts=$(job_field Restarts) ExitCode=$(job_field ExitCode)"
[ "$state" = COMPLETED ] && [ "$(job_field ExitCode)" = 0:0 ] && pass "job $jid completed with exit code 0:0" \
  || die "job $jid ended $state, ExitCode=$(job_field ExitCode)"

# What the job log and the output directory say.
j=$work/job.out
grep -q "SLURM_RESTART_COUNT=0" "$j" && grep -q "SLURM_RESTART_COUNT=1" "$j" \
  && pass "first run logged SLURM_RESTART_COUNT=0, the requeued run SLURM_RESTART_COUNT=1" \
  || fail "SLURM_RESTART_COUNT=0 and =1 not both logged"
grep -q "caught SIGUSR1: forwarding SIGUSR1" "$j" && pass "the batch script forwarded SIGUSR1 to mpirun" \
  || fail "no 'caught SIGUSR1' in the job log"
grep -q "zerotrain exited with status 75" "$j" && grep -q "requeued job $jid" "$j" \
  && pass "zerotrain exited 75 and the script requeued the job" || fail "no status 75 / requeue in the job log"
resume=$(grep -o "resumed from $out/checkpoint-[0-9]*: step [0-9]*, world size 4 then 4 now, ZeRO stage 2 then 2 now" \
  "$j")
stop=$(echo "$resume" | sed -n 's/.*: step \([0-9]*\),.*/\1/p')
if [ -n "$stop" ] && [ "$stop" -lt "$steps" ]; then pass "resume line: $resume"
else fail "no resume line (or it resumed at the end) in the job log"; fi
grep -q "checkpoint saved at step $stop; exiting with status 75" "$j" \
  && pass "preemption checkpoint at step $stop" || fail "no 'checkpoint saved at step $stop' line"
if "$PY" "$HERE/same_final_state.py" "$work/ref" "$out" "$steps"; then
  pass "preempted + requeued run is bitwise identical to the uninterrupted one"
else
  fail "final state differs from the uninterrupted run"
fi
[ $fails = 0 ] || { echo "--- job log"; cat "$j"; }
log "done, $fails failure(s)"
[ $fails = 0 ]
