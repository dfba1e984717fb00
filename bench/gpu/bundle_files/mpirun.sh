#!/usr/bin/env bash
# The bundled Open MPI mpirun with the bundle's libraries (its ranks inherit them):
# mpirun.sh -np 4 "$ZT_BUNDLE_ROOT/bin/zerotrain" ...
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/env.sh"
export LD_LIBRARY_PATH="$ZT_BUNDLE_LIBRARY_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$ZT_MPIRUN" "$@"
