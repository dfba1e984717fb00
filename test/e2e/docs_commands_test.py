#!/usr/bin/env python3
# Runs every shell block of README.md and docs/*.md as written, by the rules in docs/README.md: ```sh and ```bash
# blocks run in document order in a fresh directory per document, under bash -e -o pipefail, each within a time
# limit; a block opts out with `<!-- docs-test: skip: REASON -->` on the line just above its fence.
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

SRC = os.environ.get("ZT_SOURCE_DIR") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ZT = os.environ["ZEROTRAIN"]
BLOCK_TIMEOUT_S = int(os.environ.get("ZT_DOCS_BLOCK_TIMEOUT", "180"))
RUN_LANGS = {"sh", "bash"}
FENCE = re.compile(r"^(\s*)(```+)\s*([\w+-]*)")
SKIP = re.compile(r"^\s*<!--\s*docs-test:\s*skip\b:?\s*(.*?)\s*-->\s*$")


def blocks(path):
    """Yields (line, lang, text, skip_reason or None) for every fenced block of a Markdown file."""
    lines = open(path, encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3)
        marker = SKIP.match(lines[i - 1]) if i > 0 else None
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        yield i + 1, lang, "\n".join(body) + "\n", (marker.group(1) if marker else None)
        i = j + 1


def scratch_dir(root, name):
    """A directory that looks like the source tree (symlinks) with build/zerotrain the binary under test."""
    d = os.path.join(root, name)
    os.makedirs(os.path.join(d, "build"))
    for entry in os.listdir(SRC):
        if entry == ".git" or entry.startswith("build"):
            continue
        os.symlink(os.path.join(SRC, entry), os.path.join(d, entry))
    os.symlink(ZT, os.path.join(d, "build", "zerotrain"))
    return d


def run_block(cwd, text, env):
    script = os.path.join(cwd, ".docs-block.sh")
    with open(script, "w") as f:
        f.write(text)
    t = time.time()
    p = subprocess.run(["timeout", "-k", "5", str(BLOCK_TIMEOUT_S), "bash", "-e", "-o", "pipefail", script], cwd=cwd,
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    os.unlink(script)
    return p.returncode, p.stdout, time.time() - t


def main():
    docs = [os.path.join(SRC, "README.md")] + sorted(glob.glob(os.path.join(SRC, "docs", "*.md")))
    root = tempfile.mkdtemp(prefix="zt_docs.")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(ZT), env.get("PATH", "")])
    env["ZT_BIN"] = ZT
    ran = skipped = 0
    failures = []
    for doc in docs:
        rel = os.path.relpath(doc, SRC)
        cwd = None
        for line, lang, text, skip in blocks(doc):
            if lang not in RUN_LANGS:
                continue
            where = f"{rel}:{line}"
            if skip is not None:
                if not skip:
                    failures.append(f"{where}: a skip marker must give its reason")
                print(f"skip {where}: {skip}")
                skipped += 1
                continue
            if "run_tests.sh" in text:
                failures.append(f"{where}: runs test/run_tests.sh (the suite inside the suite); mark it skipped")
                continue
            cwd = cwd or scratch_dir(root, rel.replace("/", "_"))
            rc, out, dt = run_block(cwd, text, env)
            ran += 1
            if rc == 0:
                print(f"ok   {where} ({dt:.1f}s)")
                continue
            why = f"timed out after {BLOCK_TIMEOUT_S}s" if rc in (124, 137) else f"exit status {rc}"
            failures.append(f"{where}: {why}")
            print(f"FAIL {where}: {why}\n--- block:\n{text}--- output (last 40 lines):")
            print("\n".join(out.rstrip("\n").split("\n")[-40:]))
    print(f"docs_commands: {ran} block(s) ran, {skipped} skipped with a reason, {len(failures)} failure(s)")
    for f in failures:
        print(f"  {f}")
    if failures:
        print(f"scratch directories kept: {root}")
        return 1
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
