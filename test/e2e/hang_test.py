#!/usr/bin/env python3
# A stuck rank does not hang the job (issue 15, item 8): one rank SIGSTOPs itself (ZT_TEST_KILL_AT=...:stop) at the
# start of a step, and in the middle of writing a checkpoint; with --hang_timeout 3 every live rank reports the step
# and phase it waits in, and the job ends with status 124 within a bounded time (no process left behind). A run whose
# saves are slow but progressing (each longer than half the timeout) is not stopped.
import os
import re
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_common as C  # noqa: E402

CFG = dict(n_layer=1, d_model=32, n_head=2, seq_len=16, micro_batch_size=2, seed=3, hang_timeout=3)
HANG = 124
# 3 s without progress, 5 s for every live rank to report, then mpirun's teardown; far more means it hung.
BOUND_S = 60


def stuck(work, name, n, spec, phase, **kw):
    out = os.path.join(work, name)
    t0 = time.time()
    p, f = C.start(n, C.train_args(out, **dict(CFG, **kw)), out + ".log", env={"ZT_TEST_KILL_AT": spec})
    rc, log = C.wait_run(p, f, timeout=BOUND_S)
    dt = time.time() - t0
    stopped = int(spec.split(":")[2])
    C.check(f"stopping rank {stopped} at {spec}" in log, f"{name}: rank {stopped} stopped itself at {spec}",
            log[-2000:])
    C.check(rc == HANG, f"{name}: the job ended with status {HANG} after {dt:.1f}s (bound {BOUND_S}s)",
            f"status {rc}\n{log[-2000:]}")
    host = socket.gethostname()
    for r in range(n):
        if r == stopped:
            continue
        line = re.search(rf"rank {r}/{n} on {re.escape(host)}: hang: no progress for \d+ s \(--hang_timeout 3[^)]*\): "
                         rf"waiting in {re.escape(phase)}", log)
        C.check(line is not None, f"{name}: live rank {r} reported waiting in '{phase}'", log[-2000:])
    C.check(f"ending the job with status {HANG}" in log, f"{name}: a rank said it ends the job")
    C.check(not processes_writing(out), f"{name}: no rank of the job is left running")


def processes_writing(out):
    """Pids of processes whose command line names `out` (the job's ranks)."""
    found = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if d.isdigit() and out.encode() in f.read():
                    found.append(int(d))
        except OSError:
            continue
    return found


def main():
    t0 = time.time()
    work = C.setup(sys.argv, "hang")
    stuck(work, "step", 3, "step:3:1:stop", "step 4: forward, backward and gradient collectives", max_steps=1000)
    stuck(work, "save", 2, "dataset:5:1:stop", "saving checkpoint-2", max_steps=1000, save_interval=2)

    out = os.path.join(work, "slow_saves")
    rc, log = C.run(2, C.train_args(out, **dict(CFG, max_steps=4, save_interval=1)),
                    env={"ZT_TEST_SAVE_DELAY_MS": "1700"}, expect=None)
    C.check(rc == 0 and "hang" not in log and len(C.metrics(out)) == 4,
            "4 saves of 1.7 s each under --hang_timeout 3: no report, the run finishes", log[-1500:])
    C.finish("hang", work, t0)


if __name__ == "__main__":
    main()
