# The model-interop tests' independent side: GPT-2 in float64 numpy written from docs/architecture.md, llm.c model
# files written and read the way llm.c's gpt2_build_from_checkpoint lays them out, safetensors read with json + numpy,
# llm.c token shards, and bf16 rounding. Nothing here calls zerotrain code.
import json
import os
import struct

import numpy as np

LLMC_MAGIC, SHARD_MAGIC = 20240326, 20240520


def param_shapes(L, C, V, T):
    """zerotrain's tensors (docs/checkpoint-format.md section 3) in table order: name -> shape, matrices [in, out]."""
    shapes = {"wte": (V, C), "wpe": (T, C)}
    for i in range(L):
        p = f"h.{i}."
        shapes.update({p + "ln_1.weight": (C,), p + "ln_1.bias": (C,), p + "attn.c_attn.weight": (C, 3 * C),
                       p + "attn.c_attn.bias": (3 * C,), p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
                       p + "ln_2.weight": (C,), p + "ln_2.bias": (C,), p + "mlp.c_fc.weight": (C, 4 * C),
                       p + "mlp.c_fc.bias": (4 * C,), p + "mlp.c_proj.weight": (4 * C, C), p + "mlp.c_proj.bias": (C,)})
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return shapes


def random_params(L, C, V, T, seed):
    """Parameters with GPT-2-like scales, but LayerNorm gains and biases far from 1 and 0 so that a mix-up shows."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in param_shapes(L, C, V, T).items():
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            out[name] = (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (0.08 * rng.standard_normal(shape)).astype(np.float32)
    return out


def _layernorm(x, w, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * w + b


def _gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def gpt2_logits(P, n_head, inputs):
    """Logits [B, T, V] in float64 for int inputs [B, T]: pre-LN blocks, causal attention scaled by 1/sqrt(head
    size) with heads as consecutive slices of q, k and v, the tanh GELU, LayerNorm eps 1e-5, tied LM head."""
    P = {k: v.astype(np.float64) for k, v in P.items()}
    B, T = inputs.shape
    C = P["wte"].shape[1]
    hs = C // n_head
    x = P["wte"][inputs] + P["wpe"][:T]
    mask = np.triu(np.ones((T, T), dtype=bool), 1)
    layer = 0
    while f"h.{layer}.ln_1.weight" in P:
        p = lambda s: P[f"h.{layer}.{s}"]  # noqa: E731
        h = _layernorm(x, p("ln_1.weight"), p("ln_1.bias"))
        qkv = h @ p("attn.c_attn.weight") + p("attn.c_attn.bias")
        q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, T, n_head, hs).transpose(0, 2, 1, 3) for i in range(3))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hs)
        s[..., mask] = -np.inf
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        y = (a @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + y @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
        h = _layernorm(x, p("ln_2.weight"), p("ln_2.bias"))
        x = x + _gelu(h @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias")) @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")
        layer += 1
    x = _layernorm(x, P["ln_f.weight"], P["ln_f.bias"])
    return x @ P["wte"].T


def gpt2_loss(P, n_head, inputs, targets):
    """Mean cross-entropy (natural log) over every position, float64."""
    z = gpt2_logits(P, n_head, inputs)
    m = z.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[..., 0]
    return float((lse - np.take_along_axis(z, targets[..., None], -1)[..., 0]).mean())


def windows(tokens, T):
    """llm.c's sequences: windows of T + 1 tokens at stride T; inputs and targets [n, T]."""
    n = (len(tokens) - 1) // T
    idx = np.arange(n)[:, None] * T + np.arange(T + 1)[None, :]
    w = np.asarray(tokens)[idx]
    return w[:, :-1], w[:, 1:]


def write_token_shard(path, tokens):
    """An llm.c token shard: int32 header[256] (magic 20240520, version 1, count), then uint16 tokens."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = (SHARD_MAGIC, 1, len(tokens))
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype="<u2").tobytes())


def token_batch(work, n_sequences, T, vocab, seed):
    """A token shard of n_sequences random sequences in work/batch.bin: (its path, inputs, targets)."""
    tokens = np.random.default_rng(seed).integers(0, vocab, n_sequences * T + 1)
    path = os.path.join(work, "batch.bin")
    write_token_shard(path, tokens)
    return (path,) + windows(tokens, T)


def bf16_round(a):
    """fp32 -> bf16 -> fp32, rounding to nearest even (NaN-free inputs)."""
    u = np.ascontiguousarray(a, dtype="<f4").view("<u4").astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u4") << 16
    return r.astype("<u4").view("<f4").reshape(np.shape(a))


# llm.c's parameter arrays in file order (train_gpt2.c fill_in_parameter_sizes): the zerotrain suffix, whether it
# has a row per layer, and whether llm.c stores the matrix as PyTorch Linear's [out, in] (the transpose of ours).
LLMC_ORDER = [("ln_1.weight", False), ("ln_1.bias", False), ("attn.c_attn.weight", True), ("attn.c_attn.bias", False),
              ("attn.c_proj.weight", True), ("attn.c_proj.bias", False), ("ln_2.weight", False),
              ("ln_2.bias", False), ("mlp.c_fc.weight", True), ("mlp.c_fc.bias", False), ("mlp.c_proj.weight", True),
              ("mlp.c_proj.bias", False)]


def write_llmc(path, P, n_head, Vp, version=3, pad_fill=0.0):
    """An llm.c model file: int32 header[256] = magic, version, maxT, V, L, NH, C, Vp; then wte [Vp, C] (rows past V
    filled with pad_fill), wpe, each per-layer array for all layers, ln_f; fp32 (3) or bf16 (5)."""
    V, C = P["wte"].shape
    T = P["wpe"].shape[0]
    L = sum(1 for k in P if k.endswith("ln_1.weight"))
    header = np.zeros(256, dtype="<i4")
    header[:8] = (LLMC_MAGIC, version, T, V, L, n_head, C, Vp)
    wte = np.full((Vp, C), pad_fill, dtype=np.float32)
    wte[:V] = P["wte"]
    arrays = [wte, P["wpe"]]
    for suffix, transposed in LLMC_ORDER:
        arrays += [P[f"h.{i}.{suffix}"].T if transposed else P[f"h.{i}.{suffix}"] for i in range(L)]
    arrays += [P["ln_f.weight"], P["ln_f.bias"]]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for a in arrays:
            a = np.ascontiguousarray(a, dtype="<f4")
            if version == 5:
                u = a.view("<u4").astype(np.uint64)
                f.write(((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2").tobytes())
            else:
                f.write(a.tobytes())


def read_llmc(path):
    """(header fields, zerotrain-named fp32 arrays) of an llm.c model file, by the same layout."""
    raw = open(path, "rb").read()
    h = np.frombuffer(raw[:1024], dtype="<i4")
    magic, version, T, V, L, NH, C, Vp = (int(x) for x in h[:8])
    assert magic == LLMC_MAGIC and version in (3, 5), (magic, version)
    if version == 5:
        flat = (np.frombuffer(raw[1024:], dtype="<u2").astype("<u4") << 16).view("<f4")
    else:
        flat = np.frombuffer(raw[1024:], dtype="<f4")
    at = 0

    def take(n, shape):
        nonlocal at
        a = flat[at:at + n].reshape(shape)
        at += n
        return a

    P = {"wte_padded": take(Vp * C, (Vp, C)), "wpe": take(T * C, (T, C))}
    P["wte"] = P["wte_padded"][:V]
    shapes = param_shapes(L, C, V, T)
    for suffix, transposed in LLMC_ORDER:
        for i in range(L):
            shape = shapes[f"h.{i}.{suffix}"]
            a = take(int(np.prod(shape)), shape[::-1] if transposed else shape)
            P[f"h.{i}.{suffix}"] = a.T if transposed else a
    P["ln_f.weight"], P["ln_f.bias"] = take(C, (C,)), take(C, (C,))
    assert at == flat.size, f"{path}: {flat.size - at} values past the last array"
    return dict(T=T, V=V, L=L, NH=NH, C=C, Vp=Vp, version=version), P


def read_safetensors(path):
    """{name: array} of a safetensors file read with json + numpy (8-byte little-endian header length, JSON header,
    tensors at data_offsets after it)."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, t = e["data_offsets"]
        buf = raw[base + b:base + t]
        if e["dtype"] == "F32":
            a = np.frombuffer(buf, dtype="<f4")
        elif e["dtype"] == "F16":
            a = np.frombuffer(buf, dtype="<f2").astype(np.float32)
        elif e["dtype"] == "BF16":
            a = (np.frombuffer(buf, dtype="<u2").astype("<u4") << 16).view("<f4")
        else:
            raise ValueError(f"{path}: {name} has dtype {e['dtype']}")
        out[name] = a.reshape(e["shape"])
    return header, out


def hf_to_zerotrain(tensors):
    """Hugging Face GPT-2 names (with or without 'transformer.') -> zerotrain's (wte.weight -> wte)."""
    out = {}
    for k, v in tensors.items():
        k = k[len("transformer."):] if k.startswith("transformer.") else k
        out[k[:-len(".weight")] if k in ("wte.weight", "wpe.weight") else k] = v
    return out
