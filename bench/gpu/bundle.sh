#!/usr/bin/env bash
# Builds the GPU check's binaries here (the development machine: nvcc, MPI, HDF5, ...) and bundles them with every
# shared library they load, plus a relocatable Open MPI runtime (mpirun, its plugins, PMIx), into
# bench/gpu/bundle/ (git-ignored, < 64 MiB) for a GPU machine that has the CUDA 13 driver but none of our other
# dependencies. The tree is packed into bundle/payload.tar.gz (OpenBLAS alone is 36 MiB unpacked); env.sh unpacks it
# once per machine. README.md beside this file lists what the bundle holds.
#
# Usage: bench/gpu/bundle.sh [BUILD_DIR]      (default: $ZT_BUILD_DIR, else <repo>/build-gpu)
# Env:   JOBS (parallel build jobs, default 1)
#        ZT_BUNDLE_SIM=1: bundle the CUDA simulator's builds of the same programs (test/cuda_sim/) instead, to rehearse
#        run_check.sh on a machine without a GPU (run_check.sh refuses such a bundle unless ZT_CHECK_REHEARSAL=1).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=${1:-${ZT_BUILD_DIR:-$repo/build-gpu}}
bundle=$here/bundle
jobs=${JOBS:-1}
targets=(test_cuda_ops gpt2_cuda_bench test_cuda_zero test_nccl_comm zerotrain)
# Where those targets are defined (found by name in the build tree, so only this message depends on it).
target_defs="test/cuda/CMakeLists.txt (the CUDA tests and their simulator builds) and bench/CMakeLists.txt (gpt2_cuda_bench)"
sim=${ZT_BUNDLE_SIM:-0}
suffix=""
[[ $sim == 1 ]] && suffix=_sim  # the simulator's programs, installed under the GPU programs' names
max_bytes=$((64 * 1024 * 1024))

die() { echo "bundle.sh: $*" >&2; exit 2; }
command -v nvcc >/dev/null || die "nvcc is not on PATH: the CUDA backend cannot be built on this machine"
command -v ompi_info >/dev/null || die "ompi_info is not on PATH: the Open MPI runtime cannot be located"

echo "== configure $build (CUDA on, sm_90)"
mkdir -p "$build"
cmake -S "$repo" -B "$build" -DZT_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 >"$build/bundle-configure.log" 2>&1 ||
  { cat "$build/bundle-configure.log" >&2; die "cmake configure failed"; }
echo "== build ${targets[*]/%/$suffix} (-j$jobs)"
if ! cmake --build "$build" -j"$jobs" --target "${targets[@]/%/$suffix}" >"$build/bundle-build.log" 2>&1; then
  tail -40 "$build/bundle-build.log" >&2
  grep -q "No rule to make target" "$build/bundle-build.log" &&
    echo "bundle.sh: a target is missing from this build: they are defined in $target_defs" >&2
  die "build failed (full log: $build/bundle-build.log)"
fi

# The tree to pack: bin/ (our binaries), lib/ (every library they and the MPI runtime load), mpi/ (an Open MPI
# installation prefix, relocated at run time with OPAL_PREFIX; mpi/pmix likewise with PMIX_PREFIX).
stage=$build/gpu-bundle-stage
rm -rf "$stage" "$bundle"
mkdir -p "$stage/bin" "$stage/lib" "$bundle"
for t in "${targets[@]}"; do
  exe=$(find "$build" -type f -name "$t$suffix" -perm -u+x | head -1)
  [[ -n $exe ]] || die "built target $t not found under $build"
  cp "$exe" "$stage/bin/$t"
  strip --strip-unneeded "$stage/bin/$t"
done

# Open MPI as this machine has it installed, mapped into mpi/ relative to its prefix.
ompi_path() { ompi_info --parsable --path all | sed -n "s/^path:$1://p" | head -1; }
ompi_prefix=$(ompi_path prefix)
ompi_pkglibdir=$(ompi_path pkglibdir)
ompi_pkgdatadir=$(ompi_path pkgdatadir)
ompi_bindir=$(ompi_path bindir)
for d in "$ompi_pkglibdir" "$ompi_pkgdatadir"; do
  [[ $d == "$ompi_prefix"/* && -d $d ]] || die "Open MPI directory $d is not under its prefix $ompi_prefix"
done
mpi=$stage/mpi
mkdir -p "$mpi/bin" "$mpi/${ompi_pkglibdir#"$ompi_prefix"/}" "$mpi/${ompi_pkgdatadir#"$ompi_prefix"/}"
orterun=$(readlink -f "$(command -v mpirun)")
[[ $(basename "$orterun") == orterun && -x $ompi_bindir/orted ]] ||
  die "mpirun is $orterun, not Open MPI 4's orterun (with orted beside it): bundle.sh knows only that layout"
cp "$orterun" "$mpi/bin/orterun"
cp "$ompi_bindir/orted" "$mpi/bin/orted"  # singleton starts (a binary run without mpirun) fork it
ln -s orterun "$mpi/bin/mpirun"
cp -r "$ompi_pkgdatadir/." "$mpi/${ompi_pkgdatadir#"$ompi_prefix"/}/"
# Plugins: everything but the network fabrics a single GPU machine does not use (InfiniBand verbs, UCX, libfabric,
# PSM) and OpenSHMEM; their libraries are large and, unbundled, would make Open MPI warn at every start.
skip_deps='lib(fabric|ucp|uct|ucs|ucm|ibverbs|rdmacm|psm|psm2|psm_infinipath|infinipath|oshmem|nl-3|nl-route-3)\.so'
n_plugins=0
for so in "$ompi_pkglibdir"/mca_*.so; do
  deps=$(ldd "$so")  # not piped into grep -q: with pipefail, ldd's SIGPIPE would hide a match
  grep -Eq "$skip_deps" <<<"$deps" && continue
  cp "$so" "$mpi/${ompi_pkglibdir#"$ompi_prefix"/}/"
  n_plugins=$((n_plugins + 1))
done
# PMIx (Open MPI's pmix ext3x plugin loads libpmix, which has its own plugins and help files).
pmix_lib=$(ldd "$ompi_pkglibdir/mca_pmix_ext3x.so" 2>/dev/null | awk '$1 ~ /^libpmix\.so/ { print $3 }')
if [[ -n $pmix_lib ]]; then
  pmix_prefix=$(dirname "$(dirname "$(readlink -f "$pmix_lib")")")
  [[ -d $pmix_prefix/lib/pmix ]] || die "PMIx prefix $pmix_prefix has no lib/pmix plugin directory"
  mkdir -p "$mpi/pmix/lib"
  cp -r "$pmix_prefix/lib/pmix" "$mpi/pmix/lib/"
  [[ -d $pmix_prefix/share ]] && cp -r "$pmix_prefix/share" "$mpi/pmix/"
fi

# Libraries left to the GPU machine: the C library family (any glibc >= this machine's runs these binaries), the
# driver (libcuda), and cuBLAS / cuBLASLt (over 500 MiB; the GPU machine's CUDA 13 toolkit or PyTorch's
# nvidia-cublas wheel has them, and env.sh finds them). NCCL (over 200 MiB) is not linked at all: zerotrain loads it
# at run time and env.sh finds it the same way. Everything else is copied.
is_left_to_host() {
  case "$1" in
    linux-vdso.so.* | ld-linux-x86-64.so.* | libc.so.* | libm.so.* | libdl.so.* | libpthread.so.* | librt.so.* | \
      libresolv.so.* | libutil.so.* | libcuda.so.* | libcublas.so.* | libcublasLt.so.*) return 0 ;;
  esac
  return 1
}
elf_files() { find "$stage/bin" "$mpi" -type f \( -name '*.so*' -o -perm -u+x \) -exec sh -c 'head -c4 "$1" | grep -q ELF' _ {} \; -print; }
while read -r f; do
  while read -r name path; do
    is_left_to_host "$name" && continue
    [[ -f $path ]] || die "$(basename "$f") needs $name, which does not resolve on this machine"
    [[ -f $stage/lib/$name ]] || cp -L "$path" "$stage/lib/$name"
  done < <(ldd "$f" | awk '$2 == "=>" { print $1, $3 }')
done < <(elf_files)
# Libraries of the copied libraries (ldd lists the whole closure, but a plugin's own dependencies only show when
# ldd runs on the plugin, done above): one more pass over lib/ catches anything still missing.
for f in "$stage"/lib/*; do
  while read -r name path; do
    is_left_to_host "$name" && continue
    [[ -f $stage/lib/$name ]] || cp -L "$path" "$stage/lib/$name"
  done < <(ldd "$f" | awk '$2 == "=>" { print $1, $3 }')
done

# env.sh (unpacks the payload once per machine, finds CUDA's own libraries there, relocates the MPI runtime), run.sh
# and mpirun.sh: the same files in every bundle (bundle_files/ beside this script).
cp "$here/bundle_files/env.sh" "$here/bundle_files/run.sh" "$here/bundle_files/mpirun.sh" "$bundle/"
chmod +x "$bundle/run.sh" "$bundle/mpirun.sh"

echo "== pack $stage -> $bundle/payload.tar.gz"
tar -czf "$bundle/payload.tar.gz" -C "$stage" .

# Prove the bundle resolves, from the packed payload as the GPU machine will unpack it: with run.sh's
# LD_LIBRARY_PATH nothing a binary or an MPI / PMIx plugin loads may be "not found", and everything but the
# libraries left to the GPU machine must come from the bundle (not from this machine's /usr, which hides a gap).
missing=0
(
  export ZT_BUNDLE_CACHE
  ZT_BUNDLE_CACHE=$(mktemp -d)
  trap 'rm -rf "$ZT_BUNDLE_CACHE"' EXIT
  source "$bundle/env.sh"
  export LD_LIBRARY_PATH=$ZT_BUNDLE_LIBRARY_PATH
  [[ -f $ZT_BUNDLE_ROOT/.complete ]] || exit 1
  [[ -n $ZT_CUBLAS_DIR ]] || echo "bundle.sh: note: no libcublasLt.so.13 on this machine; the GPU machine must have one"
  bad=0
  while read -r f; do
    while read -r name path; do
      if [[ $path == "not" ]]; then
        echo "bundle.sh: ${f#"$ZT_BUNDLE_ROOT"/} needs $name: not found" >&2
        bad=1
      elif ! is_left_to_host "$name" && [[ $path != "$ZT_BUNDLE_ROOT"/* ]]; then
        echo "bundle.sh: ${f#"$ZT_BUNDLE_ROOT"/} loads $name from $path, outside the bundle" >&2
        bad=1
      fi
    done < <(ldd "$f" | awk '$2 == "=>" { print $1, $3 }')
  done < <(find "$ZT_BUNDLE_ROOT/bin" "$ZT_BUNDLE_ROOT/lib" "$ZT_BUNDLE_ROOT/mpi" -type f \
             \( -name '*.so*' -o -perm -u+x \) -exec sh -c 'head -c4 "$1" | grep -q ELF' _ {} \; -print)
  exit $bad
) || missing=1
[[ $missing == 0 ]] || die "the bundle does not resolve every shared library"

total=$(du -sb "$bundle" | cut -f1)
unpacked=$(du -sb "$stage" | cut -f1)
{
  echo "zerotrain GPU bundle, built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  if rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null); then
    git -C "$repo" diff --quiet HEAD 2>/dev/null || rev="$rev + uncommitted changes"
  else
    rev="unknown (not a git checkout)"
  fi
  echo "source: $rev"
  echo "nvcc: $(nvcc --version | tail -1)"
  if [[ $sim == 1 ]]; then
    echo "kind: CUDA simulator rehearsal (test/cuda_sim/): every program runs its kernels on the CPU; not for a GPU"
  else
    echo "CUDA architectures: sm_90"
  fi
  echo "Open MPI: $(ompi_info --parsable 2>/dev/null | sed -n 's/^ompi:version:full://p') from $ompi_prefix, $n_plugins plugins"
  echo "left to the GPU machine: glibc family, libcuda (driver), libcublas.so.13 and libcublasLt.so.13 (CUDA 13);"
  echo "  libnccl.so.2 (optional, loaded at run time by --comm nccl and test_nccl_comm)"
  echo "total: $total bytes in the bundle, $unpacked bytes unpacked"
  echo
  echo "payload.tar.gz holds:"
  (cd "$stage" && find . \( -type f -o -type l \) -printf '%10s  %p\n' | sort -k2)
} >"$bundle/MANIFEST.txt"
(( total < max_bytes )) || die "the bundle is $total bytes, over the 64 MiB limit"
echo "== bundle ready: $bundle ($(( total / 1024 / 1024 )) MiB, $(( unpacked / 1024 / 1024 )) MiB unpacked); contents in $bundle/MANIFEST.txt"
