#!/usr/bin/env python3
# Crash safety: a run that already committed checkpoint-2 is SIGKILLed (ZT_TEST_KILL_AT, one rank) at 25 moments
# while it saves checkpoint-4: before writing various datasets on various ranks, before the digests, before closing
# the file, before the commit, before the directory rename, before and during the `latest` update. Every time the
# job must die, `--resume_from_checkpoint latest` must resume from the last committed checkpoint (checkpoint-2, or
# checkpoint-4 once the rename happened), never from the .tmp directory (even when its file is complete), `ckpt
# verify` must accept what it loaded, and the finished run must end bitwise where an uninterrupted run ends.
# Then 7 more moments of an incremental save (--incremental_checkpoints at learning rate 0, so checkpoint-4 links its
# params to checkpoint-2): during the scan for unchanged tensors, writing the stored ones, the commit and `latest`;
# the same must hold, and the finished checkpoint-4 links exactly what the uninterrupted run's does.
# Usage: ckpt_crash.py [--mca-io ompio|romio321]
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_common as C  # noqa: E402

N_TENSORS = 28          # tiny preset: wte, wpe, 12 per block x 2, ln_f weight and bias
N_DATASETS = 3 * N_TENSORS
COMMITTED = ("latest", "latest-rename")  # kill points after the directory rename: checkpoint-4 is committed


def allowed_newest(phase, rank):
    """Steps the newest committed checkpoint may have after a kill at (phase, rank)."""
    if phase in COMMITTED:
        return {4}
    if phase == "commit" and rank != 0:
        # Every rank has closed the file (H5Fclose is collective), so checkpoint-4 is complete; rank 0 commits it
        # unless mpirun kills rank 0 first. Either outcome is correct; whichever it is must verify and be used.
        return {2, 4}
    return {2}


def moments():
    out = []  # (world size, ZeRO stage, kill spec, incremental)
    for d in (0, N_TENSORS - 1, N_TENSORS, 2 * N_TENSORS, N_DATASETS - 1):
        for r in (0, 1):
            out.append((2, 2, f"dataset:{d}:{r}", False))
    for phase in ("digests", "close", "commit"):
        for r in (0, 1):
            out.append((2, 2, f"{phase}:0:{r}", False))
    for phase in ("rename", "latest", "latest-rename"):
        out.append((2, 2, f"{phase}:0:0", False))
    for spec in ("dataset:0:2", "dataset:40:3", "dataset:83:1", "digests:0:1", "close:0:3", "commit:0:2"):
        out.append((4, 3, spec, False))
    # Incremental: params (datasets 0-27) are links, so the first dataset written is 28.
    for spec in ("scan:0:0", "scan:0:1", "dataset:28:1", "dataset:83:0", "commit:0:1", "rename:0:0", "latest:0:0"):
        out.append((2, 2, spec, True))
    return out


def train_args(out_dir, S, inc=False, **kw):
    c = dict(max_steps=4, save_interval=2, zero_stage=S, micro_batch_size=2, global_batch_size=8, seed=5)
    if inc:
        return C.train_args(out_dir, **c, learning_rate=0, **kw) + ["--incremental_checkpoints"]
    return C.train_args(out_dir, **c, **kw)


def n_links(ckpt):
    return sum(1 for e in C.manifest(ckpt)["datasets"].values() if "link" in e)


def main():
    t0 = time.time()
    work = C.setup(sys.argv, "ckpt_crash")
    bases, refs = {}, {}
    for N, S, inc in ((2, 2, False), (4, 3, False), (2, 2, True)):
        key = (N, inc)
        base = os.path.join(work, f"base_n{N}{'_inc' if inc else ''}")
        C.run(N, train_args(base, S, inc, exit_after_steps=2))
        ref = os.path.join(work, f"ref_n{N}{'_inc' if inc else ''}")
        C.run(N, train_args(ref, S, inc))
        bases[key] = base
        refs[key] = (C.manifest(f"{ref}/checkpoint-4")["datasets"], [r["loss"] for r in C.metrics(ref)])
        C.check(sorted(n for n in os.listdir(base) if n != ".lock") == ["checkpoint-2", "latest", "metrics.jsonl"],
                f"N={N}{' incremental' if inc else ''}: the run to be crashed starts with committed checkpoint-2 only",
                str(os.listdir(base)))
        if inc:
            C.check(n_links(f"{ref}/checkpoint-4") == N_TENSORS and n_links(f"{ref}/checkpoint-2") == 0,
                    f"incremental: the uninterrupted run's checkpoint-4 links its {N_TENSORS} params to checkpoint-2")

    all_moments = moments()
    print(f"{len(all_moments)} kill moments")
    def one(item, D):
        i, (N, S, spec, inc) = item
        phase, _, kill_rank = spec.split(":")
        allowed = allowed_newest(phase, int(kill_rank))
        tag = f"[{i + 1}/{len(all_moments)} N={N}{' incremental' if inc else ''} kill {spec}]"
        d = os.path.join(work, f"m{i}")
        shutil.copytree(bases[(N, inc)], d)
        rc, out = C.run(N, train_args(d, S, inc, resume_from_checkpoint="latest"),
                        env={"ZT_TEST_KILL_AT": spec}, expect="nonzero")
        D.check(f"killing rank {kill_rank} at {spec}" in out, f"{tag} the job died (rc {rc}) at that point",
                out[-2000:])
        committed = sorted(int(n[11:]) for n in os.listdir(d) if n.startswith("checkpoint-"))
        want = committed[-1] if committed else None
        D.check(committed[:1] == [2] and want in allowed,
                f"{tag} committed after the crash: steps {committed} (newest allowed: {sorted(allowed)})")
        tmp = os.path.join(d, ".checkpoint-4.tmp")
        tmp_note = ""
        if os.path.isdir(tmp) and phase == "commit":
            # The file there is complete: it must still not be loaded, because it was never renamed.
            rc_v, _ = C.run(N, ["ckpt", "verify", tmp], expect=None)
            tmp_note = f" (its uncommitted .tmp file verifies {'OK' if rc_v == 0 else 'broken'})"

        _, out = C.run(N, train_args(d, S, inc, resume_from_checkpoint="latest"))
        line = next((l for l in out.splitlines() if l.startswith("resumed from")), "")
        D.check(line.startswith(f"resumed from {d}/checkpoint-{want}: step {want}") and ".tmp" not in line,
                f"{tag} resume used checkpoint-{want}{tmp_note}", out[-2000:])
        rc_v, out_v = C.run(N, ["ckpt", "verify", f"{d}/checkpoint-{want}"], expect=None)
        D.check(rc_v == 0 and "OK (structure and every checksum)" in out_v,
                f"{tag} ckpt verify accepts checkpoint-{want}", out_v)
        ds, losses = refs[(N, inc)]
        got = C.manifest(f"{d}/checkpoint-4")["datasets"]
        # Incremental: the same links as the uninterrupted run (params to checkpoint-2), and checkpoint-4 verifies.
        same = all(got[k]["xxh64"] == ds[k]["xxh64"] and got[k].get("link") == ds[k].get("link") for k in ds) and \
            len(got) == len(ds)
        if inc and want != 4:
            rc_v, out_v = C.run(N, ["ckpt", "verify", f"{d}/checkpoint-4"], expect=None)
            D.check(rc_v == 0, f"{tag} the re-saved incremental checkpoint-4 verifies through its links", out_v)
        got_losses = [r["loss"] for r in C.metrics(d)]
        D.check(same and got_losses == losses and not os.path.exists(tmp),
                f"{tag} final checkpoint-4 and all 4 losses bitwise equal to the uninterrupted run, no .tmp left",
                f"losses {got_losses} vs {losses}; tmp exists: {os.path.exists(tmp)}")
        shutil.rmtree(d, ignore_errors=True)

    C.run_parallel(one, list(enumerate(all_moments)), workers=2)
    C.finish("ckpt_crash", work, t0)


if __name__ == "__main__":
    main()
