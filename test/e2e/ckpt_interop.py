#!/usr/bin/env python3
# Interop: a checkpoint is readable with no zerotrain code. Tensors read with plain h5py equal, bit for bit, the
# values zerotrain held at that step (its --debug_dump_dir params_<step>.bin, a second route out of the trainer);
# every dataset has the global logical shape (wte [vocab, d_model] with vocab = 200, not the padded 256); the
# per-chunk xxh64 digests and per-tensor checksums, recomputed here by an independent pure-Python xxh64 following
# docs/checkpoint-format.md, match the manifest (also for a tensor spanning two checksum chunks); h5dump prints the
# manifest; manifest.json beside model.h5 is the same manifest.
import json
import os
import shutil
import struct
import subprocess
import sys
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_common as C  # noqa: E402

xxh64 = C.xxh64


def digests_of(arr, chunk_elems):
    """The spec's checksum: xxh64 of each chunk of chunk_elems float32 (row-major, little-endian), then xxh64 of the
    chunk digests as little-endian u64."""
    flat = np.ascontiguousarray(arr, dtype="<f4").reshape(-1)
    chunks = [xxh64(flat[c:c + chunk_elems].tobytes()) for c in range(0, flat.size, chunk_elems)]
    return [f"{c:016x}" for c in chunks], f"{xxh64(struct.pack(f'<{len(chunks)}Q', *chunks)):016x}"


def main():
    t0 = time.time()
    work = C.setup(sys.argv, "ckpt_interop")
    C.check(xxh64(b"") == 0xEF46DB3751D8E999 and xxh64(b"abc") == 0x44BC2CF5AD770999
            and xxh64(bytes(range(100))) == 0x6AC1E58032166597,
            "the test's xxh64 reproduces the reference vectors (\"\", \"abc\", bytes 0..99)")

    out, dump = os.path.join(work, "run"), os.path.join(work, "dump")
    C.run(2, C.train_args(out, max_steps=4, save_interval=2, zero_stage=3, vocab=200, debug_dump_dir=dump))
    with open(os.path.join(dump, "index.json")) as f:
        index = json.load(f)
    for step in (2, 4):
        ck = f"{out}/checkpoint-{step}"
        flat = np.fromfile(os.path.join(dump, f"params_{step - 1}.bin"), dtype=np.float32)  # after step index s-1
        with h5py.File(f"{ck}/model.h5", "r") as f:
            bad, n = [], 0
            for t in index["tensors"]:
                want = flat[t["offset"]:t["offset"] + int(np.prod(t["shape"]))].reshape(t["shape"])
                for kind in ("params", "optim/exp_avg", "optim/exp_avg_sq"):
                    ds = f[f"{kind}/{t['name']}"]
                    if list(ds.shape) != t["shape"] or ds.dtype != np.dtype("<f4"):
                        bad.append(f"{kind}/{t['name']} shape {ds.shape} dtype {ds.dtype}")
                got = f[f"params/{t['name']}"][()]
                n += 1
                if not C.bits_equal(got, want):
                    bad.append(f"params/{t['name']} values")
            C.check(n == len(index["tensors"]) == 28 and not bad,
                    f"checkpoint-{step}: all {n} params bitwise equal to zerotrain's dump after step {step}; params, "
                    f"exp_avg, exp_avg_sq have the logical shapes, float32 little-endian", f"{bad[:5]}")
            C.check(f["params/wte"].shape == (200, 64) and f["optim/exp_avg_sq/wte"].shape == (200, 64)
                    and f["params/wpe"].shape == (32, 64),
                    f"checkpoint-{step}: wte is [200, 64] (vocab 200, not padded to 256), wpe [32, 64]")
            v_min = min(float(f[f"optim/exp_avg_sq/{t['name']}"][()].min()) for t in index["tensors"])
            C.check(v_min >= 0, f"checkpoint-{step}: exp_avg_sq is non-negative everywhere (min {v_min:g})")
    earlier = np.fromfile(os.path.join(dump, "params_1.bin"), dtype=np.float32)
    C.check(not np.array_equal(earlier, flat), "(sanity) the dumps of step 2 and step 4 differ")

    ck = f"{out}/checkpoint-4"
    man = C.manifest(ck)
    with open(f"{ck}/manifest.json") as f:
        C.check(json.load(f) == man, "manifest.json beside model.h5 is the manifest inside it")
    K = man["checksum"]["chunk_elems"]
    tensors = C.read_tensors(ck)
    bad = []
    for name, arr in tensors.items():
        chunks, total = digests_of(arr, K)
        e = man["datasets"][name]
        if chunks != e["chunks"] or total != e["xxh64"] or e["shape"] != list(arr.shape) or e["dtype"] != "float32":
            bad.append(name)
    C.check(len(tensors) == 84 == len(man["datasets"]) and not bad,
            f"all {len(tensors)} datasets: manifest shape, dtype, chunk digests and xxh64 recomputed independently",
            f"{bad[:5]}")

    # A tensor bigger than one checksum chunk: wte of 5000 x 256 = 1.28M elements = 2 chunks, split over 4 ranks.
    wide = os.path.join(work, "wide")
    C.run(4, C.train_args(wide, max_steps=1, save_interval=1, zero_stage=3, vocab=5000, d_model=256, n_head=4,
                          micro_batch_size=2))
    man = C.manifest(f"{wide}/checkpoint-1")
    with h5py.File(f"{wide}/checkpoint-1/model.h5", "r") as f:
        wte = f["params/wte"][()]
    chunks, total = digests_of(wte, man["checksum"]["chunk_elems"])
    e = man["datasets"]["params/wte"]
    C.check(wte.shape == (5000, 256) and len(chunks) == 2 and chunks == e["chunks"] and total == e["xxh64"],
            f"wide wte {wte.shape}: {len(chunks)} chunk digests and xxh64 match the manifest")

    h5dump = shutil.which("h5dump")
    if C.check(h5dump is not None, "h5dump is installed"):
        p = subprocess.run([h5dump, "-d", "/manifest", f"{ck}/model.h5"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        C.check(p.returncode == 0 and "zerotrain-checkpoint" in p.stdout and "format_version" in p.stdout
                and "STRSIZE" in p.stdout, "h5dump -d /manifest prints the manifest (a fixed-length string)",
                p.stdout[-1000:])
        p = subprocess.run([h5dump, "-H", "-d", "/params/wte", f"{ck}/model.h5"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        C.check(p.returncode == 0 and "( 200, 64 )" in p.stdout and "H5T_IEEE_F32LE" in p.stdout,
                "h5dump -H shows /params/wte as H5T_IEEE_F32LE ( 200, 64 )", p.stdout[-1000:])
    C.finish("ckpt_interop", work, t0)


if __name__ == "__main__":
    main()
