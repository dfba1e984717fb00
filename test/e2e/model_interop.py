#!/usr/bin/env python3
# Models in and out (issue 17), against an independent side (gpt2_numpy.py: GPT-2 in float64 numpy, llm.c files
# written by the layout llm.c reads, safetensors read with json + numpy):
#  * llm.c files the test writes itself (fp32 and bf16, garbage in the padded vocabulary rows) give, through
#    `eval` and through `train --init_from` on 2 ranks at ZeRO-3, the loss the test computes;
#  * exports (llm.c, safetensors; fp32 bitwise, bf16 rounded to nearest even) hold the checkpoint's tensors in the
#    documented orientation, the safetensors export's loss equals zerotrain's eval, and export -> --init_from gives
#    bitwise the checkpoint's parameters at other world sizes and stages; a checkpoint as --init_from is params only;
#  * `eval` equals the training run's val_loss bit for bit (same world size and batches; ZeRO stage free), agrees
#    across world sizes, and counts a partial last batch right;
#  * `sample` is deterministic for a seed, the KV cache changes nothing, no padded vocabulary id is ever drawn, and
#    a model trained on a text of 20 letters writes those letters;
#  * malformed inputs and contradictory flags stop the CLI with a message naming the file and the field.
import json
import os
import shutil
import sys
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_common as C  # noqa: E402
import gpt2_numpy as G  # noqa: E402

MODEL = dict(n_layer=2, n_head=2, d_model=64, vocab=200, seq_len=32)  # vocab 200: padded to 256 inside
T = MODEL["seq_len"]
# Loss tolerance against float64 numpy: zerotrain computes in fp32 (unit roundoff 6e-8) and its loss is a mean of
# ~1000 cross-entropies near 5 behind two blocks of dot products of length <= 256; measured here the two agree to
# 3e-9 relative (the rounding errors of the mean largely cancel). 1e-6, the fp32 figure the issue expects, leaves
# room for other shapes and still catches a real difference: a wrong LayerNorm eps or GELU moves the loss by 1e-5 or
# more, the padded vocabulary rows (filled with 7.0 below) reaching the softmax by far more.
LOSS_RTOL = 1e-6


def flags(**kw):
    out = []
    for k, v in kw.items():
        out += [f"--{k}", str(v)]
    return out


def eval_json(work, n, model, data, name, **kw):
    path = os.path.join(work, f"{name}.json")
    C.run(n, ["eval", model, "--data", data, "--threads", "1", "-o", path] + flags(**kw))
    with open(path) as f:
        return json.load(f)


def ckpt_params(ckpt):
    return C.read_tensors(ckpt, "params/")


def dump_params(dump):
    """The --debug_dump_dir's initial parameters as {name: array}."""
    with open(os.path.join(dump, "index.json")) as f:
        index = json.load(f)
    flat = np.fromfile(os.path.join(dump, "params_init.bin"), dtype=np.float32)
    return {t["name"]: flat[t["offset"]:t["offset"] + int(np.prod(t["shape"]))].reshape(t["shape"])
            for t in index["tensors"]}


def all_bits_equal(a, b):
    bad = [k for k in sorted(set(a) | set(b)) if k not in a or k not in b or not C.bits_equal(
        np.ascontiguousarray(a[k], dtype=np.float32), np.ascontiguousarray(b[k], dtype=np.float32))]
    return not bad, bad[:5]


def rel(a, b):
    return abs(a - b) / abs(b)


def train_model(work):
    """2 ranks, ZeRO-2, 60 steps on the built-in corpus (200 symbols); val_loss and a checkpoint every 20 steps."""
    out = os.path.join(work, "run")
    C.run(2, C.train_args(out, **MODEL, max_steps=60, learning_rate=1e-2, warmup_steps=5, global_batch_size=8,
                          micro_batch_size=2, zero_stage=2, eval_interval=20, eval_batches=3, save_interval=20))
    return out, {r["step"]: r["val_loss"] for r in C.metrics(out) if "val_loss" in r}


def check_eval(work, out, val_losses, batch, inputs, targets):
    print("eval")
    ck = f"{out}/checkpoint-60"
    same = dict(val_fraction=0.05, max_batches=3, global_batch_size=8, micro_batch_size=2)
    for n, stage in ((2, 0), (2, 3)):
        r = eval_json(work, n, ck, "synthetic", f"e{n}{stage}", zero_stage=stage, **same)
        C.check(r["loss"] == val_losses[60] and r["tokens"] == 3 * 8 * T,
                f"eval on {n} ranks, ZeRO-{stage}: loss {r['loss']!r} is the run's val_loss at step 60 bit for bit",
                f"val_loss {val_losses[60]!r}")
    for n in (1, 4):
        r = eval_json(work, n, ck, "synthetic", f"e{n}", **same)
        C.check(rel(r["loss"], val_losses[60]) < 1e-12,
                f"eval on {n} rank(s): {r['loss']!r} equals val_loss to 1e-12 (the same fp32 token losses summed "
                f"in another order)", f"{val_losses[60]!r}")
    r20 = eval_json(work, 1, f"{out}/checkpoint-20", "synthetic", "e20", **same)
    C.check(rel(r20["loss"], val_losses[20]) < 1e-12 and r20["loss"] != r["loss"],
            f"checkpoint-20 gives step 20's val_loss ({r20['loss']:.6f}), not step 60's")
    # The whole token file, 37 sequences: 5 batches of 8 over 2 ranks, the last one partial.
    r = eval_json(work, 2, ck, batch, "whole", global_batch_size=8, micro_batch_size=2)
    P = {k[len("params/"):]: v for k, v in ckpt_params(ck).items()}
    want = G.gpt2_loss(P, MODEL["n_head"], inputs, targets)
    C.check(r["sequences"] == 37 and r["tokens"] == 37 * T and rel(r["loss"], want) < LOSS_RTOL
            and abs(r["perplexity"] - np.exp(r["loss"])) < 1e-9 * r["perplexity"],
            f"eval of all 37 sequences (partial last batch) on 2 ranks: loss {r['loss']:.7f} = numpy "
            f"{want:.7f} (rel {rel(r['loss'], want):.1e}), perplexity exp(loss)")
    return r["loss"]


def check_exports(work, out, ckpt_loss, batch, inputs, targets):
    print("export")
    ck = f"{out}/checkpoint-60"
    params = {k[len("params/"):]: v for k, v in ckpt_params(ck).items()}
    hf, hf16, llmc, llmc16 = (os.path.join(work, x) for x in ("hf", "hf16", "m.bin", "m16.bin"))
    C.run(1, ["export", ck, "--format", "safetensors", "-o", hf])
    C.run(1, ["export", ck, "--format", "safetensors", "--dtype", "bf16", "-o", hf16])
    C.run(1, ["export", ck, "--format", "llmc", "-o", llmc])
    C.run(1, ["export", hf, "--format", "llmc", "--dtype", "bf16", "-o", llmc16])  # from the HF export, not ck
    header, st = G.read_safetensors(f"{hf}/model.safetensors")
    with open(f"{hf}/config.json") as f:
        cfg = json.load(f)
    C.check(all(k.startswith("transformer.") for k in st) and "lm_head.weight" not in st
            and header["__metadata__"] == {"format": "pt"}
            and st["transformer.h.0.attn.c_attn.weight"].shape == (64, 192) and st["transformer.wte.weight"].shape
            == (200, 64), "safetensors export: transformers' names, Conv1D [in, out], wte [vocab, C], tied lm_head "
            "left out, metadata format pt")
    C.check((cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"],
             cfg["activation_function"], cfg["layer_norm_epsilon"], cfg["tie_word_embeddings"]) ==
            (2, 2, 64, 200, 32, "gelu_new", 1e-5, True), "config.json describes the model", json.dumps(cfg))
    ok, bad = all_bits_equal(G.hf_to_zerotrain(st), params)
    C.check(ok, "fp32 safetensors export: every tensor bitwise the checkpoint's", f"{bad}")
    _, st16 = G.read_safetensors(f"{hf16}/model.safetensors")
    ok, bad = all_bits_equal(G.hf_to_zerotrain(st16), {k: G.bf16_round(v) for k, v in params.items()})
    C.check(ok, "bf16 safetensors export: every tensor the checkpoint's rounded to nearest even", f"{bad}")
    hdr, lp = G.read_llmc(llmc)
    ok, bad = all_bits_equal({k: v for k, v in lp.items() if k != "wte_padded"}, params)
    C.check(ok and hdr == dict(T=32, V=200, L=2, NH=2, C=64, Vp=256, version=3)
            and not lp["wte_padded"][200:].any(),
            "llm.c export, read by the test's llm.c layout: header (maxT 32, V 200, Vp 256, version 3), matrices "
            "[out, in], every tensor bitwise the checkpoint's, padded rows zero", f"{hdr} {bad}")
    hdr16, lp16 = G.read_llmc(llmc16)
    ok, bad = all_bits_equal({k: v for k, v in lp16.items() if k != "wte_padded"},
                             {k: G.bf16_round(v) for k, v in params.items()})
    C.check(ok and hdr16["version"] == 5, "llm.c bf16 export (version 5) from the HF export: the rounded tensors",
            f"{bad}")
    np_loss = G.gpt2_loss(G.hf_to_zerotrain(st), MODEL["n_head"], inputs, targets)
    C.check(rel(np_loss, ckpt_loss) < LOSS_RTOL,
            f"numpy on the safetensors export: loss {np_loss:.7f} = zerotrain eval {ckpt_loss:.7f} "
            f"(rel {rel(np_loss, ckpt_loss):.1e})")
    for src, n, stage in ((hf, 1, 0), (llmc, 3, 1), (ck, 2, 3)):
        dump = os.path.join(work, f"dump_{os.path.basename(src)}")
        run = os.path.join(work, f"ft_{os.path.basename(src)}")
        C.run(n, C.train_args(run, init_from=src, max_steps=2, save_interval=2, zero_stage=stage,
                              global_batch_size=12, micro_batch_size=2, debug_dump_dir=dump))
        ok, bad = all_bits_equal(dump_params(dump), params)
        man = C.manifest(f"{run}/checkpoint-2")
        C.check(ok and man["optimizer"]["step"] == 2 and man["step"] == 2 and man["data"]["cursor"] == 2
                and man["model"] == MODEL,
                f"--init_from {os.path.basename(src)} on {n} rank(s), ZeRO-{stage}: the parameters bit for bit, "
                f"then a fresh run (Adam step, step and data cursor 2 after 2 steps; the file's model config)",
                f"{bad} {man['optimizer']} {man['model']}")
    return hf


def check_llmc_interop(work, batch, inputs, targets):
    print("llm.c files written by the test")
    cfg = dict(L=2, C=48, V=200, T=32)
    P = G.random_params(seed=3, **cfg)
    for version in (3, 5):
        path = os.path.join(work, f"independent_v{version}.bin")
        # The padded rows hold 7.0: if any reached the softmax, the loss would be far off.
        G.write_llmc(path, P, n_head=3, Vp=256, version=version, pad_fill=7.0)
        Pv = P if version == 3 else {k: G.bf16_round(v) for k, v in P.items()}
        want = G.gpt2_loss(Pv, 3, inputs, targets)
        r = eval_json(work, 1, path, batch, f"indep{version}", micro_batch_size=1)
        C.check(rel(r["loss"], want) < LOSS_RTOL, f"eval of an llm.c version-{version} file written by the test: "
                f"loss {r['loss']:.7f} = numpy {want:.7f} (rel {rel(r['loss'], want):.1e})")
        dump, run = os.path.join(work, f"dump_v{version}"), os.path.join(work, f"init_v{version}")
        C.run(2, C.train_args(run, init_from=path, data=batch, max_steps=1, zero_stage=3, global_batch_size=4,
                              micro_batch_size=2, debug_dump_dir=dump))
        ok, bad = all_bits_equal(dump_params(dump), Pv)
        raw = np.fromfile(os.path.join(dump, "batch_0.bin"), dtype=np.int32).reshape(2, 4, T)
        step1 = G.gpt2_loss(Pv, 3, raw[0], raw[1])
        got = C.metrics(run)[0]["loss"]
        C.check(ok and rel(got, step1) < LOSS_RTOL,
                f"train --init_from that file on 2 ranks, ZeRO-3: parameters bit for bit; step 1's loss {got:.7f} = "
                f"numpy on its batch {step1:.7f}", f"{bad}")


def sample(model, *args):
    """stdout bytes of `zerotrain sample`."""
    import subprocess
    p = subprocess.run([C.ZEROTRAIN, "sample", model, "--threads", "1"] + [str(a) for a in args],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=C.RUN_TIMEOUT_S)
    if p.returncode != 0:
        raise SystemExit(f"FAIL: sample {args}: {p.stderr.decode(errors='replace')}")
    return p.stdout


def check_sample(work, out):
    print("sample")
    ck = f"{out}/checkpoint-60"
    base = ["--prompt_ids", "5 17 3", "--max_new_tokens", 25, "--ids", "--top_k", 0]
    a = sample(ck, *base, "--seed", 1)
    C.check(a == sample(ck, *base, "--seed", 1) and a != sample(ck, *base, "--seed", 2),
            "the same seed gives the same tokens, another seed others")
    C.check(a == sample(ck, *base, "--seed", 1, "--no_kv_cache"), "without the KV cache: the same tokens")
    ids = [int(x) for x in a.split()]
    C.check(len(ids) == 28 and ids[:3] == [5, 17, 3], f"prompt then 25 new ids ({len(ids)})")
    # Temperature 3 flattens the distribution: the 56 padded logits (exactly 0) would be drawn often if offered.
    drawn = []
    for seed in range(4):
        drawn += [int(x) for x in sample(ck, *base[:4], "--temperature", 3, "--seed", seed, "--ids").split()[3:]]
    C.check(len(drawn) == 100 and max(drawn) < 200 and len(set(drawn)) > 30,
            f"100 draws at temperature 3: {len(set(drawn))} distinct ids, all below vocab 200 (no padded id)")
    # llm.c's tokenizer format, written here: uint32 header[256] (20240328, version 2, 200 tokens, eot 0), then per
    # token a length byte and its bytes; token i is "<i>".
    tok = os.path.join(work, "tok.bin")
    with open(tok, "wb") as f:
        f.write(np.array([20240328, 2, 200, 0] + [0] * 252, dtype="<u4").tobytes())
        for i in range(200):
            f.write(bytes([len(f"<{i}>")]) + f"<{i}>".encode())
    decoded = sample(ck, "--prompt_ids", "5 17 3", "--max_new_tokens", 25, "--top_k", 0, "--seed", 1,
                     "--tokenizer", tok)
    encoded = sample(ck, "--prompt", "<5><17><3>", "--max_new_tokens", 25, "--top_k", 0, "--seed", 1,
                     "--tokenizer", tok)
    C.check(decoded == "".join(f"<{i}>" for i in ids).encode() + b"\n" and encoded == decoded,
            "--tokenizer (llm.c's format): the same tokens decoded to its pieces; --prompt text encoded by it",
            f"{decoded[:80]!r} {encoded[:80]!r}")
    text = sample(ck, "--prompt", "ab", "--max_new_tokens", 30, "--seed", 4)
    C.check(text[:2] == b"ab" and text[-1:] == b"\n" and len(text) == 33 and max(text[2:-1]) < 200,
            "byte vocabulary: the text's bytes, all from the corpus's 200 symbols")
    # A text of 20 letters and spaces: a model trained on it writes only those bytes.
    letters = b"etaoinshrdlucmfwygpb"
    rng = np.random.default_rng(0)
    words = [bytes(letters[i] for i in rng.integers(0, 20, rng.integers(2, 7))) for _ in range(40)]
    corpus = b" ".join(words[i] for i in rng.integers(0, 40, 20000))
    text_path = os.path.join(work, "letters.txt")
    with open(text_path, "wb") as f:
        f.write(corpus)
    lrun = os.path.join(work, "letters")
    C.run(1, C.train_args(lrun, data=text_path, max_steps=80, learning_rate=1e-2, save_interval=80,
                          global_batch_size=8, micro_batch_size=8))
    got = sample(f"{lrun}/checkpoint-80", "--prompt", "the ", "--max_new_tokens", 28, "--top_k", 8, "--seed", 9)
    alphabet = set(letters) | {ord(" ")}
    C.check(got.startswith(b"the ") and set(got[4:-1]) <= alphabet,
            f"trained on a text of 20 letters: the sample {got[:-1]!r} uses only them and spaces")


def check_sample_interval(work):
    print("--sample_interval")
    runs = {}
    for every in (0, 5):
        d = os.path.join(work, f"si{every}")
        args = C.train_args(d, **MODEL, max_steps=10, zero_stage=3, global_batch_size=4, micro_batch_size=2,
                            sample_interval=every)
        _, log = C.run(2, [a for a in args if a != "--quiet"])
        runs[every] = ([r["loss"] for r in C.metrics(d)], log)
    lines = [ln for ln in runs[5][1].splitlines() if ln.startswith("sample at step")]
    C.check(runs[5][0] == runs[0][0] and len(lines) == 2 and lines[0].startswith("sample at step 5: \"")
            and "sample at" not in runs[0][1],
            "--sample_interval 5 on 2 ranks at ZeRO-3: rank 0 logs a sample at steps 5 and 10, the losses bitwise "
            "those of a run without it", "\n".join(lines))


def check_errors(work, out, hf, batch):
    print("malformed inputs and contradictory flags")
    bad_hf = os.path.join(work, "bad_hf")
    os.makedirs(bad_hf, exist_ok=True)
    raw = open(f"{hf}/model.safetensors", "rb").read()
    with open(f"{bad_hf}/model.safetensors", "wb") as f:
        f.write(raw[:200])
    with open(f"{hf}/config.json") as f:
        cfg = json.load(f)
    with open(f"{bad_hf}/config.json", "w") as f:
        json.dump(cfg, f)
    _, o = C.run(1, ["eval", bad_hf, "--data", batch], expect="nonzero")
    C.check("bad_hf/model.safetensors" in o and "header length" in o, "truncated safetensors header: named",
            o[-400:])
    with open(f"{bad_hf}/model.safetensors", "wb") as f:
        f.write(raw)
    cfg["n_embd"] = 32
    with open(f"{bad_hf}/config.json", "w") as f:
        json.dump(cfg, f)
    _, o = C.run(2, C.train_args(os.path.join(work, "x1"), init_from=bad_hf), expect="nonzero")
    C.check("config.json" in o and "n_embd 32" in o and "disagrees with the tensors" in o,
            "config.json against the tensors: both named", o[-400:])
    m = os.path.join(work, "m.bin")
    blob = bytearray(open(m, "rb").read())
    blob[4:8] = (4).to_bytes(4, "little")
    with open(os.path.join(work, "v4.bin"), "wb") as f:
        f.write(blob)
    _, o = C.run(1, ["sample", os.path.join(work, "v4.bin")], expect="nonzero")
    C.check("v4.bin" in o and "version 4 (header[1])" in o, "llm.c version 4: file and header field named", o[-400:])
    _, o = C.run(1, C.train_args(os.path.join(work, "x2"), init_from=m, n_layer=3, seq_len=64), expect="nonzero")
    C.check("n_layer: the model file has 2 (header[4] L), --n_layer asks for 3" in o and "seq_len" in o,
            "--init_from with flags for another shape: each field named", o[-500:])
    _, o = C.run(1, C.train_args(os.path.join(work, "x3"), init_from=m, resume_from_checkpoint=f"{out}/checkpoint-60"),
                 expect="nonzero")
    C.check("--init_from" in o and "--resume_from_checkpoint" in o and "Drop --resume_from_checkpoint" in o
            and "drop --init_from" in o,
            "--init_from with an explicit --resume_from_checkpoint PATH: refused, naming both flags and which to drop",
            o[-400:])
    shutil.copytree(f"{out}/checkpoint-60", f"{out}/.checkpoint-80.tmp")
    _, o = C.run(1, ["eval", f"{out}/.checkpoint-80.tmp/", "--data", batch], expect="nonzero")
    C.check("not a committed checkpoint" in o, "a .checkpoint-N.tmp directory (an uncommitted save): refused", o[-300:])
    _, o = C.run(1, ["export", f"{out}/checkpoint-60", "--format", "onnx", "-o", os.path.join(work, "o")],
                 expect="nonzero")
    C.check("--format must be safetensors or llmc" in o, "export --format onnx: refused", o[-300:])


def check_init_from_latest(work):
    """--resume_from_checkpoint latest with --init_from (what launch/zerotrain.sbatch passes on every requeue):
    the first run, with nothing committed, starts from the model file; the requeued run resumes its own checkpoint.
    Together they give bitwise the losses of one uninterrupted fine-tuning run."""
    print("--init_from with --resume_from_checkpoint latest: a preempted fine-tuning job resumes, not restarts")
    m = os.path.join(work, "m.bin")
    common = dict(init_from=m, max_steps=6, save_interval=3, global_batch_size=4, micro_batch_size=2)
    whole = os.path.join(work, "ft_whole")
    C.run(2, C.train_args(whole, **common))
    job = os.path.join(work, "ft_job")
    _, first = C.run(2, C.train_args(job, resume_from_checkpoint="latest", exit_after_steps=3, **common))
    _, requeued = C.run(2, C.train_args(job, resume_from_checkpoint="latest", **common))
    want = [r["loss"] for r in C.metrics(whole)]
    got = [r["loss"] for r in C.metrics(job)]
    C.check("starting from --init_from" in first and "resumed from" not in first,
            "latest in an empty --output_dir with --init_from: initialised from the model file", first[-300:])
    C.check("resumed from" in requeued and "checkpoint-3" in requeued and "--init_from" in requeued
            and "not used" in requeued,
            "latest with a committed checkpoint and --init_from: resumes it, saying --init_from is not used",
            requeued[-300:])
    C.check(len(want) == 6 and got == want,
            "initialised, stopped at step 3, requeued with the same command: the 6 losses are bitwise those of an "
            "uninterrupted --init_from run", f"{got} vs {want}")


def main():
    t0 = time.time()
    work = C.setup(sys.argv, "model_interop")
    batch, inputs, targets = G.token_batch(work, 37, T, 200, seed=1)
    out, val_losses = train_model(work)
    ckpt_loss = check_eval(work, out, val_losses, batch, inputs, targets)
    hf = check_exports(work, out, ckpt_loss, batch, inputs, targets)
    check_llmc_interop(work, batch, inputs, targets)
    check_sample(work, out)
    check_sample_interval(work)
    check_errors(work, out, hf, batch)
    check_init_from_latest(work)
    C.finish("model_interop", work, t0)


if __name__ == "__main__":
    main()
