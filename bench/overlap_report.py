#!/usr/bin/env python3
"""bench/overlap.sh's results: the per stage x rate table (CSV, JSON, Markdown on stdout) and the plot.

Input: the JSON-lines records overlap.sh writes (link sweeps, comm-only steps, 2-node and compute-only metrics).
Every figure is defined in docs/performance.md, "Overlap on a shaped link".
"""
import argparse
import csv
import json
import re
import statistics


def rate_bps(rate):
    """A tc rate ("10gbit", "200mbit") in bits/s; None for "unlimited"."""
    m = re.fullmatch(r"([0-9.]+)(gbit|mbit|kbit)", rate)
    return float(m.group(1)) * {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3}[m.group(2)] if m else None


def median_step_s(metrics, log, warmup, key=None):
    """Median step seconds after the warm-up: tokens per step (the run's banner) / tokens_per_s of each row; or with
    `key`, the median of that field (rank 0's comm_wait_s)."""
    banner = open(log).read()
    tokens = int(re.search(r"global batch (\d+) seq", banner).group(1))
    tokens *= int(re.search(r"seq_len=(\d+)", banner).group(1))
    rows = [json.loads(line) for line in open(metrics)][warmup:]
    return statistics.median(r[key] if key else tokens / r["tokens_per_s"] for r in rows)



def collect(records, warmup):
    links, comm, train, compute = {}, {}, {}, {}
    for r in records:
        if r["kind"] == "link_run":
            links[r["rate"]] = r["result"]
        elif r["kind"] == "comm":
            comm[(r["rate"], r["stage"])] = r["result"]
        elif r["kind"] == "train":
            key = (r["rate"], r["stage"], r.get("variant", "overlap"))
            train[key] = (median_step_s(r["metrics"][0], r["log"], warmup),
                          median_step_s(r["metrics"][0], r["log"], warmup, "comm_wait_s"))
        elif r["kind"] == "compute":
            # The two nodes' 1-rank runs ran at once; the slower one is what a 2-rank step waits for.
            compute[(r["rate"], r["stage"])] = max(median_step_s(m, r["log"], warmup) for m in r["metrics"])
    rows = []
    order = lambda kv: (-(rate_bps(kv[0][0]) or 1e18), kv[0][1], kv[0][2] == "overlap", kv[0][2])  # noqa: E731
    for (rate, stage, variant), (step, wait) in sorted(train.items(), key=order):
        c, t_comm = compute[(rate, stage)], comm[(rate, stage)]["comm_s"]
        link = links[rate]
        rows.append({
            "stage": stage, "variant": variant, "rate": rate, "tc_bps": rate_bps(rate),
            "achieved_Bps": link["largest_bytes"] / link["one_way_s"],
            "collective_Bps": link["largest_bytes"] / link["largest_s"],
            # α: the smallest all-gather's time (1 KiB), as the scaling model reads it; the fit's intercept can be negative.
            "alpha_s": link["points"][0][1], "alpha_fit_s": link["alpha_s"],
            "beta_Bps": link["beta_Bps"], "step_s": step, "compute_s": c, "comm_s": t_comm,
            "comm_bytes": comm[(rate, stage)]["bytes_sent"], "n_parts": comm[(rate, stage)]["n_parts"],
            "preset": comm[(rate, stage)]["preset"], "micro_batch": comm[(rate, stage)]["micro_batch"],
            "link_points": link["points"],
            "hidden": (c + t_comm - step) / t_comm if t_comm > 0 else 0.0, "wait_s": wait,
            "hidden_wait": 1.0 - wait / t_comm if t_comm > 0 else 0.0,
        })
    return rows


def print_table(rows, load):
    print(f"machine load: {load}")
    print("| stage | engine | tc rate | one-way MB/s | all-gather MB/s | α ms | step s | compute-only s | comm-only s "
          "| hidden | comm wait s | 1 − wait/comm |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['variant']} | {r['rate']} | {r['achieved_Bps'] / 1e6:,.1f} "
              f"| {r['collective_Bps'] / 1e6:,.1f} "
              f"| {r['alpha_s'] * 1e3:.2f} "
              f"| {r['step_s']:.3f} | {r['compute_s']:.3f} | {r['comm_s']:.3f} | {r['hidden']:.2f} "
              f"| {r['wait_s']:.3f} | {r['hidden_wait']:.2f} |")


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    gbit = lambda r: r["achieved_Bps"] * 8 / 1e9  # noqa: E731
    for i, s in enumerate(sorted({r["stage"] for r in rows})):
        color = f"C{i}"
        for variant, style in (("overlap", "o-"), ("before", "s-.")):
            pts = sorted((r for r in rows if r["stage"] == s and r["variant"] == variant), key=gbit)
            if not pts:
                continue
            ax.plot([gbit(r) for r in pts], [r["step_s"] for r in pts], style, color=color,
                    alpha=1.0 if variant == "overlap" else 0.5,
                    label=f"ZeRO-{s} step" + (" before the fix" if variant == "before" else ""))
            if variant == "overlap":
                ax.plot([gbit(r) for r in pts], [r["comm_s"] for r in pts], "v:", color=color, alpha=0.6,
                        label=f"ZeRO-{s} comm-only")
                ax.plot([gbit(r) for r in pts], [r["compute_s"] for r in pts], "--", color=color, lw=0.8, alpha=0.6)
    ax.plot([], [], "k--", lw=0.8, label="compute-only (dashed, per stage)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("link bandwidth achieved one way, Gbit/s (tc tbf; the rightmost: unshaped veth)")
    ax.set_ylabel("seconds per step (median)")
    ax.set_title("zerotrain step time vs link bandwidth, 2 nodes x 1 rank (preset small)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("raw")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--load", default="")
    p.add_argument("--csv")
    p.add_argument("--json")
    p.add_argument("--plot")
    a = p.parse_args()
    rows = collect([json.loads(line) for line in open(a.raw)], a.warmup)
    print_table(rows, a.load)
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"load": a.load, "rows": rows}, f, indent=1)
    if a.plot:
        plot(rows, a.plot)


if __name__ == "__main__":
    main()
