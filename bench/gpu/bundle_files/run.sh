#!/usr/bin/env bash
# Runs a bundled binary with the bundle's libraries: run.sh NAME [ARGS...] (NAME in bin/).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/env.sh"
export LD_LIBRARY_PATH="$ZT_BUNDLE_LIBRARY_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$ZT_BUNDLE_ROOT/bin/$1" "${@:2}"
