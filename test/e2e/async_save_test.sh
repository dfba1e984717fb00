#!/usr/bin/env bash
# --async_save: (1) every checkpoint (steps 3, 6, 9, 10) and every loss bitwise equal to synchronous saves, on 2 ranks
# ZeRO-0 and 3 ranks ZeRO-3 (uneven shards), and a stop + `--resume_from_checkpoint latest` with async saves ends
# equal too; (2) a background write that really fails is reported and leaves nothing committed-but-broken: on a
# small tmpfs, (a) checkpoint-4's disk-full pre-check refuses in the background thread (all ranks agree: status 74),
# (b) with the pre-check fooled (ZT_TEST_FREE_BYTES_OVERRIDE) its HDF5 write hits ENOSPC on the tmpfs (the job is
# aborted with 74). Each time: a message naming the failure, every committed checkpoint passes `ckpt verify`,
# `latest` names a committed one, no temporary directory is left, and no later checkpoint was committed.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
zt_test_setup async_save --mount
zt() {  # zt NP LOG ARGS...: zerotrain train; returns its exit status
  local np=$1 log=$2; shift 2
  timeout 120 "$MPIEXEC" -np "$np" --oversubscribe --bind-to none "$ZT" train --threads 1 --log_interval 100 \
    --micro_batch_size 2 --max_steps 10 --seed 21 "$@" >"$log" 2>&1
}
losses() { "$PY" -c 'import json,sys; print([(r["step"], r["loss"]) for r in map(json.loads, open(sys.argv[1]+"/metrics.jsonl"))])' "$1" 2>&1; }

echo "(1) async saves are bitwise identical to synchronous ones"
for shape in "2 0 8" "3 3 6"; do
  read -r np stage gbs <<<"$shape"
  tag="n${np}_s${stage}"
  common=(--zero_stage "$stage" --global_batch_size "$gbs" --save_interval 3)
  zt "$np" "$work/sync_$tag.log" --output_dir "$work/sync_$tag" "${common[@]}"
  expect "$?" 0 "$np ranks ZeRO-$stage, sync: exit status"
  zt "$np" "$work/async_$tag.log" --output_dir "$work/async_$tag" "${common[@]}" --async_save
  expect "$?" 0 "$np ranks ZeRO-$stage, async: exit status"
  expect "$(grep -c 'step blocked .* for the host copy (copy .*); writing in the background' "$work/async_$tag.log")" 4 \
    "async: 4 saves went to the background"
  expect "$(grep -c '(background write finished)' "$work/async_$tag.log")" 4 "async: 4 background writes finished"
  expect "$(steps_in "$work/async_$tag")" "3 6 9 10" "async: committed checkpoints"
  for s in 3 6 9 10; do
    a=$(xxh_map "$work/sync_$tag/checkpoint-$s") b=$(xxh_map "$work/async_$tag/checkpoint-$s")
    [ -n "$a" ] && [ "$a" = "$b" ] && pass "checkpoint-$s: xxh64 of all datasets equal (sync vs async)" ||
      fail "checkpoint-$s differs between sync and async: ${b:0:160}"
  done
  [ "$(losses "$work/sync_$tag")" = "$(losses "$work/async_$tag")" ] && pass "all losses equal (sync vs async)" ||
    fail "losses differ between sync and async"
  verify "$work/async_$tag/checkpoint-10"
done
# The copy runs on the writer thread while the next step computes; a copy slowed down by 400 ms must hold back that
# step's optimizer update (never let it change the shard mid-copy): same bits, and the stall shows the wait.
ZT_TEST_ASYNC_COPY_DELAY_MS=400 zt 2 "$work/slow.log" --output_dir "$work/slow" --zero_stage 0 --global_batch_size 8 \
  --save_interval 3 --async_save
expect "$?" 0 "slow copy: exit status"
for s in 3 6 9 10; do
  [ "$(xxh_map "$work/slow/checkpoint-$s")" = "$(xxh_map "$work/sync_n2_s0/checkpoint-$s")" ] &&
    pass "slow copy: checkpoint-$s equal to the synchronous save" || fail "slow copy: checkpoint-$s differs"
done
min_stall=$(sed -n 's/^checkpoint-[0-9]*: step blocked \([0-9.]*\)s for the host copy.*/\1/p' "$work/slow.log" | sort -g | head -1)
awk -v s="${min_stall:-0}" 'BEGIN { exit !(s >= 0.3) }' && pass "slow copy: every stall >= 0.3 s (min $min_stall s)" ||
  fail "slow copy: a stall of '${min_stall}' s is shorter than the 400 ms copy delay allows"

# Stop after 4 steps and resume, both with async saves: ends where the synchronous run ends.
zt 3 "$work/stop.log" --output_dir "$work/stop" --zero_stage 3 --global_batch_size 6 --save_interval 3 --async_save \
  --exit_after_steps 4
expect "$?" 0 "async, --exit_after_steps 4: exit status"
zt 3 "$work/resume.log" --output_dir "$work/stop" --zero_stage 3 --global_batch_size 6 --save_interval 3 --async_save \
  --resume_from_checkpoint latest
expect "$?" 0 "async resume: exit status"
grep -q "resumed from $work/stop/checkpoint-4: step 4" "$work/resume.log" && pass "resumed from checkpoint-4" ||
  fail "did not resume from checkpoint-4"
[ "$(xxh_map "$work/stop/checkpoint-10")" = "$(xxh_map "$work/sync_n3_s3/checkpoint-10")" ] &&
  [ "$(losses "$work/stop")" = "$(losses "$work/sync_n3_s3")" ] &&
  pass "stopped + resumed async run: final checkpoint and losses equal the uninterrupted sync run's" ||
  fail "stopped + resumed async run differs from the uninterrupted sync run"

# (2) Failures in the background write, on a tmpfs sized from a real checkpoint.
ck=$(du -sb "$work/sync_n2_s0/checkpoint-3" | cut -f1)
page=4096
after_failure() {  # after_failure LOG: checkpoint-2 saved, checkpoint-4 failed in the background
  local out=$mnt/o log=$1
  expect "$(steps_in "$out")" "2" "committed: checkpoint-2 only (nothing after the failed one)"
  expect "$(cat "$out/latest" 2>/dev/null)" "checkpoint-2" "latest names a committed checkpoint"
  expect "$(leftovers "$out")" "" "no temporary directory left"
  for d in "$out"/checkpoint-*; do verify "$d"; done
  grep -qF "saved $out/checkpoint-2 (background write finished)" "$log" && pass "checkpoint-2 finished in the background" ||
    fail "checkpoint-2 was not written in the background"
}
size=$(( (ck + 3 * 512 * 1024 + page - 1) / page * page ))
echo "(2a) disk-full pre-check fails in the background thread: tmpfs of $size bytes (checkpoint: $ck bytes)"
mount_tmpfs "$size"
zt 2 "$work/bg_precheck.log" --output_dir "$mnt/o" --zero_stage 1 --global_batch_size 8 --save_interval 2 --async_save
expect "$?" 74 "exit status (save failed)"
has "$work/bg_precheck.log" "disk full: checkpoint-4 needs about"
after_failure "$work/bg_precheck.log"

size=$(( (ck * 3 / 2 + page - 1) / page * page ))
echo "(2b) ENOSPC inside the background HDF5 write: tmpfs of $size bytes, pre-check told 1e15 bytes are free"
mount_tmpfs "$size"
ZT_TEST_FREE_BYTES_OVERRIDE=1000000000000000 zt 2 "$work/bg_write.log" --output_dir "$mnt/o" --zero_stage 1 \
  --global_batch_size 8 --save_interval 2 --async_save
expect "$?" 74 "exit status (save failed)"
has "$work/bg_write.log" "saving checkpoint-4 failed"
has "$work/bg_write.log" "; disk full: only"
has "$work/bg_write.log" "its partial files were removed"
after_failure "$work/bg_write.log"

zt_test_finish
