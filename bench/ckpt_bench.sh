#!/usr/bin/env bash
# Checkpoint save/load bandwidth against the same directory's dd bandwidth (issue 4's benchmark; not a test).
#
# Model: preset gpt2 with --seq_len 64 (124.0M params; params + Adam m + v = 1.49 GB of state), ZeRO stage 3 so that
# 4 ranks fit in memory. For N in {1,2,4}: one training step, then the save ('saved ... in X s', which includes the
# fsync of the commit); caches dropped; a resume that runs no step ('loaded ... in X s'). Then the N=4 checkpoint
# is loaded on 3 ranks (re-partitioned) and on 4 ranks (same shape), both cold. Beside them, in the same directory:
# `dd if=/dev/zero bs=16M conv=fsync` of the checkpoint's size (write) and `dd` of that file to /dev/null after the
# cache drop (cold read, `load/dd`); and `dd` of model.h5 itself, cold, right after the load (`load/ddf`).
# Figures are defined in docs/performance.md, "Checkpoint bandwidth".
#
# Usage: bench/ckpt_bench.sh [dir]     (default: $ZT_BENCH_DIR or /tmp/zt_ckpt_bench; needs ~4 GB free there)
# Env:   ZT_BUILD_DIR (default <repo>/build), ZT_PYTHON (/usr/bin/python3), OMPI_MCA_io (ompio / romio321: passes
#        through to every run), ZT_CKPT_WRITE=hdf5 (save through H5Dwrite, to compare), NS ("1 2 4").
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${ZT_BUILD_DIR:-$repo/build}
python=${ZT_PYTHON:-/usr/bin/python3}
zerotrain=$build/zerotrain
dir=${1:-${ZT_BENCH_DIR:-/tmp/zt_ckpt_bench}}
ns=${NS:-1 2 4}
[[ -x $zerotrain ]] || { echo "ckpt_bench.sh: $zerotrain not found; build it or set ZT_BUILD_DIR" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
helper=$repo/bench/ckpt_bench_cache.py
rm -rf "$dir"
mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT
cores=$(nproc)

model=(--preset gpt2 --seq_len 64 --zero_stage 3 --micro_batch_size 1 --max_steps 1)
zt() {  # zt N args...: zerotrain on N ranks, threads = cores / N; a global batch of 12 on 3-4 ranks (the N=4
  local n=$1  # checkpoint must load on 3), else 4 (one step of 124M params stays short)
  shift
  local threads=$((cores / n > 0 ? cores / n : 1)) batch=$((n >= 3 ? 12 : 4))
  mpirun -np "$n" --oversubscribe --bind-to none "$zerotrain" train "${model[@]}" --global_batch_size $batch \
    --threads "$threads" "$@"
}
seconds() { sed -n "s/^$1 .* in \([0-9.]*\)s$/\1/p" | tail -1; }  # 'saved DIR in X s' / 'loaded DIR in X s'
ddw() {  # ddw FILE BYTES: write bandwidth (bytes/s) with fsync
  local count=$((($2 + 16777215) / 16777216))
  local t0 t1
  t0=$(date +%s.%N)
  dd if=/dev/zero of="$1" bs=16M count=$count conv=fsync status=none
  t1=$(date +%s.%N)
  echo "$count * 16777216 / ($t1 - $t0)" | bc -l
}
ddr() {  # ddr FILE: cold read bandwidth (bytes/s)
  local t0 t1
  t0=$(date +%s.%N)
  dd if="$1" of=/dev/null bs=16M status=none
  t1=$(date +%s.%N)
  echo "$(stat -c %s "$1") / ($t1 - $t0)" | bc -l
}
gbs() { echo "$1 / 1000000000" | bc -l | xargs printf '%.3f'; }
ratio() { echo "$1 / $2" | bc -l | xargs printf '%.2f'; }

echo "== $cores cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM, load average $(cut -d' ' -f1-3 /proc/loadavg)," \
     "file system $(df -T "$dir" | awk 'NR==2 {print $2" on "$1}'), OMPI_MCA_io=${OMPI_MCA_io:-default}"
echo "== cache drop: $("$python" "$helper" --method)"
printf '%-22s %10s %8s %9s %9s %8s %9s %9s %8s %8s\n' "run" "bytes" "save_s" "save_GB/s" "dd_w_GB/s" "save/dd" \
  "load_s" "load_GB/s" "load/dd" "load/ddf"
for n in $ns; do
  out=$dir/n$n
  log=$(zt "$n" --save_interval 1 --output_dir "$out" 2>&1) || { echo "$log"; exit 1; }
  save_s=$(seconds saved <<<"$log")
  ck=$out/checkpoint-1
  bytes=$(stat -c %s "$ck/model.h5")
  # dd in the same directory, same size, right after the save.
  w=$(ddw "$dir/ddtest" "$bytes")
  "$python" "$helper" --drop "$dir/ddtest" "$ck/model.h5"
  r=$(ddr "$dir/ddtest")
  "$python" "$helper" --drop "$dir/ddtest" "$ck/model.h5"
  log=$(zt "$n" --resume_from_checkpoint "$ck" --output_dir "$dir/r$n" 2>&1) || { echo "$log"; exit 1; }
  load_s=$(seconds loaded <<<"$log")
  # The same file read by dd, cold, right after the load: the same bytes at the same place on the device, and any
  # cache below the VM that the load warmed favours dd, not us.
  "$python" "$helper" --drop "$ck/model.h5"
  rf=$(ddr "$ck/model.h5")
  rm -f "$dir/ddtest"
  sbw=$(echo "$bytes / $save_s" | bc -l)
  lbw=$(echo "$bytes / $load_s" | bc -l)
  printf '%-22s %10s %8s %9s %9s %8s %9s %9s %8s %8s   (dd cold read GB/s: ddtest %s, model.h5 %s)\n' \
    "N=$n save, N=$n load" "$bytes" "$save_s" "$(gbs "$sbw")" "$(gbs "$w")" "$(ratio "$sbw" "$w")" "$load_s" \
    "$(gbs "$lbw")" "$(ratio "$lbw" "$r")" "$(ratio "$lbw" "$rf")" "$(gbs "$r")" "$(gbs "$rf")"
  [[ $n == 4 ]] || rm -rf "$out" "$dir/r$n"
done

if [[ " $ns " == *" 4 "* ]]; then
  ck=$dir/n4/checkpoint-1
  for n2 in 4 3 4 3; do  # alternated, twice, so drift in the machine's load shows
    "$python" "$helper" --drop "$ck/model.h5"
    log=$(zt "$n2" --resume_from_checkpoint "$ck" --output_dir "$dir/rp$n2" 2>&1) || { echo "$log"; exit 1; }
    echo "repartition: checkpoint of 4 ranks loaded on $n2 ranks (cold): $(seconds loaded <<<"$log") s"
    rm -rf "$dir/rp$n2"
  done
fi
