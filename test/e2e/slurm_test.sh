#!/usr/bin/env bash
# Real Slurm: starts a private slurmctld + slurmd (one node, own ports, config and spool under a temp dir) and runs
# launch/zerotrain.sbatch through four jobs: (A) preempted with `scancel --signal=USR1 --batch`, requeued by the
# script, finished bitwise equal to an uninterrupted mpirun run; (B) `scontrol requeue` (Slurm's SIGTERM to every
# process) during a save that takes longer than mpirun's default SIGTERM-to-SIGKILL delay: saved, requeued by Slurm,
# finished, bitwise equal too; (C) a job array of 2 tasks, one run directory each; (D) SIGUSR1 before the ranks are up,
# delivered once they are. Each ends with the right job state and outcome line. Exits 77 (SKIPPED) only when the Slurm
# daemons are not installed.
set -uo pipefail
ZT=${ZEROTRAIN:?ZEROTRAIN must point at the zerotrain binary}
SRC=${ZT_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
MPIEXEC=${ZT_MPIEXEC:-mpirun}
PY=${ZT_PYTHON:-python3}
HERE=$SRC/test/e2e/slurm
SBATCH=$SRC/launch/zerotrain.sbatch
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
ctld_pid="" slurmd_pid="" submitted=()

job_field() { scontrol show job "$1" 2>/dev/null | grep -o "$2=[^ ]*" | head -1 | cut -d= -f2; }
# Processes of this test's cluster: the daemons, slurmstepd and the job inherit SLURM_CONF=$work/slurm.conf.
our_pids() {
  grep -lsaF "SLURM_CONF=$SLURM_CONF" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 | grep -vx "$$" || true
}
cleanup() {
  if [ -n "$ctld_pid" ] && kill -0 "$ctld_pid" 2>/dev/null; then
    for j in "${submitted[@]+"${submitted[@]}"}"; do
      case "$(job_field "$j" JobState)" in
        "" | COMPLETED | CANCELLED | FAILED) ;;
        *) log "cleanup: cancelling job $j"; scancel --signal=KILL "$j" 2>/dev/null; scancel "$j" 2>/dev/null ;;
      esac
    done
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
  for f in "$work"/job-*.out "$work/slurmctld.log" "$work/slurmd.log"; do
    [ -f "$f" ] && { echo "--- tail $f"; tail -30 "$f"; }
  done
  exit 1
}
expect_in() { if grep -qF -- "$2" "$1"; then pass "$3"; else fail "$3: no '$2' in $1"; fi; }
# The last line a job log ends with is the script's outcome.
expect_outcome() {
  local last
  last=$(tail -n 1 "$1" | sed -n 's/^\[zerotrain.sbatch [^]]*\] outcome: //p')
  if [ "$last" = "$2" ]; then pass "$3: outcome: $last"; else fail "$3: the log ends '$(tail -n 1 "$1")', not '$2'"; fi
}

# The runs: 4 ranks, ZeRO-2, checkpoints every 20 steps. Ranks yield when idle: Slurm gives 4 slots on what may be
# a 2-core machine, and spinning ranks would slow every collective (and the save) many times over.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_mpi_yield_when_idle=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
steps=80
common=(--max_steps "$steps" --zero_stage 2 --micro_batch_size 1 --global_batch_size 12 --threads 1 --log_interval 10)
args=("${common[@]}" --save_interval 20)

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
node_idle() { [ "$(sinfo -h -o %t 2>/dev/null)" = idle ]; }
for _ in $(seq 60); do node_idle && break; sleep 0.5; done
node_idle || die "the node did not come up idle: $(sinfo 2>&1)"
log "cluster up: $(sinfo -h -o '%P %a %D %t %N %c' 2>&1)"

export ZT_BIN=$ZT ZT_MPIRUN=$MPIEXEC ZT_LAUNCHER=mpirun
unset ZT_ARGS ZT_LAUNCH_ARGS ZT_OUTPUT_DIR ZT_MAX_RESTARTS ZT_TEST_SAVE_DELAY_MS OMPI_MCA_odls_base_sigkill_timeout
# submit NAME [sbatch options] -- [script arguments]: the job id; its log is $work/job-NAME.out.
submit() {
  local name=$1 opts=() id
  shift
  while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
  shift
  id=$(sbatch --parsable --nodes=1 --cpus-per-task=1 --output="$work/job-$name.out" --chdir="$work" \
    "${opts[@]}" "$SBATCH" "$@") || die "sbatch for $name failed"
  submitted+=("${id%%;*}")
  echo "${id%%;*}"
}
# Waits (at most $3 s) until job $1's state matches the pattern $2; dies naming the state otherwise.
wait_state() {
  local state
  for _ in $(seq $(($3 * 4))); do
    state=$(job_field "$1" JobState)
    [[ "$state" =~ ^($2)$ ]] && return 0
    sleep 0.25
  done
  die "job $1 is ${state:-gone}, waited $3 s for $2 (Restarts=$(job_field "$1" Restarts))"
}
ended='COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|PREEMPTED|BOOT_FAIL|DEADLINE'
# Waits until OUT/metrics.jsonl has N rows, while job $1 runs.
wait_rows() {
  local n=0
  for _ in $(seq 480); do
    n=$(cat "$2/metrics.jsonl" 2>/dev/null | wc -l)
    [ "$n" -ge "$3" ] && return 0
    case "$(job_field "$1" JobState)" in PENDING | CONFIGURING | RUNNING) ;; *) die "job $1 ended at step $n" ;; esac
    sleep 0.25
  done
  die "job $1 logged $n steps in 120 s"
}
# A requeued job is held back about two minutes; release it, but not at once: slurmd refuses a credential created in
# the same second as the old run's revocation ("Job credential revoked" fails the job), which is what the delay
# guards against. Wait for the node to be idle again and for the clock to move on.
release() {
  wait_state "$1" PENDING 120
  [ "$(job_field "$1" Restarts)" = "$2" ] || die "job $1 is PENDING with Restarts=$(job_field "$1" Restarts), want $2"
  for _ in $(seq 60); do node_idle && break; sleep 0.5; done
  sleep 2
  scontrol update JobId="$1" StartTime=now || die "scontrol update StartTime=now failed"
}
same_as_reference() {
  if "$PY" "$HERE/same_final_state.py" "$work/ref" "$1" "$steps"; then
    pass "$2 is bitwise identical to the uninterrupted one"
  else
    fail "$2: final state differs from the uninterrupted run"
  fi
}
# The step a preempted run stopped and resumed at: the resume line of the requeued run in log $1.
resumed_step() {
  grep -o "resumed from $2/checkpoint-[0-9]*: step [0-9]*, world size 4 then 4 now" "$1" |
    sed -n 's/.*: step \([0-9]*\),.*/\1/p' | head -n 1
}

# (A) SIGUSR1 to the batch shell: forwarded, saved, exit 75, requeued by the script, resumed, finished.
out=$work/out-a
jid=$(submit a --ntasks-per-node=4 -- "${args[@]}" --output_dir "$out")
log "(A) submitted job $jid"
wait_rows "$jid" "$out" 5
log "(A) job $jid at step $(wc -l <"$out/metrics.jsonl"): scancel --signal=USR1 --batch $jid"
scancel --signal=USR1 --batch "$jid" || die "scancel failed"
release "$jid" 1
wait_state "$jid" "$ended" 240
j=$work/job-a.out
[ "$(job_field "$jid" JobState) $(job_field "$jid" ExitCode)" = "COMPLETED 0:0" ] &&
  pass "(A) job $jid completed with exit code 0:0" || fail "(A) job $jid: $(job_field "$jid" JobState)"
grep -q "SLURM_RESTART_COUNT=0" "$j" && grep -q "SLURM_RESTART_COUNT=1" "$j" \
  && pass "(A) first run logged SLURM_RESTART_COUNT=0, the requeued run SLURM_RESTART_COUNT=1" \
  || fail "(A) SLURM_RESTART_COUNT=0 and =1 not both logged"
expect_in "$j" "caught SIGUSR1" "(A) the batch script caught SIGUSR1"
stop=$(resumed_step "$j" "$out")
if [ -n "$stop" ] && [ "$stop" -lt "$steps" ]; then pass "(A) resumed at step $stop"; else fail "(A) no resume line"; fi
expect_in "$j" "outcome: stopped by SIGUSR1 at step $stop: checkpoint-$stop saved; requeued job $jid" "(A) first run"
expect_outcome "$j" "finished: step $steps of $steps, checkpoint-$steps saved" "(A)"
same_as_reference "$out" "(A) preempted + requeued run"

# (B) scontrol requeue: Slurm SIGTERMs every process (mpirun and ranks) and SIGKILLs after KillWait (30 s). Each save
# sleeps 3 s first (ZT_TEST_SAVE_DELAY_MS, test only), longer than mpirun's default 1 s + 1 s before SIGKILL.
out=$work/out-b
jid=$(submit b --ntasks-per-node=4 --export=ALL,ZT_TEST_SAVE_DELAY_MS=3000 -- "${common[@]}" --save_interval 40 \
  --output_dir "$out")
log "(B) submitted job $jid"
wait_rows "$jid" "$out" 5
log "(B) job $jid at step $(wc -l <"$out/metrics.jsonl"): scontrol requeue $jid"
scontrol requeue "$jid" || die "scontrol requeue failed"
release "$jid" 1
wait_state "$jid" "$ended" 240
j=$work/job-b.out
[ "$(job_field "$jid" JobState)" = COMPLETED ] && pass "(B) job $jid completed after the requeue" \
  || fail "(B) job $jid: $(job_field "$jid" JobState) $(job_field "$jid" ExitCode)"
expect_in "$j" "caught SIGTERM" "(B) the batch script caught SIGTERM"
stop=$(resumed_step "$j" "$out")
if [ -n "$stop" ] && [ "$stop" -ge 5 ] && [ "$stop" -lt "$steps" ]; then pass "(B) resumed at step $stop"
else fail "(B) no resume line after the SIGTERM save (it would resume at 0 or 40 if the save was killed)"; fi
expect_in "$j" "outcome: stopped by SIGTERM at step $stop: checkpoint-$stop saved" "(B) first run"
expect_outcome "$j" "finished: step $steps of $steps, checkpoint-$steps saved" "(B)"
same_as_reference "$out" "(B) SIGTERM-requeued run"

# (C) a job array of 2 tasks, 2 ranks each, side by side: one run directory and one log per task.
aid=$(submit 'c-%a' --array=0-1 --ntasks-per-node=2 -- --max_steps 6 --threads 1)
log "(C) submitted array job $aid"
for t in 0 1; do
  wait_state "${aid}_$t" "$ended" 120
  expect_outcome "$work/job-c-$t.out" "finished: step 6 of 6" "(C) task $t"
  [ "$(job_field "${aid}_$t" JobState)" = COMPLETED ] && [ -f "$work/output/slurm-${aid}_$t/metrics.jsonl" ] &&
    pass "(C) task $t COMPLETED in output/slurm-${aid}_$t" || fail "(C) task $t: $(job_field "${aid}_$t" JobState)"
done

# (D) SIGUSR1 as soon as the job runs, while mpirun is still starting (a launcher that waits 3 s first): held by the
# script, delivered once the ranks are up; they save at their first step boundary; requeued; finished. The script
# knows the ranks are up from the first metrics row and looks every 0.5 s: 400 steps (~5 s) outlast that, where 40
# tiny steps were sometimes over before the signal was forwarded.
printf '#!/bin/sh\nsleep 3\nexec "%s" "$@"\n' "$MPIEXEC" >"$work/slow-mpirun" && chmod +x "$work/slow-mpirun"
out=$work/out-d
jid=$(submit d --ntasks-per-node=2 --export=ALL,ZT_MPIRUN="$work/slow-mpirun" -- --max_steps 400 --threads 1 \
  --output_dir "$out")
log "(D) submitted job $jid"
for _ in $(seq 240); do grep -qs "running:" "$work/job-d.out" && break; sleep 0.25; done
scancel --signal=USR1 --batch "$jid" || die "scancel failed"
release "$jid" 1
wait_state "$jid" "$ended" 240
j=$work/job-d.out
expect_in "$j" "holding the signal until they are" "(D) the early signal was held"
stop=$(grep -o "outcome: stopped by SIGUSR1 at step [0-9]*: checkpoint-[0-9]* saved; requeued" "$j" |
  grep -o 'step [0-9]*')
[ -n "$stop" ] && pass "(D) the first run stopped at $stop with a checkpoint and was requeued" \
  || fail "(D) the early signal was lost"
expect_outcome "$j" "finished: step 400 of 400 (newest checkpoint: checkpoint-${stop#step })" "(D)"
[ "$(job_field "$jid" JobState)" = COMPLETED ] && [ "$(job_field "$jid" Restarts)" = 1 ] &&
  pass "(D) job $jid COMPLETED after 1 restart" || fail "(D) job $jid: $(job_field "$jid" JobState)"

[ $fails = 0 ] || for f in "$work"/job-*.out; do echo "--- $f"; cat "$f"; done
log "done, $fails failure(s)"
[ $fails = 0 ]
