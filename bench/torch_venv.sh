#!/usr/bin/env bash
# Makes (once) and names the PyTorch 2.x venv the throughput bench compares against; prints its python or why not.
#
# Usage: bench/torch_venv.sh          prints the venv's python on stdout (exit 0), or the reason on stderr (exit 3)
# Env:   ZT_TORCH_VENV (default ~/.cache/zerotrain/venv-torch), ZT_VENV_PYTHON (the python that makes it, python3)
# A clean venv (no --system-site-packages) with PyPI's default torch wheel, as a user would `pip install torch`.
# It is built in a temp dir beside its final path and renamed into place only after the install and an import check
# pass, so a killed or failed install never leaves a venv later runs trust; a lock keeps two runs from racing.
set -euo pipefail

venv=${ZT_TORCH_VENV:-$HOME/.cache/zerotrain/venv-torch}
base=${ZT_VENV_PYTHON:-python3}
ready() { [[ -x $venv/bin/python && -f $venv/.zt-ready ]]; }

if ready; then echo "$venv/bin/python"; exit 0; fi
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if ready; then echo "$venv/bin/python"; exit 0; fi  # another run made it while we waited for the lock

tmp=$(mktemp -d "$venv.partial.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log=$tmp/install.log
echo "torch_venv.sh: creating $venv (pip install torch numpy from PyPI; several GB, minutes)" >&2
if ! { "$base" -m venv "$tmp/venv" && "$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
         torch numpy; } >"$log" 2>&1; then
  echo "torch_venv.sh: could not install torch into a venv (no network to PyPI?): $(tail -n 1 "$log")" >&2
  exit 3
fi
# Only the venv's python is ever run (its console scripts keep the temp path in their #! lines, unused here).
if ! "$tmp/venv/bin/python" -c 'import torch, numpy; assert int(torch.__version__.split(".")[0]) >= 2' >>"$log" 2>&1
then
  echo "torch_venv.sh: the installed torch does not import or is older than 2: $(tail -n 1 "$log")" >&2
  exit 3
fi
rm -rf "$venv"
mv "$tmp/venv" "$venv"
touch "$venv/.zt-ready"
echo "$venv/bin/python"
