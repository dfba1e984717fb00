#!/usr/bin/env bash
# Runs the bundle (bench/gpu/bundle.sh's output) as on a bare GPU machine, here on the development machine: in a
# private mount namespace the system's Open MPI, PMIx, HDF5, OpenBLAS and the other libraries the bundle carries are
# hidden, and ssh (a bare GPU machine may have none: Open MPI's default launcher then refuses to start even local
# ranks), then the bundled mpirun starts a 4-rank zerotrain (CPU, ZeRO-3, a checkpoint save and a resume), a singleton
# `zerotrain ckpt verify`, and every CUDA test binary (which must reach "SKIPPED: no CUDA device" here). Any file
# opened from the hidden paths, or any MPI start-up warning, fails the test. Needs root (unshare -m); exit 77 without.
#
# Usage: bench/gpu/bundle_selftest.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bundle=$here/bundle
[[ -f $bundle/env.sh ]] || { echo "bundle_selftest.sh: no bundle: run bench/gpu/bundle.sh first" >&2; exit 2; }
if [[ $(id -u) != 0 ]] || ! unshare -m --propagation private true 2>/dev/null; then
  echo "SKIPPED: needs root and unshare -m to hide the system libraries"
  exit 77
fi

if [[ ${1:-} != --inside ]]; then
  exec unshare -m --propagation private bash "$0" --inside
fi

# ---- inside the namespace: hide what a bare GPU machine does not have ----
hidden=(/usr/lib/x86_64-linux-gnu/openmpi /usr/lib/x86_64-linux-gnu/pmix2 /usr/share/openmpi /etc/openmpi
        /usr/lib/x86_64-linux-gnu/openblas-pthread /usr/lib/x86_64-linux-gnu/hdf5)
for d in "${hidden[@]}"; do if [[ -d $d ]]; then mount -t tmpfs none "$d"; fi; done
hidden_files=()
for pattern in 'libmpi*.so*' 'libopen-rte.so*' 'libopen-pal.so*' 'libpmix.so*' 'libhdf5*.so*' 'libopenblas*.so*' \
               'libfmt.so*' 'libxxhash.so*' 'libhwloc.so*' 'libevent*.so*' 'libmca_common*.so*' 'libmunge.so*' \
               'libsz.so*' 'libaec.so*'; do
  while read -r f; do
    real=$(readlink -f "$f" || true)
    [[ -f $real ]] || continue
    mount --bind /dev/null "$real"
    hidden_files+=("$real")
  done < <(find /usr/lib/x86_64-linux-gnu -maxdepth 1 -name "$pattern")
done
for f in /usr/bin/orterun /usr/bin/orted /usr/bin/ssh /usr/bin/rsh; do
  if [[ -f $f ]]; then mount --bind /dev/null "$f"; fi
done
echo "hidden: ${hidden[*]}, /usr/bin/orterun, /usr/bin/orted, ssh and ${#hidden_files[@]} libraries"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
export ZT_BUNDLE_CACHE
ZT_BUNDLE_CACHE=$(mktemp -d)
work=$(mktemp -d)
trap 'rm -rf "$ZT_BUNDLE_CACHE" "$work"' EXIT
# shellcheck source=/dev/null
source "$bundle/env.sh"
export LD_LIBRARY_PATH=$ZT_BUNDLE_LIBRARY_PATH  # what run.sh and mpirun.sh give the bundle's programs
zt=$ZT_BUNDLE_ROOT/bin/zerotrain
failed=0
step() {  # NAME CMD...: runs CMD under strace; fails on a non-zero exit, an open of a hidden path, or a warning
  local name=$1
  shift
  local rc=0
  rm -rf "$work/trace" && mkdir -p "$work/trace"
  strace -ff -qq -e trace=openat,execve -o "$work/trace/t" "$@" >"$work/out" 2>&1 || rc=$?
  # Files opened (successfully) from the build machine's MPI / PMIx / HDF5 / OpenBLAS paths: the bundle leaks.
  local leaks
  leaks=$(cat "$work"/trace/t.* | grep -E '= [0-9]+$' |
            grep -E "/usr/lib/x86_64-linux-gnu/(openmpi|pmix2|openblas|hdf5|libmpi|libopen-|libpmix|libhdf5)|/usr/share/openmpi|/usr/bin/orte" |
            head -3 || true)
  if [[ $rc != "${expect_rc:-0}" || -n $leaks ]] ||
       grep -iE "warning|not found|error" "$work/out" | grep -qv "zerotrain: warning: resuming"; then
    echo "FAIL: $name (exit $rc, expected ${expect_rc:-0})"
    sed 's/^/    /' "$work/out" | tail -20
    [[ -n $leaks ]] && echo "    opened from the build machine's paths: $leaks"
    failed=1
  else
    echo "ok: $name"
  fi
  return 0
}
step "4 ranks, CPU, ZeRO-3, save" "$ZT_MPIRUN" -np 4 --oversubscribe --bind-to none "$zt" train --device auto \
  --zero_stage 3 --max_steps 3 --save_interval 3 --micro_batch_size 2 --threads 1 --quiet --output_dir "$work/run"
step "2 ranks resume at ZeRO-1" "$ZT_MPIRUN" -np 2 --oversubscribe --bind-to none "$zt" train --device cpu \
  --zero_stage 1 --max_steps 4 --save_interval 4 --threads 1 --quiet --resume_from_checkpoint latest \
  --output_dir "$work/run"
grep -q "resumed from" "$work/out" || { echo "FAIL: the 2-rank run did not resume from the 4-rank checkpoint"; failed=1; }
step "singleton ckpt verify" "$zt" ckpt verify "$work/run/checkpoint-4"
step "zerotrain devices" "$ZT_MPIRUN" -np 1 "$zt" devices
expect_rc=77
for t in test_cuda_ops test_cuda_zero test_nccl_comm; do
  step "$t reaches 'no device'" "$ZT_MPIRUN" -np 1 "$ZT_BUNDLE_ROOT/bin/$t"
  grep -q "SKIPPED: no CUDA device" "$work/out" || { echo "FAIL: $t did not say SKIPPED: no CUDA device"; failed=1; }
done
expect_rc=0
[[ $failed == 0 ]] && echo "PASSED: the bundle runs with the system's MPI, HDF5 and OpenBLAS hidden"
exit $failed
