#!/usr/bin/env python3
# --freeze (issue 18, item 1): frozen tensors get no gradient, reduction, Adam state or update.
#  1. Frozen tensors end bitwise as they started (a learning-rate-0 run's), have no optim/* datasets (format
#     version 3; the manifest's optimizer.frozen lists them), and the trainable ones moved; the first (full) save is
#     smaller than an unfrozen one by 8 bytes per frozen parameter; the whole final checkpoint is bitwise the one of
#     the reference run that computes and reduces every gradient and discards the frozen ones
#     (ZT_TEST_FREEZE_COMPUTE_GRADS=1), at ZeRO stages 0-3 on 1 and 3 ranks; a resumed frozen run equals the
#     uninterrupted one.
#  2. Incremental checkpoints are the default when frozen: checkpoint-4 stores exactly the trainable tensors (the
#     frozen ones' params are external links to checkpoint-2); an explicit false still wins.
#  3. Resume with fewer frozen tensors says their Adam state starts at zero; with more, warns and drops the state;
#     both (and at another layout) bitwise as from the same checkpoint with the zeros stored (version 2's form).
#  4. verify, consolidate and inspect read the absent state; a missing optim/ dataset of a trainable tensor is
#     damage naming it; the same file labelled version 2 (what a version-2 reader sees) reads as damage too.
#  5. The start-up line's formulas count Ψ_t and Ψ_a; a pattern matching nothing, and one freezing everything,
#     are errors.
# Usage: freeze_test.py
import os
import shutil
import struct
import sys
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_common as C  # noqa: E402

CFG = dict(max_steps=4, save_interval=2, micro_batch_size=2, global_batch_size=12, seed=9)
# A fully frozen unit (the embeddings, block 0), a matmul weight and a LayerNorm inside a block that trains.
FREEZE = "wte,wpe,h.0.*,h.1.attn.c_attn.weight,h.1.ln_2.weight"
# The embedding unit partly frozen: wpe's gradient is computed (with wte's) and discarded; a whole part frozen.
FREEZE_WPE = "wpe,h.1.mlp.c_fc.*"
REF_ENV = {"ZT_TEST_FREEZE_COMPUTE_GRADS": "1"}
GROUPS = ("params", "optim/exp_avg", "optim/exp_avg_sq")


NOT_INC = ["--incremental_checkpoints=false"]


def train(n, out, extra=(), expect=0, env=None, **kw):
    return C.run(n, C.train_args(out, **dict(CFG, **kw)) + list(extra), expect=expect, env=env)


def frozen_names(ckpt, patterns):
    import fnmatch
    with h5py.File(os.path.join(ckpt, "model.h5"), "r") as f:
        names = list(f["params"])
    return {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns.split(","))}, set(names)


def by_name(ckpt):
    with h5py.File(os.path.join(ckpt, "model.h5"), "r") as f:
        return {f"{g}/{k}": f[f"{g}/{k}"][()] for g in GROUPS for k in f[g]}


def as_version2(src, dst):
    """A copy of checkpoint `src` (no links) as version 2 writes it: the frozen tensors' optim/ datasets stored as
    zeros with their digests, no optimizer.frozen."""
    shutil.copytree(src, dst)
    frozen = C.manifest(dst)["optimizer"].get("frozen", [])
    entries = {}
    with h5py.File(os.path.join(dst, "model.h5"), "r+") as f:
        for t in frozen:
            zeros = np.zeros(f[f"params/{t}"].shape, dtype="<f4")
            chunks = [C.xxh64(zeros.ravel()[i:i + (1 << 20)].tobytes()) for i in range(0, zeros.size, 1 << 20)]
            for g in GROUPS[1:]:
                f.create_dataset(f"{g}/{t}", data=zeros)
                entries[f"{g}/{t}"] = {"shape": list(zeros.shape), "dtype": "float32",
                                       "chunks": [f"{c:016x}" for c in chunks],
                                       "xxh64": f"{C.xxh64(b''.join(struct.pack('<Q', c) for c in chunks)):016x}"}

    def edit(m):
        m["format_version"] = 2
        m["optimizer"].pop("frozen", None)
        m["datasets"].update(entries)
    C.rewrite_manifest(dst, edit)
    return dst


def check_frozen_runs(work, still):
    print("1. frozen tensors unchanged, no Adam state; bitwise the compute-and-discard reference at stages 0-3")
    init = by_name(f"{still}/checkpoint-4")
    frozen, names = frozen_names(f"{still}/checkpoint-4", FREEZE)

    def one(item, d):
        n, stage, spec = item
        out, ref = (os.path.join(work, f"{tag}_{n}_{stage}_{spec == FREEZE}") for tag in ("f", "r"))
        # Parts smaller than a block and recomputation too, once.
        kw = dict(recompute="block", zero_bucket_mb=0.02) if (n, stage, spec) == (3, 3, FREEZE_WPE) else {}
        train(n, out, zero_stage=stage, freeze=spec, **kw)
        train(n, ref, NOT_INC, env=REF_ENV, zero_stage=stage, freeze=spec, **kw)
        got, want = by_name(f"{out}/checkpoint-4"), by_name(f"{ref}/checkpoint-4")
        what = f"{n} rank(s), ZeRO-{stage}, --freeze {spec}" + (" --recompute block, 0.02 MiB parts" if kw else "")
        d.check(C.diff_tensors(got, want) == [], f"{what}: checkpoint-4 bitwise equals the reference's",
                C.diff_tensors(got, want)[:6])
        if spec != FREEZE:
            return
        d.check(all(C.bits_equal(got[f"params/{t}"], init[f"params/{t}"]) for t in frozen) and
                not any(C.bits_equal(got[f"params/{t}"], init[f"params/{t}"]) for t in names - frozen),
                f"{what}: frozen params bitwise unchanged, every trainable tensor moved")
        stateless = C.manifest(f"{out}/checkpoint-4")["optimizer"].get("frozen", [])
        d.check(not any(f"{g}/{t}" in got for g in GROUPS[1:] for t in frozen) and set(stateless) == frozen and
                all(got[f"optim/exp_avg_sq/{t}"].any() for t in names - frozen),
                f"{what}: the frozen tensors have no optim/* datasets and optimizer.frozen lists them; the others "
                "have Adam state")

    items = [(n, s, FREEZE) for n in (1, 3) for s in (0, 1, 2, 3)] + [(1, 0, FREEZE_WPE), (3, 3, FREEZE_WPE)]
    C.run_parallel(one, items)
    # The first save of a run writes every dataset: frozen tensors no longer carry 8 bytes of zero m and v each.
    # Besides those bytes only the HDF5 object headers and manifest entries of the 2F absent datasets differ, well
    # under 1 KiB each; the frozen run's longer train.freeze and optimizer.frozen are a few hundred bytes.
    with h5py.File(f"{still}/checkpoint-2/model.h5", "r") as f:
        n_frozen = sum(f[f"params/{t}"].size for t in frozen)
    saved = os.path.getsize(f"{still}/checkpoint-2/model.h5") - os.path.getsize(f"{work}/f_1_0_True/checkpoint-2/"
                                                                                 "model.h5")
    C.check(abs(saved - 8 * n_frozen) <= 2 * len(frozen) * 1024,
            f"the first (full) save of the frozen run is {saved} bytes smaller than the unfrozen one's: 8 x {n_frozen} "
            f"frozen parameters = {8 * n_frozen}, within 1 KiB per absent dataset")
    # Stage 0 re-assembles the ranks' slices of m and v after a load, which skip the frozen elements.
    for stage in (3, 0):
        res = os.path.join(work, f"resumed_{stage}")
        train(3, res, zero_stage=stage, freeze=FREEZE, max_steps=2)
        train(3, res, zero_stage=stage, freeze=FREEZE, resume_from_checkpoint="latest")
        C.check(C.diff_tensors(by_name(f"{res}/checkpoint-4"), by_name(f"{work}/f_3_{stage}_True/checkpoint-4")) == [],
                f"a frozen run resumed at step 2 ends bitwise as the uninterrupted one (3 ranks, ZeRO-{stage})")
    rc, log = C.run(1, ["ckpt", "inspect", f"{work}/f_1_0_True/checkpoint-4"], expect=None)
    C.check(rc == 0 and f"frozen (--freeze): {FREEZE} (no gradients, no Adam state" in log,
            "ckpt inspect shows the frozen list", log[-1500:])


def check_incremental(work):
    print("2. incremental checkpoints by default when frozen; an explicit false wins")
    out = os.path.join(work, "f_1_0_True")
    frozen, names = frozen_names(f"{out}/checkpoint-4", FREEZE)
    with h5py.File(os.path.join(out, "checkpoint-4", "model.h5"), "r") as f:
        links = {f"{g}/{k}" for g in GROUPS for k in f[g] if isinstance(f[g].get(k, getlink=True), h5py.ExternalLink)}
    C.check(links == {f"params/{t}" for t in frozen},
            "checkpoint-4 stores only the trainable tensors: the frozen ones' params link to checkpoint-2 (no optim/)",
            sorted(links ^ {f"params/{t}" for t in frozen})[:8])
    bg = os.path.join(work, "async")
    train(1, bg, ["--async_save"], freeze=FREEZE)  # the host copy skips the parts without Adam state
    C.check(C.diff_tensors(by_name(f"{bg}/checkpoint-4"), by_name(f"{out}/checkpoint-4")) == [],
            "--async_save writes the same checkpoint-4")
    plain = os.path.join(work, "plain")
    train(1, plain, NOT_INC, freeze=FREEZE)
    with h5py.File(os.path.join(plain, "checkpoint-4", "model.h5"), "r") as f:
        n_links = sum(isinstance(f[g].get(k, getlink=True), h5py.ExternalLink) for g in GROUPS for k in f[g])
    C.check(n_links == 0, "--incremental_checkpoints false given explicitly: every tensor stored")


def check_resume_changes(work):
    print("3. resume with other --freeze: unfrozen tensors start Adam from zero; newly frozen ones drop their state")
    base = os.path.join(work, "f_1_0_True")
    # The same state as version 2 stored it (zeros for the frozen tensors' moments): every resume must match it.
    v2 = as_version2(f"{work}/plain/checkpoint-4", f"{work}/v2/checkpoint-4")
    fewer = os.path.join(work, "fewer")
    train(1, f"{fewer}_v2", freeze="wte,wpe", resume_from_checkpoint=v2, max_steps=6)
    _, log = train(1, fewer, freeze="wte,wpe", resume_from_checkpoint=f"{base}/checkpoint-4", max_steps=6)
    C.check("14 tensor(s) frozen in the checkpoint train now; their Adam state starts at zero: h.0.ln_1.weight" in log,
            "unfreezing says which tensors start their Adam state at zero", log[-2000:])
    got, before = by_name(f"{fewer}/checkpoint-6"), by_name(f"{base}/checkpoint-4")
    C.check(got["optim/exp_avg_sq/h.0.attn.c_attn.weight"].any() and
            not C.bits_equal(got["params/h.0.attn.c_attn.weight"], before["params/h.0.attn.c_attn.weight"]) and
            C.bits_equal(got["params/wte"], before["params/wte"]), "the unfrozen tensors train; wte stays frozen")
    C.check(C.diff_tensors(got, by_name(f"{fewer}_v2/checkpoint-6")) == [],
            "... bitwise as from the version-2 form of the checkpoint (their moments stored as zeros)")
    more = os.path.join(work, "more")
    # Block 1's MLP shares its part with tensors that train: its loaded moments are zeroed, not merely left unread.
    _, log = train(3, more, freeze=FREEZE + ",h.1.mlp.*", zero_stage=2, resume_from_checkpoint=f"{base}/checkpoint-4",
                   max_steps=6)
    train(3, f"{more}_v2", freeze=FREEZE + ",h.1.mlp.*", zero_stage=2, resume_from_checkpoint=v2, max_steps=6)
    C.check("warning: --freeze changed on resume: 4 tensor(s) with Adam state in the checkpoint are frozen now; "
            "their state is dropped: h.1.mlp.c_fc.weight" in log, "freezing more tensors warns that their state is dropped",
            log[-2000:])
    got = by_name(f"{more}/checkpoint-6")
    C.check(before["optim/exp_avg_sq/h.1.mlp.c_fc.weight"].any() and
            not any(f"{g}/h.1.mlp.c_fc.weight" in got for g in GROUPS[1:]) and
            C.bits_equal(got["params/h.1.mlp.c_fc.weight"], before["params/h.1.mlp.c_fc.weight"]) and
            got["optim/exp_avg/h.1.attn.c_proj.weight"].any(),
            "their Adam state is gone, their params stay; the rest of block 1 still trains")
    C.check(C.diff_tensors(got, by_name(f"{more}_v2/checkpoint-6")) == [],
            "... bitwise as from the version-2 form, re-partitioned from 1 rank at ZeRO-0 to 3 at ZeRO-2")


def check_readers(work):
    print("4. verify, consolidate, inspect; a missing optim/ dataset of a trainable tensor; a version-2 reader's view")
    linked = f"{work}/f_1_0_True/checkpoint-4"
    rc, log = C.run(2, ["ckpt", "verify", linked], expect=None)
    C.check(rc == 0 and "OK" in log, "ckpt verify passes a frozen incremental checkpoint", log[-1500:])
    copy = f"{work}/consolidated"
    C.run(2, ["ckpt", "consolidate", linked, "-o", copy])
    rc, log = C.run(1, ["ckpt", "verify", copy], expect=None)
    C.check(rc == 0 and C.diff_tensors(by_name(copy), by_name(linked)) == [] and
            C.manifest(copy)["optimizer"].get("frozen") == C.manifest(linked)["optimizer"].get("frozen", 0),
            "ckpt consolidate copies it bitwise, still without the frozen tensors' optim/, and it verifies", log[-800:])
    rc, log = C.run(1, ["ckpt", "inspect", linked], expect=None)
    C.check(rc == 0 and "no Adam state: 16 tensor(s) without optim/ datasets" in log,
            "ckpt inspect says the frozen tensors have no optim/ datasets", log[-1500:])
    missing = "optim/exp_avg/h.1.attn.c_proj.weight"
    damaged = shutil.copytree(f"{work}/plain/checkpoint-4", f"{work}/damaged/checkpoint-4")
    with h5py.File(f"{damaged}/model.h5", "r+") as f:
        del f[missing]
    want = (f"dataset {missing} is missing (its tensor h.1.attn.c_proj.weight has Adam state: the manifest's "
            "optimizer.frozen does not name it)")
    rc, log = C.run(1, ["ckpt", "verify", damaged], expect=None)
    C.check(rc == 1 and want in log, "a deleted optim/ dataset of a trainable tensor is damage naming it", log[-1500:])
    rc, log = train(1, f"{work}/o_damaged", expect="nonzero", freeze=FREEZE, resume_from_checkpoint=damaged,
                    max_steps=6)
    C.check(want in log, "... and the resume refuses it, naming it", log[-1500:])
    # What a version-2 reader sees in a version-3 file: required datasets missing, i.e. damage (`latest` would pass
    # over the checkpoint). That is why absent state needed version 3, which such a reader refuses as newer.
    old = shutil.copytree(f"{work}/plain/checkpoint-4", f"{work}/old/checkpoint-4")
    C.rewrite_manifest(old, lambda m: (m.update(format_version=2), m["optimizer"].pop("frozen", None)))
    rc, log = C.run(1, ["ckpt", "verify", old], expect=None)
    C.check(rc == 1 and "dataset optim/exp_avg/wte is missing" in log,
            "labelled version 2, the frozen tensors' absent optim/ datasets read as damage", log[-1500:])
    # A manifest whose digest matches but whose optimizer.frozen is forged: an unknown tensor name, or not a list,
    # must be refused by name, not read as "that tensor has no Adam state".
    for i, (label, edit, want) in enumerate([
            ("names an unknown tensor", lambda m: m["optimizer"]["frozen"].append("h.99.mlp.c_fc.weight"),
             "the manifest's optimizer.frozen names \"h.99.mlp.c_fc.weight\", not a tensor of the model"),
            ("is not a list", lambda m: m["optimizer"].update(frozen="wte"),
             "the manifest's optimizer.frozen is not a list")]):
        forged = shutil.copytree(f"{work}/plain/checkpoint-4", f"{work}/forged_{i}/checkpoint-4")
        C.rewrite_manifest(forged, edit)
        rc, log = C.run(1, ["ckpt", "verify", forged], expect=None)
        C.check(rc == 1 and want in log, f"a digest-valid manifest whose optimizer.frozen {label} is refused",
                log[-1500:])
        rc, log = train(1, f"{work}/o_forged_{i}", expect="nonzero", freeze=FREEZE,
                        resume_from_checkpoint=forged, max_steps=6)
        C.check(want in log, "... and the resume refuses it, naming the problem", log[-1500:])


def check_startup_line(work):
    print("5. the start-up line; bad patterns")
    args = ["train", "--output_dir", os.path.join(work, "banner"), "--threads", "1", "--max_steps", "1",
            "--zero_stage", "3", "--freeze", FREEZE]
    _, log = C.run(3, args)
    # Frozen tensors inside parts that train (h.1's c_attn weight and ln_2 weight) hold no Adam state: Ψ_a < Ψ_t.
    C.check("optimizer 8Ψ_a/N" in log and "grads 4Ψ_t/N" in log and "Ψ_t=" in log and "Ψ_a=" in log and
            "frozen (--freeze wte,wpe,h.0.*,h.1.attn.c_attn.weight,h.1.ln_2.weight): 16 of 28 tensors" in log,
            "the start-up line counts Ψ_t (gradients) and Ψ_a (Adam state) and names the frozen tensors", log[:2500])
    rc, log = train(1, os.path.join(work, "typo"), expect="nonzero", freeze="wte,h.0.attn.weight")
    C.check("--freeze pattern 'h.0.attn.weight' matches no tensor" in log and "h.0.attn.c_attn.weight" in log,
            "a pattern that matches nothing names itself and valid names", log[-800:])
    rc, log = train(1, os.path.join(work, "all"), expect="nonzero", freeze="*")
    C.check("freezes every tensor" in log, "freezing everything is refused", log[-800:])


def main():
    t0 = time.time()
    work = C.setup(sys.argv, "freeze")
    still = os.path.join(work, "still")
    train(1, still, learning_rate=0)  # every parameter as initialised
    check_frozen_runs(work, still)
    check_incremental(work)
    check_resume_changes(work)
    check_readers(work)
    check_startup_line(work)
    C.finish("freeze", work, t0)


if __name__ == "__main__":
    main()
