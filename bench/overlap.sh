#!/usr/bin/env bash
# How much communication the ZeRO stages hide behind compute, measured over a tc-shaped link between two "nodes".
#
# Usage (root): bench/overlap.sh [--rates LIST] [--stages LIST] [--steps N] [--warmup N] [--micro_batch B]
#                                [--preset P] [--variants LIST] [--out DIR] [--quick]
#   --rates        comma-separated tc rates of the link, "unlimited" for none (default unlimited,1gbit,400mbit,200mbit;
#                  an unshaped veth carries 0.3-0.8 GB/s here, so 10gbit would shape nothing)
#   --stages       ZeRO stages (default 0,1,2,3)
#   --steps        measured steps per run, after --warmup steps (default 8 after 2)
#   --micro_batch  sequences per rank per step (default 4); --preset the model (default small); --bucket_mb the
#                  --zero_bucket_mb of every run (default 32: one part per unit of `small`)
#   --variants     which engine runs the 2-node step (default overlap; comma-separated): overlap (as built), before
#                  (as before issue 16 item 5: both switches below), no_thread (OMPI_MCA_btl_tcp_progress_thread=0:
#                  Open MPI's TCP progress thread off) or blocking (ZT_TEST_BLOCKING_PARAMS_GATHER=1: stages 1-2 wait
#                  for the optimizer step's parameter all-gather at once instead of in the next forward)
#   --out          where overlap.csv, overlap.json and overlap.png go (default docs/)
#   --quick        one stage (2), one rate (400mbit), micro-batch 8, 5 steps after 1, no plot: the CTest `overlap`
#                  (later arguments override these)
# Env: ZT_BUILD_DIR (default <repo>/build: zerotrain, bench/overlap_comm), ZT_MPIEXEC (mpirun), ZT_PYTHON.
#
# Two network namespaces joined by a veth pair (test/e2e/multihost/netns.sh) are the nodes, one rank on each with one
# thread, so the two ranks' compute has a core each on a 2-core machine and does not fight for them. Per rate, both
# veth ends get a `tbf` qdisc (each shapes what its node sends). Per stage it measures:
#   step     median step time of `zerotrain train` on the 2 ranks (metrics.jsonl)
#   compute  the same step without communication: two 1-rank runs at once, one per node, each with the 2-rank run's
#            micro-batch (the same per-rank compute, both cores as busy); the slower median of the two
#   comm     bench/overlap_comm step: the same step's collectives (same parts, bytes, order and waits) with every
#            model and optimizer op a no-op, on the same shaped link
#   hidden = (compute + comm - step) / comm: the share of the communication the overlap hid
# and per rate the link itself (bench/overlap_comm link: all_gather sweep, α-β fit, the rate the largest achieved).
# Everything it creates (namespaces, veths, qdiscs, files in a temporary directory) is removed on exit, also on
# failure or Ctrl-C. Prints SKIPPED and exits 77 where namespaces or tc are unavailable.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${ZT_BUILD_DIR:-$repo/build}
python=${ZT_PYTHON:-/usr/bin/python3}
mpiexec=${ZT_MPIEXEC:-mpirun}
rates=unlimited,1gbit,400mbit,200mbit stages=0,1,2,3 steps=8 warmup=2 micro_batch=4 preset=small out=$repo/docs
variants=overlap bucket_mb=32
plot=1
while (($#)); do
  case $1 in
    --quick) rates=400mbit stages=2 steps=5 warmup=1 micro_batch=8 plot=0; shift; continue ;;
  esac
  [[ $1 == --* && $# -ge 2 ]] || { echo "overlap.sh: bad argument '$1' (see the usage at the top of $0)" >&2; exit 2; }
  case $1 in
    --rates) rates=$2 ;;
    --stages) stages=$2 ;;
    --steps) steps=$2 ;;
    --warmup) warmup=$2 ;;
    --micro_batch) micro_batch=$2 ;;
    --preset) preset=$2 ;;
    --bucket_mb) bucket_mb=$2 ;;
    --variants) variants=$2 ;;
    --out) out=$2 ;;
    *) echo "overlap.sh: unknown argument '$1' (see the usage at the top of $0)" >&2; exit 2 ;;
  esac
  shift 2
done
for v in ${variants//,/ }; do
  [[ $v =~ ^(overlap|before|no_thread|blocking)$ ]] || { echo "overlap.sh: unknown variant '$v'" >&2; exit 2; }
done
zerotrain=$build/zerotrain comm_bench=$build/bench/overlap_comm
for exe in "$zerotrain" "$comm_bench"; do
  [[ -x $exe ]] || { echo "overlap.sh: $exe not found; build it or set ZT_BUILD_DIR" >&2; exit 2; }
done
skip() { echo "SKIPPED: $*"; exit 77; }
command -v tc >/dev/null || skip "tc (iproute2) is missing"

source "$repo/test/e2e/multihost/netns.sh"
tmp=$(mktemp -d /tmp/zt-overlap.XXXXXX)
cleanup() {
  zt_netns_cleanup
  [ -n "${ZT_KEEP:-}" ] && echo "kept $tmp" || rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
zt_netns_setup "zt$$"
case $? in
  0) ;;
  77) skip "$ZT_NETNS_ERROR" ;;
  *) echo "overlap.sh: $ZT_NETNS_ERROR" >&2; exit 1 ;;
esac
# tc must work inside the namespaces too (a qdisc the kernel lacks, or a container without NET_ADMIN there).
tc -n "$ZT_NETNS_NS1" qdisc add dev "$ZT_NETNS_VETH1" root tbf rate 1gbit burst 128kb latency 50ms 2>"$tmp/err" ||
  skip "cannot shape the veth link with tc tbf: $(cat "$tmp/err")"
tc -n "$ZT_NETNS_NS1" qdisc del dev "$ZT_NETNS_VETH1" root
set -e
zt_netns_mpi_env
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
agent=$ZT_NETNS_DIR/netns-rsh
printf 'node1 slots=1\nnode2 slots=1\n' >"$tmp/hosts"
log() { echo "[overlap +${SECONDS}s] $*"; }

# Runs a command on a node (its network namespace), bounded so a wedged launch cannot hang.
on_node() { local node=$1; shift; timeout -k 10 300 "$agent" "$node" "$(printf '%q ' "$@")"; }
mpi2() { on_node node1 "$mpiexec" --hostfile "$tmp/hosts" --map-by ppr:1:node --bind-to none -np 2 "$@"; }
train_args() {  # $1 stage, $2 ranks, $3 output dir
  echo --preset "$preset" --zero_stage "$1" --micro_batch_size "$micro_batch" --global_batch_size \
    $((micro_batch * $2)) --threads 1 --max_steps $((warmup + steps)) --save_interval 0 --eval_interval 0 \
    --log_interval 1000 --zero_bucket_mb "$bucket_mb" --output_dir "$3"
}
# Shapes what each node sends at `rate` (both directions then run at it), or removes the shaping.
shape() {
  local rate=$1 ns dev burst
  for pair in "$ZT_NETNS_NS1 $ZT_NETNS_VETH1" "$ZT_NETNS_NS2 $ZT_NETNS_VETH2"; do
    read -r ns dev <<<"$pair"
    tc -n "$ns" qdisc del dev "$dev" root 2>/dev/null || true
    [[ $rate == unlimited ]] && continue
    # A bucket of 1 ms at the rate (at least 64 KB, one GSO segment): large enough for the rate, small beside a
    # transfer; 50 ms of queue before tbf drops.
    burst=$("$python" -c "import sys; r=sys.argv[1]; m={'gbit':1e9,'mbit':1e6,'kbit':1e3}; \
u=[k for k in m if r.endswith(k)][0]; print(max(65536, int(float(r[:-len(u)])*m[u]/8/1000)))" "$rate")
    tc -n "$ns" qdisc add dev "$dev" root tbf rate "$rate" burst "$burst" latency 50ms
  done
}

raw=$tmp/raw.jsonl  # one record per measurement; bench/overlap_report.py turns them into the table and the plot
IFS=, read -r -a stage_list <<<"$stages"
IFS=, read -r -a rate_list <<<"$rates"
IFS=, read -r -a variant_list <<<"$variants"
log "load before: $(uptime)"
# Compute-only: 1 rank on each node at once (no communication at world size 1), the 2-rank run's micro-batch each.
# Measured beside each 2-node run rather than once, so both see the same load from whatever else the machine runs.
compute_only() {  # $1 stage, $2 rate (a label)
  local node pid pids=() dir=$tmp/c$1$2
  for node in node1 node2; do
    # shellcheck disable=SC2046
    on_node "$node" "$mpiexec" -np 1 --bind-to none "$zerotrain" train $(train_args "$1" 1 "$dir$node") \
      >"$dir$node.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || { echo "overlap.sh: a compute-only run (stage $1) failed:" >&2; cat "$dir"*.log >&2; exit 1; }
  done
  printf '{"kind": "compute", "rate": "%s", "stage": %s, "metrics": ["%s", "%s"], "log": "%s"}\n' "$2" "$1" \
    "${dir}node1/metrics.jsonl" "${dir}node2/metrics.jsonl" "${dir}node1.log" >>"$raw"
}
for rate in "${rate_list[@]}"; do
  shape "$rate"
  link=$(mpi2 "$comm_bench" link)
  echo "{\"kind\": \"link_run\", \"rate\": \"$rate\", \"result\": $link}" >>"$raw"
  for stage in "${stage_list[@]}"; do
    compute_only "$stage" "$rate"
    comm=$(mpi2 "$comm_bench" step "$preset" "$stage" "$micro_batch" "$steps" "$bucket_mb")
    echo "{\"kind\": \"comm\", \"rate\": \"$rate\", \"stage\": $stage, \"result\": $comm}" >>"$raw"
    for variant in "${variant_list[@]}"; do
      case $variant in
        overlap) env_args=() ;;
        before) env_args=(-x ZT_TEST_BLOCKING_PARAMS_GATHER=1 -x OMPI_MCA_btl_tcp_progress_thread=0) ;;
        no_thread) env_args=(-x OMPI_MCA_btl_tcp_progress_thread=0) ;;
        blocking) env_args=(-x ZT_TEST_BLOCKING_PARAMS_GATHER=1) ;;
      esac
      run=$tmp/t$stage$rate$variant
      # shellcheck disable=SC2046
      mpi2 "${env_args[@]}" "$zerotrain" train $(train_args "$stage" 2 "$run") >"$run.log" 2>&1 ||
        { echo "overlap.sh: the 2-node run (stage $stage, $rate) failed:" >&2; cat "$run.log" >&2; exit 1; }
      printf '{"kind": "train", "rate": "%s", "stage": %s, "variant": "%s", "metrics": ["%s"], "log": "%s"}\n' \
        "$rate" "$stage" "$variant" "$run/metrics.jsonl" "$run.log" >>"$raw"
    done
    log "rate $rate stage $stage done"
  done
done
shape unlimited
log "load after: $(uptime)"
mkdir -p "$out"
plot_flag=()
((plot)) && plot_flag=(--plot "$out/overlap.png")
"$python" "$repo/bench/overlap_report.py" "$raw" --warmup "$warmup" --load "$(uptime)" --csv "$out/overlap.csv" \
  --json "$out/overlap.json" "${plot_flag[@]}"
