#!/usr/bin/env python3
# Preemption under mpirun: a 2-rank ZeRO-2 run (24 steps, a save every 6) is signalled at 9 moments: SIGUSR1 to
# mpirun (which forwards it to every rank) after 2, 9, 15 and 20 steps; during the save of checkpoint-12 (the
# temporary directory exists, the committed one does not yet); SIGTERM straight to rank 1's pid; a second SIGUSR1
# (and a SIGTERM to rank 0) while the exit save is being written; and with --async_save, during the background
# write of checkpoint-12 and after 5 steps. Every time: exit status 75, a committed checkpoint (`ckpt verify` OK) at the
# step where it stopped, which `latest` names and metrics.jsonl ends at; nothing temporary left. Then
# `--resume_from_checkpoint latest` runs to the end, and the final checkpoint's xxh64 map and every loss in
# metrics.jsonl equal those of the uninterrupted run (sync saves, same arguments). A signal during a save lets that
# save finish (`ckpt verify` OK) and stops at a later boundary, before the next interval save.
import json
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_common as C  # noqa: E402

MAX_STEPS, SAVE_INTERVAL = 24, 6
# A model large enough that a step (~40 ms) and a save (~30 ms) outlast mpirun's forwarding of a signal (ms to tens
# of ms under load); with the tiny preset a step took 3 ms and a signal could land several steps after it was sent.
ARGS = ["--max_steps", MAX_STEPS, "--save_interval", SAVE_INTERVAL, "--zero_stage", 2, "--micro_batch_size", 2,
        "--global_batch_size", 8, "--seed", 7, "--threads", 1, "--log_interval", 100, "--n_layer", 4, "--d_model",
        128, "--seq_len", 128]
WAIT_S = 90  # for a trigger or an exit; a hang fails the test
REQUEUE = 75


def launch(out, extra=(), log=None):
    cmd = [C.MPIEXEC, "-np", "2", "--oversubscribe", "--bind-to", "none", C.ZEROTRAIN, "train", "--output_dir",
           out] + [str(a) for a in ARGS] + list(extra)
    f = open(log or out + ".log", "w")
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT), f


def finish_run(p, f):
    try:
        rc = p.wait(timeout=WAIT_S + 30)
    except subprocess.TimeoutExpired:
        p.terminate()  # mpirun passes SIGTERM on to the ranks (SIGKILL would orphan them)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
        rc = -999
    f.close()
    with open(f.name) as g:
        return rc, g.read()


def rows(out):
    try:
        with open(os.path.join(out, "metrics.jsonl")) as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def wait_until(p, cond, what):
    t_end = time.time() + WAIT_S
    while time.time() < t_end:
        if cond():
            return True
        if p.poll() is not None:
            C.check(False, f"trigger '{what}' reached", f"the run exited first (status {p.returncode})")
            return False
        time.sleep(0.002)
    C.check(False, f"trigger '{what}' reached within {WAIT_S}s")
    return False


def exit_save_announced(out):
    """The step of the exit save, once rank 0 has logged it (None before)."""
    try:
        with open(out + ".log") as f:
            m = re.search(r"signal \d+ \(SIG\w+\) received: saving checkpoint-(\d+) before exiting", f.read())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def leftovers(out):
    return [n for n in os.listdir(out) if n.startswith(".checkpoint-") or n == ".latest.tmp"]


def fingerprint(out):
    """Final checkpoint's {dataset: xxh64} and every (step, loss) row of metrics.jsonl."""
    with open(os.path.join(out, f"checkpoint-{MAX_STEPS}", "manifest.json")) as f:
        m = json.load(f)
    return ({k: v["xxh64"] for k, v in m["datasets"].items()}, [(r["step"], r["loss"]) for r in C.metrics(out)])


def signal_target(p, target):
    if target == "mpirun":
        return p.pid
    pid = C.rank_pid(p.pid, int(target.split()[1]))
    C.check(pid is not None, f"found the pid of {target}")
    return pid


def moment(work, name, trigger, sig=signal.SIGUSR1, target="mpirun", second=False, extra=()):
    """Runs until `trigger`, sends `sig` to `target`, checks the stop; returns the step it stopped at (or None)."""
    print(f"{name}:")
    out = os.path.join(work, name)
    p, f = launch(out, extra)
    kind, n = trigger
    during_save_ok = None
    if kind == "rows":
        ok = wait_until(p, lambda: rows(out) >= n, f"{n} steps done")
    else:  # "tmp": the save of checkpoint-n has begun but is not committed
        ok = wait_until(p, lambda: os.path.isdir(os.path.join(out, f".checkpoint-{n}.tmp")), f"saving checkpoint-{n}")
        during_save_ok = not os.path.isdir(os.path.join(out, f"checkpoint-{n}"))
    if ok:
        os.kill(signal_target(p, target), sig)
    second_step = None
    if ok and second:
        # The exit save: rank 0 names it once the ranks agree on the signal, then writes it. Signal again while its
        # temporary directory exists. (The first temporary directory after the signal is not enough: the signal
        # may reach the ranks only after an interval save has begun.)
        if wait_until(p, lambda: exit_save_announced(out), "exit save announced") and wait_until(
                p, lambda: os.path.isdir(os.path.join(out, f".checkpoint-{exit_save_announced(out)}.tmp")) or
                os.path.isdir(os.path.join(out, f"checkpoint-{exit_save_announced(out)}")), "exit save started"):
            second_step = exit_save_announced(out)
            committed_before = os.path.isdir(os.path.join(out, f"checkpoint-{second_step}"))
            os.kill(p.pid, signal.SIGUSR1)
            pid0 = C.rank_pid(p.pid, 0)
            if pid0:
                os.kill(pid0, signal.SIGTERM)
            C.check(not committed_before, f"second SIGUSR1 (mpirun) + SIGTERM (rank 0) sent while checkpoint-"
                    f"{second_step} was being written")
    rc, log = finish_run(p, f)
    if not C.check(rc == REQUEUE, f"exit status {REQUEUE} (requeue)", f"got {rc}:\n{log[-3000:]}"):
        return None
    latest = open(os.path.join(out, "latest")).read().strip() if os.path.exists(os.path.join(out, "latest")) else ""
    s = int(latest.split("-")[1]) if latest.startswith("checkpoint-") else -1
    with open(os.path.join(out, latest, "manifest.json")) as mf:
        man_step = json.load(mf)["step"]
    sig_name = "SIGUSR1" if sig == signal.SIGUSR1 else "SIGTERM"
    C.check(f"received signal {int(sig)} ({sig_name}): checkpoint saved at step {s}; exiting with status 75" in log,
            f"log: received {sig_name}, saved at step {s}", log[-2000:])
    announced = log.find(f"received: saving checkpoint-{s} before exiting")
    C.check(0 <= announced < log.find(f"saved {out}/checkpoint-{s} "),
            f"log: the exit save of checkpoint-{s} announced before it was written", log[-2000:])
    C.check(man_step == s and rows(out) == s and C.metrics(out)[-1]["step"] == s,
            f"stopped at step {s}: `latest`, the manifest ({man_step}) and metrics.jsonl ({rows(out)} rows) agree")
    if kind == "rows":
        C.check(n <= s < MAX_STEPS, f"stopped after the signal ({n} steps done) and before the end")
    else:
        C.check(during_save_ok, f"the signal was sent before checkpoint-{n} was committed")
        # The rank acts at the first step boundary after the signal reaches it. That is boundary n + 1 when
        # mpirun forwards it within one step; under load (async save: step n + 1 runs alongside the writer) it
        # can be n + 2 or later. What must hold: the save in progress was completed, not dropped, and the job
        # stopped well before the next interval save at n + SAVE_INTERVAL, i.e. because of the signal.
        C.check(n < s < n + SAVE_INTERVAL and os.path.isdir(os.path.join(out, f"checkpoint-{n}")),
                f"the save in progress (checkpoint-{n}) finished, and the job stopped at a boundary after it ({s}) "
                f"and before the next interval save ({n + SAVE_INTERVAL})")
        if s != n + 1:
            print(f"  note: stopped at {s}, not {n + 1}: the signal reached the ranks after boundary {n + 1}")
        vrc, vlog = C.run(1, ["ckpt", "verify", os.path.join(out, f"checkpoint-{n}")], expect=None)
        C.check(vrc == 0, f"ckpt verify checkpoint-{n} (the save that was in progress)", vlog)
    if second:
        C.check(second_step == s, f"the second signal hit the exit save (checkpoint-{second_step} = stop {s})")
    C.check(not leftovers(out), "no temporary or moved-aside directories", str(leftovers(out)))
    vrc, vlog = C.run(1, ["ckpt", "verify", os.path.join(out, latest)], expect=None)
    C.check(vrc == 0, f"ckpt verify {latest}", vlog)
    return s


def resume_and_compare(work, name, s, ref, extra=()):
    out = os.path.join(work, name)
    p, f = launch(out, list(extra) + ["--resume_from_checkpoint", "latest"], log=out + ".resume.log")
    rc, log = finish_run(p, f)
    if not C.check(rc == 0, "resume to the end: exit status 0", f"got {rc}:\n{log[-3000:]}"):
        return
    C.check(f"resumed from {out}/checkpoint-{s}: step {s}," in log, f"resumed from checkpoint-{s}",
            "\n".join(line for line in log.splitlines() if "resum" in line))
    got = fingerprint(out)
    C.check(got[0] == ref[0], f"final checkpoint-{MAX_STEPS}: every dataset's xxh64 equals the uninterrupted run's",
            str(sorted(k for k in ref[0] if got[0].get(k) != ref[0][k])[:5]))
    C.check(got[1] == ref[1], f"metrics.jsonl: all {len(ref[1])} (step, loss) rows equal the uninterrupted run's",
            str([(a, b) for a, b in zip(got[1], ref[1]) if a != b][:3]))


def main():
    t0 = time.time()
    work = C.setup(sys.argv, "preempt")
    ref_out = os.path.join(work, "ref")
    p, f = launch(ref_out)
    rc, log = finish_run(p, f)
    if not C.check(rc == 0, "uninterrupted reference run", log[-3000:]):
        C.finish("preempt", work, t0)
    ref = fingerprint(ref_out)
    cases = [
        ("usr1_after_2", ("rows", 2), {}),
        ("usr1_after_9", ("rows", 9), {}),
        ("usr1_after_15", ("rows", 15), {}),
        ("usr1_after_20", ("rows", 20), {}),
        ("usr1_during_save_12", ("tmp", 12), {}),
        ("sigterm_rank1_after_5", ("rows", 5), {"sig": signal.SIGTERM, "target": "rank 1"}),
        ("second_signal_during_exit_save", ("rows", 3), {"second": True}),
        ("async_usr1_during_background_write_12", ("tmp", 12), {"extra": ["--async_save"]}),
        ("async_usr1_after_5", ("rows", 5), {"extra": ["--async_save"]}),
    ]
    stops = []
    for name, trigger, kw in cases:
        s = moment(work, name, trigger, **kw)
        if s is not None and s > 0:
            stops.append(s)
            resume_and_compare(work, name, s, ref, kw.get("extra", ()))
    C.check(len(set(stops)) >= 5, f"the runs stopped at >= 5 different steps: {sorted(set(stops))}")
    C.finish("preempt", work, t0)


if __name__ == "__main__":
    main()
