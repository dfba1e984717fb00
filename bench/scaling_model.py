#!/usr/bin/env python3
"""Scaling model for zerotrain: memory per rank, traffic and step time per optimizer step, checkpoint write time.

Arithmetic only (no build, no GPU): the formulas are the ones the code asserts, restated here; docs/scaling.md
explains each and says where the model is weakest. Run from the repository root: `python3 bench/scaling_model.py`.
"""
import argparse
import math

MIB, GIB = float(1 << 20), float(1 << 30)

# core/config.cpp model_preset: (n_layer, n_head, d_model, vocab, seq_len).
PRESETS = {
    "gpt2": (12, 12, 768, 50257, 1024),
    "gpt2-medium": (24, 16, 1024, 50257, 1024),
    "gpt2-large": (36, 20, 1280, 50257, 1024),
    "gpt2-xl": (48, 25, 1600, 50257, 1024),
    "small": (4, 4, 256, 256, 128),
}
MODEL_LABELS = {"gpt2": "124M", "gpt2-medium": "350M", "gpt2-large": "774M", "gpt2-xl": "1.5B"}
SHARD_ALIGN = 16  # sharding/shard.hpp make_shard_layout: a part pads to a multiple of world_size * 16 elements
# Per-dataset HDF5 + manifest overhead of model.h5, fitted to the one checkpoint docs/performance.md records (GPT-2
# 124M at T 64: 1,484,718,321 bytes for 444 datasets); small beside 12 bytes per parameter at every size here.
CKPT_BYTES_PER_DATASET = 650


class Model:
    """The parameter table of core/model.cpp: units, tensors in flat order, and which tensor joins its predecessor."""

    def __init__(self, n_layer, n_head, d_model, vocab, seq_len):
        self.L, self.H, self.C, self.V, self.T = n_layer, n_head, d_model, vocab, seq_len
        self.Vp = (vocab + 127) // 128 * 128  # ModelConfig::padded_vocab
        C = d_model
        # (storage elements, joins_previous): a ".bias" joins the weight before it (one op reads both).
        block = [(C, False), (C, True), (C * 3 * C, False), (3 * C, True), (C * C, False), (C, True), (C, False),
                 (C, True), (C * 4 * C, False), (4 * C, True), (4 * C * C, False), (C, True)]
        self.units = [[(self.Vp * C, False), (seq_len * C, False)]] + [block] * n_layer + [[(C, False), (C, True)]]

    def n_params(self):
        """Logical parameters (vocab rows, not padded ones), tied head once: ParamTable::n_params."""
        C = self.C
        return self.V * C + self.T * C + self.L * (12 * C * C + 13 * C) + 2 * C

    def n_tensors(self):
        return 2 + 12 * self.L + 2

    def flops_per_token(self):
        """launch/trainer.cpp (PaLM appendix B): 6 n_params + 12 L C T."""
        return 6.0 * self.n_params() + 12.0 * self.L * self.C * self.T


def cut_into_parts(unit, max_part):
    """sharding/shard.cpp cut_into_parts: part sizes; cuts only between groups, greedy in flat order."""
    sizes, part_begin, at, i = [], 0, 0, 0
    while i < len(unit):
        j = i + 1
        while j < len(unit) and unit[j][1]:
            j += 1
        group = sum(n for n, _ in unit[i:j])
        if at > part_begin and at + group - part_begin > max_part:
            sizes.append(at - part_begin)
            part_begin = at
        at += group
        i = j
    sizes.append(at - part_begin)
    return sizes


class Layout:
    """ZeroEngine::cut_parts at a world size and bucket: Ψ, the largest non-embedding part b, the embedding E."""

    def __init__(self, model, world, bucket_bytes):
        align = world * SHARD_ALIGN
        pad = lambda n: (n + align - 1) // align * align  # noqa: E731
        parts = [[pad(n) for n in cut_into_parts(u, bucket_bytes // 4)] for u in model.units]
        self.n_parts = sum(len(p) for p in parts)
        self.psi = sum(sum(p) for p in parts)
        self.emb = sum(parts[0])
        self.max_part = max(max(p) for p in parts[1:])


def state_bytes(lay, stage, N):
    """ZeroEngine::memory_report formulas: (params, grads, optimizer, working pool) in bytes per rank."""
    psi = lay.psi
    params = 4 * psi if stage <= 2 else 4 * psi // N
    grads = 4 * psi + 4 * psi // N if stage <= 1 else 4 * psi // N
    optim = 8 * psi if stage == 0 else 8 * psi // N
    regions = {0: 0, 1: 0, 2: 2, 3: 4}[stage]
    pool = 4 * max(regions * lay.max_part, lay.emb) if stage >= 2 else 0
    return params, grads, optim, pool


def attention_state(model, B, gpu):
    """A of the activation formula: B·H·T² probabilities on the CPU (Backend default); the CUDA tensor-core path keeps
    row statistics, the output copy and bf16 qkv (cuda/attention.cu attention_state_elems, alignment left out)."""
    BT = B * model.T
    if not gpu:
        return B * model.H * model.T * model.T
    return B * model.H * model.T + BT * model.C + (3 * BT * model.C + 1) // 2


def activation_bytes(model, B, recompute, gpu):
    """Gpt2::activation_formula_bytes and the backward's work buffers (15BTC), fp32."""
    L, C, BT = model.L, model.C, B * model.T
    BTC, BTV, A = BT * C, BT * model.Vp, attention_state(model, B, gpu)
    kept = {
        "none": L * (18 * BTC + 4 * BT + A) + 2 * BTC + 3 * BT + BTV,
        "attention": L * (17 * BTC + 4 * BT) + 3 * BTC + A + 3 * BT + BTV,
        "block": (L + 19) * BTC + 7 * BT + A + BTV,
    }[recompute]
    return 4 * kept, 4 * 15 * BTC


def traffic_elems(psi, stage, N, micro_steps):
    """Elements leaving one rank per optimizer step (docs/sharding.md; test_zero_memory.cpp [traffic])."""
    once = psi * (N - 1) / N
    return {0: 2 * once, 1: 2 * once, 2: (micro_steps + 1) * once, 3: 3 * micro_steps * once}[stage]


def collectives(stage, micro_steps):
    """(overlappable, exposed) collectives per step, each over every part: Ψ(N-1)/N elements; their sum is the
    traffic formula's multiplier of Ψ(N-1)/N."""
    if stage == 0:
        return 1, 1  # reduce-scatter in the last backward; the gradient all-gather before AdamW waits for every part
    if stage == 1:
        return 2, 0  # reduce-scatter in the last backward; the parameter all-gather waited in the next forward
    if stage == 2:
        return micro_steps + 1, 0  # a reduce-scatter per micro-step's backward; the parameter all-gather likewise
    return 3 * micro_steps, 0  # forward and backward gathers prefetched, reduce-scatter in the backward


def overlap_window(stage, micro_steps):
    """Share of a step's compute that overlappable collectives can hide behind: a backward is about 2/3 of a
    micro-step, a forward 1/3; stages 1-2's parameter all-gather runs behind the next step's first forward."""
    return {0: 2 / 3 / micro_steps, 1: 1 / micro_steps, 2: 2 / 3 + 1 / 3 / micro_steps, 3: 1.0}[stage]


def link(N, args):
    """(α seconds, β bytes/s) of the slowest hop of a ring over N ranks."""
    if N <= args.gpus_per_node:
        return args.alpha_nvlink_us * 1e-6, args.nvlink_gbps * 1e9 * args.link_efficiency
    return args.alpha_ib_us * 1e-6, args.ib_gbps * 1e9 * args.link_efficiency


def step_time(model, lay, stage, N, args):
    """(compute s, communication s, its latency part s, exposed communication s) of one optimizer step on one rank."""
    tokens = args.micro_batch * model.T * args.micro_steps
    extra = {"none": 0, "attention": 4 * model.L * model.C * model.T,
             "block": model.L * (16 * model.C ** 2 + 4 * model.C * model.T)}[args.recompute]
    compute = tokens * (model.flops_per_token() + extra) / (args.gpu_tflops * 1e12 * args.mfu)
    alpha, beta = link(N, args)
    overlappable, exposed = collectives(stage, args.micro_steps)
    # One reduce-scatter or all-gather of every part: a ring of N-1 steps per part, 1/N of the part per step.
    latency = lay.n_parts * (N - 1) * alpha
    t_coll = latency + (N - 1) / N * 4 * lay.psi / beta
    comm = (overlappable + exposed) * t_coll
    hidden = min(args.overlap * overlappable * t_coll, overlap_window(stage, args.micro_steps) * compute)
    return compute, comm, (overlappable + exposed) * latency, max(0.0, comm - hidden)


def checkpoint_bytes(model):
    """12 bytes per logical parameter (params, Adam m, v in fp32, docs/checkpoint-format.md section 3) + metadata."""
    return 12 * model.n_params() + 3 * model.n_tensors() * CKPT_BYTES_PER_DATASET


def checkpoint_pieces(model, N, bucket_bytes):
    """Mean contiguous pieces of one dataset kind (params, m or v) a rank writes: (tensor, shard) overlaps / N."""
    pieces = 0
    for unit in model.units:
        sizes = iter(cut_into_parts(unit, bucket_bytes // 4))
        part_end, offset = 0, 0  # offset: the tensor's start within its part
        for n, _ in unit:
            if offset >= part_end:  # the tensor opens the next part
                part_end, offset = next(sizes), 0
                align = N * SHARD_ALIGN
                shard = (part_end + align - 1) // align * align // N
            pieces += (offset + n - 1) // shard - offset // shard + 1
            offset += n
    return pieces / N


def checkpoint_write_s(model, N, args):
    nodes = math.ceil(N / args.gpus_per_node)
    bandwidth = min(args.pfs_gbps, nodes * args.client_gbps) * 1e9
    return checkpoint_bytes(model) / bandwidth


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--gpu_tflops", type=float, default=989.0, help="dense bf16 peak per GPU (H100 SXM datasheet: 989)")
    a("--mfu", type=float, default=0.35, help="sustained fraction of the peak (docs/performance.md budget: ~0.34)")
    a("--micro_batch", type=int, default=4, help="sequences per rank per micro-step")
    a("--micro_steps", type=int, default=1, help="micro-steps per optimizer step (gradient accumulation)")
    a("--recompute", choices=["none", "attention", "block"], default="attention")
    a("--bucket_mb", type=float, default=32, help="--zero_bucket_mb")
    a("--overlap", type=float, default=0.8, help="assumed fraction of overlappable communication hidden")
    a("--gpus_per_node", type=int, default=8)
    a("--nvlink_gbps", type=float, default=450, help="per GPU and direction (H100 SXM NVLink: 900 GB/s total)")
    a("--ib_gbps", type=float, default=50, help="per GPU and direction (one 400 Gb/s NDR/ConnectX-7 NIC per GPU)")
    a("--link_efficiency", type=float, default=0.8, help="achieved fraction of link bandwidth (assumed)")
    a("--alpha_nvlink_us", type=float, default=3.0, help="per ring step within a node (assumed)")
    a("--alpha_ib_us", type=float, default=6.0, help="per ring step between nodes (assumed)")
    a("--gpu_mem_gib", type=float, default=74.5, help="H100 80 GB = 74.5 GiB")
    a("--reserve_gib", type=float, default=4.0, help="CUDA context, NCCL, cuBLAS workspace, fragmentation")
    a("--pfs_gbps", type=float, default=100, help="aggregate parallel file system write bandwidth, GB/s")
    a("--client_gbps", type=float, default=10, help="write bandwidth one node's client reaches, GB/s")
    a("--models", default="gpt2,gpt2-medium,gpt2-large,gpt2-xl")
    a("--ranks", default="8,64,256,1024")
    a("--cpu_check", action="store_true", help="print the CPU cases docs/performance.md measured, predicted")
    a("--measured", metavar="OVERLAP_JSON",
      help="predict the 2-node steps bench/overlap.sh measured (docs/overlap.json) beside the measurements")
    return p.parse_args(argv)


def model_table(name, args):
    model = Model(*PRESETS[name])
    B = args.micro_batch
    act, work = activation_bytes(model, B, args.recompute, gpu=True)
    print(f"\n### GPT-2 {MODEL_LABELS.get(name, name)} (`{name}`): {model.n_params():,} parameters, "
          f"{model.flops_per_token() / 1e9:.3f} GFLOP/token; activations + work {(act + work) / GIB:.2f} GiB\n")
    print("| N | stage | state GiB | pool GiB | bf16 copy GiB | total GiB | fits | traffic GB/step "
          "| compute ms | comm ms | of it α ms | exposed ms | step ms | tok/s/GPU |")
    print("|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for N in (int(n) for n in args.ranks.split(",")):
        lay = Layout(model, N, int(args.bucket_mb * MIB))
        for stage in range(4):
            params, grads, optim, pool = state_bytes(lay, stage, N)
            copy = 2 * lay.psi if stage <= 2 else 2 * pool // 4  # the CUDA backend's bf16 parameter copy
            total = params + grads + optim + pool + copy + act + work
            fits = "yes" if total <= (args.gpu_mem_gib - args.reserve_gib) * GIB else "**no**"
            traffic = traffic_elems(lay.psi, stage, N, args.micro_steps) * 4
            comp, comm, lat, exposed = step_time(model, lay, stage, N, args)
            tok_s = B * model.T * args.micro_steps / (comp + exposed)
            print(f"| {N} | {stage} | {(params + grads + optim) / GIB:.2f} | {pool / GIB:.2f} | {copy / GIB:.2f} "
                  f"| {total / GIB:.2f} | {fits} | {traffic / 1e9:.2f} | {comp * 1e3:.0f} | {comm * 1e3:.0f} "
                  f"| {lat * 1e3:.0f} | {exposed * 1e3:.0f} | {(comp + exposed) * 1e3:.0f} | {tok_s:,.0f} |")


def checkpoint_table(args):
    ranks = [int(n) for n in args.ranks.split(",")]
    print("\n### Checkpoint write (one model.h5, every rank writes its shard): seconds (mean piece KiB)\n")
    print("| model | bytes | " + " | ".join(f"N={N}" for N in ranks) + " |")
    print("|---|---:|" + "---:|" * len(ranks))
    for name in args.models.split(","):
        model = Model(*PRESETS[name])
        bucket = int(args.bucket_mb * MIB)
        piece_kib = [4 * model.n_params() / N / checkpoint_pieces(model, N, bucket) / 1024 for N in ranks]
        times = " | ".join(f"{checkpoint_write_s(model, N, args):.2f} ({kib:,.0f})" for N, kib in zip(ranks, piece_kib))
        print(f"| {MODEL_LABELS.get(name, name)} | {checkpoint_bytes(model) / 1e9:.2f} GB | {times} |")


def with_seq_len(name, seq_len):
    n_layer, n_head, d_model, vocab, _ = PRESETS[name]
    return Model(n_layer, n_head, d_model, vocab, seq_len)


def cpu_zero3_memory(N, seq_len=64, micro_batch=4, bucket_mb=32):
    """docs/performance.md "Memory" case (GPT-2 124M, T 64, CPU, ZeRO-3) in MiB: state, pool, activations + work,
    and issue 16's target 1.3 x (16Ψ/N + activations + work + 2 buckets)."""
    model = with_seq_len("gpt2", seq_len)
    lay = Layout(model, N, int(bucket_mb * MIB))
    params, grads, optim, pool = state_bytes(lay, 3, N)
    act, work = activation_bytes(model, micro_batch, "none", gpu=False)
    state = params + grads + optim
    target = 1.3 * (state + act + work + 2 * bucket_mb * MIB)
    return {k: v / MIB for k, v in (("state", state), ("pool", pool), ("act", act + work), ("target", target))}


def cpu_traffic_mb(N, stage, preset="small", micro_steps=1, bucket_mb=32):
    """docs/performance.md "ZeRO traffic": the theory column (MB = 1e6 bytes) and Ψ."""
    lay = Layout(Model(*PRESETS[preset]), N, int(bucket_mb * MIB))
    return traffic_elems(lay.psi, stage, N, micro_steps) * 4 / 1e6, lay.psi


def cpu_check():
    print("CPU cases docs/performance.md records, predicted by this model (compare with its tables):\n")
    print("| case | predicted |\n|---|---|")
    for stage in range(4):
        mb, psi = cpu_traffic_mb(4, stage)
        print(f"| traffic, `small`, N 4, stage {stage} | Ψ {psi}, {mb:.3f} MB/step |")
    for N in (4, 8):
        m = cpu_zero3_memory(N)
        print(f"| memory, GPT-2 124M T 64 B 4, ZeRO-3, N {N} | state {m['state']:.1f} MiB, pool {m['pool']:.1f} MiB, "
              f"activations + work {m['act']:.1f} MiB, sum {m['state'] + m['pool'] + m['act']:.1f} MiB, "
              f"target {m['target']:.1f} MiB |")
    model = with_seq_len("gpt2", 1024)
    for mode in ("none", "attention", "block"):
        act, work = activation_bytes(model, 1, mode, gpu=False)
        print(f"| activations, GPT-2 124M T 1024 B 1, `--recompute {mode}` | {act / MIB:.1f} + {work / MIB:.1f} MiB |")
    model = with_seq_len("gpt2", 64)
    print(f"| checkpoint, GPT-2 124M T 64 | {12 * model.n_params():,} bytes of tensors, "
          f"{checkpoint_bytes(model):,} with metadata |")


def measured_check(path, f):
    """Predicted step time of the 2-node runs bench/overlap.sh measured (its overlap.json) beside what was measured:
    one op rate for the machine (the median of the compute-only runs), and per link rate an α-β fit: α the 1 KiB
    all-gather's time (bench/overlap_comm link), β the comm-only steps' bytes over their time less n·α."""
    import json
    import statistics
    rows = [r for r in json.load(open(path))["rows"] if r["variant"] == "overlap"]
    N = 2
    lays = {r["preset"]: Layout(Model(*PRESETS[r["preset"]]), N, 32 << 20) for r in rows}
    def n_latencies(r):  # α terms of a comm-only step: every collective over every part, N-1 ring steps
        return sum(collectives(r["stage"], 1)) * lays[r["preset"]].n_parts * (N - 1)
    def flops(r):
        model = Model(*PRESETS[r["preset"]])
        return r["micro_batch"] * model.T * model.flops_per_token()
    rate = statistics.median(flops(r) / r["compute_s"] for r in rows)
    link = {}
    for name in dict.fromkeys(r["rate"] for r in rows):
        at = [r for r in rows if r["rate"] == name]
        alpha = at[0]["link_points"][0][1]
        beta = sum(r["comm_bytes"] for r in at) / sum(r["comm_s"] - n_latencies(r) * alpha for r in at)
        link[name] = (alpha, beta)
    print(f"Measured: 2 namespace nodes x 1 rank ({path}); op rate {rate / 1e9:.1f} GFLOP/s (median of the "
          f"compute-only runs); overlap f = {f:g}\n")
    print("| stage | tc rate | α ms | β MB/s | compute s | comm s | step f=0 s | step f s | step f=1 s | measured s "
          "| off | f fit |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        stage, (alpha, beta), lay = r["stage"], link[r["rate"]], lays[r["preset"]]
        compute = flops(r) / rate
        overlappable, exposed = collectives(stage, 1)
        t_coll = lay.n_parts * (N - 1) * alpha + (N - 1) / N * 4 * lay.psi / beta
        comm = (overlappable + exposed) * t_coll
        window = overlap_window(stage, 1) * compute
        step = {x: compute + comm - min(x * overlappable * t_coll, window) for x in (0.0, f, 1.0)}
        # The f that reproduces the measured step, where the overlappable time (not the window) binds.
        fit = (compute + comm - r["step_s"]) / (overlappable * t_coll)
        fit_text = f"{min(max(fit, 0.0), 1.0):.2f}" if overlappable * t_coll <= window else "window"
        print(f"| {stage} | {r['rate']} | {alpha * 1e3:.2f} | {beta / 1e6:,.0f} | {compute:.3f} | {comm:.3f} "
              f"| {step[0.0]:.3f} | {step[f]:.3f} | {step[1.0]:.3f} | {r['step_s']:.3f} "
              f"| {step[f] / r['step_s'] - 1:+.0%} | {fit_text} |")


def main(argv=None):
    args = parse_args(argv)
    if args.cpu_check:
        cpu_check()
        return
    if args.measured:
        measured_check(args.measured, args.overlap)
        return
    print(f"Assumptions: {args.gpu_tflops:g} TFLOP/s x MFU {args.mfu:g}; micro-batch {args.micro_batch} x T 1024, "
          f"{args.micro_steps} micro-step(s)/step, --recompute {args.recompute}, bucket {args.bucket_mb:g} MiB; "
          f"NVLink {args.nvlink_gbps:g} GB/s α {args.alpha_nvlink_us:g} µs (N ≤ {args.gpus_per_node}), "
          f"IB {args.ib_gbps:g} GB/s α {args.alpha_ib_us:g} µs, efficiency {args.link_efficiency:g}, overlap "
          f"{args.overlap:g}; PFS {args.pfs_gbps:g} GB/s, {args.client_gbps:g} GB/s per node.")
    for name in args.models.split(","):
        model_table(name, args)
    checkpoint_table(args)


if __name__ == "__main__":
    main()
