#!/usr/bin/env python3
# Incremental checkpoints (issue 18, item 2). A run at learning rate 0 keeps every parameter bitwise unchanged while
# Adam's m and v move: its params/* stand in for frozen tensors (until --freeze exists).
#  1. Full training with --incremental_checkpoints writes every tensor, no link, bitwise the same as without it.
#  2. At learning rate 0, checkpoints 4 and 6 store only optim/*; every params/* is an external link to the file
#     that holds it (checkpoint-2, never through checkpoint-4), plain h5py reads every tensor by name through them
#     and gets the bytes of a full save, `ckpt verify` passes at 1 and 3 ranks; --async_save makes the same links.
#  3. Resume from an incremental checkpoint equals resume from a full one, bitwise, at 1 rank / ZeRO-0 and 3 ranks /
#     ZeRO-3; a 3-rank save links as a 2-rank one did; a copied run directory resumes (links are relative).
#  4. A deleted or corrupted base is reported by verify and by resume, naming the linked tensor and the file; a file
#     of that name relative to the working directory (where HDF5 itself would look) is never read instead.
#  5. Retention keeps the newest K and what they link to, nothing more; a kill in the middle of pruning leaves
#     checkpoints that verify.
#  6. `ckpt consolidate` writes a standalone copy (no links) that verifies and resumes bitwise like the original,
#     and refuses an existing destination or a source whose base is gone, leaving nothing behind.
# Usage: ckpt_incremental.py
import os
import shutil
import sys
import time

import h5py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_common as C  # noqa: E402

N_TENSORS = 28  # tiny preset
CFG = dict(max_steps=6, save_interval=2, zero_stage=1, micro_batch_size=2, global_batch_size=12, seed=9)
STILL = dict(CFG, learning_rate=0)
INC = ["--incremental_checkpoints"]
GROUPS = ("params", "optim/exp_avg", "optim/exp_avg_sq")


def train(n, out, extra=(), expect=0, env=None, **kw):
    return C.run(n, C.train_args(out, **kw) + list(extra), expect=expect, env=env)


def link_table(ckpt):
    """({dataset: (file, object)} of the external links, {stored datasets}), as plain h5py sees them."""
    links, stored = {}, set()
    with h5py.File(os.path.join(ckpt, "model.h5"), "r") as f:
        for g in GROUPS:
            for k in f[g]:
                link = f[g].get(k, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    links[f"{g}/{k}"] = (link.filename, link.path)
                else:
                    stored.add(f"{g}/{k}")
    return links, stored


def read_by_name(ckpt):
    """Every tensor as {dataset: array}, each read by its name with plain h5py (f["params/wte"]), so through links;
    h5py's visititems() would not descend into them."""
    with h5py.File(os.path.join(ckpt, "model.h5"), "r") as f:
        return {f"{g}/{k}": f[f"{g}/{k}"][()] for g in GROUPS for k in f[g]}


def datasets_without_links(ckpt):
    return {k: {f: v for f, v in e.items() if f != "link"} for k, e in C.manifest(ckpt)["datasets"].items()}


def steps(run_dir):
    return sorted(int(n[11:]) for n in os.listdir(run_dir) if n.startswith("checkpoint-"))


def verify_ok(n, ckpt, what):
    rc, log = C.run(n, ["ckpt", "verify", ckpt], expect=None)
    return C.check(rc == 0 and "OK (structure and every checksum)" in log, what, log[-1500:])


def check_full_training(work):
    print("1. full training: an incremental save writes everything, and changes nothing")
    ref, inc = os.path.join(work, "full"), os.path.join(work, "full_inc")
    train(2, ref, **CFG)
    _, log = train(2, inc, INC, **CFG)
    for s in (2, 4, 6):
        links, stored = link_table(f"{inc}/checkpoint-{s}")
        C.check(not links and len(stored) == 3 * N_TENSORS and
                datasets_without_links(f"{inc}/checkpoint-{s}") == datasets_without_links(f"{ref}/checkpoint-{s}"),
                f"checkpoint-{s}: all {3 * N_TENSORS} tensors stored, none linked, bitwise those of a plain save")
    C.check(log.count("tensors written (a full checkpoint)") == 3 and
            [r["loss"] for r in C.metrics(inc)] == [r["loss"] for r in C.metrics(ref)],
            "every save reported full, and the 6 losses are those of the run without the flag", log[-1500:])
    a, b = (os.path.getsize(f"{d}/checkpoint-6/model.h5") for d in (ref, inc))
    C.check(abs(a - b) <= 0.01 * a, f"same bytes within 1% ({b} against {a})")


def check_still_run(work):
    print("2. learning rate 0: only the changed tensors are written; the rest are links h5py follows")
    still, full = os.path.join(work, "still"), os.path.join(work, "still_full")
    _, log = train(2, still, INC, **STILL)
    train(2, full, **STILL)
    links2, stored2 = link_table(f"{still}/checkpoint-2")
    params = {k for k in stored2 if k.startswith("params/")}
    C.check(not links2 and len(params) == N_TENSORS, "checkpoint-2, the first save, stores everything")
    for s, since in ((4, 1), (6, 2)):
        ck = f"{still}/checkpoint-{s}"
        links, stored = link_table(ck)
        want = {p: ("../checkpoint-2/model.h5", "/" + p) for p in params}
        C.check(links == want and stored == stored2 - params,
                f"checkpoint-{s}: the {N_TENSORS} params are links to the same dataset in ../checkpoint-2/model.h5 "
                f"(depth one), the {2 * N_TENSORS} optim tensors stored", f"{sorted(links.items())[:3]}")
        m = C.manifest(ck)
        C.check(all(m["datasets"][p].get("link") == "../checkpoint-2/model.h5" for p in params) and
                m["incremental"]["saves_since_full"] == since and m["incremental"]["links_to"] == ["checkpoint-2"],
                f"checkpoint-{s}: the manifest records the links and {since} save(s) since a full one")
        C.check(C.diff_tensors(read_by_name(ck), read_by_name(f"{full}/checkpoint-{s}")) == [] and
                datasets_without_links(ck) == datasets_without_links(f"{full}/checkpoint-{s}"),
                f"checkpoint-{s}: h5py reads all {3 * N_TENSORS} tensors by name, bitwise those of a full save")
    C.check(f"checkpoint-4: {2 * N_TENSORS} of {3 * N_TENSORS} tensors written, {N_TENSORS} linked to checkpoint-2"
            in log, "the save says what it wrote and linked", log[-800:])
    a, b = (os.path.getsize(f"{d}/checkpoint-4/model.h5") for d in (full, still))
    C.check(b < 0.75 * a, f"checkpoint-4 holds the changed share: {b} bytes against {a} for a full save")
    verify_ok(1, f"{still}/checkpoint-6", "ckpt verify follows the links (1 rank)")
    verify_ok(3, f"{still}/checkpoint-6", "ckpt verify follows the links (3 ranks)")
    bg = os.path.join(work, "still_async")
    train(2, bg, INC + ["--async_save"], **STILL)
    C.check(link_table(f"{bg}/checkpoint-6") == link_table(f"{still}/checkpoint-6") and
            C.manifest(f"{bg}/checkpoint-6")["datasets"] == C.manifest(f"{still}/checkpoint-6")["datasets"],
            "--async_save links and writes exactly what the synchronous saves did")
    return still, full


def resume_pair(work, still, full, tag, n, stage, extra):
    """Copies of both run directories resumed from their checkpoint-4 to step 6; returns the two directories."""
    out = []
    for kind, src in (("inc", still), ("full", full)):
        d = shutil.copytree(src, os.path.join(work, f"r_{tag}_{kind}"))
        train(n, d, extra, resume_from_checkpoint=f"{d}/checkpoint-4", max_steps=6, zero_stage=stage)
        out.append(d)
    return out


def check_resume(work, still, full):
    print("3. resume through links equals resume from a full checkpoint, at other world sizes and stages")
    for tag, n, stage, extra in (("n1", 1, 0, ["--learning_rate", "0.003"]), ("n3", 3, 3, ["--learning_rate", "0.003"]),
                                 ("n3_still", 3, 3, [])):
        a, b = resume_pair(work, still, full, tag, n, stage, extra)
        rows = [[(r["step"], r["loss"], r["grad_norm"]) for r in C.metrics(d) if r["step"] > 4] for d in (a, b)]
        C.check(len(rows[0]) == 2 and rows[0] == rows[1] and
                C.diff_tensors(read_by_name(f"{a}/checkpoint-6"), read_by_name(f"{b}/checkpoint-6")) == [],
                f"{n} rank(s), ZeRO-{stage}{' ' + ' '.join(extra) if extra else ''}: steps 5-6 and checkpoint-6 "
                "bitwise those resumed from the full checkpoint", f"{rows}")
        if not extra:
            links, _ = link_table(f"{a}/checkpoint-6")
            C.check(len(links) == N_TENSORS and {f for f, _ in links.values()} == {"../checkpoint-2/model.h5"},
                    "a 3-rank save of the copied run directory links the params to checkpoint-2, as 2 ranks did")
            verify_ok(2, f"{a}/checkpoint-6", "... and it verifies")


def flip_tensor_byte(ckpt, dataset):
    h5 = os.path.join(ckpt, "model.h5")
    with h5py.File(h5, "r") as f:
        off = f[dataset].id.get_offset()
    with open(h5, "r+b") as f:
        f.seek(off + 5)
        b = f.read(1)[0]
        f.seek(off + 5)
        f.write(bytes([b ^ 0x10]))


def check_damage(work, still):
    print("4. a deleted or corrupted base is named by verify and by resume")
    d = shutil.copytree(still, os.path.join(work, "dmg_del"))
    shutil.rmtree(f"{d}/checkpoint-2")
    missing = f"tensor params/wte is a link to {d}/checkpoint-2/model.h5, which does not exist"
    rc, log = C.run(2, ["ckpt", "verify", f"{d}/checkpoint-4"], expect=None)
    C.check(rc == 1 and missing in log, "verify names the linked tensor and the missing base file", log[-1500:])
    rc, log = train(2, d, expect=None, resume_from_checkpoint=f"{d}/checkpoint-4")
    C.check(rc != 0 and missing in log and "resumed from" not in log, "an explicit resume refuses it, likewise",
            log[-1500:])
    # HDF5 (and so h5py) looks for a missing link target relative to the working directory too: ours never does.
    decoy = os.path.join(work, "decoy")
    os.makedirs(f"{decoy}/here")
    shutil.copytree(f"{still}/checkpoint-2", f"{decoy}/checkpoint-2")
    rc, log = C.run(1, ["ckpt", "verify", f"{d}/checkpoint-4"], expect=None, cwd=f"{decoy}/here")
    C.check(rc == 1 and missing in log, "a ../checkpoint-2/model.h5 beside the working directory is not used instead",
            log[-1500:])

    c = shutil.copytree(still, os.path.join(work, "dmg_flip"))
    flip_tensor_byte(f"{c}/checkpoint-2", "params/wte")
    rc, log = C.run(2, ["ckpt", "verify", f"{c}/checkpoint-4"], expect=None)
    C.check(rc == 1 and "checksum mismatch in tensor params/wte" in log and
            f"(a link to {c}/checkpoint-2/model.h5)" in log,
            "a corrupted base: verify of the linking checkpoint names the tensor and the base file", log[-1500:])
    rc, log = train(2, c, expect=None, resume_from_checkpoint=f"{c}/checkpoint-6")
    C.check(rc != 0 and "checksum mismatch in tensor params/wte" in log and f"{c}/checkpoint-2/model.h5" in log
            and "resumed from" not in log, "... and so does a resume from it", log[-1500:])
    return d


def check_retention(work):
    print("5. retention keeps the newest K and what they link to, nothing more")
    flags = dict(STILL, save_interval=1, save_total_limit=2, full_checkpoint_interval=3)
    r = os.path.join(work, "ret")
    _, log = train(2, r, INC, **flags)
    C.check(steps(r) == [4, 5, 6], f"kept: 5 and 6 (the newest 2) and 4, which they link to: {steps(r)}", log[-2000:])
    since = [C.manifest(f"{r}/checkpoint-{s}")["incremental"]["saves_since_full"] for s in (4, 5, 6)]
    C.check(since == [0, 1, 2], f"--full_checkpoint_interval 3: checkpoint-4 is full, 5 and 6 link to it ({since})")
    C.check("keeping checkpoint-1 (--save_total_limit 2): checkpoint-3 links to it" in log and
            log.index(f"removed old checkpoint {r}/checkpoint-3") < log.index(f"removed old checkpoint {r}/checkpoint-1"),
            "checkpoint-1 was kept while checkpoint-3 linked to it, and pruned after it", log[-2000:])
    for s in (4, 5, 6):
        verify_ok(1, f"{r}/checkpoint-{s}", f"checkpoint-{s} verifies")

    k = os.path.join(work, "ret_kill")
    rc, log = train(2, k, INC, expect="nonzero", env={"ZT_TEST_KILL_AT": "prune:1:0"}, **flags)
    C.check("killing rank 0 at prune:1:0" in log and steps(k) == [4, 5] and os.path.isdir(f"{k}/.checkpoint-1.pruning"),
            f"killed while pruning checkpoint-1 (after checkpoint-3): committed {steps(k)}", log[-1500:])
    for s in steps(k):
        verify_ok(2, f"{k}/checkpoint-{s}", f"after the kill, checkpoint-{s} verifies (no dangling link)")
    _, log = train(2, k, resume_from_checkpoint="latest", **flags)
    C.check(f"resumed from {k}/checkpoint-5: step 5" in log and steps(k) == [4, 5, 6] and
            not os.path.exists(f"{k}/.checkpoint-1.pruning"), "latest resumes checkpoint-5; the prune is finished",
            log[-1500:])


def check_consolidate(work, still, broken):
    print("6. ckpt consolidate")
    src, out = f"{still}/checkpoint-6", os.path.join(work, "cons", "new", "checkpoint-6")
    rc, log = C.run(2, ["ckpt", "consolidate", src, "-o", out], expect=None)
    links, stored = link_table(out) if rc == 0 else ({"?": 0}, set())
    C.check(rc == 0 and not links and len(stored) == 3 * N_TENSORS, "2 ranks write a copy with every tensor stored",
            log[-1500:])
    C.check(C.diff_tensors(read_by_name(out), read_by_name(src)) == [] and
            datasets_without_links(out) == datasets_without_links(src) and
            C.manifest(out)["step"] == 6 and C.manifest(out)["incremental"]["saves_since_full"] == 0,
            "same tensors, same manifest but for the links")
    verify_ok(3, out, "the copy verifies (3 ranks)")
    finals = []
    for tag, ck in (("cons", out), ("orig", src)):
        d = os.path.join(work, f"rc_{tag}")
        train(1, d, ["--learning_rate", "0.003"], resume_from_checkpoint=ck, max_steps=8)
        finals.append(([r["loss"] for r in C.metrics(d)], C.manifest(f"{d}/checkpoint-8")["datasets"]))
    C.check(finals[0] == finals[1], "resuming the copy equals resuming the original, bitwise (losses, checkpoint-8)")
    rc, log = C.run(1, ["ckpt", "consolidate", src, "-o", out], expect=None)
    C.check(rc != 0 and "already exists" in log, "an existing destination is refused", log[-800:])
    bad = os.path.join(work, "cons", "bad")
    rc, log = C.run(2, ["ckpt", "consolidate", f"{broken}/checkpoint-6", "-o", bad], expect=None)
    C.check(rc != 0 and f"is a link to {broken}/checkpoint-2/model.h5, which does not exist" in log and
            not os.path.exists(bad) and not os.path.exists(os.path.join(work, "cons", ".bad.tmp")),
            "a source whose base is gone: refused naming tensor and file; nothing left behind", log[-1500:])


def main():
    t0 = time.time()
    work = C.setup(sys.argv, "ckpt_incremental")
    check_full_training(work)
    still, full = check_still_run(work)
    check_resume(work, still, full)
    broken = check_damage(work, still)
    check_retention(work)
    check_consolidate(work, still, broken)
    C.finish("ckpt_incremental", work, t0)


if __name__ == "__main__":
    main()
