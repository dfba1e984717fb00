# shellcheck shell=bash
# The GPU bundle's environment (bench/gpu/bundle_files/env.sh, copied into the bundle by bundle.sh), sourced by
# run.sh, mpirun.sh and bench/gpu/run_check.sh. Unpacks payload.tar.gz once (into
# $ZT_BUNDLE_CACHE/zt-gpu-bundle-<checksum>, by default under TMPDIR or /tmp) and exports:
#   ZT_BUNDLE_ROOT           the unpacked tree (bin/, lib/, mpi/)
#   ZT_BUNDLE_LIBRARY_PATH   the bundle's lib, then the directories of this machine's libcublasLt.so.13 and (when the
#                            loader's cache lacks it) libcuda.so.1. Not LD_LIBRARY_PATH: run.sh and mpirun.sh put it
#                            there for zerotrain's own programs only, so that Python, PyTorch and the compilers
#                            torch.compile runs keep this machine's libstdc++, libzstd and the rest.
#   ZT_CUBLAS_DIR, ZT_CUDA_DRIVER_DIR, ZT_NCCL_LIBRARY (libnccl.so.2; unset when there is none), ZT_MPIRUN
# and the Open MPI / PMIx settings for one machine without network or ssh (each one only where it is not set yet).
zt_bundle_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
zt_bundle_sum=$(cksum <"$zt_bundle_dir/payload.tar.gz" | cut -d' ' -f1)
# The first of TMPDIR (or /tmp), ~/.cache and the bundle directory itself where binaries may be executed (a noexec
# /tmp is common). Not the bundle directory first: unpacked there it would travel with the next carry of the bundle.
zt_exec_ok() {
  mkdir -p "$1" 2>/dev/null && cp /bin/true "$1/.zt_exec_probe.$$" 2>/dev/null && "$1/.zt_exec_probe.$$"
  local ok=$?
  rm -f "$1/.zt_exec_probe.$$" 2>/dev/null
  return $ok
}
if [[ -z ${ZT_BUNDLE_CACHE:-} ]]; then
  for zt_dir in "${TMPDIR:-/tmp}" "${HOME:-/nonexistent}/.cache" "$zt_bundle_dir"; do
    if zt_exec_ok "$zt_dir"; then ZT_BUNDLE_CACHE=$zt_dir; break; fi
  done
fi
ZT_BUNDLE_ROOT=${ZT_BUNDLE_CACHE:-${TMPDIR:-/tmp}}/zt-gpu-bundle-$zt_bundle_sum
# Unpacked beside its final name and renamed into place, so that two jobs starting at once never run a half-unpacked
# tree: the rename of the second fails on the first's complete one, which is the same.
if [[ ! -f $ZT_BUNDLE_ROOT/.complete ]]; then
  zt_partial=$ZT_BUNDLE_ROOT.partial.$$
  if mkdir -p "$zt_partial" && tar -xzf "$zt_bundle_dir/payload.tar.gz" -C "$zt_partial" &&
    touch "$zt_partial/.complete"; then
    [[ -e $ZT_BUNDLE_ROOT && ! -f $ZT_BUNDLE_ROOT/.complete ]] && rm -rf "$ZT_BUNDLE_ROOT"  # an older broken unpack
    mv -T "$zt_partial" "$ZT_BUNDLE_ROOT" 2>/dev/null
  fi
  rm -rf "$zt_partial"
  [[ -f $ZT_BUNDLE_ROOT/.complete ]] ||
    echo "env.sh: could not unpack $zt_bundle_dir/payload.tar.gz into $ZT_BUNDLE_ROOT" >&2
fi
export ZT_BUNDLE_ROOT
zt_find_cuda_lib() {  # NAME: the directory holding NAME on this machine
  local d
  for d in "${ZT_CUDA_LIB_DIR:-}" /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
           /usr/local/cuda-13*/lib64 /usr/lib/x86_64-linux-gnu; do
    [[ -n $d && -e $d/$1 ]] && { echo "$d"; return 0; }
  done
  local py
  for py in python3 /usr/bin/python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    d=$("$py" - "$1" 2>/dev/null <<'PY'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
for root in roots:
    for hit in sorted(glob.glob(os.path.join(root, "nvidia", "**", sys.argv[1]), recursive=True)):
        print(os.path.dirname(hit)); raise SystemExit
PY
)
    [[ -n $d ]] && { echo "$d"; return 0; }
  done
  return 1
}
# The driver's libcuda.so.1: found by the loader's cache on most machines; some images mount the driver elsewhere
# (/usr/local/nvidia/lib64) and reach it only through an LD_LIBRARY_PATH that the check must not depend on.
zt_find_driver_lib() {
  local ldconfig d
  ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
  d=$("$ldconfig" -p 2>/dev/null | awk '$1 == "libcuda.so.1" && /x86-64/ { print $NF; exit }')
  if [[ -n $d ]]; then echo "loader cache: $d"; return 0; fi
  for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/cuda/compat; do
    [[ -e $d/libcuda.so.1 ]] && { echo "$d"; return 0; }
  done
  return 1
}
ZT_CUBLAS_DIR=$(zt_find_cuda_lib libcublasLt.so.13 || true)
ZT_CUDA_DRIVER_DIR=$(zt_find_driver_lib || true)
export ZT_CUBLAS_DIR ZT_CUDA_DRIVER_DIR
if [[ -z ${ZT_NCCL_LIBRARY:-} ]]; then
  zt_nccl_dir=$(zt_find_cuda_lib libnccl.so.2 || true)
  [[ -n $zt_nccl_dir ]] && export ZT_NCCL_LIBRARY=$zt_nccl_dir/libnccl.so.2
fi
ZT_BUNDLE_LIBRARY_PATH=$ZT_BUNDLE_ROOT/lib${ZT_CUBLAS_DIR:+:$ZT_CUBLAS_DIR}
[[ -n $ZT_CUDA_DRIVER_DIR && $ZT_CUDA_DRIVER_DIR != "loader cache: "* ]] &&
  ZT_BUNDLE_LIBRARY_PATH=$ZT_BUNDLE_LIBRARY_PATH:$ZT_CUDA_DRIVER_DIR
export ZT_BUNDLE_LIBRARY_PATH
# Open MPI finds its plugins and help files under OPAL_PREFIX instead of the build machine's paths. PMIx was built
# with absolute directories, so each one is set (and its plugin search path, which otherwise names the build
# machine's directory and warns at every start).
export OPAL_PREFIX="$ZT_BUNDLE_ROOT/mpi"
zt_pmix=$ZT_BUNDLE_ROOT/mpi/pmix
export PMIX_PREFIX=$zt_pmix PMIX_INSTALL_PREFIX=$zt_pmix PMIX_LIBDIR=$zt_pmix/lib PMIX_PKGLIBDIR=$zt_pmix/lib/pmix \
  PMIX_DATAROOTDIR=$zt_pmix/share PMIX_DATADIR=$zt_pmix/share PMIX_PKGDATADIR=$zt_pmix/share/pmix \
  PMIX_SYSCONFDIR=$zt_pmix/share PMIX_MCA_mca_base_component_path=$zt_pmix/lib/pmix
export ZT_MPIRUN="$ZT_BUNDLE_ROOT/mpi/bin/mpirun"
# One machine, no network, maybe no ssh (a bare GPU machine has none of these set up):
# - plm isolated: mpirun and singleton starts fork their ranks here; the default (rsh) gives up when no ssh or rsh
#   is installed, even for local ranks ("plm_rsh_agent ... could not be found").
# - btl self,vader and pml ob1: ranks talk through shared memory only; oob over loopback: mpirun and its ranks too.
# - vader without cross-process memory attach (refused in containers without CAP_SYS_PTRACE), and its backing
#   files in TMPDIR where /dev/shm is not writable.
# - PMIx: the hash datastore (the shared-memory ones fail in some containers) and native security (no munge daemon).
# - no warnings about the fabrics that were left out of the bundle.
export OMPI_MCA_plm=${OMPI_MCA_plm:-isolated} OMPI_MCA_btl=${OMPI_MCA_btl:-self,vader} \
  OMPI_MCA_pml=${OMPI_MCA_pml:-ob1} OMPI_MCA_oob_tcp_if_include=${OMPI_MCA_oob_tcp_if_include:-lo} \
  OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none} \
  OMPI_MCA_btl_base_warn_component_unused=${OMPI_MCA_btl_base_warn_component_unused:-0} \
  PMIX_MCA_gds=${PMIX_MCA_gds:-hash} PMIX_MCA_psec=${PMIX_MCA_psec:-native}
[[ -w /dev/shm ]] ||
  export OMPI_MCA_btl_vader_backing_directory=${OMPI_MCA_btl_vader_backing_directory:-${TMPDIR:-/tmp}}
