# Two network namespaces joined by a veth pair as two "nodes" for mpirun over TCP; sourced by the multihost test and
# bench/overlap.sh (bash). Needs root. Names carry a tag (zt$$) so concurrent users never touch each other's.
#
#   zt_netns_setup TAG       creates ${TAG}n1/${TAG}n2 joined by ${TAG}a<->${TAG}b; returns 77 (with the reason
#                            in ZT_NETNS_ERROR) where namespaces cannot be created, another status on other failures
#   zt_netns_mpi_env         exports the Open MPI environment that launches ranks on node1/node2 through netns-rsh
#   zt_netns_cleanup         kills what still runs inside, deletes both namespaces (and with them the veth pair and
#                            any qdisc on it); safe to call twice, or after a setup that failed half-way
ZT_NETNS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The 10.250.77.0/24 addresses exist only on the veth ends inside these namespaces: no traffic leaves them.
ZT_NETNS_IP1=10.250.77.1 ZT_NETNS_IP2=10.250.77.2 ZT_NETNS_SUBNET=10.250.77.0/24
ZT_NETNS_NS1="" ZT_NETNS_NS2="" ZT_NETNS_VETH1="" ZT_NETNS_VETH2="" ZT_NETNS_ERROR=""

zt_netns_setup() {
  local tag=$1 err
  ZT_NETNS_NS1=${tag}n1 ZT_NETNS_NS2=${tag}n2 ZT_NETNS_VETH1=${tag}a ZT_NETNS_VETH2=${tag}b
  command -v ip >/dev/null || { ZT_NETNS_ERROR="the ip command (iproute2) is missing"; return 77; }
  command -v unshare >/dev/null || { ZT_NETNS_ERROR="unshare (util-linux) is missing"; return 77; }
  if ! err=$(ip netns add "$ZT_NETNS_NS1" 2>&1); then
    ZT_NETNS_ERROR="cannot create network namespaces here: $err"
    return 77
  fi
  ip netns add "$ZT_NETNS_NS2" || { ZT_NETNS_ERROR="cannot create a second network namespace"; return 77; }
  ip link add "$ZT_NETNS_VETH1" type veth peer name "$ZT_NETNS_VETH2" &&
    ip link set "$ZT_NETNS_VETH1" netns "$ZT_NETNS_NS1" &&
    ip link set "$ZT_NETNS_VETH2" netns "$ZT_NETNS_NS2" &&
    ip -n "$ZT_NETNS_NS1" addr add "$ZT_NETNS_IP1/24" dev "$ZT_NETNS_VETH1" &&
    ip -n "$ZT_NETNS_NS2" addr add "$ZT_NETNS_IP2/24" dev "$ZT_NETNS_VETH2" &&
    ip -n "$ZT_NETNS_NS1" link set lo up && ip -n "$ZT_NETNS_NS2" link set lo up &&
    ip -n "$ZT_NETNS_NS1" link set "$ZT_NETNS_VETH1" up && ip -n "$ZT_NETNS_NS2" link set "$ZT_NETNS_VETH2" up ||
    { ZT_NETNS_ERROR="could not join $ZT_NETNS_NS1 and $ZT_NETNS_NS2 by a veth pair"; return 1; }
}

zt_netns_mpi_env() {
  export ZT_NETNS_MAP="node1=$ZT_NETNS_NS1 node2=$ZT_NETNS_NS2"
  export OMPI_MCA_plm_rsh_agent=$ZT_NETNS_DIR/netns-rsh
  export OMPI_MCA_btl=self,tcp
  export OMPI_MCA_btl_tcp_if_include=$ZT_NETNS_SUBNET
  export OMPI_MCA_oob_tcp_if_include=$ZT_NETNS_SUBNET
  export OMPI_MCA_pml=ob1
  # More ranks than cores: without yielding, ranks spinning in MPI starve the TCP stack and every collective crawls.
  export OMPI_MCA_mpi_yield_when_idle=1
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
}

zt_netns_cleanup() {
  local ns pid
  for ns in "$ZT_NETNS_NS1" "$ZT_NETNS_NS2"; do
    [ -n "$ns" ] || continue
    if ip netns list 2>/dev/null | grep -qw "$ns"; then
      # Anything still running inside (a hung orted or rank) goes first, or the namespace would linger.
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
      ip netns del "$ns" 2>/dev/null || echo "warning: could not delete netns $ns"
    fi
  done
  # Only exists if setup failed before moving it into a namespace.
  if [ -n "$ZT_NETNS_VETH1" ]; then ip link del "$ZT_NETNS_VETH1" 2>/dev/null || true; fi
}
