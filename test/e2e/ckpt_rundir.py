#!/usr/bin/env python3
# The run directory never hands a wrong state to a resume (issue 15, items 2 and 4), and older formats still load:
#  1. `latest` orders candidates by the manifest inside model.h5: a missing or edited manifest.json (informative)
#     cannot make an older checkpoint outrank the newest, and a checkpoint whose manifest cannot be read is tried
#     only after the readable ones, with a warning naming it.
#  2. The manifest protects itself: one flipped bit in its step, data cursor or Adam step (or in the digest) fails
#     `ckpt verify`, an explicit resume and `latest` naming the digest; a version-3 file without a digest is refused.
#  3. A genuine format-version-1 checkpoint (test/fixtures/ckpt-v1-l1-d32, no digest) verifies with a note and
#     resumes to exactly the losses and tensors the version-1 build computed.
#  4. A dot-named directory (a save or prune that did not finish) is never loaded, even when named explicitly.
import json
import os
import shutil
import sys
import time

import h5py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_common as C  # noqa: E402

CFG = dict(max_steps=6, save_interval=2, zero_stage=1, micro_batch_size=2, global_batch_size=8, seed=9)
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "ckpt-v1-l1-d32")
# The flags that wrote the fixture (its README), so a resume continues exactly that run.
FIXTURE_FLAGS = dict(n_layer=1, d_model=32, n_head=2, seq_len=16, vocab=256, micro_batch_size=2, global_batch_size=4,
                     max_steps=4, save_interval=2, zero_stage=1, seed=7)


def resume(n, out, src, expect=None, cfg=CFG, **kw):
    return C.run(n, C.train_args(out, resume_from_checkpoint=src, **dict(cfg, **kw)), expect=expect)


def flip_manifest_bit(ckpt_dir, anchor, after=b""):
    """Flips the lowest bit of the byte right after `anchor` (searched from `after`) in the manifest bytes inside
    model.h5, in place, as a disk or a bad copy would; manifest.json is left as it was. Returns (old, new) bytes."""
    h5 = os.path.join(ckpt_dir, "model.h5")
    with h5py.File(h5, "r") as f:
        off, size = f["manifest"].id.get_offset(), f["manifest"].id.get_storage_size()
    with open(h5, "r+b") as f:
        f.seek(off)
        text = f.read(size)
        at = text.index(anchor, text.index(after)) + len(anchor)
        f.seek(off + at)
        f.write(bytes([text[at] ^ 1]))
    return text[at:at + 1], bytes([text[at] ^ 1])


def check_ordering(work, run):
    print("1. `latest` follows the manifest inside model.h5")
    d = shutil.copytree(run, os.path.join(work, "no_json"))
    os.remove(f"{d}/checkpoint-2/manifest.json")
    rc, log = resume(2, d, "latest", max_steps=4)
    C.check(rc == 0 and f"resumed from {d}/checkpoint-4: step 4" in log and "skipping" not in log,
            "checkpoint-2 without manifest.json: latest still resumes the newest, checkpoint-4", log[-1500:])

    d = shutil.copytree(run, os.path.join(work, "edited_json"))
    with open(f"{d}/checkpoint-2/manifest.json") as f:
        m = json.load(f)
    m["commit_seq"] = 999
    with open(f"{d}/checkpoint-2/manifest.json", "w") as f:
        json.dump(m, f)
    rc, log = resume(2, d, "latest", max_steps=4)
    C.check(rc == 0 and f"resumed from {d}/checkpoint-4: step 4" in log,
            "checkpoint-2's manifest.json claiming commit_seq 999: ignored, latest resumes checkpoint-4", log[-1500:])

    d = shutil.copytree(run, os.path.join(work, "unreadable_newest"))
    flip_manifest_bit(f"{d}/checkpoint-4", b'"tokens_seen": ')
    rc, log = resume(2, d, "latest", max_steps=4)
    C.check(rc == 0 and f"warning: skipping checkpoint {d}/checkpoint-4: the manifest of {d}/checkpoint-4/model.h5 "
            "does not match its digest" in log and f"resumed from {d}/checkpoint-2: step 2" in log,
            "checkpoint-4 with a damaged manifest: warning naming it, then resumed from checkpoint-2", log[-1500:])


def check_digest(work, good):
    print("2. the manifest's own digest")
    fields = (("step", b'\n "step": ', b""), ("data cursor", b'"cursor": ', b""),
              ("Adam step", b'"step": ', b'"optimizer"'))
    for what, anchor, after in fields:
        d = shutil.copytree(good, os.path.join(work, "flip_" + what.replace(" ", "_"), "checkpoint-4"))
        old, new = flip_manifest_bit(d, anchor, after)
        rc, log = C.run(2, ["ckpt", "verify", d], expect=None)
        C.check(rc == 1 and f"the manifest of {d}/model.h5 does not match its digest" in log
                and "the manifest is corrupt" in log,
                f"{what} flipped from {old.decode()} to {new.decode()}: ckpt verify fails naming the digest",
                log[-1500:])
        rc, log = resume(2, os.path.join(work, "o_" + what.replace(" ", "_")), d)
        C.check(rc != 0 and "does not match its digest" in log and "resumed from" not in log,
                f"{what} flipped: an explicit resume refuses it", log[-1500:])

    d = shutil.copytree(good, os.path.join(work, "flip_digest", "checkpoint-4"))
    with h5py.File(f"{d}/model.h5", "r") as f:
        off = f["manifest_xxh64"].id.get_offset()
    with open(f"{d}/model.h5", "r+b") as f:
        f.seek(off)
        b = f.read(1)[0]
        f.seek(off)
        f.write(bytes([b ^ 1]))
    rc, log = C.run(1, ["ckpt", "verify", d], expect=None)
    C.check(rc == 1 and "does not match its digest" in log, "a flipped bit in /manifest_xxh64 itself is caught",
            log[-1500:])

    d = shutil.copytree(good, os.path.join(work, "no_digest", "checkpoint-4"))
    with h5py.File(f"{d}/model.h5", "r+") as f:
        del f["manifest_xxh64"]
    rc, log = C.run(1, ["ckpt", "verify", d], expect=None)
    C.check(rc == 1 and "has format version 3 but no manifest digest (dataset /manifest_xxh64 is missing)" in log,
            "a version-3 file without its digest is refused, naming the missing dataset", log[-1500:])
    rc, log = resume(1, os.path.join(work, "o_no_digest"), d)
    C.check(rc != 0 and "no manifest digest" in log, "... and so is a resume from it", log[-1500:])

    with h5py.File(f"{good}/model.h5", "r") as f:
        text, stored = f["manifest"][()], f["manifest_xxh64"][()].decode()
    C.check(stored == C.manifest_digest(text) and C.manifest(good)["format_version"] == 3,
            "a version-3 save stores xxh64(manifest bytes) as the spec says, recomputed independently")
    rc, log = C.run(1, ["ckpt", "verify", good], expect=None)
    C.check(rc == 0 and "OK (structure and every checksum); the manifest matches its digest" in log, "ckpt verify reports the digest checked",
            log[-800:])


def check_version1(work):
    print("3. a genuine format-version-1 checkpoint")
    src = os.path.join(FIXTURE, "checkpoint-2")
    C.check(C.manifest(src)["format_version"] == 1, "the fixture is format version 1")
    with h5py.File(f"{src}/model.h5", "r") as f:
        C.check("manifest_xxh64" not in f, "... with no manifest digest")
    out = os.path.join(work, "v1")
    os.makedirs(out)
    v1 = shutil.copytree(src, os.path.join(out, "checkpoint-2"))
    rc, log = C.run(2, ["ckpt", "verify", v1], expect=None)
    C.check(rc == 0 and "format version 1 has no manifest digest" in log, "ckpt verify accepts it, with a note",
            log[-800:])
    rc, log = C.run(2, C.train_args(out, resume_from_checkpoint="latest", **FIXTURE_FLAGS), expect=None)
    C.check(rc == 0 and f"resumed from {v1}: step 2" in log, "`latest` resumes it", log[-1500:])
    want = [json.loads(line) for line in open(os.path.join(FIXTURE, "expected-metrics.jsonl"))]
    got = [{k: r[k] for k in ("step", "loss", "grad_norm", "lr")} for r in C.metrics(out) if r["step"] > 2]
    # Exact: a resume must continue bit for bit what the version-1 build computed (same config, same world size).
    C.check(got == want, "steps 3 and 4: loss, grad_norm and lr exactly the version-1 build's", f"{got} vs {want}")
    with open(os.path.join(FIXTURE, "expected-checkpoint-4.json")) as f:
        want4 = json.load(f)["datasets"]
    got4 = {k: v["xxh64"] for k, v in C.manifest(f"{out}/checkpoint-4")["datasets"].items()}
    C.check(got4 == want4, f"checkpoint-4: all {len(want4)} tensors bitwise the version-1 build's (xxh64)")
    C.check(C.manifest(f"{out}/checkpoint-4")["format_version"] == 3, "the new checkpoint is written as version 3")


def check_dot_names(work, good):
    print("4. dot-named directories are never loaded")
    for name in (".checkpoint-4.pruning", ".checkpoint-4.tmp"):
        d = shutil.copytree(good, os.path.join(work, "dot", name))
        rc, log = resume(2, os.path.join(work, "o_dot"), d + "/")
        C.check(rc != 0 and "is not a committed checkpoint: a name starting with '.' is a save or a prune" in log
                and "resumed from" not in log, f"an explicit resume of a complete {name} is refused", log[-1500:])


def main():
    t0 = time.time()
    work = C.setup(sys.argv, "ckpt_rundir")
    run = os.path.join(work, "run")
    C.run(2, C.train_args(run, exit_after_steps=4, **CFG))  # checkpoint-2 and checkpoint-4
    check_ordering(work, run)
    check_digest(work, f"{run}/checkpoint-4")
    check_version1(work)
    check_dot_names(work, f"{run}/checkpoint-4")
    C.finish("ckpt_rundir", work, t0)


if __name__ == "__main__":
    main()
