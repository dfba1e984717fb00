#!/usr/bin/env python3
"""bench/scaling_model.py's memory, traffic and checkpoint formulas agree with the figures docs/performance.md
records from the engine (start-up line, Comm::bytes_sent, model.h5 size) and with the C++ traffic theory."""
import contextlib
import io
import os
import re
import sys

SOURCE = os.environ.get("ZT_SOURCE_DIR") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(SOURCE, "bench"))
import scaling_model as sm  # noqa: E402

PERF = open(os.path.join(SOURCE, "docs", "performance.md"), encoding="utf-8").read()
failures = []


def check(ok, what):
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
    if not ok:
        failures.append(what)


def rows(header_start):
    """The body rows of the first table whose header line starts with header_start, as lists of cells."""
    lines = PERF[PERF.index(header_start):].splitlines()
    out = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        out.append([c.strip().strip("*") for c in line.strip("|").split("|")])
    return out


def mib(cell):
    return float(re.match(r"([\d.]+) MiB", cell).group(1))


# The doc prints one decimal: a formula within 0.05 MiB (half the last digit) is the recorded figure.
MIB_TOL = 0.05

# Parameter counts: GPT-2's published sizes (logical, tied head once) and the padded vocabulary.
gpt2 = sm.Model(*sm.PRESETS["gpt2"])
check(gpt2.n_params() == 124_439_808 and gpt2.Vp == 50304, f"gpt2 n_params {gpt2.n_params()}, Vp {gpt2.Vp}")
check(sm.Model(*sm.PRESETS["gpt2-xl"]).n_params() == 1_557_611_200, "gpt2-xl n_params 1,557,611,200")

# ZeRO-3 memory at N = 4 and 8 (GPT-2 124M, T 64, B 4): state, pool, activations + work and target columns.
memory_rows = rows("| ranks | state (16Ψ/N) |")
check(len(memory_rows) == 2, f"performance.md's ZeRO-3 memory table has 2 rows ({len(memory_rows)})")
for r in memory_rows:
    m = sm.cpu_zero3_memory(int(r[0]))
    for key, cell in (("state", r[1]), ("pool", r[2]), ("act", r[3]), ("target", r[5])):
        check(abs(m[key] - mib(cell)) <= MIB_TOL, f"N {r[0]} {key}: model {m[key]:.3f} MiB, recorded {cell}")
    # What the process adds on top (libraries, MPI, the data) is positive and small: 45-63 MiB recorded.
    extra = mib(r[4]) - (m["state"] + m["pool"] + m["act"])
    check(0 < extra < 100, f"N {r[0]} peak resident exceeds the modelled sum by {extra:.1f} MiB (0-100 expected)")

# Activation formulas per --recompute mode (GPT-2 124M, T 1024, B 1): "X MiB (kept + work)".
model = sm.with_seq_len("gpt2", 1024)
for r in rows("| `--recompute` | activations + work (formula) |"):
    mode = r[0].strip("`")
    kept_doc, work_doc = (float(x) for x in re.search(r"\(([\d.]+) \+ ([\d.]+)\)", r[1]).groups())
    act, work = sm.activation_bytes(model, 1, mode, gpu=False)
    check(abs(act / sm.MIB - kept_doc) <= MIB_TOL and abs(work / sm.MIB - work_doc) <= MIB_TOL,
          f"--recompute {mode}: model {act / sm.MIB:.2f} + {work / sm.MIB:.2f} MiB, recorded {kept_doc} + {work_doc}")

# Traffic: Ψ exactly and the theory column (3 decimals of MB) for `small` at N = 4, stages 0-3.
traffic_rows = rows("| stage | Ψ | sent MB/step |")
check(len(traffic_rows) == 4, f"performance.md's traffic table has 4 rows ({len(traffic_rows)})")
for r in traffic_rows:
    mb, psi = sm.cpu_traffic_mb(4, int(r[0]))
    check(psi == int(r[1]) and abs(mb - float(r[3])) <= 0.0005, f"stage {r[0]}: model Ψ {psi} {mb:.4f} MB, "
          f"recorded Ψ {r[1]} {r[3]} MB")
    # What Comm::bytes_sent counted exceeds the theory only by the loss and norm sums (ppm).
    check(abs(float(r[2]) / mb - 1) < 1e-4, f"stage {r[0]}: measured {r[2]} MB within 1e-4 of the model")

# The C++ theory (test_zero_memory.cpp [traffic]): with M micro-steps, stages 0-1 2·once, stage 2 (M+1)·once,
# stage 3 3M·once, once = Ψ(N-1)/N.
for N in (2, 3, 8):
    for M in (1, 4):
        once = 1000 * (N - 1) / N
        got = [sm.traffic_elems(1000, s, N, M) for s in range(4)]
        want = [2 * once, 2 * once, (M + 1) * once, 3 * M * once]
        check(all(abs(g - w) < 1e-9 for g, w in zip(got, want)), f"traffic N {N} M {M}: {got} vs {want}")
        # The step-time model prices the same number of collectives as the traffic formula counts.
        counts = [sum(sm.collectives(s, M)) * once for s in range(4)]
        check(counts == want, f"collectives per step N {N} M {M}: {counts} vs {want}")

# Parts at the default bucket (docs/sharding.md): GPT-2 124M's blocks (27 MiB) stay whole; gpt2-medium's (48 MiB)
# become three, since c_fc (16 MiB) cannot join the attention half (16 MiB) nor mlp.c_proj (16 MiB) within 32 MiB.
for name, want in (("gpt2", 1), ("gpt2-medium", 3)):
    m = sm.Model(*sm.PRESETS[name])
    parts = sm.cut_into_parts(m.units[1], 32 * (1 << 20) // 4)
    fits = all(p <= 32 * (1 << 20) // 4 for p in parts)
    check(len(parts) == want and fits and sum(parts) == sum(n for n, _ in m.units[1]), f"{name} block parts {parts}")

# Checkpoint: the recorded model.h5 (GPT-2 124M, T 64) holds 12 bytes per logical parameter plus at most the 1 MiB
# the save's free-space pre-check allows for metadata (docs/checkpoint-format.md, section 2).
recorded = int(re.search(r"\| full/plain \| ([\d,]+) \|", PERF).group(1).replace(",", ""))
payload = 12 * sm.with_seq_len("gpt2", 64).n_params()
check(payload <= recorded <= payload + (1 << 20), f"model.h5 {recorded:,} bytes vs 12 x n_params {payload:,}")

# Checkpoint pieces: one rank writes each tensor whole (one piece per tensor); two ranks split every part once, so
# each rank writes at least half the tensors' count and at most that plus one piece per part.
m = sm.Model(*sm.PRESETS["gpt2-medium"])
one, two = sm.checkpoint_pieces(m, 1, 32 << 20), sm.checkpoint_pieces(m, 2, 32 << 20)
n_parts = sm.Layout(m, 2, 32 << 20).n_parts
check(one == m.n_tensors() and m.n_tensors() / 2 <= two <= m.n_tensors() / 2 + n_parts,
      f"pieces per rank: {one} at N 1 ({m.n_tensors()} tensors), {two} at N 2 ({n_parts} parts)")

# docs/scaling.md shows the script's default output as it is now: every line of it appears in the doc.
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    sm.main([])
doc = open(os.path.join(SOURCE, "docs", "scaling.md"), encoding="utf-8").read()
stale = [line for line in buf.getvalue().splitlines() if line.strip() and line not in doc]
check(not stale, f"docs/scaling.md has the script's default output ({len(stale)} lines differ: {stale[:2]})")

if failures:
    print(f"scaling_model_test: {len(failures)} FAILED", flush=True)
    sys.exit(1)
print("scaling_model_test: all passed")
