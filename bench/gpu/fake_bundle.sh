#!/usr/bin/env bash
# A fake GPU bundle for run_check.sh's own test (check_test.sh): DIR/bundle holds the real env.sh, run.sh and
# mpirun.sh around stand-in programs that print what the real ones print when they pass, at once; DIR/tools holds
# stand-ins for nvidia-smi, compute-sanitizer (FAKE_SANITIZER=refuse: "Device not supported", then error 999) and
# the Python that runs the checkpoint and PyTorch steps. FAKE_NO_DEVICE=1: no GPU anywhere; FAKE_COMPUTE_MODE: what
# nvidia-smi reports (Default). Nothing here touches a GPU.
#
# Usage: bench/gpu/fake_bundle.sh DIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=${1:?usage: fake_bundle.sh DIR}
stage=$dir/stage
mkdir -p "$stage/bin" "$stage/lib" "$stage/mpi/bin" "$dir/bundle" "$dir/tools"

# One program, its part chosen by its name.
cat >"$stage/bin/fake_program" <<'PROGRAM'
#!/usr/bin/env bash
name=$(basename "$0")
rank=${OMPI_COMM_WORLD_RANK:-0}
((rank == 0)) || exit 0
case $name in
  test_cuda_ops)
    [[ ${FAKE_NO_DEVICE:-0} == 1 ]] && { echo "SKIPPED: no CUDA device"; exit 77; }
    echo "CUDA device 0: Fake GPU (bench/gpu/fake_bundle.sh)"
    # Catch2 exits with the number of test cases it listed.
    if [[ " $* " == *" --list-tests "* ]]; then
      printf 'All available test cases:\n  matmul\n  attention\n2 test cases\n'
      exit 2
    fi
    echo "All tests passed (42 assertions in 3 test cases)" ;;
  test_cuda_zero | test_nccl_comm) echo "All tests passed (10 assertions in 2 test cases)" ;;
  gpt2_cuda_bench)
    echo "device memory in use after one step: 10.00 GiB"
    echo "zt_tokens_per_s=1000.0"
    echo "zt_mfu=0.6000 (1.0 TFLOP/s of 1.0 peak)"
    echo "where a step's time goes (2 profiled steps; each op timed between synchronizations):"
    echo "op               calls  ms/step  share"
    echo "matmul_backward     48     20.0  50.0%"
    echo "matmul_forward      48     10.0  25.0%"
    echo "attention_backward  12      5.0  12.5%"
    echo "total                      40.0 100.0%" ;;
  zerotrain)
    if [[ " $* " == *" --device cpu "* ]]; then
      echo "done: 2 steps in 0:00:01, loss 5.5000 -> 5.4000"
    else
      echo "device cuda:0 Fake GPU"
      echo "done: 60 steps in 0:00:10, loss 5.5000 -> 3.0000"
    fi ;;
  *) echo "fake_program: no part named $name" >&2; exit 2 ;;
esac
PROGRAM
chmod +x "$stage/bin/fake_program"
for name in test_cuda_ops test_cuda_zero test_nccl_comm gpt2_cuda_bench zerotrain; do
  ln -s fake_program "$stage/bin/$name"
done
# mpirun: -np N copies of the program at once, each with its rank, like Open MPI's local launch.
cat >"$stage/mpi/bin/mpirun" <<'MPIRUN'
#!/usr/bin/env bash
np=1
while (($#)); do
  case $1 in
    -np | -n) np=$2; shift 2 ;;
    --bind-to | -x) shift 2 ;;
    --*) shift ;;
    *) break ;;
  esac
done
pids=()
for ((r = 0; r < np; r++)); do OMPI_COMM_WORLD_RANK=$r OMPI_COMM_WORLD_SIZE=$np "$@" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
MPIRUN
chmod +x "$stage/mpi/bin/mpirun"
tar -czf "$dir/bundle/payload.tar.gz" -C "$stage" .
cp "$here/bundle_files/env.sh" "$here/bundle_files/run.sh" "$here/bundle_files/mpirun.sh" "$dir/bundle/"
echo "kind: fake bundle (bench/gpu/fake_bundle.sh): stand-in programs for run_check.sh's own test" \
  >"$dir/bundle/MANIFEST.txt"

cat >"$dir/tools/nvidia-smi" <<'SMI'
#!/usr/bin/env bash
if [[ ${FAKE_NO_DEVICE:-0} == 1 ]]; then
  echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
  exit 9
fi
case "$*" in
  -q) echo "Compute Mode                          : ${FAKE_COMPUTE_MODE:-Default}" ;;
  --query-gpu=*) echo "Fake GPU, 580.00, ${FAKE_COMPUTE_MODE:-Default}, 81559 MiB" ;;
  *) echo "| 0  Fake GPU  |" ;;
esac
SMI
cat >"$dir/tools/compute-sanitizer" <<'SAN'
#!/usr/bin/env bash
echo "========= COMPUTE-SANITIZER"
if [[ ${FAKE_SANITIZER:-ok} == refuse ]]; then
  echo "========= Device not supported"
  echo "test_cuda_ops: CUDA error 999 (unknown error) at cudaMalloc"
  exit 1
fi
tool=memcheck
while [[ $1 == --* ]]; do
  [[ $1 == --tool ]] && tool=$2
  shift 2
done
"$@" || exit
[[ $tool == racecheck ]] && echo "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)" ||
  echo "========= ERROR SUMMARY: 0 errors"
SAN
cat >"$dir/tools/python" <<'PY'
#!/usr/bin/env bash
case "$1" in
  *ckpt_device_roundtrip.py) echo "PASSED" ;;
  *torch_gpt2_cuda.py) echo "torch_tokens_per_s=900.0" ;;
  *) echo "fake python: no part for $1" >&2; exit 2 ;;
esac
PY
chmod +x "$dir/tools/nvidia-smi" "$dir/tools/compute-sanitizer" "$dir/tools/python"
