#!/usr/bin/env bash
# Multi-host launch for real: two network namespaces joined by a veth pair are two "nodes"; mpirun (in node1)
# starts 2 ranks on each over TCP through launch/zerotrain-mpirun.sh and a remote-shell agent that enters the
# namespace; the run saves a checkpoint, then training resumes on node1 alone with 3 ranks and finishes.
# Needs root (ip netns); prints SKIPPED and exits 77 where namespaces cannot be created.
set -uo pipefail
ZT=${ZEROTRAIN:?ZEROTRAIN must point at the zerotrain binary}
SRC=${ZT_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
MPIEXEC=${ZT_MPIEXEC:-mpirun}
AGENT=$SRC/test/e2e/multihost/netns-rsh
WRAPPER=$SRC/launch/zerotrain-mpirun.sh
t0=$SECONDS
log() { echo "[multihost +$((SECONDS - t0))s] $*"; }

# Unique names (zt$$) so parallel runs and anything else on the machine are never touched.
source "$SRC/test/e2e/multihost/netns.sh"
ip1=$ZT_NETNS_IP1 ip2=$ZT_NETNS_IP2
work=$(mktemp -d /tmp/zt-multihost.XXXXXX)

cleanup() {
  zt_netns_cleanup
  [ -n "${ZT_KEEP:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

zt_netns_setup "zt$$"
case $? in
  0) ;;
  77) echo "SKIPPED: $ZT_NETNS_ERROR"; exit 77 ;;
  *) echo "FAIL: $ZT_NETNS_ERROR"; exit 1 ;;
esac
log "namespaces node1=$ZT_NETNS_NS1 ($ip1), node2=$ZT_NETNS_NS2 ($ip2) joined by $ZT_NETNS_VETH1<->$ZT_NETNS_VETH2"

fails=0
pass() { echo "ok: $1"; }
fail() { echo "FAIL: $1"; fails=$((fails + 1)); }

# The launch environment: Open MPI starts orteds through the agent and talks TCP over the veth subnet only. The
# hostfiles claim 2 + 2 (and 3) slots on a machine that may have 2 cores (the helper sets yield_when_idle).
zt_netns_mpi_env
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export MPIRUN=$MPIEXEC ZT_BIN=$ZT
printf 'node1 slots=2\nnode2 slots=2\n' >"$work/hosts2"
printf 'node1 slots=3\n' >"$work/hosts1"

# Runs a command line on "node1" (mpirun itself lives there), bounded so a wedged launch cannot hang CI.
on_node1() { timeout -k 10 150 "$AGENT" node1 "$(printf '%q ' "$@")"; }

# 1. Placement: 2 ranks in each namespace, each seeing its own node's address.
on_node1 "$WRAPPER" --hostfile "$work/hosts2" --ranks-per-node 2 --dry-run -- train >"$work/cmd.txt"
log "launch command: $(cat "$work/cmd.txt")"
on_node1 "$MPIEXEC" --hostfile "$work/hosts2" --map-by ppr:2:node -np 4 \
  sh -c 'echo "$(hostname) $(ip -o -4 addr show | grep -o "10\.250\.77\.[0-9]*")"' >"$work/place.txt" 2>&1
sorted=$(sort "$work/place.txt" | tr '\n' ' ')
if [ "$sorted" = "node1 $ip1 node1 $ip1 node2 $ip2 node2 $ip2 " ]; then pass "2 ranks on each namespace node"
else fail "placement: expected 2 ranks per node, got: $(cat "$work/place.txt")"; fi

# 2. Training over both nodes: 4 ranks, ZeRO-2, stops after 10 of 20 steps with checkpoint-10.
out=$work/out
train=(train --max_steps 20 --save_interval 10 --zero_stage 2 --micro_batch_size 1 --global_batch_size 12
       --threads 1 --log_interval 5 --output_dir "$out")
log "training on 2 nodes x 2 ranks"
on_node1 "$WRAPPER" --hostfile "$work/hosts2" --ranks-per-node 2 -- "${train[@]}" --exit_after_steps 10 \
  >"$work/run1.log" 2>&1
rc=$?
if [ $rc = 0 ] && [ -f "$out/checkpoint-10/manifest.json" ] && [ "$(wc -l <"$out/metrics.jsonl")" = 10 ]; then
  pass "4 ranks on 2 nodes trained 10 steps and saved checkpoint-10"
else
  fail "2-node run: status $rc; log:"; cat "$work/run1.log"
fi
grep -q "on 4 rank(s)" "$work/run1.log" && pass "the run saw world size 4" || fail "no 'on 4 rank(s)' header"

# 3. Resume on node1 alone with 3 ranks: the checkpoint is re-partitioned from 4 to 3 ranks.
log "resuming on 1 node x 3 ranks"
on_node1 "$WRAPPER" --hostfile "$work/hosts1" --ranks-per-node 3 -- "${train[@]}" --resume_from_checkpoint latest \
  >"$work/run2.log" 2>&1
rc=$?
want="resumed from $out/checkpoint-10: step 10, world size 4 then 3 now, ZeRO stage 2 then 2 now"
if grep -qF "$want" "$work/run2.log"; then pass "resume line: $want"
else fail "no resume line '$want'; log:"; cat "$work/run2.log"; fi
last=$(tail -1 "$out/metrics.jsonl" 2>/dev/null | grep -o '"step":[0-9]*')
if [ $rc = 0 ] && [ "$last" = '"step":20' ] && [ -f "$out/checkpoint-20/manifest.json" ]; then
  pass "3-rank resume finished at step 20 with checkpoint-20"
else
  fail "resume run: status $rc, last metrics row $last; log:"; cat "$work/run2.log"
fi
on_node1 "$ZT" ckpt verify "$out/checkpoint-20" >"$work/verify.log" 2>&1 && pass "ckpt verify checkpoint-20" \
  || { fail "ckpt verify checkpoint-20:"; cat "$work/verify.log"; }

log "done, $fails failure(s)"
[ $fails = 0 ]
