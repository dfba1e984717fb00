#!/usr/bin/env bash
# The launch scripts without a cluster (issue 15): launch/zerotrain.sbatch run by bash with the SLURM_* variables a job
# would have, and launch/zerotrain-mpirun.sh. A SIGTERM to the whole process tree (what Slurm and other schedulers do)
# during a save that outlasts mpirun's default SIGTERM-to-SIGKILL delay, a signal before the ranks are up, a launcher
# that exits 0 without training, the restart bound, the default global batch on 4 ranks, one run directory per job,
# a failing rank.
# A slow save comes from ZT_TEST_SAVE_DELAY_MS (every save sleeps that long before its commit, as a big model's write
# would): deterministic on any disk, where a real model that takes seconds to write would cost CI memory and time.
. "$(dirname "$0")/lib.sh"
zt_test_setup launch_scripts
SRC=${ZT_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
SBATCH=$SRC/launch/zerotrain.sbatch
export ZT_BIN=$ZT ZT_MPIRUN=$MPIEXEC OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
unset ZT_ARGS ZT_OUTPUT_DIR ZT_LAUNCH_ARGS ZT_MAX_RESTARTS OMPI_MCA_odls_base_sigkill_timeout
for v in $(compgen -e | grep '^SLURM_'); do unset "$v"; done
cd "$work" || exit 1
tiny=(--threads 1 --log_interval 1000)

# Sends SIG to PID and every descendant at once, as Slurm signals every process of a job.
kill_tree() {
  local sig=$1 pids=() todo=("$2") p
  while [ ${#todo[@]} -gt 0 ]; do
    p=${todo[0]} todo=("${todo[@]:1}") pids+=("$p")
    for c in $(pgrep -P "$p"); do todo+=("$c"); done
  done
  kill -"$sig" "${pids[@]}" 2>/dev/null
}
# Waits until OUT/metrics.jsonl has N rows (training is under way), at most 60 s.
wait_rows() {
  for _ in $(seq 300); do
    [ "$(cat "$1/metrics.jsonl" 2>/dev/null | wc -l)" -ge "$2" ] && return 0
    sleep 0.2
  done
  return 1
}
outcome_of() { grep 'outcome:' "$1" | tail -n 1 | sed 's/.*outcome: //'; }
# The last line of the job log is the outcome.
last_is_outcome() {
  if tail -n 1 "$1" | grep -q 'outcome: '; then pass "the log ends with the outcome"
  else fail "the log does not end with an outcome line: $(tail -n 2 "$1")"; fi
}

echo "(1) defaults on 4 ranks, the run directory per job and per array task"
SLURM_JOB_ID=4242 SLURM_NTASKS=4 bash "$SBATCH" --max_steps 3 "${tiny[@]}" >"$work/job.log" 2>&1
expect "$?" 0 "template with the default global batch on 4 ranks"
expect "$(outcome_of "$work/job.log")" "finished: step 3 of 3" "outcome line"
[ -f "$work/output/slurm-4242/metrics.jsonl" ] && pass "run directory output/slurm-4242" \
  || fail "no output/slurm-4242/metrics.jsonl: $(ls "$work/output" 2>&1)"
SLURM_JOB_ID=4244 SLURM_ARRAY_JOB_ID=4243 SLURM_ARRAY_TASK_ID=1 SLURM_NTASKS=2 \
  bash "$SBATCH" --max_steps 2 "${tiny[@]}" >"$work/array.log" 2>&1
expect "$?" 0 "array task"
[ -f "$work/output/slurm-4243_1/metrics.jsonl" ] && pass "array task directory output/slurm-4243_1" \
  || fail "no output/slurm-4243_1/metrics.jsonl: $(ls "$work/output" 2>&1)"
printf 'output_dir = "%s/from-config"\nmax_steps = 2\n' "$work" >"$work/run.toml"
ZT_MPIRUN=true bash "$SBATCH" --config "$work/run.toml" >"$work/config.log" 2>&1
has "$work/config.log" "output directory $work/from-config"

echo "(2) a launcher that exits 0 without training; the restart bound"
SLURM_JOB_ID=4245 SLURM_RESTART_COUNT=2 ZT_MPIRUN=true bash "$SBATCH" --max_restarts 2 --max_steps 5 \
  >"$work/lie.log" 2>&1
expect "$?" 1 "status when training did not reach --max_steps"
has "$work/lie.log" "zerotrain exited 0 before step 5"
has "$work/lie.log" "not requeued: the job was restarted 2 time(s) already (--max_restarts 2)"
last_is_outcome "$work/lie.log"

echo "(3) SIGUSR1 before the ranks are up (a launcher that takes 2 s to start them)"
printf '#!/bin/sh\nsleep 2\nexec "%s" "$@"\n' "$MPIEXEC" >"$work/slow-mpirun" && chmod +x "$work/slow-mpirun"
ZT_MPIRUN=$work/slow-mpirun SLURM_NTASKS=2 ZT_OUTPUT_DIR=$work/early bash "$SBATCH" --max_steps 500 "${tiny[@]}" \
  >"$work/early.log" 2>&1 &
job=$!
for _ in $(seq 100); do grep -q "running:" "$work/early.log" 2>/dev/null && break; sleep 0.05; done
kill -USR1 "$job"
wait "$job"
expect "$?" 75 "status after the early signal"
has "$work/early.log" "holding the signal until they are"
stop=$(outcome_of "$work/early.log" | sed -n 's/^stopped by SIGUSR1 at step \([0-9]*\): checkpoint-\1 saved.*/\1/p')
if [ -n "$stop" ] && [ "$stop" -lt 500 ]; then pass "stopped at step $stop with checkpoint-$stop"
else fail "the early signal was lost: $(outcome_of "$work/early.log")"; fi
[ -z "$stop" ] || verify "$work/early/checkpoint-$stop"
last_is_outcome "$work/early.log"

echo "(3b) a launcher that reaps its ranks before its teardown, then sleeps it out (mpirun does, now and then)"
# mpirun reaps ranks on another thread; one it has reaped but not yet marked dead when it starts the teardown (after a
# rank's exit 75) is still signalled, with the sleeps of odls_base_sigkill_timeout (300 s here) between: no rank left,
# no zombie to read a status from, mpirun asleep. This stand-in does just that, for one rank.
cat >"$work/reaping-mpirun" <<'PY'
#!/usr/bin/env python3
import signal, subprocess, sys, time
argv = sys.argv[1:]
rank = None
signal.signal(signal.SIGUSR1, lambda *_: rank and rank.send_signal(signal.SIGUSR1))
rank = subprocess.Popen(argv[argv.index("--mca") + 3:])
status = rank.wait()
time.sleep(300)
sys.exit(status)
PY
chmod +x "$work/reaping-mpirun"
t=$SECONDS
ZT_MPIRUN=$work/reaping-mpirun SLURM_NTASKS=1 ZT_OUTPUT_DIR=$work/reaped timeout -k 5 120 bash "$SBATCH" \
  --max_steps 5000 "${tiny[@]}" >"$work/reaped.log" 2>&1 &
job=$!
wait_rows "$work/reaped" 2 || fail "no training within 60 s"
kill -USR1 "$(pgrep -P "$job")"  # the script, under timeout
wait "$job"
expect "$?" 75 "status after the signal, read from the run directory"
has "$work/reaped.log" "mpirun, which reaped them, was still sleeping out its teardown: stopped it (status 75"
stop=$(outcome_of "$work/reaped.log" | sed -n 's/^stopped by SIGUSR1 at step \([0-9]*\): checkpoint-\1 saved.*/\1/p')
[ -n "$stop" ] && pass "stopped at step $stop with checkpoint-$stop" || fail "outcome: $(outcome_of "$work/reaped.log")"
[ $((SECONDS - t)) -lt 60 ] && pass "the job ended in $((SECONDS - t)) s" || fail "it took $((SECONDS - t)) s"

echo "(4) SIGTERM to the whole job during a 4 s save (mpirun's default kills the ranks 2 s after its SIGTERM)"
ZT_TEST_SAVE_DELAY_MS=4000 SLURM_NTASKS=2 ZT_OUTPUT_DIR=$work/term bash "$SBATCH" --max_steps 5000 "${tiny[@]}" \
  >"$work/term.log" 2>&1 &
job=$!
wait_rows "$work/term" 3 || fail "no training within 60 s"
kill_tree TERM "$job"
wait "$job"
echo "  status $?: $(outcome_of "$work/term.log")"
stop=$(outcome_of "$work/term.log" | sed -n 's/^stopped by SIGTERM at step \([0-9]*\): checkpoint-\1 saved.*/\1/p')
[ -n "$stop" ] && pass "the ranks saved checkpoint-$stop" || fail "no save after SIGTERM: $(tail -n 3 "$work/term.log")"
[ -z "$stop" ] || verify "$work/term/checkpoint-$stop"
expect "$(leftovers "$work/term")" "" "no temporary left"
last_is_outcome "$work/term.log"

echo "(5) a rank fails: the template stops the others at once, not after mpirun's 2 x 300 s teardown"
t=$SECONDS
ZT_TEST_FAIL_RANK=1 ZT_TEST_FAIL_STEP=2 SLURM_NTASKS=2 ZT_OUTPUT_DIR=$work/fail timeout -k 5 120 bash "$SBATCH" \
  --max_steps 50 "${tiny[@]}" >"$work/fail.log" 2>&1
expect "$?" 2 "status of a failed rank"
has "$work/fail.log" "injected failure (ZT_TEST_FAIL_RANK=1) at step 2"
has "$work/fail.log" "outcome: zerotrain failed with status 2"
[ $((SECONDS - t)) -lt 60 ] && pass "the failed job ended in $((SECONDS - t)) s" || fail "it took $((SECONDS - t)) s"

echo "(6) the same SIGTERM through zerotrain-mpirun.sh (its default --kill-timeout)"
ZT_TEST_SAVE_DELAY_MS=4000 MPIRUN=$MPIEXEC "$SRC/launch/zerotrain-mpirun.sh" --np 2 -x ZT_TEST_SAVE_DELAY_MS -- train \
  --max_steps 5000 "${tiny[@]}" --output_dir "$work/wrap" >"$work/wrap.log" 2>&1 &
job=$!
wait_rows "$work/wrap" 3 || fail "no training within 60 s"
kill_tree TERM "$job"
wait "$job"
saved=$(steps_in "$work/wrap")
[ -n "$saved" ] && pass "the ranks saved checkpoint-$saved" \
  || fail "no checkpoint after SIGTERM: $(tail -n 5 "$work/wrap.log")"
[ -z "$saved" ] || verify "$work/wrap/checkpoint-$saved"
expect "$(leftovers "$work/wrap")" "" "no temporary left"
zt_test_finish
