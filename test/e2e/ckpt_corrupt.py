#!/usr/bin/env python3
# Corruption: 200 copies of a committed checkpoint, each with one byte flipped at a random offset inside some
# tensor's data (offsets from h5py's dset.id.get_offset(); seed printed, ZT_SEED=n replays). Every copy must fail
# `ckpt verify` (1 or 2 ranks) with a checksum error naming exactly that tensor; a resume from the copy must fail
# naming that tensor for every 8th copy (25 resumes, on 1-3 ranks at different stages).
# Why only every 8th resume: a resume is a full training start (MPI launch, model build, collective open), about
# 4x the cost of a verify; it runs the same per-chunk digest comparison as verify (load_checkpoint checks every
# chunk that starts in a rank's slice, so every chunk is checked exactly once). 25 resumes spread over all three
# kinds of dataset keep the test near a minute on 2 cores.
import concurrent.futures
import os
import random
import shutil
import sys
import time

import h5py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_common as C  # noqa: E402

N_COPIES = 200
RESUME_EVERY = 8


def tensor_extents(h5_path):
    """(dataset name, file offset, n_bytes) of every tensor dataset, from the file's own layout."""
    out = []
    with h5py.File(h5_path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not name.startswith("manifest"):
                off = obj.id.get_offset()
                assert off is not None, f"{name} is not contiguous"
                out.append((name, off, obj.id.get_storage_size()))
        f.visititems(visit)
    return out


def main():
    t0 = time.time()
    work = C.setup(sys.argv, "ckpt_corrupt")
    seed = int(os.environ.get("ZT_SEED", int(time.time()) % 100000))
    print(f"seed {seed} (replay with ZT_SEED={seed})")
    rng = random.Random(seed)
    out = os.path.join(work, "run")
    C.run(2, C.train_args(out, max_steps=2, save_interval=2, zero_stage=1, seed=3, global_batch_size=12,
                          micro_batch_size=1))
    src = f"{out}/checkpoint-2"
    C.run(2, ["ckpt", "verify", src])
    ext = tensor_extents(f"{src}/model.h5")
    total = sum(n for _, _, n in ext)
    params_bytes = sum(n for name, _, n in ext if name.startswith("params/"))
    C.check(len(ext) == 84 and total == 3 * params_bytes,
            f"{len(ext)} tensor datasets, {total} bytes of tensor data (3 x params)")
    # Draw every flip first (so the seed alone fixes them), then run the copies a few at a time: a verify spends
    # most of its wall time starting MPI, not computing.
    flips = []
    for i in range(N_COPIES):
        pos = rng.randrange(total)  # a uniformly random byte of tensor data
        for name, off, n in ext:
            if pos < n:
                break
            pos -= n
        flips.append((i, name, off + pos, pos, rng.randrange(1, 256)))

    def one_copy(flip):
        i, name, at, pos, mask = flip
        d = os.path.join(work, f"c{i}")
        shutil.copytree(src, d)
        with open(f"{d}/model.h5", "r+b") as f:
            f.seek(at)
            old = f.read(1)[0]
            f.seek(at)
            f.write(bytes([old ^ mask]))
        n_ranks = 2 if i % 5 == 0 else 1
        verify = (n_ranks,) + C.run(n_ranks, ["ckpt", "verify", d], expect=None)
        resume = None
        if i % RESUME_EVERY == 0:
            k = i // RESUME_EVERY
            n2, s2 = (1, 2, 3)[k % 3], k % 4
            resume = (n2, s2) + C.run(n2, C.train_args(os.path.join(work, f"r{i}"), max_steps=4, zero_stage=s2,
                                                       seed=3, micro_batch_size=1, resume_from_checkpoint=d),
                                      expect=None)
        shutil.rmtree(d)
        return d, verify, resume

    hit = set()
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one_copy, flips))
    for (i, name, at, pos, mask), (d, verify, resume) in zip(flips, results):
        hit.add(name.rsplit("/", 1)[0])
        named = f"checksum mismatch in tensor {name} ("
        n_ranks, rc, log = verify
        C.check(rc == 1 and named in log and log.count("checksum mismatch") == 1,
                f"#{i} byte {at} ({name} + {pos}, xor {mask:#04x}): verify on {n_ranks} rank(s) fails naming {name}",
                log[-1500:])
        if resume:
            n2, s2, rc, log = resume
            C.check(rc != 0 and named in log and f"{d}/model.h5" in log,
                    f"#{i} resume on {n2} rank(s), stage {s2} fails naming {name} and the file", log[-1500:])
    C.check(hit == {"params", "optim/exp_avg", "optim/exp_avg_sq"} and sum(1 for r in results if r[2]) >= 25,
            f"flips landed in every kind of dataset: {sorted(hit)}")
    C.finish("ckpt_corrupt", work, t0)


if __name__ == "__main__":
    main()
