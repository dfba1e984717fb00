#!/usr/bin/env python3
"""Issue 19's loss curves: CUDA variants on the simulator against the fp32 CPU curve, and bf16 gradient reduction.

  loss_curves.py variants     the fp32 CPU run, then one run per variant (VARIANTS, or --variant NAME=FLAGS); writes
                              NAME.csv / .json / .png and exits 1 when a curve leaves the band (or a variant fails
                              to run, or a --broken run stays inside it: the band would then catch nothing)
  loss_curves.py grad_reduce  bench/curves' grad_reduce_bf16 harness, fp32 and bf16 gradient reduction at several
                              seeds: the difference bf16 makes against the seed-to-seed spread of the fp32 runs
bench/curves/README.md says what each figure means; docs/performance.md holds the results.
"""
import argparse
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

# One line per variant: a name and the flags it adds to the common ones (--device cuda unless it names a device).
# Not listed: --cuda_attention fa2, which runs at head size 64 only (tiny's is 32: it would run the tensor-core
# kernels) and gives their bits on the simulator (test_cuda_ops "[fa2]"); its curve would be bf16's.
VARIANTS = [
    "bf16=--dtype bf16",
    "bf16_epilogues=--dtype bf16 --cuda_epilogues on",
    "bf16_activations=--dtype bf16 --cuda_activations bf16",
    "bf16_residual=--dtype bf16 --cuda_activations bf16_residual",
    "bf16_graphs=--dtype bf16 --cuda_graphs on",
]


def parse_variant(spec):
    name, sep, flags = spec.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name.strip()):
        raise SystemExit(f"loss_curves: variant {spec!r}: expected NAME=FLAGS, NAME of letters, digits, '_', '.', '-'")
    return name.strip(), shlex.split(flags)


def read_losses(path):
    """{step: loss} from a metrics.jsonl."""
    out = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                row = json.loads(line)
                if "step" not in row or "loss" not in row:
                    raise SystemExit(f"loss_curves: {path}:{n}: a row without 'step' or 'loss'")
                out[int(row["step"])] = float(row["loss"])
    return out


def train(binary, flags, out_dir, log_name, reuse_steps=0):
    """Runs one training; returns (losses or None, seconds, the first error line or ""). With reuse_steps, a run whose
    metrics.jsonl already holds that many steps is read instead of run again (a long experiment resumed)."""
    metrics = os.path.join(out_dir, "metrics.jsonl")
    if reuse_steps and os.path.isfile(metrics) and len(read_losses(metrics)) == reuse_steps:
        return read_losses(metrics), None, ""
    cmd = [binary, "train", "--output_dir", out_dir, "--quiet"] + flags
    t = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    secs = time.time() - t
    with open(log_name, "w") as f:
        f.write(" ".join(shlex.quote(c) for c in cmd) + "\n" + p.stdout)
    if p.returncode != 0:
        lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
        why = next((ln for ln in lines if "error" in ln.lower() or "not expected" in ln), lines[-1] if lines else "")
        return None, secs, f"exit {p.returncode}: {why.strip()} (log: {log_name})"
    return read_losses(os.path.join(out_dir, "metrics.jsonl")), secs, ""


def rolling_delta(ref, losses, window):
    """{s: mean of (loss - ref) over steps s-window+1..s}, for every s where all those steps are in both runs."""
    delta = {s: losses[s] - ref[s] for s in losses if s in ref}
    return {s: sum(delta[t] for t in range(s - window + 1, s + 1)) / window for s in delta
            if all(t in delta for t in range(s - window + 1, s + 1))}


def judge(ref, losses, args):
    """The band (bench/curves/README.md): while the runs still track each other (steps band_after+1 .. track_until),
    every step's |loss - ref| within track_band; after that, where rounding has made the trajectories decorrelate,
    |the mean of loss - ref over `window` steps| within band."""
    tracked = [(abs(losses[s] - ref[s]), s) for s in losses if args.band_after < s <= args.track_until and s in ref]
    step_worst, step_at = max(tracked, default=(0.0, 0))
    rolling = [(abs(m), s) for s, m in rolling_delta(ref, losses, args.window).items() if s > args.track_until]
    window_worst, window_at = max(rolling, default=(0.0, 0))
    inside = step_worst <= args.track_band and window_worst <= args.band and len(losses) == len(ref)
    why = ("" if inside else f"step {step_at}: |delta| {step_worst:.4f} (band {args.track_band} up to step "
           f"{args.track_until})" if step_worst > args.track_band else f"{args.window} steps to {window_at}: "
           f"|mean delta| {window_worst:.4f} (band {args.band})" if window_worst > args.band else
           f"{len(losses)} of {len(ref)} steps")
    return {"max_tracking_delta": round(step_worst, 5), "at_step": step_at, "max_window_delta": round(window_worst, 5),
            "window_ends_at": window_at, "inside_band": inside, "why_outside": why}


def plot(path, ref, runs, args, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7.5), dpi=100, sharex=True)
    steps = sorted(ref)
    top.plot(steps, [ref[s] for s in steps], color="black", linewidth=1.4, label="fp32 CPU (reference)")
    for i, (name, r) in enumerate(runs.items()):
        if r["losses"] is None:
            continue
        color, style = f"C{i}", ("--" if r["broken"] else "-")
        label = name + (" (broken on purpose)" if r["broken"] else "")
        xs = sorted(r["losses"])
        top.plot(xs, [r["losses"][s] for s in xs], style, color=color, linewidth=0.9, label=label)
        bottom.plot(xs, [max(abs(r["losses"][s] - ref[s]), 1e-6) for s in xs if s in ref], style, color=color,
                    linewidth=0.6, alpha=0.5)
        roll = rolling_delta(ref, r["losses"], args.window)
        xr = [s for s in sorted(roll) if s > args.track_until]
        if xr:
                bottom.plot(xr, [max(abs(roll[s]), 1e-6) for s in xr], style, color=color, linewidth=1.6,
                        label=f"{label}: |{args.window}-step mean|")
    bottom.hlines(args.track_band, args.band_after, args.track_until, colors="red", linewidth=1.5,
                  label=f"per-step band {args.track_band} (steps {args.band_after + 1}-{args.track_until})")
    if max(steps) > args.track_until:
        bottom.hlines(args.band, args.track_until, max(steps), colors="red", linestyles="dashed", linewidth=1.5,
                      label=f"{args.window}-step mean band {args.band} (after)")
    bottom.set_yscale("log")
    top.set_ylabel("training loss (nats)")
    bottom.set_ylabel("|loss - fp32 CPU loss| (thin: per step)")
    bottom.set_xlabel("step")
    top.set_title(title, fontsize=10)
    top.legend(fontsize=7)
    bottom.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def run_variants(args):
    os.makedirs(args.out_dir, exist_ok=True)
    work = args.work or tempfile.mkdtemp(prefix="zt_curves.")
    common = ["--preset", args.preset, "--max_steps", str(args.steps), "--seed", str(args.seed)]
    common += shlex.split(args.flags)
    specs = [parse_variant(v) + (False,) for v in (args.variant or VARIANTS)]
    specs += [parse_variant(v) + (True,) for v in args.broken]
    names = [s[0] for s in specs] + ["fp32_cpu"]
    if len(set(names)) != len(names):
        raise SystemExit(f"loss_curves: a variant name is used twice (or is fp32_cpu): {names}")
    ref, secs, err = train(args.zerotrain, common + ["--device", "cpu"], os.path.join(work, "fp32_cpu"),
                           os.path.join(work, "fp32_cpu.log"))
    if ref is None:
        raise SystemExit(f"loss_curves: the fp32 CPU reference did not run: {err}")
    print(f"fp32_cpu: {len(ref)} steps in {secs:.1f} s (the reference)", flush=True)
    runs, failed = {}, []
    for name, flags, broken in specs:
        device = [] if "--device" in flags else ["--device", "cuda"]
        losses, secs, err = train(args.zerotrain_sim, common + device + flags, os.path.join(work, name),
                                  os.path.join(work, name + ".log"))
        r = {"flags": " ".join(device + flags), "broken": broken, "seconds": round(secs, 1), "losses": losses}
        if losses is None:
            r["error"] = err
            failed.append(f"{name}: did not run: {err}")
        else:
            r.update(judge(ref, losses, args))
            if broken and r["inside_band"]:
                failed.append(f"{name}: broken on purpose, yet inside the band: the band is too loose")
            elif not broken and not r["inside_band"]:
                failed.append(f"{name}: leaves the band at {r['why_outside']}")
        runs[name] = r
        tracked_to = min(args.track_until, args.steps)
        verdict = r.get("error") or (f"largest |delta| {r['max_tracking_delta']:.4f} (steps to {tracked_to}), "
                                     f"largest |{args.window}-step mean delta| {r['max_window_delta']:.4f} after: "
                                     + ("inside the band" if r["inside_band"] else "outside: " + r["why_outside"]))
        print(f"{name}{' (broken on purpose)' if broken else ''}: {secs:.1f} s, {verdict}", flush=True)
    base = os.path.join(args.out_dir, args.name)
    with open(base + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        names = [n for n in runs if runs[n]["losses"] is not None]
        w.writerow(["step", "fp32_cpu"] + names)
        for s in sorted(ref):
            w.writerow([s, f"{ref[s]:.6f}"] +
                       [f"{runs[n]['losses'][s]:.6f}" if s in runs[n]["losses"] else "" for n in names])
    summary = {"preset": args.preset, "steps": args.steps, "seed": args.seed, "flags": " ".join(common),
               "band": {"after_step": args.band_after, "track_until": args.track_until,
                        "track_band_nats": args.track_band,
                        "window": args.window, "window_band_nats": args.band},
               "variants": {n: {k: v for k, v in r.items() if k != "losses"} for n, r in runs.items()},
               "failures": failed}
    with open(base + ".json", "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    if not args.no_plot:
        plot(base + ".png", ref, runs, args,
             f"{args.preset}, {args.steps} steps, seed {args.seed}: CUDA variants (simulator) vs fp32 CPU")
    for line in failed:
        print(f"loss_curves: FAIL {line}", file=sys.stderr)
    print(f"wrote {base}.csv, .json" + ("" if args.no_plot else ", .png"))
    return 1 if failed else 0


def window_mean(losses, first, last):
    xs = [losses[s] for s in range(first, last + 1) if s in losses]
    return sum(xs) / len(xs)


def run_grad_reduce(args):
    os.makedirs(args.out_dir, exist_ok=True)
    work = args.work or tempfile.mkdtemp(prefix="zt_grad_reduce.")
    first = args.steps - args.window + 1
    rows = []
    for seed in args.seeds:
        row = {"seed": seed}
        for mode in ("fp32", "bf16"):
            flags = ["--preset", args.preset, "--max_steps", str(args.steps), "--seed", str(seed),
                     "--grad_reduce", mode] + shlex.split(args.flags)
            out = os.path.join(work, f"{mode}_seed{seed}")
            losses, secs, err = train(args.harness, flags, out, out + ".log", args.steps if args.reuse else 0)
            if losses is None:
                raise SystemExit(f"loss_curves: grad_reduce seed {seed} {mode}: {err}")
            row[mode] = {"final_window_mean": round(window_mean(losses, first, args.steps), 5),
                         "seconds": None if secs is None else round(secs, 1), "losses": losses}
        a, b = row["fp32"]["losses"], row["bf16"]["losses"]
        row["max_abs_delta_per_step"] = round(max(abs(a[s] - b[s]) for s in a if s > args.band_after), 5)
        row["window_delta"] = round(row["bf16"]["final_window_mean"] - row["fp32"]["final_window_mean"], 5)
        print(f"seed {seed}: mean loss of steps {first}-{args.steps}: fp32 {row['fp32']['final_window_mean']:.4f}, "
              f"bf16 {row['bf16']['final_window_mean']:.4f} (delta {row['window_delta']:+.4f}); "
              f"max per-step |delta| after step {args.band_after} {row['max_abs_delta_per_step']:.4f}", flush=True)
        rows.append(row)
    fp32_means = [r["fp32"]["final_window_mean"] for r in rows]
    spread = max(fp32_means) - min(fp32_means)
    worst = max(abs(r["window_delta"]) for r in rows)
    inside = worst < spread
    summary = {"preset": args.preset, "steps": args.steps, "window": [first, args.steps], "flags": args.flags,
               "seeds": args.seeds, "fp32_seed_spread": round(spread, 5), "bf16_max_abs_window_delta": round(worst, 5),
               "bf16_inside_spread": inside,
               "runs": [{k: ({kk: vv for kk, vv in v.items() if kk != "losses"} if isinstance(v, dict) else v)
                         for k, v in r.items()} for r in rows]}
    base = os.path.join(args.out_dir, args.name)
    with open(base + ".json", "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    with open(base + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step"] + [f"{m}_seed{r['seed']}" for r in rows for m in ("fp32", "bf16")])
        for s in sorted(rows[0]["fp32"]["losses"]):
            w.writerow([s] + [f"{r[m]['losses'][s]:.6f}" for r in rows for m in ("fp32", "bf16")])
    print(f"fp32 seed-to-seed spread of that mean: {spread:.4f}; bf16's largest difference: {worst:.4f} -> "
          f"{'inside' if inside else 'outside'} the spread; wrote {base}.json, .csv")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    build = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "build")
    v = sub.add_parser("variants", help="CUDA variants on the simulator against the fp32 CPU curve")
    v.add_argument("--zerotrain", default=os.path.join(build, "zerotrain"), help="the CPU reference's binary")
    v.add_argument("--zerotrain_sim", default=os.path.join(build, "test", "zerotrain_sim"), help="the variants' binary")
    v.add_argument("--variant", action="append", help="NAME=FLAGS, replacing the built-in list (repeatable)")
    v.add_argument("--broken", action="append", default=[],
                   help="NAME=FLAGS of a run broken on purpose, which must leave the band (repeatable)")
    v.add_argument("--steps", type=int, default=300)
    v.add_argument("--seed", type=int, default=1234)
    v.add_argument("--band_after", type=int, default=10, help="the band applies after this step")
    v.add_argument("--track_until", type=int, default=50, help="last step of the per-step band")
    v.add_argument("--track_band", type=float, default=0.02, help="per-step |loss - fp32 loss| allowed (nats)")
    v.add_argument("--window", type=int, default=20, help="steps of the rolling mean after --track_until")
    v.add_argument("--band", type=float, default=0.05, help="|rolling mean of loss - fp32 loss| allowed (nats)")
    v.add_argument("--name", default="bf16_loss_curve", help="file name of the CSV, JSON and PNG")
    v.add_argument("--no_plot", action="store_true")
    g = sub.add_parser("grad_reduce", help="fp32 vs bf16 gradient reduction on the CPU at several seeds")
    g.add_argument("--harness", default=os.path.join(build, "bench", "grad_reduce_bf16"))
    g.add_argument("--steps", type=int, default=300)
    g.add_argument("--seeds", type=int, nargs="+", default=[1234, 1, 2])
    g.add_argument("--window", type=int, default=50,
                   help="the curves are compared by the mean loss of the last N steps")
    g.add_argument("--band_after", type=int, default=10)
    g.add_argument("--name", default="grad_reduce_bf16")
    g.add_argument("--reuse", action="store_true", help="keep the runs --work already holds in full (seconds: null)")
    for p in (v, g):
        p.add_argument("--preset", default="tiny")
        p.add_argument("--flags", default="", help="flags added to every run (one shell-quoted string)")
        p.add_argument("--out_dir", default=".", help="where the CSV, JSON (and PNG) go")
        p.add_argument("--work", help="where the runs' output directories go (default: a new temporary one)")
    args = ap.parse_args(argv)
    return run_variants(args) if args.cmd == "variants" else run_grad_reduce(args)


if __name__ == "__main__":
    sys.exit(main())
