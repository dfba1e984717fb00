#!/usr/bin/env bash
# Retention (--save_total_limit): what stays on disk. (A) saves every 2 steps over 10 steps with a limit of 2 keep
# exactly checkpoint-8 and checkpoint-10 and `latest` names checkpoint-10, synchronously and with --async_save.
# (B) resuming from an older checkpoint by path, in a directory that still holds later ones, commits the new
# checkpoint-6 and points `latest` at it; retention keeps the newest 2 by step (8, 10) *and* checkpoint-6 although
# it is beyond the limit, because `latest` names it. Continuing that run re-saves 8 and 10 (bitwise equal to the
# first run's) and leaves exactly those two.
set -uo pipefail
ZT=${ZEROTRAIN:?ZEROTRAIN must point at the zerotrain binary}
MPIEXEC=${ZT_MPIEXEC:-mpirun}
PY=${ZT_PYTHON:-python3}
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
work=$(mktemp -d /tmp/zt_retention.XXXXXX)
fails=0 checks=0
t0=$SECONDS
pass() { checks=$((checks + 1)); echo "  ok: $1"; }
fail() { checks=$((checks + 1)); fails=$((fails + 1)); echo "  FAIL: $1"; }
expect() { if [ "$1" = "$2" ]; then pass "$3 ($1)"; else fail "$3: got '$1', want '$2'"; fi; }
# zt LOG ARGS...: zerotrain train on 2 ranks (tiny preset, 1 thread), output to LOG; returns its exit status.
zt() {
  local log=$1; shift
  timeout 120 "$MPIEXEC" -np 2 --oversubscribe --bind-to none "$ZT" train --threads 1 --log_interval 100 \
    --micro_batch_size 2 --global_batch_size 8 --max_steps 10 --seed 11 --zero_stage 1 "$@" >"$log" 2>&1
}
# Committed checkpoints in DIR, as "2 4 6" (ascending step).
steps_in() { ls -1 "$1" | sed -n 's/^checkpoint-\([0-9]*\)$/\1/p' | sort -n | tr '\n' ' ' | sed 's/ $//'; }
leftovers() { find "$1" -mindepth 1 -maxdepth 1 \( -name '.checkpoint-*' -o -name '.latest.tmp' \) -printf '%f '; }
xxh_map() {  # the manifest's {dataset: xxh64} map, sorted
  "$PY" -c 'import json,sys; m=json.load(open(sys.argv[1]+"/manifest.json")); print(json.dumps({k: v["xxh64"] for k, v in sorted(m["datasets"].items())}))' "$1"
}
verify() { if "$ZT" ckpt verify "$1" >"$work/verify.log" 2>&1; then pass "ckpt verify $(basename "$1")"; else fail "ckpt verify $1: $(cat "$work/verify.log")"; fi; }
finish() {
  echo "retention_test: $((checks - fails)) of $checks checks passed in $((SECONDS - t0))s"
  if [ "$fails" -eq 0 ]; then rm -rf "$work"; exit 0; fi
  echo "work dir kept: $work"; exit 1
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
zt "$work/b3.log" --output_dir "$out" --save_interval 2 --save_total_limit 2 \
  --resume_from_checkpoint "$out/checkpoint-6"
expect "$?" 0 "continued run (checkpoint-6 to step 10) exit status"
expect "$(steps_in "$out")" "8 10" "once the run passes the old ones: exactly the newest 2"
expect "$(cat "$out/latest" 2>/dev/null)" "checkpoint-10" "latest"
[ "$(xxh_map "$out/checkpoint-8")" = "$ref8" ] && pass "re-saved checkpoint-8 bitwise equal to the first run's" ||
  fail "re-saved checkpoint-8 differs from the first run's"
[ "$(xxh_map "$out/checkpoint-10")" = "$ref10" ] && pass "re-saved checkpoint-10 bitwise equal to the first run's" ||
  fail "re-saved checkpoint-10 differs from the first run's"
verify "$out/checkpoint-10"
finish
