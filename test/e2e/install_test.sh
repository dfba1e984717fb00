#!/usr/bin/env bash
# `cmake --install` of the suite's own build (docs/usage.md, "Installing"): the binary, the multi-node wrapper, the
# loss plotter and the Slurm template land where the docs say, and the installed copies run, the wrapper finding the
# installed zerotrain on PATH.
. "$(dirname "$0")/lib.sh"
zt_test_setup install
build=$(dirname "$(readlink -f "$ZT")")
prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" >"$work/install.log" 2>&1
expect $? 0 "cmake --install exits 0"
for f in bin/zerotrain bin/zerotrain-mpirun.sh bin/plot_loss.py share/zerotrain/zerotrain.sbatch; do
  if [ -f "$prefix/$f" ]; then pass "installed $f"; else fail "missing $f; $(tail -3 "$work/install.log")"; fi
done
for f in bin/zerotrain bin/zerotrain-mpirun.sh bin/plot_loss.py; do
  if [ -x "$prefix/$f" ]; then pass "$f is executable"; else fail "$f is not executable"; fi
done
want=$("$ZT" --version 2>&1)
expect "$("$prefix/bin/zerotrain" --version 2>&1)" "$want" "the installed binary's --version"
# The wrapper finds zerotrain on PATH (no ZT_BIN): a 1-rank run on localhost trains and exits 0.
unset ZT_BIN
printf 'localhost slots=1\n' >"$work/hosts"
PATH=$prefix/bin:$PATH OMPI_MCA_plm=isolated "$prefix/bin/zerotrain-mpirun.sh" --hostfile "$work/hosts" -- \
  train --output_dir "$work/out" --max_steps 2 --threads 1 --log_interval 1000 >"$work/run.log" 2>&1
expect $? 0 "the installed wrapper runs the installed zerotrain"
expect "$(wc -l <"$work/out/metrics.jsonl" 2>/dev/null | tr -d ' ')" 2 "metrics rows of the wrapper's run"
zt_test_finish
