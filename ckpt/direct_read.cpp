// Parallel loading of contiguous dataset slices with per-chunk verification (see direct_read.hpp).
//
// Why not plain buffered reads: a cold load then pays, per byte, for a page-cache page (allocation, memory-cgroup
// charge, LRU) and the kernel's copy out of it, and in a trainer that has just allocated gigabytes of state those
// pages are ones the machine has not touched yet. Measured on the 2-core VM of docs/performance.md, a 1-rank load of
// the 1.49 GB gpt2 checkpoint spent 1.3-2.1 s of system time that way; read with O_DIRECT into a small, reused,
// cache-resident buffer and copied from there, 0.1-0.2 s. Data already in the page cache (a load right after the
// save, a second load) is still copied from it: a task whose pages are all cached (mincore) reads buffered.
#define XXH_STATIC_LINKING_ONLY  // XXH64_state_t on the stack
#include "ckpt/direct_read.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

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

/// One piece of a slice, at most one checksum chunk long: elements [e0, e1) into the slice's dst. When `verify`,
/// a chunk starts at e0 and is checked; it ends at tail_end, and [e1, tail_end) (past the slice) is read only to
/// complete it. Otherwise the piece is the end of a chunk that starts on a lower rank, which verifies it.
struct Task {
  size_t slice = 0;
  size_t e0 = 0, e1 = 0, tail_end = 0;
  bool verify = false;
};

constexpr size_t kBounceBytes = kChecksumChunkElems * sizeof(float) + 2 * kDirectAlign;

/// Reads exactly n_bytes at offset (buffered); "" or the problem.
std::string pread_all(int fd, void* dst, size_t n_bytes, uint64_t offset) {
  char* p = static_cast<char*>(dst);
  while (n_bytes > 0) {
    const ssize_t got = ::pread(fd, p, n_bytes, off_t(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return fmt::format("read of {} bytes at offset {} failed: {}", n_bytes, offset, errno_text(errno));
    if (got == 0) return fmt::format("the file ends before byte {} (truncated?)", offset + n_bytes);
    p += got;
    n_bytes -= size_t(got);
    offset += uint64_t(got);
  }
  return std::string();
}

/// The file mapped only to ask which of its pages are in the page cache (mincore); nothing is read through it.
/// Linux answers for a file only to a process that owns it or may write it; otherwise every page counts as not
/// cached, which costs a device read of data that was in memory, nothing worse.
class Residency {
 public:
  explicit Residency(int fd) {
    const off_t size = ::lseek(fd, 0, SEEK_END);
    if (size > 0) {
      void* p = ::mmap(nullptr, size_t(size), PROT_READ, MAP_SHARED, fd, 0);
      if (p != MAP_FAILED) {
        map_ = static_cast<unsigned char*>(p);
        size_ = uint64_t(size);
      }
    }
  }
  ~Residency() {
    if (map_) ::munmap(map_, size_);
  }
  Residency(const Residency&) = delete;
  Residency& operator=(const Residency&) = delete;

  /// True when every page of bytes [lo, hi) is in the page cache. Unlike a RWF_NOWAIT read, which starts
  /// read-ahead when it finds nothing, this asks without side effects.
  bool cached(uint64_t lo, uint64_t hi, std::vector<unsigned char>& scratch) const {
    static const uint64_t page = uint64_t(::sysconf(_SC_PAGESIZE));
    if (!map_ || hi > size_) return false;
    const uint64_t p_lo = lo / page * page, n_pages = (hi - p_lo + page - 1) / page;
    scratch.resize(n_pages);
    if (::mincore(map_ + p_lo, n_pages * page, scratch.data()) != 0) return false;
    return std::all_of(scratch.begin(), scratch.end(), [](unsigned char v) { return (v & 1) != 0; });
  }

 private:
  unsigned char* map_ = nullptr;
  uint64_t size_ = 0;
};

/// Reads [lo, hi) through the O_DIRECT descriptor into `bounce` (aligned); returns the problem or "" and sets
/// `data` to byte lo inside bounce. errno EINVAL (alignment not accepted here) is returned as "EINVAL".
std::string pread_direct(int dfd, char* bounce, uint64_t lo, uint64_t hi, const char*& data) {
  const uint64_t a_lo = lo / kDirectAlign * kDirectAlign;
  const uint64_t a_hi = (hi + kDirectAlign - 1) / kDirectAlign * kDirectAlign;
  uint64_t got = 0;
  while (a_lo + got < hi) {
    const ssize_t n = ::pread(dfd, bounce + got, size_t(a_hi - a_lo - got), off_t(a_lo + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EINVAL) return "EINVAL";
    if (n < 0)
      return fmt::format("read of {} bytes at offset {} failed: {}", a_hi - a_lo - got, a_lo + got, errno_text(errno));
    if (n == 0) return fmt::format("the file ends before byte {} (truncated?)", hi);
    got += uint64_t(n);
  }
  data = bounce + (lo - a_lo);
  return std::string();
}

/// A file descriptor, closed on scope exit.
struct Fd {
  int fd;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

/// The slices cut at checksum-chunk boundaries, in file order; a task that starts a chunk verifies it, reading the
/// rest of the chunk past the slice (`tail_end`) when the slice ends inside it.
std::vector<Task> read_tasks(const std::vector<SliceRead>& slices) {
  const size_t K = kChecksumChunkElems;
  std::vector<Task> tasks;
  for (size_t si = 0; si < slices.size(); ++si) {
    const SliceRead& s = slices[si];
    ZT_ASSERT(s.b <= s.numel);  // past the tensor's end the cut below would never advance
    for (size_t e0 = s.a; e0 < s.b;) {
      const size_t c0 = e0 / K * K, c1 = std::min(s.numel, c0 + K);
      Task t;
      t.slice = si;
      t.e0 = e0;
      t.e1 = std::min(s.b, c1);
      t.verify = c0 == e0;
      t.tail_end = t.verify ? c1 : t.e1;
      tasks.push_back(t);
      e0 = t.e1;
    }
  }
  return tasks;
}

/// What every reader shares: the file, buffered and (where the file system takes it) with O_DIRECT.
struct ReadFile {
  const std::string& path;
  int fd, dfd;
  std::atomic<bool>& direct;  ///< cleared, for every reader, when the file system refuses O_DIRECT's alignment
  const Residency& residency;
};

/// A reader thread's buffers.
struct ReaderBuffers {
  std::unique_ptr<char, decltype(&std::free)> bounce{nullptr, &std::free};
  std::vector<float> tail;
  std::vector<unsigned char> pages;
};

/// The XXH64 of a checksum chunk read as `out` (n_out bytes) then `tail` (n_tail bytes): the same digest as over
/// the contiguous chunk (XXH64's streaming form).
uint64_t split_digest(const float* out, size_t n_out, const float* tail, size_t n_tail) {
  XXH64_state_t state;
  XXH64_reset(&state, 0);
  XXH64_update(&state, out, n_out);
  XXH64_update(&state, tail, n_tail);
  return XXH64_digest(&state);
}

/// Reads task `t` of slice `s` into its destination (pages in the page cache buffered, the rest with O_DIRECT
/// through the bounce buffer) and checks the digest of the chunk it starts. Returns "" or the problem.
std::string read_task(const ReadFile& f, const Task& t, const SliceRead& s, ReaderBuffers& b) {
  const size_t c = t.e0 / kChecksumChunkElems;
  float* out = s.dst + (t.e0 - s.a);
  const uint64_t lo = s.file_offset + 4 * uint64_t(t.e0), mid = s.file_offset + 4 * uint64_t(t.e1),
                 hi = s.file_offset + 4 * uint64_t(t.tail_end);
  const size_t n_out = size_t(mid - lo);
  std::string problem;
  const char* whole = nullptr;  // the task's bytes, tail included, when read into the bounce buffer
  if (!f.residency.cached(lo, hi, b.pages) && f.direct) {
    if (!b.bounce) b.bounce.reset(static_cast<char*>(std::aligned_alloc(kDirectAlign, kBounceBytes)));
    if (!b.bounce) throw std::bad_alloc();
    problem = pread_direct(f.dfd, b.bounce.get(), lo, hi, whole);
    if (problem == "EINVAL") {  // this file system wants other alignment: buffered from now on
      f.direct = false;
      problem.clear();
      whole = nullptr;
    } else if (problem.empty()) {
      std::memcpy(out, whole, n_out);
    }
  }
  if (!whole && problem.empty()) {  // cached, or O_DIRECT not available
    problem = pread_all(f.fd, out, n_out, lo);
    if (problem.empty() && hi > mid) {
      b.tail.resize(t.tail_end - t.e1);
      problem = pread_all(f.fd, b.tail.data(), size_t(hi - mid), mid);
    }
  }
  if (!problem.empty()) return fmt::format("checkpoint {}: reading {} failed: {}", f.path, s.name, problem);
  if (!t.verify) return std::string();
  const uint64_t got = whole       ? chunk_digest(reinterpret_cast<const float*>(whole), t.tail_end - t.e0)
                       : hi == mid ? chunk_digest(out, t.e1 - t.e0)
                                   : split_digest(out, n_out, b.tail.data(), size_t(hi - mid));
  if (got != s.chunk_digests[c]) return checksum_mismatch(f.path, s.name, c, t.e0, t.tail_end, got, s.chunk_digests[c]);
  return std::string();
}

}  // namespace

std::string checksum_mismatch(const std::string& path, const std::string& dataset, size_t chunk, size_t c0, size_t c1,
                              uint64_t got, uint64_t want) {
  return fmt::format(
      "checkpoint {}: checksum mismatch in tensor {} (elements {}..{} of chunk {}): xxh64 {} but the "
      "manifest says {}",
      path, dataset, c0, c1 - 1, chunk, hex64(got), hex64(want));
}

std::vector<LoadProblem> read_slices(const std::string& path, const std::vector<SliceRead>& slices, int n_threads) {
  const std::vector<Task> tasks = read_tasks(slices);
  if (tasks.empty()) return {};

  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.fd < 0)
    return {{slices[0].dataset, fmt::format("checkpoint {}: cannot open it for reading: {}", path, errno_text(errno))}};
  // Without O_DIRECT (a file system that refuses it) every read is buffered; the readers' parallel reads then keep
  // several requests in flight, on top of the kernel's own read-ahead.
  Fd dfd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT));
  std::atomic<bool> direct{dfd.fd >= 0};
  const Residency residency(fd.fd);
  const ReadFile file{path, fd.fd, dfd.fd, direct, residency};

  std::atomic<size_t> next_task{0};
  std::mutex found_mutex;
  std::vector<std::pair<size_t, LoadProblem>> found;  // (task, problem)
  auto reader = [&] {
    ReaderBuffers buffers;
    // Tasks are claimed in file order, one at a time, so the readers move through the file together.
    for (;;) {
      const size_t ti = next_task.fetch_add(1);
      if (ti >= tasks.size()) break;
      const SliceRead& s = slices[tasks[ti].slice];
      std::string problem;
      try {
        problem = read_task(file, tasks[ti], s, buffers);
      } catch (const std::exception& e) {  // bad_alloc: reported like a read failure, never lost in a thread
        problem = fmt::format("checkpoint {}: reading {} failed: {}", path, s.name, e.what());
      }
      if (!problem.empty()) {
        std::lock_guard<std::mutex> lock(found_mutex);
        found.push_back({ti, {s.dataset, std::move(problem)}});
      }
    }
  };
  run_on_threads(n_threads, reader);

  std::sort(found.begin(), found.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  std::vector<LoadProblem> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

}  // namespace zt
