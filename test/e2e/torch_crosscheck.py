#!/usr/bin/env python3
"""Checks zerotrain's loss, every gradient and every AdamW update against PyTorch, on 1 rank and on 2 ranks (ZeRO-3).

zerotrain runs a few steps with --debug_dump_dir; PyTorch (fp32, one thread) rebuilds the same GPT-2 from
params_init.bin (the model of bench/torch_gpt2.py, so the benchmark peer is the checked model) and, for each step s:
  * teacher-forced: loads zerotrain's parameters before step s, compares the loss and every parameter gradient of
    batch_s; then clips zerotrain's own gradient with clip_grad_norm_ and applies torch.optim.AdamW, and compares
    the result with params_s.bin. Each check thus tests one step with nothing accumulated from earlier ones.
  * free-running: an independent PyTorch run from params_init (its own gradients and AdamW state) whose loss must
    follow zerotrain's.
Environment: ZEROTRAIN (binary, required), ZT_MPIEXEC (mpirun; default `mpirun`).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
from torch_gpt2 import Gpt2  # noqa: E402

MODEL = {"n_layer": 2, "n_head": 2, "d_model": 64, "vocab": 200, "seq_len": 32}  # vocab 200: padded to 256 inside
TRAIN = {"micro_batch_size": 2, "global_batch_size": 4, "max_steps": 3, "learning_rate": 1e-2, "warmup_steps": 1,
         "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "adam_eps": 1e-8, "grad_clip": 2.0, "seed": 7}
# grad_clip 2.0: the grad norms of this config are ~2.5, 2.4, 1.7, so steps 0-1 clip and step 2 does not.

# Tolerances. fp32 unit roundoff is 6e-8; the two sides sum in different orders, so they agree to rounding, not
# bits. Measured on this config: loss 1e-7, gradients <= 1.5e-6, parameters <= 3e-7 (relative, as defined below).
# Loss: a mean of G*T cross-entropies behind two blocks of K <= 256 dot products, relative rounding ~1e-6 at worst.
# At GPT-2 init the loss is a blunt probe (attention is near-uniform, GELU inputs are small): a wrong LayerNorm eps
# moves it 5e-5, a wrong attention scale only 1e-5; the gradients below are the sensitive check.
LOSS_RTOL = 1e-5
# Gradients: max |g_zt - g_torch| over a tensor, relative to that tensor's max |g_torch|. Backward compounds more
# rounding than forward (and cancels: the k-bias gradient is zero in exact arithmetic), so 10x looser than the loss,
# still ~70x above what we measure. Bugs land above it: exact-erf GELU instead of tanh 2e-4, attention scale 1/hd
# instead of 1/sqrt(hd) 6e-2.
GRAD_RTOL = 1e-4
# Grad norm: sqrt of one sum over ~100k squares of the same gradient; both sides round it to ~1e-6.
NORM_RTOL = 1e-5
# Parameters after AdamW from the same parameters and gradient: only the rounding of sqrt/div/fma differs, a few ulp
# of lr and of |p|; 1e-5 of max|p| is ~100 ulp. Bugs land above it: decay on 1-D tensors 1e-3, beta2 0.999 1e-3,
# clip coefficient off by 1% 3e-4 (Adam is not scale-invariant for gradients near eps), no clipping 1e-2.
PARAM_RTOL = 1e-5
# Free-running PyTorch (its own gradients and Adam moments): Adam normalises each element, so elements whose true
# gradient is ~0 (the k-bias, exactly; others by chance) take rounding-noise-driven steps of up to lr on both sides;
# they barely move the loss (measured 1e-7). 1e-4 still catches a systematic difference in the optimizer or model.
FREE_LOSS_RTOL = 1e-4


def fail(msg):
    print(f"torch_crosscheck: FAIL: {msg}", flush=True)
    sys.exit(1)


def run_zerotrain(np_ranks, zero_stage, work):
    exe = os.environ.get("ZEROTRAIN")
    if not exe or not os.path.exists(exe):
        fail("set ZEROTRAIN to the zerotrain binary (CTest does this)")
    dump = os.path.join(work, f"dump_np{np_ranks}")
    args = ["train", "--data", "synthetic", "--threads", "1", "--quiet", "--zero_stage", str(zero_stage),
            "--output_dir", os.path.join(work, f"out_np{np_ranks}"), "--debug_dump_dir", dump]
    for k, v in {**MODEL, **TRAIN}.items():
        args += [f"--{k}", str(v)]
    cmd = [exe] + args
    if np_ranks > 1:
        mpiexec = os.environ.get("ZT_MPIEXEC") or shutil.which("mpirun")
        if not mpiexec:
            fail("no mpirun: set ZT_MPIEXEC")
        cmd = [mpiexec, "-np", str(np_ranks), "--oversubscribe", "--bind-to", "none"] + cmd
    env = dict(os.environ)
    for k, v in {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMP_NUM_THREADS": "1",
                 "OPENBLAS_NUM_THREADS": "1"}.items():
        env.setdefault(k, v)
    print("+ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    if r.returncode != 0:
        print(r.stdout)
        fail(f"zerotrain exited with {r.returncode} ({np_ranks} rank(s))")
    return dump


def read_floats(path, n_expected):
    a = np.fromfile(path, dtype="<f4")
    if a.size != n_expected:
        fail(f"{path}: {a.size} floats, index.json says {n_expected}")
    return a


def unpack(flat, tensors):
    return {t["name"]: torch.from_numpy(flat[t["offset"]:t["offset"] + int(np.prod(t["shape"]))].copy())
            .view(t["shape"]) for t in tensors}


def rel_err(got, ref):
    """max |got - ref| / max |ref| over a tensor (the 1e-12 keeps an all-zero tensor finite)."""
    return float((got - ref).abs().max() / (ref.abs().max() + 1e-12))


def check_run(dump, label):
    """Returns the per-step losses after checking every step of the dump against PyTorch."""
    with open(os.path.join(dump, "index.json")) as f:
        index = json.load(f)
    for k, v in MODEL.items():
        if index["model"][k] != v:
            fail(f"{label}: index.json model.{k} = {index['model'][k]}, ran with {v}")
    tr = index["train"]
    tensors, steps = index["tensors"], index["steps"]
    if [s["step"] for s in steps] != list(range(TRAIN["max_steps"])):
        fail(f"{label}: index.json lists steps {[s['step'] for s in steps]}")
    G, T = tr["global_batch_size"], MODEL["seq_len"]

    # Two models: `forced` is reset to zerotrain's parameters before each step, `free` runs on its own.
    forced = Gpt2(**MODEL, use_sdpa=False)
    names = [n for n, _ in forced.named_parameters()]
    if names != [t["name"] for t in tensors]:
        fail(f"{label}: tensor table differs from GPT-2's:\n  zerotrain {[t['name'] for t in tensors]}\n"
             f"  torch     {names}")
    params_torch = dict(forced.named_parameters())
    for t in tensors:
        if list(params_torch[t["name"]].shape) != t["shape"]:
            fail(f"{label}: {t['name']} has shape {t['shape']}, GPT-2 has {list(params_torch[t['name']].shape)}")
        # Weight decay on 2-D tensors only (nanoGPT's rule); checked, not copied, from zerotrain's table.
        if t["decay"] != (len(t["shape"]) == 2):
            fail(f"{label}: {t['name']} decay={t['decay']}, expected {len(t['shape']) == 2}")
    n_total = sum(int(np.prod(t["shape"])) for t in tensors)

    def load_params(model, path):
        values = unpack(read_floats(path, n_total), tensors)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(values[n])
        return values

    def make_opt(model):
        by_name = dict(model.named_parameters())
        groups = [{"params": [by_name[t["name"]] for t in tensors if t["decay"]], "weight_decay": tr["weight_decay"]},
                  {"params": [by_name[t["name"]] for t in tensors if not t["decay"]], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=steps[0]["lr"], betas=(tr["beta1"], tr["beta2"]), eps=tr["adam_eps"],
                                 foreach=False)

    free = Gpt2(**MODEL, use_sdpa=False)
    load_params(free, os.path.join(dump, "params_init.bin"))
    opt_forced, opt_free = make_opt(forced), make_opt(free)
    before = os.path.join(dump, "params_init.bin")
    worst_grad = {n: 0.0 for n in names}
    worst_param = {n: 0.0 for n in names}
    n_clipped = 0
    losses = []
    for s, info in enumerate(steps):
        batch = np.fromfile(os.path.join(dump, f"batch_{s}.bin"), dtype="<i4")
        if batch.size != 2 * G * T:
            fail(f"{label}: batch_{s}.bin holds {batch.size} int32, expected {2 * G * T}")
        inputs = torch.from_numpy(batch[:G * T].astype(np.int64)).view(G, T)
        targets = torch.from_numpy(batch[G * T:].astype(np.int64)).view(G, T)
        if int(inputs.max()) >= MODEL["vocab"] or int(targets.max()) >= MODEL["vocab"] or int(inputs.min()) < 0:
            fail(f"{label}: batch_{s} has tokens outside [0, {MODEL['vocab']})")
        losses.append(info["loss"])

        # Teacher-forced forward + backward from zerotrain's parameters before this step.
        load_params(forced, before)
        opt_forced.zero_grad(set_to_none=True)
        loss = forced(inputs, targets)
        loss.backward()
        if abs(loss.item() - info["loss"]) > LOSS_RTOL * abs(loss.item()):
            fail(f"{label} step {s}: loss zerotrain {info['loss']:.9g} torch {loss.item():.9g} "
                 f"(rel {abs(loss.item() - info['loss']) / abs(loss.item()):.2e} > {LOSS_RTOL})")
        grads_zt = unpack(read_floats(os.path.join(dump, f"grads_{s}.bin"), n_total), tensors)
        for n, p in forced.named_parameters():
            worst_grad[n] = max(worst_grad[n], rel_err(grads_zt[n], p.grad))
        bad = [n for n in names if worst_grad[n] > GRAD_RTOL]
        if bad:
            fail(f"{label} step {s}: gradient mismatch in {', '.join(f'{n} ({worst_grad[n]:.2e})' for n in bad)} "
                 f"> {GRAD_RTOL}")

        # AdamW on zerotrain's own gradient, so the update is checked on exactly the inputs zerotrain used.
        with torch.no_grad():
            for n, p in forced.named_parameters():
                p.grad.copy_(grads_zt[n])
        norm = float(torch.nn.utils.clip_grad_norm_(forced.parameters(), tr["grad_clip"]))
        if abs(norm - info["grad_norm"]) > NORM_RTOL * norm:
            fail(f"{label} step {s}: grad_norm zerotrain {info['grad_norm']:.9g} torch {norm:.9g}")
        n_clipped += norm > tr["grad_clip"]
        for g in opt_forced.param_groups:
            g["lr"] = info["lr"]
        opt_forced.step()
        after = os.path.join(dump, f"params_{s}.bin")
        params_zt = unpack(read_floats(after, n_total), tensors)
        for n, p in forced.named_parameters():
            err = float((params_zt[n] - p.detach()).abs().max() / (p.detach().abs().max() + 1e-12))
            worst_param[n] = max(worst_param[n], err)
        bad = [n for n in names if worst_param[n] > PARAM_RTOL]
        if bad:
            fail(f"{label} step {s}: AdamW result differs in "
                 f"{', '.join(f'{n} ({worst_param[n]:.2e})' for n in bad)} > {PARAM_RTOL}")
        before = after

        # Free-running PyTorch: its own gradient, clip and Adam moments from params_init on.
        opt_free.zero_grad(set_to_none=True)
        loss_free = free(inputs, targets)
        loss_free.backward()
        torch.nn.utils.clip_grad_norm_(free.parameters(), tr["grad_clip"])
        for g in opt_free.param_groups:
            g["lr"] = info["lr"]
        opt_free.step()
        if abs(loss_free.item() - info["loss"]) > FREE_LOSS_RTOL * abs(loss_free.item()):
            fail(f"{label} step {s}: free-running torch loss {loss_free.item():.9g} vs zerotrain {info['loss']:.9g}")
        print(f"{label} step {s}: loss {info['loss']:.7f} (torch {loss.item():.7f}, free-running "
              f"{loss_free.item():.7f}) grad_norm {info['grad_norm']:.6f} lr {info['lr']:.3e}", flush=True)

    print(f"{label}: worst relative error per tensor over {len(steps)} steps (grad tol {GRAD_RTOL}, param tol "
          f"{PARAM_RTOL})")
    for n in names:
        print(f"  {n:28s} grad {worst_grad[n]:.2e}  param {worst_param[n]:.2e}")
    # grad_clip sits between the steps' norms so both branches of the clip coefficient (< 1 and capped at 1) run.
    if n_clipped in (0, len(steps)):
        fail(f"{label}: {n_clipped} of {len(steps)} steps had grad_norm > grad_clip {tr['grad_clip']}; move grad_clip "
             f"between the norms so clipped and unclipped steps are both tested")
    return losses, max(worst_grad.values()), max(worst_param.values()), n_clipped


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    work = tempfile.mkdtemp(prefix="zt_torch_crosscheck_")
    try:
        results = {}
        for np_ranks, stage in ((1, 0), (2, 3)):
            label = f"{np_ranks} rank(s) ZeRO-{stage}"
            dump = run_zerotrain(np_ranks, stage, work)
            results[np_ranks] = (label, check_run(dump, label), dump)
        # A global batch is the same sequences for every world size.
        for s in range(TRAIN["max_steps"]):
            a, b = (open(os.path.join(results[n][2], f"batch_{s}.bin"), "rb").read() for n in (1, 2))
            if a != b:
                fail(f"batch_{s}.bin differs between 1 and 2 ranks")
        summary = "; ".join(f"{label}: {len(r[0])} steps, loss {r[0][0]:.5f} -> {r[0][-1]:.5f}, worst grad "
                            f"{r[1]:.1e}, worst param {r[2]:.1e}, {r[3]} clipped"
                            for label, r, _ in results.values())
        print(f"torch_crosscheck: PASS ({summary})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
