#!/usr/bin/env python3
"""PyTorch's GPT-2 training throughput on one GPU in bf16, eager or torch.compile: the GPU check's peer figure.

The model is bench/torch_gpt2.py's (the one test/e2e/torch_crosscheck.py checks against zerotrain), moved to the
GPU, run under bf16 autocast with fused AdamW, and the step is what gpt2_cuda_bench times: forward, backward,
global-norm clip at 1.0, AdamW. Prints one line per step and a final `torch_tokens_per_s=<median>` line.
Usage: torch_gpt2_cuda.py [--compile] [--batch 16] [--seq_len 1024] [--steps 20] [--warmup 3]
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from torch_gpt2 import Gpt2, adamw_param_groups  # noqa: E402  (bench/torch_gpt2.py)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n_layer", type=int, default=12)
    ap.add_argument("--n_head", type=int, default=12)
    ap.add_argument("--d_model", type=int, default=768)
    # 50304: GPT-2's 50257 padded as zerotrain pads it for its matmuls (nanoGPT does the same for speed).
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--seq_len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3, help="steps left out of the median (compilation happens here)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = ap.parse_args()

    if not torch.cuda.is_available():
        print("no device: torch.cuda.is_available() is False")
        return 3
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    dev = torch.device("cuda")
    model = Gpt2(args.n_layer, args.n_head, args.d_model, args.vocab, args.seq_len, use_sdpa=True).to(dev)
    opt = torch.optim.AdamW(adamw_param_groups(model, 0.1), lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    step_fn = torch.compile(model) if args.compile else model
    gen = torch.Generator(device=dev).manual_seed(1)
    print(f"torch {torch.__version__} | {torch.cuda.get_device_name(0)} | B={args.batch} T={args.seq_len} | "
          f"bf16 autocast | {'torch.compile' if args.compile else 'eager'}", flush=True)
    times = []
    for step in range(args.warmup + args.steps):
        data = torch.randint(0, 50257, (args.batch, args.seq_len + 1), device=dev, generator=gen)
        x, y = data[:, :-1], data[:, 1:]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if step >= args.warmup:
            times.append(dt)
        print(f"step {step + 1} loss {loss.item():.4f} {dt * 1e3:.1f} ms {args.batch * args.seq_len / dt:.0f} tok/s"
              f"{' (warm-up)' if step < args.warmup else ''}", flush=True)
    print(f"torch_tokens_per_s={args.batch * args.seq_len / statistics.median(times):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
