#!/usr/bin/env python3
# Files laid out differently from what zerotrain writes still load, bitwise, with every chunk checked. The load reads
# contiguous float32-LE datasets with pread at H5Dget_offset (ckpt/direct_read.cpp) and any other dataset through
# H5Dread. Three copies of one checkpoint (wide model: wte spans two checksum chunks):
#  A. as written;  B. some datasets rewritten by h5py as chunked and one as big-endian float (read through HDF5);
#  C. h5repack'ed with a 512-byte user block (every offset moves; datasets reordered).
# First, the save's two routes write the same file contents: tensor bytes written with pwrite at H5Dget_offset
# (ckpt/direct_write.cpp, the default) and through H5Dwrite (--ckpt_write hdf5) give bitwise-equal tensors and
# chunk digests.
# Each copy resumes on 3 ranks at stage 3 with no step left and re-saves: the re-saved tensors must be bitwise the
# source's. Then one flipped value in a chunked dataset (B) and one flipped byte in wte's first chunk past rank 0's
# slice (C: found through the tail that rank 0 reads to complete its chunk) must each fail the resume naming the
# tensor.
import os
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_common as C  # noqa: E402

WIDE = dict(vocab=5000, d_model=256, n_head=4)
BASE = dict(global_batch_size=12, micro_batch_size=1, seed=13, **WIDE)
REWRITE_CHUNKED = ["params/wpe", "optim/exp_avg/h.1.mlp.c_fc.weight", "optim/exp_avg_sq/ln_f.bias"]
REWRITE_BIG_ENDIAN = "params/h.0.attn.c_attn.weight"


def resume(work, src, tag, expect=0):
    out = os.path.join(work, f"resume_{tag}")
    return C.run(3, C.train_args(out, zero_stage=3, max_steps=2, save_interval=1, resume_from_checkpoint=src,
                                 **BASE), expect=expect), f"{out}/checkpoint-2"


def main():
    t0 = time.time()
    work = C.setup(sys.argv, "ckpt_layouts")
    run = os.path.join(work, "run")
    C.run(2, C.train_args(run, zero_stage=1, max_steps=2, save_interval=2, **BASE))
    src = f"{run}/checkpoint-2"
    want = C.read_tensors(src)
    run_h5 = os.path.join(work, "run_hdf5_write")
    C.run(2, C.train_args(run_h5, zero_stage=1, max_steps=2, save_interval=2, ckpt_write="hdf5", **BASE))
    bad = C.diff_tensors(want, C.read_tensors(f"{run_h5}/checkpoint-2"))
    ds_a, ds_b = C.manifest(src)["datasets"], C.manifest(f"{run_h5}/checkpoint-2")["datasets"]
    C.check(len(want) == 84 and not bad and ds_a == ds_b,
            f"direct (pwrite) and H5Dwrite saves: all {len(want)} tensors and every chunk digest equal",
            f"{bad[:5]}")

    chunked = os.path.join(work, "chunked", "checkpoint-2")
    shutil.copytree(src, chunked)
    with h5py.File(f"{chunked}/model.h5", "r+") as f:
        for name in REWRITE_CHUNKED:
            x = f[name][()]
            del f[name]
            f.create_dataset(name, data=x, chunks=True)
        x = f[REWRITE_BIG_ENDIAN][()]
        del f[REWRITE_BIG_ENDIAN]
        f.create_dataset(REWRITE_BIG_ENDIAN, data=x.astype(">f4"))
        C.check(all(f[n].chunks is not None for n in REWRITE_CHUNKED) and f[REWRITE_BIG_ENDIAN].dtype == ">f4",
                f"copy B: {len(REWRITE_CHUNKED)} datasets chunked, one big-endian")

    userblock = os.path.join(work, "userblock", "checkpoint-2")
    os.makedirs(userblock)
    shutil.copy(f"{src}/manifest.json", userblock)
    with open(os.path.join(work, "ublock.bin"), "wb") as f:
        f.write(b"zerotrain test user block\n".ljust(512, b"\0"))  # h5repack spins on one shorter than -b
    subprocess.run(["h5repack", "-u", os.path.join(work, "ublock.bin"), "-b", "512", f"{src}/model.h5",
                    f"{userblock}/model.h5"], check=True)
    with h5py.File(f"{userblock}/model.h5", "r") as f:
        C.check(f.userblock_size == 512, "copy C: h5repack wrote a 512-byte user block")

    for tag, ck in (("as_written", src), ("chunked", chunked), ("userblock", userblock)):
        (_, log), saved = resume(work, ck, tag)
        bad = C.diff_tensors(want, C.read_tensors(saved))
        C.check(f"resumed from {ck}: step 2" in log and not bad,
                f"{tag}: resumed on 3 ranks, all {len(want)} re-saved tensors bitwise the source's", f"{bad[:5]}")

    name = REWRITE_CHUNKED[1]
    with h5py.File(f"{chunked}/model.h5", "r+") as f:
        x = f[name][()]
        x[3, 7] = np.nextafter(x[3, 7], np.float32(np.inf))
        f[name][3, 7] = x[3, 7]
    (rc, log), _ = resume(work, chunked, "chunked_flip", expect=None)
    C.check(rc != 0 and f"checksum mismatch in tensor {name} (" in log,
            f"a changed value in chunked {name} fails the resume naming it", log[-1500:])

    # Stage 3 on 3 ranks: the embeddings unit (wte then wpe, 16-aligned) splits at shard_numel elements, which lies
    # inside wte's chunk 0 (1048576 elements); the byte just past rank 0's slice is read only as its chunk's tail.
    numel = 5120 * 256 + 32 * 256  # padded vocab x d_model, + wpe (seq_len 32)
    shard = (numel + 47) // 48 * 48 // 3
    with h5py.File(f"{userblock}/model.h5", "r") as f:
        at = f["params/wte"].id.get_offset() + 4 * (shard + 5)
    C.check(shard < 1 << 20, f"rank 0's slice of the embeddings ends at wte element {shard}, inside chunk 0")
    with open(f"{userblock}/model.h5", "r+b") as f:
        f.seek(at)
        b = f.read(1)[0]
        f.seek(at)
        f.write(bytes([b ^ 0x20]))
    (rc, log), _ = resume(work, userblock, "userblock_flip", expect=None)
    C.check(rc != 0 and "checksum mismatch in tensor params/wte (elements 0..1048575 of chunk 0)" in log,
            "a flipped byte just past rank 0's slice of wte fails the resume naming wte's chunk 0", log[-1500:])
    C.finish("ckpt_layouts", work, t0)


if __name__ == "__main__":
    main()
