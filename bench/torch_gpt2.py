#!/usr/bin/env python3
"""The PyTorch peer of zerotrain's GPT-2: the model (HF GPT-2 tensor names) and an eager fp32 CPU throughput run.

Imported by test/e2e/torch_crosscheck.py, so the model the benchmark times is the one checked against zerotrain.
Run directly: torch_gpt2.py --n_layer 4 --n_head 4 --d_model 256 --vocab 256 --seq_len 128 --batch 8 --threads 2
[--compile] [--adamw auto|fused|foreach|for-loop] prints one line per step and `key=value` lines last, the rate
(`torch_tokens_per_s=<median>`, of the steps after --warmup) on the very last.
"""
import argparse
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-5  # GPT-2 / zerotrain LayerNorm epsilon


class Conv1D(nn.Module):
    """HF GPT-2's Conv1D: y = x @ weight + bias with weight [n_in, n_out] (transposed nn.Linear)."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


class Attention(nn.Module):
    def __init__(self, d_model, n_head, seq_len, use_sdpa):
        super().__init__()
        self.n_head = n_head
        self.c_attn = Conv1D(d_model, 3 * d_model)
        self.c_proj = Conv1D(d_model, d_model)
        # F.scaled_dot_product_attention (torch >= 2.0) is PyTorch's fastest path; older torch gets the explicit
        # masked softmax, which is what that function computes on CPU in fp32.
        self.use_sdpa = use_sdpa and hasattr(F, "scaled_dot_product_attention")
        self.register_buffer("mask", torch.ones(seq_len, seq_len, dtype=torch.bool).tril(), persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        hd = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # q | k | v, in that order
        q, k, v = (t.view(B, T, self.n_head, hd).transpose(1, 2) for t in (q, k, v))
        if self.use_sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
            att = att.masked_fill(~self.mask[:T, :T], float("-inf")).softmax(dim=-1)
            y = att @ v
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class Mlp(nn.Module):
    def __init__(self, d_model):
        super().__init__()
        self.c_fc = Conv1D(d_model, 4 * d_model)
        self.c_proj = Conv1D(4 * d_model, d_model)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, d_model, n_head, seq_len, use_sdpa):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model, eps=LN_EPS)
        self.attn = Attention(d_model, n_head, seq_len, use_sdpa)
        self.ln_2 = nn.LayerNorm(d_model, eps=LN_EPS)
        self.mlp = Mlp(d_model)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Gpt2(nn.Module):
    """GPT-2 with pre-LN blocks and a tied LM head; named_parameters() gives zerotrain's (= HF's) names and order."""

    def __init__(self, n_layer, n_head, d_model, vocab, seq_len, use_sdpa=True):
        super().__init__()
        self.vocab = vocab
        self.wte = nn.Parameter(torch.empty(vocab, d_model))
        self.wpe = nn.Parameter(torch.empty(seq_len, d_model))
        self.h = nn.ModuleList(Block(d_model, n_head, seq_len, use_sdpa) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model, eps=LN_EPS)
        # GPT-2 initialisation (values do not matter for the throughput run; the cross-check loads zerotrain's).
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx, targets):
        """Mean cross-entropy over all B*T tokens; logits = x @ wte.T over the real vocabulary."""
        T = idx.shape[1]
        x = F.embedding(idx, self.wte) + self.wpe[:T]
        for block in self.h:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte)
        return F.cross_entropy(logits.view(-1, self.vocab), targets.reshape(-1).long())


def adamw_param_groups(model, weight_decay):
    """Weight decay on 2-D tensors only (matmul weights and embeddings), as nanoGPT and zerotrain do."""
    params = list(model.parameters())
    return [{"params": [p for p in params if p.dim() == 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() != 2], "weight_decay": 0.0}]


def make_optimizer(model, args):
    """AdamW as zerotrain runs it, in the fastest CPU form the installed torch has: fused, else foreach, else loop."""
    groups = adamw_param_groups(model, args.weight_decay)
    kw = dict(lr=args.learning_rate, betas=(0.9, 0.95), eps=1e-8)
    kinds = ["fused", "foreach", "for-loop"] if args.adamw == "auto" else [args.adamw]
    for kind in kinds:
        extra = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {}}[kind]
        try:
            opt = torch.optim.AdamW(groups, **kw, **extra)
            if kind == "fused":  # torch < 2.4 accepts fused=True on CPU tensors and fails only in step()
                probe = torch.nn.Parameter(torch.zeros(1))
                probe.grad = torch.zeros(1)
                torch.optim.AdamW([probe], fused=True).step()
            return opt, kind
        except (RuntimeError, TypeError, ValueError) as e:
            if args.adamw != "auto":
                raise SystemExit(f"torch_gpt2.py: --adamw {kind} is not supported by torch {torch.__version__}: {e}")
    raise AssertionError("the plain AdamW loop always constructs")


def train_step(model, opt, x, y, grad_clip):
    """One training step as zerotrain does it: forward, backward, global-norm clip, AdamW."""
    loss = model(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n_layer", type=int, default=4)
    ap.add_argument("--n_head", type=int, default=4)
    ap.add_argument("--d_model", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--seq_len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8, help="sequences per step")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the median")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--learning_rate", type=float, default=3e-3)
    ap.add_argument("--weight_decay", type=float, default=0.1)
    ap.add_argument("--grad_clip", type=float, default=1.0)
    ap.add_argument("--no_sdpa", action="store_true", help="explicit masked softmax even where SDPA exists")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the model (default mode); its compile time is reported, not timed")
    ap.add_argument("--adamw", choices=["auto", "fused", "foreach", "for-loop"], default="auto",
                    help="AdamW implementation (auto: fused where this torch has it on CPU, else foreach)")
    ap.add_argument("--profile_steps", type=int, default=0,
                    help="after the timed steps, profile this many more and print the ops by self CPU time")
    return ap.parse_args()


def print_profile(step_model, opt, data, args):
    """torch.profiler's per-op table for a few more steps: the counterpart of `zerotrain train --profile_steps`."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for step in range(args.profile_steps):
            x, y = data[step % args.steps, :, :-1], data[step % args.steps, :, 1:]
            train_step(step_model, opt, x, y, args.grad_clip)
    print(f"profile of {args.profile_steps} step(s), ops by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20), flush=True)


def main():
    args = parse_args()
    # Intra-op threads as asked, one inter-op thread: the step is one chain of ops, as zerotrain's is.
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    model = Gpt2(args.n_layer, args.n_head, args.d_model, args.vocab, args.seq_len, use_sdpa=not args.no_sdpa)
    opt, adamw_kind = make_optimizer(model, args)
    step_model = torch.compile(model) if args.compile else model
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, args.vocab, (args.steps, args.batch, args.seq_len + 1), generator=gen)
    n_params = sum(p.numel() for p in model.parameters())
    attn = "sdpa" if model.h[0].attn.use_sdpa else "masked-softmax"
    print(f"torch {torch.__version__} | {n_params} params | B={args.batch} T={args.seq_len} | "
          f"threads {torch.get_num_threads()} | attention {attn} | adamw {adamw_kind} | "
          f"{'torch.compile' if args.compile else 'eager'}", flush=True)
    times = []
    for step in range(args.steps):
        x, y = data[step, :, :-1], data[step, :, 1:]
        t0 = time.perf_counter()
        loss = train_step(step_model, opt, x, y, args.grad_clip)
        times.append(time.perf_counter() - t0)
        print(f"step {step + 1} loss {loss.item():.4f} {args.batch * args.seq_len / times[-1]:.0f} tok/s "
              f"({times[-1]:.2f} s)", flush=True)
    if args.profile_steps:
        print_profile(step_model, opt, data, args)
    steady = times[args.warmup:] if len(times) > args.warmup else times
    median_s = statistics.median(steady)
    # The warm-up steps hold torch.compile's tracing and code generation (first step) and any recompile: a user
    # pays them once per run, so they are reported beside the rate rather than in it.
    print(f"torch_warmup_s={sum(times[:len(times) - len(steady)]):.1f}")
    print(f"torch_first_step_s={times[0]:.1f}")
    print(f"torch_adamw={adamw_kind}")
    print(f"torch_version={torch.__version__}")
    print(f"torch_tokens_per_s={args.batch * args.seq_len / median_s:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
