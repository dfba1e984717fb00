#!/usr/bin/env bash
# bench/overlap.sh --quick on a tc-shaped 1 Gbit/s link between two network namespaces: the shaping holds and ZeRO-2
# hides most of its communication behind compute. Needs root; exits 77 (skipped) where namespaces or tc are missing.
# ZT_OVERLAP_VARIANT=before runs the engine as it was before the overlap fixes (docs/performance.md), which fails.
set -uo pipefail
ZT=${ZEROTRAIN:?ZEROTRAIN must point at the zerotrain binary}
SRC=${ZT_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
work=$(mktemp -d /tmp/zt-overlap-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
ZT_BUILD_DIR=$(dirname "$ZT") bash "$SRC/bench/overlap.sh" --quick --variants "${ZT_OVERLAP_VARIANT:-overlap}" \
  --out "$work" 2>&1 | tee "$work/log"
rc=${PIPESTATUS[0]}
[ "$rc" = 77 ] && exit 77
[ "$rc" = 0 ] || { echo "FAIL: bench/overlap.sh --quick exited with $rc"; exit 1; }
"${ZT_PYTHON:-python3}" - "$work/overlap.csv" <<'PY'
import csv, sys
row = next(csv.DictReader(open(sys.argv[1])))
fails = 0
def check(ok, what):
    global fails
    print(("ok: " if ok else "FAIL: ") + what)
    fails += not ok
# The tbf qdisc at 1 Gbit/s carries its rate less TCP/IP headers (~5%) as MPI payload; 0.8 leaves room for a loaded
# machine, and more than the rate (beyond its 125 KB burst, nothing against 4 MB) would mean the shaping is off.
ratio = float(row["achieved_Bps"]) / (float(row["tc_bps"]) / 8)
check(0.8 <= ratio <= 1.05, f"one-way payload rate {ratio:.3f} x the tc rate (band 0.80-1.05)")
# Stage 2's parameter all-gather moves half the step's bytes. An engine that waits for it at the end of the step
# (before the fix) hides at most the other half, so 1 - wait/comm <= 0.5 there; it measured -0.10 to 0.20 here.
hidden = float(row["hidden_wait"])
check(hidden > 0.5, f"ZeRO-2 hid {hidden:.2f} of its communication (1 - comm wait {float(row['wait_s']):.3f} s / "
      f"comm-only {float(row['comm_s']):.3f} s; floor 0.5)")
sys.exit(1 if fails else 0)
PY
