#!/usr/bin/env bash
# Disk full, on a real small tmpfs as --output_dir (2 ranks, ZeRO-2, a save every 2 steps, none deleted):
#  (1) pre-check: the tmpfs holds checkpoint-2 but not the free space checkpoint-4 asks for; every rank agrees
#      before anything is written;
#  (2) mid-write: ZT_TEST_FREE_BYTES_OVERRIDE makes the pre-check pass, so the write itself hits ENOSPC; the
#      failing rank's error is agreed, so the job reports it once (rank 0), naming the rank and host that hit it.
# Both times: exit status 74, a message naming the problem, checkpoint-2 and `latest` intact (`ckpt verify` OK,
# `latest` still names it), no partial .tmp left; after the tmpfs grows, `--resume_from_checkpoint latest` finishes
# bitwise equal (final checkpoint and losses) to an uninterrupted run on an ordinary disk. Needs root (mount).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
zt_test_setup enospc --mount
zt() {  # zt LOG ARGS...: zerotrain train on 2 ranks; returns its exit status
  local log=$1; shift
  timeout 120 "$MPIEXEC" -np 2 --oversubscribe --bind-to none "$ZT" train --threads 1 --log_interval 100 \
    --micro_batch_size 2 --global_batch_size 8 --max_steps 8 --seed 3 --zero_stage 2 --save_interval 2 \
    --save_total_limit 0 "$@" >"$log" 2>&1
}
# The final checkpoint's {dataset: xxh64} map and every (step, loss) of metrics.jsonl, as one comparable line.
fingerprint() {
  "$PY" -c '
import json, sys
d = sys.argv[1]
m = json.load(open(d + "/checkpoint-8/manifest.json"))
rows = [json.loads(l) for l in open(d + "/metrics.jsonl") if l.strip()]
print(json.dumps([{k: v["xxh64"] for k, v in sorted(m["datasets"].items())}, [(r["step"], r["loss"]) for r in rows]]))
' "$1" 2>&1
}

echo "reference: uninterrupted run on an ordinary disk"
zt "$work/ref.log" --output_dir "$work/ref"
expect "$?" 0 "reference exit status"
ref=$(fingerprint "$work/ref")
ck=$(du -sb "$work/ref/checkpoint-2" | cut -f1)
page=4096
echo "  one checkpoint takes $ck bytes"

check_outcome() {  # check_outcome LOG: after a failed save of checkpoint-4 on the tmpfs
  local out=$mnt/o
  expect "$(steps_in "$out")" "2" "committed checkpoints: only the previous one"
  expect "$(cat "$out/latest" 2>/dev/null)" "checkpoint-2" "latest unchanged"
  expect "$(leftovers "$out")" "" "no partial .tmp left"
  verify "$out/checkpoint-2"
  # Free space again (as an operator would) and continue from what survived.
  mount -o remount,size=64M "$mnt"
  zt "$1.resume" --output_dir "$out" --resume_from_checkpoint latest
  expect "$?" 0 "resume after freeing space: exit status"
  grep -q "resumed from $out/checkpoint-2: step 2" "$1.resume" && pass "resumed from checkpoint-2" ||
    fail "did not resume from checkpoint-2: $(grep -i resum "$1.resume")"
  local got; got=$(fingerprint "$out")
  [ "$got" = "$ref" ] && pass "final checkpoint-8 xxh64 map and losses equal the uninterrupted run's" ||
    fail "resumed run differs from the reference: ${got:0:200}"
}

# (1) Room for checkpoint-2 plus 1.5 MiB: the pre-check (checkpoint size + 1 MiB margin) passes once, then refuses.
size=$(( (ck + 3 * 512 * 1024 + page - 1) / page * page ))
echo "(1) disk-full pre-check: tmpfs of $size bytes"
mount_tmpfs "$size"
zt "$work/precheck.log" --output_dir "$mnt/o"
expect "$?" 74 "exit status (save failed)"
has "$work/precheck.log" "disk full: checkpoint-4 needs about"
has "$work/precheck.log" "earlier checkpoints and \`latest\` are untouched"
grep -qF "saved $mnt/o/checkpoint-2" "$work/precheck.log" && pass "checkpoint-2 was saved first" || fail "checkpoint-2 not saved"
check_outcome "$work/precheck.log"

# (2) Room for 1.5 checkpoints, pre-check told there is plenty: the write of checkpoint-4 runs out of space.
size=$(( (ck * 3 / 2 + page - 1) / page * page ))
echo "(2) ENOSPC in the middle of the write: tmpfs of $size bytes, ZT_TEST_FREE_BYTES_OVERRIDE=1e15"
mount_tmpfs "$size"
ZT_TEST_FREE_BYTES_OVERRIDE=1000000000000000 zt "$work/midwrite.log" --output_dir "$mnt/o"
expect "$?" 74 "exit status (save failed)"
has "$work/midwrite.log" "saving checkpoint-4 failed"
has "$work/midwrite.log" "; disk full: only"
has "$work/midwrite.log" "its partial files were removed"
has "$work/midwrite.log" "No space left on device [rank "
expect "$(grep -c 'saving checkpoint-4 failed' "$work/midwrite.log")" 1 "the failure reported once"
check_outcome "$work/midwrite.log"

zt_test_finish
