#!/usr/bin/env python3
# docs/checkpoint-format.md section 10 rebuilt in Python (tokens, sequences, split, Philox, Fisher-Yates, Lemire):
# every global batch a run trained on, as its --debug_dump_dir recorded it, equals the batch the spec names for that
# cursor. A text file (val_fraction 0.1, two epochs crossed, a global batch that does not divide the epoch) and two
# llm.c shards matched by a glob, each under a non-default seed.
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_common as C  # noqa: E402
import gpt2_numpy as G  # noqa: E402

M32, M64 = (1 << 32) - 1, (1 << 64) - 1


def philox(seed, stream, index):
    c = [index & M32, index >> 32, stream & M32, stream >> 32]
    k0, k1 = seed & M32, seed >> 32
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & M32, (p0 >> 32) ^ c[3] ^ k1, p0 & M32]
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return (c[0] << 32) | c[1]


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def below(seed, stream, i, r):
    m = philox(seed, stream, i) * r
    if m & M64 < r:
        a = 1
        while m & M64 < ((1 << 64) - r) % r:
            m = philox(seed, stream, i + (a << 32)) * r
            a += 1
    return m >> 64


def permutation(seed, epoch, n):
    stream = fnv1a64(b"data-epoch") ^ epoch
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = below(seed, stream, i, i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def spec_batch(tokens, T, val_fraction, seed, G_, g):
    S = (len(tokens) - 1) // T
    n_val = 0 if val_fraction == 0 else max(1, int(np.floor(val_fraction * S + 0.5)))
    n_train = S - n_val
    rows = []
    for k in range(g * G_, (g + 1) * G_):
        seq = permutation(seed, k // n_train, n_train)[k % n_train]
        rows.append(tokens[seq * T:seq * T + T + 1])
    rows = np.array(rows, dtype=np.int32)
    return rows[:, :-1], rows[:, 1:]


def check_run(work, name, data, tokens, T, val_fraction, seed, G_, steps, n_ranks):
    dump = os.path.join(work, f"dump_{name}")
    C.run(n_ranks, C.train_args(os.path.join(work, name), data=data, seq_len=T, val_fraction=val_fraction,
                                seed=seed, global_batch_size=G_, micro_batch_size=G_ // n_ranks // 2,
                                max_steps=steps, debug_dump_dir=dump))
    bad = []
    for step in range(steps):
        raw = np.fromfile(os.path.join(dump, f"batch_{step}.bin"), dtype=np.int32).reshape(2, G_, T)
        want_in, want_tg = spec_batch(tokens, T, val_fraction, seed, G_, step)
        if not (np.array_equal(raw[0], want_in) and np.array_equal(raw[1], want_tg)):
            bad.append(step)
    C.check(not bad, f"{name}: the {steps} global batches trained on ({n_ranks} ranks) are the ones the spec names",
            f"differ at steps {bad[:5]}")


def main():
    t0 = time.time()
    work = C.setup(sys.argv, "data_order")
    rng = np.random.default_rng(5)
    text = rng.integers(32, 127, 3001).astype(np.uint8)
    text_path = os.path.join(work, "corpus.txt")
    text.tofile(text_path)
    # 187 sequences of 16, 19 held out, 168 to train: 16 batches of 24 cross into the third epoch.
    check_run(work, "text", text_path, text.astype(np.int64), 16, 0.1, 4321, 24, 16, 2)
    shards = [rng.integers(0, 256, n) for n in (700, 0, 555)]
    for i, s in enumerate(shards):
        G.write_token_shard(os.path.join(work, f"tok_{i:02d}.bin"), s)
    check_run(work, "shards", os.path.join(work, "tok_*.bin"), np.concatenate(shards), 8, 0.05, 77, 8, 20, 1)
    C.finish("data_order", work, t0)


if __name__ == "__main__":
    main()
