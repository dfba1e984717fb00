#!/usr/bin/env bash
# Incremental checkpoints (issue 18's benchmark; not a test): bytes written and save time per checkpoint with and
# without --incremental_checkpoints, and the cold resume time through a chain of 5 incremental checkpoints against
# a standalone (consolidated) copy of the same checkpoint. Figures are defined in docs/performance.md,
# "Incremental checkpoints".
#
# Model: preset gpt2 with --seq_len 64 (124.0M params; 1.49 GB of fp32 state per full checkpoint), as
# bench/ckpt_bench.sh. Rows:
#   full/plain, full/incremental   full training, a save every step (STEPS saves), alternated twice: everything
#                                  changes, so the incremental run must write the same bytes (within 1%) in the same
#                                  time (within noise);
#   frozen/plain, frozen/inc.      only with FREEZE="--freeze PATTERNS" (issue 18, item 1): the same run with that
#                                  flag, both ways, in the same invocation;
#   chain                          learning rate 0 (parameters never change, Adam's moments do), 6 saves: checkpoint-1
#                                  full, 2-6 incremental (their params linked to checkpoint-1); then cold resumes
#                                  (no step) from checkpoint-6 and from `ckpt consolidate` of it, alternated, twice.
#
# Usage: bench/incremental_ckpt_bench.sh [dir]   (default: $ZT_BENCH_DIR or /tmp/zt_inc_bench; needs ~12 GB free)
# Env:   ZT_BUILD_DIR (default <repo>/build), ZT_PYTHON (/usr/bin/python3), NP (ranks, 1), STEPS (saves per row, 3),
#        FREEZE (extra flags of the frozen rows; empty: rows skipped).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${ZT_BUILD_DIR:-$repo/build}
python=${ZT_PYTHON:-/usr/bin/python3}
zerotrain=$build/zerotrain
dir=${1:-${ZT_BENCH_DIR:-/tmp/zt_inc_bench}}
np=${NP:-1}
steps=${STEPS:-3}
freeze=${FREEZE:-}
[[ -x $zerotrain ]] || { echo "incremental_ckpt_bench.sh: $zerotrain not found; build it or set ZT_BUILD_DIR" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
helper=$repo/bench/ckpt_bench_cache.py
rm -rf "$dir"
mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT
cores=$(nproc)
threads=$((cores / np > 0 ? cores / np : 1))

model=(--preset gpt2 --seq_len 64 --zero_stage 3 --micro_batch_size 1 --global_batch_size "$np" --threads "$threads")
zt() { mpirun -np "$np" --oversubscribe --bind-to none "$zerotrain" "$@"; }
load() { cut -d' ' -f1 /proc/loadavg; }

echo "== $cores cores, $np rank(s), load average $(cut -d' ' -f1-3 /proc/loadavg)," \
     "file system $(df -T "$dir" | awk 'NR==2 {print $2" on "$1}'), cache drop: $("$python" "$helper" --method)"
printf '%-18s %5s %14s %8s %8s\n' "row" "ckpt" "model.h5_bytes" "save_s" "load1"

# row NAME FLAGS...: STEPS steps, a save after each; one line per checkpoint.
row() {
  local name=$1 out=$dir/$1
  shift
  local log
  log=$(zt train "${model[@]}" --max_steps "$steps" --save_interval 1 --output_dir "$out" "$@" 2>&1) ||
    { echo "$log"; exit 1; }
  for s in $(seq 1 "$steps"); do
    local ck=$out/checkpoint-$s save_s
    save_s=$(sed -n "s|^saved $ck in \([0-9.]*\)s$|\1|p" <<<"$log")
    printf '%-18s %5s %14s %8s %8s\n' "$name" "$s" "$(stat -c %s "$ck/model.h5")" "$save_s" "$(load)"
  done
  grep -E '^checkpoint-[0-9]+: .*tensors written' <<<"$log" | sed 's/^/    /' || true
}

# Alternated (plain, incremental, incremental, plain) so that drift in the machine's load shows.
for name in plain incremental incremental-2 plain-2; do
  if [[ $name == incremental* ]]; then row "full/$name" --incremental_checkpoints; else row "full/$name"; fi
  rm -rf "$dir/full"
done
if [[ -n $freeze ]]; then
  # shellcheck disable=SC2086
  row frozen/plain $freeze --incremental_checkpoints=false  # --freeze turns incremental saves on by default
  # shellcheck disable=SC2086
  row frozen/incremental $freeze --incremental_checkpoints
  rm -rf "$dir/frozen"
fi

steps=6 row chain --incremental_checkpoints --learning_rate 0
ck=$dir/chain/checkpoint-6
zt ckpt consolidate "$ck" -o "$dir/standalone" >/dev/null
echo "chain: checkpoint-6 model.h5 $(stat -c %s "$ck/model.h5") bytes (links to checkpoint-1);" \
     "consolidated copy $(stat -c %s "$dir/standalone/model.h5") bytes"
for kind in chain standalone chain standalone; do  # alternated, twice, so drift in the machine's load shows
  src=$ck
  [[ $kind == standalone ]] && src=$dir/standalone
  "$python" "$helper" --drop "$src/model.h5" "$dir/chain/checkpoint-1/model.h5"
  log=$(zt train "${model[@]}" --max_steps 6 --save_interval 0 --resume_from_checkpoint "$src" \
    --output_dir "$dir/r" 2>&1) ||
    { echo "$log"; exit 1; }
  echo "resume (cold, no step) from $kind: $(sed -n 's/^loaded .* in \([0-9.]*\)s$/\1/p' <<<"$log" | tail -1) s," \
       "load average $(load)"
  rm -rf "$dir/r"
done
