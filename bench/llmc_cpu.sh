#!/usr/bin/env bash
# Builds llm.c's CPU trainer (train_gpt2.c) from a user's checkout at our batch and length; prints its tokens/s.
#
# Usage: bench/llmc_cpu.sh LLMC_DIR B T STEPS WARMUP WORKDIR     (bench/throughput.sh calls it for preset gpt2)
# train_gpt2.c hard-codes B=4, T=64 and 41 steps; a copy in WORKDIR gets ours, is compiled with the flags of llm.c's
# Makefile (-Ofast -march=native -fopenmp) and runs in LLMC_DIR, where it reads gpt2_124M.bin and the tinyshakespeare
# tokens that llm.c's own scripts write. Its step is forward, backward and AdamW (no grad clipping, weight decay 0).
# Exit 1 with the reason on stderr when the checkout lacks what it needs; never fetches anything.
set -euo pipefail

[[ $# == 6 ]] || { echo "usage: $0 LLMC_DIR B T STEPS WARMUP WORKDIR" >&2; exit 2; }
dir=$1 B=$2 T=$3 steps=$4 warmup=$5 work=$6
fail() { echo "llm.c: $*" >&2; exit 1; }
[[ -f $dir/train_gpt2.c ]] || fail "no train_gpt2.c in LLMC_DIR=$dir (point it at a checkout of karpathy/llm.c)"
[[ -f $dir/gpt2_124M.bin ]] || fail "no $dir/gpt2_124M.bin: run llm.c's dev/download_starter_pack.sh or train_gpt2.py"
mkdir -p "$work"
src=$work/train_gpt2_zt.c
# Each edit must match exactly once, or this is a train_gpt2.c we do not know and its figure would mean something else.
cp "$dir/train_gpt2.c" "$src"
for edit in "int B = 4;/int B = $B;" "int T = 64;/int T = $T;" "step <= 40;/step < $steps;"; do
  [[ $(grep -cF "${edit%%/*}" "$src") == 1 ]] || fail "train_gpt2.c has no single '${edit%%/*}' line to set"
  sed -i "s|${edit%%/*}|${edit#*/}|" "$src"
done
(( steps <= 20 )) || fail "STEPS $steps > 20 would time train_gpt2.c's sampling at step 20 in with the run"
${CC:-gcc} -Ofast -march=native -fopenmp -DOMP -Wno-unused-result -I"$dir" "$src" -lm -lgomp -o "$work/train_gpt2" \
  2>"$work/cc.log" || fail "compiling train_gpt2.c failed: $(tail -n 1 "$work/cc.log")"
(cd "$dir" && "$work/train_gpt2") >"$work/run.log" 2>&1 || fail "train_gpt2 failed: $(tail -n 1 "$work/run.log")"
sed -n 's/^step [0-9]*: train loss .* (took \([0-9.]*\) ms)$/\1/p' "$work/run.log" | tail -n +$((warmup + 1)) |
  sort -g |
  awk -v bt=$((B * T)) '{ ms[NR] = $1 } END { if (NR == 0) exit 1
    m = (NR % 2) ? ms[(NR + 1) / 2] : (ms[NR / 2] + ms[NR / 2 + 1]) / 2; printf "%.1f\n", bt / (m / 1000) }' ||
  fail "no timed steps after warm-up in $work/run.log"
