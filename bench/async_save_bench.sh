#!/usr/bin/env bash
# Async checkpoint save benchmark: how long a checkpoint stalls training with --async_save against a synchronous save,
# same model, ranks and disk. Runs of the same job (synchronous saves / --async_save, a save every SAVE_INTERVAL steps
# and at the end) print, per checkpoint:
#   sync save s   "saved DIR in Y s": the step is blocked for the whole collective HDF5 write + fsync + commit;
#   async stall s "checkpoint-N: step blocked X s for the host copy": everything the training loop waits for: a
#                 previous write still in flight, the hand-over to the writer thread, and the rest of the shard's copy
#                 to host memory when the next optimizer step is about to change the shard (the writer thread makes
#                 the copy while the next forward/backward runs);
# and the headline ratio median(X) / median(Y) (target: <= 5%). A third run without saves gives whole-run wall times,
# so the cost the overlap leaves (the writer thread using the cores training also uses) is visible too.
# Usage: bench/async_save_bench.sh [OUTPUT_PARENT_DIR]   (env: ZEROTRAIN, NP, THREADS, PRESET, STEPS, SAVE_INTERVAL,
#        EXTRA="--n_layer 8 --d_model 512")
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
ZT=${ZEROTRAIN:-$here/build/zerotrain}
MPIEXEC=${ZT_MPIEXEC:-mpirun}
NP=${NP:-2}
THREADS=${THREADS:-1}
PRESET=${PRESET:-small}
STEPS=${STEPS:-32}
SAVE_INTERVAL=${SAVE_INTERVAL:-8}
EXTRA=${EXTRA:-}
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
parent=${1:-${TMPDIR:-/tmp}}
work=$(mktemp -d "$parent/zt_async_bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

# shellcheck disable=SC2206
base=("$MPIEXEC" -np "$NP" --oversubscribe --bind-to none "$ZT" train --preset "$PRESET" $EXTRA --threads "$THREADS"
      --micro_batch_size 4 --global_batch_size 8 --max_steps "$STEPS" --log_interval 1000)
echo "command: ${base[*]} [--save_interval $SAVE_INTERVAL [--async_save]] --output_dir DIR"
echo "output on: $(df -h "$work" | awk 'NR==2 {print $1 " (" $2 ")"}'), $(nproc) cores"
declare -A wall
for mode in none sync async; do
  flags=(--save_interval "$SAVE_INTERVAL")
  [ $mode = none ] && flags=(--save_interval 0)
  [ $mode = async ] && flags+=(--async_save)
  t0=$(date +%s.%N)
  "${base[@]}" "${flags[@]}" --output_dir "$work/$mode" >"$work/$mode.log" 2>&1 ||
    { echo "run '$mode' failed:"; tail -20 "$work/$mode.log"; exit 1; }
  wall[$mode]=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
  if [ $mode = sync ]; then
    grep -m1 ' params$' "$work/sync.log" | sed 's/.*| //; s/^/model: /'
    echo "checkpoint size: $(du -sh "$work/sync/checkpoint-$SAVE_INTERVAL" | cut -f1)"
  fi
  rm -rf "${work:?}/$mode"/checkpoint-*  # the same empty disk for both runs
done

mapfile -t sync_s < <(sed -n 's/^saved .* in \([0-9.]*\)s$/\1/p' "$work/sync.log")
mapfile -t async_s < <(sed -n 's/^checkpoint-[0-9]*: step blocked \([0-9.]*\)s for the host copy.*/\1/p' "$work/async.log")
n=${#sync_s[@]}
[ "$n" -gt 0 ] && [ "$n" -eq "${#async_s[@]}" ] || { echo "parsed $n sync and ${#async_s[@]} async saves"; exit 1; }
printf '%-12s %12s %16s\n' checkpoint "sync save s" "async stall s"
for ((i = 0; i < n; ++i)); do
  step=$(( (i + 1) * SAVE_INTERVAL )); [ $step -gt "$STEPS" ] && step=$STEPS
  printf '%-12s %12s %16s\n' "$step" "${sync_s[$i]}" "${async_s[$i]}"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ms=$(median "${sync_s[@]}") ma=$(median "${async_s[@]}")
ratio=$(awk -v a="$ma" -v s="$ms" 'BEGIN { printf "%.2f", 100 * a / s }')
echo "whole-run wall time: no saves ${wall[none]} s, sync saves ${wall[sync]} s, async saves ${wall[async]} s" \
  "(async - none: the cost left after overlap, incl. the writer competing with training for the cores)"
echo "median: sync save ${ms} s, async stall ${ma} s -> stall = ${ratio}% of the synchronous save (target <= 5%)"
awk -v r="$ratio" 'BEGIN { exit !(r <= 5) }' && echo "PASS: stall <= 5% of the synchronous save" ||
  { echo "MISS: stall above 5% of the synchronous save"; exit 2; }
