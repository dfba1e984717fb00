#!/usr/bin/env python3
# The run directory's guards (issue 15, items 1, 5, 6, 7 and the --exit_after_steps gap, and the holes found in
# items 2-4), each by what a user sees:
#  1. One writer per directory: a second job (other world sizes, with and without resume) started while one runs fails
#     at once naming the directory and the holder's host and pid, and the first job's checkpoints, metrics and
#     losses are exactly an undisturbed run's. SIGKILL of the holder frees the lock: the restart resumes.
#  5. `latest` over committed checkpoints none of which loads (damaged, or missing for now) stops, listing each and
#     why, and changes nothing; --allow_fresh_start starts over; once the missing file is back, it resumes. A run
#     without a resume over committed checkpoints is refused too.
#  6. metrics.jsonl: a damaged line, rows past the checkpoint and a torn last line; the resume keeps every usable row
#     up to its step, sets the rest aside in metrics.jsonl.rejected and says so. A write that fails exits 74.
#  7. Leftovers of crashed saves are cleaned at start-up and reported; a `.old` copy is restored and resumed; a re-save
#     killed at its commit leaves the step's checkpoint intact.
#  gap: --exit_after_steps reaching --max_steps with --save_interval 0 saves the final state.
#  a. Settings and state come from the same checkpoint when the newest loads no tensors.
#  b. Retention does not count a newer checkpoint that does not load, so intact older ones stay.
#  c. A checkpoint whose manifest cannot be read for now still counts in the commit numbering.
import os
import shutil
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_common as C  # noqa: E402

CFG = dict(n_layer=1, d_model=32, n_head=2, seq_len=16, micro_batch_size=2, global_batch_size=4, seed=11,
           save_interval=2, zero_stage=1)


def args(out, **kw):
    return C.train_args(out, **dict(CFG, **kw))


def losses(out):
    return {r["step"]: r["loss"] for r in C.metrics(out)}


def n_rows(out):
    """Complete lines in metrics.jsonl (0 before it exists)."""
    try:
        with open(os.path.join(out, "metrics.jsonl")) as f:
            return f.read().count("\n")
    except OSError:
        return 0


def steps_of(out):
    return sorted(int(n[11:]) for n in os.listdir(out) if n.startswith("checkpoint-") and n[11:].isdigit())


def digests(ckpt):
    return {k: v["xxh64"] for k, v in C.manifest(ckpt)["datasets"].items()}


def verifies(ckpt):
    rc, _ = C.run(1, ["ckpt", "verify", ckpt], expect=None)
    return rc == 0


def damage_tensor(ckpt, name="params/wte"):
    off, _ = C.dataset_offset(ckpt, name)
    C.flip_bits(os.path.join(ckpt, "model.h5"), off + 8, 0x40)


def damage_manifest(ckpt):
    off, size = C.dataset_offset(ckpt, "manifest")
    C.flip_bits(os.path.join(ckpt, "model.h5"), off + size // 2, 0x01)


def snapshot(out):
    """Every file under `out` (but the lock) with its bytes."""
    files = {}
    for root, _, names in os.walk(out):
        for n in names:
            p = os.path.join(root, n)
            if n != ".lock":
                with open(p, "rb") as f:
                    files[os.path.relpath(p, out)] = f.read()
    return files


def wait_for(cond, timeout=60):
    t_end = time.time() + timeout
    while time.time() < t_end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def check_lock(work, ref):
    print("1. one writer per output directory")
    out = os.path.join(work, "lock")
    a, fa = C.start(2, args(out, max_steps=8, resume_from_checkpoint="latest"), out + ".a.log",
                    env={"ZT_TEST_SAVE_DELAY_MS": "1500"})
    C.check(wait_for(lambda: C.lock_holder(out) is not None and os.path.exists(os.path.join(out, "metrics.jsonl"))),
            "job A (2 ranks) holds the lock and trains")
    holder = C.lock_holder(out)
    C.check(holder == C.rank_pid(a.pid, 0), f"the lock names A's rank 0 (pid {holder})")
    want = f"output directory {out} is in use by another zerotrain job (held by host {socket.gethostname()}, pid {holder}"
    for n, extra in ((3, dict(resume_from_checkpoint="latest")), (1, {})):
        t0 = time.time()
        rc, log = C.run(n, args(out, max_steps=8, **extra), expect=None)
        C.check(rc != 0 and want in log and time.time() - t0 < 30 and a.poll() is None,
                f"job B on {n} rank(s) {'resuming' if extra else 'fresh'} fails in {time.time() - t0:.1f}s naming "
                "the holder, while A still runs", log[-1500:])
    rc, log = C.wait_run(a, fa)
    C.check(rc == 0, "job A finishes", log[-1500:])
    C.check(losses(out) == losses(ref) and len(C.metrics(out)) == 8,
            "A's metrics.jsonl: one row per step, every loss equal to an undisturbed run's")
    C.check(steps_of(out) == [2, 4, 6, 8] and all(verifies(f"{out}/checkpoint-{s}") for s in (2, 4, 6, 8))
            and digests(f"{out}/checkpoint-8") == digests(f"{ref}/checkpoint-8"),
            "A's checkpoints 2-8 verify; checkpoint-8 equals the undisturbed run's bitwise")

    out = os.path.join(work, "lock_kill")
    a, fa = C.start(2, args(out, max_steps=100000), out + ".log")
    C.check(wait_for(lambda: n_rows(out) >= 3), "a long job is training")
    holder = C.lock_holder(out)
    os.kill(holder, signal.SIGKILL)
    rc, _ = C.wait_run(a, fa)
    C.check(rc != 0, f"SIGKILL of the lock holder (rank 0, pid {holder}) ends the job (status {rc})")
    rc, log = C.run(2, args(out, max_steps=4, resume_from_checkpoint="latest"), expect=None)
    C.check(rc == 0 and "is in use" not in log and "resumed from" in log,
            "the kernel dropped the lock: the restart takes it and resumes", log[-1500:])


def check_no_fresh_start(work, base):
    print("5. never a fresh start over committed checkpoints")
    out = shutil.copytree(base, os.path.join(work, "fresh"))
    damage_tensor(f"{out}/checkpoint-4")
    os.rename(f"{out}/checkpoint-2/model.h5", f"{work}/held-back.h5")  # a passing read error
    before = snapshot(out)
    rc, log = C.run(2, args(out, max_steps=6, resume_from_checkpoint="latest"), expect=None)
    C.check(rc != 0 and f"none of the 2 committed checkpoint(s) in {out} loads" in log
            and f"{out}/checkpoint-4:" in log and "checksum mismatch in tensor params/wte" in log
            and f"{out}/checkpoint-2:" in log and "does not exist" in log and "--allow_fresh_start" in log,
            "`latest` refuses, listing checkpoint-4 (checksum mismatch) and checkpoint-2 (file missing)", log[-2500:])
    C.check(snapshot(out) == before, "the refused run changed nothing in the directory (metrics.jsonl included)")
    rc, log = C.run(2, args(out, max_steps=6), expect=None)
    C.check(rc != 0 and "holds 2 committed checkpoint(s) and this run does not resume" in log
            and snapshot(out) == before, "a run without a resume is refused too, and changes nothing", log[-1500:])
    os.rename(f"{work}/held-back.h5", f"{out}/checkpoint-2/model.h5")
    rc, log = C.run(2, args(out, max_steps=6, resume_from_checkpoint="latest"), expect=None)
    C.check(rc == 0 and f"resumed from {out}/checkpoint-2: step 2" in log,
            "once the file is back, `latest` resumes checkpoint-2 (checkpoint-4 still skipped)", log[-1500:])
    out = shutil.copytree(base, os.path.join(work, "fresh_allowed"))
    for s in (2, 4):
        damage_tensor(f"{out}/checkpoint-{s}")
    rc, log = C.run(2, args(out, max_steps=6, resume_from_checkpoint="latest") + ["--allow_fresh_start"], expect=None)
    C.check(rc == 0 and "starting fresh (--allow_fresh_start)" in log and sorted(losses(out)) == [1, 2, 3, 4, 5, 6],
            "--allow_fresh_start trains from scratch over them", log[-1500:])


def check_metrics(work, base, ref):
    print("6. metrics.jsonl survives damage; a failed write stops the run")
    out = shutil.copytree(base, os.path.join(work, "metrics"))
    path = f"{out}/metrics.jsonl"
    with open(path) as f:
        lines = f.read().splitlines()
    ref_rows = open(f"{ref}/metrics.jsonl").read().splitlines()
    lines[1] = lines[1].replace('"loss"', '"lo\x13ss').replace("{", "{\x00", 1)  # step 2: not JSON any more
    lines += ref_rows[4:6] + ['{"step": 7, "lo']  # a crash after checkpoint-4 logged 5, 6 and half of 7
    with open(path, "w") as f:
        f.write("\n".join(lines))
    rc, log = C.run(2, args(out, max_steps=8, resume_from_checkpoint="latest"), expect=None)
    rows = C.metrics(out)
    C.check(rc == 0 and [r["step"] for r in rows] == [1, 3, 4, 5, 6, 7, 8]
            and all(r["loss"] == losses(ref)[r["step"]] for r in rows),
            "rows 1, 3, 4 kept (the damaged row 2 no longer deletes everything after it), 5-8 redone, each once",
            log[-1500:])
    C.check("metrics.jsonl line 2: not a JSON row with a step" in log and "line 7: not a JSON row" in log
            and "has no row for step(s) 2 of the 4 resumed" in log, "the resume names lines 2 and 7 and step 2",
            log[-1500:])
    rejected = open(f"{path}.rejected").read().splitlines()
    C.check(rejected == [lines[1], lines[6]], "both lines are kept in metrics.jsonl.rejected, byte for byte")

    for n in (1, 2):
        out = os.path.join(work, f"metrics_full{n}")
        os.makedirs(out)
        os.symlink("/dev/full", f"{out}/metrics.jsonl")
        rc, log = C.run(n, args(out, max_steps=4), expect=None)
        C.check(rc == 74 and f"writing step 1 to {out}/metrics.jsonl failed: No space left on device" in log,
                f"{n} rank(s): a metrics write that fails (ENOSPC) exits 74 naming the file", log[-1500:])


def check_leftovers(work, base):
    print("7. leftovers of crashes are cleaned at start-up, with the lock held")
    out = shutil.copytree(base, os.path.join(work, "leftovers"))  # checkpoints 2 and 4
    shutil.copytree(f"{out}/checkpoint-4", f"{out}/.checkpoint-6.tmp")
    with open(f"{out}/.checkpoint-6.tmp/padding", "wb") as f:
        f.write(b"\0" * (3 << 20))
    shutil.copytree(f"{out}/checkpoint-2", f"{out}/.checkpoint-2.old")  # its replacement committed
    shutil.copytree(f"{out}/checkpoint-2", f"{out}/.checkpoint-8.pruning")
    open(f"{out}/.latest.tmp", "w").write("checkpoint-6\n")
    os.rename(f"{out}/checkpoint-4", f"{out}/.checkpoint-4.old")  # a re-save died between its two renames
    rc, log = C.run(2, args(out, max_steps=6, resume_from_checkpoint="latest"), expect=None)
    for what in (f"removed {out}/.checkpoint-6.tmp (3.", "a save that did not commit", f"removed {out}/.checkpoint-2.old",
                 f"removed {out}/.checkpoint-8.pruning", f"removed {out}/.latest.tmp",
                 f"restored {out}/checkpoint-4 from {out}/.checkpoint-4.old"):
        C.check(what in log, f"start-up says: {what}", log[-2500:])
    C.check(rc == 0 and f"resumed from {out}/checkpoint-4: step 4" in log, "the restored checkpoint-4 is resumed",
            log[-1500:])
    C.check(sorted(n for n in os.listdir(out) if n.startswith(".")) == [".lock"], "nothing left but the lock",
            str(os.listdir(out)))

    out = shutil.copytree(base, os.path.join(work, "resave_kill"))
    want = digests(f"{out}/checkpoint-4")
    rc, log = C.run(2, args(out, max_steps=4, resume_from_checkpoint=f"{out}/checkpoint-2"),
                    env={"ZT_TEST_KILL_AT": "rename:0:0"}, expect=None)
    C.check(rc != 0 and "killing rank 0 at rename:0:0" in log, "a re-save of checkpoint-4 killed at its commit",
            log[-1500:])
    C.check(verifies(f"{out}/checkpoint-4") and digests(f"{out}/checkpoint-4") == want,
            "checkpoint-4 is still there, intact, right after the kill")


def check_exit_after_gap(work, ref):
    print("gap: --exit_after_steps that reaches --max_steps with --save_interval 0")
    for n_exit in (5, 3):
        out = os.path.join(work, f"exit_after_{n_exit}")
        C.run(2, args(out, max_steps=3, save_interval=0, exit_after_steps=n_exit))
        C.check(steps_of(out) == [3] and open(f"{out}/latest").read() == "checkpoint-3\n"
                and verifies(f"{out}/checkpoint-3"),
                f"--exit_after_steps {n_exit} --max_steps 3: checkpoint-3 saved, `latest` names it")


def check_settings_follow_state(work, base, ref):
    print("a. settings and state come from the same checkpoint")
    out = shutil.copytree(base, os.path.join(work, "same_source"))
    shutil.rmtree(f"{out}/checkpoint-4")
    os.remove(f"{out}/latest")
    # checkpoint-4 saved by a run resumed with other settings; then its tensors are damaged.
    C.run(2, args(out, max_steps=4, resume_from_checkpoint="latest", learning_rate=0.02, warmup_steps=1))
    damage_tensor(f"{out}/checkpoint-4")
    rc, log = C.run(2, C.train_args(out, resume_from_checkpoint="latest"), expect=None)
    C.check(rc == 0 and f"skipping checkpoint {out}/checkpoint-4" in log and f"resumed from {out}/checkpoint-2: step 2"
            in log, "checkpoint-4 skipped; checkpoint-2 resumed", log[-1500:])
    C.check(digests(f"{out}/checkpoint-4") == digests(f"{ref}/checkpoint-4"),
            "the new checkpoint-4 equals the undisturbed run's (learning rate and warmup of checkpoint-2)")


def check_retention(work, ref):
    print("b. retention does not count a checkpoint that does not load")
    out = shutil.copytree(ref, os.path.join(work, "retention"), ignore=shutil.ignore_patterns("checkpoint-8"))
    open(f"{out}/latest", "w").write("checkpoint-6\n")
    damage_tensor(f"{out}/checkpoint-6")
    rc, log = C.run(2, args(out, max_steps=8, resume_from_checkpoint="latest", exit_after_steps=1,
                            save_total_limit=2), expect=None)
    C.check(rc == 0 and f"resumed from {out}/checkpoint-4" in log and steps_of(out) == [4, 5, 6]
            and verifies(f"{out}/checkpoint-4") and verifies(f"{out}/checkpoint-5"),
            "limit 2 after checkpoint-5: checkpoints 5 and 4 kept (both intact), the damaged 6 neither counted "
            "nor removed, 2 pruned", f"{steps_of(out)}\n{log[-1500:]}")


def check_commit_numbering(work, ref):
    print("c. a checkpoint unreadable for now still counts in the commit order")
    out = shutil.copytree(ref, os.path.join(work, "numbering"), ignore=shutil.ignore_patterns("checkpoint-8"))
    h5 = f"{out}/checkpoint-6/model.h5"
    shutil.copy(h5, f"{work}/good-6.h5")
    damage_manifest(f"{out}/checkpoint-6")
    rc, log = C.run(2, args(out, max_steps=8, resume_from_checkpoint="latest", exit_after_steps=1), expect=None)
    C.check(rc == 0 and f"resumed from {out}/checkpoint-4" in log, "checkpoint-6 unreadable: resumed 4, saved 5",
            log[-1500:])
    shutil.copy(f"{work}/good-6.h5", h5)  # the read error passes
    rc, log = C.run(2, args(out, max_steps=8, resume_from_checkpoint="latest", exit_after_steps=1), expect=None)
    C.check(rc == 0 and f"resumed from {out}/checkpoint-5: step 5" in log,
            "once checkpoint-6 reads again, `latest` still resumes checkpoint-5, the newer commit", log[-1500:])
    damage_manifest(f"{out}/checkpoint-6")
    os.remove(f"{out}/checkpoint-6/manifest.json")
    rc, log = C.run(2, args(out, max_steps=8, resume_from_checkpoint="latest"), expect=None)
    C.check(rc != 0 and f"cannot tell where {out}/checkpoint-6 stands in commit order" in log,
            "neither manifest of checkpoint-6 reads: the run stops before it could save below it", log[-1500:])


def main():
    t0 = time.time()
    work = C.setup(sys.argv, "run_dir_guard")
    ref = os.path.join(work, "ref")
    C.run(2, args(ref, max_steps=8))  # checkpoints 2, 4, 6, 8
    base = os.path.join(work, "base")
    C.run(2, args(base, max_steps=8, exit_after_steps=4))  # checkpoints 2, 4
    check_lock(work, ref)
    check_no_fresh_start(work, base)
    check_metrics(work, base, ref)
    check_leftovers(work, base)
    check_exit_after_gap(work, ref)
    check_settings_follow_state(work, base, ref)
    check_retention(work, ref)
    check_commit_numbering(work, ref)
    C.finish("run_dir_guard", work, t0)


if __name__ == "__main__":
    main()
