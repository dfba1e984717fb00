#!/usr/bin/env bash
# The whole test suite: installs missing Debian packages, builds (CUDA too when nvcc is present), runs CTest,
# then runs the unit and MPI tests (and the CUDA simulator's kernel tests) once more under AddressSanitizer +
# UndefinedBehaviorSanitizer.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# Seconds per phase, printed last (also when a phase fails): CI's time budget is watched from this line.
phases="" t_phase=$SECONDS
phase() { phases+="${phases:+, }$1 $((SECONDS - t_phase)) s"; t_phase=$SECONDS; }
trap 'echo "run_tests: ${phases:-nothing finished}; ${SECONDS} s in all"' EXIT
bash launch/install-deps.sh
phase dependencies
jobs=$(nproc)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

echo "== build (Release) =="
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >build-configure.log 2>&1 || { cat build-configure.log; exit 1; }
cmake --build build -j"$jobs"
phase build

if [ "${ZT_SKIP_SANITIZERS:-0}" != 1 ]; then
  echo "== build (ASan + UBSan, CPU only) =="
  # -O1 with line tables only (-g1: file and line in the reports): the sanitizer build is the slowest part of CI, and
  # this halves it against -O2 -g at the cost of somewhat slower tests.
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" \
    -DZT_SANITIZE=ON -DZT_ENABLE_CUDA=OFF >build-asan-configure.log 2>&1 || { cat build-asan-configure.log; exit 1; }
  # With the CUDA headers there, the CUDA simulator too (test/cuda_sim/): every kernel under the sanitizers, which
  # name any read or write outside a device allocation or the launch's shared memory by its kernel's source line.
  targets=(zt_unit_tests test_comm test_zero test_run_dir test_zero_memory)
  labels='unit|mpi'
  # (grep without -q reads all of the list: with pipefail, an early exit would fail the pipeline through SIGPIPE)
  if cmake --build build-asan --target help | grep test_cuda_ops_sim >/dev/null; then
    targets+=(test_cuda_sim test_cuda_ops_sim)
    labels='unit|mpi|cuda_sim'
  fi
  cmake --build build-asan -j"$jobs" --target "${targets[@]}"
  phase "sanitizer build"
  echo "== unit + MPI tests (and the CUDA simulator's op tests) under sanitizers =="
  # Open MPI's own allocations are reported as leaks at exit; leaks are not what this run looks for. The
  # simulator's 4-rank ZeRO test, GPT-2-sized step (9 min under ASan), CLI and bench runs are left to the full
  # suite (their kernels are these).
  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan -L "$labels" -E 'cuda_sim_(zero|ckpt|bench|gpt2|loss)' --output-on-failure -j"$jobs"
  phase "sanitizer tests"
fi

echo "== full suite =="
ctest --test-dir build --output-on-failure -j"$jobs"
phase suite
