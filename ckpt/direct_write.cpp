// Parallel writing of contiguous dataset slices (see direct_write.hpp).
//
// Why not H5Dwrite: parallel HDF5 makes every rank enter every H5Dwrite of every dataset (444 for GPT-2 124M), and
// each sets up an MPI-IO file view and waits for the slowest rank; with four ranks on two cores that cost more than
// the bytes (docs/performance.md, "Checkpoint bandwidth"). The datasets are contiguous and allocated when created,
// so HDF5 knows where each one's bytes go (H5Dget_offset) and never writes there itself (fill time "never"); each
// rank writes its own ranges with pwrite. Several writes in flight (and, for what goes through the page cache,
// write-back started per piece instead of one fsync of the whole file at the end) let the device work while the
// rest is still being copied: measured on the 2-core VM, 1.5 GB took 2.3-4.6 s on 8 threads this way against
// 4.4-6.3 s for `dd bs=16M conv=fsync`.
#include "ckpt/direct_write.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>

#include "ckpt/checkpoint.hpp"
#include "ckpt/io_threads.hpp"

namespace zt {
namespace {

/// A task is at most one checksum chunk, so one buffer of that size holds any task's aligned blocks.
constexpr size_t kBounceBytes = kChecksumChunkElems * sizeof(float);

struct Task {
  size_t slice = 0;
  size_t e0 = 0, e1 = 0;
  bool first = false;   ///< the slice's first piece (or its only marker, when empty): runs before_dataset
  bool digest = false;  ///< [e0, e1) is a whole checksum chunk
};

/// Writes exactly n_bytes at offset; "" or the problem.
/// With O_DIRECT (`direct`), EINVAL (this file system wants other alignment) is returned as "EINVAL".
std::string pwrite_all(int fd, const void* src, size_t n_bytes, uint64_t offset, bool direct = false) {
  const char* p = static_cast<const char*>(src);
  while (n_bytes > 0) {
    const ssize_t put = ::pwrite(fd, p, n_bytes, off_t(offset));
    if (put < 0 && errno == EINTR) continue;
    if (put < 0 && errno == EINVAL && direct) return "EINVAL";
    if (put < 0) return fmt::format("write of {} bytes at offset {} failed: {}", n_bytes, offset, errno_text(errno));
    if (put == 0) return fmt::format("write of {} bytes at offset {} wrote nothing", n_bytes, offset);
    p += put;
    n_bytes -= size_t(put);
    offset += uint64_t(put);
  }
  return std::string();
}

/// Writes file bytes [lo, hi) from `src`: the whole aligned blocks inside through `dfd` (O_DIRECT, copied into the
/// thread's aligned `bounce` buffer) while `direct` holds, the rest through `fd`, its write-back started at once.
std::string write_piece(int fd, int dfd, std::atomic<bool>& direct, std::unique_ptr<char, decltype(&std::free)>& bounce,
                        const char* src, uint64_t lo, uint64_t hi) {
  const uint64_t a_lo = (lo + kDirectAlign - 1) / kDirectAlign * kDirectAlign, a_hi = hi / kDirectAlign * kDirectAlign;
  if (direct && a_hi > a_lo) {
    if (!bounce) bounce.reset(static_cast<char*>(std::aligned_alloc(kDirectAlign, kBounceBytes)));
    if (!bounce) throw std::bad_alloc();
    for (uint64_t at = a_lo; at < a_hi;) {
      const uint64_t n = std::min<uint64_t>(a_hi - at, kBounceBytes);
      std::memcpy(bounce.get(), src + (at - lo), size_t(n));
      std::string problem = pwrite_all(dfd, bounce.get(), size_t(n), at, true);
      if (problem == "EINVAL") {  // this file system wants other alignment: buffered from now on
        direct = false;
        break;
      }
      if (!problem.empty()) return problem;
      at += n;
    }
    if (direct) {  // the partial blocks at both ends
      std::string problem = a_lo > lo ? pwrite_all(fd, src, size_t(a_lo - lo), lo) : std::string();
      if (problem.empty() && hi > a_hi) problem = pwrite_all(fd, src + (a_hi - lo), size_t(hi - a_hi), a_hi);
      return problem;
    }
  }
  std::string problem = pwrite_all(fd, src, size_t(hi - lo), lo);
#ifdef __linux__
  // Start the write-back of this piece now (asynchronous; errors surface at the final fdatasync).
  if (problem.empty()) ::sync_file_range(fd, off_t(lo), off_t(hi - lo), SYNC_FILE_RANGE_WRITE);
#endif
  return problem;
}

}  // namespace

std::string write_slices(const std::string& path, const std::vector<SliceWrite>& slices, int n_threads,
                         const std::function<void(size_t)>& before_dataset, std::vector<ChunkDigest>& digests) {
  const size_t K = kChecksumChunkElems;
  std::vector<Task> tasks;
  for (size_t si = 0; si < slices.size(); ++si) {
    const SliceWrite& s = slices[si];
    // A slice past its tensor's end would split into empty tasks forever (seen when a caller's slices were wrong).
    ZT_ASSERT(s.b <= s.numel);
    if (s.a >= s.b) {
      tasks.push_back({si, s.a, s.a, true, false});
      continue;
    }
    for (size_t e0 = s.a; e0 < s.b;) {
      const size_t c0 = e0 / K * K, c1 = std::min(s.numel, c0 + K);
      const size_t e1 = std::min(s.b, c1);
      tasks.push_back({si, e0, e1, e0 == s.a, e0 == c0 && e1 == c1});
      e0 = e1;
    }
  }
  if (tasks.empty()) return std::string();

  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return fmt::format("cannot open {} for writing: {}", path, errno_text(errno));
  // The whole 4 KiB blocks of a piece go with O_DIRECT where the file system takes it (no page-cache copy of the
  // model: on the VM, 1.5 GB took 3.2-3.5 s this way against 3.4-4.6 s buffered, dd 4.4-4.8 s), its partial
  // first and last blocks, which other pieces or HDF5's metadata share, buffered: no page is ever written both ways.
  const int dfd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_DIRECT);
  std::atomic<bool> direct{dfd >= 0};

  std::atomic<size_t> next_task{0};
  std::atomic<bool> failed{false};
  std::mutex mutex;  // guards problem and digests
  std::string problem;
  auto writer = [&] {
    std::vector<ChunkDigest> mine;
    std::string mine_problem;
    std::unique_ptr<char, decltype(&std::free)> bounce(nullptr, &std::free);
    // Tasks are claimed in file order, one at a time, so the writers move through the file together.
    while (!failed) {
      const size_t ti = next_task.fetch_add(1);
      if (ti >= tasks.size()) break;
      const Task& t = tasks[ti];
      const SliceWrite& s = slices[t.slice];
      if (t.first && before_dataset) before_dataset(s.dataset);
      if (t.e0 == t.e1) continue;
      const float* src = s.src + (t.e0 - s.a);
      const uint64_t lo = s.file_offset + 4 * uint64_t(t.e0), n = 4 * uint64_t(t.e1 - t.e0);
      try {
        mine_problem = write_piece(fd, dfd, direct, bounce, reinterpret_cast<const char*>(src), lo, lo + n);
      } catch (const std::exception& e) {  // bad_alloc: reported like a write failure, never lost in a thread
        mine_problem = e.what();
      }
      if (!mine_problem.empty()) {
        mine_problem = fmt::format("writing {} into {} failed: {}", s.name, path, mine_problem);
        failed = true;
        break;
      }
      if (t.digest) mine.push_back({s.dataset, t.e0 / K, chunk_digest(src, t.e1 - t.e0)});
    }
    std::lock_guard<std::mutex> lock(mutex);
    if (problem.empty()) problem = std::move(mine_problem);
    digests.insert(digests.end(), mine.begin(), mine.end());
  };
  run_on_threads(n_threads, writer);

  // Durable before the commit on every node (rank 0's fsync of the file covers only its own node's page cache).
  if (problem.empty() && ::fdatasync(fd) != 0)
    problem = fmt::format("fdatasync of {} failed: {}", path, errno_text(errno));
  if (dfd >= 0 && ::close(dfd) != 0 && problem.empty())
    problem = fmt::format("closing {} failed: {}", path, errno_text(errno));
  if (::close(fd) != 0 && problem.empty()) problem = fmt::format("closing {} failed: {}", path, errno_text(errno));
  return problem;
}

}  // namespace zt
