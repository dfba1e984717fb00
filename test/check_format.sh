#!/usr/bin/env bash
# Fails when a tracked C++/CUDA source differs from what clang-format makes of it (.clang-format at the top).
# Prints each unformatted file with the first lines clang-format would change; fix with:
#   git ls-files '*.cpp' '*.hpp' '*.cu' '*.cuh' | xargs clang-format -i
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v clang-format >/dev/null || { echo "clang-format not found (launch/install-deps.sh installs it)"; exit 1; }
bad=0
files=$(git ls-files '*.cpp' '*.hpp' '*.cu' '*.cuh' 2>/dev/null || find core sharding ckpt cuda launch bench test \
  \( -name '*.cpp' -o -name '*.hpp' -o -name '*.cu' -o -name '*.cuh' \))
n=0
for f in $files; do
  n=$((n + 1))
  if ! out=$(clang-format --dry-run -Werror "$f" 2>&1); then
    bad=$((bad + 1))
    echo "unformatted: $f"
    echo "$out" | head -6 | sed 's/^/  /'
  fi
done
echo "check_format: $((n - bad)) of $n files formatted ($(clang-format --version | head -1))"
[ "$bad" -eq 0 ]
