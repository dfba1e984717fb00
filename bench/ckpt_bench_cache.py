#!/usr/bin/env python3
# Page-cache eviction for bench/ckpt_bench.sh: `--drop FILE...` makes the next read of those files come from the
# device. It writes 3 to /proc/sys/vm/drop_caches when permitted (root outside a read-only /proc), and otherwise
# asks the kernel to evict each file's clean pages with posix_fadvise(POSIX_FADV_DONTNEED) after an fsync.
# `--method` prints which of the two this machine allows.
import os
import sys


def can_drop_all():
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


def drop(paths):
    os.sync()
    if can_drop_all():
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            return
        except OSError:
            pass
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main():
    if sys.argv[1:2] == ["--method"]:
        print("echo 3 > /proc/sys/vm/drop_caches (all caches)" if can_drop_all()
              else "posix_fadvise(POSIX_FADV_DONTNEED) per file (no permission for drop_caches)")
    elif sys.argv[1:2] == ["--drop"]:
        drop(sys.argv[2:])
    else:
        sys.exit("usage: ckpt_bench_cache.py --method | --drop FILE...")


if __name__ == "__main__":
    main()
