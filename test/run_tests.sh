#!/usr/bin/env bash
# The whole test suite: installs missing Debian packages, builds (CUDA too when nvcc is present), runs CTest,
# then runs the unit and MPI tests once more under AddressSanitizer + UndefinedBehaviorSanitizer.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash launch/install-deps.sh
jobs=$(nproc)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

echo "== build (Release) =="
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >build-configure.log 2>&1 || { cat build-configure.log; exit 1; }
cmake --build build -j"$jobs"

if [ "${ZT_SKIP_SANITIZERS:-0}" != 1 ]; then
  echo "== build (ASan + UBSan, CPU only) =="
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DZT_SANITIZE=ON -DZT_ENABLE_CUDA=OFF \
    >build-asan-configure.log 2>&1 || { cat build-asan-configure.log; exit 1; }
  cmake --build build-asan -j"$jobs" --target zt_unit_tests test_comm test_zero
  echo "== unit + MPI tests under sanitizers =="
  # Open MPI's own allocations are reported as leaks at exit; leaks are not what this run looks for.
  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan -L 'unit|mpi' --output-on-failure -j1
fi

echo "== full suite =="
ctest --test-dir build --output-on-failure -j"$jobs"
