#!/usr/bin/env bash
# CTest throughput_bench: bench/throughput.sh's table, llm.c build script and PyTorch-venv helper, without network,
# PyTorch 2.x or llm.c (a fake checkout stands in). About 15 s; the benchmark itself is not run.
. "$(dirname "$0")/lib.sh"
zt_test_setup throughput_bench
repo=${ZT_SOURCE_DIR:?}
build=$(dirname "$ZT")

# 1. llm.c: our B, T and steps patched into a copy of train_gpt2.c; the median step of those after warm-up.
fake=$work/llmc
mkdir -p "$fake"
touch "$fake/gpt2_124M.bin"
cat >"$fake/train_gpt2.c" <<'C'
#include <stdio.h>
int main() {
    int B = 4;
    int T = 64;
    /* step s takes (s + 1) * B * T / 1024 * 100 ms, so the rate depends on B, T and which steps count */
    for (int step = 0; step <= 40; step++)
        printf("step %d: train loss 1.0 (took %f ms)\n", step, (step + 1) * B * T / 10.24);
    return 0;
}
C
rate=$(bash "$repo/bench/llmc_cpu.sh" "$fake" 4 256 6 2 "$work/llmc-work" 2>"$work/llmc.err")
# Steps 0..5 at B 4, T 256 take 100..600 ms; after 2 warm-up steps the median is 450 ms: 1024 tokens / 0.45 s.
expect "$rate" 2275.6 "llm.c tokens/s from the patched B, T, steps and warm-up"
expect "$(grep -c '^step' "$work/llmc-work/run.log")" 6 "llm.c ran STEPS steps, not its hard-coded 41"
sed -i 's/int T = 64;/int T = 1024;/' "$fake/train_gpt2.c"
bash "$repo/bench/llmc_cpu.sh" "$fake" 4 256 6 2 "$work/llmc-work2" >/dev/null 2>"$work/llmc2.err"
expect $? 1 "an unknown train_gpt2.c is refused, not timed at its own T"
has "$work/llmc2.err" "no single 'int T = 64;' line"

# 2. The venv helper: a failed install names why and leaves nothing a later run would trust.
cat >"$work/nopython" <<'SH'
#!/bin/sh
echo "ERROR: Could not find a version that satisfies the requirement torch" >&2; exit 1
SH
chmod +x "$work/nopython"
ZT_TORCH_VENV=$work/venv ZT_VENV_PYTHON=$work/nopython bash "$repo/bench/torch_venv.sh" >/dev/null 2>"$work/venv.err"
expect $? 3 "no PyTorch 2.x venv: exit 3"
has "$work/venv.err" "Could not find a version"
expect "$(ls -d "$work/venv" "$work"/venv.partial.* 2>/dev/null | wc -l)" 0 "no venv or partial venv left behind"

# 3. The table: zerotrain and Debian's torch measured, the missing peers skipped with their reason, ratio per peer.
export ZT_BUILD_DIR=$build ZT_TORCH_VENV=$work/venv ZT_VENV_PYTHON=$work/nopython STEPS=3 WARMUP=1
PEERS="system eager llmc" bash "$repo/bench/throughput.sh" --preset small --threads 1 >"$work/table.txt" 2>&1
expect $? 0 "throughput.sh runs with the peers it lacks"
row() { grep "^$1 " "$work/table.txt" | tail -n 1; }
zt=$(row zerotrain | awk '{print $2}')
tt=$(row "torch (Debian) eager" | awk '{print $4}')
ratio=$(row "torch (Debian) eager" | awk '{print $7}')
want=$(awk -v a="$zt" -v b="$tt" 'BEGIN { printf "%.2f", a / b }')
expect "$ratio" "$want" "zerotrain/peer column is zerotrain's tokens/s over the peer's"
expect "$(row llm.c | sed 's/.*  //')" "skipped: set LLMC_DIR" "llm.c without LLMC_DIR: skipped, saying how"
has "$work/table.txt" "skipped: torch_venv.sh: could not install torch"
has "$work/table.txt" "3,257,856 params, 21.1 MFLOP/token"
zt_test_finish
