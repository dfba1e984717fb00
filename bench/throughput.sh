#!/usr/bin/env bash
# Side-by-side CPU throughput: OpenBLAS sgemm peak, zerotrain `small`, and the same model/step in eager PyTorch.
#
# Usage: bench/throughput.sh [threads]          (default: all cores)
# Env:   ZT_BUILD_DIR (default <repo>/build: holds zerotrain and bench/sgemm_peak), ZT_PYTHON (default /usr/bin/python3),
#        STEPS (30), WARMUP (5); OMP_WAIT_POLICY and OPENBLAS_THREAD_TIMEOUT pass through to both trainers (they
#        decide how the OpenMP and OpenBLAS thread pools share cores). Figures are defined in docs/performance.md.
set -euo pipefail

threads=${1:-$(nproc)}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${ZT_BUILD_DIR:-$repo/build}
python=${ZT_PYTHON:-/usr/bin/python3}
steps=${STEPS:-30}
warmup=${WARMUP:-5}
zerotrain=$build/zerotrain
sgemm_peak=$build/bench/sgemm_peak
for exe in "$zerotrain" "$sgemm_peak"; do
  [[ -x $exe ]] || { echo "throughput.sh: $exe not found; build it or set ZT_BUILD_DIR" >&2; exit 2; }
done

# The `small` preset (L4 H4 d256 T128, vocab 256) at 8 sequences per step.
n_layer=4 n_head=4 d_model=256 vocab=256 seq_len=128 batch=8
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads

# The figures are only comparable on an otherwise idle machine: record how busy it was.
echo "== $(getconf _NPROCESSORS_ONLN) cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg)," \
     "OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-unset} OPENBLAS_THREAD_TIMEOUT=${OPENBLAS_THREAD_TIMEOUT:-unset}"
echo "== sgemm_peak --threads $threads"
"$sgemm_peak" --threads "$threads" | tee "$tmp/sgemm.txt"
peak=$(sed -n 's/^sgemm_peak_gflops=//p' "$tmp/sgemm.txt")
mix=$(sed -n 's/^sgemm_model_mix_gflops=//p' "$tmp/sgemm.txt")

zt_cmd=("$zerotrain" train --preset small --micro_batch_size $batch --global_batch_size $batch --max_steps "$steps"
        --threads "$threads" --quiet --output_dir "$tmp/zt")
echo "== ${zt_cmd[*]}"
"${zt_cmd[@]}"

torch_cmd=("$python" "$repo/bench/torch_gpt2.py" --n_layer $n_layer --n_head $n_head --d_model $d_model
           --vocab $vocab --seq_len $seq_len --batch $batch --steps "$steps" --warmup "$warmup" --threads "$threads")
echo "== ${torch_cmd[*]}"
"${torch_cmd[@]}" | tee "$tmp/torch.txt" | tail -n 1
torch_tok_s=$(sed -n 's/^torch_tokens_per_s=//p' "$tmp/torch.txt")

echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$python" - "$tmp/zt/metrics.jsonl" "$warmup" "$peak" "$mix" "$torch_tok_s" "$threads" \
    $n_layer $d_model $vocab $seq_len <<'EOF'
import json, statistics, sys
path, warmup, peak, mix, torch_tok_s, threads = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:6]), sys.argv[6]
L, C, V, T = map(int, sys.argv[7:11])
rows = [json.loads(l) for l in open(path) if l.strip()]
rates = [r["tokens_per_s"] for r in rows[warmup:]] or [r["tokens_per_s"] for r in rows]
tok_s = statistics.median(rates)
# Logical parameters of GPT-2 with a tied head: wte, wpe, per block 12C^2 + 13C, final LayerNorm 2C.
n_params = V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C
flops_per_token = 6 * n_params + 12 * L * C * T  # PaLM appendix B: 6N + attention 12·L·d·T
gflops = tok_s * flops_per_token / 1e9
print(f"== results ({threads} threads, preset small, B=8 T={T}, median of steps {warmup + 1}..{len(rows)})")
print(f"n_params                     {n_params}")
print(f"flops_per_token              {flops_per_token}")
print(f"sgemm_peak_gflops            {peak:.1f}")
print(f"sgemm_model_mix_gflops       {mix:.1f}")
print(f"zerotrain_tokens_per_s       {tok_s:.0f}")
print(f"zerotrain_gflops             {gflops:.1f}")
print(f"zerotrain_fraction_of_peak   {gflops / peak:.3f}")
print(f"torch_tokens_per_s           {torch_tok_s:.0f}")
print(f"zerotrain_over_torch         {tok_s / torch_tok_s:.2f}")
EOF
