#!/usr/bin/env python3
"""launch/plot_loss.py on two short zerotrain runs' metrics.jsonl (one with val_loss) writes a valid, non-empty PNG."""
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fail(msg):
    print(f"plot_test: FAIL: {msg}", flush=True)
    sys.exit(1)


def check_png(path):
    """Signature, then every chunk's CRC up to IEND, and a non-empty IHDR size: a truncated file fails."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        fail(f"{path} missing or empty")
    data = open(path, "rb").read()
    if not data.startswith(PNG_SIGNATURE):
        fail(f"{path} lacks the PNG signature")
    pos, chunks = len(PNG_SIGNATURE), []
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + body) != crc:
            fail(f"{path}: bad CRC in chunk {kind!r}")
        chunks.append(kind)
        pos += 12 + length
        if kind == b"IEND":
            break
    if not chunks or chunks[0] != b"IHDR" or chunks[-1] != b"IEND" or b"IDAT" not in chunks:
        fail(f"{path}: chunks {chunks} are not IHDR..IDAT..IEND")
    width, height = struct.unpack(">II", data[16:24])
    if width == 0 or height == 0:
        fail(f"{path}: image is {width}x{height}")
    return width, height


def main():
    exe = os.environ.get("ZEROTRAIN")
    if not exe or not os.path.exists(exe):
        fail("set ZEROTRAIN to the zerotrain binary (CTest does this)")
    src = os.environ.get("ZT_SOURCE_DIR") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    python = os.environ.get("ZT_PYTHON") or sys.executable
    work = tempfile.mkdtemp(prefix="zt_plot_test_")
    try:
        metrics = []
        for name, extra in (("run_a", ["--eval_interval", "2"]), ("run_b", ["--learning_rate", "1e-3"])):
            out = os.path.join(work, name)
            cmd = [exe, "train", "--preset", "tiny", "--max_steps", "4", "--threads", "1", "--quiet",
                   "--output_dir", out] + extra
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
            if r.returncode != 0:
                print(r.stdout)
                fail(f"{' '.join(cmd)} exited with {r.returncode}")
            metrics.append(os.path.join(out, "metrics.jsonl"))
        # run_a evaluates, so the val_loss markers are drawn too.
        if not any('"val_loss"' in line for line in open(metrics[0])):
            fail(f"{metrics[0]} has no val_loss rows although run_a ran with --eval_interval 2")
        png = os.path.join(work, "loss.png")
        cmd = [python, os.path.join(src, "launch", "plot_loss.py")] + metrics + ["-o", png]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
        print(r.stdout, end="")
        if r.returncode != 0:
            fail(f"plot_loss.py exited with {r.returncode}")
        width, height = check_png(png)
        print(f"plot_test: PASS ({width}x{height} PNG, {os.path.getsize(png)} bytes, 2 runs)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
