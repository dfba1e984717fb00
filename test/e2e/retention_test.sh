#!/usr/bin/env bash
# Retention (--save_total_limit): what stays on disk. (A) saves every 2 steps over 10 steps with a limit of 2 keep
# exactly checkpoint-8 and checkpoint-10 and `latest` names checkpoint-10, synchronously and with --async_save.
# (B) resuming from an older checkpoint by path, in a directory that still holds later ones, commits the new
# checkpoint-6 and points `latest` at it; retention keeps the newest 2 by step (8, 10) *and* checkpoint-6 although
# it is beyond the limit, because `latest` names it. `--resume_from_checkpoint latest` then continues from 6 (the
# most recent commit), not from the passed-over 10; it re-saves 8 and 10 (bitwise equal to the first run's) and
# leaves exactly those two.
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

echo "(B) resume from an older checkpoint by path while later ones exist"
out=$work/b
zt "$work/b1.log" --output_dir "$out" --save_interval 2 --save_total_limit 0
expect "$?" 0 "first run (no limit) exit status"
expect "$(steps_in "$out")" "2 4 6 8 10" "first run keeps every checkpoint"
ref8=$(xxh_map "$out/checkpoint-8")
ref10=$(xxh_map "$out/checkpoint-10")
old6=$(stat -c %Y.%i "$out/checkpoint-6/manifest.json")
# (A trailing slash on --output_dir: the `latest` protection compares paths.)
zt "$work/b2.log" --output_dir "$out/" --save_interval 2 --save_total_limit 2 \
  --resume_from_checkpoint "$out/checkpoint-4" --exit_after_steps 2
expect "$?" 0 "resumed run (2 steps from checkpoint-4) exit status"
grep -q "resumed from $out/checkpoint-4: step 4" "$work/b2.log" && pass "resumed from checkpoint-4" ||
  fail "no 'resumed from .../checkpoint-4: step 4' in the log"
expect "$(cat "$out/latest" 2>/dev/null)" "checkpoint-6" "latest names the checkpoint this run committed"
[ "$(stat -c %Y.%i "$out/checkpoint-6/manifest.json" 2>/dev/null)" != "$old6" ] &&
  pass "checkpoint-6 was re-saved by the resumed run" || fail "checkpoint-6 is still the first run's"
# Newest two by step are 8 and 10; 6 stays although it is beyond the limit, because `latest` names it; 2 and 4
# (the one we resumed from) go.
expect "$(steps_in "$out")" "6 8 10" "kept: newest 2 by step plus the one latest names"
expect "$(leftovers "$out")" "" "no temporary or moved-aside directories"
verify "$out/checkpoint-6"
# Resuming from `latest` takes the most recent commit (6), not the highest step (10, from the run we went back
# past), whatever the `latest` file says (set here to checkpoint-8, as if it lagged).
echo checkpoint-8 >"$out/latest"
zt "$work/b3.log" --output_dir "$out" --save_interval 2 --save_total_limit 2 --resume_from_checkpoint latest
expect "$?" 0 "continued run (latest = checkpoint-6 to step 10) exit status"
grep -q "resumed from $out/checkpoint-6: step 6" "$work/b3.log" && pass "latest resumed the most recent commit, checkpoint-6" ||
  fail "latest did not resume checkpoint-6: $(grep -i 'resumed from' "$work/b3.log")"
for s in 8 10; do
  grep -q "note: $out/checkpoint-$s has a later step than $out/checkpoint-6 but was committed before it" "$work/b3.log" &&
    pass "note names the passed-over checkpoint-$s" || fail "no note about checkpoint-$s"
done
expect "$(steps_in "$out")" "8 10" "once the run passes the old ones: exactly the newest 2"
expect "$(cat "$out/latest" 2>/dev/null)" "checkpoint-10" "latest"
[ "$(xxh_map "$out/checkpoint-8")" = "$ref8" ] && pass "re-saved checkpoint-8 bitwise equal to the first run's" ||
  fail "re-saved checkpoint-8 differs from the first run's"
[ "$(xxh_map "$out/checkpoint-10")" = "$ref10" ] && pass "re-saved checkpoint-10 bitwise equal to the first run's" ||
  fail "re-saved checkpoint-10 differs from the first run's"
verify "$out/checkpoint-10"
zt_test_finish
