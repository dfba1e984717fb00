#!/usr/bin/env bash
# The GPU check: one command on a lent GPU machine, of which only the files in its output folder and the last 12 KB
# of its output come back. Runs the bundled CUDA tests, ZeRO, NCCL, checkpoints, the trainer, GPT-2 124M throughput
# with its per-op profile, the PyTorch peer and compute-sanitizer, most informative first, each step under its own
# time limit inside one budget; prints the summary table after every step and keeps summary.md, summary.txt and
# gpucheck-logs.tar.gz (every log) current in OUTDIR throughout. README.md beside this file says more.
#
# Usage: bench/gpu/run_check.sh OUTDIR      (OUTDIR: the device tool's $OUT; needs bench/gpu/bundle/ from bundle.sh)
# Env:   ZT_CHECK_LIMIT_S (default 600: the limit the command runs under; the steps end 60 s before it),
#        ZT_CHECK_BUDGET_S (seconds for the steps; default ZT_CHECK_LIMIT_S - 60), ZT_PYTHON (default python3: the one
#        with PyTorch), BATCH (default 16), ZT_OPS_FILTER (a Catch2 filter for the op tests, e.g. "[attention]"),
#        ZT_CHECK_ONLY (a rerun of some steps, by group or step: mpi ops gpt2 throughput nccl zero zero1 zero4
#        sanitizer racecheck memcheck ckpt train torch variants), ZT_CHECK_SCRATCH (the work folder; default a new
#        one under TMPDIR, removed at the end unless ZT_CHECK_KEEP=1), ZT_CHECK_REHEARSAL=1 (accept a CUDA simulator
#        bundle: rehearses this script without a GPU).
#        The check's own test (check_test.sh) only: ZT_CHECK_BUNDLE (another bundle), ZT_CHECK_TIME_SCALE (every time
#        limit times this), ZT_CHECK_FAULT ("STEP:hang|crash|orphan|fail ...", faults injected in those steps).
# Exit:  0 every check that ran passed, 1 a check failed or ran past its own limit, 2 usage or no bundle, 3 no device.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bundle=${ZT_CHECK_BUNDLE:-$here/bundle}
outdir=${1:-}
[[ -n $outdir && $# == 1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
if ! mkdir -p "$outdir" || ! outdir=$(cd "$outdir" && pwd); then echo "run_check.sh: cannot create $1" >&2; exit 2; fi
# Before any step: the reason on stderr and, once OUTDIR exists, in OUTDIR/summary.md (what comes back).
not_started() {
  echo "run_check.sh: $*" >&2
  [[ -d ${outdir:-} ]] && printf 'GPU check: not started: %s\n' "$*" >"$outdir/summary.md"
  exit 2
}
python=${ZT_PYTHON:-python3}
batch=${BATCH:-16}
limit_s=${ZT_CHECK_LIMIT_S:-600}
budget_s=${ZT_CHECK_BUDGET_S:-$((limit_s - 60))}
for v in "ZT_CHECK_LIMIT_S=$limit_s" "ZT_CHECK_BUDGET_S=$budget_s" "BATCH=$batch"; do
  [[ ${v#*=} =~ ^[0-9]+$ ]] || not_started "$v is not a whole number of seconds (or sequences)"
done
((budget_s > 0)) || not_started "ZT_CHECK_BUDGET_S=$budget_s leaves no time for the steps"
[[ ${ZT_CHECK_TIME_SCALE:-1} =~ ^[0-9]*\.?[0-9]+$ ]] ||
  not_started "ZT_CHECK_TIME_SCALE=$ZT_CHECK_TIME_SCALE is not a number"

if [[ ! -f $bundle/run.sh || ! -f $bundle/payload.tar.gz ]]; then
  not_started "$bundle is missing: run bench/gpu/bundle.sh on the development machine first, and carry" \
    "bench/gpu/bundle (it is git-ignored) to this one"
fi
# A bundle of the CUDA simulator's programs (bundle.sh with ZT_BUNDLE_SIM=1), or the check test's stand-ins, would
# "pass" on any machine: only a rehearsal of this script may use one, and its table says so.
zt_rehearsal=""
bundle_kind=$(sed -n 's/^kind: //p' "$bundle/MANIFEST.txt" 2>/dev/null | head -1)
if [[ -n $bundle_kind ]]; then
  if [[ ${ZT_CHECK_REHEARSAL:-0} != 1 ]]; then
    not_started "$bundle is not a GPU bundle ($bundle_kind): rebuild it with bench/gpu/bundle.sh (or set" \
      "ZT_CHECK_REHEARSAL=1 to rehearse this script)"
  fi
  zt_rehearsal="rehearsal: ${bundle_kind%%:*}; CPU figures, not GPU results"
fi

# shellcheck source=check_lib.sh
source "$here/check_lib.sh"
zt_outdir=$outdir
zt_scale=${ZT_CHECK_TIME_SCALE:-1}
zt_scratch=${ZT_CHECK_SCRATCH:-$(mktemp -d "${TMPDIR:-/tmp}/zt-gpucheck.XXXXXX")}
# Everything worth keeping is in OUTDIR by any exit: the scratch folder goes, unless it was given or kept.
[[ ${ZT_CHECK_KEEP:-0} == 1 || -n ${ZT_CHECK_SCRATCH:-} ]] || trap 'rm -rf "$zt_scratch"' EXIT
zt_init
zt_deadline_ms=$(zt_ms "$budget_s")
rm -f "$outdir/summary.md" "$outdir/summary.txt" "$outdir/gpucheck-logs.tar.gz"

# The bundle's variables (ZT_BUNDLE_ROOT, ZT_BUNDLE_LIBRARY_PATH, the MPI settings); LD_LIBRARY_PATH stays this
# machine's: run.sh and mpirun.sh give the bundle's libraries to zerotrain's programs alone.
# shellcheck source=/dev/null
source "$bundle/env.sh"
[[ -x $ZT_BUNDLE_ROOT/bin/zerotrain ]] ||
  not_started "the bundle did not unpack into $ZT_BUNDLE_ROOT (a damaged payload.tar.gz?)"
# Python's output reaches its log as it is printed (a step killed at its limit keeps it); Open MPI as root.
export PYTHONUNBUFFERED=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun=("$bundle/mpirun.sh" --oversubscribe --bind-to none)
run=(bash "$bundle/run.sh")

# shellcheck source=check_steps.sh
source "$here/check_steps.sh"

register_rows
trap 'zt_on_signal TERM' TERM
trap 'zt_on_signal INT' INT
zt_kill_stale
write_environment
zt_packer_start

probe_device  # exits 3 when there is no device
mpi_smoke
step_ops
step_throughput
step_nccl
step_zero 1
step_sanitizer_probe
step_racecheck
step_zero 4
step_ckpt
step_train
step_torch torch_compile --compile
row_target
step_memcheck
step_variants
step_torch torch_eager

zt_state="complete"
zt_packer_stop
zt_print_summary
zt_pack_logs
zt_say "($(zt_whole_secs "$(zt_elapsed_ms)")s in all; $outdir holds summary.md, summary.txt and gpucheck-logs.tar.gz)"
exit $zt_failed
