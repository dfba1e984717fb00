#!/usr/bin/env python3
# Resume equals no interruption: for every ZeRO stage S and world size N, 2k steps straight vs k steps, stop
# (--exit_after_steps), resume from `latest`, k more. Losses (metrics.jsonl), the manifest's xxh64 of every dataset
# and every tensor read with h5py (params, exp_avg, exp_avg_sq) must be bitwise identical, plus step, data cursor,
# tokens seen, LR and Adam step. Usage: ckpt_resume.py [--mca-io ompio|romio321]
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_common as C  # noqa: E402

K = 3  # steps before the interruption; 2K in all
# Tiny preset (every tensor one checksum chunk), and a wider one whose wte (5000 x 256 = 1.28M elements) spans two
# checksum chunks split over several ranks: the save must move chunk fragments between ranks to digest them.
TINY = {}
WIDE = {"vocab": 5000, "d_model": 256, "n_head": 4}
CASES = [(S, N, TINY) for S in (0, 1, 2, 3) for N in (1, 2, 4)] + [(3, 4, WIDE), (1, 2, WIDE)]


def one_case(work, S, N, model, D):
    tag = f"S={S} N={N}" + (" wide" if model else "")
    cfg = dict(max_steps=2 * K, save_interval=2 * K, zero_stage=S, micro_batch_size=2, global_batch_size=8, seed=7,
               **model)
    straight = os.path.join(work, f"straight_s{S}_n{N}{'_w' if model else ''}")
    split = os.path.join(work, f"split_s{S}_n{N}{'_w' if model else ''}")
    C.run(N, C.train_args(straight, **cfg))
    C.run(N, C.train_args(split, exit_after_steps=K, **cfg))
    D.check(os.path.isdir(f"{split}/checkpoint-{K}") and not os.path.exists(f"{split}/checkpoint-{2 * K}")
            and len(C.metrics(split)) == K,
            f"{tag}: the interrupted run stopped after {K} steps with checkpoint-{K} only")
    _, out = C.run(N, C.train_args(split, resume_from_checkpoint="latest", **cfg))
    D.check(f"resumed from {split}/checkpoint-{K}: step {K}, world size {N} then {N} now" in out,
            f"{tag}: resume names checkpoint-{K}, step {K}", out)

    ma, mb = C.metrics(straight), C.metrics(split)
    keys = ("step", "loss", "lr", "grad_norm")
    rows_a = [tuple(r[k] for k in keys) for r in ma]
    rows_b = [tuple(r[k] for k in keys) for r in mb]
    D.check(len(rows_a) == 2 * K and rows_a == rows_b,
            f"{tag}: {2 * K} losses, LRs and grad norms bitwise equal (last loss {rows_a[-1][1]!r})",
            f"straight {rows_a}\n        resumed  {rows_b}")

    ca, cb = f"{straight}/checkpoint-{2 * K}", f"{split}/checkpoint-{2 * K}"
    A, B = C.manifest(ca), C.manifest(cb)
    dsa, dsb = A["datasets"], B["datasets"]
    differ = [k for k in dsa if dsa[k]["xxh64"] != dsb.get(k, {}).get("xxh64")]
    D.check(len(dsa) == len(dsb) and len(dsa) > 0 and not differ,
            f"{tag}: all {len(dsa)} manifest xxh64 equal (params, exp_avg, exp_avg_sq)", f"differ: {differ[:5]}")
    fields = lambda m: (m["step"], m["tokens_seen"], m["data"]["cursor"], m["optimizer"]["step"],
                        m["lr_schedule"]["last_lr"], m["world_size"], m["zero_stage"])
    D.check(fields(A) == fields(B) == (2 * K, 2 * K * 8 * A["model"]["seq_len"], 2 * K, 2 * K,
                                       A["lr_schedule"]["last_lr"], N, S),
            f"{tag}: step, tokens seen, data cursor, Adam step, LR, world size, stage equal", f"{fields(A)} {fields(B)}")
    ta, tb = C.read_tensors(ca), C.read_tensors(cb)
    bad = C.diff_tensors(ta, tb)
    D.check(len(ta) == 3 * (len(ta) // 3) and len(ta) >= 3 and not bad,
            f"{tag}: all {len(ta)} tensors read with h5py bitwise equal", f"differ: {bad[:5]}")
    # The checks above must be able to fail: the K-step checkpoint differs from the 2K-step one.
    tk = C.read_tensors(f"{split}/checkpoint-{K}", "params/")
    D.check(C.diff_tensors(tk, {k: v for k, v in tb.items() if k.startswith("params/")}),
            f"{tag}: (sanity) params at step {K} differ from step {2 * K}")


def main():
    t0 = time.time()
    work = C.setup(sys.argv, "ckpt_resume")
    C.run_parallel(lambda case, D: one_case(work, *case, D), CASES, workers=2)
    C.finish("ckpt_resume", work, t0)


if __name__ == "__main__":
    main()
