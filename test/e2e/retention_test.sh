#!/usr/bin/env bash
# Retention (--save_total_limit): what stays on disk. (A) saves every 2 steps over 10 steps with a limit of 2 keep
# exactly checkpoint-8 and checkpoint-10 and `latest` names checkpoint-10, synchronously and with --async_save.
# (B) resuming from an older checkpoint by path, in a directory that still holds later ones, commits the new
# checkpoint-6 and points `latest` at it; `--resume_from_checkpoint latest` then continues from 6 (the most recent
# commit), not from the passed-over 10, and retention keeps the newest 2 by commit order: its own 8 and 6, not the
# abandoned run's 10 (issue 15, item 3). (C) rank 0 SIGKILLed while pruning: the victim has only a dot-name, the
# committed checkpoint verifies, `latest` resumes it and the next prune finishes the leftover.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
zt_test_setup retention
# zt LOG ARGS...: zerotrain train on 2 ranks (tiny preset, 1 thread), output to LOG; returns its exit status.
zt() {
  local log=$1; shift
  timeout 120 "$MPIEXEC" -np 2 --oversubscribe --bind-to none "$ZT" train --threads 1 --log_interval 100 \
    --micro_batch_size 2 --global_batch_size 8 --max_steps 10 --seed 11 --zero_stage 1 "$@" >"$log" 2>&1
}
for mode in sync async; do
  echo "(A) --save_total_limit 2, --save_interval 2, 10 steps, $mode save"
  out=$work/a_$mode
  flags=(); [ $mode = async ] && flags=(--async_save)
  zt "$work/a_$mode.log" --output_dir "$out" --save_interval 2 --save_total_limit 2 "${flags[@]}"
  expect "$?" 0 "exit status"
  expect "$(steps_in "$out")" "8 10" "committed checkpoints left"
  expect "$(cat "$out/latest" 2>/dev/null)" "checkpoint-10" "latest"
  expect "$(grep -c 'removed old checkpoint' "$work/a_$mode.log")" 3 "removals logged (2, 4, 6)"
  expect "$(leftovers "$out")" "" "no temporary or moved-aside directories"
  verify "$out/checkpoint-8"
  verify "$out/checkpoint-10"
done

echo "(B) a run that went back to an older checkpoint: retention and \`latest\` follow the commit order"
out=$work/b
zt "$work/b1.log" --output_dir "$out" --save_interval 2 --save_total_limit 0
expect "$?" 0 "first run (no limit) exit status"
expect "$(steps_in "$out")" "2 4 6 8 10" "first run keeps every checkpoint"
ref8=$(xxh_map "$out/checkpoint-8")
ref10=$(xxh_map "$out/checkpoint-10")
old6=$(stat -c %Y.%i "$out/checkpoint-6/manifest.json")
zt "$work/b2.log" --output_dir "$out/" --save_interval 2 --resume_from_checkpoint "$out/checkpoint-4" --exit_after_steps 2
expect "$?" 0 "resumed run (2 steps from checkpoint-4, no limit) exit status"
grep -q "resumed from $out/checkpoint-4: step 4" "$work/b2.log" && pass "resumed from checkpoint-4" ||
  fail "no 'resumed from .../checkpoint-4: step 4' in the log"
expect "$(cat "$out/latest" 2>/dev/null)" "checkpoint-6" "latest names the checkpoint this run committed"
[ "$(stat -c %Y.%i "$out/checkpoint-6/manifest.json" 2>/dev/null)" != "$old6" ] &&
  pass "checkpoint-6 was re-saved by the resumed run" || fail "checkpoint-6 is still the first run's"
# Resuming from `latest` takes the most recent commit (6), not the highest step (10, from the run we went back
# past), whatever the `latest` file says (set here to checkpoint-8, as if it lagged). With a limit of 2 the newest 2
# by commit are then its own 8 and 6: the abandoned run's 10 goes (by step, 8 and 10 would stay and 6 would go).
echo checkpoint-8 >"$out/latest"
zt "$work/b3.log" --output_dir "$out" --save_interval 2 --save_total_limit 2 --resume_from_checkpoint latest \
  --exit_after_steps 2
expect "$?" 0 "continued run (latest = checkpoint-6, 2 steps, limit 2) exit status"
grep -q "resumed from $out/checkpoint-6: step 6" "$work/b3.log" && pass "latest resumed the most recent commit, checkpoint-6" ||
  fail "latest did not resume checkpoint-6: $(grep -i 'resumed from' "$work/b3.log")"
for s in 8 10; do
  grep -q "note: $out/checkpoint-$s has a later step than $out/checkpoint-6 but was committed before it" "$work/b3.log" &&
    pass "note names the passed-over checkpoint-$s" || fail "no note about checkpoint-$s"
done
expect "$(steps_in "$out")" "6 8" "kept: the newest 2 by commit order (this run's 8, then 6)"
expect "$(leftovers "$out")" "" "no temporary, moved-aside or half-pruned directories"
expect "$(grep -c 'removed old checkpoint' "$work/b3.log")" 3 "removals logged (10, 4, 2)"
zt "$work/b4.log" --output_dir "$out" --save_interval 2 --save_total_limit 2 --resume_from_checkpoint latest
expect "$?" 0 "last run (latest = checkpoint-8 to step 10) exit status"
grep -q "resumed from $out/checkpoint-8: step 8" "$work/b4.log" && pass "latest resumed checkpoint-8" ||
  fail "latest did not resume checkpoint-8: $(grep -i 'resumed from' "$work/b4.log")"
expect "$(steps_in "$out")" "8 10" "exactly the newest 2"
expect "$(cat "$out/latest" 2>/dev/null)" "checkpoint-10" "latest"
[ "$(xxh_map "$out/checkpoint-8")" = "$ref8" ] && pass "re-saved checkpoint-8 bitwise equal to the first run's" ||
  fail "re-saved checkpoint-8 differs from the first run's"
[ "$(xxh_map "$out/checkpoint-10")" = "$ref10" ] && pass "re-saved checkpoint-10 bitwise equal to the first run's" ||
  fail "re-saved checkpoint-10 differs from the first run's"
verify "$out/checkpoint-10"

echo "(C) SIGKILL of rank 0 in the middle of pruning (the pruned checkpoint renamed aside, not yet deleted)"
out=$work/c
ZT_TEST_KILL_AT=prune:0:0 zt "$work/c1.log" --output_dir "$out" --save_interval 2 --save_total_limit 1
rc=$?
[ "$rc" != 0 ] && grep -q "killing rank 0 at prune:0:0" "$work/c1.log" && pass "killed while pruning checkpoint-2 (exit $rc)" ||
  fail "not killed while pruning (exit $rc): $(tail -3 "$work/c1.log")"
expect "$(steps_in "$out")" "4" "committed: checkpoint-4 only (checkpoint-2's name is gone)"
expect "$(leftovers "$out")" ".checkpoint-2.pruning " "the half-pruned checkpoint has a dot-name"
for s in $(steps_in "$out"); do verify "$out/checkpoint-$s"; done
zt "$work/c2.log" --output_dir "$out" --save_interval 2 --save_total_limit 1 \
  --resume_from_checkpoint latest
expect "$?" 0 "resume after the kill exit status"
grep -q "resumed from $out/checkpoint-4: step 4" "$work/c2.log" && pass "latest resumed checkpoint-4" ||
  fail "latest did not resume checkpoint-4: $(grep -i 'resumed from\|skipping' "$work/c2.log")"
# The restart's clean-up (with the directory's lock held) finishes the prune before anything else.
has "$work/c2.log" "leftover in $out: removed $out/.checkpoint-2.pruning"
has "$work/c2.log" "the rest of a prune that was interrupted"
expect "$(steps_in "$out")" "10" "the limit of 1 holds"
expect "$(leftovers "$out")" "" "no leftovers"
zt_test_finish
