#!/usr/bin/env python3
# Errors a user can act on, each asserted by its message: model-config mismatch (names every differing field and
# only those), a newer format_version (says to upgrade), a truncated file (names the file), a missing dataset (names
# it), a manifest whose checksum list is corrupt, a global batch the new world size cannot split; `latest` skips a
# corrupt, truncated or incomplete newest checkpoint with a warning and uses the previous one; `latest` with no
# checkpoint starts fresh and says so; changed hyper-parameters are allowed and listed once.
import json
import os
import shutil
import sys
import time

import h5py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_common as C  # noqa: E402

CFG = dict(max_steps=6, save_interval=2, zero_stage=1, micro_batch_size=2, global_batch_size=8, seed=9)


def resume(n, out, src, expect=None, **kw):
    return C.run(n, C.train_args(out, resume_from_checkpoint=src, **dict(CFG, **kw)), expect=expect)


def clone(work, src, name):
    d = os.path.join(work, name)
    shutil.copytree(src, d)
    return d


def main():
    t0 = time.time()
    work = C.setup(sys.argv, "ckpt_errors")
    run = os.path.join(work, "run")
    C.run(2, C.train_args(run, exit_after_steps=4, **CFG))  # checkpoint-2 and checkpoint-4
    good = f"{run}/checkpoint-4"

    print("model config mismatch")
    rc, log = resume(2, os.path.join(work, "o1"), good, n_layer=3, d_model=128)
    C.check(rc != 0 and "n_layer: 2 -> 3" in log and "d_model: 64 -> 128" in log and "written for a different model"
            in log and "n_head:" not in log and "vocab:" not in log and "seq_len:" not in log,
            "error names n_layer (2 -> 3) and d_model (64 -> 128), and no field that matches", log[-1500:])

    print("newer format version")
    newer = clone(work, good, "newer")
    def bump(m):  # a newer writer also has fields this build does not know: the version must be judged first
        m.update(format_version=99, zerotrain_version="9.9.9", new_section={"x": 1})
        m["train"]["new_knob"] = 1
    C.rewrite_manifest(newer, bump)
    rc, log = resume(2, os.path.join(work, "o2"), newer)
    C.check(rc != 0 and "format version 99" in log and "upgrade zerotrain" in log and "9.9.9" in log
            and "reads versions 1..3" in log,
            "resume refuses format version 99, names the writer's version and says to upgrade", log[-1500:])
    rc, log = C.run(2, ["ckpt", "verify", newer], expect=None)
    C.check(rc == 1 and "format version 99" in log, "ckpt verify refuses format version 99", log[-1500:])
    rc, log = C.run(1, ["ckpt", "inspect", newer], expect=None)
    C.check(rc == 0 and "format version 99" in log, "ckpt inspect still prints the newer manifest", log[-800:])
    with h5py.File(f"{newer}/model.h5", "r+") as f:
        del f["manifest_xxh64"]  # a newer version may protect its manifest differently: still "upgrade"
    rc, log = resume(2, os.path.join(work, "o2a"), newer)
    C.check(rc != 0 and "format version 99" in log and "upgrade zerotrain" in log and "digest" not in log,
            "without a digest, format version 99 is still refused as newer, not as damaged", log[-1500:])

    print("additive manifest fields at the same format version are read (and ignored)")
    additive = clone(work, good, "additive")
    def add(m):
        m.update(new_section={"x": 1})
        m["train"]["new_knob"] = 1
        m["model"]["new_note"] = "x"
        m["datasets"]["params/wte"]["new_attr"] = 1
    C.rewrite_manifest(additive, add)
    rc, log = resume(2, os.path.join(work, "o2b"), additive)
    C.check(rc == 0 and f"resumed from {additive}: step 4" in log, "resume reads a manifest with new fields",
            log[-1500:])
    rc, log = C.run(2, ["ckpt", "verify", additive], expect=None)
    C.check(rc == 0, "ckpt verify accepts it", log[-1500:])
    older = clone(work, good, "v0")
    C.rewrite_manifest(older, lambda m: m.update(format_version=0))
    rc, log = resume(1, os.path.join(work, "o2c"), older)
    C.check(rc != 0 and "has no valid format_version (0)" in log, "format_version 0 is refused as invalid",
            log[-1500:])

    print("truncated file")
    trunc = clone(work, good, "trunc")
    size = os.path.getsize(f"{trunc}/model.h5")
    os.truncate(f"{trunc}/model.h5", size * 6 // 10)
    rc, log = resume(2, os.path.join(work, "o3"), trunc)
    C.check(rc != 0 and f"{trunc}/model.h5" in log and "truncated" in log,
            f"resume of a file cut from {size} to {size * 6 // 10} bytes fails naming the file", log[-1500:])
    rc, log = C.run(2, ["ckpt", "verify", trunc], expect=None)
    C.check(rc == 1 and f"{trunc}/model.h5" in log, "ckpt verify fails naming the truncated file", log[-1500:])

    print("missing dataset")
    miss = clone(work, good, "missing")
    with h5py.File(f"{miss}/model.h5", "r+") as f:
        del f["optim/exp_avg/h.1.mlp.c_fc.weight"]
    rc, log = resume(2, os.path.join(work, "o4"), miss)
    C.check(rc != 0 and "dataset optim/exp_avg/h.1.mlp.c_fc.weight is missing" in log,
            "resume names the missing dataset", log[-1500:])
    rc, log = C.run(2, ["ckpt", "verify", miss], expect=None)
    C.check(rc == 1 and "dataset optim/exp_avg/h.1.mlp.c_fc.weight is missing" in log,
            "ckpt verify names the missing dataset", log[-1500:])

    print("corrupt manifest checksum list")
    badman = clone(work, good, "badman")
    C.rewrite_manifest(badman, lambda m: m["datasets"]["params/wpe"].update(xxh64="0123456789abcdef"))
    rc, log = resume(1, os.path.join(work, "o5"), badman)
    C.check(rc != 0 and "xxh64 of params/wpe does not match its chunk digests" in log,
            "resume names params/wpe whose manifest checksum is inconsistent", log[-1500:])

    print("global batch that the new world size cannot split")
    rc, log = resume(3, os.path.join(work, "o6"), good)
    C.check(rc != 0 and "global batch of 8 sequences cannot be split evenly over 3 ranks" in log,
            "resume of a global batch of 8 on 3 ranks says why and what to change", log[-1500:])

    print("changed hyper-parameters are allowed, and listed once")
    rc, log = resume(2, os.path.join(work, "o7"), good, expect=0, learning_rate=0.001, warmup_steps=2)
    C.check(log.count("changed on resume") == 1 and f"changed on resume from {good} (checkpoint -> this run): "
            "learning_rate 0.003 -> 0.001, warmup_steps 5 -> 2\n" in log and "resumed from" in log,
            "one line lists learning_rate and warmup_steps; resume goes on", log[-1500:])

    print("`latest` skips a broken newest checkpoint")
    for kind in ("flipped byte", "truncated", "no model.h5"):
        d = clone(work, run, f"latest_{kind.replace(' ', '_')}")
        h5 = f"{d}/checkpoint-4/model.h5"
        if kind == "flipped byte":
            with h5py.File(h5, "r") as f:
                at = f["params/wte"].id.get_offset() + 100
            with open(h5, "r+b") as f:
                f.seek(at)
                b = f.read(1)[0]
                f.seek(at)
                f.write(bytes([b ^ 0x40]))
        elif kind == "truncated":
            os.truncate(h5, os.path.getsize(h5) // 2)
        else:
            os.remove(h5)
        rc, log = resume(2, d, "latest", max_steps=4)
        C.check(rc == 0 and f"warning: skipping checkpoint {d}/checkpoint-4" in log
                and f"resumed from {d}/checkpoint-2: step 2" in log,
                f"newest checkpoint-4 with a {kind}: warning, then resumed from checkpoint-2", log[-1500:])
        if kind == "flipped byte":
            C.check("checksum mismatch in tensor params/wte" in log, "the warning names the corrupt tensor")

    print("`latest` with no checkpoint")
    empty = os.path.join(work, "empty")
    rc, log = resume(2, empty, "latest", max_steps=2, save_interval=0)
    C.check(rc == 0 and f"no usable checkpoint in {empty}: starting fresh" in log and "resumed from" not in log
            and len(C.metrics(empty)) == 2, "says it starts fresh and trains 2 steps", log[-1500:])
    C.finish("ckpt_errors", work, t0)


if __name__ == "__main__":
    main()
