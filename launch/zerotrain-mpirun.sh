#!/usr/bin/env bash
# Multi-node launch: runs zerotrain under Open MPI's mpirun over a hostfile, N ranks per node, environment forwarded.
#
#   zerotrain-mpirun.sh --hostfile hosts.txt [--ranks-per-node N | --gpus-per-node G] -- train --output_dir out ...
#
# Everything after `--` is zerotrain's command line (subcommand first). The wrapper `exec`s mpirun, so its exit
# status is zerotrain's (0; 75 = preempted, checkpoint saved, requeue me; 74 = a checkpoint save failed) and a
# signal sent to the wrapper reaches mpirun, which forwards SIGUSR1/SIGUSR2 to every rank. A SIGTERM or Ctrl-C makes
# mpirun SIGTERM the ranks (zerotrain then saves) and SIGKILL them later: --kill-timeout. See docs/usage.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: zerotrain-mpirun.sh [OPTIONS] -- SUBCOMMAND [ZEROTRAIN ARGS...]

Options:
  --hostfile FILE       Open MPI hostfile, one node per line ("node07 slots=8"); without it: this node only
  --ranks-per-node N    Ranks on each node (default: --gpus-per-node, else the GPUs nvidia-smi sees here,
                        else the hostfile's slots / mpirun's default placement)
  --gpus-per-node G     One rank per GPU: G ranks per node; zerotrain binds rank -> GPU (local rank mod G)
  --np N                Total ranks (default: ranks-per-node x nodes in the hostfile)
  --bind-to WHAT        mpirun --bind-to (default: none, so each rank's --threads are free to use the cores)
  --kill-timeout S      When mpirun gets SIGTERM/SIGINT (or a rank fails) it waits S s, SIGTERMs the ranks, waits
                        S s more and SIGKILLs them (Open MPI's odls_base_sigkill_timeout, 1 s by default, which
                        kills a save). Default 10, or $OMPI_MCA_odls_base_sigkill_timeout; every non-zero exit
                        (75 included) also ends 2 x S later
  -x VAR                Forward one more environment variable (repeatable)
  --mpi-arg ARG         Pass one more argument to mpirun (repeatable):
                        --mpi-arg --mca --mpi-arg btl_tcp_if_include --mpi-arg eth0
  --dry-run             Print the mpirun command instead of running it
  -h, --help            This text

Environment: ZT_BIN (zerotrain binary; default: `zerotrain` on PATH, else next to this script or in ../build),
MPIRUN (default: mpirun). Forwarded to every rank when set: OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, PATH,
LD_LIBRARY_PATH, CUDA_VISIBLE_DEVICES and every ZT_*, OMPI_MCA_*, NCCL_*, UCX_* variable.
EOF
}

die() { echo "zerotrain-mpirun: $*" >&2; exit 2; }

hostfile="" ranks_per_node="" gpus_per_node="" np="" bind_to="none" dry_run=0 kill_timeout=""
extra_env=() mpi_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --hostfile) [ $# -ge 2 ] || die "--hostfile needs a file"; hostfile=$2; shift 2 ;;
    --ranks-per-node) [ $# -ge 2 ] || die "--ranks-per-node needs a number"; ranks_per_node=$2; shift 2 ;;
    --gpus-per-node) [ $# -ge 2 ] || die "--gpus-per-node needs a number"; gpus_per_node=$2; shift 2 ;;
    --np) [ $# -ge 2 ] || die "--np needs a number"; np=$2; shift 2 ;;
    --bind-to) [ $# -ge 2 ] || die "--bind-to needs a value"; bind_to=$2; shift 2 ;;
    --kill-timeout) [ $# -ge 2 ] || die "--kill-timeout needs seconds"; kill_timeout=$2; shift 2 ;;
    -x) [ $# -ge 2 ] || die "-x needs a variable name"; extra_env+=("$2"); shift 2 ;;
    --mpi-arg) [ $# -ge 2 ] || die "--mpi-arg needs a value"; mpi_args+=("$2"); shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (zerotrain's own arguments go after --; see --help)" ;;
  esac
done
[ $# -gt 0 ] || die "no zerotrain command after --, e.g. -- train --output_dir out"
for v in "$ranks_per_node" "$gpus_per_node" "$np" "$kill_timeout"; do
  [ -z "$v" ] || [[ "$v" =~ ^[1-9][0-9]*$ ]] || die "'$v' is not a positive whole number"
done

# The binary: explicit, on PATH, beside this script, or in the source tree's build/ directory.
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
zt_bin=${ZT_BIN:-}
if [ -z "$zt_bin" ]; then
  for c in "$(command -v zerotrain || true)" "$script_dir/zerotrain" "$script_dir/../build/zerotrain"; do
    if [ -n "$c" ] && [ -x "$c" ]; then zt_bin=$c; break; fi
  done
fi
[ -n "$zt_bin" ] && [ -x "$zt_bin" ] || die "zerotrain binary not found; set ZT_BIN"
# Ranks on other nodes exec the same path, so make it absolute (a shared filesystem is assumed).
zt_bin=$(cd "$(dirname "$zt_bin")" && pwd)/$(basename "$zt_bin")

# Ranks per node: asked for, else one per GPU (counted here; all nodes are assumed alike), else mpirun decides.
if [ -z "$ranks_per_node" ] && [ -n "$gpus_per_node" ]; then ranks_per_node=$gpus_per_node; fi
if [ -z "$ranks_per_node" ] && command -v nvidia-smi >/dev/null 2>&1; then
  n_gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  [ "${n_gpus:-0}" -gt 0 ] && ranks_per_node=$n_gpus
fi

cmd=("${MPIRUN:-mpirun}" --bind-to "$bind_to")
[ -n "$kill_timeout" ] || [ -n "${OMPI_MCA_odls_base_sigkill_timeout:-}" ] || kill_timeout=10
[ -z "$kill_timeout" ] || cmd+=(--mca odls_base_sigkill_timeout "$kill_timeout")
n_nodes=1
if [ -n "$hostfile" ]; then
  [ -r "$hostfile" ] || die "cannot read hostfile '$hostfile'"
  # Nodes = distinct first words of the non-comment lines.
  n_nodes=$(sed -e 's/#.*//' "$hostfile" | awk 'NF { print $1 }' | sort -u | wc -l)
  [ "$n_nodes" -gt 0 ] || die "hostfile '$hostfile' lists no nodes"
  cmd+=(--hostfile "$hostfile")
fi
if [ -n "$ranks_per_node" ]; then
  cmd+=(--map-by "ppr:${ranks_per_node}:node")
  [ -n "$np" ] || np=$((ranks_per_node * n_nodes))
fi
[ -z "$np" ] || cmd+=(-np "$np")

# Environment forwarding: mpirun starts remote ranks with a bare environment unless told with -x.
fwd=()
for v in OMP_NUM_THREADS OPENBLAS_NUM_THREADS PATH LD_LIBRARY_PATH CUDA_VISIBLE_DEVICES; do
  [ -z "${!v+set}" ] || fwd+=("$v")
done
while IFS= read -r v; do fwd+=("$v"); done < <(compgen -e | grep -E '^(ZT_|OMPI_MCA_|NCCL_|UCX_)' || true)
fwd+=("${extra_env[@]+"${extra_env[@]}"}")
for v in "${fwd[@]+"${fwd[@]}"}"; do cmd+=(-x "$v"); done

cmd+=("${mpi_args[@]+"${mpi_args[@]}"}" "$zt_bin" "$@")
if [ "$dry_run" = 1 ]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
exec "${cmd[@]}"
