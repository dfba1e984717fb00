#!/usr/bin/env bash
# Builds the GPU check's binaries here (the development machine: nvcc, MPI, HDF5, ...) and bundles them with every
# shared library they load into bench/gpu/bundle/ (git-ignored, < 64 MiB) for a GPU machine that has the CUDA 13
# toolkit and driver but none of our other dependencies. README.md beside this file lists what the bundle holds.
#
# Usage: bench/gpu/bundle.sh [BUILD_DIR]      (default: $ZT_BUILD_DIR, else <repo>/build-gpu)
# Env:   JOBS (parallel build jobs, default 1)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=${1:-${ZT_BUILD_DIR:-$repo/build-gpu}}
bundle=$here/bundle
jobs=${JOBS:-1}
targets=(test_cuda_ops gpt2_cuda_bench)
max_bytes=$((64 * 1024 * 1024))

die() { echo "bundle.sh: $*" >&2; exit 2; }
command -v nvcc >/dev/null || die "nvcc is not on PATH: the CUDA backend cannot be built on this machine"

echo "== configure $build (CUDA on, sm_90)"
mkdir -p "$build"
cmake -S "$repo" -B "$build" -DZT_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 >"$build/bundle-configure.log" 2>&1 ||
  { cat "$build/bundle-configure.log" >&2; die "cmake configure failed"; }
echo "== build ${targets[*]} (-j$jobs)"
if ! cmake --build "$build" -j"$jobs" --target "${targets[@]}" >"$build/bundle-build.log" 2>&1; then
  tail -40 "$build/bundle-build.log" >&2
  grep -q "No rule to make target" "$build/bundle-build.log" &&
    echo "bundle.sh: the CUDA targets are defined in test/cuda/CMakeLists.txt; test/CMakeLists.txt must include it" >&2
  die "build failed (full log: $build/bundle-build.log)"
fi

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/lib"
for t in "${targets[@]}"; do
  exe=$(find "$build" -type f -name "$t" -perm -u+x | head -1)
  [[ -n $exe ]] || die "built target $t not found under $build"
  cp "$exe" "$bundle/bin/$t"
done

# Libraries left to the GPU machine: the C library family (any glibc >= this machine's runs these binaries), the
# driver (libcuda), and cuBLAS / cuBLASLt (over 500 MiB, more than the bundle may hold; the GPU machine's CUDA 13
# toolkit or PyTorch's nvidia-cublas wheel has them, and env.sh finds them). Everything else is copied.
is_left_to_host() {
  case "$1" in
    linux-vdso.so.* | ld-linux-x86-64.so.* | libc.so.* | libm.so.* | libdl.so.* | libpthread.so.* | librt.so.* | \
      libresolv.so.* | libutil.so.* | libcuda.so.* | libcublas.so.* | libcublasLt.so.*) return 0 ;;
  esac
  return 1
}
for exe in "$bundle"/bin/*; do
  while read -r name path; do
    is_left_to_host "$name" && continue
    [[ -f $path ]] || die "$(basename "$exe") needs $name, which does not resolve on this machine"
    [[ -f $bundle/lib/$name ]] || cp -L "$path" "$bundle/lib/$name"
  done < <(ldd "$exe" | awk '$2 == "=>" { print $1, $3 }')
done

# env.sh: the bundle's libraries first, then CUDA's own libraries from the machine it runs on.
cat >"$bundle/env.sh" <<'ENV'
# Sourced by run.sh and bench/gpu/run_check.sh: LD_LIBRARY_PATH = bundle/lib, then the directory holding this
# machine's libcublasLt.so.13 (ZT_CUDA_LIB_DIR, the CUDA toolkit, or PyTorch's nvidia wheels), then the old value.
zt_bundle_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
zt_find_cublas_dir() {
  local d
  for d in "${ZT_CUDA_LIB_DIR:-}" /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 \
           /usr/lib/x86_64-linux-gnu; do
    [[ -n $d && -e $d/libcublasLt.so.13 ]] && { echo "$d"; return 0; }
  done
  local py
  for py in python3 /usr/bin/python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    d=$("$py" - 2>/dev/null <<'PY'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
for root in roots:
    for hit in sorted(glob.glob(os.path.join(root, "nvidia", "**", "libcublasLt.so.13"), recursive=True)):
        print(os.path.dirname(hit)); raise SystemExit
PY
)
    [[ -n $d ]] && { echo "$d"; return 0; }
  done
  return 1
}
ZT_CUBLAS_DIR=$(zt_find_cublas_dir || true)
export ZT_CUBLAS_DIR
export LD_LIBRARY_PATH="$zt_bundle_dir/lib${ZT_CUBLAS_DIR:+:$ZT_CUBLAS_DIR}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ENV
cat >"$bundle/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs a bundled binary with the bundle's libraries: run.sh NAME [ARGS...] (NAME in bin/).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/env.sh"
exec "$here/bin/$1" "${@:2}"
RUN
chmod +x "$bundle/run.sh"

# Prove the bundle resolves: with env.sh's LD_LIBRARY_PATH nothing may be "not found".
missing=0
(
  source "$bundle/env.sh"
  [[ -n $ZT_CUBLAS_DIR ]] || echo "bundle.sh: note: no libcublasLt.so.13 on this machine; the GPU machine must have one"
  for exe in "$bundle"/bin/*; do
    if ldd "$exe" | grep -q "not found"; then
      echo "bundle.sh: $(basename "$exe") has unresolved libraries:" >&2
      ldd "$exe" | grep "not found" >&2
      exit 1
    fi
  done
) || missing=1
[[ $missing == 0 ]] || die "the bundle does not resolve every shared library"

total=$(du -sb "$bundle" | cut -f1)
{
  echo "zerotrain GPU bundle, built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  if rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null); then
    git -C "$repo" diff --quiet HEAD 2>/dev/null || rev="$rev + uncommitted changes"
  else
    rev="unknown (not a git checkout)"
  fi
  echo "source: $rev"
  echo "nvcc: $(nvcc --version | tail -1)"
  echo "CUDA architectures: sm_90"
  echo "left to the GPU machine: glibc family, libcuda (driver), libcublas.so.13 and libcublasLt.so.13 (CUDA 13)"
  echo "total: $total bytes"
  echo
  (cd "$bundle" && find . -type f -printf '%10s  %p\n' | sort -k2)
} >"$bundle/MANIFEST.txt"
(( total < max_bytes )) || die "the bundle is $total bytes, over the 64 MiB limit"
echo "== bundle ready: $bundle ($(( total / 1024 / 1024 )) MiB); contents in $bundle/MANIFEST.txt"
