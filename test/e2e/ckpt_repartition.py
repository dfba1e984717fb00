#!/usr/bin/env python3
# Re-partition on resume: a checkpoint written by N ranks at ZeRO stage S loads into N' ranks at stage S'.
#  A. world sizes {1,2,3,4} -> {1,2,3,4} (stage 1 -> 2) and B. every stage pair {0..3} -> {0..3} (4 -> 3 ranks):
#     the values the resumed run holds (its --debug_dump_dir params_init.bin, written right after the load, from
#     gathered shards) are bitwise the checkpoint's params; and the resume, which has no step left to train
#     (--max_steps = saved step), re-saves the state in its own layout: that file's logical tensors (params AND Adam
#     exp_avg / exp_avg_sq) must be bitwise the source file's.
#  C. Adam state through a re-partition at one world size: save at (2, S), resume at (2, S') for one step and save;
#     with one micro-step per rank and step the four ZeRO stages are bitwise-identical at a given world size
#     (docs/sharding.md; with more, stages 0-1 sum micro-steps before ranks and 2-3 after, so only 0 = 1 and 2 = 3),
#     so that checkpoint must equal the uninterrupted (2, S) run's bit for bit, params, exp_avg and exp_avg_sq, for
#     every S -> S'.
#  D. Training after a re-partitioned resume (4 ranks stage 3 -> 3 ranks stage 1) continues within LOSS_RTOL of the
#     uninterrupted run (different world sizes sum gradients in a different order, so bits may differ).
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_common as C  # noqa: E402

K = 2          # saved step
STEPS = 6      # max_steps of the original runs
# fp32 gradients summed over 4 vs 3 ranks round differently (~1e-7 relative per sum); over a few Adam steps the
# loss moves by far less than 1e-5 relative. A wrong shard (misplaced tensor piece) changes it by >1e-3.
LOSS_RTOL = 1e-5
G = 12         # global batch divisible by 1, 2, 3 and 4 ranks
BASE = dict(max_steps=STEPS, global_batch_size=G, micro_batch_size=1, seed=11)
ONE_MICRO = dict(BASE, micro_batch_size=G // 2)  # 2 ranks, one micro-step each: all four stages agree bitwise


def save_at(work, N, S, base=BASE):
    tag = "" if base is BASE else "_one_micro"
    out = os.path.join(work, f"src_n{N}_s{S}{tag}")
    if not os.path.isdir(f"{out}/checkpoint-{K}"):
        C.run(N, C.train_args(out, zero_stage=S, save_interval=STEPS, exit_after_steps=K, **base))
    return f"{out}/checkpoint-{K}"


def dump_tensors(dump_dir, name):
    with open(os.path.join(dump_dir, "index.json")) as f:
        idx = json.load(f)
    flat = np.fromfile(os.path.join(dump_dir, name), dtype=np.float32)
    return {"params/" + t["name"]: flat[t["offset"]:t["offset"] + int(np.prod(t["shape"]))].reshape(t["shape"])
            for t in idx["tensors"]}


def load_into(work, src, N, S, N2, S2, stats):
    """Resumes `src` on N2 ranks at stage S2 without a step; compares what it holds with the file."""
    tag = f"({N},{S})->({N2},{S2})"
    out = os.path.join(work, f"load_{N}{S}_{N2}{S2}")
    dump = out + "_dump"
    _, log = C.run(N2, C.train_args(out, zero_stage=S2, save_interval=1, resume_from_checkpoint=src,
                                     debug_dump_dir=dump, **dict(BASE, max_steps=K)))
    C.check(f"resumed from {src}: step {K}, world size {N} then {N2} now, ZeRO stage {S} then {S2} now" in log,
            f"{tag}: resume line names the source, step {K}, both shapes", log)
    want = C.read_tensors(src, "params/")
    held = dump_tensors(dump, "params_init.bin")
    bad = C.diff_tensors(want, held)
    C.check(len(want) > 0 and not bad, f"{tag}: all {len(want)} params held after the load are bitwise the file's",
            f"differ: {bad[:5]}")
    resaved = f"{out}/checkpoint-{K}"
    C.check(f"re-saving step {K} for {N2} rank(s) at ZeRO stage {S2}" in log and os.path.isdir(resaved),
            f"{tag}: the zero-step resume re-saved checkpoint-{K}", log)
    a, b = C.read_tensors(src), C.read_tensors(resaved)
    bad = C.diff_tensors(a, b)
    n_m = sum(1 for k in b if k.startswith("optim/"))
    C.check(len(a) > 0 and len(a) == len(b) and n_m > 0 and not bad,
            f"{tag}: re-saved file: all {len(a)} logical tensors ({n_m} of them Adam states) bitwise equal",
            f"differ: {bad[:5]}")
    stats["resaved"] += 1


def main():
    t0 = time.time()
    work = C.setup(sys.argv, "ckpt_repartition")
    stats = {"resaved": 0}

    print("A. world sizes {1,2,3,4} -> {1,2,3,4}, stage 1 -> 2")
    for N in (1, 2, 3, 4):
        src = save_at(work, N, 1)
        for N2 in (1, 2, 3, 4):
            load_into(work, src, N, 1, N2, 2, stats)

    print("B. every stage pair, 4 ranks -> 3 ranks")
    for S in (0, 1, 2, 3):
        src = save_at(work, 4, S)
        for S2 in (0, 1, 2, 3):
            load_into(work, src, 4, S, 3, S2, stats)
    # wte of 5000 x 256 spans two checksum chunks that straddle rank boundaries on both sides.
    wide = dict(vocab=5000, d_model=256, n_head=4)
    out = os.path.join(work, "src_wide")
    C.run(4, C.train_args(out, zero_stage=3, save_interval=STEPS, exit_after_steps=K, **BASE, **wide))
    w_src = f"{out}/checkpoint-{K}"
    w_out = os.path.join(work, "load_wide")
    C.run(3, C.train_args(w_out, zero_stage=0, resume_from_checkpoint=w_src, debug_dump_dir=w_out + "_dump",
                          **dict(BASE, max_steps=K), **wide))
    bad = C.diff_tensors(C.read_tensors(w_src, "params/"), dump_tensors(w_out + "_dump", "params_init.bin"))
    C.check(not bad, "wide model (wte in 2 checksum chunks) (4,3)->(3,0): params held bitwise the file's",
            f"differ: {bad[:5]}")
    C.check(stats["resaved"] == 32, f"{stats['resaved']} re-partitioned re-saves compared (16 world-size pairs + 16 "
            f"stage pairs)")

    print("C. Adam state through every stage pair at 2 ranks: resume + 1 step == uninterrupted, bitwise")
    for S in (0, 1, 2, 3):
        ref = os.path.join(work, f"ref_n2_s{S}")
        C.run(2, C.train_args(ref, zero_stage=S, save_interval=STEPS, exit_after_steps=K + 1, **ONE_MICRO))
        ref_t = C.read_tensors(f"{ref}/checkpoint-{K + 1}")
        src = save_at(work, 2, S, ONE_MICRO)
        for S2 in (0, 1, 2, 3):
            out = os.path.join(work, f"step_{S}{S2}")
            C.run(2, C.train_args(out, zero_stage=S2, save_interval=STEPS, exit_after_steps=1,
                                  resume_from_checkpoint=src, **ONE_MICRO))
            got = C.read_tensors(f"{out}/checkpoint-{K + 1}")
            bad = C.diff_tensors(ref_t, got)
            n_m = sum(1 for k in got if k.startswith("optim/"))
            C.check(len(got) == len(ref_t) and n_m > 0 and not bad,
                    f"(2,{S})->(2,{S2}) + 1 step: {len(got)} tensors incl. {n_m} Adam states bitwise equal to the "
                    f"uninterrupted run", f"differ: {bad[:5]}")

    print("C2. with 6 micro-steps per step, 1 -> 0 and 3 -> 2 at 2 ranks: resume + 1 step == uninterrupted, bitwise")
    for S, S2 in ((1, 0), (3, 2)):
        ref = os.path.join(work, f"ref_accum_n2_s{S2}")
        C.run(2, C.train_args(ref, zero_stage=S2, save_interval=STEPS, exit_after_steps=K + 1, **BASE))
        out = os.path.join(work, f"step_accum_{S}{S2}")
        C.run(2, C.train_args(out, zero_stage=S2, save_interval=STEPS, exit_after_steps=1,
                              resume_from_checkpoint=save_at(work, 2, S), **BASE))
        bad = C.diff_tensors(C.read_tensors(f"{ref}/checkpoint-{K + 1}"), C.read_tensors(f"{out}/checkpoint-{K + 1}"))
        C.check(not bad, f"(2,{S})->(2,{S2}) + 1 step, 6 micro-steps: bitwise the uninterrupted (2,{S2}) run",
                f"differ: {bad[:5]}")

    print(f"D. training continues after (4,3) -> (3,1) within relative {LOSS_RTOL:g} of the uninterrupted run")
    src = save_at(work, 4, 3)
    straight = os.path.join(work, "straight_n4_s3")
    C.run(4, C.train_args(straight, zero_stage=3, **BASE))
    cont = os.path.join(work, "cont_n3_s1")
    C.run(3, C.train_args(cont, zero_stage=1, resume_from_checkpoint=src, **BASE))
    la = [r["loss"] for r in C.metrics(straight)]
    lb = [r["loss"] for r in C.metrics(cont)]
    rel = [abs(a - b) / abs(a) for a, b in zip(la[K:], lb)]
    C.check(len(la) == STEPS and len(lb) == STEPS - K and max(rel) <= LOSS_RTOL,
            f"steps {K + 1}..{STEPS}: max relative loss difference {max(rel):.2e} <= {LOSS_RTOL:g}",
            f"straight {la[K:]}\n        resumed  {lb}")
    C.check(abs(lb[-1] - la[0]) > 100 * LOSS_RTOL * la[0],
            f"(sanity) the loss moved during training ({la[0]:.6f} -> {lb[-1]:.6f}) by more than the tolerance")
    C.finish("ckpt_repartition", work, t0)


if __name__ == "__main__":
    main()
