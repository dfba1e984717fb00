#!/usr/bin/env python3
"""Plots training loss (lines) and validation loss (points) against step from zerotrain metrics.jsonl files.

Usage: plot_loss.py OUTPUT/metrics.jsonl [MORE/metrics.jsonl ...] -o loss.png
One line per file, labelled by the file's directory (the run's --output_dir).
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def read_metrics(path):
    """Returns (steps, losses, val_steps, val_losses) from one metrics.jsonl."""
    steps, losses, val_steps, val_losses = [], [], [], []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"plot_loss: {path}:{line_no}: not JSON ({e})")
            if "step" not in row or "loss" not in row:
                raise SystemExit(f"plot_loss: {path}:{line_no}: a metrics row needs 'step' and 'loss'")
            steps.append(row["step"])
            losses.append(row["loss"])
            if "val_loss" in row:
                val_steps.append(row["step"])
                val_losses.append(row["val_loss"])
    if not steps:
        raise SystemExit(f"plot_loss: {path} holds no metrics rows")
    return steps, losses, val_steps, val_losses


def run_label(path):
    d = os.path.dirname(os.path.abspath(path))
    return os.path.basename(d) or d


def main(argv=None):
    ap = argparse.ArgumentParser(description="Plot loss vs step from zerotrain metrics.jsonl files.")
    ap.add_argument("metrics", nargs="+", help="metrics.jsonl files (one line each)")
    ap.add_argument("-o", "--output", default="loss.png", help="image to write (PNG unless the suffix says else)")
    ap.add_argument("--title", default="zerotrain loss")
    ap.add_argument("--logy", action="store_true", help="log-scale loss axis")
    args = ap.parse_args(argv)

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for path in args.metrics:
        steps, losses, val_steps, val_losses = read_metrics(path)
        label = run_label(path)
        (line,) = ax.plot(steps, losses, label=f"{label} train", linewidth=1.2)
        if val_steps:
            ax.plot(val_steps, val_losses, "o", color=line.get_color(), label=f"{label} val", markersize=5)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss (cross-entropy, nats/token)")
    ax.set_title(args.title)
    if args.logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output)
    print(f"plot_loss: wrote {args.output} ({len(args.metrics)} run(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
