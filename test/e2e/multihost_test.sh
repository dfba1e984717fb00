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

# Unique names so parallel runs and anything else on the machine are never touched. The 10.250.77.0/24 addresses
# exist only on the veth ends inside these namespaces: no traffic leaves them.
tag=zt$$
ns1=${tag}n1 ns2=${tag}n2 veth1=${tag}a veth2=${tag}b
ip1=10.250.77.1 ip2=10.250.77.2 subnet=10.250.77.0/24
work=$(mktemp -d /tmp/zt-multihost.XXXXXX)

cleanup() {
  for ns in "$ns1" "$ns2"; do
    if ip netns list 2>/dev/null | grep -qw "$ns"; then
      # Anything still running inside (a hung orted or rank) goes first, or the namespace would linger.
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
      ip netns del "$ns" 2>/dev/null || echo "warning: could not delete netns $ns"
    fi
  done
  ip link del "$veth1" 2>/dev/null  # only exists if setup failed before moving it
  [ -n "${ZT_KEEP:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

skip() { echo "SKIPPED: $*"; exit 77; }
command -v ip >/dev/null || skip "the ip command (iproute2) is missing"
command -v unshare >/dev/null || skip "unshare (util-linux) is missing"
ip netns add "$ns1" 2>"$work/err" || skip "cannot create network namespaces here: $(cat "$work/err")"
ip netns add "$ns2" || skip "cannot create a second network namespace"
set -e
ip link add "$veth1" type veth peer name "$veth2"
ip link set "$veth1" netns "$ns1"
ip link set "$veth2" netns "$ns2"
ip -n "$ns1" addr add "$ip1/24" dev "$veth1"
ip -n "$ns2" addr add "$ip2/24" dev "$veth2"
for ns in "$ns1" "$ns2"; do ip -n "$ns" link set lo up; done
ip -n "$ns1" link set "$veth1" up
ip -n "$ns2" link set "$veth2" up
set +e
log "namespaces node1=$ns1 ($ip1), node2=$ns2 ($ip2) joined by $veth1<->$veth2"

fails=0
pass() { echo "ok: $1"; }
fail() { echo "FAIL: $1"; fails=$((fails + 1)); }

# The launch environment: Open MPI starts orteds through the agent and talks TCP over the veth subnet only.
export ZT_NETNS_MAP="node1=$ns1 node2=$ns2"
export OMPI_MCA_plm_rsh_agent=$AGENT
export OMPI_MCA_btl=self,tcp
export OMPI_MCA_btl_tcp_if_include=$subnet
export OMPI_MCA_oob_tcp_if_include=$subnet
export OMPI_MCA_pml=ob1
# The hostfiles claim 2 + 2 (and 3) slots on a machine that may have 2 cores: without yielding, ranks spinning in
# MPI starve the TCP stack and every collective crawls.
export OMPI_MCA_mpi_yield_when_idle=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
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
