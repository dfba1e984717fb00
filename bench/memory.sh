#!/usr/bin/env bash
# Peak resident memory per rank (VmHWM) for docs/performance.md's memory table: ZeRO-3 on GPT-2 124M at T 64 on 4
# and 8 ranks against the issue-16 target, and --recompute none|attention|block on GPT-2 at T 1024 (1 rank): memory,
# tokens/s, and the largest micro-batch whose peak fits a fixed budget (predicted from the B = 1 runs and each
# mode's per-sequence activation bytes, then run to check).
#
# Usage: bench/memory.sh [zero|recompute|all]   (default all; about 25 minutes on 2 cores)
# Env:   ZT_BUILD_DIR (default <repo>/build: holds bench/zero_memory), ZT_MPIEXEC (default mpirun),
#        BUDGET_GIB (4: the recompute budget per rank), THREADS (2: OpenMP threads of the 1-rank runs).
set -euo pipefail

what=${1:-all}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${ZT_BUILD_DIR:-$repo/build}
mpiexec=${ZT_MPIEXEC:-mpirun}
budget_gib=${BUDGET_GIB:-4}
threads=${THREADS:-2}
bench=$build/bench/zero_memory
[[ -x $bench ]] || { echo "memory.sh: $bench not found; build it (target zero_memory) or set ZT_BUILD_DIR" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Runs the bench on $1 ranks with the remaining arguments; prints its RESULT line and keeps it in $tmp/last.
run() {
  local np=$1
  shift
  echo "== $mpiexec -np $np --oversubscribe $bench $* (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  "$mpiexec" -np "$np" --oversubscribe --bind-to none "$bench" --output_dir "$tmp/out" "$@" >"$tmp/log" 2>&1 ||
    { cat "$tmp/log"; exit 1; }
  grep '^RESULT' "$tmp/log" | tee "$tmp/last"
}
field() { sed -n "s/.*$1 \([0-9.]*\).*/\1/p" "$tmp/last"; }

echo "== $(getconf _NPROCESSORS_ONLN) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
if [[ $what == zero || $what == all ]]; then
  # ZeRO-3 on GPT-2 124M, T 64, micro-batch 4, one micro-step per step: 2 steps (memory needs few).
  for np in 4 8; do
    OMP_NUM_THREADS=1 run "$np" --preset gpt2 --seq_len 64 --micro_batch_size 4 --zero_stage 3 --threads 1
  done
fi
if [[ $what == recompute || $what == all ]]; then
  declare -A fixed per_seq
  for mode in none attention block; do
    OMP_NUM_THREADS=$threads run 1 --preset gpt2 --micro_batch_size 1 --recompute "$mode" --threads "$threads"
    # Activation and work bytes grow with the micro-batch; the rest (state, libraries) does not.
    act=$(sed -n 's/.*activations+work \([0-9.]*\).*/\1/p' "$tmp/last")
    peak=$(field "peak resident per rank")
    per_seq[$mode]=$act
    fixed[$mode]=$(awk -v p="$peak" -v a="$act" 'BEGIN {print p - a}')
  done
  for mode in none attention block; do
    b=$(awk -v f="${fixed[$mode]}" -v a="${per_seq[$mode]}" -v g="$budget_gib" 'BEGIN {print int((g * 1024 - f) / a)}')
    echo "== $mode: largest micro-batch predicted to fit $budget_gib GiB: $b ((budget - ${fixed[$mode]} MiB) / ${per_seq[$mode]} MiB per sequence)"
    if ((b >= 1)); then
      OMP_NUM_THREADS=$threads run 1 --preset gpt2 --micro_batch_size "$b" --recompute "$mode" --threads "$threads" \
        --max_steps 1
    fi
  done
fi
