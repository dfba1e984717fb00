#!/usr/bin/env python3
# Compares two runs' final state: every dataset's xxh64 (params and optimizer state, from the checkpoints'
# manifest.json) and every step's loss (metrics.jsonl). Usage: same_final_state.py REF_OUT OTHER_OUT STEP
import json
import sys

ref, other, step = sys.argv[1], sys.argv[2], int(sys.argv[3])


def datasets(out):
    with open(f"{out}/checkpoint-{step}/manifest.json") as f:
        return {name: d["xxh64"] for name, d in json.load(f)["datasets"].items()}


def losses(out):
    rows = {}  # a step logged twice (a resumed run repeating it) must agree, so keep every value
    with open(f"{out}/metrics.jsonl") as f:
        for line in f:
            r = json.loads(line)
            rows.setdefault(r["step"], set()).add(r["loss"])
    return rows


bad = 0
da, db = datasets(ref), datasets(other)
if not da:
    print("no datasets in the reference manifest")
    bad += 1
for name in sorted(set(da) | set(db)):
    if da.get(name) != db.get(name):
        print(f"dataset {name}: xxh64 {da.get(name)} (reference) != {db.get(name)}")
        bad += 1
la, lb = losses(ref), losses(other)
if sorted(la) != list(range(1, step + 1)) or la != lb:
    diff = [s for s in sorted(set(la) | set(lb)) if la.get(s) != lb.get(s)]
    print(f"losses differ at steps {diff[:10]}: reference {[la.get(s) for s in diff[:3]]}, "
          f"other {[lb.get(s) for s in diff[:3]]}")
    bad += 1
if bad == 0:
    print(f"identical: {len(da)} datasets' xxh64 at step {step} and the losses of all {step} steps")
sys.exit(1 if bad else 0)
