#!/usr/bin/env bash
# CPU throughput of zerotrain against its peers on the same model and step: PyTorch 2.x eager and torch.compile, llm.c.
#
# Usage: bench/throughput.sh [--preset small|gpt2|all] [--threads LIST] [THREADS]
#   --preset   small (L4 H4 d256 T128 vocab 256, B 8), gpt2 (124M: L12 H12 d768 vocab 50257, T 256, B 4) or all
#              (the default)
#   --threads  comma-separated thread counts (default 1,<cores>); a bare THREADS argument means --threads THREADS
# Env:   ZT_BUILD_DIR (default <repo>/build: holds zerotrain and bench/sgemm_peak), ZT_PYTHON (/usr/bin/python3),
#        ZT_TORCH_VENV (PyTorch 2.x venv, made on first use by bench/torch_venv.sh), LLMC_DIR (a checkout of llm.c to
#        build train_gpt2 from; never fetched), PEERS (default "eager compile llmc"; add "system" for Debian's torch),
#        STEPS / WARMUP (default 30/5 for small, 6/2 for gpt2); OMP_WAIT_POLICY and OPENBLAS_THREAD_TIMEOUT pass
#        through to every trainer. Every figure is defined in docs/performance.md.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${ZT_BUILD_DIR:-$repo/build}
python=${ZT_PYTHON:-/usr/bin/python3}
peers=${PEERS:-eager compile llmc}
presets=(small gpt2)
thread_list="1,$(nproc)"
while (($#)); do
  [[ $1 != --* || $# -ge 2 ]] || { echo "throughput.sh: $1 needs a value (see the usage at the top of $0)" >&2; exit 2; }
  case $1 in
    --preset) [[ $2 == all ]] && presets=(small gpt2) || presets=("$2"); shift 2 ;;
    --threads) thread_list=$2; shift 2 ;;
    [0-9]*) thread_list=$1; shift ;;
    *) echo "throughput.sh: unknown argument '$1' (see the usage at the top of $0)" >&2; exit 2 ;;
  esac
done
for p in "${presets[@]}"; do
  [[ $p == small || $p == gpt2 ]] || { echo "throughput.sh: --preset '$p': use small, gpt2 or all" >&2; exit 2; }
done
IFS=, read -r -a threads_all <<<"$thread_list"
mapfile -t threads_all < <(printf '%s\n' "${threads_all[@]}" | awk '!seen[$0]++')
zerotrain=$build/zerotrain
sgemm_peak=$build/bench/sgemm_peak
for exe in "$zerotrain" "$sgemm_peak"; do
  [[ -x $exe ]] || { echo "throughput.sh: $exe not found; build it or set ZT_BUILD_DIR" >&2; exit 2; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rows=$tmp/rows.tsv  # preset threads peer tokens/s note, one line per measured or skipped peer
load() { cut -d' ' -f1-3 /proc/loadavg; }
torch_val() { sed -n "s/^torch_$1=//p" "$tmp/torch.log"; }  # a key=value line torch_gpt2.py prints last

# The PyTorch 2.x venv: made once (minutes, several GB); without it the torch rows say why and the rest still runs.
torch2_python="" torch2_why=""
if [[ " $peers " == *" eager "* || " $peers " == *" compile "* ]]; then
  echo "== PyTorch 2.x venv (bench/torch_venv.sh)"
  torch2_python=$("$repo/bench/torch_venv.sh" 2>"$tmp/venv.err") || torch2_why=$(tail -n 1 "$tmp/venv.err")
fi

set_preset() {  # model and batch of a preset; gpt2 runs fewer steps so both presets finish in ~10 min on 2 cores
  case $1 in
    small) L=4 H=4 C=256 V=256 T=128 B=8 steps=${STEPS:-30} warmup=${WARMUP:-5} ;;
    gpt2) L=12 H=12 C=768 V=50257 T=256 B=4 steps=${STEPS:-6} warmup=${WARMUP:-2} ;;
  esac
}

run_zerotrain() {  # $1 preset, $2 threads: median tokens/s of the steps after warm-up, from metrics.jsonl
  local out=$tmp/zt-$1-$2
  local cmd=("$zerotrain" train --preset "$1" --seq_len $T --micro_batch_size $B --global_batch_size $B
             --max_steps "$steps" --threads "$2" --quiet --output_dir "$out")
  echo "== ${cmd[*]}"
  if ! "${cmd[@]}" >"$tmp/zt.log" 2>&1; then
    printf '%s\t%s\tzerotrain\t-\tfailed: %s\n' "$1" "$2" "$(tail -n 1 "$tmp/zt.log")" >>"$rows"; return
  fi
  local rate
  rate=$("$python" -c 'import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
w = int(sys.argv[2])
print(statistics.median([r["tokens_per_s"] for r in (rows[w:] or rows)]))' "$out/metrics.jsonl" "$warmup")
  printf '%s\t%s\tzerotrain\t%s\t\n' "$1" "$2" "$rate" >>"$rows"
}

run_torch() {  # $1 preset, $2 threads, $3 row name, $4 python, then torch_gpt2.py's extra flags
  local preset=$1 threads=$2 name=$3 py=$4
  shift 4
  local cmd=("$py" "$repo/bench/torch_gpt2.py" --n_layer $L --n_head $H --d_model $C --vocab $V --seq_len $T
             --batch $B --steps "$steps" --warmup "$warmup" --threads "$threads" "$@")
  echo "== ${cmd[*]}"
  if ! "${cmd[@]}" >"$tmp/torch.log" 2>&1; then
    printf '%s\t%s\t%s\t-\tfailed: %s\n' "$preset" "$threads" "$name" "$(tail -n 1 "$tmp/torch.log")" >>"$rows"
    return
  fi
  head -n 1 "$tmp/torch.log"
  printf '%s\t%s\t%s\t%s\ttorch %s, AdamW %s, warm-up %s s (first step %s s)\n' "$preset" "$threads" "$name" \
    "$(torch_val tokens_per_s)" "$(torch_val version)" "$(torch_val adamw)" "$(torch_val warmup_s)" \
    "$(torch_val first_step_s)" >>"$rows"
}

run_llmc() {  # $1 preset, $2 threads: llm.c's CPU trainer, built from LLMC_DIR by bench/llmc_cpu.sh
  if [[ -z ${LLMC_DIR:-} ]]; then
    printf '%s\t%s\tllm.c\t-\tskipped: set LLMC_DIR\n' "$1" "$2" >>"$rows"; return
  fi
  if [[ $1 != gpt2 ]]; then
    printf '%s\t%s\tllm.c\t-\tskipped: train_gpt2.c trains GPT-2 124M only\n' "$1" "$2" >>"$rows"; return
  fi
  echo "== bench/llmc_cpu.sh $LLMC_DIR B=$B T=$T steps=$steps"
  local rate
  if rate=$("$repo/bench/llmc_cpu.sh" "$LLMC_DIR" $B $T "$steps" "$warmup" "$tmp/llmc" 2>"$tmp/llmc.err"); then
    printf '%s\t%s\tllm.c\t%s\ttrain_gpt2.c (no grad clipping)\n' "$1" "$2" "$rate" >>"$rows"
  else
    printf '%s\t%s\tllm.c\t-\tskipped: %s\n' "$1" "$2" "$(tail -n 1 "$tmp/llmc.err")" >>"$rows"
  fi
}

run_block() {  # $1 preset, $2 threads: sgemm ceiling, zerotrain, then every peer, one at a time
  set_preset "$1"
  export OMP_NUM_THREADS=$2 OPENBLAS_NUM_THREADS=$2 MKL_NUM_THREADS=$2
  local load_before; load_before=$(load)
  echo "== preset $1, $2 thread(s): load average before $load_before"
  "$sgemm_peak" --threads "$2" >"$tmp/sgemm.txt"
  printf '%s\t%s\tsgemm_peak\t-\t%s GFLOP/s\n' "$1" "$2" "$(sed -n 's/^sgemm_peak_gflops=//p' "$tmp/sgemm.txt")" \
    >>"$rows"
  run_zerotrain "$1" "$2"
  local peer
  for peer in $peers; do
    case $peer in
      eager | compile)
        local flag=(); [[ $peer == compile ]] && flag=(--compile)
        if [[ -n $torch2_python ]]; then run_torch "$1" "$2" "torch 2.x $peer" "$torch2_python" "${flag[@]}"
        else printf '%s\t%s\ttorch 2.x %s\t-\tskipped: %s\n' "$1" "$2" "$peer" "$torch2_why" >>"$rows"; fi ;;
      system) run_torch "$1" "$2" "torch (Debian) eager" "$python" ;;
      llmc) run_llmc "$1" "$2" ;;
      *) echo "throughput.sh: PEERS: unknown peer '$peer' (eager, compile, system, llmc)" >&2; exit 2 ;;
    esac
  done
  printf '%s\t%s\tload\t-\t%s -> %s\n' "$1" "$2" "$load_before" "$(load)" >>"$rows"
  print_table "$1" "$2"
}

print_table() {  # $1 preset, $2 threads: one row per peer with the shared flop formula
  "$python" - "$rows" "$1" "$2" $L $C $V $T $B "$steps" "$warmup" <<'EOF'
import sys
path, preset, threads = sys.argv[1:4]
L, C, V, T, B, steps, warmup = map(int, sys.argv[4:11])
rows = [l.rstrip("\n").split("\t") for l in open(path)]
rows = [r for r in rows if r[0] == preset and r[1] == threads]
# Logical parameters of GPT-2 with a tied head: wte, wpe, per block 12C^2 + 13C, final LayerNorm 2C.
n_params = V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C
flops_per_token = 6 * n_params + 12 * L * C * T  # PaLM appendix B: 6N + attention 12·L·d·T
note = {r[2]: r[4] for r in rows if r[3] == "-"}
rate = {r[2]: float(r[3]) for r in rows if r[3] != "-"}
peak = float(note["sgemm_peak"].split()[0])
print(f"== results: preset {preset} (L{L} C{C} V{V} T{T} B{B}, {n_params:,} params, "
      f"{flops_per_token / 1e6:.1f} MFLOP/token), {threads} thread(s), median of steps {warmup + 1}..{steps}")
print(f"   load average {note['load']}; sgemm peak {peak:.1f} GFLOP/s")
print(f"{'peer':<22} {'tokens/s':>9} {'GFLOP/s':>8} {'of peak':>8} {'zerotrain/peer':>15}  note")
zt = rate.get("zerotrain")
for r in rows:
    name, value, text = r[2], r[3], r[4]
    if name in ("sgemm_peak", "load"):
        continue
    if value == "-":
        print(f"{name:<22} {'-':>9} {'-':>8} {'-':>8} {'-':>15}  {text}")
        continue
    tok_s = float(value)
    gflops = tok_s * flops_per_token / 1e9
    ratio = f"{zt / tok_s:.2f}" if zt else "-"
    print(f"{name:<22} {tok_s:>9.1f} {gflops:>8.1f} {gflops / peak:>8.2f} {ratio:>15}  {text}")
EOF
}

echo "== $(getconf _NPROCESSORS_ONLN) cores; presets ${presets[*]}; threads ${threads_all[*]}; peers $peers;" \
     "OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-unset} OPENBLAS_THREAD_TIMEOUT=${OPENBLAS_THREAD_TIMEOUT:-unset}"
for preset in "${presets[@]}"; do
  for threads in "${threads_all[@]}"; do
    run_block "$preset" "$threads"
  done
done
