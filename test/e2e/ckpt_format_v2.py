#!/usr/bin/env python3
# A format-version-2 checkpoint of a frozen run, written by the build before version 3
# (test/fixtures/ckpt_format_v2/), resumes in this build as it did in the build that wrote it: at the saved layout
# (2 ranks, ZeRO-2) and at two others, the losses, LRs and grad norms of steps 4-6 and the xxh64 of every tensor of
# the final checkpoint are bitwise those recorded, less the frozen tensors' zero optim/ datasets, which version 3
# no longer writes (optimizer.frozen names them). Usage: ckpt_format_v2.py
import fnmatch
import json
import os
import sys
import time

import h5py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_common as C  # noqa: E402
import ckpt_format_v1 as V1  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "ckpt_format_v2")


def frozen_tensors(expected):
    """The fixture's frozen tensors, in table order (the order of the parameters in its manifest's partition)."""
    a = expected["run_args"]
    patterns = a[a.index("--freeze") + 1].split(",")
    units = C.manifest(os.path.join(FIXTURE, "checkpoint-3"))["partition"]["units"]
    names = [t["name"] for u in units for t in u["tensors"]]
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def check_fixture(frozen):
    """The fixture is what it claims: version 2, whose frozen tensors' optim/ datasets are stored, as zeros."""
    ckpt = os.path.join(FIXTURE, "checkpoint-3")
    m = C.manifest(ckpt)
    with h5py.File(os.path.join(ckpt, "model.h5"), "r") as f:
        zeros = all(not f[f"{g}/{t}"][()].any() for g in ("optim/exp_avg", "optim/exp_avg_sq") for t in frozen)
        trained = all(f[f"optim/exp_avg_sq/{t}"][()].any() for t in f["params"] if t not in frozen)
    C.check(m["format_version"] == 2 and "frozen" not in m["optimizer"] and len(m["datasets"]) == 48 and frozen
            and zeros and trained,
            f"the fixture is version 2 with all 48 datasets; the frozen {frozen}'s optim/ hold zeros, the others not")


def one_case(work, expected, case, frozen):
    n, stage = case["world_size"], case["zero_stage"]
    tag = f"N={n} S={stage}"
    out = V1.resume(work, expected, n, stage, tag, FIXTURE)
    got = V1.metrics_of(out)
    C.check(got == case["metrics"], f"{tag}: steps 4-6 losses, LRs and grad norms bitwise as recorded",
            f"recorded {case['metrics']}\n        now      {got}")
    m = C.manifest(f"{out}/checkpoint-6")
    absent = {f"{g}/{t}" for g in ("optim/exp_avg", "optim/exp_avg_sq") for t in frozen}
    want = {k: v for k, v in case["xxh64"].items() if k not in absent}
    sums = {name: d["xxh64"] for name, d in m["datasets"].items()}
    differ = sorted(k for k in set(sums) | set(want) if sums.get(k) != want.get(k))
    C.check(len(sums) == 48 - 2 * len(frozen) and not differ,
            f"{tag}: checkpoint-6's {len(sums)} tensor checksums as recorded, the frozen tensors' optim/ left out",
            f"differ: {differ[:5]}")
    C.check(m["format_version"] == 3 and m["optimizer"]["frozen"] == frozen,
            f"{tag}: checkpoint-6 is version 3 and its optimizer.frozen lists {frozen}", m["optimizer"])


def main():
    t0 = time.time()
    work = C.setup(sys.argv, "ckpt_format_v2")
    with open(os.path.join(FIXTURE, "expected.json")) as f:
        expected = json.load(f)
    frozen = frozen_tensors(expected)
    check_fixture(frozen)
    cases = expected["cases"]
    C.check(len(cases) == 3 and cases[0]["metrics"] != cases[1]["metrics"],
            "the fixture records 3 resumes, whose losses differ between world sizes")
    for case in cases:
        one_case(work, expected, case, frozen)
    C.finish("ckpt_format_v2", work, t0)


if __name__ == "__main__":
    main()
