#!/usr/bin/env python3
# Randomized fault campaign over a run directory (issue 15): seeded trials (ZT_FAULT_SEED replays one campaign,
# ZT_FAULT_TRIALS sets their number, default 50) on 1-3 ranks, each one fault: a test kill point (a rank SIGKILLed
# inside a save, at the commit, the `latest` update, a prune, or a step), a wall-clock SIGKILL of mpirun, of a rank or
# of rank 0, a second job started on the same directory, or one flipped bit in a file of the run directory (model.h5
# tensor data, its manifest and digest datasets, any byte of it, manifest.json, latest, metrics.jsonl). The oracle is
# the promise, not the implementation:
#  (i)   every checkpoint committed before the fault is still there, byte for byte (unless the fault damaged it, or
#        retention removed it behind at least --save_total_limit newer intact ones), and every new one verifies;
#  (ii)  `--resume_from_checkpoint latest` resumes the newest committed checkpoint that `zerotrain ckpt verify` passes
#        (saves go forward in step order here, so newest commit = highest step) and ends with every loss bitwise
#        equal to an uninterrupted run's, or, when committed checkpoints exist and none verifies, fails naming them;
#  (iii) metrics.jsonl then has exactly one row per step (a flipped row of a step at or before the resumed one may
#        be set aside, and must then be reported).
import collections
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_common as C  # noqa: E402

CFG = dict(n_layer=1, d_model=32, n_head=2, seq_len=16, micro_batch_size=1, global_batch_size=6, seed=5,
           save_interval=2, max_steps=6)
STEPS = 6
FAULT_RUN_TIMEOUT_S = 120
KILL_POINTS = ["dataset:{d}:{r}", "digests:0:{r}", "close:0:{r}", "commit:0:{r}", "rename:0:0", "latest:0:0",
               "latest-rename:0:0", "step:{s}:{r}", "prune:0:0"]


def args(out, **kw):
    return C.train_args(out, **dict(CFG, **kw))


def start(n, argv, log, env=None):
    """Starts a job in its own session, so the whole job (mpirun and ranks) can be killed as a scheduler would."""
    cmd = [C.ZEROTRAIN] + [str(a) for a in argv]
    if n > 1:
        cmd = [C.MPIEXEC, "-np", str(n), "--oversubscribe", "--bind-to", "none"] + cmd
    f = open(log, "w")
    return subprocess.Popen(cmd, env=dict(os.environ, **(env or {})), stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True), f


def session_pids(sid):
    """Processes of session `sid`. Open MPI puts each rank in a process group of its own, so a SIGKILL of mpirun
    leaves the ranks running as orphans (they go on training and saving); the session still holds them."""
    pids = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if d.isdigit() and int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(d))
        except (OSError, IndexError, ValueError):
            continue
    return pids


def end_job(p, f, timeout=FAULT_RUN_TIMEOUT_S):
    """Waits for the job, then SIGKILLs whatever of its session is left, as a scheduler ends a job; returns
    (rc, log)."""
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        rc = -999
    t_end = time.time() + 30
    while time.time() < t_end:
        left = session_pids(p.pid)
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    p.wait()
    f.close()
    with open(f.name, errors="replace") as g:
        return rc, g.read()


def committed(out):
    return sorted(int(n[11:]) for n in os.listdir(out) if n.startswith("checkpoint-") and n[11:].isdigit())


def file_hash(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def verifies(ckpt):
    rc, _ = C.run(1, ["ckpt", "verify", ckpt], expect=None)
    return rc == 0


def flip_random_bit(rng, out):
    """Flips one bit of a random byte of a random file of the run directory; returns (label, damaged step or None)."""
    steps = committed(out)
    choice = rng.choice(["model.h5 data", "model.h5 manifest", "model.h5 any byte", "manifest.json", "latest",
                         "metrics.jsonl"])
    step = rng.choice(steps)
    ckpt = f"{out}/checkpoint-{step}"
    if choice in ("model.h5 data", "model.h5 manifest"):
        names = list(C.manifest(ckpt)["datasets"]) if choice == "model.h5 data" else ["manifest", "manifest_xxh64"]
        name = rng.choice(names)
        off, size = C.dataset_offset(ckpt, name)
        path, offset, label = f"{ckpt}/model.h5", off + rng.randrange(size), f"{name} data of checkpoint-{step}"
    elif choice == "model.h5 any byte":
        path = f"{ckpt}/model.h5"
        offset = rng.randrange(os.path.getsize(path))
        label = f"byte {offset} of checkpoint-{step}/model.h5"
    elif choice == "manifest.json":
        path = f"{ckpt}/manifest.json"
        offset, label = rng.randrange(os.path.getsize(path)), f"checkpoint-{step}/manifest.json"
    else:
        path, step = f"{out}/{choice}", None
        offset, label = rng.randrange(os.path.getsize(path)), choice
    C.flip_bits(path, offset, 1 << rng.randrange(8))
    return f"bit flip in {label}", (step if path.endswith("model.h5") or path.endswith("manifest.json") else None)


def wall_clock_kill(rng, n, out, env, limit):
    target = rng.choice(["mpirun", "rank 0", f"rank {rng.randrange(n)}"]) if n > 1 else "the process"
    delay = rng.uniform(0.3, 4.0)
    p, f = start(n, args(out, resume_from_checkpoint="latest", save_total_limit=limit), out + ".fault.log", env)
    time.sleep(delay)
    pid = p.pid if target in ("mpirun", "the process") else C.rank_pid(p.pid, int(target.split()[1]))
    if pid is not None and p.poll() is None:
        os.kill(pid, signal.SIGKILL)
    end_job(p, f)
    return f"SIGKILL of {target} after {delay:.1f}s"


def second_job(rng, n, out, env):
    stale = C.lock_holder(out)  # the .lock of the run that made the directory names a process long gone
    # Slow saves keep the first job running while the second starts up.
    p, f = start(n, args(out, resume_from_checkpoint="latest"), out + ".fault.log",
                 dict(env, ZT_TEST_SAVE_DELAY_MS="4000"))
    t_end = time.time() + 60
    while time.time() < t_end and C.lock_holder(out) in (None, stale) and p.poll() is None:
        time.sleep(0.05)
    n2 = rng.choice([m for m in (1, 2, 3) if m != n])
    how = rng.choice(["resuming", "--allow_fresh_start"])
    argv2 = args(out, resume_from_checkpoint="latest") if how == "resuming" else args(out) + ["--allow_fresh_start"]
    rc2, log2 = C.run(n2, argv2, expect=None)
    overlapped = p.poll() is None  # else the first job ended before the second looked: nothing to refuse
    rc, _ = end_job(p, f)
    ok = rc == 0 and rc2 != 0 and "is in use by another zerotrain job" in log2
    return f"second job ({n2} rank(s), {how}) while the first runs", ok, overlapped, f"{rc} {rc2}\n{log2[-800:]}"


def trial(i, rng, work, refs, prefixes, tally):
    n = rng.choice([1, 2, 3])
    kind = rng.choice(["kill point", "kill point", "wall clock", "wall clock", "second job", "bit flip", "bit flip"])
    out = os.path.join(work, f"t{i}")
    if kind == "bit flip" or rng.random() < 0.7:
        shutil.copytree(prefixes[n], out)  # checkpoints 2 and 4
    else:
        os.makedirs(out)
    limit = 2 if kind != "bit flip" and rng.random() < 0.3 else 0
    env = {"ZT_TEST_SAVE_DELAY_MS": str(rng.choice([0, 0, 200]))}
    before = {s: file_hash(f"{out}/checkpoint-{s}/model.h5") for s in committed(out)}
    damaged, extra_ok = None, (True, "")
    if kind == "kill point":
        spec = rng.choice(KILL_POINTS[:-1] + (KILL_POINTS[-1:] if limit else [])).format(
            d=rng.randrange(6), r=rng.randrange(n), s=rng.randrange(STEPS))
        env["ZT_TEST_KILL_AT"] = spec
        p, f = start(n, args(out, resume_from_checkpoint="latest", save_total_limit=limit), out + ".fault.log", env)
        end_job(p, f)
        fault = f"kill point {spec}"
    elif kind == "wall clock":
        fault = wall_clock_kill(rng, n, out, env, limit)
    elif kind == "second job":
        fault, ok, overlapped, detail = second_job(rng, n, out, env)
        extra_ok = (ok, detail)
        if not overlapped:  # the first job ended before the second took the lock: a sequential restart, not a race
            print(f"  note: trial {i}: {fault}: the first job had ended before the second looked; not counted")
            tally["second job (no overlap, not counted)"] += 1
            return
    else:
        fault, damaged = flip_random_bit(rng, out)
    name = f"trial {i} ({n} rank(s), {fault}{', limit 2' if limit else ''})"
    if kind == "second job":
        C.check(extra_ok[0], f"{name}: the second job failed naming the holder, the first finished", extra_ok[1])
    tally[kind] += 1
    oracle(name, n, out, before, damaged, limit, refs, kind, tally)


def oracle(name, n, out, before, damaged, limit, refs, kind, tally):
    now = committed(out)
    good = {s for s in before if s != damaged and s in now}
    for s in now:
        if s in before and s != damaged:
            C.check(file_hash(f"{out}/checkpoint-{s}/model.h5") == before[s],
                    f"{name}: checkpoint-{s}, committed before, is unchanged")
        elif verifies(f"{out}/checkpoint-{s}"):
            good.add(s)
        elif s not in before:
            C.check(False, f"{name}: checkpoint-{s}, committed by the faulted run, verifies")
    for s in before:
        if s != damaged and s not in now:
            newer = [t for t in good if t > s]
            C.check(limit and len(newer) >= limit, f"{name}: checkpoint-{s} gone only behind {limit} newer ones")
    rc, log = C.run(n, args(out, resume_from_checkpoint="latest"), expect=None)
    if good:
        s = max(good)
        outcome = f"resumed checkpoint-{s}"
        C.check(rc == 0 and f"resumed from {out}/checkpoint-{s}: step {s}" in log,
                f"{name}: resumed checkpoint-{s}, the newest that verifies", log[-1500:])
    elif now:
        outcome = "refused: no checkpoint loads"
        C.check(rc != 0 and f"none of the {len(now)} committed checkpoint(s)" in log,
                f"{name}: refused to start fresh over {len(now)} checkpoint(s), none of which verifies", log[-1500:])
        tally[outcome] += 1
        return
    else:
        outcome = "fresh start (nothing committed)"
        C.check(rc == 0 and "starting fresh" in log, f"{name}: nothing committed, started fresh", log[-1500:])
    tally[outcome.split(" checkpoint-")[0] if "resumed" in outcome else outcome] += 1
    check_metrics(name, out, refs[n], max(good) if good else 0, kind, log)


def check_metrics(name, out, ref_losses, resumed, kind, log):
    rows = C.metrics(out)
    steps = [r["step"] for r in rows]
    if kind == "bit flip":
        # A damaged row at or before the resumed step cannot be redone; it must be set aside and reported.
        lost = [s for s in range(1, resumed + 1) if s not in steps]
        C.check(steps == sorted(set(steps)) and all(s in steps for s in range(resumed + 1, STEPS + 1))
                and (not lost or "has no row for step(s)" in log),
                f"{name}: metrics.jsonl: each step once, steps after {resumed} all there, lost rows {lost} reported",
                f"{steps}\n{log[-800:]}")
        rows = [r for r in rows if r["step"] > resumed]
    else:
        C.check(steps == list(range(1, STEPS + 1)), f"{name}: metrics.jsonl has one row per step", str(steps))
    C.check(all(r["loss"] == ref_losses[r["step"]] for r in rows),
            f"{name}: losses bitwise equal to an uninterrupted run's")


def main():
    t0 = time.time()
    work = C.setup(sys.argv, "fault_campaign")
    seed = int(os.environ.get("ZT_FAULT_SEED", str(random.SystemRandom().randrange(1 << 31))))
    n_trials = int(os.environ.get("ZT_FAULT_TRIALS", "50"))
    print(f"fault_campaign: seed {seed} (replay with ZT_FAULT_SEED={seed}), {n_trials} trials")
    refs, prefixes = {}, {}
    for n in (1, 2, 3):
        ref = os.path.join(work, f"ref{n}")
        C.run(n, args(ref))
        refs[n] = {r["step"]: r["loss"] for r in C.metrics(ref)}
        prefixes[n] = os.path.join(work, f"prefix{n}")
        C.run(n, args(prefixes[n], exit_after_steps=4))
        C.check(all(verifies(f"{prefixes[n]}/checkpoint-{s}") for s in (2, 4)),
                f"{n} rank(s): the starting directory's checkpoints 2 and 4 verify")
    rng = random.Random(seed)
    tally = collections.Counter()
    for i in range(n_trials):
        trial(i, random.Random(rng.randrange(1 << 62)), work, refs, prefixes, tally)
    print(f"fault_campaign: seed {seed}, {n_trials} trials in {time.time() - t0:.0f}s; outcomes: "
          + ", ".join(f"{k}: {v}" for k, v in sorted(tally.items())))
    C.finish("fault_campaign", work, t0)


if __name__ == "__main__":
    main()
