#!/usr/bin/env bash
# CTest gpu_check_faults: run_check.sh over a fake bundle (fake_bundle.sh), run through the device tool's stand-in
# (standin.sh) with every time limit scaled down (ZT_CHECK_TIME_SCALE), brings back the whole summary and every log
# when a step hangs, when one crashes, when one leaves a process behind, when compute-sanitizer refuses the device,
# when the budget cuts a step, when there is no device, when ranks cannot share the GPU, when the whole command is
# killed at its limit, when it is sent SIGTERM, and when the bundle is missing or damaged. About 70 s on 2 busy cores.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tmp=$(mktemp -d)
trap '[[ -n ${ZT_KEEP:-} ]] || rm -rf "$tmp"' EXIT
export TMPDIR=$tmp  # run_check.sh's scratch folders and the unpacked bundle
bash "$here/fake_bundle.sh" "$tmp/fake" >/dev/null || { echo "FAIL: fake_bundle.sh"; exit 1; }
. "$here/test_helpers.sh"
row() { grep -F "| $2" "$1/files/summary.md"; }  # RESULT_DIR NAME: the row of summary.md whose check starts so
result_of() { row "$1" "$2" | awk -F' [|] ' '{ print $2 }'; }
# check_run NAME LIMIT_S ENV...: run_check.sh through the stand-in (limit in seconds), with ENV set for it.
check_run() {
  local name=$1 limit=$2
  shift 2
  res=$tmp/$name
  bash "$here/standin.sh" --limit "$limit" --result "$res" -- "env $* ZT_CHECK_BUNDLE=$tmp/fake/bundle \
    ZT_CHECK_REHEARSAL=1 ZT_PYTHON=python PATH=$tmp/fake/tools:\$PATH bash bench/gpu/run_check.sh \"\$OUT\"" \
    >"$res.txt" 2>&1
  echo "-- $name: rc $(field "$res" rc), files: $(field "$res" files)"
  tar -tzf "$res/files/gpucheck-logs.tar.gz" 2>/dev/null | sed 's|^gpucheck-logs/||' >"$res.logs"
}
n_rows() { echo $(($(grep -c '^| ' "$1/files/summary.md") - 2)); }  # rows of the table, not its header
all_files() { [ "$(field "$1" files)" = "gpucheck-logs.tar.gz summary.md summary.txt" ]; }
has_logs() {  # RESULT_DIR LOG...: every LOG is in the returned archive
  local res=$1 log
  shift
  for log in "$@"; do grep -qx "$log" "$res.logs" || { echo "   missing from the archive: $log"; return 1; }; done
}
every_log=(console.log environment.txt ldd.txt nvidia-smi.txt nvidia-smi-q.txt device-probe.log mpi_smoke.log
           test_cuda_ops.log test_cuda_ops_gpt2.log zt_throughput.log nccl_np1.log cuda_zero_np1.log
           sanitizer_probe.log cuda_zero_np4.log ckpt_roundtrip.log train_zero3_np4.log torch_compile.log
           zt_throughput_no_copies.log zt_throughput_fp32_attention.log zt_throughput_dkv3.log torch_eager.log)

# 1. A hang (deaf to SIGTERM), a crash, a rank left behind, compute-sanitizer refusing the device.
check_run faults 60 ZT_CHECK_TIME_SCALE=0.1 FAKE_SANITIZER=refuse \
  ZT_CHECK_FAULT=\"gpt2:hang zero1:crash nccl:orphan\"
r=$tmp/faults
check "faults: exit 1, not killed" [ "$(field "$r" rc)" = 1 ] && [ "$(field "$r" timed_out)" = false ]
check "faults: summary.md, summary.txt and the logs archive come back" all_files "$r"
check "faults: all 22 rows" [ "$(n_rows "$r")" = 22 ]
check "faults: the hang is a TIMEOUT" [ "$(result_of "$r" "one step at GPT-2 124M shapes")" = TIMEOUT ]
check "faults: the crash is a FAIL naming SIGSEGV" grep -q "FAIL .*SIGSEGV" <<<"$(row "$r" "ZeRO on CUDA vs CPU, 1")"
check "faults: the orphaning step is a TIMEOUT" [ "$(result_of "$r" "NCCL single-rank smoke test")" = TIMEOUT ]
check "faults: its leftover process was killed before the next step" \
  grep -q "TIMEOUT .*killed what it left running (pid [0-9]*)" <<<"$(row "$r" "NCCL single-rank smoke test")"
check "faults: refused sanitizer is SKIP, with the reason" \
  grep -q "SKIP .*Device not supported" <<<"$(row "$r" "compute-sanitizer runs on this device")"
check "faults: racecheck and memcheck SKIP" [ "$(result_of "$r" "compute-sanitizer racecheck on attention")" = SKIP ] &&
  [ "$(result_of "$r" "compute-sanitizer memcheck on the op tests (subset)")" = SKIP ]
check "faults: the steps after them ran" [ "$(result_of "$r" "PyTorch eager, same model and step, bf16")" = measured ] \
  &&
  [ "$(result_of "$r" "trainer: 4-rank ZeRO-3 on the shared GPU (--comm mpi)")" = PASS ]
check "faults: every log in the archive" has_logs "$r" "${every_log[@]}"
check "faults: the table is in the output's tail" grep -q "complete" "$r/output_tail.txt"

# 2. The whole command killed at its limit while a step hangs: the summary as it stood, the logs packed before.
check_run killed 14 ZT_CHECK_TIME_SCALE=0.1 ZT_CHECK_FAULT=ops:hang
r=$tmp/killed
check "killed: rc 137, timed out" [ "$(field "$r" rc)" = 137 ] && [ "$(field "$r" timed_out)" = true ]
check "killed: summary.md, summary.txt and the logs archive come back" all_files "$r"
check "killed: all 22 rows, the running step named" [ "$(n_rows "$r")" = 22 ] &&
  grep -q "running CUDA op tests" "$r/files/summary.md"
check "killed: the finished steps' results" [ "$(result_of "$r" "bundled Open MPI: 2-rank smoke test")" = PASS ]
check "killed: the logs so far, the running step's too" \
  has_logs "$r" console.log environment.txt device-probe.log mpi_smoke.log test_cuda_ops.log
check "killed: the table is in the output's tail" grep -q "^== GPU check:" "$r/output_tail.txt"

# 3. The budget cuts a step: "not run", not a failure; later steps are not run either.
check_run budget 60 ZT_CHECK_TIME_SCALE=0.1 ZT_CHECK_BUDGET_S=100 ZT_CHECK_FAULT=ops:hang
r=$tmp/budget
check "budget: exit 0" [ "$(field "$r" rc)" = 0 ]
check "budget: the cut step is 'not run', cut by the budget" \
  grep -q "not run .*cut at [0-9]*s by the time budget" <<<"$(row "$r" "CUDA op tests")"
check "budget: later steps not run" grep -q "not run .*the time budget is spent" <<<"$(row "$r" "PyTorch eager")"

# 4. No device: exit 3, still the summary and the logs.
check_run nodevice 60 ZT_CHECK_TIME_SCALE=0.1 FAKE_NO_DEVICE=1
r=$tmp/nodevice
check "no device: exit 3" [ "$(field "$r" rc)" = 3 ]
check "no device: summary and logs come back" all_files "$r" && has_logs "$r" device-probe.log nvidia-smi.txt
check "no device: every row says so" [ "$(grep -c "| not run |.*| no device |" "$r/files/summary.md")" = 21 ]

# 5. A GPU that ranks cannot share (compute mode left as found): those steps are not run, the rest pass.
check_run exclusive 60 ZT_CHECK_TIME_SCALE=0.1 FAKE_COMPUTE_MODE=Exclusive_Process
r=$tmp/exclusive
check "exclusive: exit 0" [ "$(field "$r" rc)" = 0 ]
check "exclusive: the 4-rank steps are not run, naming the compute mode" \
  [ "$(grep -c "| not run |.*compute mode Exclusive_Process" "$r/files/summary.md")" = 3 ]
check "exclusive: the sanitizer ran (PASS)" [ "$(result_of "$r" "compute-sanitizer racecheck on attention")" = PASS ]
check "exclusive: every other row passed or measured" \
  [ "$(grep -cE "^\| [^|]+ \| (PASS|measured|MET) \|" "$r/files/summary.md")" = 19 ]

# 6. SIGTERM during a step (a kill that gives warning): the step and what it started end, the summary says where it
#    stopped, the logs are packed, exit 143.
mkdir -p "$tmp/term"
env ZT_CHECK_BUNDLE="$tmp/fake/bundle" ZT_CHECK_REHEARSAL=1 ZT_PYTHON=python PATH="$tmp/fake/tools:$PATH" \
  ZT_CHECK_TIME_SCALE=0.1 ZT_CHECK_FAULT=ops:hang ZT_CHECK_SCRATCH="$tmp/term/scratch" \
  bash "$here/run_check.sh" "$tmp/term/out" >"$tmp/term.txt" 2>&1 &
pid=$!
for _ in $(seq 1 100); do  # until the step hangs
  grep -qs "injected fault: hanging" "$tmp/term/scratch/logs/test_cuda_ops.log" && break
  sleep 0.2
done
kill -TERM "$pid"
wait "$pid"
check "SIGTERM: exit 143" [ $? = 143 ]
check "SIGTERM: the summary names the stopped step" grep -q "| CUDA op tests .* | stopped |" \
  "$tmp/term/out/summary.md" &&
  grep -q "stopped by SIGTERM" "$tmp/term/out/summary.md"
check "SIGTERM: the logs are packed" tar -tzf "$tmp/term/out/gpucheck-logs.tar.gz" gpucheck-logs/test_cuda_ops.log \
  >/dev/null

# 7. A rerun of some steps (ZT_CHECK_ONLY): the device probe and the MPI smoke test run too, the rest is not selected.
env ZT_CHECK_BUNDLE="$tmp/fake/bundle" ZT_CHECK_REHEARSAL=1 ZT_PYTHON=python PATH="$tmp/fake/tools:$PATH" \
  ZT_CHECK_TIME_SCALE=0.1 ZT_CHECK_ONLY="ops torch_eager" bash "$here/run_check.sh" "$tmp/only/out" >/dev/null 2>&1
check "only: exit 0" [ $? = 0 ]
r=$tmp/only/out
ran="^\| (device probe|bundled Open MPI|CUDA op tests|one step at GPT-2|PyTorch eager)[^|]*\| (PASS|measured) \|"
check "only: probe, MPI, op tests and PyTorch eager ran" [ "$(grep -cE "$ran" "$r/summary.md")" = 5 ]
check "only: the other 16 rows are not selected" [ "$(grep -c "| not selected |" "$r/summary.md")" = 16 ]

# 8. No bundle carried, or a damaged one: exit 2, and summary.md says why.
mkdir -p "$tmp/nobundle" && cp -r "$tmp/fake/bundle" "$tmp/damaged"
ZT_CHECK_BUNDLE=$tmp/nobundle bash "$here/run_check.sh" "$tmp/nobundle/out" >/dev/null 2>&1
check "no bundle: exit 2, summary.md says it is missing" [ $? = 2 ] &&
  grep -q "not started: .* is missing: run bench/gpu/bundle.sh" "$tmp/nobundle/out/summary.md"
head -c 1000 "$tmp/fake/bundle/payload.tar.gz" >"$tmp/damaged/payload.tar.gz"
ZT_CHECK_BUNDLE=$tmp/damaged ZT_CHECK_REHEARSAL=1 bash "$here/run_check.sh" "$tmp/damaged/out" >/dev/null 2>&1
check "damaged bundle: exit 2, summary.md says it did not unpack" [ $? = 2 ] &&
  grep -q "not started: the bundle did not unpack" "$tmp/damaged/out/summary.md"

[[ $failed == 0 ]] && echo "PASSED: run_check.sh brings its summary and logs back whatever fails"
exit $failed
