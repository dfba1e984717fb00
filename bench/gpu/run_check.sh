#!/usr/bin/env bash
# The GPU check: one command, under 8 minutes on one H100/H200. Runs the bundled CUDA op tests (and again under
# compute-sanitizer), the device-memory comms and the ZeRO engine on CUDA against the CPU (1 rank, and 4 ranks sharing
# the GPU through the staged MPI comm), the NCCL smoke test, checkpoints saved from and loaded into device memory,
# a 4-rank ZeRO-3 training run on the shared GPU, GPT-2 124M training throughput through the CUDA backend and the same
# step in PyTorch (eager and torch.compile, bf16), and prints a table last; full logs go to OUTDIR. README.md beside
# this file says more.
#
# Usage: bench/gpu/run_check.sh OUTDIR      (needs bench/gpu/bundle/ from bundle.sh)
# Env:   ZT_PYTHON (default python3: the one with PyTorch), ZT_CHECK_BUDGET_S (default 470), BATCH (default 16),
#        ZT_CHECK_ONLY (a rerun of some steps: any of "ops zero nccl ckpt train throughput torch sanitizer
#        variants"),
#        ZT_OPS_FILTER (a Catch2 filter for the op tests, e.g. "[attention]")
#        ZT_CHECK_REHEARSAL=1 (accept a CUDA simulator bundle: rehearses this script without a GPU)
# Exit:  0 all run checks passed, 1 a check failed or timed out, 2 usage / missing bundle, 3 no device.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bundle=$here/bundle
outdir=${1:-}
[[ -n $outdir ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
mkdir -p "$outdir" || exit 2
outdir=$(cd "$outdir" && pwd)
python=${ZT_PYTHON:-python3}
budget_s=${ZT_CHECK_BUDGET_S:-470}
batch=${BATCH:-16}

if [[ ! -f $bundle/run.sh || ! -f $bundle/payload.tar.gz ]]; then
  echo "run_check.sh: $bundle is missing: run bench/gpu/bundle.sh on the development machine first, and carry" \
       "bench/gpu/bundle (it is git-ignored) to this one" >&2
  exit 2
fi
# A bundle of the CUDA simulator's programs (bundle.sh with ZT_BUNDLE_SIM=1) would "pass" on any machine: only a
# rehearsal of this script may use one, and its table says so.
rehearsal=""
if grep -q "^kind: CUDA simulator rehearsal" "$bundle/MANIFEST.txt" 2>/dev/null; then
  if [[ ${ZT_CHECK_REHEARSAL:-0} != 1 ]]; then
    echo "run_check.sh: $bundle holds the CUDA simulator's programs (bundle.sh ran with ZT_BUNDLE_SIM=1), not the" \
         "GPU's: rebuild it with bench/gpu/bundle.sh (or set ZT_CHECK_REHEARSAL=1 to rehearse this script)" >&2
    exit 2
  fi
  rehearsal=" (CUDA simulator rehearsal: CPU figures, not GPU results)"
fi
# shellcheck source=/dev/null
source "$bundle/env.sh"
[[ -x $ZT_BUNDLE_ROOT/bin/zerotrain ]] || { echo "run_check.sh: the bundle did not unpack into $ZT_BUNDLE_ROOT" >&2; exit 2; }
# The bundled Open MPI as root (GPU machines often run checks as root), and several ranks on one machine.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mpirun=("$ZT_MPIRUN" --oversubscribe --bind-to none)  # an array, not a function: run_step runs it under timeout

rows=()
add_row() { rows+=("$1|$2|$3"); }  # check | result | detail
print_table() {
  echo
  echo "== GPU check summary: ${card:-no device}, $(date -u +%Y-%m-%d), logs in $outdir$rehearsal"
  printf '%-54s | %-14s | %s\n' "check" "result" "detail"
  printf '%-54s-+-%-14s-+-%s\n' "$(printf '%.0s-' {1..54})" "$(printf '%.0s-' {1..14})" "------"
  local row
  for row in "${rows[@]}"; do
    IFS='|' read -r name result detail <<<"$row"
    printf '%-54s | %-14s | %s\n' "$name" "$result" "$detail"
  done
  {
    [[ -n $rehearsal ]] && echo "${rehearsal# }" && echo
    echo "| check | result | detail |"
    echo "| --- | --- | --- |"
    for row in "${rows[@]}"; do echo "| ${row//|/ | } |"; done
  } >"$outdir/summary.md"
}
not_run_rows() {  # the device checks, listed when there is no device
  local name
  for name in "ZeRO on CUDA vs CPU, 1 rank (staged MPI comm)" "4 ranks share the GPU: staged comm + ZeRO 0-3 vs CPU" \
              "NCCL single-rank smoke test" "checkpoints: GPU save -> CPU load -> GPU load, bitwise" \
              "trainer: 4-rank ZeRO-3 on the shared GPU (--comm mpi)"; do
    add_row "$name" "not run" "no device"
  done
}
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(hostname) $(uname -r)"
  echo "cuBLAS from: ${ZT_CUBLAS_DIR:-not found}"
  echo "NCCL: ${ZT_NCCL_LIBRARY:-not found (the NCCL checks are skipped)}"
  echo "bundle unpacked in: $ZT_BUNDLE_ROOT"
  echo "LD_LIBRARY_PATH: $LD_LIBRARY_PATH"
  echo
  cat "$bundle/MANIFEST.txt"
} >"$outdir/environment.txt"

# ---- is there a device? nvidia-smi, then the CUDA runtime itself (the test binary exits 77 without one) ----
card=""
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >"$outdir/nvidia-smi.txt" 2>&1; then
  card=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
fi
bash "$bundle/run.sh" test_cuda_ops --list-tests >"$outdir/device-probe.log" 2>&1
probe_rc=$?
runtime_card=$(sed -n 's/^CUDA device 0: //p' "$outdir/device-probe.log")
[[ -z $card ]] && card=$runtime_card
if [[ $probe_rc == 77 || -z $runtime_card ]]; then
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    why="nvidia-smi is not installed"
  elif [[ -z $card ]]; then
    why="nvidia-smi found no GPU"
  else
    why="nvidia-smi lists $card"
  fi
  case $probe_rc in
    77) why="$why; the CUDA runtime sees no device (cuda_device_count() = 0)"; loaded=yes ;;
    *) why="$why; the bundled test binary failed (exit $probe_rc, see $outdir/device-probe.log)"; loaded=no ;;
  esac
  echo "run_check.sh: no device: $why. Nothing else was run (the bundled binaries loaded: $loaded)."
  card=""
  add_row "GPU present" "no device" "$why"
  not_run_rows
  print_table
  exit 3
fi
echo "device: $card; cuBLAS from ${ZT_CUBLAS_DIR:-(not found: matmuls will fail to load)}"

failed=0
# run_step NAME CAP_S LOG CMD...: runs CMD with the smaller of CAP_S and what is left of the budget; sets step_rc
# (124 on timeout, 125 when no time was left to start it).
# step_group names the step for ZT_CHECK_ONLY: a step outside the selection is reported as "not selected".
step_group=""
run_step() {
  local name=$1 cap=$2 log=$3
  shift 3
  if [[ -n ${ZT_CHECK_ONLY:-} && " $ZT_CHECK_ONLY " != *" $step_group "* ]]; then
    echo "-- $name: not selected (ZT_CHECK_ONLY=$ZT_CHECK_ONLY)" >"$log"
    step_rc=126
    return
  fi
  local left=$((budget_s - SECONDS))
  local limit=$((cap < left ? cap : left))
  if ((limit < 15)); then
    echo "-- $name: skipped, the time budget is spent" | tee "$log"
    step_rc=125
    return
  fi
  echo "-- $name (limit ${limit}s) -> $log"
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  step_rc=$?
}
set_result() {  # result word for step_rc; a failure or timeout makes the whole check fail
  case $step_rc in
    0) result="PASS" ;;
    77) result="SKIP" ;;
    124 | 137) failed=1; result="TIMEOUT" ;;
    125) result="not run" ;;
    126) result="not selected" ;;
    *) failed=1; result="FAIL" ;;
  esac
}
# The line a test printed about why it skipped or how it ended (Catch2 summary, PASSED / FAILED lines). Colour
# codes go first: under mpirun a rank's stdout is a pty, so Catch2 colours its summary.
summary_of() {
  sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -E "^(SKIPPED|All tests passed|test cases:|PASSED|FAILED|FAIL:)" | tail -1
}

# 1. Every CUDA op against its CPU twin (fp32 and bf16), whole GPT-2 steps on CUDA vs CPU.
step_group=ops
ops_filter=()
[[ -n ${ZT_OPS_FILTER:-} ]] && ops_filter=("$ZT_OPS_FILTER")
run_step "CUDA op tests" 150 "$outdir/test_cuda_ops.log" bash "$bundle/run.sh" test_cuda_ops --durations yes \
  "${ops_filter[@]}"
set_result
# The Catch2 summary, then the names of the failed test cases (printed by the test's listener).
add_row "CUDA op tests (all ops vs CPU, fp32+bf16, GPT-2 step)" "$result" \
  "$(grep -hE "^(All tests passed|test cases:|FAILED CASES:)" "$outdir/test_cuda_ops.log" | LC_ALL=C sort -r | paste -sd' ')"

# 1b. One step at GPT-2 124M's shapes (2 of its layers, T = 1024, the 50257-token vocabulary) against the CPU: the
#     sizes the throughput run meets, beyond the op tests' small random ones (a hidden test case, "[gpt2]").
run_step "CUDA step at GPT-2 124M shapes" 90 "$outdir/test_cuda_ops_gpt2.log" bash "$bundle/run.sh" test_cuda_ops \
  --durations yes "[gpt2]"
set_result
add_row "one step at GPT-2 124M shapes vs CPU (fp32+bf16)" "$result" "$(summary_of "$outdir/test_cuda_ops_gpt2.log")"

# 2. The device-memory comms and the ZeRO engine: staged MPI comm bit for bit MpiComm, ZeRO stages 0-3 on CUDA fp32
#    against the CPU and against each other; on 1 rank, then 4 ranks sharing this GPU.
step_group=zero
run_step "ZeRO on CUDA, 1 rank" 60 "$outdir/cuda_zero_np1.log" "${mpirun[@]}" -np 1 "$ZT_BUNDLE_ROOT/bin/test_cuda_zero"
set_result
add_row "ZeRO on CUDA vs CPU, 1 rank (staged MPI comm)" "$result" "$(summary_of "$outdir/cuda_zero_np1.log")"
run_step "ZeRO on CUDA, 4 ranks sharing the GPU" 120 "$outdir/cuda_zero_np4.log" "${mpirun[@]}" -np 4 \
  "$ZT_BUNDLE_ROOT/bin/test_cuda_zero"
set_result
add_row "4 ranks share the GPU: staged comm + ZeRO 0-3 vs CPU" "$result" "$(summary_of "$outdir/cuda_zero_np4.log")"

# 3. NCCL on one rank (skipped when no libnccl.so.2 is found: env.sh looks in the CUDA toolkit and PyTorch's wheels).
step_group=nccl
run_step "NCCL smoke test" 60 "$outdir/nccl_np1.log" "${mpirun[@]}" -np 1 "$ZT_BUNDLE_ROOT/bin/test_nccl_comm"
set_result
add_row "NCCL single-rank smoke test" "$result" "$(summary_of "$outdir/nccl_np1.log")"

# 4. Checkpoints from device memory through the zerotrain binary: GPU save -> CPU load + save -> GPU load + save, all
#    bitwise equal; a GPU run resumed from the CPU's file equals an uninterrupted one.
step_group=ckpt
run_step "checkpoint round trip" 150 "$outdir/ckpt_roundtrip.log" env ZEROTRAIN="$ZT_BUNDLE_ROOT/bin/zerotrain" \
  ZT_MPIEXEC="$ZT_MPIRUN" "$python" "$repo/test/cuda/ckpt_device_roundtrip.py"
set_result
add_row "checkpoints: GPU save -> CPU load -> GPU load, bitwise" "$result" "$(summary_of "$outdir/ckpt_roundtrip.log")"

# 5. The trainer itself: 4 ranks on this one GPU, ZeRO-3 through the staged MPI comm, bf16, the `small` preset; the
#    loss must fall.
step_group=train
run_step "trainer, 4 ranks, ZeRO-3 on one GPU" 90 "$outdir/train_zero3_np4.log" "${mpirun[@]}" -np 4 \
  "$ZT_BUNDLE_ROOT/bin/zerotrain" train --device cuda --comm mpi --zero_stage 3 --preset small --max_steps 60 \
  --global_batch_size 16 --micro_batch_size 4 --learning_rate 3e-3 --log_interval 10 --threads 1 \
  --output_dir "$outdir/train_zero3_np4"
set_result
train_line=$(grep -E "^done: " "$outdir/train_zero3_np4.log" | tail -1)
if [[ $result == PASS ]]; then
  read -r loss_first loss_last < <(sed -n 's/^done: .*loss \([0-9.]*\) -> \([0-9.]*\).*/\1 \2/p' \
                                     "$outdir/train_zero3_np4.log")
  if ! awk -v a="${loss_first:-0}" -v b="${loss_last:-9}" 'BEGIN { exit !(b < a - 0.5) }'; then
    failed=1
    result="FAIL"
    train_line="loss did not fall by 0.5: $train_line"
  fi
fi
add_row "trainer: 4-rank ZeRO-3 on the shared GPU (--comm mpi)" "$result" \
  "${train_line:-no done line} | $(grep -m1 -E "^device " "$outdir/train_zero3_np4.log" | cut -c1-60)"

# 6. zerotrain GPT-2 124M, T=1024, bf16: tokens/s and MFU (definitions in docs/gpu-results.md).
step_group=throughput
run_step "zerotrain GPT-2 124M bf16 throughput" 120 "$outdir/zt_throughput.log" bash "$bundle/run.sh" gpt2_cuda_bench \
  --preset gpt2 --batch "$batch" --seq_len 1024 --steps 10 --warmup 3 --profile_steps 2
set_result
zt_tps=$(sed -n 's/^zt_tokens_per_s=//p' "$outdir/zt_throughput.log")
zt_mfu=$(sed -n 's/^zt_mfu=\([0-9.]*\).*/\1/p' "$outdir/zt_throughput.log")
zt_mem=$(sed -n 's/^device memory in use after one step: //p' "$outdir/zt_throughput.log")
[[ $result == PASS ]] && result="measured"
add_row "zerotrain GPT-2 124M, B=$batch T=1024 bf16" "$result" \
  "${zt_tps:-?} tokens/s, MFU ${zt_mfu:-?}, device memory ${zt_mem:-?}"
# The profiled steps after the timed ones: the three ops that take most of a step (the full table is in the log).
top_ops=$(awk '/^where a step.s time goes/ { on = 1; next } on && $1 != "op" && $1 != "total" && NF >= 4 {
                 printf "%s%s %s", (n++ ? ", " : ""), $1, $4; if (n == 3) exit }' "$outdir/zt_throughput.log")
if [[ -n $top_ops ]]; then
  add_row "zerotrain: where a step's time goes (top 3 ops)" "measured" "$top_ops"
else
  add_row "zerotrain: where a step's time goes (top 3 ops)" "not measured" "no profile table in the log"
fi

# 7. The same step in PyTorch on this machine: torch.compile, then eager.
torch_tps() { sed -n 's/^torch_tokens_per_s=//p' "$1"; }
step_group=torch
run_step "PyTorch torch.compile" 180 "$outdir/torch_compile.log" "$python" "$here/torch_gpt2_cuda.py" --compile \
  --batch "$batch" --steps 10 --warmup 3
set_result
tc_tps=$(torch_tps "$outdir/torch_compile.log")
[[ $result == PASS ]] && result="measured"
add_row "PyTorch torch.compile, same model and step, bf16" "$result" "${tc_tps:-?} tokens/s"
run_step "PyTorch eager" 90 "$outdir/torch_eager.log" "$python" "$here/torch_gpt2_cuda.py" --batch "$batch" \
  --steps 10 --warmup 3
set_result
te_tps=$(torch_tps "$outdir/torch_eager.log")
[[ $result == PASS ]] && result="measured"
add_row "PyTorch eager, same model and step, bf16" "$result" "${te_tps:-?} tokens/s"
if [[ -n ${zt_tps:-} && -n ${tc_tps:-} ]]; then
  ratio=$(awk -v a="$zt_tps" -v b="$tc_tps" 'BEGIN { printf "%.2f", a / b }')
  met=$(awk -v r="$ratio" -v m="${zt_mfu:-0}" 'BEGIN { print (r >= 1.1 && m >= 0.55) ? "MET" : "NOT MET" }')
  add_row "target: >= 1.1x torch.compile and MFU >= 0.55" "$met" "${ratio}x torch.compile, MFU ${zt_mfu:-?}"
else
  add_row "target: >= 1.1x torch.compile and MFU >= 0.55" "not measured" "a throughput run above did not finish"
fi

# 8. compute-sanitizer on the op tests: memcheck (out-of-bounds, misaligned), racecheck (shared-memory hazards in
#    the attention kernels, the only ones that share memory between warps).
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [[ -z $sanitizer ]]; then
  add_row "compute-sanitizer memcheck on the op tests" "SKIP" "compute-sanitizer is not installed"
  add_row "compute-sanitizer racecheck on attention" "SKIP" "compute-sanitizer is not installed"
else
  sanitizer_row() {  # NAME LOG
    local result
    set_result
    local summary
    summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$2" | tail -1 | sed 's/^=* *//')
    add_row "$1" "$result" "${summary:-no summary line}"
  }
  step_group=sanitizer
  run_step "memcheck" 150 "$outdir/memcheck.log" "$sanitizer" --tool memcheck --leak-check no --error-exitcode 99 \
    "$ZT_BUNDLE_ROOT/bin/test_cuda_ops" "~[model]"
  sanitizer_row "compute-sanitizer memcheck on the op tests" "$outdir/memcheck.log"
  run_step "racecheck" 90 "$outdir/racecheck.log" "$sanitizer" --tool racecheck --error-exitcode 99 \
    "$ZT_BUNDLE_ROOT/bin/test_cuda_ops" "[attention]"
  sanitizer_row "compute-sanitizer racecheck on attention" "$outdir/racecheck.log"
fi

# 9. What the bf16 mode's choices buy, in the same run (whatever budget is left): the throughput step again without
#    the bf16 operand copies (every matmul rounds its operands per call), with the fp32 attention kernels instead of
#    the tensor-core ones, and with the tensor-core dK/dV kernel capped at 3 blocks an SM (a tuning choice: if this
#    row is faster, make it the default). Each row gives tokens/s and the ratio of the main run to it.
step_group=variants
variant_row() {  # NAME LOG
  local result tps ratio mem
  set_result
  tps=$(sed -n 's/^zt_tokens_per_s=//p' "$2")
  mem=$(sed -n 's/^device memory in use after one step: //p' "$2")
  [[ $result == PASS ]] && result="measured"
  ratio=$(awk -v a="${zt_tps:-}" -v b="${tps:-}" 'BEGIN { if (a > 0 && b > 0) printf ", main run %.2fx this", a / b }')
  add_row "$1" "$result" "${tps:-?} tokens/s${ratio}, device memory ${mem:-?}"
}
run_step "throughput without operand copies" 45 "$outdir/zt_throughput_no_copies.log" env ZT_CUDA_PARAM_COPY=0 \
  bash "$bundle/run.sh" gpt2_cuda_bench --preset gpt2 --batch "$batch" --seq_len 1024 --steps 5 --warmup 2
variant_row "variant: ZT_CUDA_PARAM_COPY=0 (round per matmul)" "$outdir/zt_throughput_no_copies.log"
run_step "throughput with fp32 attention" 45 "$outdir/zt_throughput_fp32_attention.log" env ZT_CUDA_ATTENTION=fp32 \
  bash "$bundle/run.sh" gpt2_cuda_bench --preset gpt2 --batch "$batch" --seq_len 1024 --steps 5 --warmup 2
variant_row "variant: ZT_CUDA_ATTENTION=fp32 (no tensor cores)" "$outdir/zt_throughput_fp32_attention.log"
run_step "throughput with the register-capped dK/dV kernel" 45 "$outdir/zt_throughput_dkv3.log" \
  env ZT_CUDA_ATTENTION_DKV_BLOCKS=3 bash "$bundle/run.sh" gpt2_cuda_bench --preset gpt2 --batch "$batch" \
  --seq_len 1024 --steps 5 --warmup 2
variant_row "variant: ZT_CUDA_ATTENTION_DKV_BLOCKS=3 (3 blocks/SM)" "$outdir/zt_throughput_dkv3.log"

print_table
echo "(${SECONDS}s in all; the table is also in $outdir/summary.md for docs/gpu-results.md)"
exit $failed
