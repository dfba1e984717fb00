# Shared helpers of the checkpoint end-to-end tests: run zerotrain (under mpirun for several ranks), read
# checkpoints with plain h5py, compare tensors bit for bit, count failed checks.
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

ZEROTRAIN = os.environ.get("ZEROTRAIN", "zerotrain")
MPIEXEC = os.environ.get("ZT_MPIEXEC", "mpirun")
# Every run: one thread per rank (CI has 2 cores), no progress lines.
FAST = ["--threads", "1", "--quiet"]
RUN_TIMEOUT_S = 180  # a hung collective fails the test instead of stalling CI

_failures = []
_checks = 0


def setup(argv, name):
    """Parses `--mca-io NAME` (exported as OMPI_MCA_io to every run) and returns a fresh work directory."""
    if "--mca-io" in argv:
        io = argv[argv.index("--mca-io") + 1]
        os.environ["OMPI_MCA_io"] = io
    for k in ("OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"):
        os.environ.setdefault(k, "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"{name}: zerotrain {ZEROTRAIN}, MPI-IO component {os.environ.get('OMPI_MCA_io', '(Open MPI default)')}")
    work = tempfile.mkdtemp(prefix=f"zt_{name}_")
    return work


def run(n, args, env=None, expect=0, cwd=None):
    """Runs `zerotrain args` on n ranks (in directory cwd when given); returns (returncode, stdout+stderr). expect: 0,
    'nonzero' or None."""
    cmd = [ZEROTRAIN] + [str(a) for a in args]
    if n > 1:
        cmd = [MPIEXEC, "-np", str(n), "--oversubscribe", "--bind-to", "none"] + cmd
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    t0 = time.time()
    try:
        # A damaged file's bytes can reach a message (a flipped bit in a name): what is not UTF-8 reads as \\xNN
        p = subprocess.run(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           errors="backslashreplace", timeout=RUN_TIMEOUT_S, cwd=cwd)
        rc, out = p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
        rc, out = -999, f"TIMEOUT after {RUN_TIMEOUT_S}s: {e.stdout}"
    dt = time.time() - t0
    bad = (expect == 0 and rc != 0) or (expect == "nonzero" and rc == 0)
    if bad:
        print(f"  command failed (rc {rc}, expected {expect}, {dt:.1f}s): {' '.join(cmd)}\n{out}")
        sys.stdout.flush()
        raise SystemExit(f"FAIL: unexpected exit status {rc}")
    return rc, out


def start(n, args, log, env=None):
    """Starts `zerotrain args` on n ranks in the background, output to the file `log`; returns (Popen, file)."""
    cmd = [ZEROTRAIN] + [str(a) for a in args]
    if n > 1:
        cmd = [MPIEXEC, "-np", str(n), "--oversubscribe", "--bind-to", "none"] + cmd
    full_env = dict(os.environ)
    full_env.update(env or {})
    f = open(log, "w")
    return subprocess.Popen(cmd, env=full_env, stdout=f, stderr=subprocess.STDOUT), f


def wait_run(p, f, timeout=RUN_TIMEOUT_S):
    """Waits for a start()ed run; returns (returncode, its output). A run past `timeout` is killed: -999."""
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        rc = -999
    f.close()
    with open(f.name, errors="replace") as g:
        return rc, g.read()


def rank_pid(mpirun_pid, rank):
    """The pid of a rank that mpirun started on this node (its child with OMPI_COMM_WORLD_RANK=rank)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != mpirun_pid:
                continue
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
            if f"OMPI_COMM_WORLD_RANK={rank}".encode() in env:
                return int(d)
        except (OSError, IndexError, ValueError):
            continue
    return None


def lock_holder(out_dir):
    """The pid that OUTPUT/.lock names as its holder, or None."""
    try:
        with open(os.path.join(out_dir, ".lock")) as f:
            return int(json.loads(f.read())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def flip_bits(path, offset, mask=0x01):
    """XORs the byte at `offset` of `path` with `mask`, in place, as a disk or a bad copy would."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ mask]))


def dataset_offset(ckpt_dir, name):
    """Byte offset and size of a dataset's data inside the checkpoint's model.h5."""
    with h5py.File(os.path.join(ckpt_dir, "model.h5"), "r") as f:
        return f[name].id.get_offset(), f[name].id.get_storage_size()


def check(cond, what, detail=""):
    """Records one assertion; prints it either way."""
    global _checks
    _checks += 1
    if cond:
        print(f"  ok: {what}")
    else:
        print(f"  FAIL: {what}" + (f"\n        {detail}" if detail else ""))
        _failures.append(what)
    sys.stdout.flush()
    return cond


class Deferred:
    """Collects checks made on a worker thread; report() replays them in order on the main thread."""

    def __init__(self):
        self.items = []

    def check(self, cond, what, detail=""):
        self.items.append((bool(cond), what, detail))
        return cond


def run_parallel(fn, items, workers=2):
    """fn(item, deferred) for every item, `workers` at a time (the runs mostly wait on MPI start-up and fsync), then
    reports every item's checks in item order."""
    import concurrent.futures

    def job(item):
        d = Deferred()
        fn(item, d)
        return d

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for d in pool.map(job, items):
            for cond, what, detail in d.items:
                check(cond, what, detail)


def finish(name, work, t0):
    dt = time.time() - t0
    if _failures:
        print(f"{name}: {len(_failures)} of {_checks} checks FAILED in {dt:.1f}s (work dir kept: {work})")
        for f in _failures[:20]:
            print(f"  - {f}")
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)
    print(f"{name}: all {_checks} checks passed in {dt:.1f}s")
    sys.exit(0)


def metrics(out_dir):
    """metrics.jsonl rows as dicts, in file order."""
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def manifest(ckpt_dir):
    """The manifest as stored inside model.h5 (the 'manifest' fixed-length string dataset)."""
    with h5py.File(os.path.join(ckpt_dir, "model.h5"), "r") as f:
        raw = f["manifest"][()]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def manifest_digest(text):
    """The spec's /manifest_xxh64 of manifest bytes: xxh64, seed 0, as 16 lowercase hex digits."""
    return f"{xxh64(text):016x}"


def rewrite_manifest(ckpt_dir, edit, digest=True):
    """Applies edit(dict) to the manifest inside model.h5 (kept a fixed-length string dataset) and manifest.json, as
    a writer would: with a matching /manifest_xxh64 (digest=False leaves the old digest, or its absence, as it was)."""
    h5 = os.path.join(ckpt_dir, "model.h5")
    with h5py.File(h5, "r+") as f:
        m = json.loads(f["manifest"][()].decode())
        edit(m)
        text = json.dumps(m, indent=1).encode()
        del f["manifest"]
        f.create_dataset("manifest", data=np.array(text, dtype=f"S{len(text)}"))
        if digest:
            if "manifest_xxh64" in f:
                del f["manifest_xxh64"]
            f.create_dataset("manifest_xxh64", data=np.array(manifest_digest(text).encode(), dtype="S16"))
    with open(os.path.join(ckpt_dir, "manifest.json"), "w") as f:
        f.write(text.decode() + "\n")


def read_tensors(ckpt_dir, prefix=""):
    """Every float dataset under `prefix` as {name: numpy array}, read with plain h5py."""
    out = {}
    with h5py.File(os.path.join(ckpt_dir, "model.h5"), "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not name.startswith("manifest") and name.startswith(prefix):
                out[name] = obj[()]
        f.visititems(visit)
    return out


def bits_equal(a, b):
    """Same shape, dtype float32, and the same bit pattern in every element (NaN payloads and -0 included)."""
    return (a.shape == b.shape and a.dtype == np.float32 and b.dtype == np.float32
            and np.array_equal(a.view(np.uint32), b.view(np.uint32)))


def diff_tensors(ta, tb):
    """Names whose tensors are not bitwise equal (or missing on one side)."""
    bad = [k for k in sorted(set(ta) | set(tb)) if k not in ta or k not in tb or not bits_equal(ta[k], tb[k])]
    return bad


def train_args(out_dir, **kw):
    """`train` arguments: the given flags (underscored names) plus the fast defaults."""
    args = ["train", "--output_dir", out_dir]
    for k, v in kw.items():
        args += [f"--{k}", v]
    return args + FAST


M64 = (1 << 64) - 1
P1, P2, P3, P4, P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63,
                      0x27D4EB2F165667C5)


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M64


def _round(acc, lane):
    return (_rotl((acc + lane * P2) & M64, 31) * P1) & M64


def xxh64(data, seed=0):
    """XXH64 (Yann Collet's specification), written out so the test shares no code with zerotrain's xxhash."""
    n = len(data)
    i = 0
    if n >= 32:
        v = [(seed + P1 + P2) & M64, (seed + P2) & M64, seed, (seed - P1) & M64]
        lanes = struct.unpack_from(f"<{(n // 32) * 4}Q", data)
        for s in range(0, len(lanes), 4):
            v[0] = _round(v[0], lanes[s])
            v[1] = _round(v[1], lanes[s + 1])
            v[2] = _round(v[2], lanes[s + 2])
            v[3] = _round(v[3], lanes[s + 3])
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & M64
        for x in v:
            h = ((h ^ _round(0, x)) * P1 + P4) & M64
        i = (n // 32) * 32
    else:
        h = (seed + P5) & M64
    h = (h + n) & M64
    while i + 8 <= n:
        (k,) = struct.unpack_from("<Q", data, i)
        h = (_rotl(h ^ _round(0, k), 27) * P1 + P4) & M64
        i += 8
    if i + 4 <= n:
        (k,) = struct.unpack_from("<I", data, i)
        h = (_rotl(h ^ ((k * P1) & M64), 23) * P2 + P3) & M64
        i += 4
    while i < n:
        h = (_rotl(h ^ ((data[i] * P5) & M64), 11) * P1) & M64
        i += 1
    h ^= h >> 33
    h = (h * P2) & M64
    h ^= h >> 29
    h = (h * P3) & M64
    h ^= h >> 32
    return h
