#!/usr/bin/env bash
# Fails when a source file includes a project header from a layer above its own: core <- sharding <- ckpt <- launch,
# with cuda/ beside core (it implements core's backend and sharding's Comm contracts). The layer libraries' link
# check (CMakeLists.txt, *_layer_check) catches upward calls; this catches upward includes that need no symbol.
set -uo pipefail
cd "$(dirname "$0")/.."
declare -A allowed=(
  [core]="core"
  [sharding]="core sharding"
  [ckpt]="core sharding ckpt"
  [cuda]="core sharding cuda"
  [launch]="core sharding ckpt cuda launch"
)
bad=0
n=0
for layer in core sharding ckpt cuda launch; do
  while IFS=: read -r file line target; do
    [ -n "$file" ] || continue
    n=$((n + 1))
    if [[ " ${allowed[$layer]} " != *" $target "* ]]; then
      echo "$file:$line: $layer/ includes $target/ (a layer above it; allowed: ${allowed[$layer]})"
      bad=$((bad + 1))
    fi
  done < <(grep -rnoE '^#include "[a-z_]+/' "$layer" --include='*.cpp' --include='*.hpp' --include='*.cu' \
             --include='*.cuh' | sed -E 's|:#include "([a-z_]+)/$|:\1|')
done
echo "check_layers: $n project includes in core, sharding, ckpt, cuda, launch; $bad against the layering"
[ "$bad" -eq 0 ] && [ "$n" -gt 0 ]
